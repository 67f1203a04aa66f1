"""Tests of the recurrent (Penn Treebank) cells and language model."""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax import bilevel
from sparsenas_jax import models
from sparsenas_jax import rnn_genotype
from sparsenas_jax import search_space
from sparsenas_jax.models import rnn

NHID, NTOKEN, B = 8, 20, 3
EPS = 1e-5
OPS = search_space.RNN_OPS

# LLVM's optimisation is most of XLA:CPU's compile time for these small
# graphs; the tests check numbers, not speed.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


class Node(NamedTuple):
  index: int
  inputs: tuple


@dataclasses.dataclass(frozen=True)
class Genotype:
  nodes: tuple
  concat: tuple


# A two-input node, two ops on one edge, a gap in the numbering (no state 3)
# and a node on no path to concat (state 5: no params, no effect).
MIXED = Genotype(
    nodes=(Node(1, ((0, 'sigmoid', 0.7),)),
           Node(2, ((1, 'relu', 0.5), (0, 'tanh', -0.3))),
           Node(4, ((2, 'identity', 1.2), (2, 'relu', 0.4))),
           Node(5, ((1, 'tanh', 0.9),))),
    concat=(1, 2, 4))

# DARTS V2 (Liu et al. 2019, genotypes.py): one input per node.
DARTS_V2_EDGES = (('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1),
                  ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5))
DARTS_V2_LIKE = Genotype(
    nodes=tuple(Node(i + 1, ((pred, op, 1.0),))
                for i, (op, pred) in enumerate(DARTS_V2_EDGES)),
    concat=tuple(range(1, 9)))


# ----------------------------------------------------------------------------
# NumPy references, float64, written from the equations with plain loops.
# ----------------------------------------------------------------------------


def np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


NP_ACT = {'tanh': np.tanh, 'relu': lambda x: np.maximum(x, 0.0),
          'sigmoid': np_sigmoid, 'identity': lambda x: x}


def np_bn(x):
  mean = x.mean(axis=0)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=0) + EPS)


def np_highway(s, w, op, h_mask):
  ch = (s * h_mask) @ w
  c, h = ch[:, :NHID], ch[:, NHID:]
  return s + np_sigmoid(c) * (NP_ACT[op](h) - s)


def np_input_state(x, h_prev, w0, x_mask, h_mask):
  ch = np.concatenate([x * x_mask, h_prev * h_mask], axis=1) @ w0
  c0, h0 = ch[:, :NHID], ch[:, NHID:]
  return h_prev + np_sigmoid(c0) * (np.tanh(h0) - h_prev)


def np_search_cell(x, h_prev, params, arch, x_mask, h_mask, nodes,
                   node_bn=True):
  states = [np_bn(np_input_state(x, h_prev, params['W0'], x_mask, h_mask))]
  for i in range(nodes):
    node = np.zeros_like(h_prev)
    for j, s in enumerate(states):
      for f, op in enumerate(OPS):
        node += arch[f'node_{i}'][j, f] * np_highway(
            s, params[f'node_{i}'], op, h_mask)
    states.append(np_bn(node) if node_bn else node)
  return np.mean(states[1:], axis=0)


def np_eval_cell(x, h_prev, params, genotype, x_mask, h_mask, weighting):
  states = {0: np_input_state(x, h_prev, params['W0'], x_mask, h_mask)}
  for node in genotype.nodes:
    if f'node_{node.index - 1}' not in params:  # a dead node
      continue
    total = np.zeros_like(h_prev)
    for pred, op, weight in node.inputs:
      term = np_highway(states[pred], params[f'node_{node.index - 1}'], op,
                        h_mask)
      total += (term / len(node.inputs) if weighting == 'mean'
                else weight * term)
    states[node.index] = total
  return np.mean([states[i] for i in genotype.concat], axis=0)


