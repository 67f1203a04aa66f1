"""The search cell computed edge-batched: SearchCell's function, fewer ops.

XLA:CPU compile time grows super-linearly with the number of ops in the
graph, and the straightforward cell (``supernet.SearchCell``) applies every
candidate op once per edge. Here the edges are grouped into *stages* by the
node they leave, and each stage applies each kind of op once:

* stage 0: the ``2 * nodes`` edges leaving the cell's two inputs (stride 2 in
  a reduction cell), edge (s, j) from input s to node j;
* stage k, 1 <= k < nodes: the ``nodes - k`` edges leaving intermediate node
  k - 1 (predecessor row k + 1 of the arch), once that node is complete.

Within a stage (Wu et al. 2021, Eq. 1, ``out_e = Σ_o A[j][i, o] op_o(x_i)``,
node j the sum of its incoming edges), feature maps of several edges are
stacked on a leading axis, channels before the batch: ``[edges, C, N, H, W]``
(the cell's inputs and output are ``[N, H, W, C]`` like every other module's;
``preprocess`` and ``cell_nodes`` transpose). This layout makes the
reductions of batch norm and of the depthwise kernel gradients run over the
minor, contiguous dimensions, which XLA:CPU reduces far faster than the
column reductions that ``[edges, N, H, W, C]`` would need:

* Parameter-free ops (the pools, the identity) see the same input on every
  edge leaving a source, and batch norm without affine parameters is a
  function of its input alone: they are computed once per source and mixed
  with each edge's weight. The pools are separable: a 3-wide max (or sum)
  over rows, then over columns, of shifted slices.
* Each conv op runs once over all the stage's edges. The depthwise
  convolutions are ``depthwise.conv`` with per-edge kernels (sums of
  shifted, scaled copies of the input, one fused loop, whose derivatives of
  every order are such loops and one reduction per conv), the 1x1 pointwise
  convolutions are one matmul batched over (op, edge), batch norm keeps its
  statistics per (op, edge, channel) as in the reference.
* The batch norms of one stage that do not depend on each other (the pools,
  factorized reduce, the first conv block of every conv op) are one batch
  norm; so are those of the two preprocessed inputs.

Only the order of floating-point sums differs from ``SearchCell``.

Parameter layouts (``BatchedSearchCell.layout``):

* per edge (``'per_edge'``): exactly ``SearchCell``'s tree
  (``node_{j}_edge_{i}`` holding ``MixedOp``'s ``{op: op_params}``), names
  and initial values included; the edges are stacked inside the
  computation, on every call.
* per stage (``'stacked'``): ``{'preprocess0', 'preprocess1', 'stage_{k}'}``,
  where ``stage_{k}`` is ``{op: op_params}`` with every leaf of ``MixedOp``'s
  tree given a leading axis over the stage's edges, in the order of
  ``stage_edges(nodes)[k]``; e.g. ``stage_0/sep_conv_3x3/block_0/depthwise``
  is ``[2 * nodes, 3, 3, 1, C]``, edges (0, 0), ..., (0, nodes - 1), (1, 0),
  ..., (1, nodes - 1). Fewer, larger leaves: no stacking on every call, and
  far fewer gradient outputs and optimizer updates.
  ``reference_to_stacked_params`` and ``stacked_to_reference_params`` convert
  between the two layouts.
* packed (``'packed'``): ``stage_{k}`` holds the stage's kernels in the
  layout ``stage`` reads them (``PackedStageParams``): one leaf per kind of
  kernel (a depthwise kernel per conv op and block, ``[K, K, E, C]``; the
  pointwise kernels of a block, ``[M, E, C_out, C]``; factorized reduce's),
  so the program neither rearranges the params nor their gradients.
  ``stacked_to_packed_params`` converts from the stacked layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from sparsenas_jax import search_space
from sparsenas_jax.models import depthwise
from sparsenas_jax.models import spatial
from sparsenas_jax.models.depthwise import out_size
from sparsenas_jax.models.ops import BN_EPS
from sparsenas_jax.models.ops import conv_init


def stage_edges(nodes: int) -> list[list[list[tuple[int, int]]]]:
  """The edges of each stage, ``[stage][source][target] -> (i, j)``.

  Edge (i, j) goes from predecessor i (0 and 1 the cell's inputs, 2 + k
  intermediate node k) to intermediate node j: row i of the arch's
  ``node_{j}``, param subtree ``node_{j}_edge_{i}`` of ``SearchCell``.
  """
  stages = [[[(i, j) for j in range(nodes)] for i in (0, 1)]]
  for k in range(1, nodes):
    stages.append([[(k + 1, j) for j in range(k, nodes)]])
  return stages


# ----------------------------------------------------------------------------
# Parameter declarations.
# ----------------------------------------------------------------------------


def _init(num_edges: Optional[int]):
  """``conv_init``, per edge when a leading edge axis is stacked."""
  if num_edges is None:
    return conv_init
  return nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform',
                                          batch_axis=(0,))


class _Kernels(nn.Module):
  """Declares conv kernels ``{name: shape}`` (with a leading edge axis)."""
  shapes: tuple[tuple[str, tuple[int, ...]], ...]
  num_edges: Optional[int] = None

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    lead = () if self.num_edges is None else (self.num_edges,)
    return {name: self.param(name, _init(self.num_edges), lead + shape)
            for name, shape in self.shapes}


def _dil_conv_shapes(k: int, c: int):
  return (('depthwise', (k, k, 1, c)), ('pointwise', (1, 1, c, c)))


def _factorized_reduce_shapes(c_in: int, c: int):
  return tuple((f'kernel_{q}', (1, 1, c_in, c // 2)) for q in range(2))


class _SepConvParams(nn.Module):
  channels: int
  kernel_size: int
  num_edges: Optional[int] = None

  @nn.compact
  def __call__(self):
    shapes = _dil_conv_shapes(self.kernel_size, self.channels)
    return {f'block_{b}': _Kernels(shapes, self.num_edges, name=f'block_{b}')()
            for b in range(2)}


class MixedOpParams(nn.Module):
  """Declares the params of a ``MixedOp`` edge, or of a stage of them.

  The tree is ``{op: op_params}`` for the ops that have params, with the
  names and shapes ``MixedOp(channels, stride, ops)`` creates (and, per edge,
  the same initial values for the same key), each leaf with a leading axis
  of ``num_edges`` when that is not None.

  Attributes:
    channels: the edges' input and output channels.
    stride: 1, or 2 on the edges leaving a reduction cell's inputs.
    ops: op names.
    num_edges: None for one edge, else the number of stacked edges.
  """
  channels: int
  stride: int
  ops: Sequence[str]
  num_edges: Optional[int] = None

  @nn.compact
  def __call__(self) -> dict[str, Any]:
    c, out = self.channels, {}
    for op in self.ops:
      if op in search_space.CONV_OPS:
        k, _, blocks = search_space.CONV_OPS[op]
        if blocks == 2:
          out[op] = _SepConvParams(c, k, self.num_edges, name=op)()
        else:
          out[op] = _Kernels(_dil_conv_shapes(k, c), self.num_edges,
                             name=op)()
      elif op == 'skip_connect' and self.stride == 2:
        out[op] = _Kernels(_factorized_reduce_shapes(c, c), self.num_edges,
                           name=op)()
    return out


def preprocess_params(c0: int, c1: int, channels: int,
                      reduction_prev: bool) -> tuple[dict, dict]:
  """Declares ``preprocess0`` and ``preprocess1`` as ``SearchCell`` does.

  Call it inside a compact method: the params belong to that module.
  """
  if reduction_prev:
    shapes0 = _factorized_reduce_shapes(c0, channels)
  else:
    shapes0 = (('kernel', (1, 1, c0, channels)),)
  p0 = _Kernels(shapes0, name='preprocess0')()
  p1 = _Kernels((('kernel', (1, 1, c1, channels)),), name='preprocess1')()
  return p0, p1


# ----------------------------------------------------------------------------
# Layout conversion.
# ----------------------------------------------------------------------------


def _cells(params: Mapping[str, Any], convert) -> dict[str, Any]:
  return {name: convert(sub) if name.startswith('cell_') else sub
          for name, sub in params.items()}


def stack_edge_params(edges: Sequence[Any]) -> Any:
  """Stacks a list of edge param trees of one structure along a new axis 0."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *edges)


