"""The sparse supernet: the DARTS CNN search network with linear op mixing.

Each intermediate node j of a cell is a linear combination of every candidate
op applied to every predecessor (Wu et al. 2021, Eq. 1),

    x_j = Σ_{i<j} Σ_{o∈O} A_ij^o o(x_i),

with no softmax, so the Sparse Group Lasso can drive single weights A_ij^o
(paths) and whole nodes A_(j) to exactly zero.

The architecture weights A are not Flax params: they are a separate pytree
(``init_arch``) passed to ``SearchNetwork.__call__``, so the weights w and the
architecture A can be differentiated and optimised apart (Eq. 4). The pytree
has one leaf per (cell type, intermediate node), of shape
``(number of predecessors, number of ops)``, which is exactly the node group
A_(j) of Eq. 3 (``optim.darts_node_groups``)::

  {'normal': {'node_0': (2, 7), 'node_1': (3, 7), 'node_2': (4, 7),
              'node_3': (5, 7)},
   'reduce': {...the same...}}

Row i of ``node_j`` weighs the edge from predecessor i: 0 and 1 are the
cell's two inputs (the outputs of the two previous cells), 2 + k is
intermediate node k.

The network layout is DARTS's search network (Liu et al. 2019): a 3x3 stem,
``layers`` cells with reductions at ``layers // 3`` and ``2 * layers // 3``
(where channels double), global average pooling and a linear classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsenas_jax import search_space
from sparsenas_jax.models import batched_cell
from sparsenas_jax.models.ops import batch_norm
from sparsenas_jax.models.ops import conv2d
from sparsenas_jax.models.ops import conv_init
from sparsenas_jax.models.ops import FactorizedReduce
from sparsenas_jax.models.ops import make_op
from sparsenas_jax.models.ops import ReLUConvBN

# SearchNetwork.cell_impl: 'batched' (BatchedSearchCell, SearchCell's
# params), 'stacked' (BatchedSearchCell, params stacked per stage),
# 'scanned' (BatchedSearchCell, params packed per stage, the intermediate
# nodes' stages as one lax.scan), 'reference' (SearchCell).
CELL_IMPLS = ('batched', 'stacked', 'scanned', 'reference')
# The params layout of each BatchedSearchCell formulation.
_LAYOUTS = {'batched': 'per_edge', 'stacked': 'stacked', 'scanned': 'packed'}


def default_cell_impl(backend: Optional[str] = None) -> str:
  """The cell formulation ``cell_impl='auto'`` picks for ``backend``.

  ``'scanned'`` on XLA:CPU, ``'reference'`` on every other backend.

  Both compute the same function with the same depthwise primitives
  (``models.depthwise``, which lower per backend). On XLA:CPU the batched
  cell applies each kind of op once per node stage instead of once per
  edge, the packed layout holds each kind of kernel of a stage's edges in
  one leaf, as the computation reads it, and the scan compiles the edges
  between intermediate nodes as one body: fewer distinct XLA kernels to
  compile. With jaxlib
  0.11.2, XLA:GPU's Triton GEMM tiling pass failed a check on the stacked
  and batched cells at the DARTS size (docs/performance.md), hence the
  straightforward cell there.

  Args:
    backend: a JAX platform name (``'cpu'``, ``'gpu'``, ``'tpu'``); None for
      ``jax.default_backend()``.

  Returns:
    A name from ``CELL_IMPLS``.
  """
  backend = backend or jax.default_backend()
  return 'scanned' if backend == 'cpu' else 'reference'


def init_arch(rng: jax.Array, *, nodes: int = 4,
              ops: Sequence[str] = search_space.DARTS_OPS,
              scale: Optional[float] = None, noise: float = 1e-3
              ) -> dict[str, dict[str, jax.Array]]:
  """Initial architecture weights A: ``scale + noise * N(0, 1)``.

  DARTS initialises its architecture logits as 1e-3 * N(0, 1); what reaches
  the network is their softmax, about 1/|O| per op. A linear combination
  (Eq. 1) applies A directly, so initialising it at 1e-3 * N(0, 1) would
  almost cut the signal through every cell. We start instead from the mixing
  weights DARTS effectively starts from, ``scale = 1/|O|``, plus the same
  small noise to break the symmetry between ops.

  Args:
    rng: a ``jax.random`` key.
    nodes: intermediate nodes per cell.
    ops: op names (a subset of ``search_space.DARTS_OPS``); fixes the second
      dimension.
    scale: the common initial weight; ``None`` for ``1 / len(ops)``.
    noise: standard deviation of the Gaussian symmetry-breaking noise.

  Returns:
    ``{cell_type: {f'node_{j}': float32[j + 2, len(ops)]}}`` for the cell
    types in ``search_space.CELL_TYPES``.

  Raises:
    ValueError: for an unknown op or ``nodes < 1``.

  References:
    Wu et al. 2021, Eq. 1; Liu et al. 2019 (DARTS), whose reference code
    draws its architecture logits from 1e-3 * N(0, 1).
  """
  ops = search_space.check_ops(ops)
  if nodes < 1:
    raise ValueError(f'nodes must be >= 1, got {nodes}.')
  if scale is None:
    scale = 1.0 / len(ops)
  return _init_arch(rng, jnp.float32(scale), jnp.float32(noise), nodes=nodes,
                    num_ops=len(ops))


@functools.partial(jax.jit, static_argnames=('nodes', 'num_ops'))
def _init_arch(rng, scale, noise, *, nodes, num_ops):
  # One draw for all leaves: a single small program, compiled once per shape.
  shapes = [search_space.arch_shapes(nodes, num_ops)] * len(
      search_space.CELL_TYPES)
  sizes = [int(np.prod(s)) for cell in shapes for s in cell.values()]
  z = jax.random.normal(rng, (sum(sizes),), jnp.float32)
  leaves = iter(jnp.split(scale + noise * z, np.cumsum(sizes)[:-1]))
  return {t: {name: next(leaves).reshape(shape)
              for name, shape in cell.items()}
          for t, cell in zip(search_space.CELL_TYPES, shapes)}


def _shapes_of(tree) -> Any:
  """Nested dict of leaf shapes, or the type name of a non-mapping."""
  if isinstance(tree, Mapping):
    return {k: _shapes_of(v) for k, v in tree.items()}
  shape = getattr(tree, 'shape', None)
  return tuple(shape) if shape is not None else type(tree).__name__


def _shapes_str(shapes) -> str:
  if isinstance(shapes, Mapping):
    return '{' + ', '.join(f'{k!r}: {_shapes_str(v)}'
                           for k, v in shapes.items()) + '}'
  return str(shapes)


def _check_shapes(tree, expected, what: str, nodes: int, num_ops: int):
  got = _shapes_of(tree)
  if got != expected:
    raise ValueError(
        f'{what} does not match nodes={nodes}, {num_ops} ops: expected shapes '
        f'{_shapes_str(expected)}, got {_shapes_str(got)}.')


def check_arch(arch, *, nodes: int, num_ops: int) -> None:
  """Raises a one-line ValueError unless ``arch`` has the expected shapes.

  Args:
    arch: architecture pytree (see ``init_arch``).
    nodes: intermediate nodes per cell.
    num_ops: number of candidate ops.

  Raises:
    ValueError: naming the expected and the given shapes.
  """
  cell = search_space.arch_shapes(nodes, num_ops)
  _check_shapes(arch, {t: cell for t in search_space.CELL_TYPES}, 'arch',
                nodes, num_ops)


class MixedOp(nn.Module):
  """One edge: Σ_o A^o o(x) over the candidate ops (Wu et al. 2021, Eq. 1).

  Attributes:
    channels: input and output channels.
    stride: 1, or 2 on the edges from a reduction cell's inputs.
    ops: op names.
  """
  channels: int
  stride: int
  ops: Sequence[str] = search_space.DARTS_OPS

  @nn.compact
  def __call__(self, x, weights):
    """Mixes the ops.

    Args:
      x: ``[N, H, W, channels]``.
      weights: ``[len(ops)]``, the edge's row of the node's arch weights.

    Returns:
      ``[N, ceil(H/stride), ceil(W/stride), channels]``.
    """
    out = None
    for o, op in enumerate(self.ops):
      y = weights[o].astype(x.dtype) * make_op(
          op, self.channels, self.stride, name=op)(x)
      out = y if out is None else out + y
    return out


class SearchCell(nn.Module):
  """A DARTS cell whose nodes mix all ops on all incoming edges linearly.

  Two input nodes (the outputs of the two previous cells, preprocessed to
  ``channels`` channels by ReLUConvBN 1x1, or by ``FactorizedReduce`` for the
  first when the previous cell was a reduction, so that both inputs have the
  same resolution), then ``nodes`` intermediate nodes, each summing over all
  its predecessors (Eq. 1). In a reduction cell the edges from the two inputs
  have stride 2. The output is the concatenation of the intermediate nodes.

  Attributes:
    channels: C, the channels of every node.
    reduction: whether this is a reduction cell.
    reduction_prev: whether the previous cell was a reduction cell.
    nodes: intermediate nodes.
    ops: op names.
  """
  channels: int
  reduction: bool = False
  reduction_prev: bool = False
  nodes: int = 4
  ops: Sequence[str] = search_space.DARTS_OPS

  @nn.compact
  def __call__(self, s0, s1, weights):
    """Applies the cell.

    Args:
      s0: ``[N, H0, W0, C0]``, output of the cell two back (H0 = 2 H1 if
        ``reduction_prev``, else H1).
      s1: ``[N, H1, W1, C1]``, output of the previous cell.
      weights: ``{f'node_{j}': [j + 2, len(ops)]}``, one cell type of the
        arch pytree.

    Returns:
      ``[N, H, W, nodes * channels]`` with H = ceil(H1/2) in a reduction
      cell, else H1.

    References:
      Wu et al. 2021, Eq. 1.
    """
    _check_shapes(weights,
                  search_space.arch_shapes(self.nodes, len(self.ops)),
                  'cell weights', self.nodes, len(self.ops))
    c = self.channels
    if self.reduction_prev:
      s0 = FactorizedReduce(c, name='preprocess0')(s0)
    else:
      s0 = ReLUConvBN(c, name='preprocess0')(s0)
    s1 = ReLUConvBN(c, name='preprocess1')(s1)
    states = [s0, s1]
    for j in range(self.nodes):
      a = weights[f'node_{j}']
      node = None
      for i, h in enumerate(states):
        stride = search_space.edge_stride(self.reduction, i)
        y = MixedOp(c, stride, self.ops, name=f'node_{j}_edge_{i}')(h, a[i])
        node = y if node is None else node + y
      states.append(node)
    return jnp.concatenate(states[2:], axis=-1)


class BatchedSearchCell(nn.Module):
  """``SearchCell`` computed edge-batched: the same function, far fewer ops.

  The edges leaving one node are computed together, one application per
  kind of op instead of one per edge (``batched_cell``): far fewer XLA ops,
  hence much faster compilation. Outputs agree with ``SearchCell`` up to the
  order of floating-point sums.

  ``layout`` lays the params out (``batched_cell`` describes each): with
  ``'per_edge'`` the parameter tree, its names and its initial values are
  exactly ``SearchCell``'s; with ``'stacked'`` the params of each stage's
  edges are stacked along a leading axis (``reference_to_stacked_params``
  converts); with ``'packed'`` each stage's params are in the layout its
  computation reads (``batched_cell.PackedStageParams``;
  ``stacked_to_packed_params`` converts): the fewest leaves and no param
  reshuffled in the program.

  Attributes:
    channels: C, the channels of every node.
    reduction: whether this is a reduction cell.
    reduction_prev: whether the previous cell was a reduction cell.
    nodes: intermediate nodes.
    ops: op names.
    layout: ``'per_edge'``, ``'stacked'`` or ``'packed'``.
    scan: the edges between intermediate nodes as one ``lax.scan``
      (``batched_cell.cell_nodes``).
  """
  channels: int
  reduction: bool = False
  reduction_prev: bool = False
  nodes: int = 4
  ops: Sequence[str] = search_space.DARTS_OPS
  layout: str = 'per_edge'
  scan: bool = False

  @nn.compact
  def __call__(self, s0, s1, weights):
    """Applies the cell; arguments and result as ``SearchCell.__call__``."""
    _check_shapes(weights,
                  search_space.arch_shapes(self.nodes, len(self.ops)),
                  'cell weights', self.nodes, len(self.ops))
    c = self.channels
    p0, p1 = batched_cell.preprocess_params(
        s0.shape[-1], s1.shape[-1], c, self.reduction_prev)
    x = batched_cell.preprocess(s0, s1, p0, p1,
                                reduction_prev=self.reduction_prev)
    stage_params = []
    for k, edges in enumerate(batched_cell.stage_edges(self.nodes)):
      stride = 2 if self.reduction and k == 0 else 1
      num_edges = sum(len(row) for row in edges)
      if self.layout == 'packed':
        stage_params.append(batched_cell.PackedStageParams(
            c, stride, self.ops, len(edges), num_edges // len(edges),
            name=f'stage_{k}')())
      elif self.layout == 'stacked':
        stage_params.append(batched_cell.MixedOpParams(
            c, stride, self.ops, num_edges, name=f'stage_{k}')())
      else:
        stage_params.append(batched_cell.stack_edge_params([
            batched_cell.MixedOpParams(c, stride, self.ops,
                                       name=f'node_{j}_edge_{i}')()
            for row in edges for i, j in row]))
    return batched_cell.cell_nodes(x, weights, stage_params,
                                   reduction=self.reduction, nodes=self.nodes,
                                   ops=self.ops, scan=self.scan,
                                   packed=self.layout == 'packed')


class SearchNetwork(nn.Module):
  """The DARTS search network with linearly mixed ops (the sparse supernet).

  Example::

    model = SearchNetwork(C=16, num_classes=10, layers=8)
    arch = init_arch(jax.random.key(0))
    params = model.init(jax.random.key(1), images, arch)['params']
    logits = model.apply({'params': params}, images, arch)

  The variables hold a ``params`` collection only: batch norm uses batch
  statistics and has no affine parameters (see ``ops``), so ``apply`` is a
  pure function of (params, arch, images).

  Attributes:
    C: initial channels (16 in DARTS's search).
    num_classes: classifier outputs.
    layers: number of cells, >= 3 (DARTS's search uses 8).
    nodes: intermediate nodes per cell.
    ops: op names, a subset of ``search_space.DARTS_OPS``; fixes the arch's
      last axis.
    stem_multiplier: the stem has ``stem_multiplier * C`` channels.
    cell_impl: ``'batched'`` (the default: ``BatchedSearchCell``, the same
      function and params as ``'reference'``, much faster to compile),
      ``'stacked'`` (``BatchedSearchCell`` with the params of each stage's
      edges stacked: fewer leaves; ``reference_to_stacked_params``
      converts), ``'scanned'`` (the same function, the params of each
      stage packed as its computation reads them, ``batched_cell.
      stacked_to_packed_params`` converts; the edges between
      intermediate nodes as one ``lax.scan`` per cell: a smaller
      program) or ``'reference'`` (``SearchCell``, one
      ``MixedOp`` per edge). ``default_cell_impl`` is the choice per
      backend that the jobs' ``cell_impl='auto'`` makes.
    remat: rematerialise each cell in the backward pass (``nn.remat``):
      only the cells' inputs are kept from the forward pass, for about one
      more forward pass of compute. The same values.

  References:
    Wu et al. 2021, Eq. 1 and "Sparse Supernet"; Liu et al. 2019 (DARTS).
  """
  C: int
  num_classes: int
  layers: int
  nodes: int = 4
  ops: Sequence[str] = search_space.DARTS_OPS
  stem_multiplier: int = 3
  cell_impl: str = 'batched'
  remat: bool = False

  def __post_init__(self):
    if self.layers < 3:
      raise ValueError(
          f'layers must be >= 3 (a normal cell, then the two reduction cells '
          f'at layers // 3 and 2 * layers // 3), got {self.layers}.')
    if self.nodes < 1:
      raise ValueError(f'nodes must be >= 1, got {self.nodes}.')
    if self.C % 2:
      raise ValueError(f'C must be even (FactorizedReduce splits the '
                       f'channels in two), got {self.C}.')
    search_space.check_ops(self.ops)
    if self.cell_impl not in CELL_IMPLS:
      raise ValueError(f'cell_impl must be one of {", ".join(CELL_IMPLS)}; '
                       f'got {self.cell_impl!r}.')
    super().__post_init__()

  def reduction_layers(self) -> tuple[int, int]:
    """Indices of the two reduction cells."""
    return search_space.reduction_layers(self.layers)

  @nn.compact
  def __call__(self, x, arch):
    """Computes logits.

    Args:
      x: ``[N, H, W, 3]`` float images (any channel count).
      arch: the architecture pytree of ``init_arch(nodes=self.nodes,
        ops=self.ops)``; not a Flax param.

    Returns:
      ``[N, num_classes]`` logits.

    Raises:
      ValueError: if the shapes of ``arch`` do not match ``nodes`` and ``ops``.
    """
    check_arch(arch, nodes=self.nodes, num_ops=len(self.ops))
    stem = self.param('stem', conv_init,
                      (3, 3, x.shape[-1], self.stem_multiplier * self.C))
    s0 = s1 = batch_norm(conv2d(x, stem))
    c = self.C
    reduction_prev = False
    for layer in range(self.layers):
      reduction = layer in self.reduction_layers()
      if reduction:
        c *= 2
      if self.cell_impl == 'reference':
        cell_class = nn.remat(SearchCell) if self.remat else SearchCell
        cell = cell_class(c, reduction, reduction_prev, self.nodes, self.ops,
                          name=f'cell_{layer}')
      else:
        cell_class = (nn.remat(BatchedSearchCell) if self.remat
                      else BatchedSearchCell)
        cell = cell_class(c, reduction, reduction_prev, self.nodes, self.ops,
                          _LAYOUTS[self.cell_impl],
                          self.cell_impl == 'scanned', name=f'cell_{layer}')
      cell_type = search_space.CELL_TYPES[int(reduction)]
      s0, s1 = s1, cell(s0, s1, arch[cell_type])
      reduction_prev = reduction
    features = jnp.mean(s1, axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=conv_init,
                    name='classifier')(features)


def count_params(params) -> int:
  """Total number of elements in a pytree of arrays (or shape structs)."""
  return int(sum(np.prod(np.shape(leaf), dtype=np.int64)
                 for leaf in jax.tree.leaves(params)))
