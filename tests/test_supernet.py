"""Tests of the candidate ops and the sparse supernet (models/)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax import models
from sparsenas_jax import search_space
from sparsenas_jax.models import ops as ops_lib

# LLVM's optimisation of the many small kernels of these graphs is about half
# of XLA:CPU's compile time here; these tests check numbers, not speed.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})

C = 4
EPS = ops_lib.BN_EPS


def _images(seed, shape=(2, 8, 8, 3)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _random_like(tree, seed, scale=0.5):
  """NumPy values for a pytree of shape structs (no XLA RNG to compile)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: rng.uniform(-scale, scale, s.shape).astype(np.float32), tree)


def _init_params(module, seed, *args):
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  return _random_like(shapes, seed)


# ----------------------------------------------------------------------------
# NumPy references, written as plain loops.
# ----------------------------------------------------------------------------


def np_batch_norm(x):
  mean = x.mean(axis=(0, 1, 2))
  var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
  return (x - mean) / np.sqrt(var + EPS)


def np_pool(x, stride, reduce_fn):
  """3x3 window, padding 1: reduce_fn over the in-bounds pixels only."""
  n, h, w, c = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  out = np.zeros((n, ho, wo, c), np.float64)
  for i in range(ho):
    for j in range(wo):
      rows = [r for r in range(i * stride - 1, i * stride + 2) if 0 <= r < h]
      cols = [q for q in range(j * stride - 1, j * stride + 2) if 0 <= q < w]
      window = x[:, rows][:, :, cols]  # [n, len(rows), len(cols), c]
      out[:, i, j] = reduce_fn(window.reshape(n, -1, c), axis=1)
  return out


def np_depthwise(x, kernel, stride, dilation):
  """Depthwise conv, zero padding dilation * (k - 1) // 2 on each side."""
  n, h, w, c = x.shape
  k = kernel.shape[0]
  pad = dilation * (k - 1) // 2
  ho = (h + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dilation * (k - 1) - 1) // stride + 1
  out = np.zeros((n, ho, wo, c), np.float64)
  for i in range(ho):
    for j in range(wo):
      for a in range(k):
        for b in range(k):
          r = i * stride - pad + a * dilation
          q = j * stride - pad + b * dilation
          if 0 <= r < h and 0 <= q < w:
            out[:, i, j, :] += x[:, r, q, :] * kernel[a, b, 0, :]
  return out


def np_pointwise(x, kernel):
  return np.einsum('nhwi,io->nhwo', x, kernel[0, 0])


def _relu(x):
  return np.maximum(x, 0)


