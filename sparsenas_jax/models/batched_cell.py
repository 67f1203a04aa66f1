"""The search cell computed edge-batched: the function of SearchCell, fewer ops.

XLA:CPU compile time grows super-linearly with the number of ops in the
graph, and the straightforward cell (``supernet.SearchCell``) applies every
candidate op once per edge. Here the edges are grouped by when their input is
ready, and each group is computed with one application per kind of op:

* stage 0: the ``2 * nodes`` edges leaving the cell's two inputs (stride 2 in
  a reduction cell);
* stage k + 1: the ``nodes - k - 1`` edges leaving intermediate node k, once
  node k is complete.

That is ``nodes`` stages per cell instead of ``2 * nodes + nodes (nodes - 1)
/ 2`` edges, and within a stage:

* Parameter-free ops (the pools, the identity) see the same input on every
  edge leaving a source, and batch norm without affine parameters is a
  function of its input alone, so they are computed once per source and only
  mixed with each edge's weight.
* The convolutions fold the edge axis into the channels. Depthwise
  convolutions and batch norm act on each channel alone, so one depthwise
  convolution over ``ops x edges x C`` channels, with the per-edge kernels
  concatenated, computes every edge at once, and batch norm keeps its
  statistics per (edge, op, channel) as in the reference. The 1x1 pointwise
  convolutions are block diagonal: one batched matmul with a batch axis over
  (op, edge).
* Kernels of different sizes share one depthwise convolution: a kxk kernel
  zero-padded to KxK (K > k) computes the same output with the padding
  ``dilation * (K - 1) // 2``; only the order of the floating-point sums
  changes.

The parameters are exactly those of ``SearchCell`` (the same tree, the same
names, the same initial values for the same key): they are packed into the
stacked layout inside the computation, on every call. The packing is a few
concatenations of small arrays; their gradient is a few slices.

Per edge and op the function is the reference's,
``out_e = Σ_o A[j][i, o] op_o(x_i)`` (Wu et al. 2021, Eq. 1), and node j sums
its incoming edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sparsenas_jax.models.ops import avg_pool_3x3
from sparsenas_jax.models.ops import batch_norm
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

# How the depthwise convolutions of a block are grouped into single ops
# (measured on XLA:CPU: see the module docstring of the benchmarks).
_DW_GROUPING = 'dilation'
_POINTWISE = 'einsum'


# ----------------------------------------------------------------------------
# Parameter declarations: the tree of SearchCell's MixedOp edges.
# ----------------------------------------------------------------------------


class _DilConvParams(nn.Module):
  """The params of ``ops.DilConv`` (same names, shapes and init order)."""
  channels: int
  kernel_size: int

  @nn.compact
  def __call__(self):
    k, c = self.kernel_size, self.channels
    return {'depthwise': self.param('depthwise', conv_init, (k, k, 1, c)),
            'pointwise': self.param('pointwise', conv_init, (1, 1, c, c))}


class _SepConvParams(nn.Module):
  """The params of ``ops.SepConv``."""
  channels: int
  kernel_size: int

  @nn.compact
  def __call__(self):
    return {f'block_{b}': _DilConvParams(self.channels, self.kernel_size,
                                         name=f'block_{b}')()
            for b in range(2)}


class _FactorizedReduceParams(nn.Module):
  """The params of ``ops.FactorizedReduce`` (C -> C)."""
  channels: int

  @nn.compact
  def __call__(self):
    shape = (1, 1, self.channels, self.channels // 2)
    return {'kernel_0': self.param('kernel_0', conv_init, shape),
            'kernel_1': self.param('kernel_1', conv_init, shape)}


class EdgeParams(nn.Module):
  """Declares the params of one ``MixedOp`` edge and returns them.

  The tree is ``{op: op_params}`` for the ops that have params, exactly as
  ``MixedOp(channels, stride, ops)`` creates it, so a ``BatchedSearchCell``
  and a ``SearchCell`` share one parameter layout.

  Attributes:
    channels: the edge's input and output channels.
    stride: 1, or 2 on the edges leaving a reduction cell's inputs.
    ops: op names.
  """
  channels: int
  stride: int
  ops: Sequence[str]

  @nn.compact
  def __call__(self) -> dict[str, Any]:
    out = {}
    for op in self.ops:
      if op in _CONV_OPS:
        k, _, blocks = _CONV_OPS[op]
        cls = _SepConvParams if blocks == 2 else _DilConvParams
        out[op] = cls(self.channels, k, name=op)()
      elif op == 'skip_connect' and self.stride == 2:
        out[op] = _FactorizedReduceParams(self.channels, name=op)()
    return out


# ----------------------------------------------------------------------------
# Pure functions: one stage of edges sharing their sources.
# ----------------------------------------------------------------------------


def _embed_kernel(kernel: jax.Array, dilation: int, size: int,
                  group_dilation: int) -> jax.Array:
  """Writes a dilated kxk kernel as a ``size`` x ``size`` kernel.

  A kernel of size k and dilation d applied with dilation D (d a multiple of
  D) is the kernel with ``d // D - 1`` zeros between its taps, zero-padded
  on both sides to ``size``; with the padding ``D * (size - 1) // 2`` it
  computes the same output at the same positions.

  Args:
    kernel: ``[..., k, k, 1, C]``.
    dilation: d.
    size: the common kernel size, with ``(k - 1) * d // D + 1 <= size``.
    group_dilation: D.

  Returns:
    ``[..., size, size, 1, C]``.
  """
  k = kernel.shape[-3]
  step = dilation // group_dilation
  span = (k - 1) * step + 1
  lo = (size - span) // 2
  hi = size - span - lo
  config = [(0, 0, 0)] * (kernel.ndim - 4) + [(lo, hi, step - 1)] * 2 + [
      (0, 0, 0)] * 2
  return lax.pad(kernel, jnp.zeros((), kernel.dtype), config)


def _dw_groups(members: Sequence[str], grouping: str
               ) -> list[tuple[int, int, list[str]]]:
  """Groups the depthwise convs of ``members`` into (size, dilation, ops)."""
  if grouping == 'op':
    return [(_CONV_OPS[m][0], _CONV_OPS[m][1], [m]) for m in members]
  if grouping == 'dilation':
    groups = []
    for d in sorted({_CONV_OPS[m][1] for m in members}):
      ms = [m for m in members if _CONV_OPS[m][1] == d]
      groups.append((max(_CONV_OPS[m][0] for m in ms), d, ms))
    return groups
  if grouping == 'all':
    size = max((_CONV_OPS[m][0] - 1) * _CONV_OPS[m][1] + 1 for m in members)
    return [(size, 1, list(members))]
  raise ValueError(f'unknown grouping {grouping!r}')


def _stack_edges(tree_rows: Sequence[Sequence[Any]], fn) -> jax.Array:
  """Stacks ``fn(edge)`` over the [S][T] edges: ``[S * T, ...]``."""
  return jnp.stack([fn(p) for row in tree_rows for p in row])


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
  if _POINTWISE == 'einsum':
    out = jnp.einsum('nhwgc,gcd->nhwgd', y.reshape(n, h, w, g, c),
                     kernels.astype(y.dtype))
    return out.reshape(n, h, w, g * c_out)
  # A grouped 1x1 convolution, kernel HWIO [1, 1, C, G * C_out].
  kernel = jnp.transpose(kernels, (1, 0, 2)).reshape(1, 1, c, g * c_out)
  return lax.conv_general_dilated(
      y, kernel.astype(y.dtype), (1, 1), ((0, 0), (0, 0)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=g)


def _conv_block(inputs: Mapping[str, jax.Array], edges, block: str, *,
                stride: int) -> dict[str, jax.Array]:
  """One (ReLU, depthwise, pointwise, BN) block of several conv ops at once.

  Args:
    inputs: ``{op: [N, H, W, E * C]}``, the input of each conv op, channels
      ordered (edge, channel); ops may share one array.
    edges: ``[S][T]`` nested lists of the edges' param trees (E = S * T).
    block: ``'block_0'`` or ``'block_1'``, the block of a SepConv; a DilConv's
      only block is ``'block_0'``.
    stride: stride of the depthwise convs.

  Returns:
    ``{op: [N, H', W', E * C]}``, batch-normalised per (edge, channel).
  """
  def leaf(op, name):
    def get(p):
      p = p[op]
      return (p[block] if _CONV_OPS[op][2] == 2 else p)[name]
    return get

  outs, order = [], []
  for size, dilation, group in _dw_groups(list(inputs), _DW_GROUPING):
    # [G, E, K, K, 1, C] -> [K, K, 1, G * E * C], channels (op, edge, c).
    kernel = jnp.stack([
        _embed_kernel(_stack_edges(edges, leaf(op, 'depthwise')),
                      _CONV_OPS[op][1], size, dilation) for op in group])
    kernel = jnp.moveaxis(kernel, (0, 1), (-3, -2)).reshape(size, size, 1, -1)
    x = jnp.concatenate([nn.relu(inputs[op]) for op in group], axis=-1)
    outs.append(depthwise_conv2d(x, kernel, stride=stride, dilation=dilation))
    order += group
  y = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-1)
  pointwise = jnp.concatenate(
      [_stack_edges(edges, leaf(op, 'pointwise'))[:, 0, 0] for op in order])
  y = batch_norm(_pointwise(y, pointwise))
  n, h, w, _ = y.shape
  y = y.reshape(n, h, w, len(order), -1)
  return {op: y[:, :, :, g] for g, op in enumerate(order)}


def _factorized_reduce(x: jax.Array, edges, num_targets: int) -> jax.Array:
  """FactorizedReduce on every edge of a stage.

  Args:
    x: ``[N, H, W, S * C]``, the S sources side by side.
    edges: ``[S][T]`` nested lists of the edges' param trees.
    num_targets: T.

  Returns:
    ``[N, ceil(H/2), ceil(W/2), S, T, C]``.
  """
  n, h, w, sc = x.shape
  s, t = len(edges), num_targets
  c = sc // s
  r = nn.relu(x)
  # The 1x1 stride-2 convs read the even pixels and the odd ones.
  even = r[:, ::2, ::2]
  odd = jnp.pad(r[:, 1:, 1:], ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  odd = odd[:, ::2, ::2]
  h2, w2 = even.shape[1:3]
  z = jnp.stack([even, odd], axis=3).reshape(n, h2, w2, 2, s, c)
  kernels = jnp.stack([
      _stack_edges(edges, lambda p, q=q: p['skip_connect'][f'kernel_{q}'][0, 0])
      for q in range(2)]).reshape(2, s, t, c, c // 2)
  out = jnp.einsum('nhwqsc,qstcd->nhwstqd', z, kernels.astype(x.dtype))
  out = batch_norm(out.reshape(n, h2, w2, s * t * c))
  return out.reshape(n, h2, w2, s, t, c)


def stage(xs: Sequence[jax.Array], weights: jax.Array, edges, *, stride: int,
          ops: Sequence[str]) -> jax.Array:
  """All edges leaving the sources ``xs``, summed per target node.

  Args:
    xs: S sources, each ``[N, H, W, C]``.
    weights: ``[S, T, len(ops)]``: ``weights[s, t]`` is the arch row of the
      edge from source s to target t.
    edges: ``[S][T]`` nested lists of the edges' param trees (``MixedOp``'s
      layout, ``{op: op_params}``).
    stride: 1, or 2 from a reduction cell's inputs.
    ops: op names.

  Returns:
    ``[N, H', W', T, C]``: target t gets ``Σ_s Σ_o weights[s, t, o]
    op_o(xs[s])`` with the params of edge (s, t).
  """
  s_count, t_count = weights.shape[:2]
  n, h, w, c = xs[0].shape
  x = xs[0] if s_count == 1 else jnp.concatenate(xs, axis=-1)
  weights = weights.astype(x.dtype)
  terms = []

  def per_source(y, o):
    # y: [N, H', W', S * C], the same on every edge leaving a source.
    y = y.reshape(y.shape[:3] + (s_count, 1, c))
    terms.extend(y[:, :, :, s] * weights[s, :, o, None] for s in range(s_count))

  def per_edge(y, o):
    # y: [N, H', W', S, T, C].
    terms.extend(y[:, :, :, s] * weights[s, :, o, None] for s in range(s_count))

  for o, op in enumerate(ops):
    if op == 'max_pool_3x3':
      per_source(batch_norm(max_pool_3x3(x, stride)), o)
    elif op == 'avg_pool_3x3':
      per_source(batch_norm(avg_pool_3x3(x, stride)), o)
    elif op == 'skip_connect' and stride == 1:
      per_source(x, o)
    elif op == 'skip_connect':
      per_edge(_factorized_reduce(x, edges, t_count), o)

  conv_ops = [op for op in ops if op in _CONV_OPS]
  if conv_ops:
    per_edge_x = jnp.broadcast_to(x.reshape(n, h, w, s_count, 1, c),
                                  (n, h, w, s_count, t_count, c))
    per_edge_x = per_edge_x.reshape(n, h, w, -1)
    y = _conv_block({op: per_edge_x for op in conv_ops}, edges, 'block_0',
                    stride=stride)
    sep = [op for op in conv_ops if _CONV_OPS[op][2] == 2]
    if sep:
      y.update(_conv_block({op: y[op] for op in sep}, edges, 'block_1',
                           stride=1))
    for op in conv_ops:
      out = y[op]
      per_edge(out.reshape(out.shape[:3] + (s_count, t_count, c)),
               ops.index(op))
  return sum(terms[1:], terms[0])


def cell_nodes(s0: jax.Array, s1: jax.Array,
               weights: Mapping[str, jax.Array],
               edge_params: Mapping[str, Any], *, reduction: bool,
               nodes: int, ops: Sequence[str]) -> jax.Array:
  """The intermediate nodes of a search cell, computed stage by stage.

  Args:
    s0, s1: the preprocessed cell inputs, ``[N, H, W, C]`` each.
    weights: ``{f'node_{j}': [j + 2, len(ops)]}``, one cell type of the arch.
    edge_params: ``{f'node_{j}_edge_{i}': {op: op_params}}``, the params of
      ``SearchCell``'s edges.
    reduction: whether the edges from s0 and s1 have stride 2.
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
  for k in range(-1, nodes - 1):
    # Stage k + 1: the edges leaving the inputs (k = -1), else node k.
    sources = [0, 1] if k < 0 else [k + 2]
    xs = [s0, s1] if k < 0 else [outputs[k]]
    targets = range(k + 1, nodes)
    rows = jnp.stack([jnp.stack([weights[f'node_{j}'][i] for j in targets])
                      for i in sources])
    edges = [[edge_params[f'node_{j}_edge_{i}'] for j in targets]
             for i in sources]
    stride = 2 if reduction and k < 0 else 1
    out = stage(xs, rows, edges, stride=stride, ops=ops)
    partial = out if partial is None else partial + out
    outputs.append(partial[:, :, :, 0])
    partial = partial[:, :, :, 1:]
  return jnp.concatenate(outputs, axis=-1)
