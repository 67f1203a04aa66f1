"""The evaluation network built from a mixed-path genotype; complexity."""

import functools
import math

import counting
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import search_space
from sparsenas_jax.models import complexity
from sparsenas_jax.models import eval_network
from sparsenas_jax.models import ops as search_ops

G = genotype_lib.Genotype
N = genotype_lib.Node

# Gaps in the node numbering (node 3 removed), several ops on one edge, a
# node fed by a later-numbered one, a reduction cell with two live nodes and
# a different output width; every DARTS op.
MIXED = G(
    normal=(N(2, [(0, 'sep_conv_3x3', 0.5), (0, 'skip_connect', -0.3),
                  (1, 'dil_conv_5x5', 0.2)]),
            N(4, [(2, 'avg_pool_3x3', 0.7), (1, 'sep_conv_5x5', 0.1)]),
            N(5, [(4, 'dil_conv_3x3', 0.4), (0, 'max_pool_3x3', 0.9)])),
    normal_concat=(2, 4, 5),
    reduce=(N(2, [(0, 'skip_connect', 0.6), (1, 'max_pool_3x3', 0.3)]),
            N(3, [(2, 'sep_conv_3x3', 0.8), (1, 'avg_pool_3x3', 0.2)])),
    reduce_concat=(2, 3))


def _shapes(net, image_shape):
  return jax.eval_shape(
      lambda: net.init({'params': jax.random.key(0),
                        'dropout': jax.random.key(1)},
                       jnp.zeros((1,) + image_shape), train=True))


@pytest.mark.parametrize('stem, c, layers, classes, image, darts_count', [
    # DARTS's logs: "param size = 3.349342MB" (CIFAR-10, C=36, 20 cells) and
    # 4.718752MB (ImageNet, C=48, 14 cells), auxiliary head excluded.
    ('cifar', 36, 20, 10, (32, 32, 3), 3_349_342),
    ('imagenet', 48, 14, 1000, (224, 224, 3), 4_718_752),
])
def test_darts_v2_parameter_counts_match_darts(stem, c, layers, classes,
                                               image, darts_count):
  genotype = genotype_lib.GENOTYPES['darts_v2']
  net = eval_network.EvalNetwork(genotype, C=c, num_classes=classes,
                                 layers=layers, stem=stem)
  params = _shapes(net, image)['params']
  assert eval_network.count_eval_params(params) == darts_count
  assert counting.eval_network_params(genotype, c, classes, layers,
                                      stem) == darts_count


def test_mixed_path_parameter_count_matches_an_independent_count():
  net = eval_network.EvalNetwork(MIXED, C=6, num_classes=7, layers=5)
  params = _shapes(net, (16, 16, 3))['params']
  assert eval_network.count_eval_params(params) == (
      counting.eval_network_params(MIXED, 6, 7, 5))
  # Each kept op is a module of its own; node 3 of the normal cell is absent.
  names = set(params['cell_0'])
  assert 'node_2_from_0_sep_conv_3x3' in names
  assert 'node_2_from_0_skip_connect' not in names  # identity: no params
  assert 'node_2_from_0_skip_connect' in set(params['cell_1'])  # reduce
  assert not any(n.startswith('node_3') for n in names)


def test_forward_train_and_eval():
  net = eval_network.EvalNetwork(MIXED, C=4, num_classes=5, layers=3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 8, 8, 1)),
                  jnp.float32)
  variables = eval_network.init_variables(net, x[:1], seed=0)

  def train(variables, x, key):
    return net.apply(variables, x, train=True, drop_prob=0.2,
                     rngs={'dropout': key}, mutable=['batch_stats'])

  def evaluate(variables, x):
    return net.apply(variables, x, train=False)

  (logits, aux), updates = jax.jit(train)(variables, x, jax.random.key(0))
  assert logits.shape == aux.shape == (6, 5)
  stats = jax.tree.leaves(updates['batch_stats'])
  before = jax.tree.leaves(variables['batch_stats'])
  assert any(not np.allclose(a, b) for a, b in zip(stats, before))
  eval_fn = jax.jit(evaluate)
  logits_eval, aux_eval = eval_fn(variables, x)
  assert aux_eval is None and logits_eval.shape == (6, 5)
  # Evaluation uses running statistics: an example's logits do not depend on
  # the rest of the batch.
  np.testing.assert_allclose(eval_fn(variables, x[:3])[0], logits_eval[:3],
                             rtol=1e-5, atol=1e-6)


