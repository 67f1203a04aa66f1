"""Model complexity: multiply-adds of a function, parameters of a genotype.

``count_macs`` counts what the NAS literature counts (DARTS's
"multiply-adds", the ImageNet mobile setting's < 600M): the
multiply-accumulates of convolutions and matrix products, read off the
function's jaxpr (nothing runs). Element-wise ops, pools and normalisation
are not counted.

``genotype_stats`` counts the kept ops, nodes and op parameters of a derived
cell pair, the parameters taken from the evaluation network's own op modules
(``eval_network.EvalOp``) by shape evaluation (nothing compiles).

  macs = count_macs(lambda x: net.apply(variables, x, train=False), images)
  stats = genotype_stats(genotype, C=16)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax.extend import core
import jax.numpy as jnp
import numpy as np

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import search_space
from sparsenas_jax.models import eval_network
from sparsenas_jax.models.supernet import count_params


def _eqn_macs(eqn) -> int:
  name = eqn.primitive.name
  if name == 'conv_general_dilated':
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_dim = eqn.params['dimension_numbers'].rhs_spec[0]
    # Each output element: (kernel elements per output feature) MACs.
    return int(np.prod(out)) * int(np.prod(rhs)) // rhs[out_feature_dim]
  if name == 'dot_general':
    (lhs_contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return int(np.prod(out)) * int(np.prod([lhs[d] for d in lhs_contract]))
  return 0


def _subjaxprs(eqn):
  for value in eqn.params.values():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, core.Jaxpr):
        yield v


def _jaxpr_macs(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    total += _eqn_macs(eqn)
    if eqn.primitive.name in ('scan', 'while'):
      raise NotImplementedError(
          'count_macs: loops are not supported (their trip counts are not '
          'in the jaxpr); count an unrolled function.')
    for sub in _subjaxprs(eqn):
      total += _jaxpr_macs(sub)
  return total


def count_macs(fn: Callable[..., Any], *args: Any) -> int:
  """Multiply-adds of ``fn(*args)``: convolutions and matrix products.

  Args:
    fn: a JAX-traceable function.
    *args: arrays or ``jax.ShapeDtypeStruct`` s (only shapes matter).

  Returns:
    The number of multiply-accumulate operations of one call.
  """
  return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


@functools.lru_cache(maxsize=None)
def _op_params(op: str, channels: int, stride: int) -> int:
  """Learned parameters of ``EvalOp(op, channels, stride)`` (BN affine
  scale and offset included, running statistics not)."""
  module = eval_network.EvalOp(op, channels, stride)
  x = jax.ShapeDtypeStruct((channels, 1, 8, 8), jnp.float32)  # [C, N, H, W]
  try:
    variables = jax.eval_shape(
        lambda x: module.init(jax.random.key(0), x, train=False), x)
  except ValueError as e:
    raise ValueError(f'genotype_stats: {e}') from None
  return count_params(variables.get('params', {}))


def genotype_stats(
    genotype: genotype_lib.Genotype,
    C: int,  # pylint: disable=invalid-name
) -> dict[str, dict[str, int]]:
  """Counts kept ops, nodes and op parameters of a derived cell pair.

  Parameters are those of the cell's ops as the evaluation network builds
  them (``eval_network.EvalOp``), each mapping C channels to C channels,
  with stride 2 on the reduction cell's edges from the two cell inputs
  (where ``skip_connect`` is a factorized reduce). The cell's input
  preprocessing, which depends on the previous cells, is not counted. Both
  cells are counted at the same C. Counts are cached per (op, C, stride).

  Args:
    genotype: the derived architecture.
    C: channels of the cell's nodes.

  Returns:
    ``{'normal': d, 'reduce': d, 'total': d}`` with
    ``d = {'ops_kept': int, 'nodes_kept': int, 'params': int}``.

  Raises:
    ValueError: if C is not a positive int, or is odd where the reduction
      cell needs a factorized reduce, or an op is not a DARTS op.
  """
  if not isinstance(C, (int, np.integer)) or isinstance(C, bool) or C < 1:
    raise ValueError(f'genotype_stats: C must be a positive int; got {C!r}.')
  C = int(C)  # pylint: disable=invalid-name
  stats = {}
  for cell_type in search_space.CELL_TYPES:
    nodes, _ = genotype.cell(cell_type)
    reduction = cell_type == 'reduce'
    params = sum(
        _op_params(op, C, search_space.edge_stride(reduction, src))
        for node in nodes for src, op, _ in node.inputs)
    stats[cell_type] = dict(
        ops_kept=sum(len(node.inputs) for node in nodes),
        nodes_kept=len(nodes), params=params)
  stats['total'] = {key: sum(stats[t][key] for t in search_space.CELL_TYPES)
                    for key in stats['normal']}
  return stats
