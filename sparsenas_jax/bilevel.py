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

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# A loss ``loss(weights, arch, batch)`` returning a scalar.
LossFn = Callable[[Any, Any, Any], jax.Array]

MODES = ('exact', 'finite_difference', 'first_order')

# DARTS's radius of the central difference, in units of 1 / ‖v‖.
_FD_RADIUS = 0.01


def _axpy(x, a, y):
  """x + a·y leaf by leaf, keeping the dtypes of ``x``."""
  return jax.tree.map(lambda xi, yi: (xi + a * yi).astype(xi.dtype), x, y)


def _unrolled_weights(train_loss: LossFn, weights, arch, batch, *, eta,
                      momentum, momentum_buffer, weight_decay):
  """w′ = w − η (μ·buf + ∇_w L_train(w, A) + λ·w), dtypes kept."""
  grad_w = jax.grad(train_loss)(weights, arch, batch)
  direction = jax.tree.map(lambda g, w: g + weight_decay * w, grad_w, weights)
  if momentum_buffer is not None:
    direction = jax.tree.map(lambda d, b: d + momentum * b, direction,
                             momentum_buffer)
  return _axpy(weights, -eta, direction)


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
    return_val_loss: bool = False,
):
  """The gradient of the validation loss after one unrolled weight step.

  With the unrolled weights of DARTS's SGD step (Wu et al. 2021, Eq. 12 when
  ``momentum`` and ``weight_decay`` are zero)

      w′(A) = w − η (μ·buf + ∇_w L_train(w, A) + λ_wd·w),

  the architecture gradient (Eq. 11) is, by the chain rule (buf and λ_wd·w do
  not depend on A),

      g = ∇_A L_val(w′, A) − η ∇²_{A,w} L_train(w, A) v,
      v = ∇_{w′} L_val(w′, A).

  ``mode`` chooses how g is computed:

  * ``'exact'``: the mixed second derivative times v is the directional
    derivative of w ↦ ∇_A L_train(w, A) at w along v, a Hessian-vector product
    taken forward-over-reverse (``jax.jvp`` of ``jax.grad``): no full Hessian,
    no truncation error. Cost: one train gradient (for w′), one validation
    gradient (for v and ∇_A L_val), one JVP of a train gradient, about two
    train gradients' worth of work on top of first order.
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
  if mode not in MODES:
    raise ValueError(
        f'mode must be one of {", ".join(repr(m) for m in MODES)}; '
        f'got {mode!r}.')

  def grad_arch_train(w):
    return jax.grad(train_loss, argnums=1)(w, arch, train_batch)

  if mode == 'first_order':
    value, g = jax.value_and_grad(val_loss, argnums=1)(weights, arch,
                                                         val_batch)
  else:
    w_new = _unrolled_weights(
        train_loss, weights, arch, train_batch, eta=eta, momentum=momentum,
        momentum_buffer=momentum_buffer, weight_decay=weight_decay)
    # w′ has the dtypes of w, so v is a valid tangent at w for the JVP.
    value, (v, g_val) = jax.value_and_grad(val_loss, argnums=(0, 1))(
        w_new, arch, val_batch)
    if mode == 'exact':
      _, hvp = jax.jvp(grad_arch_train, (weights,), (v,))
    else:
      norm = optax.tree.norm(v)
      eps = _FD_RADIUS / jnp.where(norm > 0, norm, 1)
      g_plus = grad_arch_train(_axpy(weights, eps, v))
      g_minus = grad_arch_train(_axpy(weights, -eps, v))
      hvp = jax.tree.map(lambda p, m: (p - m) / (2 * eps), g_plus, g_minus)
    g = jax.tree.map(lambda a, b: a - eta * b, g_val, hvp)

  g = jax.tree.map(lambda gi, a: gi.astype(a.dtype), g, arch)
  return (g, value) if return_val_loss else g
