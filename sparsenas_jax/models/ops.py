"""Candidate operations of the DARTS CNN search space, for the search network.

Every op maps an NHWC feature map with ``channels`` channels to one with
``channels`` channels, at the same resolution (``stride=1``) or halved
(``stride=2``, the edges leaving a reduction cell's inputs). Following the
DARTS reference (Liu et al. 2019):

  max_pool_3x3, avg_pool_3x3  3x3 pool, padding 1, then batch norm; the average
                              excludes the padding from the count
  skip_connect                identity, or ``FactorizedReduce`` at stride 2
  sep_conv_kxk                twice (ReLU, depthwise kxk, pointwise 1x1, BN),
                              the stride on the first depthwise conv
  dil_conv_kxk                ReLU, depthwise kxk with dilation 2, pointwise
                              1x1, BN

DARTS's ``none`` is left out: SparseNAS mixes ops linearly (Wu et al. 2021,
Eq. 1), where a zero op contributes nothing whatever its weight.

Batch norm here has no learned affine parameters and always normalises with
the statistics of the current batch (``batch_norm``). The search only ever
needs the network in training mode, and without running averages every step
is a pure function of (params, arch, batch): no ``batch_stats`` collection, no
mutable state to thread through the bilevel updates.

The primitives (``conv2d``, ``depthwise_conv2d``, ``max_pool_3x3``,
``avg_pool_3x3``, ``batch_norm``) are small pure functions so that faster
versions can be swapped in one at a time.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from sparsenas_jax import search_space
from sparsenas_jax.models import depthwise

BN_EPS = 1e-5

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')

# PyTorch's default convolution init, kaiming_uniform(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which the DARTS reference relies on.
conv_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


# ----------------------------------------------------------------------------
# Pure primitives.
# ----------------------------------------------------------------------------


def batch_norm(x: jax.Array, eps: float = BN_EPS) -> jax.Array:
  """Non-affine batch norm with batch statistics over N, H, W.

  ``(x - mean) / sqrt(var + eps)`` with the biased variance, as PyTorch's
  ``BatchNorm2d(affine=False)`` computes in training mode. Statistics are
  taken in float32.

  There are no running averages: the search only ever evaluates the network
  in training mode, and a stateless BN keeps every step a pure function of
  (params, arch, batch), with no ``batch_stats`` collection to carry through
  the bilevel updates. The DARTS search network has no affine BN parameters
  either; derived networks trained from scratch need a stateful BN instead.

  Args:
    x: ``[N, H, W, C]``.
    eps: added to the variance.

  Returns:
    The normalised array, with the dtype of ``x``.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
  return ((x32 - mean) * lax.rsqrt(var + eps)).astype(x.dtype)


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           dilation: int = 1, groups: int = 1) -> jax.Array:
  """2-D convolution without bias, padded so that stride 1 keeps H, W.

  The padding on each side is ``dilation * (k - 1) // 2``, the padding of
  every DARTS op (1 for 3x3, 2 for 5x5, 2 and 4 for the dilated 3x3 and 5x5);
  with stride 2 an H x W input gives ceil(H/2) x ceil(W/2).

  Args:
    x: ``[N, H, W, C_in]``.
    kernel: ``[k, k, C_in // groups, C_out]`` (HWIO), k odd.
    stride: spatial stride.
    dilation: kernel dilation.
    groups: feature groups; ``C_in`` for a depthwise convolution.

  Returns:
    ``[N, H', W', C_out]``.
  """
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  return lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(stride, stride),
      padding=((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=_DIMENSIONS, feature_group_count=groups)


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
                     dilation: int = 1) -> jax.Array:
  """Depthwise convolution: channel c is convolved with ``kernel[..., 0, c]``.

  ``depthwise.conv`` of ``x`` as one feature map, channels first: on XLA:CPU
  shifted slices (several times faster there than a grouped
  ``conv2d``), on GPUs and TPUs a grouped convolution; the same function
  (``depthwise`` makes the choice, and writes the derivatives).

  Args:
    x: ``[N, H, W, C]``.
    kernel: ``[k, k, 1, C]``, k odd.
    stride: spatial stride.
    dilation: kernel dilation.

  Returns:
    ``[N, H', W', C]``, padded as in ``conv2d``.
  """
  y = depthwise.conv(jnp.transpose(x, (3, 0, 1, 2))[None], kernel, stride,
                     dilation)
  return jnp.transpose(y[0], (1, 2, 3, 0))


def _pool_args(stride):
  return dict(window_dimensions=(1, 3, 3, 1),
              window_strides=(1, stride, stride, 1),
              padding=((0, 0), (1, 1), (1, 1), (0, 0)))


