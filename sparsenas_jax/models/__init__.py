"""Flax modules: the sparse supernet (search) and the evaluation network.

  from sparsenas_jax import models
  arch = models.init_arch(jax.random.key(0), nodes=4)
  net = models.SearchNetwork(C=16, num_classes=10, layers=8)
  params = net.init(jax.random.key(1), images, arch)['params']

  eval_net = models.EvalNetwork(genotype, C=36, num_classes=10, layers=20)
  variables = models.init_variables(eval_net, images[:1], seed=0)
"""

from sparsenas_jax.models.complexity import count_macs
from sparsenas_jax.models.complexity import genotype_stats
from sparsenas_jax.models.eval_network import count_eval_params
from sparsenas_jax.models.eval_network import EvalNetwork
from sparsenas_jax.models.eval_network import init_variables
from sparsenas_jax.models.ops import avg_pool_3x3
from sparsenas_jax.models.ops import batch_norm
from sparsenas_jax.models.ops import conv2d
from sparsenas_jax.models.ops import depthwise_conv2d
from sparsenas_jax.models.ops import DilConv
from sparsenas_jax.models.ops import FactorizedReduce
from sparsenas_jax.models.ops import make_op
from sparsenas_jax.models.ops import max_pool_3x3
from sparsenas_jax.models.ops import ReLUConvBN
from sparsenas_jax.models.ops import SepConv
from sparsenas_jax.models.rnn import init_rnn_variables
from sparsenas_jax.models.rnn import RNNEvalCell
from sparsenas_jax.models.rnn import RNNModel
from sparsenas_jax.models.rnn import RNNSearchCell
from sparsenas_jax.models.supernet import check_arch
from sparsenas_jax.models.supernet import count_params
from sparsenas_jax.models.supernet import init_arch
from sparsenas_jax.models.supernet import MixedOp
from sparsenas_jax.models.supernet import SearchCell
from sparsenas_jax.models.supernet import SearchNetwork
from sparsenas_jax.search_space import arch_shapes
from sparsenas_jax.search_space import DARTS_OPS
from sparsenas_jax.search_space import rnn_arch_shapes
from sparsenas_jax.search_space import RNN_OPS

__all__ = [
    'DARTS_OPS', 'DilConv', 'EvalNetwork', 'FactorizedReduce', 'MixedOp',
    'RNNEvalCell', 'RNNModel', 'RNNSearchCell', 'RNN_OPS', 'ReLUConvBN',
    'SearchCell', 'SearchNetwork', 'SepConv', 'arch_shapes', 'avg_pool_3x3',
    'batch_norm', 'check_arch', 'conv2d', 'count_eval_params', 'count_macs',
    'count_params', 'depthwise_conv2d', 'genotype_stats', 'init_arch',
    'init_rnn_variables', 'init_variables', 'make_op', 'max_pool_3x3',
    'rnn_arch_shapes',
]
