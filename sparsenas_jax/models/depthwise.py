"""Depthwise convolutions of stacked feature maps as three bilinear primitives.

The search cell (``batched_cell``) convolves many edges at once: feature
maps ``x: [L, C, N, H, W]`` (L stacked edges, channels before the batch),
each ``x[l]`` with its own depthwise kernel ``kernel[:, :, l]: [K, K, C]``,
same padding, stride s, dilation d. Kernels are ``[K, K, L, C]``, the taps
first (a depthwise HWIO kernel, with the edges in the input-channel place),
so that a tap's scales ``kernel[a, b]`` are one contiguous ``[L, C]`` block
and no layout change is compiled on either side of the primitives. Written
with elementwise ops only, such a convolution is a sum of K * K shifted,
scaled slices of the padded input, which XLA fuses into one loop; XLA:CPU
runs ``lax.conv_general_dilated`` with ``feature_group_count`` several
times slower.

Differentiated by JAX as written, those slices become K * K pads (the
input's cotangent: a loop that tests every tap's bounds at every pixel) and
K * K separate reductions (the kernel's cotangent: one XLA program each,
hundreds per cell, most of the compile time). Here the convolution and the
two maps its derivatives need are primitives, each lowered to one compact
computation, and each one's derivatives are the others':

* ``conv(x, kernel)``: ``y[l,c,n,i,j] = Σ_{a,b} kernel[a,b,l,c]
  x_pad[l,c,n, s i + d a, s j + d b]``, one fused loop of slices;
* ``conv_transpose(g, kernel)``: the transpose of ``x ↦ conv(x, kernel)``,
  the correlation of ``g`` (dilated by s, padded) with the flipped kernel,
  one fused loop of slices;
* ``kernel_grad(x, g)``: the transpose of ``kernel ↦ conv(x, kernel)``,
  ``Σ_{n,i,j} x_pad[l,c,n, s i + d a, s j + d b] g[l,c,n,i,j]`` for all
  K * K taps in one variadic reduction (a single pass over x and g).

The three are bilinear and closed under transposition (``<conv(x, k), g> =
<x, conv_transpose(g, k)> = <k, kernel_grad(x, g)>``), so derivatives of
every order and mode (JVPs, gradients, reverse over forward as in the exact
hypergradient, reverse over reverse) stay in this family: no pad per tap,
no reduction per tap, at any order. ``jax.vmap`` folds its axis into L.

On XLA:CPU ``conv_transpose`` computes inside a conditional that XLA
cannot decide when it compiles (both branches are the same computation),
a boundary its fusion passes keep. Without it XLA:CPU fuses a stage's
transposed convolutions, the sum over the edges that share a source and
the ReLU mask into one loop that runs more than twice as long as the same
work in separate loops.

How they lower is the one per-backend choice of the depthwise convolution
in this package: XLA:CPU gets the slices and the variadic reduction above;
GPUs and TPUs (``GROUPED_CONV_PLATFORMS``), whose convolution units run
grouped convolutions natively, get ``lax.conv_general_dilated`` with one
group per (l, c) and its transposes. Both compute the same maps.

All three take operands of one floating dtype; ``kernel_grad``
accumulates in float32 on XLA:CPU.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad
from jax.interpreters import batching
from jax.interpreters import mlir
import jax.numpy as jnp
import numpy as np


def out_size(size: int, stride: int) -> int:
  """Output length of a same-padded, odd-kernel conv with ``stride``."""
  return (size - 1) // stride + 1


def _pad(kernel_size: int, dilation: int) -> int:
  return dilation * (kernel_size - 1) // 2


def _check(name: str, x, kernel_like, kernel_size: int):
  if x.ndim != 5:
    raise ValueError(f'depthwise.{name}: expected feature maps [L, C, N, H, '
                     f'W], got shape {x.shape}.')
  if kernel_like is not None and (
      kernel_like.ndim != 4 or kernel_like.shape[0] != kernel_like.shape[1] or
      kernel_like.shape[2] != x.shape[0] or
      kernel_like.shape[3] != x.shape[1]):
    raise ValueError(f'depthwise.{name}: kernel {kernel_like.shape} does not '
                     f'match feature maps {x.shape} ([K, K, L, C] for '
                     f'[L, C, N, H, W]).')
  if kernel_size % 2 != 1:
    raise ValueError(f'depthwise.{name}: the kernel size must be odd, got '
                     f'{kernel_size}.')


# ----------------------------------------------------------------------------
# The computations the primitives lower to.
# ----------------------------------------------------------------------------


def _taps(xp, kernel_size: int, stride: int, dilation: int, out_hw):
  """The K * K strided slices of ``xp`` a tap reads, in (a, b) order."""
  l, c, n = xp.shape[:3]
  ho, wo = out_hw
  for a in range(kernel_size):
    for b in range(kernel_size):
      start = (0, 0, 0, a * dilation, b * dilation)
      limit = (l, c, n, start[3] + (ho - 1) * stride + 1,
               start[4] + (wo - 1) * stride + 1)
      yield lax.slice(xp, start, limit, (1, 1, 1, stride, stride))


def _correlate(xp, kernel, stride: int, dilation: int, out_hw, *,
               flip: bool = False):
  """``Σ_{a,b} kernel[a,b,l,c] · slice_{a,b}(xp)``: one fused loop; with
  ``flip``, the kernel rotated by 180 degrees (``kernel[K-1-a, K-1-b]``)."""
  k = kernel.shape[0]
  taps = kernel.reshape((k * k,) + kernel.shape[2:])
  out = None
  for t, shifted in enumerate(_taps(xp, k, stride, dilation, out_hw)):
    scale = lax.broadcast_in_dim(
        lax.index_in_dim(taps, k * k - 1 - t if flip else t, keepdims=False),
        shifted.shape, (0, 1))
    term = lax.mul(shifted, scale)
    out = term if out is None else lax.add(out, term)
  return out


def _conv_impl(x, kernel, *, stride, dilation):
  pad = _pad(kernel.shape[0], dilation)
  h, w = x.shape[-2:]
  xp = lax.pad(x, np.array(0, x.dtype),
               [(0, 0, 0)] * 3 + [(pad, pad, 0)] * 2)
  return _correlate(xp, kernel, stride, dilation,
                    (out_size(h, stride), out_size(w, stride)))


def _conv_transpose_impl(g, kernel, *, stride, dilation, in_hw):
  pad = _pad(kernel.shape[0], dilation)
  config = [(0, 0, 0)] * 3 + [
      (pad, size + pad - (out - 1) * stride - 1, stride - 1)
      for size, out in zip(in_hw, g.shape[-2:])]
  gz = lax.pad(g, np.array(0, g.dtype), config)
  return _correlate(gz, kernel, 1, dilation, in_hw, flip=True)


def _unfused(impl):
  """``impl`` as the branch of a conditional XLA cannot decide at compile
  time, so that XLA:CPU computes it in loops of its own and writes its
  result out instead of fusing it with its operands' producers and its
  consumers. Both branches are ``impl``; the predicate (the first operand's
  first element is NaN) only hides that from XLA."""
  def unfused(operand, *args, **params):
    if not operand.size:
      return impl(operand, *args, **params)
    first = lax.slice(operand, (0,) * operand.ndim,
                      (1,) * operand.ndim).reshape(())
    branch = lambda: impl(operand, *args, **params)
    return lax.cond(first != first, branch, branch)
  return unfused


def _kernel_grad_impl(x, g, *, stride, dilation, kernel_size):
  pad = _pad(kernel_size, dilation)
  xp = lax.pad(x, np.array(0, x.dtype),
               [(0, 0, 0)] * 3 + [(pad, pad, 0)] * 2)
  g32 = g.astype(jnp.float32)
  products = [lax.mul(shifted.astype(jnp.float32), g32) for shifted in
              _taps(xp, kernel_size, stride, dilation, g.shape[-2:])]
  zero = np.array(0, np.float32)
  sums = lax.reduce(products, [zero] * len(products),
                    lambda u, v: [lax.add(p, q) for p, q in zip(u, v)],
                    (2, 3, 4))  # K * K arrays [L, C]
  l, c = x.shape[:2]
  out = jnp.stack(sums).reshape(kernel_size, kernel_size, l, c)
  return out.astype(x.dtype)


# The same three maps as grouped convolutions (``lax.conv_general_dilated``
# with one group per (l, c)), which cuDNN and the TPU's convolution units
# run natively: the lowering on those backends.


def _grouped_conv(x, kernel, stride, dilation):
  l, c, n, h, w = x.shape
  k = kernel.shape[0]
  pad = _pad(k, dilation)
  rhs = kernel.reshape(k, k, 1, l * c)
  out = lax.conv_general_dilated(
      x.reshape(l * c, n, h, w), rhs, (stride, stride), [(pad, pad)] * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('CNHW', 'HWIO', 'CNHW'), feature_group_count=l * c)
  return out.reshape((l, c) + out.shape[1:])


def _grouped_conv_impl(x, kernel, *, stride, dilation):
  return _grouped_conv(x, kernel, stride, dilation)


def _grouped_conv_transpose_impl(g, kernel, *, stride, dilation, in_hw):
  x = jax.ShapeDtypeStruct(g.shape[:3] + tuple(in_hw), g.dtype)
  return jax.linear_transpose(
      lambda x: _grouped_conv(x, kernel, stride, dilation), x)(g)[0]


def _grouped_kernel_grad_impl(x, g, *, stride, dilation, kernel_size):
  kernel = jax.ShapeDtypeStruct(
      (kernel_size, kernel_size) + x.shape[:2], x.dtype)
  return jax.linear_transpose(
      lambda k: _grouped_conv(x, k, stride, dilation), kernel)(g)[0]


# Backends whose convolution units run grouped convolutions natively; every
# other backend (XLA:CPU) gets the slices.
GROUPED_CONV_PLATFORMS = ('cuda', 'rocm', 'tpu')


# ----------------------------------------------------------------------------
# Primitives.
# ----------------------------------------------------------------------------


def _primitive(name: str, impl, grouped_impl, abstract_eval, static, *,
               lowered_impl=None):
  """``lowered_impl`` (default ``impl``) is what XLA:CPU compiles inside a
  program; ``impl`` runs the primitive alone."""
  prim = Primitive(f'depthwise_{name}')
  prim.def_impl(jax.jit(impl, static_argnames=static))
  prim.def_abstract_eval(abstract_eval)
  mlir.register_lowering(prim, mlir.lower_fun(lowered_impl or impl,
                                              multiple_results=False))
  for platform in GROUPED_CONV_PLATFORMS:
    mlir.register_lowering(
        prim, mlir.lower_fun(grouped_impl, multiple_results=False),
        platform=platform)
  return prim


def _conv_abstract(x, kernel, *, stride, dilation):
  del dilation
  l, c, n, h, w = x.shape
  return jax.core.ShapedArray((l, c, n, out_size(h, stride),
                               out_size(w, stride)), x.dtype)


def _conv_transpose_abstract(g, kernel, *, stride, dilation, in_hw):
  del kernel, stride, dilation
  return jax.core.ShapedArray(g.shape[:3] + tuple(in_hw), g.dtype)


def _kernel_grad_abstract(x, g, *, stride, dilation, kernel_size):
  del g, stride, dilation
  return jax.core.ShapedArray((kernel_size, kernel_size) + x.shape[:2],
                              x.dtype)


conv_p = _primitive('conv', _conv_impl, _grouped_conv_impl, _conv_abstract,
                    ('stride', 'dilation'))
conv_transpose_p = _primitive(
    'conv_transpose', _conv_transpose_impl, _grouped_conv_transpose_impl,
    _conv_transpose_abstract, ('stride', 'dilation', 'in_hw'),
    lowered_impl=_unfused(_conv_transpose_impl))
kernel_grad_p = _primitive(
    'kernel_grad', _kernel_grad_impl, _grouped_kernel_grad_impl,
    _kernel_grad_abstract, ('stride', 'dilation', 'kernel_size'))


def _shape(operand):
  """Shape of a transpose rule's operand, known or being transposed."""
  return operand.shape if hasattr(operand, 'shape') else operand.aval.shape


