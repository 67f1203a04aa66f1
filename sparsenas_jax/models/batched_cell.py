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
node j the sum of its incoming edges):

* Parameter-free ops (the pools, the identity) see the same input on every
  edge leaving a source, and batch norm without affine parameters is a
  function of its input alone: they are computed once per source and mixed
  with each edge's weight.
* The convolutions fold the edge axis into the channels. Depthwise
  convolutions and batch norm act on each channel alone, so one depthwise
  convolution over (op, edge, channel) channels with the per-edge kernels
  side by side computes every edge at once, and batch norm keeps statistics
  per (edge, op, channel) as in the reference. The 1x1 pointwise
  convolutions, block diagonal, are one matmul batched over (op, edge).
* Kernels of one dilation share a convolution: a 3x3 kernel zero-padded to
  5x5 computes the same output with the 5x5 padding (sep_conv_3x3 with
  sep_conv_5x5, dil_conv_3x3 with dil_conv_5x5).
* The batch norms of one stage that do not depend on each other (the pools,
  factorized reduce, the first conv block) are one batch norm over their
  channels side by side; so are those of the two preprocessed inputs.

Only the order of floating-point sums differs from ``SearchCell``.

Parameter layouts (``BatchedSearchCell.stacked_params``):

* per edge (``False``): exactly ``SearchCell``'s tree (``node_{j}_edge_{i}``
  holding ``MixedOp``'s ``{op: op_params}``), names and initial values
  included; the edges are stacked inside the computation, on every call.
* per stage (``True``): ``{'preprocess0', 'preprocess1', 'stage_{k}'}``,
  where ``stage_{k}`` is ``{op: op_params}`` with every leaf of ``MixedOp``'s
  tree given a leading axis over the stage's edges, in the order of
  ``stage_edges(nodes)[k]``; e.g. ``stage_0/sep_conv_3x3/block_0/depthwise``
  is ``[2 * nodes, 3, 3, 1, C]``, edges (0, 0), ..., (0, nodes - 1), (1, 0),
  ..., (1, nodes - 1). Fewer, larger leaves: no stacking on every call, and
  far fewer gradient outputs and optimizer updates.
  ``reference_to_stacked_params`` and ``stacked_to_reference_params`` convert
  between the two layouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from sparsenas_jax.models.ops import avg_pool_3x3
from sparsenas_jax.models.ops import batch_norm
from sparsenas_jax.models.ops import conv2d
from sparsenas_jax.models.ops import conv_init
from sparsenas_jax.models.ops import depthwise_conv2d
from sparsenas_jax.models.ops import max_pool_3x3

# (kernel size, dilation, number of ReLU-depthwise-pointwise-BN blocks).
_CONV_OPS = {
    'sep_conv_3x3': (3, 1, 2),
    'sep_conv_5x5': (5, 1, 2),
    'dil_conv_3x3': (3, 2, 1),
    'dil_conv_5x5': (5, 2, 1),
}


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
      if op in _CONV_OPS:
        k, _, blocks = _CONV_OPS[op]
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


# ----------------------------------------------------------------------------
# Packing: a stage's stacked params to the layout of its batched ops.
# ----------------------------------------------------------------------------


def _conv_members(ops: Sequence[str]) -> list[str]:
  """The conv ops of ``ops``, SepConvs first (their block 1 follows)."""
  conv = [op for op in ops if op in _CONV_OPS]
  return ([op for op in conv if _CONV_OPS[op][2] == 2] +
          [op for op in conv if _CONV_OPS[op][2] == 1])


def _dw_groups(members: Sequence[str]) -> list[tuple[int, int, list[str]]]:
  """Consecutive ops of one dilation share a depthwise conv.

  Returns:
    ``[(kernel size, dilation, ops)]`` in the order of ``members``; the size
    is the largest of the group's.
  """
  groups = []
  for m in members:
    k, d, _ = _CONV_OPS[m]
    if groups and groups[-1][1] == d:
      groups[-1] = (max(groups[-1][0], k), d, groups[-1][2] + [m])
    else:
      groups.append((k, d, [m]))
  return groups


def _pad_kernel(kernel: jax.Array, size: int) -> jax.Array:
  """Zero-pads ``[..., k, k, C]`` to ``[..., size, size, C]`` (centred).

  With the padding ``dilation * (size - 1) // 2`` the padded kernel computes
  the output of the kxk one with ``dilation * (k - 1) // 2``.
  """
  lo = (size - kernel.shape[-2]) // 2
  widths = [(0, 0)] * (kernel.ndim - 3) + [(lo, lo)] * 2 + [(0, 0)]
  return jnp.pad(kernel, widths)