def _cell_output(genotype, weight_flag, cell_type):
  nodes, concat = genotype.cell(cell_type)
  cell = eval_network.EvalCell(nodes, concat, 4,
                               reduction=cell_type == 'reduce',
                               reduction_prev=False,
                               scale_by_arch_weights=weight_flag)
  s = jnp.asarray(np.random.default_rng(1).normal(size=(4, 2, 6, 6)),
                  jnp.float32)  # [C, N, H, W]
  variables = cell.init(jax.random.key(0), s, s, False, 0.0)
  return cell.apply(variables, s, s, False, 0.0)


def test_scale_by_arch_weights_multiplies_each_op_by_its_weight():
  genotype = G(normal=(N(2, [(0, 'skip_connect', 2.5)]),), normal_concat=(2,),
               reduce=(N(2, [(1, 'max_pool_3x3', -1.5)]),),
               reduce_concat=(2,))
  for cell_type, weight in (('normal', 2.5), ('reduce', -1.5)):
    plain = _cell_output(genotype, False, cell_type)
    scaled = _cell_output(genotype, True, cell_type)
    np.testing.assert_allclose(scaled, weight * plain, rtol=1e-6)


def test_nodes_that_feed_nothing_are_not_built():
  genotype = G(normal=(N(2, [(0, 'sep_conv_3x3', 1.0)]),
                       N(3, [(1, 'sep_conv_3x3', 1.0)])),
               normal_concat=(3,),
               reduce=(N(2, [(0, 'max_pool_3x3', 1.0)]),),
               reduce_concat=(2,))
  assert [n.index for n in eval_network.live_nodes(
      *genotype.cell('normal'))] == [3]


def test_drop_path_drops_whole_examples_and_keeps_the_mean():
  x = jnp.ones((2, 20000, 2, 1))  # [C, N, H, W]
  y = eval_network.drop_path(x, jnp.float32(0.3), jax.random.key(0))
  per_example = np.asarray(y[0, :, 0, 0])
  np.testing.assert_allclose(np.unique(per_example), [0, 1 / 0.7],
                             rtol=1e-6)
  assert np.all(np.asarray(y) == per_example[None, :, None, None])
  assert abs((per_example == 0).mean() - 0.3) < 0.015
  assert abs(per_example.mean() - 1.0) < 0.03


