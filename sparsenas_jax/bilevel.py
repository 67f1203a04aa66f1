"""The architecture hypergradient of the bi-level search problem.

SparseNAS searches the architecture weights A of a supernet by solving

    min_A  L_val(w*(A), A) + Ω_SGL(A),   w*(A) = argmin_w L_train(w, A)

(Wu et al. 2021, Eq. 4). Like DARTS it replaces w*(A) by one unrolled step of
the weight optimizer, w′(A) = w − η ∇_w L_train(w, A) (Eq. 12), and feeds the
gradient of A ↦ L_val(w′(A), A) (Eq. 11) to the proximal optimizer of
``sparsenas_jax.optim``, which handles Ω_SGL. This module computes that
gradient for any pair of losses over pytrees; it knows nothing of the model.

References:
  Wu et al. 2021, Eq. 11-13;
  Liu, Simonyan and Yang 2019, "DARTS: Differentiable Architecture Search".
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sparsenas_jax.optim import clipping

# A loss ``loss(weights, arch, batch)`` returning a scalar.
LossFn = Callable[[Any, Any, Any], jax.Array]

MODES = ('exact', 'finite_difference', 'first_order')

# DARTS's radius of the central difference, in units of 1 / ‖v‖.
_FD_RADIUS = 0.01


def _axpy(x, a, y):
  """x + a·y leaf by leaf, keeping the dtypes of ``x``."""
  return jax.tree.map(lambda xi, yi: (xi + a * yi).astype(xi.dtype), x, y)


class Derivatives(NamedTuple):
  """The model-dependent derivatives the hypergradient is assembled from.

  ``darts_hypergradient`` builds them with autodiff inside one traced
  function; ``split_hypergradient`` takes them ready-made, e.g. each compiled
  on its own (a supernet's whole second-order step as one XLA program takes
  far longer to compile than its pieces; see ``experiments/cnn_search.py``).

  Attributes:
    train_grads: ``(w, A, batch) -> (L_train, ∇_w L_train, ∇_A L_train)``.
    val_grads: ``(w, A, batch) -> (L_val, ∇_w L_val, ∇_A L_val)``.
    mixed_product: ``(w, A, v, batch) -> ∇²_{A,w} L_train(w, A) v``, the
      directional derivative of w ↦ ∇_A L_train(w, A) along v, i.e. the
      gradient in A of the directional derivative of L_train along v in w
      (exact mode).
    train_arch_grads: ``(w, A, batch) -> (L_train, ∇_A L_train)``, for the
      calls that need no ∇_w (the finite-difference points); None: taken
      from ``train_grads``. Separately compiled, its reverse pass skips
      the weight gradients' share of the work.
    val_arch_grads: ``(w, A, batch) -> (L_val, ∇_A L_val)``, likewise (the
      first-order mode); None: taken from ``val_grads``.
  """
  train_grads: Callable[[Any, Any, Any], tuple[jax.Array, Any, Any]]
  val_grads: Callable[[Any, Any, Any], tuple[jax.Array, Any, Any]]
  mixed_product: Callable[[Any, Any, Any, Any], Any]
  train_arch_grads: Optional[Callable[[Any, Any, Any],
                                      tuple[jax.Array, Any]]] = None
  val_arch_grads: Optional[Callable[[Any, Any, Any],
                                    tuple[jax.Array, Any]]] = None


def _loss_and_grads(loss: LossFn):
  def loss_and_grads(w, a, batch):
    value, (g_w, g_a) = jax.value_and_grad(loss, argnums=(0, 1))(w, a, batch)
    return value, g_w, g_a
  return loss_and_grads


def _arch_grads(arch_grads, grads):
  """``arch_grads``, or (L, ∇_A L) taken from ``grads``' (L, ∇_w L, ∇_A L)."""
  if arch_grads is not None:
    return arch_grads
  def from_grads(w, a, batch):
    value, _, g_a = grads(w, a, batch)
    return value, g_a
  return from_grads


# How the mixed second derivative is taken (``mixed_product``).
MIXED_ORDERS = ('reverse_over_forward', 'forward_over_reverse')


