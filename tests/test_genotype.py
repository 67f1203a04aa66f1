"""Genotype derivation, files and counts on hand-built arches."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax import genotype as gt
from sparsenas_jax import search_space

OPS = search_space.DARTS_OPS
OP = {name: o for o, name in enumerate(OPS)}


def _zeros_cell(nodes=4):
  return {f'node_{k}': np.zeros((k + 2, len(OPS)), np.float32)
          for k in range(nodes)}


def _dense_cell(seed, nodes=4):
  rng = np.random.default_rng(seed)
  return {f'node_{k}': rng.normal(size=(k + 2, len(OPS))).astype(np.float32)
          for k in range(nodes)}


def _sparse_arch():
  """Normal cell exercising every rule; reduce cell as in Figure 2(b).

  normal: node 2 keeps two ops on edge 0 and one on edge 1; node 3 is all
  zero; node 4 is fed only by node 3 (dropped with it); node 5 has weights
  from nodes 2 and 4 and from input 1: the one from node 4 is dropped.
  reduce: only nodes 2 and 4 live (nodes 3 and 5 all zero).
  """
  normal = _zeros_cell()
  normal['node_0'][0, OP['sep_conv_3x3']] = 0.41
  normal['node_0'][0, OP['dil_conv_5x5']] = -0.2
  normal['node_0'][1, OP['max_pool_3x3']] = 1.7
  normal['node_2'][3, OP['sep_conv_5x5']] = 0.9   # from dead node 3
  normal['node_3'][2, OP['skip_connect']] = 0.33  # from node 2
  normal['node_3'][4, OP['avg_pool_3x3']] = 0.5   # from dead node 4
  normal['node_3'][1, OP['dil_conv_3x3']] = 1e-30
  reduce = _zeros_cell()
  reduce['node_0'][0, OP['max_pool_3x3']] = 0.8
  reduce['node_0'][1, OP['skip_connect']] = 0.25
  reduce['node_2'][2, OP['sep_conv_3x3']] = -0.6
  reduce['node_2'][0, OP['skip_connect']] = 0.125
  reduce['node_2'][0, OP['avg_pool_3x3']] = 0.0625
  return {'normal': normal, 'reduce': reduce}


def _f32(x):
  return float(np.float32(x))


def test_derive_mixed_paths():
  g = gt.derive_genotype(_sparse_arch())
  assert g.ops == OPS
  # Several ops on one edge, zeros dropped, weights carried exactly.
  assert g.normal == (
      gt.Node(2, ((0, 'sep_conv_3x3', _f32(0.41)),
                  (0, 'dil_conv_5x5', _f32(-0.2)),
                  (1, 'max_pool_3x3', _f32(1.7)))),
      gt.Node(5, ((1, 'dil_conv_3x3', _f32(1e-30)),
                  (2, 'skip_connect', _f32(0.33)))),
  )
  assert g.normal_concat == (2, 5)
  # Figure 2(b): a reduction cell with two live nodes.
  assert g.reduce == (
      gt.Node(2, ((0, 'max_pool_3x3', _f32(0.8)),
                  (1, 'skip_connect', 0.25))),
      # Inputs in (input node, op column) order.
      gt.Node(4, ((0, 'avg_pool_3x3', 0.0625), (0, 'skip_connect', 0.125),
                  (2, 'sep_conv_3x3', _f32(-0.6)))),
  )
  assert g.reduce_concat == (2, 4)
  assert all(isinstance(w, float) for n in g.normal + g.reduce
             for _, _, w in n.inputs)


def test_derive_jax_arrays_dense_and_threshold():
  arch = jax.tree.map(jnp.asarray, {'normal': _dense_cell(0),
                                    'reduce': _dense_cell(1)})
  g = gt.derive_genotype(arch)
  for nodes, concat in (g.cell('normal'), g.cell('reduce')):
    assert [n.index for n in nodes] == [2, 3, 4, 5] and concat == (2, 3, 4, 5)
    assert sum(len(n.inputs) for n in nodes) == 14 * len(OPS)
  # Magnitude pruning: a threshold above every weight of node 0 kills node 2
  # and, in cascade, only edges from the inputs survive.
  big = {'normal': _dense_cell(0), 'reduce': _dense_cell(1)}
  for cell in big.values():
    cell['node_0'] *= 1e-3
  pruned = gt.derive_genotype(big, threshold=0.1)
  assert all(src != 2 for n in pruned.normal + pruned.reduce
             for src, _, _ in n.inputs)
  assert 2 not in pruned.normal_concat


def test_genotype_is_immutable_and_hashable():
  g = gt.derive_genotype(_sparse_arch())
  with pytest.raises(dataclasses.FrozenInstanceError):
    g.normal = ()
  with pytest.raises(dataclasses.FrozenInstanceError):
    g.normal[0].index = 3
  assert hash(g) == hash(gt.derive_genotype(_sparse_arch()))


def test_empty_cell_raises():
  arch = _sparse_arch()
  arch['reduce'] = _zeros_cell()
  with pytest.raises(ValueError, match=r'reduce cell would be empty') as e:
    gt.derive_genotype(arch)
  assert 'λ' in str(e.value) and '\n' not in str(e.value)
  # Weights only from nodes that are themselves dead leave the cell empty too.
  arch['reduce']['node_3'][4, 0] = 1.0
  with pytest.raises(ValueError, match=r'reduce cell would be empty'):
    gt.derive_genotype(arch)


def test_bad_arch_raises():
  arch = _sparse_arch()
  with pytest.raises(ValueError, match=r"node_1 \(3, 6\)") as e:
    gt.derive_genotype(arch, OPS[:6])
  assert '\n' not in str(e.value)
  arch['normal']['node_2'] = np.zeros((3, 7))
  with pytest.raises(ValueError, match=r'expected .*node_2 \(4, 7\)'):
    gt.derive_genotype(arch)
  with pytest.raises(ValueError, match='keys'):
    gt.derive_genotype({'normal': _sparse_arch()['normal']})
  arch = _sparse_arch()
  arch['normal']['node_0'][0, 0] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    gt.derive_genotype(arch)


def test_json_round_trip(tmp_path):
  rng = np.random.default_rng(3)
  arch = {'normal': _dense_cell(4), 'reduce': _dense_cell(5)}
  for cell in arch.values():
    for a in cell.values():
      a *= rng.random(a.shape) < 0.3
  arch['reduce']['node_0'][0, 0] = 1.0
  arch['normal']['node_0'][0, 0] = 1.0
  g = gt.derive_genotype(arch)
  # float64 weights whose shortest repr has 17 digits must survive too.
  g2 = dataclasses.replace(g, normal=(
      gt.Node(2, ((0, 'sep_conv_3x3', 0.1 + 0.2),
                  (1, 'max_pool_3x3', -1e-300))),
  ), normal_concat=(2,))
  for genotype in (g, g2, gt.derive_genotype(_sparse_arch())):
    assert gt.Genotype.from_json(genotype.to_json()) == genotype
    path = tmp_path / 'sub' / 'genotype.json'
    gt.save_genotype(genotype, path)
    assert gt.load_genotype(path) == genotype
    assert gt.resolve_genotype(str(path)) == genotype
  data = json.loads(gt.derive_genotype(_sparse_arch()).to_json())
  assert data['ops'] == list(OPS)
  assert data['reduce']['concat'] == [2, 4]
  assert data['normal']['nodes'][0] == {
      'index': 2, 'inputs': [[0, 'sep_conv_3x3', _f32(0.41)],
                             [0, 'dil_conv_5x5', _f32(-0.2)],
                             [1, 'max_pool_3x3', _f32(1.7)]]}


# Nodes 2 and 4 only, as a derived cell with node 3 dropped.
_TWO_NODE_CELL = (gt.Node(2, ((0, 'sep_conv_3x3', 0.5),)),
                  gt.Node(4, ((2, 'skip_connect', -0.25),)))
_TWO_NODES = gt.Genotype(_TWO_NODE_CELL, (2, 4), _TWO_NODE_CELL, (2, 4))


def _edit(genotype, fn):
  data = json.loads(genotype.to_json())
  fn(data)
  return json.dumps(data)


@pytest.mark.parametrize('text, problem', [
    ('{"ops": [', 'not valid JSON'),
    ('[1, 2]', 'JSON object'),
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['normal']['nodes'][1]['inputs'].append(
               [0, 'conv_9x9', 1.0])), "unknown op 'conv_9x9'"),
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['ops'].append('conv_9x9')), "unknown op 'conv_9x9'"),
    # Input index equal to / above the node's own index, negative, or a node
    # the cell does not have.
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['reduce']['nodes'][1]['inputs'].append(
               [3, 'max_pool_3x3', 1.0])), 'input node 3 does not exist'),
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['normal']['nodes'][0]['inputs'].append(
               [7, 'max_pool_3x3', 1.0])), 'input node 7 does not exist'),
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['normal']['nodes'][0]['inputs'].append(
               [-1, 'max_pool_3x3', 1.0])), 'input node -1 does not exist'),
    (_edit(_TWO_NODES,
           lambda d: d['normal']['nodes'][1]['inputs'].append(
               [3, 'max_pool_3x3', 1.0])), 'input node 3 does not exist'),
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['normal'].update(concat=[2, 6])), 'concat'),
    (_edit(gt.GENOTYPES['darts_v2'],
           lambda d: d['normal']['nodes'][0]['inputs'][0].pop()),
     'input_node, op_name, weight'),
], ids=['malformed', 'not_object', 'unknown_input_op', 'unknown_listed_op',
        'input_not_before_node', 'input_too_large', 'input_negative',
        'input_dropped_node', 'bad_concat', 'short_input'])
def test_bad_file_raises(tmp_path, text, problem):
  path = tmp_path / 'bad_genotype.json'
  path.write_text(text)
  with pytest.raises(ValueError) as e:
    gt.load_genotype(path)
  msg = str(e.value)
  assert str(path) in msg and problem in msg and '\n' not in msg, msg


def test_custom_op_list(tmp_path):
  g = dataclasses.replace(gt.GENOTYPES['darts_v2'],
                          ops=OPS + ('conv_7x1_1x7',))
  path = tmp_path / 'g.json'
  gt.save_genotype(g, path)
  with pytest.raises(ValueError, match='unknown op'):
    gt.load_genotype(path)
  assert gt.load_genotype(path, valid_ops=g.ops) == g
  assert gt.load_genotype(path, valid_ops=None) == g


def test_registry_darts_v2():
  g = gt.resolve_genotype('darts_v2')
  assert g is gt.GENOTYPES['darts_v2']
  assert [n.index for n in g.normal] == [2, 3, 4, 5]
  assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
  assert g.normal[3].inputs == ((0, 'skip_connect', 1.0),
                                (2, 'dil_conv_3x3', 1.0))
  assert g.reduce[1].inputs == ((2, 'skip_connect', 1.0),
                                (1, 'max_pool_3x3', 1.0))
  assert gt.Genotype.from_json(g.to_json()) == g
  with pytest.raises(ValueError, match='darts_v2'):
    gt.resolve_genotype('darts_v9')


def _brute_force_live(cell, threshold=0.0):
  """Liveness by fixpoint iteration over all nodes, order-free."""
  arrays = [np.asarray(cell[f'node_{k}']) for k in range(len(cell))]
  live = {0, 1}
  changed = True
  while changed:
    changed = False
    for k, a in enumerate(arrays):
      if k + 2 not in live and any(
          i in live for i in range(a.shape[0])
          if np.any(np.abs(a[i]) > threshold)):
        live.add(k + 2)
        changed = True
  kept = sum(int(np.sum(np.abs(a[i]) > threshold))
             for k, a in enumerate(arrays) if k + 2 in live
             for i in range(a.shape[0]) if i in live)
  return live - {0, 1}, kept


def test_sparsity_counts():
  assert gt.sparsity_counts(_sparse_arch()) == {
      'ops_nonzero': 7 + 5, 'ops_total': 2 * 14 * 7, 'ops_kept': 5 + 5,
      'nodes_live': 4, 'nodes_total': 8}
  dense = {'normal': _dense_cell(0), 'reduce': jax.tree.map(
      jnp.asarray, _dense_cell(1))}
  assert gt.sparsity_counts(dense) == {
      'ops_nonzero': 196, 'ops_total': 196, 'ops_kept': 196,
      'nodes_live': 8, 'nodes_total': 8}
  rng = np.random.default_rng(7)
  for trial in range(30):
    arch = {'normal': _dense_cell(trial), 'reduce': _dense_cell(trial + 100)}
    for cell in arch.values():
      for a in cell.values():
        a *= rng.random(a.shape) < rng.uniform(0.02, 0.4)
        a *= rng.random() < 0.7  # some all-zero nodes
    counts = gt.sparsity_counts(arch)
    live = {t: _brute_force_live(arch[t]) for t in arch}
    assert counts['nodes_live'] == sum(len(l) for l, _ in live.values())
    assert counts['ops_kept'] == sum(k for _, k in live.values())
    try:
      g = gt.derive_genotype(arch)
    except ValueError:
      assert any(not l for l, _ in live.values())
      continue
    nodes = g.normal + g.reduce
    assert sum(len(n.inputs) for n in nodes) == counts['ops_kept']
    assert len(nodes) == counts['nodes_live']
    assert set(g.normal_concat) == {i for i in live['normal'][0]}


def test_genotype_and_search_space_import_neither_matplotlib_nor_flax():
  code = ('import sys; import sparsenas_jax.genotype; '
          'print(sorted(m for m in ("matplotlib", "flax") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == '[]'