# Transposes: each primitive's cotangent maps are the other two.
ad.defbilinear(
    conv_p,
    lambda ct, x, kernel, *, stride, dilation: conv_transpose_p.bind(
        ct, kernel, stride=stride, dilation=dilation,
        in_hw=tuple(_shape(x)[-2:])),
    lambda ct, x, kernel, *, stride, dilation: kernel_grad_p.bind(
        x, ct, stride=stride, dilation=dilation,
        kernel_size=_shape(kernel)[0]))
ad.defbilinear(
    conv_transpose_p,
    lambda ct, g, kernel, *, stride, dilation, in_hw: conv_p.bind(
        ct, kernel, stride=stride, dilation=dilation),
    lambda ct, g, kernel, *, stride, dilation, in_hw: kernel_grad_p.bind(
        ct, g, stride=stride, dilation=dilation,
        kernel_size=_shape(kernel)[0]))
ad.defbilinear(
    kernel_grad_p,
    lambda ct, x, g, *, stride, dilation, kernel_size: conv_transpose_p.bind(
        g, ct, stride=stride, dilation=dilation,
        in_hw=tuple(_shape(x)[-2:])),
    lambda ct, x, g, *, stride, dilation, kernel_size: conv_p.bind(
        x, ct, stride=stride, dilation=dilation))