def mixed_product(loss: LossFn, order: str = 'reverse_over_forward'):
  """``(w, A, v, batch) -> ∇²_{A,w} loss(w, A) v``, by autodiff.

  Two orders, the same numbers (each exact, no truncation):

  * ``'reverse_over_forward'``: ∇_A of the directional derivative of the
    loss along v in w, ``jax.grad`` of ``jax.jvp``.
  * ``'forward_over_reverse'``: the directional derivative along v of
    w ↦ ∇_A loss(w, A), ``jax.jvp`` of ``jax.grad``. The CNN and recurrent
    searches use it: on XLA:CPU it is as fast on the CNN supernet with
    fewer temporaries, and faster on the recurrent one, whose time loop is
    rematerialised (docs/performance.md).

  Raises:
    ValueError: for another ``order``.
  """
  if order not in MIXED_ORDERS:
    raise ValueError(f'order must be one of '
                     f'{", ".join(repr(o) for o in MIXED_ORDERS)}; '
                     f'got {order!r}.')
  if order == 'forward_over_reverse':
    def forward_over_reverse(w, a, v, batch):
      arch_grad = lambda w: jax.grad(loss, argnums=1)(w, a, batch)
      return jax.jvp(arch_grad, (w,), (v,))[1]
    return forward_over_reverse

  def reverse_over_forward(w, a, v, batch):
    directional = lambda a: jax.jvp(lambda w: loss(w, a, batch), (w,),
                                    (v,))[1]
    return jax.grad(directional)(a)
  return reverse_over_forward


def autodiff_derivatives(train_loss: LossFn, val_loss: LossFn, *,
                         mixed_order: str = 'reverse_over_forward'
                         ) -> Derivatives:
  """``Derivatives`` of two losses by ``jax.grad`` and ``jax.jvp`` (traced,
  not compiled: jit them, or the function that calls them); the mixed
  product in ``mixed_order`` (``mixed_product``)."""
  return Derivatives(_loss_and_grads(train_loss), _loss_and_grads(val_loss),
                     mixed_product(train_loss, mixed_order))


@jax.jit
def unroll(weights, grad_w, eta, momentum, momentum_buffer, weight_decay):
  """w′ = w − η (μ·buf + ∇_w L_train + λ_wd·w), dtypes kept (Eq. 12).

  ``momentum_buffer`` None counts as zeros.
  """
  direction = jax.tree.map(lambda g, w: g + weight_decay * w, grad_w, weights)
  if momentum_buffer is not None:
    direction = jax.tree.map(lambda d, b: d + momentum * b, direction,
                             momentum_buffer)
  return _axpy(weights, -eta, direction)


@jax.jit
def _difference_points(weights, v):
  norm = clipping.global_norm(v)
  eps = _FD_RADIUS / jnp.where(norm > 0, norm, 1)
  return _axpy(weights, eps, v), _axpy(weights, -eps, v), eps


# c = min(1, max_norm / ‖∇_w L‖₂), as the weight step clips its gradient.
_clip_coefficient = jax.jit(clipping.clip_coefficient)


@jax.jit
def _combine(g_val, g_plus, g_minus, eps, eta, arch):
  """g_val − η·correction, where the correction is ``g_plus`` itself when
  ``g_minus`` is None, else the central difference."""
  if g_minus is None:
    correction = g_plus
  else:
    correction = jax.tree.map(lambda p, m: (p - m) / (2 * eps), g_plus,
                              g_minus)
  return jax.tree.map(lambda gv, c, a: (gv - eta * c).astype(a.dtype),
                      g_val, correction, arch)


def split_hypergradient(derivatives: Derivatives, weights, arch, train_batch,
                        val_batch, *, eta, mode: str = 'exact',
                        momentum=0.0, momentum_buffer=None,
                        weight_decay=0.0, grad_clip=None):
  """``darts_hypergradient`` assembled from given ``Derivatives``.

  The same mathematics as ``darts_hypergradient`` (see there), written as a
  sequence of calls: the derivatives (typically separately compiled
  programs), and small jitted functions in between. Call it outside ``jit``
  to run the pieces as separate programs, or inside to trace them all into
  one.

  Returns:
    ``(g, val_loss)``: the hypergradient, a pytree like ``arch`` with its
    dtypes, and L_val at the weights it was taken at (w′; w in first-order
    mode) — whatever the validation derivatives return first, passed
    through untouched, so it may carry auxiliary outputs (an RNN's next
    hidden state) beside the loss.
  """
  if mode not in MODES:
    raise ValueError(
        f'mode must be one of {", ".join(repr(m) for m in MODES)}; '
        f'got {mode!r}.')
  if mode == 'first_order':
    value, g = _arch_grads(derivatives.val_arch_grads, derivatives.val_grads)(
        weights, arch, val_batch)
    return jax.tree.map(lambda gi, a: gi.astype(a.dtype), g, arch), value
  _, grad_w, _ = derivatives.train_grads(weights, arch, train_batch)
  # With clipping (DARTS's recurrent search clips the unrolled step as the
  # real one) c scales ∇_w L in w′, hence the mixed term: η c (c constant).
  eta_mixed = eta
  if grad_clip is not None:
    clip = _clip_coefficient(grad_w, grad_clip)
    grad_w = jax.tree.map(lambda g: (clip * g).astype(g.dtype), grad_w)
    eta_mixed = eta * clip
  w_new = unroll(weights, grad_w, eta, momentum, momentum_buffer,
                 weight_decay)
  # w′ has the dtypes of w, so v is a valid tangent at w.
  value, v, g_val = derivatives.val_grads(w_new, arch, val_batch)
  if mode == 'exact':
    hvp = derivatives.mixed_product(weights, arch, v, train_batch)
    return _combine(g_val, hvp, None, 0.0, eta_mixed, arch), value
  w_plus, w_minus, eps = _difference_points(weights, v)
  arch_grads = _arch_grads(derivatives.train_arch_grads,
                           derivatives.train_grads)
  _, g_plus = arch_grads(w_plus, arch, train_batch)
  _, g_minus = arch_grads(w_minus, arch, train_batch)
  return _combine(g_val, g_plus, g_minus, eps, eta_mixed, arch), value