def reference_to_stacked_params(params: Mapping[str, Any], *, nodes: int
                                ) -> dict[str, Any]:
  """``SearchNetwork`` params from the per-edge to the per-stage layout.

  Args:
    params: the ``params`` collection of a ``SearchNetwork`` with
      ``cell_impl='reference'`` or ``'batched'`` (one layout).
    nodes: intermediate nodes per cell.

  Returns:
    The params of the same network with ``cell_impl='stacked'``, computing
    the same function.
  """
  def convert(cell):
    out = {k: cell[k] for k in ('preprocess0', 'preprocess1')}
    for k, stage in enumerate(stage_edges(nodes)):
      out[f'stage_{k}'] = stack_edge_params(
          [cell[f'node_{j}_edge_{i}'] for row in stage for i, j in row])
    return out
  return _cells(params, convert)


def stacked_to_reference_params(params: Mapping[str, Any], *, nodes: int
                                ) -> dict[str, Any]:
  """The inverse of ``reference_to_stacked_params``."""
  def convert(cell):
    out = {k: cell[k] for k in ('preprocess0', 'preprocess1')}
    for k, stage in enumerate(stage_edges(nodes)):
      edges = [e for row in stage for e in row]
      for n, (i, j) in enumerate(edges):
        out[f'node_{j}_edge_{i}'] = jax.tree.map(lambda a, n=n: a[n],
                                                 cell[f'stage_{k}'])
    return out
  return _cells(params, convert)