def _pack_block(stacked, members: Sequence[str], block: str
                ) -> dict[str, Any]:
  def leaf(op, name):
    p = stacked[op]
    return (p[block] if _CONV_OPS[op][2] == 2 else p)[name]

  depthwise = []
  for size, _, group in _dw_groups(members):
    # [G, E, K, K, C] -> [K, K, G * E * C], channels ordered (op, edge, c).
    kernel = jnp.stack([_pad_kernel(leaf(op, 'depthwise')[..., 0, :], size)
                        for op in group])
    depthwise.append(
        jnp.moveaxis(kernel, (0, 1), (-3, -2)).reshape(size, size, -1))
  pointwise = jnp.concatenate(
      [leaf(op, 'pointwise')[:, 0, 0] for op in members])
  return {'depthwise': tuple(depthwise), 'pointwise': pointwise}


def pack_stage_params(stacked: Mapping[str, Any], *, ops: Sequence[str],
                      stride: int, num_sources: int) -> dict[str, Any]:
  """A stage's params in the layout of its batched ops.

  Args:
    stacked: ``{op: op_params}``, each leaf with a leading axis over the
      stage's E = S * T edges, ordered (source, target).
    ops: op names.
    stride: the edges' stride.
    num_sources: S.

  Returns:
    ``{'block_0': {'depthwise': (kernel, ...), 'pointwise': [M * E, C, C]},
    'block_1': {...}, 'factorized_reduce': [2, S, T, C, C // 2]}``, with
    ``block_1`` only if there are SepConvs and ``factorized_reduce`` only for
    ``skip_connect`` at stride 2. The M conv ops are in the order of
    ``_conv_members``; each depthwise kernel is ``[K, K, G * E * C]`` for a
    group of G ops (``_dw_groups``), channels ordered (op, edge, channel).
  """
  packed = {}
  members = _conv_members(ops)
  if members:
    packed['block_0'] = _pack_block(stacked, members, 'block_0')
    sep = [op for op in members if _CONV_OPS[op][2] == 2]
    if sep:
      packed['block_1'] = _pack_block(stacked, sep, 'block_1')
  if 'skip_connect' in ops and stride == 2:
    kernels = jnp.stack([stacked['skip_connect'][f'kernel_{q}'][:, 0, 0]
                         for q in range(2)])  # [2, E, C, C // 2]
    e = kernels.shape[1]
    packed['factorized_reduce'] = kernels.reshape(
        (2, num_sources, e // num_sources) + kernels.shape[2:])
  return packed


# ----------------------------------------------------------------------------
# Pure functions.
# ----------------------------------------------------------------------------


_DW_IMPL = 'custom'


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, kernel: jax.Array, stride: int, dilation: int
               ) -> jax.Array:
  """Depthwise conv, ``kernel`` ``[K, K, C]``, padded as ``ops.conv2d``."""
  return depthwise_conv2d(x, kernel[:, :, None, :], stride=stride,
                          dilation=dilation)


def _taps(x, k, stride, dilation):
  """``[N, K * K, H', W', C]``: the input each kernel tap multiplies."""
  pad = dilation * (k - 1) // 2
  _, h, w, _ = x.shape
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  a = np.repeat(np.arange(k), k) * dilation
  b = np.tile(np.arange(k), k) * dilation
  rows = a[:, None] + stride * np.arange(ho)[None]
  cols = b[:, None] + stride * np.arange(wo)[None]
  return xp[:, rows[:, :, None], cols[:, None, :]]


@_depthwise.defjvp
def _depthwise_jvp(stride, dilation, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  k, _, c = kernel.shape
  y = _depthwise(x, kernel, stride, dilation)
  dy = depthwise_conv2d(dx, kernel[:, :, None, :], stride=stride,
                        dilation=dilation)
  taps = _taps(x, k, stride, dilation)
  dy = dy + jnp.sum(taps * dkernel.reshape(1, k * k, 1, 1, c), axis=1)
  return y, dy


def _pointwise(y: jax.Array, kernels: jax.Array) -> jax.Array:
  """Block-diagonal 1x1 conv: group g of C channels times ``kernels[g]``.

  Args:
    y: ``[N, H, W, G * C]``.
    kernels: ``[G, C, C_out]``.

  Returns:
    ``[N, H, W, G * C_out]``.
  """
  g, c, c_out = kernels.shape
  n, h, w, _ = y.shape
  out = jnp.einsum('nhwgc,gcd->nhwgd', y.reshape(n, h, w, g, c),
                   kernels.astype(y.dtype))
  return out.reshape(n, h, w, g * c_out)


def _conv_block(x: jax.Array, members: Sequence[str], packed, *,
                shared_input: bool, stride: int) -> jax.Array:
  """ReLU, depthwise, pointwise of several conv ops, before batch norm.

  Args:
    x: ``[N, H, W, E * C]``, the input of every op (``shared_input``), or
      ``[N, H, W, M * E * C]``, channels ordered (op, edge, channel).
    members: the M ops, in the order of the packed params.
    packed: ``{'depthwise': ..., 'pointwise': ...}`` of ``_pack_block``.
    shared_input: whether every op reads the same ``x``.
    stride: stride of the depthwise convs.

  Returns:
    ``[N, H', W', M * E * C]``.
  """
  x = nn.relu(x)
  n, h, w, _ = x.shape
  if not shared_input:
    x = x.reshape(n, h, w, len(members), -1)
  outs, start = [], 0
  for (_, dilation, group), kernel in zip(_dw_groups(members),
                                          packed['depthwise']):
    if shared_input:
      xg = jnp.concatenate([x] * len(group), axis=-1)
    else:
      xg = x[:, :, :, start:start + len(group)].reshape(n, h, w, -1)
    start += len(group)
    if _DW_IMPL == 'custom':
      outs.append(_depthwise(xg, kernel, stride, dilation))
    else:
      outs.append(depthwise_conv2d(xg, kernel[:, :, None, :], stride=stride,
                                   dilation=dilation))
  y = jnp.concatenate(outs, axis=-1)
  return _pointwise(y, packed['pointwise'])


def _batch_norms(arrays: Sequence[jax.Array]) -> list[jax.Array]:
  """``batch_norm`` of each array (one N, H, W), as a single batch norm."""
  if len(arrays) <= 1:
    return [batch_norm(a) for a in arrays]
  out = batch_norm(jnp.concatenate(arrays, axis=-1))
  return jnp.split(out, np.cumsum([a.shape[-1] for a in arrays])[:-1],
                   axis=-1)


def _even_odd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """What FactorizedReduce's two 1x1 stride-2 convs read: even, odd pixels."""
  _, h, w, _ = x.shape
  odd = jnp.pad(x[:, 1:, 1:], ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  return x[:, ::2, ::2], odd[:, ::2, ::2]


def _factorized_reduce(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """FactorizedReduce on every edge of a stage, before batch norm.

  Args:
    x: ``[N, H, W, S * C]``, the S sources side by side.
    kernels: ``[2, S, T, C, C // 2]``, the packed ``kernel_0``, ``kernel_1``.

  Returns:
    ``[N, ceil(H/2), ceil(W/2), S * T * C]``, channels ordered (s, t, c).
  """
  _, s, t, c, _ = kernels.shape
  even, odd = _even_odd(nn.relu(x))
  n, h2, w2, _ = even.shape
  z = jnp.stack([even, odd], axis=3).reshape(n * h2 * w2, 2, s, c)
  out = jnp.einsum('mqsc,qstcd->mstqd', z, kernels.astype(x.dtype))
  return out.reshape(n, h2, w2, s * t * c)


def preprocess(s0: jax.Array, s1: jax.Array, p0, p1, *,
               reduction_prev: bool) -> jax.Array:
  """``SearchCell``'s two preprocessing ops, side by side.

  Args:
    s0: ``[N, H0, W0, C0]``, output of the cell two back.
    s1: ``[N, H, W, C1]``, output of the previous cell.
    p0: params of ``preprocess0``: a ``FactorizedReduce`` if
      ``reduction_prev``, else a 1x1 ``ReLUConvBN``.
    p1: params of ``preprocess1``, a 1x1 ``ReLUConvBN``.
    reduction_prev: whether H0 = 2 H.

  Returns:
    ``[N, H, W, 2 * C]``: preprocessed s0, then s1.
  """
  if reduction_prev:
    r = nn.relu(s0)
    _, h, w, _ = r.shape
    shifted = jnp.pad(r[:, 1:, 1:], ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    y0 = [conv2d(r, p0['kernel_0'], stride=2),
          conv2d(shifted, p0['kernel_1'], stride=2)]
  else:
    y0 = [conv2d(nn.relu(s0), p0['kernel'])]
  y1 = conv2d(nn.relu(s1), p1['kernel'])
  # Per-channel statistics: one batch norm of the channels side by side.
  return batch_norm(jnp.concatenate(y0 + [y1], axis=-1))


def stage(x: jax.Array, weights: jax.Array, packed, *, stride: int,
          ops: Sequence[str]) -> jax.Array:
  """All edges leaving S sources, summed per target node.

  Args:
    x: ``[N, H, W, S * C]``, the sources side by side.
    weights: ``[S, T, len(ops)]``: ``weights[s, t]`` is the arch row of the
      edge from source s to target t.
    packed: the edges' params, ``pack_stage_params``.
    stride: 1, or 2 from a reduction cell's inputs.
    ops: op names.

  Returns:
    ``[N, H', W', T, C]``: target t gets ``Σ_s Σ_o weights[s, t, o]
    op_o(source s)`` with the params of edge (s, t).

  References:
    Wu et al. 2021, Eq. 1.
  """
  s_count, t_count = weights.shape[:2]
  n, h, w, sc = x.shape
  c = sc // s_count
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  weights = weights.astype(x.dtype)
  op_index = {op: o for o, op in enumerate(ops)}

  def arch(names):  # [len(names), S, T]
    return jnp.stack([weights[:, :, op_index[op]] for op in names])

  pools = [op for op in ops if op in ('max_pool_3x3', 'avg_pool_3x3')]
  members = _conv_members(ops)
  sep = [op for op in members if _CONV_OPS[op][2] == 2]
  factorized = 'skip_connect' in ops and stride == 2

  pre_bn = [max_pool_3x3(x, stride) if op == 'max_pool_3x3'
            else avg_pool_3x3(x, stride) for op in pools]
  if factorized:
    pre_bn.append(_factorized_reduce(x, packed['factorized_reduce']))
  if members:
    per_edge_x = jnp.broadcast_to(x.reshape(n * h * w, s_count, 1, c),
                                  (n * h * w, s_count, t_count, c))
    pre_bn.append(_conv_block(per_edge_x.reshape(n, h, w, -1), members,
                              packed['block_0'], shared_input=True,
                              stride=stride))
  normed = _batch_norms(pre_bn)

  # Mix with the arch weights. N, H', W' are flattened: XLA:CPU (jax 0.10.2)
  # crashes on some reductions of rank-7 arrays.
  m = n * ho * wo

  def mix(y, names, num_targets):  # -> [N H' W', T, C]
    y = y.reshape(m, len(names), s_count, num_targets, c)
    return jnp.sum(y * arch(names)[..., None], axis=(1, 2))

  terms = []
  # Ops whose output is the same on every edge leaving a source.
  per_source = normed[:len(pools)]
  source_ops = list(pools)
  if 'skip_connect' in ops and stride == 1:
    per_source.append(x)
    source_ops.append('skip_connect')
  if per_source:
    terms.append(mix(jnp.stack(per_source, axis=3), source_ops, 1))
  # Ops with per-edge params.
  if factorized:
    terms.append(mix(normed[len(pools)], ['skip_connect'], t_count))
  if members:
    block_0 = normed[-1]
    split = len(sep) * s_count * t_count * c
    if sep:
      block_1 = batch_norm(_conv_block(block_0[..., :split], sep,
                                       packed['block_1'],
                                       shared_input=False, stride=1))
      terms.append(mix(block_1, sep, t_count))
    if len(members) > len(sep):
      terms.append(mix(block_0[..., split:], members[len(sep):], t_count))
  return sum(terms[1:], terms[0]).reshape(n, ho, wo, t_count, c)


def cell_nodes(x: jax.Array, weights: Mapping[str, jax.Array],
               stage_params: Sequence[Mapping[str, Any]], *, reduction: bool,
               nodes: int, ops: Sequence[str]) -> jax.Array:
  """The intermediate nodes of a search cell, computed stage by stage.

  Args:
    x: ``[N, H, W, 2 * C]``, the two preprocessed cell inputs side by side.
    weights: ``{f'node_{j}': [j + 2, len(ops)]}``, one cell type of the arch.
    stage_params: per stage, ``{op: op_params}`` with a leading axis over the
      stage's edges (``stage_edges``).
    reduction: whether the edges from the inputs have stride 2.
    nodes: intermediate nodes.
    ops: op names.

  Returns:
    ``[N, H', W', nodes * C]``, the nodes concatenated, as ``SearchCell``.

  References:
    Wu et al. 2021, Eq. 1.
  """
  ops = tuple(ops)
  outputs = []
  partial = None  # [N, H', W', nodes not yet complete, C]
  for k, (edges, params) in enumerate(zip(stage_edges(nodes), stage_params)):
    rows = jnp.stack([jnp.stack([weights[f'node_{j}'][i] for i, j in row])
                      for row in edges])
    stride = 2 if reduction and k == 0 else 1
    packed = pack_stage_params(params, ops=ops, stride=stride,
                               num_sources=len(edges))
    out = stage(x if k == 0 else outputs[-1], rows, packed, stride=stride,
                ops=ops)
    partial = out if partial is None else partial + out
    outputs.append(partial[:, :, :, 0])
    partial = partial[:, :, :, 1:]
  return jnp.concatenate(outputs, axis=-1)
