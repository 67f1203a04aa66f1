"""Independent counts for the tests: parameters of an evaluation network.

Written from DARTS's layer list with the op formulas of
``genotype.genotype_stats``, not from the Flax modules.
"""

from sparsenas_jax import genotype as genotype_lib


def _relu_conv_bn(c_in, c_out, k=1):
  return k * k * c_in * c_out + 2 * c_out


def _factorized_reduce(c_in, c_out):
  return 2 * c_in * (c_out // 2) + 2 * c_out


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
    total += genotype_lib.genotype_stats(genotype, c)[cell_type]['params']
    c_pp, c_p = c_p, len(genotype.cell(cell_type)[1]) * c
    reduction_prev = reduction
  return total + c_p * num_classes + num_classes
