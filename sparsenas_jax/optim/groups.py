"""Group layouts for the Sparse Group Lasso penalty.

A *group layout* is a pytree with the structure of the parameters it describes
whose leaves are integer arrays of each leaf's shape. Element ``i`` of a leaf
belongs to group ``ids[i]``; ids are global across the tree, so a group may
span several leaves. The id ``UNPENALIZED`` (-1) marks elements the penalty
ignores (biases, say): the proximal operators leave them unchanged.

Layouts are static: they are turned into NumPy constants when a transformation
is built and never traced. They are matched to parameters by key path, so the
same layout works when the parameters arrive masked by ``optax.masked`` or
``optax.partition`` (whose ``MaskedNode`` leaves simply carry no elements).

References:
  Wu et al. 2021, Eq. 3 (groups A_(n) of the SGL penalty);
  Scardapane et al. 2017 (one group per input unit of a dense layer).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

UNPENALIZED = -1
# Groups up to this size take their median by rank selection, larger by sort.
_RANK_SELECT_MAX_WIDTH = 128

Where = Callable[[tuple[Any, ...], Any], bool]


def _number_leaves(params, where: Optional[Where], ids_for_leaf):
  """Builds a layout leaf by leaf; ``ids_for_leaf(shape, first_id)`` numbers one."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  next_id = 0
  out = []
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if where is not None and not where(path, leaf):
      out.append(np.full(shape, UNPENALIZED, np.int32))
      continue
    ids = ids_for_leaf(shape, next_id)
    next_id = int(ids.max()) + 1 if ids.size else next_id
    out.append(ids)
  return jax.tree_util.tree_unflatten(treedef, out)


def leaf_groups(params, *, where: Optional[Where] = None):
  """One group per leaf.

  Args:
    params: a pytree of arrays (or shape-dtype structs).
    where: optional predicate ``where(key_path, leaf)``; leaves for which it is
      False are left unpenalised.

  Returns:
    A group layout with the structure of ``params``.
  """
  return _number_leaves(
      params, where,
      lambda shape, first: np.full(shape, first, np.int32))


def row_groups(params, *, where: Optional[Where] = None):
  """One group per row (index along axis 0) of every leaf with ndim >= 2.

  For a Dense kernel of shape ``(in, out)`` row ``i`` holds all outgoing
  weights of input unit ``i``, so zeroing a group removes that unit: an input
  feature for the first layer, a hidden neuron for the next ones (Scardapane
  et al. 2017). Leaves with ndim < 2 (biases) are unpenalised unless ``where``
  selects them, in which case each of their elements is its own group.

  Args:
    params: a pytree of arrays (or shape-dtype structs).
    where: optional predicate ``where(key_path, leaf)`` choosing the penalised
      leaves; by default those with ndim >= 2.

  Returns:
    A group layout with the structure of ``params``.
  """
  if where is None:
    where = lambda path, leaf: np.ndim(leaf) >= 2

  def rows(shape, first):
    n = shape[0] if len(shape) else 1
    row = np.arange(first, first + n, dtype=np.int32)
    return np.broadcast_to(
        row.reshape((n,) + (1,) * max(len(shape) - 1, 0)), shape).copy()

  return _number_leaves(params, where, rows)


