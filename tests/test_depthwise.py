"""Tests of the depthwise primitives (models/depthwise.py).

Every value and derivative is checked against ``lax.conv_general_dilated``
(``ops.depthwise_conv2d``) differentiated by JAX, odd sizes, strides and
dilations included; the transposition identities against each other; the
compactness that is the primitives' point in the jaxprs of the derivatives.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax.models import depthwise
from sparsenas_jax.models import ops as ops_lib
from sparsenas_jax.runtime import compilation

_OPTIONS = compilation.compiler_options(cpu_fast_compile=True)
C = 3


def _run(f, *args):
  return jax.jit(f).lower(*args).compile(compiler_options=_OPTIONS)(*args)


def _channels_first(x):  # [L, N, H, W, C] -> [L, C, N, H, W]
  return jnp.transpose(x, (0, 4, 1, 2, 3))


def _channels_last(x):
  return jnp.transpose(x, (0, 2, 3, 4, 1))


def _data(size, k, seed, edges=2):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(edges, 2, size, size, C)).astype(np.float32)
  kernel = rng.normal(size=(k, k, edges, C)).astype(np.float32)
  return x, kernel, rng


CASES = [(8, 1, 1, 3), (7, 2, 2, 5), (6, 2, 1, 3), (9, 1, 2, 5)]


@pytest.mark.parametrize('size,stride,dilation,k', CASES)
def test_every_derivative_matches_lax_conv(size, stride, dilation, k):
  x, kernel, rng = _data(size, k, size + 10 * k + 100 * stride)
  dx = rng.normal(size=x.shape).astype(np.float32)
  dk = rng.normal(size=kernel.shape).astype(np.float32)

  def ours(x, kernel):
    return _channels_last(depthwise.conv(_channels_first(x), kernel, stride,
                                         dilation))

  def lax_conv(x, kernel):
    return jnp.stack([
        ops_lib.depthwise_conv2d(x[e], kernel[:, :, e:e + 1],
                                 stride=stride, dilation=dilation)
        for e in range(x.shape[0])])

  def derivatives(f, x, kernel):
    # Forward, reverse, reverse over forward (the exact hypergradient's
    # mixed product), reverse over reverse, forward over reverse.
    out, tangent = jax.jvp(f, (x, kernel), (dx, dk))
    cotangents = jax.vjp(f, x, kernel)[1](jnp.sin(out))
    along = lambda x, kernel: jnp.sum(jnp.sin(
        jax.jvp(f, (x, kernel), (dx, dk))[1]))
    def back(x, kernel):
      y, pullback = jax.vjp(f, x, kernel)
      return jnp.sum(jnp.sin(pullback(jnp.cos(y))[0]))
    grad_back = jax.grad(back, argnums=(0, 1))
    return (out, tangent, cotangents,
            jax.grad(along, argnums=(0, 1))(x, kernel),
            grad_back(x, kernel),
            jax.jvp(grad_back, (x, kernel), (dx, dk))[1])

  got = _run(functools.partial(derivatives, ours), x, kernel)
  want = _run(functools.partial(derivatives, lax_conv), x, kernel)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5 * np.abs(w).max())


@pytest.mark.parametrize('size,stride,dilation,k', CASES[:2])
def test_transposition_identities(size, stride, dilation, k):
  # <conv(x, k), g> = <x, conv_transpose(g, k)> = <k, kernel_grad(x, g)>.
  x, kernel, rng = _data(size, k, 7 + size)
  x = _channels_first(x)
  out = depthwise.out_size(size, stride)
  g = rng.normal(size=x.shape[:3] + (out, out)).astype(np.float32)

  def inner(x, kernel, g):
    y = depthwise.conv(x, kernel, stride, dilation)
    xt = depthwise.conv_transpose(g, kernel, x.shape[-2:], stride, dilation)
    kt = depthwise.kernel_grad(x, g, kernel.shape[0], stride, dilation)
    return jnp.vdot(y, g), jnp.vdot(x, xt), jnp.vdot(kernel, kt)

  a, b, c = (float(v) for v in _run(inner, x, kernel, g))
  assert abs(a - b) <= 1e-4 * abs(a) and abs(a - c) <= 1e-4 * abs(a)


def test_vmap_matches_a_loop():
  x, kernel, rng = _data(6, 3, 3, edges=6)
  x = _channels_first(x)
  x = x.reshape((2, 3) + x.shape[1:])
  kernel = jnp.moveaxis(kernel.reshape(3, 3, 2, 3, C), 2, 0)  # [2, K, K, 3, C]
  f = lambda x, kernel: jnp.sum(jnp.sin(depthwise.conv(x, kernel, 2, 1)))
  grads = lambda x, kernel: jax.grad(f, argnums=(0, 1))(x, kernel)
  got = _run(jax.vmap(grads), x, kernel)
  want = [_run(grads, x[i], kernel[i]) for i in range(2)]
  for g, w in zip(got, zip(*want)):
    np.testing.assert_allclose(g, np.stack(w), rtol=1e-5, atol=1e-6)
  # One operand mapped, the other shared.
  shared = _run(jax.vmap(grads, in_axes=(0, None)), x, kernel[0])
  np.testing.assert_allclose(shared[0][1], _run(grads, x[1], kernel[0])[0],
                             rtol=1e-5, atol=1e-6)


def _count(text, pattern):
  return len(re.findall(pattern, text))


@pytest.mark.parametrize('order', ['grad', 'mixed', 'hessian'])
def test_derivatives_have_no_pad_or_reduction_per_tap(order):
  # The primitives' point: differentiated as slices, a 5x5 conv's input
  # cotangent would be 25 pads and its kernel cotangent 25 reductions; the
  # derivatives of every order here are the three primitives only.
  x = jnp.zeros((2, C, 3, 9, 9))
  kernel = jnp.zeros((5, 5, 2, C))
  v = jnp.ones_like(kernel)
  f = lambda x, kernel: jnp.sum(jnp.sin(depthwise.conv(x, kernel, 1, 2)))
  programs = {
      'grad': jax.grad(f, argnums=(0, 1)),
      'mixed': jax.grad(lambda x, kernel: jax.jvp(
          lambda k: f(x, k), (kernel,), (v,))[1], argnums=(0, 1)),
      'hessian': lambda x, kernel: jax.jvp(
          jax.grad(f, argnums=1), (x, kernel), (x, v))[1],
  }
  text = str(jax.make_jaxpr(programs[order])(x, kernel))
  primitives = _count(text, r'depthwise_(?:conv|conv_transpose|kernel_grad)\[')
  assert primitives >= 2
  assert _count(text, r'= pad\[') == 0
  assert _count(text, r'reduce_sum\[') <= 2  # f's own sum and sin's


def test_kernel_grad_is_one_reduction_in_the_compiled_program():
  x = jnp.zeros((2, C, 3, 9, 9))
  kernel = jnp.zeros((5, 5, 2, C))
  def reductions(conv):
    f = lambda x, kernel: jnp.sum(conv(x, kernel) * x)
    hlo = jax.jit(jax.grad(f, argnums=1)).lower(x, kernel).as_text()
    return _count(hlo, r'stablehlo\.reduce[ (]')

  assert reductions(depthwise.conv) == 1  # one variadic reduction
  # The same slices differentiated by JAX: a reduction per tap.
  as_slices = functools.partial(depthwise._conv_impl, stride=1, dilation=1)
  assert reductions(as_slices) == 25


def test_bad_shapes_raise_one_line_errors():
  x = jnp.zeros((2, C, 3, 8, 8))
  with pytest.raises(ValueError, match=r'expected feature maps \[L, C, N'):
    depthwise.conv(x[0], jnp.zeros((3, 3, 2, C)))
  with pytest.raises(ValueError, match='does not match feature maps'):
    depthwise.conv(x, jnp.zeros((3, 3, 2, C + 1)))
  with pytest.raises(ValueError, match='does not match feature maps'):
    depthwise.conv(x, jnp.zeros((2, 3, 3, C)))  # the old [L, K, K, C]
  with pytest.raises(ValueError, match='must be odd'):
    depthwise.conv(x, jnp.zeros((4, 4, 2, C)))
  with pytest.raises(ValueError, match='does not come from an input'):
    depthwise.conv_transpose(x, jnp.zeros((3, 3, 2, C)), (8, 8), stride=2)
  with pytest.raises(ValueError, match='is not shaped like conv'):
    depthwise.kernel_grad(x, x, 3, stride=2)


@pytest.mark.parametrize('size,stride,dilation,k', CASES[:2])
def test_grouped_conv_lowering_computes_the_same_maps(size, stride, dilation,
                                                      k):
  # The GPU/TPU lowering, run here on XLA:CPU, against the slices.
  x, kernel, rng = _data(size, k, 11 + size)
  x = _channels_first(x)
  out = depthwise.out_size(size, stride)
  g = rng.normal(size=x.shape[:3] + (out, out)).astype(np.float32)
  params = dict(stride=stride, dilation=dilation)
  pairs = [
      (depthwise._conv_impl, depthwise._grouped_conv_impl, (x, kernel), {}),
      (depthwise._conv_transpose_impl, depthwise._grouped_conv_transpose_impl,
       (g, kernel), dict(in_hw=(size, size))),
      (depthwise._kernel_grad_impl, depthwise._grouped_kernel_grad_impl,
       (x, g), dict(kernel_size=k)),
  ]
  for slices, grouped, args, extra in pairs:
    want = _run(functools.partial(slices, **params, **extra), *args)
    got = _run(functools.partial(grouped, **params, **extra), *args)
    np.testing.assert_allclose(got, want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())


def test_each_backend_lowers_to_its_formulation():
  x = jnp.zeros((2, C, 3, 9, 9))
  kernel = jnp.zeros((5, 5, 2, C))
  f = jax.grad(lambda x, kernel: jnp.sum(jnp.sin(
      depthwise.conv(x, kernel, 2, 2))), argnums=(0, 1))
  traced = jax.jit(f).trace(x, kernel)
  text = {platform: traced.lower(lowering_platforms=(platform,)).as_text()
          for platform in ('cpu', 'cuda', 'tpu')}
  assert 'stablehlo.convolution' not in text['cpu']
  assert text['cuda'].count('stablehlo.convolution') == 3
  assert text['tpu'].count('stablehlo.convolution') == 3
  # XLA:CPU computes the transposed conv (x's cotangent) unfused, as a
  # branch of a conditional.
  assert text['cpu'].count('stablehlo.case') == 1
  assert 'stablehlo.case' not in text['cuda'] + text['tpu']


@pytest.mark.parametrize('nan_first', [False, True])
def test_unfused_transpose_is_the_transpose(nan_first):
  # Either branch of the conditional, inside a program that would fuse it
  # with its consumer, computes what the primitive alone does.
  rng = np.random.default_rng(5)
  g = rng.normal(size=(2, C, 2, 5, 5)).astype(np.float32)
  g[0, 0, 0, 0, 0] = np.nan if nan_first else g[0, 0, 0, 0, 0]
  kernel = rng.normal(size=(3, 3, 2, C)).astype(np.float32)
  params = dict(stride=2, dilation=1, in_hw=(9, 9))
  want = np.maximum(depthwise._conv_transpose_impl(g, kernel, **params), 0)
  got = _run(lambda g, kernel: jnp.maximum(depthwise.conv_transpose(
      g, kernel, **params), 0), g, kernel)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  assert np.isnan(got).any() == nan_first
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
