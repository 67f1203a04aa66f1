"""Ops on channels-first feature maps: ``[..., H, W]``, ``[C, N, H, W]``.

Pools and FactorizedReduce's pixel selection over the last two axes, so
that the leading axes (edges, channels, batch) stay contiguous, and 1x1
convolutions of ``[C, N, H, W]`` maps: what the search cell
(``batched_cell``) and the evaluation network (``eval_network``) share.
The pools are separable: a 3-wide max (or sum) over rows, then over
columns, of shifted slices, which XLA:CPU runs far faster than
``lax.reduce_window``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from sparsenas_jax.models.depthwise import out_size
from sparsenas_jax.models.ops import window_counts


def even_odd(x: jax.Array) -> jax.Array:
  """The pixels FactorizedReduce's two 1x1 stride-2 convs read.

  Args:
    x: ``[..., H, W]``.

  Returns:
    ``[2, ..., ceil(H/2), ceil(W/2)]``: the even pixels, and the odd ones
    (zero past the edge when H or W is odd).
  """
  h, w = x.shape[-2:]
  odd = jnp.pad(x[..., 1:, 1:],
                ((0, 0),) * (x.ndim - 2) + ((0, h % 2), (0, w % 2)))
  return jnp.stack([x[..., ::2, ::2], odd[..., ::2, ::2]])


def _pool_1d(x: jax.Array, axis: int, stride: int, reduce, fill) -> jax.Array:
  """A 3-wide window of ``reduce`` along ``axis``, padding 1 with ``fill``."""
  out = out_size(x.shape[axis], stride)
  pads = [(0, 0)] * x.ndim
  pads[axis] = (1, 1)
  xp = jnp.pad(x, pads, constant_values=fill)
  taps = [lax.slice_in_dim(xp, d, d + (out - 1) * stride + 1, stride, axis)
          for d in range(3)]
  return reduce(reduce(taps[0], taps[1]), taps[2])


def max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """``ops.max_pool_3x3`` over the last two axes of ``[..., H, W]``."""
  rows = _pool_1d(x, x.ndim - 2, stride, lax.max, -np.inf)
  return _pool_1d(rows, x.ndim - 1, stride, lax.max, -np.inf)


def avg_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """``ops.avg_pool_3x3`` (padding not counted) over ``[..., H, W]``."""
  h, w = x.shape[-2:]
  rows = _pool_1d(x, x.ndim - 2, stride, lax.add, 0)
  total = _pool_1d(rows, x.ndim - 1, stride, lax.add, 0)
  counts = np.outer(window_counts(h, stride), window_counts(w, stride))
  return total * jnp.asarray(1 / counts, x.dtype)


def conv_1x1(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """``[C, N, H, W]`` times a ``[1, 1, C, D]`` (HWIO) kernel: ``[D, N, H, W]``.

  One matmul ``[D, C] x [C, N H W]``, the kernel first: XLA:CPU runs the
  same contraction with the kernel second about twice as slowly.
  """
  c, n, h, w = x.shape
  out = jnp.dot(kernel[0, 0].T.astype(x.dtype), x.reshape(c, n * h * w))
  return out.reshape(-1, n, h, w)


def factorized_reduce(x: jax.Array, kernel_0: jax.Array,
                      kernel_1: jax.Array) -> jax.Array:
  """FactorizedReduce's two 1x1 stride-2 convs of ``[C, N, H, W]`` (the
  even pixels, the odd ones), concatenated; no ReLU before, no batch norm
  after. Kernels ``[1, 1, C, D / 2]``; returns ``[D, N, ceil(H/2),
  ceil(W/2)]``."""
  even, odd = even_odd(x)
  return jnp.concatenate([conv_1x1(even, kernel_0), conv_1x1(odd, kernel_1)])
