"""From sparse recurrent architecture weights to a mixed-path RNN cell.

The recurrent counterpart of ``genotype`` for the DARTS Penn Treebank search
space (Wu et al. 2021, Sec. "Experiments"; Liu et al. 2019, Sec. 2.1): the
derivation of a discrete *recurrent genotype* from exactly sparse weights,
its JSON form, a registry of known cells (DARTS V1 and V2), the kept op and
node counts, and the parameter count of the evaluation model built from it.
The picture is ``viz.plot_recurrent_genotype``.

The cell. State s_0 is computed from x_t and h_{t-1}; the intermediate
states s_1 ... s_N (``N = search_space.RNN_NODES`` in the paper) follow in
order, state k fed by s_0 ... s_{k-1} through highway edges
``s_j + σ(c)⊙(f(h) − s_j)`` with ``[c, h] = s_j W_k`` and an activation f
from ``search_space.RNN_OPS``; the cell output h_t is the mean of the live
intermediate states.

Architecture weights are one mapping ``{'node_0': (1, n_ops), ...,
f'node_{k - 1}': (k, n_ops), ...}`` (``search_space.rnn_arch_shapes``): row
j of ``node_{k - 1}`` weighs the edge from s_j into state k, column o the
activation ``ops[o]``. In a genotype states are numbered as above: 0 is s_0,
k >= 1 the k-th intermediate state.

References:
  Wu et al. 2021, "Neural Architecture Search as Sparse Supernet", Eq. 1, 3;
  Liu, Simonyan and Yang 2019 (DARTS), Sec. 2.1 and Figure 5 for the cell.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import search_space

_NODE_KEY = re.compile(r'node_(\d+)\Z')

Edge = tuple[int, str, float]  # (predecessor state, op name, weight)
PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class RecurrentNode:
  """A live intermediate state of a derived recurrent cell.

  Attributes:
    index: the state's number, 1 ... nodes.
    inputs: the kept ``(pred, op_name, weight)`` triples: a highway edge from
      the earlier state ``pred`` (0 for s_0) with activation ``op_name``,
      scaled by its architecture weight; the state sums them.
  """
  index: int
  inputs: tuple[Edge, ...]

  def __post_init__(self):
    # Lists (from JSON or hand-written code) become tuples so that the
    # genotype stays immutable and hashable.
    object.__setattr__(self, 'index', int(self.index))
    object.__setattr__(self, 'inputs', tuple(
        (int(j), str(op), float(w)) for j, op, w in self.inputs))


@dataclasses.dataclass(frozen=True)
class RecurrentGenotype:
  """A derived (discrete) mixed-path recurrent cell.

  Unlike a DARTS recurrent genotype, a state may keep several predecessors
  and several activations per predecessor, and states may be missing: state
  numbers need not be contiguous, and inputs refer to states by number.

  Attributes:
    nodes: the live intermediate states, in increasing index order.
    concat: the states averaged into h_t (those of ``nodes``, in a derived
      genotype all of them).
    ops: the candidate activations of the search the genotype came from, a
      subset of ``search_space.RNN_OPS``.
  """
  nodes: tuple[RecurrentNode, ...]
  concat: tuple[int, ...]
  ops: tuple[str, ...] = search_space.RNN_OPS

  def __post_init__(self):
    object.__setattr__(self, 'ops', search_space.check_rnn_ops(
        tuple(str(op) for op in self.ops)))
    nodes = tuple(n if isinstance(n, RecurrentNode) else RecurrentNode(*n)
                  for n in self.nodes)
    object.__setattr__(self, 'nodes', nodes)
    object.__setattr__(self, 'concat', tuple(int(i) for i in self.concat))
    genotype_lib.check_cell_nodes('', nodes, self.concat, self.ops,
                                  inputs=1, input_name='predecessor')

  def to_json(self) -> str:
    """Serialises the genotype; ``RecurrentGenotype.from_json`` reads it back.

    Schema::

      {"ops": ["tanh", "relu", "sigmoid", "identity"],
       "nodes": [{"index": 1, "inputs": [[0, "sigmoid", 1.0], ...]}, ...],
       "concat": [1, 2, ...]}

    Weights are written with Python's shortest round-tripping float repr, so
    the round trip is exact.

    Returns:
      The JSON text, one input triple per line.
    """
    dump = json.dumps
    lines = ['{', f'  "ops": {dump(list(self.ops))},', '  "nodes": [']
    for n, node in enumerate(self.nodes):
      lines.append(f'    {{"index": {node.index}, "inputs": [')
      for e, edge in enumerate(node.inputs):
        comma = ',' if e + 1 < len(node.inputs) else ''
        lines.append(f'      {dump(list(edge))}{comma}')
      comma = ',' if n + 1 < len(self.nodes) else ''
      lines.append(f'    ]}}{comma}')
    lines.append('  ],')
    lines.append(f'  "concat": {dump(list(self.concat))}')
    lines.append('}')
    return '\n'.join(lines)

  @classmethod
  def from_json(cls, text: str, *, source: str = '') -> RecurrentGenotype:
    """Parses ``to_json`` output, validating it.

    Args:
      text: the JSON text.
      source: what the text came from (e.g. a file name), the prefix of
        error messages.

    Returns:
      The genotype.

    Raises:
      ValueError: with one line, prefixed by ``source``, if the text is not
        JSON, breaks the schema, names an op outside ``RNN_OPS`` or the
        genotype's ``ops``, a predecessor that is not 0 or an earlier live
        state, or a ``concat`` that is empty or not a set of live states.
    """
    try:
      return cls(**_fields_from_json(text))
    except ValueError as e:
      prefix = source or 'RecurrentGenotype.from_json'
      raise ValueError(f'{prefix}: {e}') from None


def _fields_from_json(text: str) -> dict[str, Any]:
  """Reads the JSON schema of ``to_json`` into constructor arguments."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'not valid JSON ({e})') from None
  if not isinstance(data, dict):
    raise ValueError(f'expected a JSON object at the top level; got '
                     f'{type(data).__name__}')
  if 'normal' in data or 'reduce' in data:
    raise ValueError('this is a CNN genotype (normal/reduce cells); read it '
                     'with genotype.load_genotype')
  for key in ('ops', 'nodes', 'concat'):
    if key not in data:
      raise ValueError(f'missing key {key!r}')
  ops = data['ops']
  if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
    raise ValueError('"ops" must be a list of op names')
  if not isinstance(data['nodes'], list):
    raise ValueError('"nodes" must be a list')
  nodes = []
  for node in data['nodes']:
    if (not isinstance(node, dict) or not _is_int(node.get('index'))
        or not isinstance(node.get('inputs'), list)):
      raise ValueError(f'each node must be {{"index": int, "inputs": [...]}}; '
                       f'got {json.dumps(node)}')
    for edge in node['inputs']:
      if not (isinstance(edge, list) and len(edge) == 3 and _is_int(edge[0])
              and isinstance(edge[1], str) and _is_real(edge[2])):
        raise ValueError(f'node {node["index"]}: each input must be '
                         f'[pred, op_name, weight]; got {json.dumps(edge)}')
    nodes.append(RecurrentNode(node['index'], node['inputs']))
  concat = data['concat']
  if not isinstance(concat, list) or not all(_is_int(i) for i in concat):
    raise ValueError('"concat" must be a list of state numbers')
  return dict(nodes=tuple(nodes), concat=tuple(concat), ops=tuple(ops))


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


