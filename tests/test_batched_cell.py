"""Tests of the edge-batched search cell (models/batched_cell.py).

The batched cell must compute exactly the function of the straightforward
``SearchCell`` (one ``MixedOp`` per edge), so every number here is checked
against that reference or against ``ops``: logits and the gradients with
respect to the weights and to every architecture weight A[j][i, o] (which
isolates each op on each edge) of a whole network with all seven ops, in
normal and reduction cells.
"""

from concurrent import futures
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax.runtime import compilation
from sparsenas_jax import models
from sparsenas_jax import search_space
from sparsenas_jax.models import batched_cell
from sparsenas_jax.models import ops as ops_lib
from sparsenas_jax.models import spatial
from sparsenas_jax.models import supernet

# These tests check numbers, not speed: skip LLVM's optimisations.
_COMPILER_OPTIONS = compilation.compiler_options(cpu_fast_compile=True)

C = 4
NODES = 2
BATCH = 4


def _run(f, *args):
  """Compiles ``f`` once (no LLVM optimisation) and runs it on ``args``."""
  return jax.jit(f).lower(*args).compile(
      compiler_options=_COMPILER_OPTIONS)(*args)


def _run_all(calls):
  """``_run`` of several ``(f, args)``, compiling on all cores at once."""
  lowered = [jax.jit(f).lower(*args) for f, args in calls]
  with futures.ThreadPoolExecutor() as pool:
    compiled = list(pool.map(
        lambda l: l.compile(compiler_options=_COMPILER_OPTIONS), lowered))
  return [c(*args) for c, (_, args) in zip(compiled, calls)]


def _random_like(tree, rng, scale=0.5):
  """NumPy values for a pytree of shape structs (no XLA RNG to compile)."""
  return jax.tree.map(
      lambda s: rng.uniform(-scale, scale, s.shape).astype(np.float32), tree)


def _assert_trees_close(got, want, rel):
  """Each leaf within ``rel`` times the leaf's largest magnitude."""
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, w), g in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                          jax.tree.leaves(got)):
    w, g = np.asarray(w), np.asarray(g)
    assert g.shape == w.shape, jax.tree_util.keystr(path)
    np.testing.assert_allclose(g, w, rtol=0, atol=rel * np.abs(w).max(),
                               err_msg=jax.tree_util.keystr(path))


def _network(cell_impl):
  return models.SearchNetwork(C=C, num_classes=3, layers=3, nodes=NODES,
                              cell_impl=cell_impl)


@pytest.fixture(scope='module')
def problem():
  """Random images, labels, arch and reference params (all seven ops)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32)
  labels = np.array([0, 1, 2, 0])
  # Random signs and sizes: no two ops or edges weighted alike.
  n_ops = len(search_space.DARTS_OPS)
  arch = {t: {f'node_{j}': rng.normal(size=(j + 2, n_ops)).astype(np.float32)
              for j in range(NODES)}
          for t in search_space.CELL_TYPES}
  shapes = jax.eval_shape(_network('reference').init, jax.random.key(0), x,
                          arch)['params']
  return x, labels, arch, _random_like(shapes, rng)


def _logits_and_grads(net, x, labels):
  """``f(params, arch)``: logits, and the cross-entropy's gradients."""
  def loss(params, arch):
    logits = net.apply({'params': params}, x, arch)
    log_p = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1)), (
        logits)
  def logits_and_grads(params, arch):
    (_, logits), grads = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(params, arch)
    return logits, grads
  return logits_and_grads


@pytest.fixture(scope='module')
def results(problem):
  """Logits and gradients of each implementation, with the same weights.

  The stacked layout only runs forward: after the edges' params are stacked
  it computes what 'batched' computes, gradients included, and another
  gradient would double this file's compile time.
  """
  x, labels, arch, params = problem
  stacked = batched_cell.reference_to_stacked_params(params, nodes=NODES)
  net = _network('stacked')
  reference, batched, stacked = _run_all([
      (_logits_and_grads(_network('reference'), x, labels), (params, arch)),
      (_logits_and_grads(_network('batched'), x, labels), (params, arch)),
      (lambda p, a: net.apply({'params': p}, x, a), (stacked, arch))])
  return {'reference': reference, 'batched': batched, 'stacked': stacked}


# ----------------------------------------------------------------------------
# Whole networks against the reference.
# ----------------------------------------------------------------------------


def test_batched_network_matches_reference(results):
  want_logits, (want_dw, want_da) = results['reference']
  logits, (dw, da) = results['batched']
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5,
                             atol=1e-5 * np.abs(want_logits).max())
  _assert_trees_close(dw, want_dw, 1e-4)
  _assert_trees_close(da, want_da, 1e-4)
  # Every op on every edge of both cell types gets a (different) gradient.
  for a in jax.tree.leaves(want_da):
    assert np.all(np.abs(a) > 0) and len(np.unique(a)) == a.size


