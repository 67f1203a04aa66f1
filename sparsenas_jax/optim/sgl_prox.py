"""``sgl_prox``: the SGL proximal step as the last element of an Optax chain."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sparsenas_jax.optim import _hyper
from sparsenas_jax.optim.groups import as_layout
from sparsenas_jax.optim.prox import prox_sgl


class SglProxState(NamedTuple):
  """State of ``sgl_prox``."""
  count: jax.Array  # shape=(), dtype=int32; steps taken, indexes the schedules


def sgl_prox(
    strength: optax.ScalarOrSchedule,
    l1_ratio: float,
    *,
    groups,
    step_size: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
  """Proximal step of the Sparse Group Lasso; must be last in a chain.

  The incoming update u is taken as a gradient step from the params A
  (z = A + u, e.g. u = −η∇l for SGD); the transformation returns the update
  that lands the params exactly on prox_{ηΩ}(z), the SGL proximal point with
  l1 threshold η·λ·α and group threshold η·λ·(1 − α)·√|A₍ₙ₎| (Wu et al. 2021,
  Eq. 5, 9, 10). Params that the prox sets to zero become exactly zero after
  ``optax.apply_updates``. Chained after ``optax.sgd(η)`` with the same η this
  is ISTA (proximal gradient descent) on l(A) + Ω(A)::

    lam = optax.linear_schedule(0.0, 1e-2, transition_steps=1000)
    opt = optax.chain(optax.sgd(lr), sgl_prox(lam, 0.5, groups=g, step_size=lr))

  After ``optax.adam(lr)`` the thresholds still use the scalar ``step_size``;
  for per-element Adam step sizes in the prox use ``adam_hapg``.

  Args:
    strength: λ ≥ 0, a scalar or a schedule of the step count.
    l1_ratio: α in [0, 1] (sklearn's ElasticNet meaning): 1 gives the Lasso,
      0 the group Lasso.
    groups: group layout for the params (``leaf_groups``, ``row_groups``,
      ``darts_node_groups``); matched by key path, so the chain may sit
      inside ``optax.masked`` / ``optax.partition``. Under
      ``optax.inject_hyperparams`` a bare-array layout needs
      ``static_args='groups'``.
    step_size: η of the preceding gradient step, a scalar or a schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that needs ``params`` in
    ``update``; extra keyword arguments of ``update`` (``value=loss``, say)
    are ignored, as in optax's own optimizers.

  References:
    Wu et al. 2021, Eq. 3, 5, 9, 10.
  """
  _hyper.check_nonnegative('strength', strength)
  _hyper.check_nonnegative('step_size', step_size)
  _hyper.check_unit_interval('l1_ratio', l1_ratio)
  layout = as_layout(groups)

  def init_fn(params):
    del params
    return SglProxState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(_hyper.NO_PARAMS_MSG)
    lam = _hyper.value_at(strength, state.count)
    eta = _hyper.value_at(step_size, state.count)
    z = optax.apply_updates(params, updates)
    x = prox_sgl(z, eta * lam * l1_ratio, eta * lam * (1 - l1_ratio), layout)
    new_updates = jax.tree.map(lambda a, b: a - b, x, params)
    return new_updates, SglProxState(
        count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
