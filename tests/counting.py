"""Independent counts for the tests: parameters of derived ops and networks.

Closed forms written from DARTS's op definitions and layer list, not from
the Flax modules (which ``models.complexity.genotype_stats`` counts).
Convolutions have no bias; every BN is affine (scale and offset, 2c).
"""

import re


def _relu_conv_bn(c_in, c_out, k=1):
  return k * k * c_in * c_out + 2 * c_out


def _factorized_reduce(c_in, c_out):
  return 2 * c_in * (c_out // 2) + 2 * c_out


def op_params(op, c, *, factorized_reduce):
  """Parameters of one derived op at c channels in and out.

  sep_conv_k = 2 (c k² + c² + 2c): twice (ReLU, depthwise kxk, pointwise
  1x1, BN); dil_conv_k = c k² + c² + 2c; pools 0; skip_connect 0, or c² + 2c
  as a factorized reduce (two 1x1 stride-2 convs c -> c/2, concat, BN).
  """
  m = re.fullmatch(r'(sep|dil)_conv_(\d+)x\2', op)
  if m:
    k = int(m.group(2))
    block = c * k * k + c * c + 2 * c
    return 2 * block if m.group(1) == 'sep' else block
  if op in ('max_pool_3x3', 'avg_pool_3x3'):
    return 0
  if op == 'skip_connect':
    return _factorized_reduce(c, c) if factorized_reduce else 0
  raise ValueError(f'no parameter formula for op {op!r}')


def cell_op_params(genotype, c, cell_type):
  """Parameters of a cell's kept ops (preprocessing not counted)."""
  nodes, _ = genotype.cell(cell_type)
  return sum(
      op_params(op, c, factorized_reduce=cell_type == 'reduce' and src < 2)
      for node in nodes for src, op, _ in node.inputs)


def eval_network_params(genotype, C, num_classes, layers, stem='cifar',  # pylint: disable=invalid-name
                        in_channels=3):
  """Parameters of EvalNetwork without the auxiliary head."""
  if stem == 'cifar':
    total = _relu_conv_bn(in_channels, 3 * C, 3)
    c_pp = c_p = 3 * C
    reduction_prev = False
  else:
    total = (_relu_conv_bn(in_channels, C // 2, 3) + _relu_conv_bn(C // 2, C, 3) +
             _relu_conv_bn(C, C, 3))
    c_pp = c_p = C
    reduction_prev = True
  c = C
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    c = 2 * c if reduction else c
    cell_type = 'reduce' if reduction else 'normal'
    total += (_factorized_reduce(c_pp, c) if reduction_prev
              else _relu_conv_bn(c_pp, c))
    total += _relu_conv_bn(c_p, c)
    total += cell_op_params(genotype, c, cell_type)
    c_pp, c_p = c_p, len(genotype.cell(cell_type)[1]) * c
    reduction_prev = reduction
  return total + c_p * num_classes + num_classes