def test_batched_is_the_default():
  assert models.SearchNetwork(C=C, num_classes=3, layers=3).cell_impl == (
      'batched')


def test_stacked_network_matches_reference(results):
  want = results['reference'][0]
  np.testing.assert_allclose(results['stacked'], want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize('nodes', [3, 4])
def test_scanned_network_matches_stacked_derivatives_included(nodes):
  # Three nodes: the scan's second round holds edge (1, 2) and a zero edge;
  # four: rounds (0, 1), (0, 2); (1, 2), (0, 3); (1, 3), (2, 3), whose
  # edges read different sources. A pool, the identity (factorized reduce
  # in the reduction cells), a two-block and a one-block conv op. Logits
  # and the mixed product of the exact hypergradient (reverse over
  # forward: the scan's JVP and its transpose) against the unscanned
  # stacked cell, itself checked against the reference above.
  ops = ('max_pool_3x3', 'skip_connect', 'sep_conv_3x3', 'dil_conv_3x3')
  rng = np.random.default_rng(5)
  # 16 x 16: batch norm over more than the 2 x 2 x 2 pixels of 8 x 8 inputs
  # after two reductions, whose float32 rounding the mixed product amplifies
  # to 2e-4. (With batch norm in float64 the two agree to 1e-11.)
  x = rng.normal(size=(2, 16, 16, 1)).astype(np.float32)
  n_ops = len(ops)
  arch = {t: {f'node_{j}': rng.normal(size=(j + 2, n_ops)).astype(np.float32)
              for j in range(nodes)}
          for t in search_space.CELL_TYPES}
  nets = {impl: models.SearchNetwork(C=2, num_classes=3, layers=3,
                                     nodes=nodes, ops=ops, cell_impl=impl)
          for impl in ('stacked', 'scanned')}
  params = _random_like(jax.eval_shape(
      nets['stacked'].init, jax.random.key(0), x, arch)['params'], rng)
  tangent = _random_like(params, rng)
  # 'scanned' declares the packed layout of the same params.
  packed, packed_tangent = (
      batched_cell.stacked_to_packed_params(p, nodes=nodes, ops=ops)
      for p in (params, tangent))
  assert jax.tree.map(np.shape, packed) == jax.tree.map(
      lambda s: s.shape, jax.eval_shape(nets['scanned'].init,
                                        jax.random.key(0), x, arch)['params'])

  def derivatives(net, tangent):
    apply = lambda w, a: net.apply({'params': w}, x, a)
    loss = lambda w, a: jnp.mean(jnp.sin(apply(w, a)))
    return lambda w, a: (apply(w, a), jax.grad(
        lambda a: jax.jvp(lambda w: loss(w, a), (w,), (tangent,))[1])(a))

  (logits, mixed), (want_logits, want_mixed) = _run_all(
      [(derivatives(nets['scanned'], packed_tangent), (packed, arch)),
       (derivatives(nets['stacked'], tangent), (params, arch))])
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5,
                             atol=1e-5 * np.abs(want_logits).max())
  _assert_trees_close(mixed, want_mixed, 1e-4)
  for a in jax.tree.leaves(want_mixed):  # every A[j][i, o] is reached
    assert np.all(np.abs(a) > 0)


# ----------------------------------------------------------------------------
# Parameter layouts.
# ----------------------------------------------------------------------------


def test_param_layouts(problem):
  x, _, arch, params = problem
  # 'batched' declares exactly the reference's tree ('stacked' declares that
  # of reference_to_stacked_params: applying it above checks the shapes).
  shapes = jax.eval_shape(_network('batched').init, jax.random.key(0), x,
                          arch)['params']
  assert (jax.tree.map(lambda s: s.shape, shapes) ==
          jax.tree.map(np.shape, params))
  stacked = batched_cell.reference_to_stacked_params(params, nodes=NODES)
  assert set(stacked['cell_1']) == {'preprocess0', 'preprocess1', 'stage_0',
                                    'stage_1'}
  # Stage 0: edges (0, 0), (0, 1), (1, 0), (1, 1) of (source, node); the
  # reduction cell's stride-2 skip_connect is a FactorizedReduce.
  np.testing.assert_array_equal(
      stacked['cell_1']['stage_0']['skip_connect']['kernel_1'][2],
      params['cell_1']['node_0_edge_1']['skip_connect']['kernel_1'])
  np.testing.assert_array_equal(
      stacked['cell_0']['stage_1']['sep_conv_5x5']['block_1']['pointwise'][0],
      params['cell_0']['node_1_edge_2']['sep_conv_5x5']['block_1'][
          'pointwise'])
  back = batched_cell.stacked_to_reference_params(stacked, nodes=NODES)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  assert models.count_params(stacked) == models.count_params(params)