def stacked_to_packed_params(params: Mapping[str, Any], *, nodes: int,
                             ops: Sequence[str]) -> dict[str, Any]:
  """``SearchNetwork`` params from the stacked to the packed layout.

  Args:
    params: the ``params`` collection of a ``SearchNetwork`` with
      ``cell_impl='stacked'``.
    nodes: intermediate nodes per cell.
    ops: the network's op names.

  Returns:
    The params of the same network with ``cell_impl='scanned'`` (the packed
    layout, ``PackedStageParams``), computing the same function.
  """
  def convert(cell):
    out = {k: cell[k] for k in ('preprocess0', 'preprocess1')}
    for k in range(nodes):
      stage_params = cell[f'stage_{k}']
      # Only a reduction cell's first stage has skip_connect params.
      stride = 2 if 'skip_connect' in stage_params else 1
      out[f'stage_{k}'] = pack_stage_params(
          stage_params, ops=ops, stride=stride, num_sources=2 if k == 0 else 1)
    return out
  return _cells(params, convert)


# ----------------------------------------------------------------------------
# Packing: a stage's stacked params to the layout of its batched ops.
# ----------------------------------------------------------------------------


def _conv_members(ops: Sequence[str]) -> list[str]:
  """The conv ops of ``ops``, SepConvs first (their block 1 follows)."""
  conv = [op for op in ops if op in search_space.CONV_OPS]
  return ([op for op in conv if search_space.CONV_OPS[op].blocks == 2] +
          [op for op in conv if search_space.CONV_OPS[op].blocks == 1])


def _pack_block(stacked, members: Sequence[str], block: int
                ) -> dict[str, Any]:
  def leaf(op, name):
    p = stacked[op]
    return (p[f'block_{block}'] if search_space.CONV_OPS[op].blocks == 2
            else p)[name]

  return {f'conv_{block}': {
      op: jnp.transpose(leaf(op, 'depthwise')[..., 0, :], (1, 2, 0, 3))
      for op in members},
          f'pointwise_{block}': jnp.stack(
              [jnp.swapaxes(leaf(op, 'pointwise')[:, 0, 0], 1, 2)
               for op in members])}


