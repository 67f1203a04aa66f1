"""The DARTS CNN search space: candidate ops, cell types, shapes of A.

The single definition of what the search chooses from, shared by the search
network (``models.supernet``), the derivation (``genotype``), the evaluation
network (``models.eval_network``) and the configs. Plain Python: importing it
pulls in neither JAX nor Flax.

A cell has two inputs (the outputs of the two previous cells) and ``nodes``
intermediate nodes; intermediate node j sums ops applied to each of its
``j + 2`` predecessors (Wu et al. 2021, Eq. 1). The architecture weights A of
one cell type are one array per node, ``(j + 2, len(ops))`` (``arch_shapes``);
a network stacks cells of the types in ``CELL_TYPES``, the reduction cells at
``reduction_layers(layers)``.

References:
  Wu et al. 2021, "Neural Architecture Search as Sparse Supernet", Eq. 1;
  Liu, Simonyan and Yang 2019 (DARTS) for the search space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

DARTS_OPS = ('max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
             'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
"""The DARTS candidate ops without ``none``, which a linear combination with a
sparsity penalty makes redundant (a zero weight already removes an op)."""

CELL_TYPES = ('normal', 'reduce')
"""The cell types of a network, in the order of the arch pytree's keys."""

NUM_CELL_INPUTS = 2
"""Predecessors every cell starts from: the outputs of the two previous
cells (node numbers 0 and 1 of a genotype)."""


class ConvOp(NamedTuple):
  """The structure of a convolutional candidate op.

  Attributes:
    kernel_size: k of the depthwise kxk convolution.
    dilation: of the depthwise convolution (2 for dil_conv, 1 for sep_conv).
    blocks: (ReLU, depthwise, pointwise, BN) blocks: 2 for sep_conv, 1 for
      dil_conv.
  """
  kernel_size: int
  dilation: int
  blocks: int


CONV_OPS = {
    'sep_conv_3x3': ConvOp(3, 1, 2),
    'sep_conv_5x5': ConvOp(5, 1, 2),
    'dil_conv_3x3': ConvOp(3, 2, 1),
    'dil_conv_5x5': ConvOp(5, 2, 1),
}
"""The convolutional ops of ``DARTS_OPS``; the others are parameter-free
pools and ``skip_connect``."""


def check_ops(ops: Sequence[str]) -> tuple[str, ...]:
  """Returns ``ops`` as a tuple; raises ValueError on an unknown name.

  Args:
    ops: op names, a non-empty subset of ``DARTS_OPS`` without duplicates.

  Returns:
    ``tuple(ops)``.

  Raises:
    ValueError: (one line) for a string, an unknown name, an empty list or a
      duplicate.
  """
  if isinstance(ops, str):
    raise ValueError(f'ops must be a sequence of op names, got the string '
                     f'{ops!r}; valid names: {", ".join(DARTS_OPS)}.')
  ops = tuple(ops)
  unknown = [op for op in ops if op not in DARTS_OPS]
  if unknown:
    raise ValueError(f'unknown op {unknown[0]!r}; valid names: '
                     f'{", ".join(DARTS_OPS)}.')
  if not ops:
    raise ValueError(f'ops is empty; valid names: {", ".join(DARTS_OPS)}.')
  if len(set(ops)) != len(ops):
    raise ValueError(f'ops has duplicates: {ops}.')
  return ops


def arch_shapes(nodes: int, num_ops: int) -> dict[str, tuple[int, int]]:
  """Shapes of one cell type's architecture weights: node j has j + 2 rows.

  Row i of ``node_j`` weighs the edge from predecessor i (0 and 1 the cell
  inputs, 2 + k intermediate node k), column o the op ``ops[o]``.

  Args:
    nodes: intermediate nodes per cell.
    num_ops: candidate ops.

  Returns:
    ``{f'node_{j}': (j + 2, num_ops) for j in range(nodes)}``.
  """
  return {f'node_{j}': (j + NUM_CELL_INPUTS, num_ops) for j in range(nodes)}


def edge_stride(reduction: bool, src: int) -> int:
  """Stride of an edge from predecessor ``src``: 2 from a reduction cell's
  inputs, else 1."""
  return 2 if reduction and src < NUM_CELL_INPUTS else 1


def reduction_layers(layers: int) -> tuple[int, int]:
  """Indices of the two reduction cells among ``layers`` cells (DARTS)."""
  return layers // 3, 2 * layers // 3


# -- The DARTS recurrent cell (Penn Treebank) ---------------------------------

RNN_OPS = ('tanh', 'relu', 'sigmoid', 'identity')
"""The activations f of a recurrent edge's highway s + σ(c)⊙(f(h) − s),
DARTS's list without ``none`` (a zero weight already removes an edge)."""

RNN_NODES = 8
"""Intermediate nodes of the DARTS recurrent cell."""


def check_rnn_ops(ops: Sequence[str]) -> tuple[str, ...]:
  """``check_ops`` for the recurrent activations ``RNN_OPS``."""
  ops = tuple(ops) if not isinstance(ops, str) else ops
  if isinstance(ops, str) or not ops or len(set(ops)) != len(ops) or any(
      op not in RNN_OPS for op in ops):
    raise ValueError(f'recurrent ops must be a non-empty subset of '
                     f'{", ".join(RNN_OPS)} without duplicates; got {ops!r}.')
  return ops


def rnn_arch_shapes(nodes: int, num_ops: int) -> dict[str, tuple[int, int]]:
  """Shapes of the recurrent cell's architecture weights: node i (0-based)
  has i + 1 rows, one per predecessor s_0 … s_i (s_0 is the input state).

  Returns:
    ``{f'node_{i}': (i + 1, num_ops) for i in range(nodes)}``.
  """
  return {f'node_{i}': (i + 1, num_ops) for i in range(nodes)}