def test_stacked_init_is_per_edge_conv_init():
  params = jax.eval_shape(
      batched_cell.MixedOpParams(C, 1, ('dil_conv_5x5',), num_edges=3).init,
      jax.random.key(0))['params']
  assert jax.tree.map(lambda s: s.shape, params) == {'dil_conv_5x5': {
      'depthwise': (3, 5, 5, 1, C), 'pointwise': (3, 1, 1, C, C)}}
  init = batched_cell._init(num_edges=3)
  kernel = np.asarray(init(jax.random.key(0), (3, 5, 5, 1, 16)))
  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) per edge: fan_in 5 * 5, not 3 * 5 * 5.
  bound = 1 / 5
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.95 * bound
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.05)


@pytest.mark.parametrize('ops', [('max_pool_3x3', 'skip_connect'),
                                 ('avg_pool_3x3', 'sep_conv_3x3')])
def test_stage_is_its_edges_summed_per_target(ops):
  # Two sources, three targets: the stage against each edge alone, summed
  # per target, and its per-edge outputs (sum_sources=False); parameter-free
  # ops alone (computed once per source) and with a conv op.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 2, 2, 6, 6)).astype(np.float32))
  weights = jnp.asarray(rng.normal(size=(2, 3, len(ops))).astype(np.float32))
  shapes = jax.eval_shape(batched_cell.PackedStageParams(2, 1, ops, 2, 3).init,
                          jax.random.key(0)).get('params', {})
  packed = _random_like(shapes, rng)

  def edge_params(s, t):  # the packed params of edge (s, t) alone
    def take(path, a):
      name = str(path[-1].key)
      axis = 1 if name.startswith('pointwise_') else 2
      return jnp.take(a, jnp.array([3 * s + t]), axis=axis)
    return jax.tree_util.tree_map_with_path(take, packed)

  stage = functools.partial(batched_cell.stage, stride=1, ops=ops)
  per_edge = {(s, t): stage(x[s:s + 1], weights[s:s + 1, t:t + 1],
                            edge_params(s, t))[0]
              for s in range(2) for t in range(3)}
  summed = stage(x, weights, packed)
  apart = stage(x, weights, packed, sum_sources=False)
  assert summed.shape == (3, 2, 2, 6, 6) and apart.shape == (6, 2, 2, 6, 6)
  for (s, t), want in per_edge.items():
    np.testing.assert_allclose(apart[3 * s + t], want, rtol=1e-5, atol=1e-5)
  for t in range(3):
    np.testing.assert_allclose(summed[t], per_edge[0, t] + per_edge[1, t],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('nodes', range(2, 10))
def test_node_rounds_run_each_edge_once_after_its_source(nodes):
  rounds = batched_cell.node_rounds(nodes)
  assert len(rounds) == nodes - 1
  assert {len(r) for r in rounds} == {-(-nodes // 2)}
  edges = [e for r in rounds for e in r if e is not None]
  assert sorted(edges) == [(s, t) for s in range(nodes)
                           for t in range(s + 1, nodes)]
  for r, round_edges in enumerate(rounds):
    for e in round_edges:
      if e is not None:  # node s is complete before round s, t after round t - 1
        assert e[0] <= r < e[1], (r, e)
  if nodes % 2 == 0:
    assert all(e is not None for r in rounds for e in r)


def test_stage_edges():
  assert batched_cell.stage_edges(3) == [
      [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1), (1, 2)]],
      [[(2, 1), (2, 2)]],
      [[(3, 2)]]]


# ----------------------------------------------------------------------------
# Building blocks against ops, odd sizes included.
# ----------------------------------------------------------------------------


def _channels_first(x):  # [L, N, H, W, C] -> [L, C, N, H, W]
  return jnp.transpose(x, (0, 4, 1, 2, 3))


def _channels_last(x):
  return jnp.transpose(x, (0, 2, 3, 4, 1))


@pytest.mark.parametrize('size,stride', [(7, 1), (7, 2), (8, 2)])
@pytest.mark.parametrize('name', ['max', 'avg'])
def test_pools_and_their_gradients_match_reduce_window(size, stride, name):
  x = np.random.default_rng(size + stride).normal(
      size=(2, 3, size, size, C)).astype(np.float32)
  separable = {'max': spatial.max_pool_3x3, 'avg': spatial.avg_pool_3x3}
  window = {'max': ops_lib.max_pool_3x3, 'avg': ops_lib.avg_pool_3x3}

  def batched(x):
    return _channels_last(separable[name](_channels_first(x), stride))

  def reference(x):
    return jnp.stack([window[name](x[e], stride) for e in range(2)])

  def value_and_grad(f, x):
    return jax.value_and_grad(lambda x: jnp.sum(jnp.sin(f(x))))(x), f(x)

  got = _run(functools.partial(value_and_grad, batched), x)
  want = _run(functools.partial(value_and_grad, reference), x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size', [7, 8])
def test_factorized_reduce_matches_module(size):
  rng = np.random.default_rng(size)
  s, t = 2, 3
  x = rng.normal(size=(s, 2, size, size, C)).astype(np.float32)
  edges = [[{'kernel_0': rng.normal(size=(1, 1, C, C // 2)),
             'kernel_1': rng.normal(size=(1, 1, C, C // 2))}
            for _ in range(t)] for _ in range(s)]
  edges = jax.tree.map(lambda a: a.astype(np.float32), edges)
  kernels = batched_cell.pack_stage_params(
      {'skip_connect': batched_cell.stack_edge_params(
          [e for row in edges for e in row])},
      ops=('skip_connect',), stride=2, num_sources=s)['factorized_reduce']
  got = _run(lambda x, k: _channels_last(batched_cell._batch_norm(
      batched_cell._factorized_reduce(_channels_first(x), k))), x, kernels)
  module = ops_lib.FactorizedReduce(C)
  want = _run(lambda x, edges: jnp.stack([
      module.apply({'params': edges[i][j]}, x[i])
      for i in range(s) for j in range(t)]), x, edges)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_unknown_cell_impl_raises():
  with pytest.raises(ValueError,
                     match="cell_impl must be one of batched, stacked, "
                     "scanned, reference; got 'fast'"):
    models.SearchNetwork(C=C, num_classes=3, layers=3, cell_impl='fast')


def test_auto_cell_impl_is_chosen_per_backend():
  from configs import cnn_search as cfg  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import cnn_search  # pylint: disable=g-import-not-at-top
  assert supernet.default_cell_impl('cpu') == 'scanned'
  assert supernet.default_cell_impl('gpu') == 'reference'
  assert supernet.default_cell_impl('tpu') == 'reference'
  config = cfg.get_config('digits')
  assert config.cell_impl == 'auto'
  assert cnn_search.cell_impl(config) == supernet.default_cell_impl()
  config.cell_impl = 'reference'  # forced
  assert cnn_search.cell_impl(config) == 'reference'


def test_remat_computes_the_same_gradients(problem, results):
  x, labels, arch, params = problem
  net = models.SearchNetwork(C=C, num_classes=3, layers=3, nodes=NODES,
                             remat=True)
  got = _run(_logits_and_grads(net, x, labels), params, arch)
  _assert_trees_close(got, results['batched'], 1e-5)


def test_search_init_of_stacked_leaves_excludes_the_edge_axis():
  from sparsenas_jax.experiments import cnn_search  # pylint: disable=g-import-not-at-top
  arch = supernet.init_arch(jax.random.key(0), nodes=NODES)
  net = models.SearchNetwork(C=8, num_classes=3, layers=3, nodes=NODES,
                             cell_impl='stacked')
  weights = cnn_search.init_weights(net, jnp.zeros((1, 8, 8, 1)), arch, 0)
  kernel = weights['cell_0']['stage_0']['dil_conv_5x5']['depthwise']
  assert kernel.shape == (2 * NODES, 5, 5, 1, 8)
  bound = 1 / 5  # fan-in 5 * 5 per edge
  assert bound * 0.9 < np.abs(kernel).max() <= bound


def test_search_init_of_packed_leaves_is_each_edges_fan_in():
  from sparsenas_jax.experiments import cnn_search  # pylint: disable=g-import-not-at-top
  arch = supernet.init_arch(jax.random.key(0), nodes=NODES)
  net = models.SearchNetwork(C=8, num_classes=3, layers=3, nodes=NODES,
                             cell_impl='scanned')
  weights = cnn_search.init_weights(net, jnp.zeros((1, 8, 8, 1)), arch, 0)
  stage = weights['cell_1']['stage_0']  # a reduction cell's inputs' edges
  # [K, K, edges, C]: fan-in K * K; [ops, edges, C_out, C]: fan-in C;
  # factorized reduce [2, sources, targets, C, C // 2]: fan-in C.
  for kernel, shape, fan_in in [
      (stage['conv_0']['dil_conv_5x5'], (5, 5, 2 * NODES, 16), 25),
      (stage['conv_1']['sep_conv_3x3'], (3, 3, 2 * NODES, 16), 9),
      (stage['pointwise_0'], (4, 2 * NODES, 16, 16), 16),
      (stage['factorized_reduce'], (2, 2, NODES, 16, 8), 16)]:
    assert kernel.shape == shape
    bound = 1 / np.sqrt(fan_in)
    assert bound * 0.9 < np.abs(kernel).max() <= bound