# -- Derivation --------------------------------------------------------------


def _node_number(key) -> int:
  m = _NODE_KEY.match(str(key))
  return int(m.group(1)) if m else -1


def _arrays(arch, n_ops, caller: str):
  """Returns the node arrays as float64 NumPy, checking keys and shapes."""
  if not isinstance(arch, Mapping) or not arch:
    raise ValueError(f'{caller}: arch must be a non-empty mapping node_0, '
                     f'node_1, ... -> array; got {type(arch).__name__}.')
  keys = sorted(arch, key=lambda k: (_node_number(k), str(k)))
  arrays = [np.asarray(arch[k], dtype=np.float64) for k in keys]
  if n_ops is None:
    n_ops = arrays[0].shape[-1] if arrays[0].ndim else 0
  shapes = search_space.rnn_arch_shapes(len(keys), n_ops)
  shapes_ok = all(a.shape == s for a, s in zip(arrays, shapes.values()))
  if keys != list(shapes) or not shapes_ok or n_ops < 1:
    expected = ', '.join(f'{k} {s}' for k, s in shapes.items())
    got = ', '.join(f'{k} {a.shape}' for k, a in zip(keys, arrays))
    raise ValueError(f'{caller}: arch does not match {n_ops} ops: expected '
                     f'{expected}; got {got}.')
  for k, a in enumerate(arrays):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{caller}: arch[\'node_{k}\'] has non-finite '
                       f'weights.')
  return arrays