def pack_stage_params(stacked: Mapping[str, Any], *, ops: Sequence[str],
                      stride: int, num_sources: int) -> dict[str, Any]:
  """A stage's stacked params in the packed layout (``PackedStageParams``).

  Args:
    stacked: ``{op: op_params}``, each leaf with a leading axis over the
      stage's E = S * T edges, ordered (source, target).
    ops: op names.
    stride: the edges' stride.
    num_sources: S.

  Returns:
    The same params as ``PackedStageParams`` lays them out.
  """
  packed = {}
  members = _conv_members(ops)
  if members:
    packed.update(_pack_block(stacked, members, 0))
    sep = [op for op in members if search_space.CONV_OPS[op].blocks == 2]
    if sep:
      packed.update(_pack_block(stacked, sep, 1))
  if 'skip_connect' in ops and stride == 2:
    kernels = jnp.stack([stacked['skip_connect'][f'kernel_{q}'][:, 0, 0]
                         for q in range(2)])  # [2, E, C, C // 2]
    e = kernels.shape[1]
    packed['factorized_reduce'] = kernels.reshape(
        (2, num_sources, e // num_sources) + kernels.shape[2:])
  return packed


# The fan-in of each kind of packed kernel, from its shape: a depthwise
# kernel [K, K, E, C] K², a pointwise one [M, E, C_out, C] C, factorized
# reduce's [2, S, T, C, C // 2] C.
_PACKED_FAN_IN = {'conv': lambda shape: shape[0] * shape[1],
                  'pointwise': lambda shape: shape[-1],
                  'factorized_reduce': lambda shape: shape[-2]}


def _uniform(kind: str):
  """``conv_init`` of a packed kernel of ``kind``: U(-1/√fan_in,
  1/√fan_in) with each edge's fan-in, whatever the layout."""
  def init(key, shape, dtype=jnp.float32):
    bound = 1 / np.sqrt(_PACKED_FAN_IN[kind](shape))
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class _DepthwiseKernels(nn.Module):
  """Declares ``{op: [K, K, E, C]}`` depthwise kernels."""
  sizes: tuple[tuple[str, int], ...]
  num_edges: int
  channels: int

  @nn.compact
  def __call__(self) -> dict[str, jax.Array]:
    return {op: self.param(op, _uniform('conv'),
                           (k, k, self.num_edges, self.channels))
            for op, k in self.sizes}


class PackedStageParams(nn.Module):
  """Declares a stage's params in the layout its computation reads.

  The same params as a ``MixedOpParams`` stage (one ``MixedOp`` per edge,
  E = S * T edges ordered (source, target)), each kind of kernel of all
  the stage's edges in one leaf, laid out as ``stage`` consumes it, so no
  param is sliced, stacked, transposed or concatenated on the way in (nor
  its gradient on the way out):

  * ``conv_0``: ``{op: [K, K, E, C]}``, the depthwise kernel of each conv
    op's first block (taps first: ``depthwise.conv``'s layout);
    ``conv_1``: the SepConvs' second block;
  * ``pointwise_0``: ``[M, E, C_out, C]``, the 1x1 kernels of the M conv
    ops' first block, in the order of ``conv_0``; ``pointwise_1``: the
    SepConvs' second block;
  * ``factorized_reduce``: ``[2, S, T, C, C // 2]``, ``skip_connect`` at
    stride 2 (FactorizedReduce's ``kernel_0``, ``kernel_1``).

  Each kernel is drawn as ``conv_init`` draws the edge's (``packed_fan_in``
  gives each leaf's fan-in). ``pack_stage_params`` converts the stacked
  layout to this one.

  Attributes:
    channels: C.
    stride: 1, or 2 on the edges leaving a reduction cell's inputs.
    ops: op names.
    sources: S.
    targets: T.
  """
  channels: int
  stride: int
  ops: Sequence[str]
  sources: int
  targets: int

  @nn.compact
  def __call__(self) -> dict[str, Any]:
    c, e = self.channels, self.sources * self.targets
    members = _conv_members(self.ops)
    blocks = [members,
              [op for op in members if search_space.CONV_OPS[op].blocks == 2]]
    out = {}
    for b, block in enumerate(blocks):
      if not block:
        continue
      sizes = tuple((op, search_space.CONV_OPS[op].kernel_size)
                    for op in block)
      out[f'conv_{b}'] = _DepthwiseKernels(sizes, e, c, name=f'conv_{b}')()
      out[f'pointwise_{b}'] = self.param(
          f'pointwise_{b}', _uniform('pointwise'), (len(block), e, c, c))
    if 'skip_connect' in self.ops and self.stride == 2:
      out['factorized_reduce'] = self.param(
          'factorized_reduce', _uniform('factorized_reduce'),
          (2, self.sources, self.targets, c, c // 2))
    return out


def packed_fan_in(path: Sequence[Any], shape: Sequence[int]
                  ) -> Optional[int]:
  """The fan-in of a ``PackedStageParams`` leaf, None for any other leaf.

  Args:
    path: the leaf's key path in a params tree.
    shape: its shape.
  """
  names = [''] * 3 + [str(getattr(k, 'key', k)) for k in path]
  if names[-3].startswith('stage_') and names[-2].startswith('conv_'):
    return _PACKED_FAN_IN['conv'](shape)
  if names[-2].startswith('stage_') and names[-1].startswith('pointwise_'):
    return _PACKED_FAN_IN['pointwise'](shape)
  if names[-2].startswith('stage_') and names[-1] == 'factorized_reduce':
    return _PACKED_FAN_IN['factorized_reduce'](shape)
  return None


# ----------------------------------------------------------------------------
# Pure functions. Feature maps of several edges or sources are stacked on a
# leading axis, channels before the batch: [L, C, N, H, W].
# ----------------------------------------------------------------------------


def _batch_norm(x: jax.Array) -> jax.Array:
  """``ops.batch_norm`` of each ``x[l]``: statistics over N, H, W per (l, c).

  Args:
    x: ``[L, C, N, H, W]``.

  Returns:
    The normalised array, with the dtype of ``x``.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(2, 3, 4), keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=(2, 3, 4), keepdims=True)
  return ((x32 - mean) * lax.rsqrt(var + BN_EPS)).astype(x.dtype)


def _batch_norms(arrays: Sequence[jax.Array]) -> list[jax.Array]:
  """``_batch_norm`` of several ``[L_i, C, N, H, W]``, as one batch norm."""
  if len(arrays) <= 1:
    return [_batch_norm(a) for a in arrays]
  out = _batch_norm(jnp.concatenate(arrays))
  return jnp.split(out, np.cumsum([a.shape[0] for a in arrays])[:-1])


def _pointwise(y: jax.Array, kernels: jax.Array) -> jax.Array:
  """1x1 convs: every pixel of ``y[l]`` times ``kernels[l]``.

  Args:
    y: ``[L, C, N, H, W]``.
    kernels: ``[L, C_out, C]``.

  Returns:
    ``[L, C_out, N, H, W]``.
  """
  l, c, n, h, w = y.shape
  out = jnp.einsum('ldc,lcm->ldm', kernels.astype(y.dtype),
                   y.reshape(l, c, n * h * w))
  return out.reshape(l, -1, n, h, w)


def _conv_block(x: jax.Array, members: Sequence[str], packed, block: int, *,
                shared_input: bool, stride: int) -> jax.Array:
  """ReLU, depthwise, pointwise of several conv ops, before batch norm.

  Args:
    x: ``[E, C, N, H, W]``, the input of every op (``shared_input``), or
      ``[M * E, C, N, H, W]``, ordered (op, edge).
    members: the M ops, in the order of the packed params.
    packed: the stage's packed params (``PackedStageParams``).
    block: which block of the ops (0, or 1 for the SepConvs' second).
    shared_input: whether every op reads the same ``x``.
    stride: stride of the depthwise convs.

  Returns:
    ``[M * E, C, N, H', W']``, ordered (op, edge).
  """
  x = nn.relu(x)
  e = x.shape[0] if shared_input else x.shape[0] // len(members)
  kernels = packed[f'conv_{block}']
  y = jnp.concatenate([
      depthwise.conv(x if shared_input else x[m * e:(m + 1) * e],
                     kernels[op], stride, search_space.CONV_OPS[op].dilation)
      for m, op in enumerate(members)])
  pointwise = packed[f'pointwise_{block}']
  return _pointwise(y, pointwise.reshape((-1,) + pointwise.shape[2:]))


def _factorized_reduce(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """FactorizedReduce on every edge of a stage, before batch norm.

  Args:
    x: ``[S, C, N, H, W]``, the sources.
    kernels: ``[2, S, T, C, C // 2]``, the packed ``kernel_0``, ``kernel_1``.

  Returns:
    ``[S * T, C, N, ceil(H/2), ceil(W/2)]``, ordered (s, t).
  """
  s, c, n, _, _ = x.shape
  t = kernels.shape[2]
  z = spatial.even_odd(nn.relu(x))
  ho, wo = z.shape[-2:]
  z = z.reshape(2, s, c, n * ho * wo)
  # Output channels: kernel_0's, then kernel_1's (FactorizedReduce's concat).
  out = jnp.einsum('qscm,qstcd->stqdm', z, kernels.astype(x.dtype))
  return out.reshape(s * t, c, n, ho, wo)


def preprocess(s0: jax.Array, s1: jax.Array, p0, p1, *,
               reduction_prev: bool) -> jax.Array:
  """``SearchCell``'s two preprocessing ops, stacked.

  Args:
    s0: ``[N, H0, W0, C0]``, output of the cell two back.
    s1: ``[N, H, W, C1]``, output of the previous cell.
    p0: params of ``preprocess0``: a ``FactorizedReduce`` if
      ``reduction_prev``, else a 1x1 ``ReLUConvBN``.
    p1: params of ``preprocess1``, a 1x1 ``ReLUConvBN``.
    reduction_prev: whether H0 = 2 H.

  Returns:
    ``[2, C, N, H, W]``: preprocessed s0 and s1, channels first.
  """
  s0 = jnp.transpose(nn.relu(s0), (3, 0, 1, 2))
  s1 = jnp.transpose(nn.relu(s1), (3, 0, 1, 2))
  if reduction_prev:
    y0 = spatial.factorized_reduce(s0, p0['kernel_0'], p0['kernel_1'])
  else:
    y0 = spatial.conv_1x1(s0, p0['kernel'])
  return _batch_norm(jnp.stack([y0, spatial.conv_1x1(s1, p1['kernel'])]))


def stage(x: jax.Array, weights: jax.Array, packed, *, stride: int,
          ops: Sequence[str], sum_sources: bool = True) -> jax.Array:
  """All edges leaving S sources, summed per target node.

  Args:
    x: ``[S, C, N, H, W]``, the sources.
    weights: ``[S, T, len(ops)]``: ``weights[s, t]`` is the arch row of the
      edge from source s to target t.
    packed: the edges' params, ``pack_stage_params``.
    stride: 1, or 2 from a reduction cell's inputs.
    ops: op names.
    sum_sources: False: no sum over the sources, every edge's output apart.

  Returns:
    ``[T, C, N, H', W']``: target t gets ``Σ_s Σ_o weights[s, t, o]
    op_o(x[s])`` with the params of edge (s, t); without ``sum_sources``,
    ``[S * T, C, N, H', W']``, edge (s, t)'s ``Σ_o weights[s, t, o]
    op_o(x[s])`` at s T + t.

  References:
    Wu et al. 2021, Eq. 1.
  """
  s_count, t_count = weights.shape[:2]
  _, c, n, h, w = x.shape
  ho, wo = out_size(h, stride), out_size(w, stride)
  weights = weights.astype(x.dtype)
  op_index = {op: o for o, op in enumerate(ops)}

  pools = [op for op in ops if op in ('max_pool_3x3', 'avg_pool_3x3')]
  members = _conv_members(ops)
  sep = [op for op in members if search_space.CONV_OPS[op].blocks == 2]
  factorized = 'skip_connect' in ops and stride == 2

  pre_bn = [(spatial.max_pool_3x3 if op == 'max_pool_3x3'
            else spatial.avg_pool_3x3)(x, stride)
            for op in pools]
  if factorized:
    pre_bn.append(_factorized_reduce(x, packed['factorized_reduce']))
  if members:
    per_edge_x = jnp.broadcast_to(x[:, None], (s_count, t_count) + x.shape[1:])
    pre_bn.append(_conv_block(per_edge_x.reshape((-1,) + x.shape[1:]),
                              members, packed, 0, shared_input=True,
                              stride=stride))
  normed = _batch_norms(pre_bn)

  def mix(y, names, num_targets):  # -> [(S,) T, C, N H' W']
    # Rank 5 at most: XLA:CPU (jax 0.10.2) crashes on some reductions of
    # rank-7 arrays.
    y = y.reshape(len(names), s_count, num_targets, c, n * ho * wo)
    a = jnp.stack([weights[:, :, op_index[op]] for op in names])
    return jnp.sum(y * a[..., None, None], axis=(0, 1) if sum_sources else 0)

  terms = []
  # Ops whose output is the same on every edge leaving a source.
  per_source = normed[:len(pools)]
  source_ops = list(pools)
  if 'skip_connect' in ops and stride == 1:
    per_source.append(x)
    source_ops.append('skip_connect')
  if per_source:
    terms.append(mix(jnp.stack(per_source), source_ops, 1))
  # Ops with per-edge params.
  if factorized:
    terms.append(mix(normed[len(pools)], ['skip_connect'], t_count))
  if members:
    block_0 = normed[-1]
    split = len(sep) * s_count * t_count
    if sep:
      block_1 = _batch_norm(_conv_block(block_0[:split], sep, packed, 1,
                                        shared_input=False, stride=1))
      terms.append(mix(block_1, sep, t_count))
    if len(members) > len(sep):
      terms.append(mix(block_0[split:], members[len(sep):], t_count))
  return sum(terms[1:], terms[0]).reshape((-1, c, n, ho, wo))


def _rows(weights, edges) -> jax.Array:
  """The arch rows of a stage's edges, ``[S, T, len(ops)]``."""
  return jnp.stack([jnp.stack([weights[f'node_{j}'][i] for i, j in row])
                    for row in edges])


def node_rounds(nodes: int) -> list[list[Optional[tuple[int, int]]]]:
  """The edges between intermediate nodes in ``nodes - 1`` rounds of equal
  size, each edge once, every edge's source complete before its round.

  Intermediate node 0 is complete once the edges from the cell's inputs are
  added; node r + 1 is complete after round r, so rounds 0, ..., r hold
  every edge into it. Each round holds ``ceil(nodes / 2)`` edges, the
  fewest that fit (rounds 0, ..., r hold the ``(r + 1)(r + 2) / 2`` edges
  into nodes 1, ..., r + 1), earliest target first; None pads a round.

  Args:
    nodes: intermediate nodes, at least 2.

  Returns:
    ``rounds[r]``: ``(s, t)`` pairs, edge from intermediate node s to t.
  """
  size = -(-nodes // 2)
  pending = sorted(((s, t) for t in range(nodes) for s in range(t)),
                   key=lambda e: (e[1], e[0]))
  rounds = []
  for r in range(nodes - 1):
    ready = [e for e in pending if e[0] <= r][:size]
    # Earliest target first, so this holds whenever a schedule exists.
    assert all(e in ready for e in pending if e[1] == r + 1), (nodes, r)
    pending = [e for e in pending if e not in ready]
    rounds.append(ready + [None] * (size - len(ready)))
  return rounds


def _edge_axis(path, packed: bool) -> int:
  """The edge axis of a stage's param leaf: axis 0 of the stacked layout;
  of the packed layout, axis 2 of a depthwise kernel, 1 of a pointwise one."""
  if not packed:
    return 0
  return 1 if str(getattr(path[-1], 'key', '')).startswith(
      'pointwise_') else 2


def _round_params(stage_params, round_edges, packed: bool):
  """The params of one round's edges (``node_rounds``), as a stage of
  ``len(round_edges)`` edges; zeros for None."""
  def edge(s, t):  # stage s + 1 holds the edges from node s to s + 1, ...
    return jax.tree_util.tree_map_with_path(
        lambda path, a: lax.slice_in_dim(a, t - s - 1, t - s,
                                         axis=_edge_axis(path, packed)),
        stage_params[s + 1])
  some = edge(0, 1)
  edges = [jax.tree.map(jnp.zeros_like, some) if e is None else edge(*e)
           for e in round_edges]
  return jax.tree_util.tree_map_with_path(
      lambda path, *leaves: jnp.concatenate(leaves,
                                            axis=_edge_axis(path, packed)),
      *edges)


def _scanned_nodes(x, weights, stage_params, apply, *, reduction: bool,
                   nodes: int, packed: bool) -> jax.Array:
  """``cell_nodes`` with the edges between intermediate nodes as one
  ``lax.scan``.

  Stage 0 (the edges from the cell's inputs) is computed as in
  ``cell_nodes``: the partial sums of every node, node 0 complete. The
  scan then runs the ``nodes (nodes - 1) / 2`` edges between intermediate
  nodes in the rounds of ``node_rounds``, each round's edges as one stage
  of per-edge outputs, each edge reading its source from the node sums and
  adding its output to its target's. XLA compiles the body once per cell
  instead of ``nodes - 1`` stage programs, and pads no edge at an even
  ``nodes`` (``(nodes - 1) / 2`` zero edges in all at an odd one).
  """
  rounds = node_rounds(nodes)
  partial = apply(x, _rows(weights, stage_edges(nodes)[0]), stage_params[0],
                  2 if reduction else 1)  # [nodes, C, N, H', W']
  zero_row = jnp.zeros_like(weights['node_0'][0])
  rows = jnp.stack([
      jnp.stack([zero_row if e is None else weights[f'node_{e[1]}'][e[0] + 2]
                 for e in edges])[:, None] for edges in rounds])
  params = stack_edge_params([_round_params(stage_params, edges, packed)
                              for edges in rounds])
  # A None edge reads node 0 and adds its zeros to it.
  sources, targets = (jnp.array([[0 if e is None else e[i] for e in edges]
                                 for edges in rounds], jnp.int32)
                      for i in (0, 1))

  def body(sums, xs):
    source, target, rows, params = xs
    size = source.shape[0]
    out = apply(jnp.stack([lax.dynamic_index_in_dim(sums, source[e], 0,
                                                    keepdims=False)
                           for e in range(size)]),
                rows, params, sum_sources=False)
    for e in range(size):
      t = target[e]
      sums = lax.dynamic_update_index_in_dim(
          sums, lax.dynamic_index_in_dim(sums, t, 0, keepdims=False) + out[e],
          t, 0)
    return sums, None

  outputs, _ = lax.scan(body, partial, (sources, targets, rows, params))
  outputs = outputs.reshape((-1,) + outputs.shape[2:])
  return jnp.transpose(outputs, (1, 2, 3, 0))


def cell_nodes(x: jax.Array, weights: Mapping[str, jax.Array],
               stage_params: Sequence[Mapping[str, Any]], *, reduction: bool,
               nodes: int, ops: Sequence[str], scan: bool = False,
               packed: bool = False) -> jax.Array:
  """The intermediate nodes of a search cell, computed stage by stage.

  Args:
    x: ``[2, C, N, H, W]``, the two preprocessed cell inputs.
    weights: ``{f'node_{j}': [j + 2, len(ops)]}``, one cell type of the arch.
    stage_params: per stage, the params of its edges (``stage_edges``):
      ``{op: op_params}`` with a leading edge axis (the stacked layout), or
      ``PackedStageParams``'s tree (``packed``).
    reduction: whether the edges from the inputs have stride 2.
    nodes: intermediate nodes.
    ops: op names.
    scan: compute the edges between intermediate nodes as one
      ``lax.scan`` (``_scanned_nodes``): a smaller program, the same
      function up to the order of sums.
    packed: ``stage_params`` are in the packed layout.

  Returns:
    ``[N, H', W', nodes * C]``, the nodes concatenated, as ``SearchCell``.

  References:
    Wu et al. 2021, Eq. 1.
  """
  ops = tuple(ops)

  def apply(source, rows, params, stride=1, sum_sources=True):
    if not packed:
      params = pack_stage_params(params, ops=ops, stride=stride,
                                 num_sources=rows.shape[0])
    return stage(source, rows, params, stride=stride, ops=ops,
                 sum_sources=sum_sources)

  if scan and nodes > 2:
    return _scanned_nodes(x, weights, stage_params, apply,
                          reduction=reduction, nodes=nodes, packed=packed)

  outputs = []
  partial = None  # [nodes not yet complete, C, N, H', W']
  for k, (edges, params) in enumerate(zip(stage_edges(nodes), stage_params)):
    stride = 2 if reduction and k == 0 else 1
    out = apply(x if k == 0 else outputs[-1][None], _rows(weights, edges),
                params, stride)
    partial = out if partial is None else partial + out
    outputs.append(partial[0])
    partial = partial[1:]
  return jnp.transpose(jnp.concatenate(outputs), (1, 2, 3, 0))