def darts_node_groups(arch):
  """The DARTS node grouping: all incoming weights of a node form one group.

  ``arch`` holds one array per (cell type, intermediate node) of shape
  ``(num_predecessors, num_ops)``, so the group of node n is exactly its
  array: every op on every edge entering n (Wu et al. 2021, Eq. 3).

  Args:
    arch: pytree of architecture weights, one 2-D array per node.

  Returns:
    A group layout with the structure of ``arch``.

  Raises:
    ValueError: if a leaf is not 2-D.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(arch)[0]:
    if np.ndim(leaf) != 2:
      raise ValueError(
          f'darts_node_groups: leaf {jax.tree_util.keystr(path)} has shape '
          f'{np.shape(leaf)}; expected one (num_predecessors, num_ops) array '
          'per node.')
  return leaf_groups(arch)


class GroupLayout:
  """A group layout resolved to NumPy constants, matched to params by key path.

  Attributes:
    num_groups: number of groups G (largest id + 1).
    sizes: ``np.ndarray[G]``, elements per group |A_(n)| over the whole layout.
  """

  def __init__(self, groups):
    if isinstance(groups, GroupLayout):
      groups = groups._source  # pylint: disable=protected-access
    self._source = groups
    self._ids: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(groups)[0]:
      key = jax.tree_util.keystr(path)
      try:
        ids = np.asarray(leaf)
      except jax.errors.TracerArrayConversionError:
        raise ValueError(
            'groups were traced: a group layout must be static. Under '
            "optax.inject_hyperparams pass static_args='groups'.") from None
      if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f'groups{key} has dtype {ids.dtype}; group ids must be integers '
            '(build them with leaf_groups, row_groups or darts_node_groups).')
      if ids.size and ids.min() < UNPENALIZED:
        raise ValueError(
            f'groups{key} has id {ids.min()}; ids must be >= 0, or -1 for '
            'unpenalised elements.')
      self._ids[key] = ids.astype(np.int32)
    if not self._ids:
      raise ValueError('groups is empty; give one integer array per param leaf.')
    all_ids = np.concatenate([i.ravel() for i in self._ids.values()])
    self.num_groups = int(all_ids.max()) + 1 if all_ids.size else 0
    self.sizes = np.bincount(all_ids[all_ids >= 0], minlength=self.num_groups)

  def ids(self, path, leaf) -> np.ndarray:
    """The group ids of one param leaf, with -1 mapped to the spare id G."""
    key = jax.tree_util.keystr(path)
    ids = self._ids.get(key)
    if ids is None:
      raise ValueError(
          f'groups has no entry for param {key}; the layout must have the '
          f'params\' structure (layout keys: {sorted(self._ids)[:6]}...).')
    if ids.shape != np.shape(leaf):
      raise ValueError(
          f'groups{key} has shape {ids.shape} but the param has shape '
          f'{np.shape(leaf)}; rebuild the layout from these params.')
    return np.where(ids < 0, self.num_groups, ids)

  def leaves(self, tree):
    """``(leaves, ids, treedef)`` of ``tree``, ids aligned by key path."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [leaf for _, leaf in with_path]
    ids = [self.ids(path, leaf) for path, leaf in with_path]
    return leaves, ids, treedef

  def segment_sum(self, leaves, ids) -> jax.Array:
    """Per-group sums of already-flattened leaves; returns shape [G]."""
    total = None
    for leaf, i in zip(leaves, ids):
      s = jax.ops.segment_sum(
          jnp.ravel(leaf), i.ravel(), num_segments=self.num_groups + 1)
      total = s if total is None else total + s
    return total[:self.num_groups]

  def broadcast(self, leaves, ids, per_group, fill):
    """Gathers a [G] vector to elements; unpenalised elements get ``fill``."""
    table = jnp.concatenate([per_group, jnp.asarray([fill], per_group.dtype)])
    return [table[i].astype(leaf.dtype) for leaf, i in zip(leaves, ids)]

  def lower_median(self, leaves, ids) -> jax.Array:
    """Per-group lower median of the elements' values; 0 for empty groups.

    The lower median of n sorted values is the ((n - 1) // 2)-th one, i.e. an
    element's own value; see ``adam_hapg`` for why this convention.
    """
    flat_ids = np.concatenate([i.ravel() for i in ids])
    counts = np.bincount(flat_ids, minlength=self.num_groups + 1)
    counts = counts[:self.num_groups]
    if not counts.any():
      return jnp.zeros((self.num_groups,), leaves[0].dtype)
    # Statically gather each group into a row of a [G, max size] table padded
    # with +inf, then sort the rows: a batch of short sorts is far cheaper
    # than one sort of every element keyed by group.
    order = np.argsort(flat_ids, kind='stable')  # groups made contiguous
    starts = np.cumsum(counts) - counts
    col = np.arange(int(counts.max()))
    valid = col < counts[:, None]
    table_index = np.where(
        valid, order[np.where(valid, starts[:, None] + col, 0)], flat_ids.size)
    values = jnp.concatenate([jnp.ravel(l) for l in leaves])
    values = jnp.concatenate([values, jnp.full((1,), jnp.inf, values.dtype)])
    table = values[table_index]
    k = np.maximum(counts - 1, 0) // 2  # rank of the lower median
    if table.shape[1] <= _RANK_SELECT_MAX_WIDTH:
      # Rank selection: element i's rank counts the smaller elements of its
      # row, ties broken by position. O(width²) compares, but they fuse into
      # one elementwise pass, which for rows this short XLA:CPU runs faster
      # than its sort.
      x_i, x_j = table[:, :, None], table[:, None, :]
      earlier = np.tri(table.shape[1], k=-1, dtype=bool)[None]  # [., i, j]: j < i
      rank = jnp.sum((x_j < x_i) | ((x_j == x_i) & earlier), axis=2)
      median = jnp.sum(jnp.where(rank == k[:, None], table, 0), axis=1)
    else:
      median = jnp.sort(table, axis=1)[np.arange(self.num_groups), k]
    return jnp.where(counts > 0, median, 0).astype(values.dtype)


def as_layout(groups) -> GroupLayout:
  return groups if isinstance(groups, GroupLayout) else GroupLayout(groups)