# Where each primitive's operands and result keep L: feature maps at axis
# 0, kernels ([K, K, L, C]) at axis 2.
_L_AXES = {conv_p: ((0, 2), 0), conv_transpose_p: ((0, 2), 0),
           kernel_grad_p: ((0, 0), 2)}


def _batch_rule(prim, l_axes, args, dims, **params):
  """Folds the mapped axis into L (next to each operand's L axis) and back."""
  size = next(a.shape[d] for a, d in zip(args, dims)
              if d is not None)
  folded = []
  for a, d, l in zip(args, dims, l_axes[0]):
    a = (jnp.broadcast_to(a, (size,) + a.shape) if d is None
         else jnp.moveaxis(a, d, 0))
    a = jnp.moveaxis(a, 0, l)  # [..., size, L, ...]
    folded.append(a.reshape(a.shape[:l] + (-1,) + a.shape[l + 2:]))
  out = prim.bind(*folded, **params)
  l = l_axes[1]
  out = out.reshape(out.shape[:l] + (size, -1) + out.shape[l + 1:])
  return out, l


for _prim, _axes in _L_AXES.items():
  batching.primitive_batchers[_prim] = functools.partial(_batch_rule, _prim,
                                                         _axes)


# ----------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1,
         dilation: int = 1) -> jax.Array:
  """Depthwise convolutions of stacked feature maps, same padding.

  ``conv(x, kernel)[l]`` is ``ops.depthwise_conv2d`` of ``x[l]`` (in the
  channels-first layout) with ``kernel[:, :, l]``.

  Args:
    x: ``[L, C, N, H, W]``.
    kernel: ``[K, K, L, C]``, K odd; cast to the dtype of ``x``.
    stride: spatial stride s.
    dilation: kernel dilation d.

  Returns:
    ``[L, C, N, ceil(H/s), ceil(W/s)]``.
  """
  _check('conv', x, kernel, kernel.shape[0])
  return conv_p.bind(x, kernel.astype(x.dtype), stride=int(stride),
                     dilation=int(dilation))


