"""HAPG and AdamHAPG: accelerated proximal gradient for the Sparse Group Lasso.

HAPG (Wu et al. 2021, Eq. 6-8), the reformulated accelerated proximal gradient
of Huang & Wang (2017) with the hierarchical SGL prox:

    z_t = A_{t-1} − η_t g_{t-1}                                   (6)
    v_t = prox(z_t) − A_{t-1} + u_{t-1} v_{t-1}                   (7)
    A_t = prox(z_t) + u_t v_t                                     (8)

with g_{t-1} the gradient at A_{t-1}. Writing x_t = prox(z_t) and using (8)
for A_{t-1}, Eq. 7 is v_t = x_t − x_{t-1} (with x_0 = A_0), so the state only
keeps the proximal point x_t: A_t = x_t + u_t (x_t − x_{t-1}), the FISTA /
Nesterov extrapolation. The params these transformations produce are the
extrapolated points A_t where the next gradient is taken; they are not
sparse. The exactly sparse proximal point x_t is read with ``sparse_params``.

Both transformations use ``params`` and must be the last element of a chain
(clipping or other gradient preprocessing may come before them).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from sparsenas_jax.optim import _hyper
from sparsenas_jax.optim.groups import as_layout
from sparsenas_jax.optim.prox import prox_sgl


class HapgState(NamedTuple):
  """State of ``hapg``."""
  count: jax.Array  # shape=(), dtype=int32; steps taken so far (t - 1)
  prox_params: Any  # like params; x_{t-1}, the latest (exactly sparse) prox point


class AdamHapgState(NamedTuple):
  """State of ``adam_hapg``."""
  count: jax.Array  # shape=(), dtype=int32; steps taken so far (t - 1)
  mu: Any  # like params; Adam first moment
  nu: Any  # like params; Adam second moment
  prox_params: Any  # like params; x_{t-1}, the latest (exactly sparse) prox point


def _momentum_at(momentum: Optional[float], t):
  """u_t: (t − 2)/(t + 1) clipped at 0 (t is 1-based), or a constant."""
  if momentum is not None:
    return momentum
  t = jnp.asarray(t, jnp.result_type(float))  # float64 under jax_enable_x64
  return jnp.maximum((t - 2) / (t + 1), 0.0)


def _extrapolate(x, x_prev, params, u):
  """The update A_t − A_{t-1} with A_t = x_t + u_t (x_t − x_{t-1}) (Eq. 7-8)."""
  return jax.tree.map(
      lambda xt, xp, a: (xt + (u * (xt - xp)).astype(xt.dtype)) - a,
      x, x_prev, params)


def _check(learning_rate, strength, l1_ratio, momentum):
  _hyper.check_nonnegative('learning_rate', learning_rate)
  _hyper.check_nonnegative('strength', strength)
  _hyper.check_unit_interval('l1_ratio', l1_ratio)
  if momentum is not None:
    _hyper.check_unit_interval('momentum', momentum)


def hapg(
    learning_rate: optax.ScalarOrSchedule,
    strength: optax.ScalarOrSchedule,
    l1_ratio: float,
    *,
    groups,
    momentum: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  """Hierarchical Accelerated Proximal Gradient (Wu et al. 2021, Eq. 6-10).

  Takes raw gradients; must be the last element of a chain. Example::

    lam = optax.linear_schedule(0.0, 0.5, transition_steps=50 * steps_per_epoch)
    opt = hapg(3e-3, lam, 0.5, groups=darts_node_groups(arch))
    ...
    arch_sparse = sparse_params(opt_state)  # exact zeros: the architecture

  Args:
    learning_rate: η_t, a scalar or a schedule.
    strength: λ ≥ 0, a scalar or a schedule (a linear ramp is
      ``optax.linear_schedule``).
    l1_ratio: α in [0, 1]; 1 is the Lasso, 0 the group Lasso.
    groups: group layout for the params (see ``sgl_prox``).
    momentum: ``None`` for the accelerated sequence u_t = (t − 2)/(t + 1),
      clipped at 0 for t ≤ 2 (t counts steps from 1); a float in [0, 1] for a
      constant u.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``HapgState``; extra
    keyword arguments of ``update`` (``value=loss``, say) are ignored.

  References:
    Wu et al. 2021, Eq. 5-10; Huang & Wang 2017 (reformulated APG).
  """
  _check(learning_rate, strength, l1_ratio, momentum)
  layout = as_layout(groups)

  def init_fn(params):
    return HapgState(count=jnp.zeros([], jnp.int32), prox_params=params)

  def update_fn(grads, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_hyper.NO_PARAMS_MSG)
    eta = _hyper.value_at(learning_rate, state.count)
    lam = _hyper.value_at(strength, state.count)
    z = jax.tree.map(lambda a, g: a - (eta * g).astype(a.dtype), params, grads)
    x = prox_sgl(z, eta * lam * l1_ratio, eta * lam * (1 - l1_ratio), layout)
    u = _momentum_at(momentum, state.count + 1)
    updates = _extrapolate(x, state.prox_params, params, u)
    return updates, HapgState(
        count=optax.safe_increment(state.count), prox_params=x)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_hapg(
    learning_rate: optax.ScalarOrSchedule,
    strength: optax.ScalarOrSchedule,
    l1_ratio: float,
    *,
    groups,
    b1: float = 0.5,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum: Optional[float] = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamHAPG: HAPG with an Adam step in Eq. 6 (Wu et al. 2021).

  With bias-corrected Adam moments m̂, v̂ each element gets its own step size
  sᵢ = η / (√v̂ᵢ + ε), and

    z_t = A_{t-1} − s ⊙ m̂,
    l1 prox with per-element threshold sᵢ·λα (Eq. 9),
    group prox with threshold median_{i∈n}(sᵢ)·λ(1 − α)·√|A₍ₙ₎| (Eq. 10),

  followed by the extrapolation of Eq. 7-8 as in ``hapg``.

  Median convention: the *lower* median, the ((n − 1)//2)-th smallest step
  size of a group of n. It is the step size of an actual element of the group
  (so the group threshold is one some element's l1 step really uses), it is
  what ``torch.median`` returns (the reference implementations of DARTS-style
  search are PyTorch), and for odd n it is the usual median. The DARTS node
  groups have even sizes (14, 21, 28, 35 with 7 ops), where the lower and the
  mean-of-middle conventions differ by at most half the gap between the two
  middle step sizes.

  Pitfall (tests/test_optim.py, an SGL least-squares problem): Adam's first
  moment is a momentum of its own, and stacking it with the accelerated
  momentum u_t → 1 over-shoots and can oscillate or diverge, the more so the
  closer b1 is to 1. The default b1 = 0.5 (DARTS's architecture-Adam β₁) keeps
  the gradient average short; use b1 = 0 for "RMSProp-HAPG" if the problem is
  ill-conditioned, or a constant ``momentum`` below 1.

  Args:
    learning_rate: η_t, a scalar or a schedule.
    strength: λ ≥ 0, a scalar or a schedule.
    l1_ratio: α in [0, 1].
    groups: group layout for the params (see ``sgl_prox``).
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's ε, added to √v̂.
    momentum: as in ``hapg``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with ``AdamHapgState``;
    extra keyword arguments of ``update`` are ignored.

  References:
    Wu et al. 2021, Eq. 5-10 and "AdamHAPG"; Kingma & Ba 2015.
  """
  _check(learning_rate, strength, l1_ratio, momentum)
  _hyper.check_unit_interval('b1', b1)
  _hyper.check_unit_interval('b2', b2)
  layout = as_layout(groups)

  def init_fn(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdamHapgState(count=jnp.zeros([], jnp.int32), mu=zeros,
                         nu=jax.tree.map(jnp.zeros_like, params),
                         prox_params=params)

  def update_fn(grads, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_hyper.NO_PARAMS_MSG)
    eta = _hyper.value_at(learning_rate, state.count)
    lam = _hyper.value_at(strength, state.count)
    t = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(grads, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
    mu_hat = optax.tree.bias_correction(mu, b1, t)
    nu_hat = optax.tree.bias_correction(nu, b2, t)
    step = jax.tree.map(lambda v: eta / (jnp.sqrt(v) + eps), nu_hat)
    z = jax.tree.map(lambda a, s, m: a - (s * m).astype(a.dtype),
                     params, step, mu_hat)
    leaves, ids, _ = layout.leaves(step)
    median_step = layout.lower_median(leaves, ids)
    x = prox_sgl(z, jax.tree.map(lambda s: s * lam * l1_ratio, step),
                 median_step * lam * (1 - l1_ratio), layout)
    u = _momentum_at(momentum, t)
    updates = _extrapolate(x, state.prox_params, params, u)
    return updates, AdamHapgState(count=t, mu=mu, nu=nu, prox_params=x)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_STATES = (HapgState, AdamHapgState)


def sparse_params(opt_state):
  """The latest proximal point x_t held by ``hapg`` / ``adam_hapg``.

  Searches the whole optimizer state (chains, ``inject_hyperparams``,
  ``masked``, ``partition``). Architectures and pruned networks are read
  from this exactly sparse point, never from the extrapolated params. When
  several HAPG states partition the params (``optax.partition``), their
  points are merged.

  Args:
    opt_state: the state of an optimizer containing ``hapg`` or
      ``adam_hapg``.

  Returns:
    A pytree like the params (``MaskedNode`` where no HAPG state owns a leaf).

  Raises:
    ValueError: if the state holds no HAPG state, or two own the same leaf.
  """
  is_state = lambda s: isinstance(s, _STATES)
  found = [s.prox_params for s in jax.tree.leaves(opt_state, is_leaf=is_state)
           if is_state(s)]
  if not found:
    raise ValueError(
        'sparse_params: opt_state holds no hapg/adam_hapg state; build the '
        'optimizer with sparsenas_jax.optim.hapg or adam_hapg.')
  if len(found) == 1:
    return found[0]
  is_masked = lambda x: isinstance(x, optax.MaskedNode)

  def merge(*xs):
    owned = [x for x in xs if not is_masked(x)]
    if len(owned) > 1:
      raise ValueError('sparse_params: several hapg/adam_hapg states own the '
                       'same params; give each a disjoint optax.partition.')
    return owned[0] if owned else optax.MaskedNode()

  return jax.tree.map(merge, *found, is_leaf=is_masked)
