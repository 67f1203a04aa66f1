"""Multiply-adds of a JAX function, read off its jaxpr (nothing runs).

Counts what the NAS literature counts (DARTS's "multiply-adds", the ImageNet
mobile setting's < 600M): the multiply-accumulates of convolutions and
matrix products. Element-wise ops, pools and normalisation are not counted.

  macs = count_macs(lambda x: net.apply(variables, x, train=False), images)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.extend import core
import numpy as np


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