def conv_transpose(g: jax.Array, kernel: jax.Array, in_hw: tuple[int, int],
                   stride: int = 1, dilation: int = 1) -> jax.Array:
  """The transpose of ``x ↦ conv(x, kernel, stride, dilation)``.

  Args:
    g: ``[L, C, N, H', W']``, a cotangent of ``conv``'s output.
    kernel: ``[K, K, L, C]``; cast to the dtype of ``g``.
    in_hw: (H, W) of ``conv``'s input.
    stride: s.
    dilation: d.

  Returns:
    ``[L, C, N, H, W]``.
  """
  _check('conv_transpose', g, kernel, kernel.shape[0])
  in_hw = tuple(int(s) for s in in_hw)
  if tuple(out_size(s, stride) for s in in_hw) != tuple(g.shape[-2:]):
    raise ValueError(f'depthwise.conv_transpose: a cotangent of spatial shape '
                     f'{g.shape[-2:]} does not come from an input of shape '
                     f'{in_hw} at stride {stride}.')
  return conv_transpose_p.bind(g, kernel.astype(g.dtype), stride=int(stride),
                               dilation=int(dilation), in_hw=in_hw)


def kernel_grad(x: jax.Array, g: jax.Array, kernel_size: int,
                stride: int = 1, dilation: int = 1) -> jax.Array:
  """The transpose of ``kernel ↦ conv(x, kernel, stride, dilation)``.

  Args:
    x: ``[L, C, N, H, W]``, ``conv``'s input.
    g: ``[L, C, N, H', W']``, a cotangent of its output; cast to the dtype
      of ``x``.
    kernel_size: K, odd.
    stride: s.
    dilation: d.

  Returns:
    ``[K, K, L, C]``, accumulated in float32.
  """
  _check('kernel_grad', x, None, kernel_size)
  if (tuple(g.shape[:3]) != tuple(x.shape[:3]) or
      tuple(g.shape[-2:]) != tuple(out_size(s, stride)
                                   for s in x.shape[-2:])):
    raise ValueError(f'depthwise.kernel_grad: cotangent {g.shape} is not '
                     f'shaped like conv\'s output for input {x.shape} at '
                     f'stride {stride}.')
  return kernel_grad_p.bind(x, g.astype(x.dtype), stride=int(stride),
                            dilation=int(dilation),
                            kernel_size=int(kernel_size))