# ----------------------------------------------------------------------------
# Ops.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('size', [8, 7])
def test_pools_match_numpy_loops(stride, size):
  x = _images(1, (2, size, size, C))
  got_max = np.asarray(ops_lib.max_pool_3x3(jnp.asarray(x), stride))
  got_avg = np.asarray(ops_lib.avg_pool_3x3(jnp.asarray(x), stride))
  np.testing.assert_allclose(got_max, np_pool(x, stride, np.max), rtol=0,
                             atol=0)
  np.testing.assert_allclose(got_avg, np_pool(x, stride, np.mean),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('stride', [1, 2])
def test_pool_ops_are_pool_then_batch_norm(stride):
  x = _images(2, (3, 8, 8, C))
  for name, reduce_fn in [('max_pool_3x3', np.max), ('avg_pool_3x3', np.mean)]:
    op = models.make_op(name, C, stride)
    variables = op.init(jax.random.key(0), x)
    assert not jax.tree.leaves(variables), 'pools have no parameters'
    got = _jit(op.apply)(variables, x)
    want = np_batch_norm(np_pool(x.astype(np.float64), stride, reduce_fn))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_skip_connect_is_identity_at_stride_1():
  x = _images(3, (2, 8, 8, C))
  op = models.make_op('skip_connect', C, 1)
  np.testing.assert_array_equal(op.apply({}, x), x)


def test_skip_connect_at_stride_2_is_factorized_reduce():
  x = _images(4, (2, 8, 8, 6))
  op = models.make_op('skip_connect', 8, 2)
  rng = np.random.default_rng(5)
  k0, k1 = (rng.normal(size=(1, 1, 6, 4)).astype(np.float32) for _ in '01')
  got = _jit(op.apply)({'params': {'kernel_0': k0, 'kernel_1': k1}}, x)
  r = _relu(x.astype(np.float64))
  # Even pixels through the first conv, odd pixels through the second.
  want = np_batch_norm(np.concatenate(
      [np_pointwise(r[:, 0::2, 0::2], k0), np_pointwise(r[:, 1::2, 1::2], k1)],
      axis=-1))
  assert got.shape == (2, 4, 4, 8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
def test_dilated_depthwise_conv_matches_numpy_loop(stride):
  x = _images(6, (2, 8, 8, C))
  kernel = np.random.default_rng(7).normal(size=(5, 5, 1, C)).astype(
      np.float32)
  got = ops_lib.depthwise_conv2d(x, kernel, stride=stride, dilation=2)
  np.testing.assert_allclose(got, np_depthwise(x, kernel, stride, 2),
                             rtol=1e-5, atol=1e-5)


def test_dil_conv_op_matches_numpy():
  x = _images(8, (2, 8, 8, C))
  rng = np.random.default_rng(9)
  dw = rng.normal(size=(3, 3, 1, C)).astype(np.float32)
  pw = rng.normal(size=(1, 1, C, C)).astype(np.float32)
  op = models.make_op('dil_conv_3x3', C, 2)
  got = _jit(op.apply)({'params': {'depthwise': dw, 'pointwise': pw}}, x)
  want = np_batch_norm(np_pointwise(
      np_depthwise(_relu(x.astype(np.float64)), dw, 2, 2), pw))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', search_space.DARTS_OPS)
def test_op_shapes_and_parameter_counts(name):
  x = jax.ShapeDtypeStruct((2, 8, 8, C), jnp.float32)
  k = int(name[-1]) if name[-1].isdigit() else 0
  if name.startswith('sep_conv'):
    want_params = (2 * (k * k * C + C * C),) * 2
  elif name.startswith('dil_conv'):
    want_params = (k * k * C + C * C,) * 2
  elif name == 'skip_connect':
    want_params = (0, C * C)  # FactorizedReduce: two 1x1 convs C -> C/2
  else:
    want_params = (0, 0)
  for stride, size, n_params in [(1, 8, want_params[0]),
                                 (2, 4, want_params[1])]:
    op = models.make_op(name, C, stride)
    out, variables = jax.eval_shape(
        lambda x, op=op: op.init_with_output(jax.random.key(0), x), x)
    assert out.shape == (2, size, size, C)
    assert set(variables) <= {'params'}, 'no batch_stats or other state'
    assert models.count_params(variables) == n_params


def test_batch_norm_is_stateless_batch_statistics():
  x = _images(10, (4, 8, 8, C)) * 3 + 2
  got = ops_lib.batch_norm(jnp.asarray(x))
  np.testing.assert_allclose(got, np_batch_norm(x.astype(np.float64)),
                             rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------
# Architecture weights.
# ----------------------------------------------------------------------------


def test_search_space_is_one_source():
  assert models.DARTS_OPS is search_space.DARTS_OPS
  assert models.arch_shapes is search_space.arch_shapes
  assert set(search_space.CONV_OPS) == set(search_space.DARTS_OPS) - {
      'max_pool_3x3', 'avg_pool_3x3', 'skip_connect'}
  net = models.SearchNetwork(C=C, num_classes=3, layers=8)
  assert net.reduction_layers() == search_space.reduction_layers(8) == (2, 5)
  assert [search_space.edge_stride(r, i) for r in (False, True)
          for i in range(4)] == [1, 1, 1, 1, 2, 2, 1, 1]
  assert search_space.check_ops(['skip_connect']) == ('skip_connect',)
  for bad, problem in (('skip_connect', 'the string'), ((), 'empty'),
                       (('skip_connect',) * 2, 'duplicates')):
    with pytest.raises(ValueError, match=problem):
      search_space.check_ops(bad)


def test_init_arch_shapes_and_scale():
  arch = models.init_arch(jax.random.key(0), nodes=3)
  assert set(arch) == set(search_space.CELL_TYPES) == {'normal', 'reduce'}
  n_ops = len(search_space.DARTS_OPS)
  for cell_type in search_space.CELL_TYPES:
    assert {k: v.shape for k, v in arch[cell_type].items()} == {
        'node_0': (2, n_ops), 'node_1': (3, n_ops), 'node_2': (4, n_ops)}
    assert {k: v.shape for k, v in arch[cell_type].items()} == (
        search_space.arch_shapes(3, n_ops))
  values = np.concatenate([np.ravel(v) for v in jax.tree.leaves(arch)])
  assert values.dtype == np.float32
  # 1/|O| plus 1e-3 noise: near 1/7, yet not all equal.
  np.testing.assert_allclose(values, 1 / n_ops, atol=6e-3)
  assert np.std(values) > 1e-4
  small = models.init_arch(jax.random.key(0), nodes=1, ops=('skip_connect',),
                           scale=0.5, noise=0.0)
  np.testing.assert_array_equal(small['reduce']['node_0'], [[0.5], [0.5]])


def test_arch_matches_darts_node_groups():
  from sparsenas_jax import optim  # pylint: disable=g-import-not-at-top
  arch = models.init_arch(jax.random.key(1), nodes=2)
  groups = optim.darts_node_groups(arch)
  ids = sorted({int(np.unique(g)[0]) for g in jax.tree.leaves(groups)})
  assert ids == [0, 1, 2, 3]  # one group per (cell type, node)


# ----------------------------------------------------------------------------
# Cells and the network.
# ----------------------------------------------------------------------------


def test_reduction_cell_halves_resolution_and_concats_nodes():
  nodes = 3
  arch = models.init_arch(jax.random.key(0), nodes=nodes)
  s0 = jax.ShapeDtypeStruct((2, 16, 16, 12), jnp.float32)
  s1 = jax.ShapeDtypeStruct((2, 8, 8, 10), jnp.float32)
  cell = models.SearchCell(C, reduction=True, reduction_prev=True,
                           nodes=nodes)
  out, _ = jax.eval_shape(
      lambda *a: cell.init_with_output(jax.random.key(0), *a),
      s0, s1, arch['reduce'])
  assert out.shape == (2, 4, 4, nodes * C)
  normal = models.SearchCell(C, nodes=nodes)
  out, _ = jax.eval_shape(
      lambda *a: normal.init_with_output(jax.random.key(0), *a),
      s1, s1, arch['normal'])
  assert out.shape == (2, 8, 8, nodes * C)


def test_cell_output_is_linear_in_the_arch_weights():
  cell = models.SearchCell(C, nodes=1)
  s0, s1 = _images(11, (2, 8, 8, 6)), _images(12, (2, 8, 8, 5))
  n_ops = len(search_space.DARTS_OPS)
  rng = np.random.default_rng(13)
  a1, a2 = (rng.normal(size=(2, n_ops)).astype(np.float32) for _ in '12')
  params = _init_params(cell, 14, s0, s1, {'node_0': a1})

  # One compiled program evaluates the three architectures.
  apply = _jit(jax.vmap(lambda a: cell.apply(params, s0, s1, {'node_0': a})))
  f1, f2, f12 = np.asarray(apply(np.stack([a1, a2, 2 * a1 - 3 * a2])))
  assert f1.shape == (2, 8, 8, C)
  np.testing.assert_allclose(f12, 2 * f1 - 3 * f2, rtol=1e-5,
                             atol=1e-5 * np.abs(f12).max())
  assert np.abs(f1 - f2).max() > 1e-2  # the weights matter


def _network_and_inputs(ops, nodes, seed=0):
  net = models.SearchNetwork(C=C, num_classes=3, layers=3, nodes=nodes,
                             ops=ops)
  arch = models.init_arch(jax.random.key(seed), nodes=nodes, ops=ops)
  x = _images(seed + 1)
  params = _init_params(net, seed + 2, x, arch)['params']
  return net, arch, params, x


def test_network_logits_are_finite_and_use_every_edge():
  ops = ('max_pool_3x3', 'skip_connect', 'dil_conv_3x3')
  net, arch, params, x = _network_and_inputs(ops, nodes=2)
  shapes = jax.tree.map(np.shape, params)
  assert set(shapes) == {'stem', 'cell_0', 'cell_1', 'cell_2', 'classifier'}
  assert set(shapes['cell_0']) == {
      'preprocess0', 'preprocess1', 'node_0_edge_0', 'node_0_edge_1',
      'node_1_edge_0', 'node_1_edge_1', 'node_1_edge_2'}
  # layers=3: cell 0 normal, cells 1 and 2 reductions (channels 8, then 16);
  # cell 2 follows a reduction, so its s0 goes through FactorizedReduce.
  assert shapes['cell_2']['preprocess0'] == {
      'kernel_0': (1, 1, 2 * C, 8), 'kernel_1': (1, 1, 2 * C, 8)}
  assert shapes['cell_2']['preprocess1']['kernel'] == (1, 1, 2 * 8, 16)
  assert shapes['classifier']['kernel'] == (2 * 16, 3)

  apply = _jit(net.apply)
  logits = np.asarray(apply({'params': params}, x, arch))
  assert logits.shape == (2, 3)
  assert np.all(np.isfinite(logits))
  # Cutting the edge node_0 -> node_1 of the last cell changes the logits.
  cut = jax.tree.map(np.array, arch)
  cut['reduce']['node_1'][2] = 0.0
  assert np.abs(apply({'params': params}, x, cut) - logits).max() > 1e-4


def test_op_with_zero_arch_weights_gets_zero_gradients():
  ops = ('skip_connect', 'dil_conv_3x3')
  net, arch, params, x = _network_and_inputs(ops, nodes=1, seed=3)
  dil = ops.index('dil_conv_3x3')
  arch = jax.tree.map(np.array, arch)
  for a in jax.tree.leaves(arch):
    a[:, dil] = 0.0
  labels = np.array([0, 2])

  def loss(params, arch):
    logits = net.apply({'params': params}, x, arch)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))

  grad_w, grad_a = _jit(jax.grad(loss, argnums=(0, 1)))(params, arch)
  flat = jax.tree_util.tree_flatten_with_path(grad_w)[0]
  dil_grads = [g for p, g in flat if 'dil_conv_3x3' in jax.tree_util.keystr(p)]
  other = {jax.tree_util.keystr(p): g for p, g in flat
           if 'dil_conv_3x3' not in jax.tree_util.keystr(p)}
  assert len(dil_grads) == 2 * 2 * 3  # (depthwise, pointwise) x edges x cells
  for g in dil_grads:
    np.testing.assert_array_equal(g, 0.0)
  for path, g in other.items():
    assert np.all(np.isfinite(g)) and np.any(g != 0), path
  # The zeroed op still receives an architecture gradient: it can come back.
  for a in jax.tree.leaves(grad_a):
    assert np.all(np.isfinite(a)) and np.all(a[:, dil] != 0)


def test_darts_search_network_parameter_count():
  # The DARTS reference logs "param size = 1.930618MB" (1,930,618 params) for
  # its search network (C=16, 8 cells, 4 nodes, CIFAR-10); its stem BN is
  # affine (2 x 48 params), every BN here is not. 'none' has no params.
  net = models.SearchNetwork(C=16, num_classes=10, layers=8)
  arch = jax.eval_shape(lambda: models.init_arch(jax.random.key(0)))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(net.init, jax.random.key(0), x, arch)
  assert models.count_params(variables) == 1_930_618 - 2 * 48


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_unknown_op_raises():
  with pytest.raises(ValueError, match='unknown op .*conv_7x7.*sep_conv_3x3'):
    models.make_op('conv_7x7', C, 1)
  with pytest.raises(ValueError, match='unknown op'):
    models.SearchNetwork(C=C, num_classes=3, layers=3, ops=('none',))
  with pytest.raises(ValueError, match='unknown op'):
    models.init_arch(jax.random.key(0), ops=('max_pool_3x3', 'zero'))


def test_too_few_layers_raises():
  with pytest.raises(ValueError, match='layers must be >= 3'):
    models.SearchNetwork(C=C, num_classes=3, layers=2)


def test_wrong_arch_shape_raises():
  net = models.SearchNetwork(C=C, num_classes=3, layers=3, nodes=2)
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  wrong_nodes = models.init_arch(jax.random.key(0), nodes=3)
  wrong_ops = models.init_arch(jax.random.key(0), nodes=2,
                               ops=('skip_connect',))
  right = models.init_arch(jax.random.key(0), nodes=2)
  for arch in (wrong_nodes, wrong_ops, {'normal': right['normal']}):
    with pytest.raises(ValueError,
                       match=r"expected shapes .*'node_1': \(3, 7\)"):
      jax.eval_shape(net.init, jax.random.key(0), x, arch)