def max_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3x3 max pool, padding 1 (padding never wins).

  Args:
    x: ``[N, H, W, C]``.
    stride: 1 or 2.

  Returns:
    ``[N, ceil(H/stride), ceil(W/stride), C]``.
  """
  init = np.array(-np.inf, x.dtype)
  return lax.reduce_window(x, init, lax.max, **_pool_args(stride))


def window_counts(size: int, stride: int) -> np.ndarray:
  """Number of in-bounds positions of each 3-wide, padding-1 window."""
  starts = np.arange(0, size, stride) - 1
  return (np.minimum(starts + 3, size) - np.maximum(starts, 0)).astype(
      np.float32)


def avg_pool_3x3(x: jax.Array, stride: int = 1) -> jax.Array:
  """3x3 average pool, padding 1, padding excluded from the count.

  The same as PyTorch's ``AvgPool2d(3, stride, 1, count_include_pad=False)``:
  border windows average only their in-bounds pixels.

  Args:
    x: ``[N, H, W, C]``.
    stride: 1 or 2.

  Returns:
    ``[N, ceil(H/stride), ceil(W/stride), C]``.
  """
  total = lax.reduce_window(x, np.array(0, x.dtype), lax.add,
                            **_pool_args(stride))
  # The counts depend on shapes only: a constant, built at trace time.
  counts = np.outer(window_counts(x.shape[1], stride),
                    window_counts(x.shape[2], stride))
  return total * jnp.asarray(1 / counts[None, :, :, None], x.dtype)


# ----------------------------------------------------------------------------
# Modules.
# ----------------------------------------------------------------------------


class ReLUConvBN(nn.Module):
  """ReLU, convolution without bias, non-affine BN (cell preprocessing).

  Attributes:
    channels: output channels.
    kernel_size: odd kernel size (1 for the cell preprocessing).
    stride: spatial stride.
  """
  channels: int
  kernel_size: int = 1
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param('kernel', conv_init,
                        (k, k, x.shape[-1], self.channels))
    return batch_norm(conv2d(nn.relu(x), kernel, stride=self.stride))


class DilConv(nn.Module):
  """ReLU, depthwise kxk conv (dilated), pointwise 1x1 conv, non-affine BN.

  With ``dilation=2`` this is DARTS's dil_conv_kxk; with ``dilation=1`` it is
  one half of a sep_conv_kxk.

  Attributes:
    channels: output channels.
    kernel_size: depthwise kernel size k.
    stride: stride of the depthwise conv.
    dilation: dilation of the depthwise conv.
  """
  channels: int
  kernel_size: int
  stride: int = 1
  dilation: int = 2

  @nn.compact
  def __call__(self, x):
    k, c_in = self.kernel_size, x.shape[-1]
    depthwise = self.param('depthwise', conv_init, (k, k, 1, c_in))
    pointwise = self.param('pointwise', conv_init, (1, 1, c_in, self.channels))
    x = depthwise_conv2d(nn.relu(x), depthwise, stride=self.stride,
                         dilation=self.dilation)
    return batch_norm(conv2d(x, pointwise))


class SepConv(nn.Module):
  """DARTS's separable conv: two (ReLU, depthwise, pointwise, BN) blocks.

  The first block carries the stride and keeps the input channels, the second
  maps to ``channels``.

  Attributes:
    channels: output channels.
    kernel_size: depthwise kernel size k.
    stride: stride of the first depthwise conv.
  """
  channels: int
  kernel_size: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    x = DilConv(x.shape[-1], self.kernel_size, self.stride, dilation=1,
                name='block_0')(x)
    return DilConv(self.channels, self.kernel_size, 1, dilation=1,
                   name='block_1')(x)


class FactorizedReduce(nn.Module):
  """Halves H and W: ReLU, two 1x1 stride-2 convs, concat, non-affine BN.

  The second conv sees the input shifted by one pixel (it samples the odd
  rows and columns, the first the even ones), so together they read every
  pixel. An odd H or W is zero-padded at the end before the shift so that
  both halves have ceil(H/2) x ceil(W/2) pixels.

  Attributes:
    channels: output channels, even (half from each conv).
  """
  channels: int

  @nn.compact
  def __call__(self, x):
    if self.channels % 2:
      raise ValueError(
          f'FactorizedReduce needs an even channel count, got {self.channels}.')
    c_in, half = x.shape[-1], self.channels // 2
    kernel_0 = self.param('kernel_0', conv_init, (1, 1, c_in, half))
    kernel_1 = self.param('kernel_1', conv_init, (1, 1, c_in, half))
    x = nn.relu(x)
    shifted = jnp.pad(x[:, 1:, 1:, :],
                      ((0, 0), (0, x.shape[1] % 2), (0, x.shape[2] % 2),
                       (0, 0)))
    out = jnp.concatenate([conv2d(x, kernel_0, stride=2),
                           conv2d(shifted, kernel_1, stride=2)], axis=-1)
    return batch_norm(out)


class MaxPoolBN(nn.Module):
  """max_pool_3x3 followed by non-affine BN (search network only)."""
  stride: int = 1

  def __call__(self, x):
    return batch_norm(max_pool_3x3(x, self.stride))


class AvgPoolBN(nn.Module):
  """avg_pool_3x3 (count_include_pad=False) followed by non-affine BN."""
  stride: int = 1

  def __call__(self, x):
    return batch_norm(avg_pool_3x3(x, self.stride))


class Identity(nn.Module):
  """skip_connect at stride 1."""

  def __call__(self, x):
    return x


def make_op(op: str, channels: int, stride: int, **module_kwargs: Any
            ) -> nn.Module:
  """The Flax module of one candidate op.

  Args:
    op: a name from ``search_space.DARTS_OPS``.
    channels: input and output channels.
    stride: 1, or 2 on the edges leaving a reduction cell's inputs.
    **module_kwargs: passed to the module (``name=...``).

  Returns:
    A module mapping ``[N, H, W, channels]`` to
    ``[N, ceil(H/stride), ceil(W/stride), channels]``.

  Raises:
    ValueError: for an unknown op name or a stride other than 1 or 2.
  """
  search_space.check_ops((op,))
  if stride not in (1, 2):
    raise ValueError(f'stride must be 1 or 2, got {stride}.')
  if op == 'max_pool_3x3':
    return MaxPoolBN(stride, **module_kwargs)
  if op == 'avg_pool_3x3':
    return AvgPoolBN(stride, **module_kwargs)
  if op == 'skip_connect':
    if stride == 1:
      return Identity(**module_kwargs)
    return FactorizedReduce(channels, **module_kwargs)
  conv = search_space.CONV_OPS[op]
  if conv.blocks == 2:
    return SepConv(channels, conv.kernel_size, stride, **module_kwargs)
  return DilConv(channels, conv.kernel_size, stride, dilation=conv.dilation,
                 **module_kwargs)