def darts_hypergradient(
    train_loss: LossFn,
    val_loss: LossFn,
    weights,
    arch,
    train_batch,
    val_batch,
    *,
    eta,
    mode: str = 'exact',
    momentum=0.0,
    momentum_buffer=None,
    weight_decay=0.0,
    grad_clip=None,
    return_val_loss: bool = False,
):
  """The gradient of the validation loss after one unrolled weight step.

  With the unrolled weights of DARTS's SGD step (Wu et al. 2021, Eq. 12 when
  ``momentum`` and ``weight_decay`` are zero)

      w′(A) = w − η (μ·buf + ∇_w L_train(w, A) + λ_wd·w),

  the architecture gradient (Eq. 11) is, by the chain rule (buf and λ_wd·w do
  not depend on A; with ``grad_clip`` the gradient in w′ is scaled by the
  clipping coefficient c = min(1, grad_clip / ‖∇_w L_train‖₂), held
  constant, which scales η in the second term too),

      g = ∇_A L_val(w′, A) − η ∇²_{A,w} L_train(w, A) v,
      v = ∇_{w′} L_val(w′, A).

  ``mode`` chooses how g is computed:

  * ``'exact'``: the mixed second derivative times v is the gradient in A of
    the directional derivative of L_train along v in w, a Hessian-vector
    product taken reverse-over-forward (``jax.grad`` of ``jax.jvp``): no full
    Hessian, no truncation error. Cost: one train gradient (for w′), one
    validation gradient (for v and ∇_A L_val), one reverse pass over a JVP
    of the train loss, about two train gradients' worth of work on top of
    first order.
  * ``'finite_difference'``: the paper's Eq. 13, as in DARTS,

        ∇²_{A,w} L_train v ≈ (∇_A L_train(w⁺, A) − ∇_A L_train(w⁻, A)) / 2ε,

    w± = w ± ε v, ε = 0.01 / ‖v‖₂ (‖·‖₂ over the whole pytree; when v = 0 the
    correction is zero). Cost: two train gradients on top of the train and
    validation gradients of the exact mode; error O(ε²).
  * ``'first_order'``: ∇_A L_val(w, A), no unrolling (DARTS first order, the
    η = 0 limit of the two others). Cost: one validation gradient.

  The function is pure; under ``jax.jit`` make ``mode``, ``return_val_loss``
  and the two losses static (close over them or use ``static_argnames``).

  Args:
    train_loss: ``train_loss(weights, arch, batch)``, a scalar.
    val_loss: ``val_loss(weights, arch, batch)``, a scalar.
    weights: the network weights w, a pytree of float arrays.
    arch: the architecture weights A, a pytree of float arrays.
    train_batch: the batch passed to ``train_loss``.
    val_batch: the batch passed to ``val_loss``.
    eta: η, the weight optimizer's current learning rate (a scalar, may be
      traced; evaluate a schedule before calling).
    mode: ``'exact'``, ``'finite_difference'`` or ``'first_order'``.
    momentum: μ, the weight optimizer's momentum.
    momentum_buffer: buf, its momentum buffer, a pytree like ``weights``;
      None (no buffer yet) counts as zeros.
    weight_decay: λ_wd, the weight optimizer's L2 weight decay.
    grad_clip: the weight step's global-norm clipping threshold, applied in
      the unrolled step as in the real one (DARTS's recurrent search); None:
      no clipping (DARTS's CNN search).
    return_val_loss: also return L_val at the weights the gradient is taken
      at (w′, or w in first-order mode), free of charge.

  Returns:
    g, a pytree like ``arch`` with its dtypes; ``(g, val_loss)`` when
    ``return_val_loss`` is True.

  Raises:
    ValueError: if ``mode`` is not one of the three above.

  References:
    Wu et al. 2021, Eq. 11-13;
    Liu, Simonyan and Yang 2019 (DARTS), second-order approximation.
  """
  g, value = split_hypergradient(
      autodiff_derivatives(train_loss, val_loss), weights, arch, train_batch,
      val_batch, eta=eta, mode=mode, momentum=momentum,
      momentum_buffer=momentum_buffer, weight_decay=weight_decay,
      grad_clip=grad_clip)
  return (g, value) if return_val_loss else g