def _kept_edges(arrays, threshold: float):
  """Applies the liveness rule of ``derive_recurrent_genotype``.

  Returns:
    A list, per state k = 1 ... N, of the kept ``(pred, op_column, weight)``
    triples (empty for a removed state).
  """
  # Every edge runs from an earlier state to a later one, so one pass in
  # state order reaches the fixed point of "remove the states with no
  # nonzero weight from a live state": when state k is decided, the
  # liveness of all of its predecessors is final.
  live = [True]  # s_0
  kept = []
  for a in arrays:
    rows, cols = np.nonzero(np.abs(a) > threshold)
    edges = [(int(j), int(o), float(a[j, o]))
             for j, o in zip(rows, cols) if live[j]]
    kept.append(edges)
    live.append(bool(edges))
  return kept


def derive_recurrent_genotype(arch, ops: Sequence[str] = search_space.RNN_OPS,
                              *, threshold: float = 0.0) -> RecurrentGenotype:
  """Derives the mixed-path recurrent cell from sparse architecture weights.

  As for the CNN cells (Wu et al. 2021, Sec. "Sparse Supernet"; no top-k):
  every ``(pred, op)`` with a nonzero weight is kept; a state whose whole
  group is zero is removed; a state fed only by removed states is removed
  too, and so on to a fixed point. Edges from a removed state are pruned
  from the states that stay: in the supernet a removed state s_j is zero,
  but its highway edge would still add ``σ(c)⊙f(h)`` (``σ(0) f(0) = 1/4``
  for sigmoid), so pruning is a choice of the derivation, the one that makes
  a removed state really absent from the evaluation model. h_t averages the
  live states.

  Args:
    arch: ``{'node_{k - 1}': array of shape (k, len(ops))}`` for states
      k = 1 ... N (NumPy or JAX arrays, on host).
    ops: the activation of each column, a subset of ``RNN_OPS``.
    threshold: weights with ``|w| <= threshold`` count as zero. The default 0
      keeps exactly the nonzero weights, as the proximal search produces;
      a positive value magnitude-prunes a dense ``arch``.

  Returns:
    The ``RecurrentGenotype``, weights as Python floats, ``concat`` the live
    states.

  Raises:
    ValueError: (one line) if ``ops`` is not a subset of ``RNN_OPS``,
      ``arch`` does not match it in shape or has non-finite weights, or no
      state survives.

  References:
    Wu et al. 2021, Eq. 1, 3; Liu et al. 2019, Sec. 2.1.
  """
  ops = search_space.check_rnn_ops(ops)
  arrays = _arrays(arch, len(ops), 'derive_recurrent_genotype')
  nodes = tuple(
      RecurrentNode(k + 1, tuple((j, ops[o], w) for j, o, w in edges))
      for k, edges in enumerate(_kept_edges(arrays, threshold)) if edges)
  if not nodes:
    raise ValueError(
        'derive_recurrent_genotype: the recurrent cell would be empty: every '
        'node lost all its weights or is fed only by removed nodes (the '
        'sparsity strength λ is too high; lower the λ ramp).')
  return RecurrentGenotype(nodes, tuple(n.index for n in nodes), ops)


def recurrent_sparsity_counts(arch, *,
                              threshold: float = 0.0) -> dict[str, int]:
  """Counts nonzero weights and live states of a (possibly dense) arch.

  Plain NumPy on host values (not for use under ``jit``), for progress logs;
  the same counts as ``genotype.sparsity_counts`` for the recurrent cell.

  Args:
    arch: ``{'node_{k - 1}': (k, n_ops)}``.
    threshold: as in ``derive_recurrent_genotype``.

  Returns:
    A dict of ints:
      ops_nonzero: weights with ``|w| > threshold``;
      ops_total: all weights;
      ops_kept: the nonzero weights whose predecessor is live, i.e. the ops
        ``derive_recurrent_genotype`` keeps (at most ``ops_nonzero``);
      nodes_live: live intermediate states (its liveness rule);
      nodes_total: all intermediate states.
  """
  arrays = _arrays(arch, None, 'recurrent_sparsity_counts')
  kept = _kept_edges(arrays, threshold)
  return dict(
      ops_nonzero=sum(int(np.count_nonzero(np.abs(a) > threshold))
                      for a in arrays),
      ops_total=sum(a.size for a in arrays),
      ops_kept=sum(len(e) for e in kept),
      nodes_live=sum(bool(e) for e in kept),
      nodes_total=len(arrays))