def test_count_macs_closed_forms():
  x = jax.ShapeDtypeStruct((2, 10, 10, 6), jnp.float32)

  def conv(x):
    k = jnp.zeros((3, 3, 6, 8))
    y = lax.conv_general_dilated(x, k, (2, 2), 'SAME',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    d = lax.conv_general_dilated(x, jnp.zeros((5, 5, 1, 6)), (1, 1), 'SAME',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 feature_group_count=6)
    return y.sum() + d.sum() + (x.reshape(2, -1) @ jnp.zeros((600, 7))).sum()

  expected = (2 * 5 * 5 * 8 * 9 * 6   # 3x3 conv, stride 2
              + 2 * 10 * 10 * 6 * 25  # depthwise 5x5
              + 2 * 7 * 600)          # matmul
  assert complexity.count_macs(conv, x) == expected
  assert complexity.count_macs(jax.jit(conv), x) == expected  # nested jaxpr


# Every DARTS op on every edge of a two-node cell: from both inputs (stride 2,
# a factorized skip_connect, in the reduction cell) and from node 2.
_EVERY_OP = (N(2, [(i, op, 1.0) for i in (0, 1)
                   for op in search_space.DARTS_OPS]),
             N(3, [(i, op, 1.0) for i in (0, 1, 2)
                   for op in search_space.DARTS_OPS]))
EVERY_OP = G(_EVERY_OP, (2, 3), _EVERY_OP, (2, 3))


@pytest.mark.parametrize('op', search_space.DARTS_OPS)
def test_genotype_stats_of_each_op_match_closed_forms(op):
  for c in (2, 6, 16):
    for src in (0, 1, 2):
      cell = (N(2, [(0, 'max_pool_3x3', 1.0)]), N(3, [(src, op, 1.0)]))
      stats = complexity.genotype_stats(G(cell, (3,), cell, (3,)), c)
      for cell_type in search_space.CELL_TYPES:
        reduce_input = cell_type == 'reduce' and src < 2
        assert stats[cell_type]['params'] == counting.op_params(
            op, c, factorized_reduce=reduce_input)


@pytest.mark.parametrize('name, genotype', [
    *genotype_lib.GENOTYPES.items(), ('mixed', MIXED), ('every_op', EVERY_OP)])
def test_genotype_stats_match_closed_forms(name, genotype):
  del name
  for c in (2, 4, 16, 36):
    stats = complexity.genotype_stats(genotype, c)
    for cell_type in search_space.CELL_TYPES:
      nodes, _ = genotype.cell(cell_type)
      assert stats[cell_type] == {
          'ops_kept': sum(len(n.inputs) for n in nodes),
          'nodes_kept': len(nodes),
          'params': counting.cell_op_params(genotype, c, cell_type)}
    assert stats['total'] == {
        key: stats['normal'][key] + stats['reduce'][key]
        for key in ('ops_kept', 'nodes_kept', 'params')}


def test_genotype_stats_darts_v2_by_hand():
  c = 16
  darts = complexity.genotype_stats(genotype_lib.GENOTYPES['darts_v2'], c)
  # 5 sep_conv_3x3 (2C² + 22C each) + dil_conv_3x3 (C² + 11C); the reduce
  # cell's pools are free and its skip_connects all leave node 2 (identity).
  assert darts['normal'] == {'ops_kept': 8, 'nodes_kept': 4,
                             'params': 11 * c * c + 121 * c}
  assert darts['reduce'] == {'ops_kept': 8, 'nodes_kept': 4, 'params': 0}
  assert darts['total'] == {'ops_kept': 16, 'nodes_kept': 8,
                            'params': 11 * c * c + 121 * c}


def test_genotype_stats_against_the_search_network_ops():
  """Conv params of the search network's ops, plus affine BN params.

  The search ops' BN has no affine params, so each BN layer (two in a
  sep_conv, one in a dil_conv and in a factorized reduce) adds 2C here.
  """
  c = 6
  x = jax.ShapeDtypeStruct((2, 8, 8, c), jnp.float32)
  bn_layers = {'sep_conv_3x3': 2, 'sep_conv_5x5': 2, 'dil_conv_3x3': 1,
               'dil_conv_5x5': 1}

  def search_count(op, stride):
    variables = jax.eval_shape(
        lambda: search_ops.make_op(op, c, stride).init(jax.random.key(0), x))
    n = sum(math.prod(v.shape) for v in jax.tree.leaves(variables))
    reduce_skip = op == 'skip_connect' and stride == 2
    return n + 2 * c * (bn_layers.get(op, 0) + reduce_skip)

  for genotype in (MIXED, EVERY_OP):
    stats = complexity.genotype_stats(genotype, c)
    for cell_type in search_space.CELL_TYPES:
      nodes, _ = genotype.cell(cell_type)
      expected = sum(
          search_count(op, 2 if cell_type == 'reduce' and src < 2 else 1)
          for n in nodes for src, op, _ in n.inputs)
      assert stats[cell_type]['params'] == expected


def test_genotype_stats_bad_arguments_raise():
  with pytest.raises(ValueError, match='even'):
    complexity.genotype_stats(MIXED, 5)  # a factorized reduce in 'reduce'
  # Odd C is fine where no factorized reduce is needed.
  pools = (N(2, [(0, 'max_pool_3x3', 1.0), (1, 'avg_pool_3x3', 1.0)]),)
  odd = G(MIXED.normal, MIXED.normal_concat, pools, (2,))
  assert complexity.genotype_stats(odd, 5)['total']['params'] == (
      counting.cell_op_params(odd, 5, 'normal'))
  for bad in (0, -4, 2.0, True):
    with pytest.raises(ValueError, match='positive'):
      complexity.genotype_stats(MIXED, bad)
  cell = (N(2, [(0, 'conv_9x9', 1.0)]),)
  custom = G(cell, (2,), cell, (2,), ops=search_space.DARTS_OPS + ('conv_9x9',))
  with pytest.raises(ValueError, match="genotype_stats: .*'conv_9x9'"):
    complexity.genotype_stats(custom, 4)


def test_bad_network_settings_raise():
  with pytest.raises(ValueError, match='stem must be one of'):
    eval_network.EvalNetwork(MIXED, C=4, num_classes=2, layers=3, stem='x')
  with pytest.raises(ValueError, match='layers=2'):
    eval_network.EvalNetwork(MIXED, C=4, num_classes=2, layers=2)


# These checks compare numbers: XLA:CPU's LLVM optimisations only cost time.
_fast_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def test_channels_first_network_computes_the_nhwc_specification():
  # The NHWC modules (lax convolutions, grouped depthwise convs,
  # reduce_window pools) against the channels-first ones, with one set of
  # variables: logits, auxiliary logits, batch statistics, gradients; in
  # training (drop path on: the same masks) and in evaluation.
  import nhwc_eval_network  # pylint: disable=g-import-not-at-top
  kwargs = dict(genotype=MIXED, C=4, num_classes=5, layers=3)
  net = eval_network.EvalNetwork(**kwargs)
  spec = nhwc_eval_network.EvalNetwork(**kwargs)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 12, 12, 3)),
                  jnp.float32)
  variables = eval_network.init_variables(net, x[:1], seed=0)
  assert (jax.tree.structure(variables) ==
          jax.tree.structure(_shapes(spec, x.shape[1:])))

  def train(model, params):
    (logits, aux), updates = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x,
        train=True, drop_prob=0.3, rngs={'dropout': jax.random.key(4)},
        mutable=['batch_stats'])
    loss = jnp.sum(jnp.sin(logits)) + jnp.sum(jnp.cos(aux))
    return loss, (logits, aux, updates['batch_stats'])

  results = {}
  for name, model in (('channels_first', net), ('nhwc', spec)):
    (_, outputs), grads = _fast_jit(jax.value_and_grad(
        lambda p, m=model: train(m, p), has_aux=True))(variables['params'])
    logits_eval, _ = _fast_jit(lambda v, m=model: m.apply(v, x, train=False))(
        variables)
    results[name] = (outputs, grads, logits_eval)
  got, want = results['channels_first'], results['nhwc']
  assert not np.allclose(want[0][0], 0)
  # float32, other sum orders: each leaf to 1e-3 of its largest entry (in
  # float64 the two agree to 1e-6, the float32 accumulation of the depthwise
  # kernel gradient).
  def close(a, b):
    assert np.max(np.abs(a - b)) <= 1e-3 * np.max(np.abs(b)) + 1e-7
  jax.tree.map(close, got, want)


@pytest.mark.parametrize('kernel_size, stride', [(3, 2), (3, 1), (1, 2)])
def test_channels_first_conv_bn_computes_the_nhwc_specification(kernel_size,
                                                                 stride):
  # The stems' convs (ImageNet: 3x3 stride 2) and the 1x1 preprocessing.
  import nhwc_eval_network  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 9, 9, 3)),
                  jnp.float32)
  spec = nhwc_eval_network.ConvBN(6, kernel_size, stride)
  variables = spec.init(jax.random.key(0), x, True)
  want, _ = spec.apply(variables, x, True, mutable=['batch_stats'])
  got, _ = eval_network.ConvBN(6, kernel_size, stride).apply(
      variables, jnp.transpose(x, (3, 0, 1, 2)), True,
      mutable=['batch_stats'])
  np.testing.assert_allclose(jnp.transpose(got, (1, 2, 3, 0)), want,
                             rtol=1e-4, atol=1e-5)
