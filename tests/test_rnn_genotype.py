"""Recurrent genotype: derivation, counts, JSON, registry, params, picture."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sparsenas_jax import genotype as cnn_genotype
from sparsenas_jax import rnn_genotype as rg
from sparsenas_jax import search_space

OPS = search_space.RNN_OPS
OP = {name: o for o, name in enumerate(OPS)}


def _zeros(nodes, n_ops=len(OPS), dtype=np.float64):
  """State k (key node_{k-1}) has k predecessor rows s_0 ... s_{k-1}."""
  return {f'node_{k}': np.zeros((k + 1, n_ops), dtype) for k in range(nodes)}


def _set(arch, state, pred, op, w):
  arch[f'node_{state - 1}'][pred, OP[op]] = w


def _mixed_arch(dtype=np.float64):
  """Five states exercising every rule (weights exact in float32).

  s_1: two ops on the edge from s_0 (mixed path, kept).
  s_2: all zero (removed).
  s_3: weights only from the removed s_2 (removed, its edge pruned).
  s_4: from s_0, s_1 and the removed s_2 (kept, the s_2 edge pruned).
  s_5: from s_1, s_4 and the removed s_3 (kept, the s_3 edge pruned).
  """
  arch = _zeros(5, dtype=dtype)
  _set(arch, 1, 0, 'tanh', 0.5)
  _set(arch, 1, 0, 'sigmoid', -0.25)
  _set(arch, 3, 2, 'relu', 0.75)
  _set(arch, 4, 0, 'identity', 0.375)
  _set(arch, 4, 1, 'relu', 1.5)
  _set(arch, 4, 2, 'tanh', 0.875)
  _set(arch, 5, 3, 'sigmoid', 0.1875)
  _set(arch, 5, 4, 'tanh', -1.25)
  _set(arch, 5, 1, 'identity', 0.125)
  return arch


# Expected by hand: {state: {(pred, op, weight)}}.
MIXED_EXPECTED = {
    1: {(0, 'tanh', 0.5), (0, 'sigmoid', -0.25)},
    4: {(0, 'identity', 0.375), (1, 'relu', 1.5)},
    5: {(1, 'identity', 0.125), (4, 'tanh', -1.25)},
}


def _as_dict(genotype):
  return {node.index: set(node.inputs) for node in genotype.nodes}


@pytest.mark.parametrize('dtype', [np.float64, np.float32])
def test_derive_mixed_rules(dtype):
  genotype = rg.derive_recurrent_genotype(_mixed_arch(dtype))
  assert [n.index for n in genotype.nodes] == [1, 4, 5]
  assert _as_dict(genotype) == MIXED_EXPECTED
  assert genotype.concat == (1, 4, 5)
  assert genotype.ops == OPS
  for node in genotype.nodes:
    for pred, op, w in node.inputs:
      assert type(pred) is int and type(op) is str and type(w) is float


def test_counts_mixed_by_hand():
  # ops_total: 4 ops * (1 + 2 + 3 + 4 + 5) rows; nonzero: 2 + 0 + 1 + 3 + 3;
  # kept: 2 + 0 + 0 + 2 + 2 (the s_2 and s_3 edges are pruned).
  assert rg.recurrent_sparsity_counts(_mixed_arch()) == dict(
      ops_nonzero=9, ops_total=60, ops_kept=6, nodes_live=3, nodes_total=5)


def test_dead_chain_reaches_fixed_point():
  # s_1 zero -> s_2 (fed by s_1 only) dead -> s_3 (fed by s_2 only) dead;
  # s_4 keeps only its edge from s_0.
  arch = _zeros(4)
  _set(arch, 2, 1, 'relu', 0.5)
  _set(arch, 3, 2, 'tanh', 0.5)
  _set(arch, 4, 0, 'sigmoid', 2.0)
  _set(arch, 4, 3, 'identity', 1.0)
  genotype = rg.derive_recurrent_genotype(arch)
  assert _as_dict(genotype) == {4: {(0, 'sigmoid', 2.0)}}
  assert genotype.concat == (4,)
  assert rg.recurrent_sparsity_counts(arch) == dict(
      ops_nonzero=4, ops_total=40, ops_kept=1, nodes_live=1, nodes_total=4)


def test_dense_arch_keeps_everything():
  rng = np.random.default_rng(0)
  arch = {k: rng.uniform(0.1, 1.0, s) for k, s in
          search_space.rnn_arch_shapes(search_space.RNN_NODES,
                                       len(OPS)).items()}
  genotype = rg.derive_recurrent_genotype(arch)
  assert [n.index for n in genotype.nodes] == list(range(1, 9))
  assert genotype.concat == tuple(range(1, 9))
  for k, node in enumerate(genotype.nodes):
    assert len(node.inputs) == (k + 1) * len(OPS)
  total = len(OPS) * sum(range(1, 9))
  assert rg.recurrent_sparsity_counts(arch) == dict(
      ops_nonzero=total, ops_total=total, ops_kept=total, nodes_live=8,
      nodes_total=8)


def test_threshold_prunes_small_weights():
  arch = _mixed_arch()
  _set(arch, 2, 0, 'relu', 1e-4)  # would revive s_2 without the threshold
  genotype = rg.derive_recurrent_genotype(arch, threshold=0.2)
  # |w| <= 0.2 counts as zero: 1e-4 (s_2 stays dead), 0.1875 and 0.125 go;
  # |-0.25| > 0.2 stays.
  assert _as_dict(genotype) == {
      1: {(0, 'tanh', 0.5), (0, 'sigmoid', -0.25)},
      4: {(0, 'identity', 0.375), (1, 'relu', 1.5)},
      5: {(4, 'tanh', -1.25)},
  }
  counts = rg.recurrent_sparsity_counts(arch, threshold=0.2)
  assert counts['ops_nonzero'] == 7 and counts['ops_kept'] == 5


def test_subset_of_ops_and_jax_arrays():
  jnp = pytest.importorskip('jax.numpy')
  ops = ('relu', 'identity')
  arch = {f'node_{k}': np.zeros((k + 1, 2), np.float32) for k in range(3)}
  arch['node_0'][0, 1] = 0.5   # s_1 <- identity(s_0)
  arch['node_2'][1, 0] = -2.0  # s_3 <- relu(s_1)
  arch['node_2'][1, 1] = 1.0   # s_3 <- identity(s_1)
  genotype = rg.derive_recurrent_genotype(
      {k: jnp.asarray(v) for k, v in arch.items()}, ops)
  assert genotype.ops == ops
  assert _as_dict(genotype) == {
      1: {(0, 'identity', 0.5)},
      3: {(1, 'relu', -2.0), (1, 'identity', 1.0)},
  }


@pytest.mark.parametrize('make', [
    lambda: _zeros(3),
    # s_1 dead, everything else fed only by s_1 or later dead states.
    lambda: {**_zeros(3), 'node_1': np.array([[0.0] * 4, [0.0, 1.0, 0, 0]]),
             'node_2': np.array([[0.0] * 4, [0.0] * 4, [1.0, 0, 0, 0]])},
])
def test_empty_cell_is_one_line(make):
  with pytest.raises(ValueError, match='empty') as e:
    rg.derive_recurrent_genotype(make())
  assert '\n' not in str(e.value) and 'λ' in str(e.value)


@pytest.mark.parametrize('arch, ops', [
    (_zeros(3, n_ops=3), OPS),                       # columns != len(ops)
    ({'node_0': np.ones((1, 4)), 'node_2': np.ones((3, 4))}, OPS),  # gap
    ({'node_0': np.ones((2, 4))}, OPS),              # too many rows
    ({'node_0': np.array([[np.nan, 1, 1, 1]])}, OPS),  # non-finite
    (_zeros(2), ('tanh', 'conv')),                   # unknown op
    (_zeros(2), ('tanh', 'tanh', 'relu', 'relu')),   # duplicates
])
def test_bad_arch_is_one_line(arch, ops):
  with pytest.raises(ValueError) as e:
    rg.derive_recurrent_genotype(arch, ops)
  assert '\n' not in str(e.value)


def test_json_round_trip(tmp_path):
  genotype = rg.derive_recurrent_genotype(_mixed_arch())
  text = genotype.to_json()
  data = json.loads(text)
  assert data['ops'] == list(OPS) and data['concat'] == [1, 4, 5]
  assert [n['index'] for n in data['nodes']] == [1, 4, 5]
  assert rg.RecurrentGenotype.from_json(text) == genotype
  path = tmp_path / 'sub' / 'rnn.json'  # parent folders are created
  rg.save_recurrent_genotype(genotype, path)
  loaded = rg.load_recurrent_genotype(path)
  assert loaded == genotype and hash(loaded) == hash(genotype)
  assert rg.resolve_recurrent_genotype(str(path)) == genotype
  assert rg.resolve_recurrent_genotype(path) == genotype
  assert rg.resolve_recurrent_genotype(genotype) is genotype
  # Awkward floats survive exactly.
  odd = rg.RecurrentGenotype(
      (rg.RecurrentNode(2, [(0, 'relu', 0.1 + 0.2), (0, 'tanh', 1e-300)]),),
      (2,))
  assert rg.RecurrentGenotype.from_json(odd.to_json()) == odd


def _good_data():
  return {'ops': list(OPS),
          'nodes': [{'index': 1, 'inputs': [[0, 'tanh', 0.5]]},
                    {'index': 3, 'inputs': [[1, 'relu', 1.0]]}],
          'concat': [1, 3]}


def _with(edit):
  data = _good_data()
  edit(data)
  return json.dumps(data)


@pytest.mark.parametrize('text, needle', [
    ('{"ops": ["tanh"], "nodes": [', 'JSON'),
    ('[1, 2]', 'object'),
    (_with(lambda d: d.pop('concat')), 'concat'),
    (_with(lambda d: d['nodes'][1]['inputs'][0].__setitem__(1, 'conv')),
     'conv'),
    (_with(lambda d: d.__setitem__('ops', ['tanh', 'gelu'])), 'gelu'),
    # s_2 is not a live state of this genotype.
    (_with(lambda d: d['nodes'][1]['inputs'][0].__setitem__(0, 2)),
     'predecessor 2'),
    # a predecessor from the future.
    (_with(lambda d: d['nodes'][0]['inputs'][0].__setitem__(0, 3)),
     'predecessor 3'),
    (_with(lambda d: d.__setitem__('concat', [1, 2])), 'concat'),
    (_with(lambda d: d.__setitem__('concat', [])), 'concat'),
    (_with(lambda d: d.__setitem__('nodes', [])), 'no nodes'),
    (_with(lambda d: d['nodes'][0].__setitem__('inputs', [[0, 'tanh']])),
     'input'),
    (_with(lambda d: d['nodes'][0]['inputs'].append([0, 'tanh', 1.0])),
     'twice'),
])
def test_load_errors_are_one_line_naming_the_file(tmp_path, text, needle):
  path = tmp_path / 'bad.json'
  path.write_text(text)
  with pytest.raises(ValueError) as e:
    rg.load_recurrent_genotype(path)
  message = str(e.value)
  assert '\n' not in message
  assert str(path) in message and needle in message
  with pytest.raises(ValueError) as e:
    rg.resolve_recurrent_genotype(str(path))
  assert str(path) in str(e.value)


def test_good_data_loads(tmp_path):
  path = tmp_path / 'good.json'
  path.write_text(json.dumps(_good_data()))
  genotype = rg.load_recurrent_genotype(path)
  assert _as_dict(genotype) == {1: {(0, 'tanh', 0.5)}, 3: {(1, 'relu', 1.0)}}


def test_from_json_source_prefix():
  with pytest.raises(ValueError, match=r'\Amy.json: not valid JSON'):
    rg.RecurrentGenotype.from_json('{', source='my.json')


def test_cnn_genotype_file_is_refused(tmp_path):
  path = tmp_path / 'cnn.json'
  cnn_genotype.save_genotype(cnn_genotype.GENOTYPES['darts_v2'], path)
  with pytest.raises(ValueError, match='CNN genotype'):
    rg.load_recurrent_genotype(path)


# DARTS's rnn/genotypes.py, transcribed by hand: element k is state k + 1's
# (op, pred); both average all eight states.
DARTS_V1 = [('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4),
            ('identity', 1), ('relu', 5), ('relu', 1)]
DARTS_V2 = [('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1),
            ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)]


@pytest.mark.parametrize('name, recurrent', [('darts_v1', DARTS_V1),
                                             ('darts_v2', DARTS_V2)])
def test_registry_matches_darts(name, recurrent):
  genotype = rg.resolve_recurrent_genotype(name)
  assert genotype is rg.RECURRENT_GENOTYPES[name]
  assert [(n.index, n.inputs) for n in genotype.nodes] == [
      (k + 1, ((pred, op, 1.0),)) for k, (op, pred) in enumerate(recurrent)]
  assert genotype.concat == tuple(range(1, 9))
  assert genotype.ops == OPS
  assert rg.RecurrentGenotype.from_json(genotype.to_json()) == genotype


def test_resolve_unknown_lists_registry():
  with pytest.raises(ValueError) as e:
    rg.resolve_recurrent_genotype('darts_v3')
  message = str(e.value)
  assert '\n' not in message
  assert 'darts_v3' in message and 'darts_v1' in message
  assert 'darts_v2' in message


def test_params_darts_v2():
  ntoken, nhid = 10000, 850
  expected = ntoken * nhid + ntoken + (2 * nhid) ** 2 + 8 * nhid * 2 * nhid
  assert expected == 10000 * 850 + 10000 + 1700 ** 2 + 8 * 850 * 1700
  assert expected == 22_960_000  # about the 23M of DARTS's Table 2
  assert rg.recurrent_genotype_params(
      rg.RECURRENT_GENOTYPES['darts_v2'], ntoken=ntoken, nhid=nhid) == expected


def test_params_count_live_nodes_only():
  genotype = rg.derive_recurrent_genotype(_mixed_arch())  # 3 live states
  # embedding 20·4, bias 20, W0 8·8, three W of 4·8.
  assert rg.recurrent_genotype_params(genotype, ntoken=20, nhid=4) == (
      80 + 20 + 64 + 3 * 32)
  for bad in (dict(ntoken=0, nhid=4), dict(ntoken=20, nhid=4.0)):
    with pytest.raises(ValueError, match='positive int'):
      rg.recurrent_genotype_params(genotype, **bad)


def test_constructor_validates():
  node = rg.RecurrentNode
  with pytest.raises(ValueError, match='concat'):
    rg.RecurrentGenotype((node(1, [(0, 'tanh', 1.0)]),), (2,))
  with pytest.raises(ValueError, match='increasing'):
    rg.RecurrentGenotype((node(2, [(0, 'tanh', 1.0)]),
                          node(1, [(0, 'tanh', 1.0)])), (1, 2))
  with pytest.raises(ValueError, match='unknown op'):
    rg.RecurrentGenotype((node(1, [(0, 'relu', 1.0)]),), (1,),
                         ops=('tanh',))


def _png_size(data):
  """Width and height from a PNG's IHDR chunk."""
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  return tuple(int.from_bytes(data[16 + 4 * i:20 + 4 * i], 'big')
               for i in range(2))


@pytest.mark.parametrize('name', ['darts_v2', 'mixed'])
def test_plot_writes_png(tmp_path, name):
  from sparsenas_jax import viz  # pylint: disable=g-import-not-at-top
  genotype = (rg.RECURRENT_GENOTYPES[name] if name != 'mixed'
              else rg.derive_recurrent_genotype(_mixed_arch()))
  path = tmp_path / 'pics' / f'{name}.png'
  viz.plot_recurrent_genotype(genotype, path, dpi=60)
  data = path.read_bytes()
  assert len(data) > 10_000
  width, height = _png_size(data)
  assert width > height > 0  # states laid out left to right


def test_import_pulls_in_neither_matplotlib_nor_flax():
  code = ('import sparsenas_jax.rnn_genotype, sys; '
          'assert "matplotlib" not in sys.modules, "matplotlib"; '
          'assert "flax" not in sys.modules, "flax"')
  subprocess.run([sys.executable, '-c', code], check=True)