def recurrent_genotype_params(genotype: RecurrentGenotype, *, ntoken: int,
                              nhid: int) -> int:
  """Parameters of the evaluation model built from ``genotype``.

  The DARTS PTB model with ``ninp == nhid``: an embedding ``ntoken × nhid``
  tied to the decoder, the decoder bias ``ntoken``, W_0 of shape
  ``(2 nhid, 2 nhid)`` for s_0, and one ``W_k`` of shape ``(nhid, 2 nhid)``
  per live state, shared by its inputs (as in the DARTS search cell).

  Args:
    genotype: the cell.
    ntoken: vocabulary size.
    nhid: embedding and hidden size.

  Returns:
    ``ntoken·nhid + ntoken + (2 nhid)² + len(genotype.nodes)·nhid·2 nhid``.

  Raises:
    ValueError: if ``ntoken`` or ``nhid`` is not a positive int.
  """
  for name, value in (('ntoken', ntoken), ('nhid', nhid)):
    is_int = _is_int(value) or isinstance(value, np.integer)
    if not is_int or value < 1:
      raise ValueError(f'recurrent_genotype_params: {name} must be a positive '
                       f'int; got {value!r}.')
  ntoken, nhid = int(ntoken), int(nhid)
  return (ntoken * nhid + ntoken + (2 * nhid) ** 2
          + len(genotype.nodes) * nhid * 2 * nhid)


# -- Registry and files ------------------------------------------------------


def _darts_cell(pairs) -> RecurrentGenotype:
  """A DARTS cell from ``[(op, pred)]``, element k for state k + 1, unit
  weights, h_t averaging all states."""
  nodes = tuple(RecurrentNode(k + 1, ((pred, op, 1.0),))
                for k, (op, pred) in enumerate(pairs))
  return RecurrentGenotype(nodes, tuple(n.index for n in nodes),
                           search_space.RNN_OPS)


RECURRENT_GENOTYPES: dict[str, RecurrentGenotype] = {
    # DARTS PTB cells (Liu et al. 2019, first and second order), unit weights.
    'darts_v1': _darts_cell([
        ('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4),
        ('identity', 1), ('relu', 5), ('relu', 1)]),
    'darts_v2': _darts_cell([
        ('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1),
        ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)]),
}


def save_recurrent_genotype(genotype: RecurrentGenotype,
                            path: PathLike) -> None:
  """Writes ``genotype.to_json()`` to ``path``, creating parent folders."""
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(genotype.to_json() + '\n')


def load_recurrent_genotype(path: PathLike) -> RecurrentGenotype:
  """Reads a genotype written by ``save_recurrent_genotype`` (or by hand).

  Args:
    path: the JSON file.

  Returns:
    The genotype.

  Raises:
    ValueError: with one line naming the file and the problem, if the file is
      not JSON (or not UTF-8), breaks the schema, names an unknown op or a
      predecessor that does not exist.
    OSError: if the file cannot be read.
  """
  source = f'load_recurrent_genotype: {os.fspath(path)}'
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise ValueError(f'{source}: not UTF-8 text ({e})') from None
  return RecurrentGenotype.from_json(text, source=source)


def resolve_recurrent_genotype(
    name_or_path: Union[str, os.PathLike, RecurrentGenotype]
) -> RecurrentGenotype:
  """Returns a registered recurrent genotype by name, or loads a JSON file.

  Args:
    name_or_path: a key of ``RECURRENT_GENOTYPES`` (e.g. ``'darts_v2'``), a
      path to a JSON file, or a ``RecurrentGenotype`` (returned as is).

  Returns:
    The genotype.

  Raises:
    ValueError: (one line, listing the registry) if the name is neither
      registered nor an existing file, or the file is invalid.
  """
  if isinstance(name_or_path, RecurrentGenotype):
    return name_or_path
  if isinstance(name_or_path, str) and name_or_path in RECURRENT_GENOTYPES:
    return RECURRENT_GENOTYPES[name_or_path]
  if os.path.isfile(name_or_path):
    return load_recurrent_genotype(name_or_path)
  raise ValueError(
      f'resolve_recurrent_genotype: {os.fspath(name_or_path)!r} is neither a '
      f'registered recurrent genotype ({", ".join(sorted(RECURRENT_GENOTYPES))}'
      f') nor a file.')