def np_log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _f64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _random_params(module, seed, *args, scale=0.5):
  """Normal(0, scale) params of the module's shapes: larger than the init,
  so that every gate and activation is away from its linear regime."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)['params']
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)


def _random_arch(seed, nodes):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in
          search_space.rnn_arch_shapes(nodes, len(OPS)).items()}


def _step_inputs(seed, ninp=NHID, keep=0.6):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, ninp)).astype(np.float32)
  h = rng.normal(size=(B, NHID)).astype(np.float32)
  x_mask = ((rng.random((B, ninp)) < keep) / keep).astype(np.float32)
  h_mask = ((rng.random((B, NHID)) < keep) / keep).astype(np.float32)
  return x, h, x_mask, h_mask


def _model(cell, **rates):
  return rnn.RNNModel(ntoken=NTOKEN, nhid=NHID, cell=cell, **rates)


RATES = dict(dropout=0.3, dropouth=0.2, dropoutx=0.4, dropouti=0.25,
             dropoute=0.1)
NO_DROPOUT = {k: 0.0 for k in RATES}


# ----------------------------------------------------------------------------
# One step of each cell against NumPy.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize('with_masks', [True, False])
def test_search_cell_step_matches_numpy(with_masks):
  ninp = 5  # W0 is (ninp + nhid, 2 nhid)
  cell = rnn.RNNSearchCell(nhid=NHID)
  x, h, x_mask, h_mask = _step_inputs(0, ninp)
  arch = _random_arch(1, search_space.RNN_NODES)
  params = _random_params(cell, 2, x, h, arch)
  assert set(params) == {'W0'} | {f'node_{i}' for i in range(8)}
  assert params['W0'].shape == (ninp + NHID, 2 * NHID)
  masks = (x_mask, h_mask) if with_masks else (None, None)
  got = cell.apply({'params': params}, x, h, arch, *masks)
  ones = np.ones((B, ninp)), np.ones((B, NHID))
  want = np_search_cell(*_f64((x, h, params, arch)),
                        *_f64(masks if with_masks else ones), nodes=8)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_search_cell_without_node_batch_norm_matches_numpy():
  cell = rnn.RNNSearchCell(nhid=NHID, nodes=4, node_batch_norm=False)
  x, h, x_mask, h_mask = _step_inputs(20)
  arch = _random_arch(21, 4)
  params = _random_params(cell, 22, x, h, arch)
  got = cell.apply({'params': params}, x, h, arch, x_mask, h_mask)
  want = np_search_cell(*_f64((x, h, params, arch, x_mask, h_mask)),
                        nodes=4, node_bn=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Without it, scaling a group by c scales its node: no longer invariant.
  scaled = cell.apply({'params': params}, x, h,
                      dict(arch, node_1=3 * arch['node_1']), x_mask, h_mask)
  assert np.max(np.abs(scaled - got)) > 1e-2


@pytest.mark.parametrize('weighting', ['mean', 'arch'])
def test_eval_cell_step_matches_numpy(weighting):
  cell = rnn.RNNEvalCell(MIXED, nhid=NHID, weighting=weighting)
  x, h, x_mask, h_mask = _step_inputs(3)
  params = _random_params(cell, 4, x, h)
  # One W per live node (named after the search node it derives from).
  assert set(params) == {'W0', 'node_0', 'node_1', 'node_3'}
  got = cell.apply({'params': params}, x, h, None, x_mask, h_mask)
  want = np_eval_cell(*_f64((x, h, params)), MIXED, *_f64((x_mask, h_mask)),
                      weighting)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_weightings_agree_on_one_input_nodes_and_differ_otherwise():
  x, h, _, _ = _step_inputs(5)
  cells = [rnn.RNNEvalCell(DARTS_V2_LIKE, NHID, w) for w in ('mean', 'arch')]
  params = _random_params(cells[0], 6, x, h)
  a, b = (c.apply({'params': params}, x, h) for c in cells)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  cells = [rnn.RNNEvalCell(MIXED, NHID, w) for w in ('mean', 'arch')]
  params = _random_params(cells[0], 6, x, h)
  a, b = (c.apply({'params': params}, x, h) for c in cells)
  assert np.max(np.abs(a - b)) > 1e-2


def test_eval_model_matches_numpy():
  """Embedding, the cell over time, the tied decoder (no dropout)."""
  model = _model(rnn.RNNEvalCell(MIXED, NHID))
  variables = rnn.init_rnn_variables(model, seed=0)
  p = variables['params']
  rng = np.random.default_rng(7)
  p['cell'] = jax.tree.map(
      lambda a: (0.5 * rng.normal(size=a.shape)).astype(np.float32),
      p['cell'])
  p['decoder_bias'] = rng.normal(size=NTOKEN).astype(np.float32)
  tokens = rng.integers(0, NTOKEN, (6, B)).astype(np.int32)
  hidden = rng.normal(size=(B, NHID)).astype(np.float32)
  logits, new_hidden, outputs = model.apply(
      variables, tokens, hidden, np.ones(6, np.float32), train=False)
  log_probs = jax.nn.log_softmax(logits)
  q = _f64(p)
  h, ones = np.asarray(hidden, np.float64), np.ones((B, NHID))
  want = []
  for t in range(6):
    h = np_eval_cell(q['embedding'][tokens[t]], h, q['cell'], MIXED, ones,
                     ones, 'mean')
    want.append(h)
  want = np.stack(want)
  np.testing.assert_allclose(outputs, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_hidden, want[-1], rtol=1e-5, atol=1e-6)
  want_logits = want @ q['embedding'].T + q['decoder_bias']
  np.testing.assert_allclose(log_probs, np_log_softmax(want_logits),
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Padding.
# ----------------------------------------------------------------------------


def _masked_nll_and_grads(model, params, arch, tokens, targets, mask, hidden):
  def loss(params, arch):
    logits, new_hidden, _ = model.apply(
        {'params': params}, tokens, hidden, mask, arch, train=True,
        rngs={'dropout': jax.random.key(11)})
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return (jnp.sum(nll * mask[:, None]) / (jnp.sum(mask) * tokens.shape[1]),
            (log_probs, new_hidden))

  grad_fn = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
  return _jit(grad_fn)(params, arch)


@pytest.mark.parametrize('search', [True, False])
def test_padded_window_matches_unpadded(search):
  """Length 5 padded to 8: same hidden, log-probs and gradients, with
  dropout on (the masks are drawn per sequence)."""
  nodes = 2
  cell = (rnn.RNNSearchCell(NHID, nodes=nodes) if search
          else rnn.RNNEvalCell(MIXED, NHID))
  model = _model(cell, **RATES)
  params = rnn.init_rnn_variables(model, seed=1)['params']
  params['cell'] = jax.tree.map(lambda a: 10 * a, params['cell'])
  arch = _random_arch(2, nodes) if search else None
  rng = np.random.default_rng(3)
  tokens = rng.integers(0, NTOKEN, (8, B)).astype(np.int32)
  targets = rng.integers(0, NTOKEN, (8, B)).astype(np.int32)
  hidden = rng.normal(size=(B, NHID)).astype(np.float32)
  mask = np.array([1] * 5 + [0] * 3, np.float32)
  (loss8, (lp8, h8)), g8 = _masked_nll_and_grads(
      model, params, arch, tokens, targets, mask, hidden)
  (loss5, (lp5, h5)), g5 = _masked_nll_and_grads(
      model, params, arch, tokens[:5], targets[:5], mask[:5], hidden)
  tol = dict(rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h8, h5, **tol)
  np.testing.assert_allclose(lp8[:5], lp5, **tol)
  np.testing.assert_allclose(loss8, loss5, **tol)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), g8, g5)
  if search:
    assert all(np.any(a != 0) for a in jax.tree.leaves(g8[1]))
  # The padded steps did run on other inputs: the hidden really was held.
  _, h_unmasked, _ = model.apply({'params': params}, tokens, hidden,
                                 np.ones(8, np.float32), arch, train=False)
  assert np.max(np.abs(h_unmasked - h8)) > 1e-3


def test_remat_policies_compute_the_same_derivatives():
  """Every ``remat`` keeps the numbers: loss, gradients in (w, A) and both
  orders of the mixed product ∇²_{A,w} L v, with dropout on."""
  nodes = 2
  rng = np.random.default_rng(5)
  tokens = rng.integers(0, NTOKEN, (6, B)).astype(np.int32)
  targets = rng.integers(0, NTOKEN, (6, B)).astype(np.int32)
  hidden = rng.normal(size=(B, NHID)).astype(np.float32)
  mask = np.ones(6, np.float32)
  arch = _random_arch(4, nodes)
  results = {}
  for remat in rnn.REMAT_POLICIES:
    model = _model(rnn.RNNSearchCell(NHID, nodes=nodes), remat=remat,
                   **RATES)
    params = rnn.init_rnn_variables(model, seed=1)['params']

    def loss(w, a, _):
      logits, _, _ = model.apply({'params': w}, tokens, hidden, mask, a,
                                 train=True,
                                 rngs={'dropout': jax.random.key(3)})
      return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(logits),
                                           targets[..., None], -1))

    v = jax.tree.map(lambda w: jnp.sin(100 * w), params)
    results[remat] = _jit(lambda w, a, v: (
        jax.value_and_grad(loss, argnums=(0, 1))(w, a, None),
        [bilevel.mixed_product(loss, o)(w, a, v, None)
         for o in bilevel.MIXED_ORDERS]))(params, arch, v)
  reference = results['none']
  mixed = reference[1][0]
  assert all(np.any(np.asarray(m) != 0) for m in jax.tree.leaves(mixed))
  for remat, result in results.items():
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=2e-4, atol=1e-6, err_msg=remat), result, reference)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=2e-4, atol=1e-6, err_msg=remat), result[1][1], mixed)


# ----------------------------------------------------------------------------
# Zero groups and the batch norm after a node.
# ----------------------------------------------------------------------------


def test_zero_group_gives_a_zero_node_and_bn_keeps_it_zero():
  x, h, _, h_mask = _step_inputs(8)
  rng = np.random.default_rng(9)
  states = rng.normal(size=(3, B, NHID)).astype(np.float32)
  w = rng.normal(size=(NHID, 2 * NHID)).astype(np.float32)
  zero = np.zeros((3, len(OPS)), np.float32)
  node = rnn.search_node(states, zero, w, OPS, h_mask)
  np.testing.assert_array_equal(node, 0.0)
  np.testing.assert_array_equal(rnn.batch_norm_1d(node), 0.0)
  # The node is linear in its group: doubling the group doubles it.
  a = rng.normal(size=(3, len(OPS))).astype(np.float32)
  np.testing.assert_allclose(rnn.search_node(states, 2 * a, w, OPS, h_mask),
                             2 * rnn.search_node(states, a, w, OPS, h_mask),
                             rtol=1e-5, atol=1e-6)
  # A zero state is no absent one: a sigmoid edge from it gives σ(0)σ(0).
  only_sigmoid = np.zeros((1, len(OPS)), np.float32)
  only_sigmoid[0, OPS.index('sigmoid')] = 1.0
  np.testing.assert_allclose(
      rnn.search_node(np.zeros((1, B, NHID), np.float32), only_sigmoid, w,
                      OPS), 0.25)
  # In the cell: node_2 zeroed is state 0, as the reference computes it.
  cell = rnn.RNNSearchCell(NHID, nodes=4)
  arch = _random_arch(10, 4)
  arch['node_2'] = np.zeros_like(arch['node_2'])
  params = _random_params(cell, 11, x, h, arch)
  ones = np.ones((B, NHID))
  np.testing.assert_allclose(
      cell.apply({'params': params}, x, h, arch),
      np_search_cell(*_f64((x, h, params, arch)), ones, ones, nodes=4),
      rtol=1e-4, atol=1e-5)


def test_bn_makes_the_cell_invariant_to_scaling_a_group():
  """The hazard of the module docstring: scaling node i's whole group by
  c > 0 leaves h_t unchanged up to eps; a sign flip does not."""
  cell = rnn.RNNSearchCell(NHID, nodes=4)
  x, h, x_mask, h_mask = _step_inputs(12)
  arch = _random_arch(13, 4)
  params = _random_params(cell, 14, x, h, arch)
  apply = lambda a: cell.apply({'params': params}, x, h, a, x_mask, h_mask)
  base = apply(arch)
  for c in (0.5, 3.0):
    scaled = dict(arch, node_1=c * arch['node_1'])
    np.testing.assert_allclose(apply(scaled), base, rtol=1e-3, atol=1e-4)
  flipped = apply(dict(arch, node_1=-arch['node_1']))
  assert np.max(np.abs(flipped - base)) > 1e-2


# ----------------------------------------------------------------------------
# Dropout.
# ----------------------------------------------------------------------------


def _has_random_ops(fn, *args):
  text = str(jax.make_jaxpr(fn)(*args))
  return any(p in text for p in ('random_bits', 'threefry2x32'))


@pytest.mark.parametrize('search', [True, False])
def test_dropout_train_and_eval(search):
  nodes = 2
  cell = (rnn.RNNSearchCell(NHID, nodes=nodes) if search
          else rnn.RNNEvalCell(MIXED, NHID))
  model, plain = _model(cell, **RATES), _model(cell, **NO_DROPOUT)
  variables = rnn.init_rnn_variables(model, seed=5)
  arch = _random_arch(6, nodes) if search else None
  rng = np.random.default_rng(7)
  tokens = rng.integers(0, NTOKEN, (4, B)).astype(np.int32)
  hidden = rng.normal(size=(B, NHID)).astype(np.float32)
  mask = np.ones(4, np.float32)

  def run(m, train, key=None):
    rngs = None if key is None else {'dropout': jax.random.key(key)}
    return m.apply(variables, tokens, hidden, mask, arch, train=train,
                   rngs=rngs)

  run_jit = _jit(run, static_argnums=(0, 1))

  # Evaluation needs no rng, draws nothing and is deterministic.
  eval_out = run_jit(model, False)
  jax.tree.map(np.testing.assert_array_equal, eval_out,
               run_jit(model, False))
  assert not _has_random_ops(lambda: run(model, False))
  assert _has_random_ops(lambda: run(model, True, 0))
  # Zero rates in training: exactly the evaluation.
  jax.tree.map(np.testing.assert_array_equal, run_jit(plain, True, 0),
               eval_out)
  # Non-zero rates: a different function per key.
  a, b = run_jit(model, True, 0)[0], run_jit(model, True, 1)[0]
  assert np.max(np.abs(a - eval_out[0])) > 1e-3
  assert np.max(np.abs(a - b)) > 1e-3


def test_locked_mask_and_embedding_dropout():
  mask = np.asarray(rnn.locked_mask(jax.random.key(0), 0.3, (2000, 8)))
  assert set(np.unique(mask)) <= {0.0, np.float32(1 / 0.7)}
  assert abs(mask.mean() - 1.0) < 0.03
  e = np.random.default_rng(1).normal(size=(500, 4)).astype(np.float32)
  dropped = np.asarray(rnn.embedding_dropout(e, jax.random.key(2), 0.4))
  kept = np.all(dropped != 0, axis=1)
  np.testing.assert_array_equal(dropped[~kept], 0.0)
  np.testing.assert_allclose(dropped[kept], e[kept] / 0.6, rtol=1e-6)
  assert 0.5 < kept.mean() < 0.7


# ----------------------------------------------------------------------------
# Parameters, init, errors.
# ----------------------------------------------------------------------------


def _param_count(model):
  cell = model.cell
  arch = None
  if isinstance(cell, rnn.RNNSearchCell):
    arch = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in
            search_space.rnn_arch_shapes(cell.nodes, len(cell.ops)).items()}
  shapes = jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0),
      jax.ShapeDtypeStruct((1, 1), jnp.int32),
      jax.ShapeDtypeStruct((1, model.nhid), jnp.float32),
      jax.ShapeDtypeStruct((1,), jnp.float32), arch)
  return models.count_params(shapes['params'])


def test_darts_v2_parameter_count():
  ntoken, nhid = 10000, 850
  # Embedding (tied decoder), decoder bias, W0, one W per node.
  want = (ntoken * nhid + ntoken + (2 * nhid) * (2 * nhid)
          + 8 * nhid * (2 * nhid))
  assert want == 22_960_000
  eval_model = rnn.RNNModel(ntoken, nhid, rnn.RNNEvalCell(DARTS_V2_LIKE,
                                                          nhid))
  search_model = rnn.RNNModel(ntoken, nhid, rnn.RNNSearchCell(nhid))
  assert _param_count(eval_model) == want
  assert _param_count(search_model) == want


def test_init_is_darts_uniform_and_zero_bias():
  model = _model(rnn.RNNSearchCell(NHID, nodes=3))
  params = rnn.init_rnn_variables(model, seed=0)['params']
  assert set(params) == {'cell', 'decoder_bias', 'embedding'}
  assert params['embedding'].shape == (NTOKEN, NHID)
  with_arch = rnn.init_rnn_variables(model, seed=0, arch=_random_arch(0, 3))
  jax.tree.map(np.testing.assert_array_equal, with_arch['params'], params)
  np.testing.assert_array_equal(params['decoder_bias'], 0.0)
  weights = np.concatenate([a.ravel() for a in jax.tree.leaves(
      {k: v for k, v in params.items() if k != 'decoder_bias'})])
  assert weights.dtype == np.float32
  assert np.abs(weights).max() <= rnn.INIT_RANGE
  assert np.abs(weights).max() > 0.9 * rnn.INIT_RANGE
  again = rnn.init_rnn_variables(model, seed=0)['params']
  jax.tree.map(np.testing.assert_array_equal, params, again)


def test_errors():
  search = _model(rnn.RNNSearchCell(NHID, nodes=2))
  variables = rnn.init_rnn_variables(search, seed=0)
  args = np.zeros((2, B), np.int32), np.zeros((B, NHID)), np.ones(2)
  with pytest.raises(ValueError, match='needs arch'):
    search.apply(variables, *args, train=False)
  with pytest.raises(ValueError, match='arch does not match'):
    search.apply(variables, *args, _random_arch(0, 3), train=False)
  with pytest.raises(ValueError, match='nhid'):
    _model(rnn.RNNSearchCell(NHID + 1))
  with pytest.raises(ValueError, match="remat must be one of none, full, "
                     "dots; got 'some'"):
    _model(rnn.RNNSearchCell(NHID), remat='some')
  with pytest.raises(ValueError, match='recurrent ops'):
    rnn.RNNSearchCell(NHID, ops=('tanh', 'none'))
  with pytest.raises(ValueError, match='weighting'):
    rnn.RNNEvalCell(MIXED, NHID, weighting='sum')
  bad = Genotype(nodes=(Node(1, ((2, 'tanh', 1.0),)),), concat=(1,))
  with pytest.raises(ValueError, match='reads state 2'):
    rnn.RNNEvalCell(bad, NHID)
  bad = Genotype(nodes=(Node(1, ((0, 'tanh', 1.0),)),), concat=(2,))
  with pytest.raises(ValueError, match='concat'):
    rnn.RNNEvalCell(bad, NHID)


def test_registered_darts_v2_builds_the_darts_v2_model():
  """The genotype module's ``darts_v2`` gives the DARTS V2 cell: the local
  transcription's params and function."""
  registered = rnn_genotype.RECURRENT_GENOTYPES['darts_v2']
  x, h, x_mask, h_mask = _step_inputs(30)
  cell = rnn.RNNEvalCell(registered, NHID)
  params = _random_params(rnn.RNNEvalCell(DARTS_V2_LIKE, NHID), 31, x, h)
  got = cell.apply({'params': params}, x, h, None, x_mask, h_mask)
  want = np_eval_cell(*_f64((x, h, params)), DARTS_V2_LIKE,
                      *_f64((x_mask, h_mask)), 'mean')
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  model = rnn.RNNModel(10000, 850, rnn.RNNEvalCell(registered, 850))
  assert _param_count(model) == rnn_genotype.recurrent_genotype_params(
      registered, ntoken=10000, nhid=850) == 22_960_000
