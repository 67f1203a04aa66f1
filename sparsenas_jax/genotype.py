"""From sparse architecture weights to a mixed-path architecture.

The search makes the architecture weights A exactly sparse (Wu et al. 2021,
Eq. 3): an exact zero removes an op from an edge, an all-zero node group
removes the node. This module turns such weights into a discrete *genotype*,
the cell description that the evaluation network is built from, counts the
kept ops and nodes, and reads and writes genotypes (JSON, and a registry of
known cells). Pictures are in ``viz``; parameter counts, taken from the
evaluation network's modules, in ``models.complexity.genotype_stats``.

Architecture weights are a pytree ``{'normal': cell, 'reduce': cell}`` where
``cell = {'node_0': (2, n_ops), ..., f'node_{k}': (k + 2, n_ops)}``. Row i of
node k holds the weights of the edge from predecessor i (0 and 1 are the two
cell inputs, i >= 2 is intermediate node i - 2) and column o the weight of op
``ops[o]`` (Wu et al. 2021, Eq. 1). In a genotype nodes are numbered as in
DARTS: 0 and 1 are the cell inputs, intermediate node k is numbered k + 2.

References:
  Wu et al. 2021, "Neural Architecture Search as Sparse Supernet", Eq. 1, 3
  and Figure 2; Liu, Simonyan and Yang 2019 (DARTS) for the search space.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from sparsenas_jax import search_space

_NODE_KEY = re.compile(r'node_(\d+)\Z')

Edge = tuple[int, str, float]  # (input node, op name, weight)
PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class Node:
  """A live intermediate node of a derived cell.

  Attributes:
    index: the node's number in the cell (DARTS numbering: >= 2).
    inputs: the kept ``(input_node, op_name, weight)`` triples, each an op
      applied to an earlier node (0 or 1 for the cell inputs) and scaled by
      its architecture weight; the node sums them (Wu et al. 2021, Eq. 1).
  """
  index: int
  inputs: tuple[Edge, ...]

  def __post_init__(self):
    # Lists (from JSON or hand-written code) become tuples so that the
    # genotype stays immutable and hashable.
    object.__setattr__(self, 'index', int(self.index))
    object.__setattr__(self, 'inputs', tuple(
        (int(i), str(op), float(w)) for i, op, w in self.inputs))


@dataclasses.dataclass(frozen=True)
class Genotype:
  """A derived (discrete) mixed-path architecture: a normal and a reduce cell.

  Unlike a DARTS genotype, a node may keep any number of inputs, several ops
  may share an edge, and nodes may be missing: node indices need not be
  contiguous, and inputs refer to nodes by their DARTS number.

  Attributes:
    normal: the live nodes of the normal cell, in increasing index order.
    normal_concat: the nodes concatenated into the normal cell's output.
    reduce: the live nodes of the reduction cell.
    reduce_concat: the nodes concatenated into the reduction cell's output.
    ops: the candidate ops of the search the genotype came from.
  """
  normal: tuple[Node, ...]
  normal_concat: tuple[int, ...]
  reduce: tuple[Node, ...]
  reduce_concat: tuple[int, ...]
  ops: tuple[str, ...] = search_space.DARTS_OPS

  def __post_init__(self):
    object.__setattr__(self, 'ops', tuple(str(op) for op in self.ops))
    if not self.ops or len(set(self.ops)) != len(self.ops):
      raise ValueError(
          f'Genotype: ops must be a non-empty list of distinct names; got '
          f'{list(self.ops)}.')
    for cell_type in search_space.CELL_TYPES:
      nodes = tuple(n if isinstance(n, Node) else Node(*n)
                    for n in getattr(self, cell_type))
      concat = tuple(int(i) for i in getattr(self, f'{cell_type}_concat'))
      object.__setattr__(self, cell_type, nodes)
      object.__setattr__(self, f'{cell_type}_concat', concat)
      check_cell_nodes(f'{cell_type} cell: ', nodes, concat, self.ops,
                       inputs=2, input_name='input node')

  def cell(self, cell_type: str) -> tuple[tuple[Node, ...], tuple[int, ...]]:
    """Returns ``(nodes, concat)`` of ``'normal'`` or ``'reduce'``."""
    if cell_type not in search_space.CELL_TYPES:
      raise ValueError(
          f'Genotype.cell: cell_type must be one of '
          f'{search_space.CELL_TYPES}; got {cell_type!r}.')
    return getattr(self, cell_type), getattr(self, f'{cell_type}_concat')

  def to_json(self) -> str:
    """Serialises the genotype; ``Genotype.from_json`` reads it back exactly.

    Schema::

      {"ops": [...],
       "normal": {"nodes": [{"index": 2, "inputs": [[0, "sep_conv_3x3", 0.41],
                                                     ...]}, ...],
                  "concat": [2, 3]},
       "reduce": {...}}

    Weights are written with Python's shortest round-tripping float repr.

    Returns:
      The JSON text, one input triple per line.
    """
    dump = json.dumps
    lines = ['{', f'  "ops": {dump(list(self.ops))},']
    for c, cell_type in enumerate(search_space.CELL_TYPES):
      nodes, concat = self.cell(cell_type)
      lines.append(f'  {dump(cell_type)}: {{')
      lines.append('    "nodes": [')
      for n, node in enumerate(nodes):
        lines.append(f'      {{"index": {node.index}, "inputs": [')
        for e, edge in enumerate(node.inputs):
          comma = ',' if e + 1 < len(node.inputs) else ''
          lines.append(f'        {dump(list(edge))}{comma}')
        comma = ',' if n + 1 < len(nodes) else ''
        lines.append(f'      ]}}{comma}')
      lines.append('    ],')
      lines.append(f'    "concat": {dump(list(concat))}')
      lines.append('  },' if c + 1 < len(search_space.CELL_TYPES) else '  }')
    lines.append('}')
    return '\n'.join(lines)

  @classmethod
  def from_json(cls, text: str, *,
                valid_ops: Optional[Sequence[str]] = search_space.DARTS_OPS
                ) -> Genotype:
    """Parses ``to_json`` output.

    Args:
      text: the JSON text.
      valid_ops: op names a genotype may use (default the DARTS ops); None
        accepts whatever the text's ``ops`` list names.

    Returns:
      The genotype.

    Raises:
      ValueError: with one line naming the problem, if the text is not JSON,
        does not follow the schema, names an op outside ``valid_ops`` or an
        input node that does not exist.
    """
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'not valid JSON ({e})') from None
    if not isinstance(data, dict):
      raise ValueError(f'expected a JSON object at the top level; got '
                       f'{type(data).__name__}')
    for key in ('ops',) + search_space.CELL_TYPES:
      if key not in data:
        raise ValueError(f'missing key {key!r}')
    ops = data['ops']
    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
      raise ValueError('"ops" must be a list of op names')
    kwargs = {'ops': tuple(ops)}
    for cell_type in search_space.CELL_TYPES:
      nodes, concat = _cell_from_data(cell_type, data[cell_type])
      kwargs[cell_type] = nodes
      kwargs[f'{cell_type}_concat'] = concat
    if valid_ops is not None:
      names = [(op, '"ops"') for op in ops] + [
          (op, f'{cell_type} cell, node {node.index}')
          for cell_type in search_space.CELL_TYPES
          for node in kwargs[cell_type]
          for _, op, _ in node.inputs]
      for op, where in names:
        if op not in valid_ops:
          raise ValueError(f'{where}: unknown op {op!r} (valid ops: '
                           f'{", ".join(valid_ops)})')
    return cls(**kwargs)


def _cell_from_data(cell_type: str, cell: Any):
  """Reads one cell of the JSON schema into ``(nodes, concat)``."""
  if (not isinstance(cell, dict) or not isinstance(cell.get('nodes'), list)
      or not isinstance(cell.get('concat'), list)):
    raise ValueError(f'{cell_type} cell: expected {{"nodes": [...], '
                     f'"concat": [...]}}')
  nodes = []
  for node in cell['nodes']:
    if (not isinstance(node, dict) or not _is_int(node.get('index'))
        or not isinstance(node.get('inputs'), list)):
      raise ValueError(f'{cell_type} cell: each node must be {{"index": int, '
                       f'"inputs": [...]}}; got {json.dumps(node)}')
    for edge in node['inputs']:
      if not (isinstance(edge, list) and len(edge) == 3 and _is_int(edge[0])
              and isinstance(edge[1], str) and _is_real(edge[2])):
        raise ValueError(
            f'{cell_type} cell, node {node["index"]}: each input must be '
            f'[input_node, op_name, weight]; got {json.dumps(edge)}')
    nodes.append(Node(node['index'], node['inputs']))
  if not all(_is_int(i) for i in cell['concat']):
    raise ValueError(f'{cell_type} cell: "concat" must list node indices')
  return tuple(nodes), tuple(cell['concat'])


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_cell_nodes(where: str, nodes, concat, ops, *,
                     inputs: int, input_name: str) -> None:
  """Raises ValueError (one line) unless a cell is a well-formed DAG.

  Shared by the CNN and the recurrent genotypes: states ``0 … inputs - 1``
  are the cell's inputs, every node (with ``.index`` and ``.inputs``, a
  sequence of ``(state, op, weight)``) is numbered after them in increasing
  order and reads only earlier states, each (state, op) at most once, with a
  known op and a finite weight; ``concat`` lists distinct nodes.

  Args:
    where: the message's prefix, e.g. ``'normal cell: '`` (may be empty).
    nodes: the cell's nodes.
    concat: the node numbers of the cell's output.
    ops: the valid op names.
    inputs: how many input states precede the nodes (2 for a CNN cell, 1 for
      the recurrent cell's s₀).
    input_name: what an input state is called in messages.
  """
  if not nodes:
    raise ValueError(f'{where}has no nodes (a cell needs at least one).')
  existing = list(range(inputs))
  for node in nodes:
    if node.index < inputs or node.index <= existing[-1]:
      raise ValueError(
          f'{where}node indices must be >= {inputs} and increasing; got node '
          f'{node.index} after {existing[-1]}.')
    if not node.inputs:
      raise ValueError(f'{where}node {node.index}: has no inputs.')
    seen = set()
    for src, op, w in node.inputs:
      if src not in existing:
        raise ValueError(
            f'{where}node {node.index}: {input_name} {src} does not exist '
            f'(it must be one of the earlier states {existing}).')
      if op not in ops:
        raise ValueError(
            f'{where}node {node.index}: unknown op {op!r} (the genotype\'s '
            f'ops: {", ".join(ops)}).')
      if not math.isfinite(w):
        raise ValueError(
            f'{where}node {node.index}: weight of ({src}, {op}) is {w}.')
      if (src, op) in seen:
        raise ValueError(
            f'{where}node {node.index}: ({src}, {op}) appears twice.')
      seen.add((src, op))
    existing.append(node.index)
  live = existing[inputs:]
  if not concat or len(set(concat)) != len(concat) or not set(concat) <= set(
      live):
    raise ValueError(f'{where}concat {list(concat)} must list distinct nodes '
                     f'of the cell ({live}).')


# -- Derivation --------------------------------------------------------------


def _cell_arrays(arch, cell_type: str, n_ops: Optional[int], caller: str):
  """Returns the node arrays of one cell as float64 NumPy, checking shapes."""
  cell = arch[cell_type]
  if not isinstance(cell, Mapping) or not cell:
    raise ValueError(f'{caller}: arch[{cell_type!r}] must be a non-empty '
                     f'mapping node_0, node_1, ... -> array.')
  keys = sorted(cell, key=lambda k: (_node_number(k), str(k)))
  arrays = [np.asarray(cell[k], dtype=np.float64) for k in keys]
  if n_ops is None:
    n_ops = arrays[0].shape[-1] if arrays[0].ndim else 0
  shapes = search_space.arch_shapes(len(keys), n_ops)
  shapes_ok = all(a.shape == s for a, s in zip(arrays, shapes.values()))
  if keys != list(shapes) or not shapes_ok or n_ops < 1:
    expected = ', '.join(f'{k} {s}' for k, s in shapes.items())
    got = ', '.join(f'{k} {a.shape}' for k, a in zip(keys, arrays))
    raise ValueError(
        f'{caller}: arch[{cell_type!r}] does not match {n_ops} ops: expected '
        f'{expected}; got {got}.')
  for k, a in enumerate(arrays):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{caller}: arch[{cell_type!r}][\'node_{k}\'] has '
                       f'non-finite weights.')
  return arrays


def _node_number(key) -> int:
  m = _NODE_KEY.match(str(key))
  return int(m.group(1)) if m else -1


def _kept_edges(arrays, threshold: float):
  """Applies the liveness rule to one cell.

  Node k keeps the entries with |weight| > threshold whose input is live; the
  cell inputs are always live and a node is live iff it keeps an entry.

  Returns:
    A list, per node k, of kept ``(input_row, op_column, weight)`` triples
    (empty for a dead node).
  """
  live = [True, True]
  kept = []
  for a in arrays:
    rows, cols = np.nonzero(np.abs(a) > threshold)
    edges = [(int(i), int(o), float(a[i, o]))
             for i, o in zip(rows, cols) if live[i]]
    kept.append(edges)
    live.append(bool(edges))
  return kept


def derive_genotype(arch, ops: Sequence[str] = search_space.DARTS_OPS, *,
                    threshold: float = 0.0) -> Genotype:
  """Derives the mixed-path architecture from sparse architecture weights.

  Following Wu et al. (2021, Sec. "Sparse Supernet") the architecture is the
  supernet with zero-weight ops and all-zero nodes removed. Per cell and per
  intermediate node in order, every ``(input, op, weight)`` with a nonzero
  weight and a live input is kept; the cell inputs are live and a node is
  live iff it keeps an input. A node fed only by removed nodes is thereby
  removed too. The cell output concatenates the live nodes.

  Args:
    arch: ``{'normal': cell, 'reduce': cell}`` with ``cell = {'node_k':
      array of shape (k + 2, len(ops))}`` (NumPy or JAX arrays, on host).
    ops: the op name of each column.
    threshold: weights with ``|w| <= threshold`` count as zero. The default 0
      keeps exactly the nonzero weights, as the proximal search produces;
      a positive value magnitude-prunes a dense ``arch``.

  Returns:
    The ``Genotype``, weights as Python floats.

  Raises:
    ValueError: if ``arch`` does not match ``ops`` in shape, has non-finite
      weights, or a cell has no live node.

  References:
    Wu et al. 2021, Eq. 1, 3 and Figure 2.
  """
  ops = tuple(ops)
  if (not isinstance(arch, Mapping)
      or set(arch) != set(search_space.CELL_TYPES)):
    got = sorted(map(str, arch)) if isinstance(arch, Mapping) else type(arch)
    raise ValueError(f'derive_genotype: arch must have exactly the keys '
                     f'{list(search_space.CELL_TYPES)}; got {got}.')
  kwargs = {}
  for cell_type in search_space.CELL_TYPES:
    arrays = _cell_arrays(arch, cell_type, len(ops), 'derive_genotype')
    nodes = tuple(
        Node(k + 2, tuple((i, ops[o], w) for i, o, w in edges))
        for k, edges in enumerate(_kept_edges(arrays, threshold)) if edges)
    if not nodes:
      raise ValueError(
          f'derive_genotype: the {cell_type} cell would be empty: every node '
          f'lost all its weights (the sparsity strength λ is too high; lower '
          f'the λ ramp).')
    kwargs[cell_type] = nodes
    kwargs[f'{cell_type}_concat'] = tuple(n.index for n in nodes)
  return Genotype(ops=ops, **kwargs)


def sparsity_counts(arch, *, threshold: float = 0.0) -> dict[str, int]:
  """Counts nonzero weights and live nodes of a (possibly dense) arch.

  Plain NumPy on host values (not for use under ``jit``), for progress logs.
  Every cell type in ``arch`` is counted (e.g. both 'normal' and 'reduce').

  Args:
    arch: architecture weights, ``{cell_type: {'node_k': (k + 2, n_ops)}}``.
    threshold: as in ``derive_genotype``.

  Returns:
    A dict of ints, summed over cell types:
      ops_nonzero: weights with ``|w| > threshold``;
      ops_total: all weights;
      ops_kept: the nonzero weights whose input node is live, i.e. the ops
        ``derive_genotype`` keeps (at most ``ops_nonzero``);
      nodes_live: live intermediate nodes (the liveness rule of
        ``derive_genotype``);
      nodes_total: all intermediate nodes.
  """
  counts = dict(ops_nonzero=0, ops_total=0, ops_kept=0, nodes_live=0,
                nodes_total=0)
  for cell_type in sorted(arch):
    arrays = _cell_arrays(arch, cell_type, None, 'sparsity_counts')
    kept = _kept_edges(arrays, threshold)
    counts['ops_nonzero'] += sum(
        int(np.count_nonzero(np.abs(a) > threshold)) for a in arrays)
    counts['ops_total'] += sum(a.size for a in arrays)
    counts['ops_kept'] += sum(len(e) for e in kept)
    counts['nodes_live'] += sum(bool(e) for e in kept)
    counts['nodes_total'] += len(arrays)
  return counts


# -- Registry and files ------------------------------------------------------


def _unit_cell(pairs):
  """A DARTS cell from ``[(op, input), (op, input)]`` per node, weights 1."""
  nodes = tuple(Node(k + 2, tuple((i, op, 1.0) for op, i in node))
                for k, node in enumerate(pairs))
  return nodes, tuple(n.index for n in nodes)


def _darts_v2() -> Genotype:
  normal, normal_concat = _unit_cell([
      [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)],
      [('sep_conv_3x3', 0), ('sep_conv_3x3', 1)],
      [('sep_conv_3x3', 1), ('skip_connect', 0)],
      [('skip_connect', 0), ('dil_conv_3x3', 2)],
  ])
  reduce, reduce_concat = _unit_cell([
      [('max_pool_3x3', 0), ('max_pool_3x3', 1)],
      [('skip_connect', 2), ('max_pool_3x3', 1)],
      [('max_pool_3x3', 0), ('skip_connect', 2)],
      [('skip_connect', 2), ('max_pool_3x3', 1)],
  ])
  return Genotype(normal, normal_concat, reduce, reduce_concat,
                  search_space.DARTS_OPS)


GENOTYPES: dict[str, Genotype] = {
    # DARTS (second order) CIFAR-10 cells, Liu et al. 2019, unit weights.
    'darts_v2': _darts_v2(),
}


def save_genotype(genotype: Genotype, path: PathLike) -> None:
  """Writes ``genotype.to_json()`` to ``path``, creating parent folders."""
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(genotype.to_json() + '\n')


def load_genotype(path: PathLike, *,
                  valid_ops: Optional[Sequence[str]] = search_space.DARTS_OPS
                  ) -> Genotype:
  """Reads a genotype written by ``save_genotype`` (or by hand).

  Args:
    path: the JSON file.
    valid_ops: op names the genotype may use (default the DARTS ops); None
      accepts the file's own ``ops`` list.

  Returns:
    The genotype.

  Raises:
    ValueError: with one line naming the file and the problem, if the file is
      not JSON, breaks the schema, names an unknown op or an input node that
      does not exist.
    OSError: if the file cannot be read.
  """
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    return Genotype.from_json(text, valid_ops=valid_ops)
  except ValueError as e:  # includes UnicodeDecodeError
    raise ValueError(f'load_genotype: {os.fspath(path)}: {e}') from None


def resolve_genotype(name_or_path: Union[str, os.PathLike, Genotype], *,
                     valid_ops: Optional[Sequence[str]] = search_space.DARTS_OPS
                     ) -> Genotype:
  """Returns a registered genotype by name, or loads one from a JSON file.

  Args:
    name_or_path: a key of ``GENOTYPES`` (e.g. ``'darts_v2'``), a path to a
      JSON file, or a ``Genotype`` (returned as is).
    valid_ops: passed to ``load_genotype``.

  Returns:
    The genotype.

  Raises:
    ValueError: if the name is neither registered nor an existing file, or
      the file is invalid.
  """
  if isinstance(name_or_path, Genotype):
    return name_or_path
  if isinstance(name_or_path, str) and name_or_path in GENOTYPES:
    return GENOTYPES[name_or_path]
  if os.path.isfile(name_or_path):
    return load_genotype(name_or_path, valid_ops=valid_ops)
  raise ValueError(
      f'resolve_genotype: {os.fspath(name_or_path)!r} is neither a registered '
      f'genotype ({", ".join(sorted(GENOTYPES))}) nor a file.')
