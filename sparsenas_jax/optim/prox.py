"""Proximal operators of the Sparse Group Lasso and the penalty itself.

With λ = ``strength`` and α = ``l1_ratio``, the SGL penalty (Wu et al. 2021,
Eq. 3) is

    Ω(A) = λα ‖A‖₁ + λ(1 − α) Σₙ √|A₍ₙ₎| ‖A₍ₙ₎‖₂ ,

and its proximal operator is the composition of the group and the l1 operators
(Eq. 5), which is exact because the l1 norm is the finest level of a
hierarchical (tree-structured) norm (Bach et al. 2012, Jenatton et al. 2011).

Every function takes an array or a pytree; groups are a layout from
``sparsenas_jax.optim.groups``. Elements of a zero group stay exactly zero and
have finite (zero) gradients: norms are taken with a guarded square root.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsenas_jax.optim.groups import as_layout


def _per_leaf(value, tree):
  """Returns leaves of ``value`` aligned with ``tree`` (a scalar broadcasts)."""
  leaves = jax.tree.leaves(tree)
  if jax.tree.structure(value) == jax.tree.structure(tree) and leaves:
    return jax.tree.leaves(value)
  return [value] * len(leaves)


def prox_l1(x, threshold):
  """Soft thresholding, the proximal operator of threshold·‖·‖₁.

  ``[prox(x)]ᵢ = sgn(xᵢ) (|xᵢ| − tᵢ)₊`` (Wu et al. 2021, Eq. 9).

  Args:
    x: array or pytree.
    threshold: t ≥ 0, a scalar or a pytree like ``x`` of per-element values
      (AdamHAPG's per-element step sizes times λα).

  Returns:
    The proximal point, with the structure of ``x``.
  """
  leaves, treedef = jax.tree.flatten(x)
  out = [jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0).astype(v.dtype)
         for v, t in zip(leaves, _per_leaf(threshold, x))]
  return jax.tree.unflatten(treedef, out)


def _group_norms(layout, leaves, ids):
  """‖x₍ₙ₎‖₂ per group, with a zero-safe gradient (0 at a zero group)."""
  sq = layout.segment_sum([jnp.square(v) for v in leaves], ids)
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1)), 0), nonzero


def prox_group_l2(x, threshold, groups):
  """Group soft thresholding, the proximal operator of the group-l2 term.

  ``[prox(x)]₍ₙ₎ = (1 − √|A₍ₙ₎| tₙ / ‖x₍ₙ₎‖₂)₊ x₍ₙ₎`` (Wu et al. 2021, Eq. 10):
  ``threshold`` is η·λ(1 − α) and the √(group size) factor of Eq. 3 is applied
  here, with |A₍ₙ₎| counted over the whole layout. Unpenalised elements
  (group id -1) pass through unchanged.

  Args:
    x: array or pytree.
    threshold: tₙ ≥ 0, a scalar or an array of shape ``[num_groups]``.
    groups: a group layout for ``x`` (see ``groups.py``).

  Returns:
    The proximal point, with the structure of ``x``.
  """
  layout = as_layout(groups)
  leaves, ids, treedef = layout.leaves(x)
  if not leaves:
    return x
  norm, nonzero = _group_norms(layout, leaves, ids)
  dtype = norm.dtype
  t = jnp.asarray(threshold, dtype) * jnp.sqrt(layout.sizes).astype(dtype)
  scale = jnp.where(
      nonzero, jnp.maximum(1 - t / jnp.where(nonzero, norm, 1), 0), 0)
  scales = layout.broadcast(leaves, ids, scale, fill=1)
  return jax.tree.unflatten(treedef, [v * s for v, s in zip(leaves, scales)])


def prox_sgl(x, l1_threshold, group_threshold, groups):
  """The SGL proximal operator as group ∘ l1 (Wu et al. 2021, Eq. 5).

  Args:
    x: array or pytree.
    l1_threshold: η·λα, a scalar or a per-element pytree like ``x``.
    group_threshold: η·λ(1 − α), a scalar or an array ``[num_groups]``; the
      √|A₍ₙ₎| factor is applied inside.
    groups: a group layout for ``x``.

  Returns:
    The proximal point: exactly zero where the penalty selects zeros.
  """
  layout = as_layout(groups)
  leaves, ids, treedef = layout.leaves(x)
  l1 = [jnp.where(i < layout.num_groups, t, 0)
        for i, t in zip(ids, _per_leaf(l1_threshold, x))]
  y = prox_l1(x, jax.tree.unflatten(treedef, l1))
  return prox_group_l2(y, group_threshold, layout)


def sgl_penalty(params, strength, l1_ratio, groups):
  """Ω(A) = λα‖A‖₁ + λ(1 − α) Σₙ √|A₍ₙ₎| ‖A₍ₙ₎‖₂ (Wu et al. 2021, Eq. 3).

  Unpenalised elements (group id -1) are left out. Its autodiff gradient is a
  subgradient (0 at a zero element or group), which is what the SGD and Adam
  baselines of the pruning ablation descend.

  Args:
    params: array or pytree.
    strength: λ ≥ 0.
    l1_ratio: α in [0, 1]; 1 is the Lasso, 0 the group Lasso.
    groups: a group layout for ``params``.

  Returns:
    A scalar.
  """
  layout = as_layout(groups)
  leaves, ids, _ = layout.leaves(params)
  if not leaves:
    return jnp.zeros(())
  # v·sgn(v) = |v| with derivative sgn(v): 0 at 0, the minimum-norm
  # subgradient (jnp.abs differentiates to 1 there).
  l1 = sum(jnp.sum(jnp.where(i < layout.num_groups, v * jnp.sign(v), 0))
           for v, i in zip(leaves, ids))
  norm, _ = _group_norms(layout, leaves, ids)
  group = jnp.sum(jnp.sqrt(layout.sizes).astype(norm.dtype) * norm)
  return strength * (l1_ratio * l1 + (1 - l1_ratio) * group)
