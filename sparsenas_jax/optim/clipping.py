"""Global-norm gradient clipping with the norm as one reduction.

``optax.clip_by_global_norm`` and ``optax.tree.norm`` reduce each leaf on its
own: for a supernet's hundreds of weight leaves, hundreds of small XLA
programs to compile. Here the leaves are concatenated and reduced once; the
values are optax's up to the order of the float32 sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def global_norm(tree) -> jax.Array:
  """‖tree‖₂ over all leaves (float32), one reduction of their
  concatenation; 0 for a tree without leaves."""
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
  if not leaves:
    return jnp.float32(0)
  return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def clip_coefficient(tree, max_norm) -> jax.Array:
  """c = min(1, max_norm / ‖tree‖₂): the factor global-norm clipping
  multiplies every leaf by."""
  norm = global_norm(tree)
  return jnp.where(norm < max_norm, 1.0, max_norm / jnp.maximum(norm, 1e-30))


def clip_by_global_norm(
    max_norm: float) -> optax.GradientTransformationExtraArgs:
  """``optax.clip_by_global_norm`` with the factor of ``clip_coefficient``;
  extra keyword arguments of ``update`` are ignored, as optax's are."""
  def update(updates, state, params=None, **extra_args):
    del params, extra_args
    scale = clip_coefficient(updates, max_norm)
    return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state
  return optax.GradientTransformationExtraArgs(
      lambda params: optax.EmptyState(), update)
