"""The evaluation network written NHWC, the test's readable specification.

``models.eval_network`` as it was before it went channels first: NHWC
feature maps, ``lax`` convolutions (the depthwise ones grouped),
``reduce_window`` pools, the same parameter tree. ``test_eval_network``
checks that the channels-first network computes the same function, its
batch statistics and its gradients with these modules' variables. Not part
of the package.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import search_space
from sparsenas_jax.models.eval_network import live_nodes
from sparsenas_jax.models.ops import avg_pool_3x3
from sparsenas_jax.models.ops import BN_EPS
from sparsenas_jax.models.ops import conv2d
from sparsenas_jax.models.ops import conv_init
from sparsenas_jax.models.ops import max_pool_3x3

AUX_HEAD = 'aux_head'


def _bn(train: bool, name: Optional[str] = None) -> nn.BatchNorm:
  """Affine BN with running statistics (PyTorch's BatchNorm2d defaults)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=BN_EPS, name=name)


def _kernel(module: nn.Module, name: str, shape) -> jax.Array:
  return module.param(name, conv_init, shape)


class ConvBN(nn.Module):
  """(ReLU,) conv without bias, affine BN: stems and cell preprocessing.

  Attributes:
    channels: output channels.
    kernel_size: odd kernel size.
    stride: spatial stride.
    relu: apply ReLU before the conv (DARTS's ReLUConvBN) or not (the stem).
  """
  channels: int
  kernel_size: int = 1
  stride: int = 1
  relu: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    k = self.kernel_size
    kernel = _kernel(self, 'kernel', (k, k, x.shape[-1], self.channels))
    x = nn.relu(x) if self.relu else x
    return _bn(train)(conv2d(x, kernel, stride=self.stride))


class DepthwiseSeparable(nn.Module):
  """ReLU, depthwise kxk conv, pointwise 1x1 conv, affine BN.

  ``dilation=2``: DARTS's dil_conv_kxk; ``dilation=1``: half a sep_conv.
  """
  channels: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    k, c = self.kernel_size, x.shape[-1]
    depthwise = _kernel(self, 'depthwise', (k, k, 1, c))
    pointwise = _kernel(self, 'pointwise', (1, 1, c, self.channels))
    x = conv2d(nn.relu(x), depthwise, stride=self.stride,
               dilation=self.dilation, groups=c)
    return _bn(train)(conv2d(x, pointwise))


class FactorizedReduce(nn.Module):
  """ReLU, two 1x1 stride-2 convs (one on the input shifted by a pixel),
  concatenated, affine BN: halves H and W (``ops.FactorizedReduce``)."""
  channels: int

  @nn.compact
  def __call__(self, x, train: bool):
    if self.channels % 2:
      raise ValueError(f'FactorizedReduce needs an even channel count; got '
                       f'{self.channels}.')
    c, half = x.shape[-1], self.channels // 2
    k0 = _kernel(self, 'kernel_0', (1, 1, c, half))
    k1 = _kernel(self, 'kernel_1', (1, 1, c, half))
    x = nn.relu(x)
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, x.shape[1] % 2),
                                        (0, x.shape[2] % 2), (0, 0)))
    out = jnp.concatenate([conv2d(x, k0, stride=2),
                           conv2d(shifted, k1, stride=2)], axis=-1)
    return _bn(train)(out)


class EvalOp(nn.Module):
  """One kept op of a derived cell, C channels to C channels.

  Attributes:
    op: a name from ``search_space.DARTS_OPS``.
    channels: C.
    stride: 2 on the edges leaving a reduction cell's inputs, else 1.
  """
  op: str
  channels: int
  stride: int = 1

  @property
  def is_identity(self) -> bool:
    return self.op == 'skip_connect' and self.stride == 1

  @nn.compact
  def __call__(self, x, train: bool):
    op, c, s = self.op, self.channels, self.stride
    if op == 'max_pool_3x3':
      return max_pool_3x3(x, s)
    if op == 'avg_pool_3x3':
      return avg_pool_3x3(x, s)
    if op == 'skip_connect':
      return x if s == 1 else FactorizedReduce(c, name='reduce')(x, train)
    if op not in search_space.CONV_OPS:
      raise ValueError(f'EvalOp: unknown op {op!r}.')
    k, dilation, blocks = search_space.CONV_OPS[op]
    if blocks == 2:  # sep_conv: the first block keeps the input channels
      x = DepthwiseSeparable(x.shape[-1], k, s, dilation,
                             name='block_0')(x, train)
      return DepthwiseSeparable(c, k, 1, dilation, name='block_1')(x, train)
    return DepthwiseSeparable(c, k, s, dilation, name='block_0')(x, train)


def drop_path(x: jax.Array, drop_prob: jax.Array, key: jax.Array
              ) -> jax.Array:
  """Zeroes whole examples with probability ``drop_prob``, rescales the rest.

  As DARTS's ``drop_path``: a Bernoulli(1 - p) mask per example, then
  division by 1 - p so that the expectation is unchanged.
  """
  keep = 1.0 - drop_prob
  mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, 1, 1))
  return jnp.where(mask, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


class EvalCell(nn.Module):
  """A derived cell: preprocess both inputs, sum each node's kept ops.

  Attributes:
    nodes: the genotype's nodes of this cell type.
    concat: the nodes concatenated into the output.
    channels: C of this cell.
    reduction: a reduction cell (stride 2 on edges from the inputs).
    reduction_prev: the previous cell halved the resolution, so input 0 is
      reduced by a factorized reduce.
    scale_by_arch_weights: multiply each op by its searched weight.
    drop_path: apply drop path (with ``drop_prob``) in training.
  """
  nodes: tuple[Any, ...]
  concat: tuple[int, ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  scale_by_arch_weights: bool = False
  drop_path: bool = True

  @nn.compact
  def __call__(self, s0, s1, train: bool, drop_prob):
    c = self.channels
    if self.reduction_prev:
      s0 = FactorizedReduce(c, name='preprocess0')(s0, train)
    else:
      s0 = ConvBN(c, name='preprocess0')(s0, train)
    s1 = ConvBN(c, name='preprocess1')(s1, train)
    states = {0: s0, 1: s1}
    for node in live_nodes(self.nodes, self.concat):
      total = None
      for src, op_name, weight in node.inputs:
        stride = search_space.edge_stride(self.reduction, src)
        op = EvalOp(op_name, c, stride,
                    name=f'node_{node.index}_from_{src}_{op_name}')
        h = op(states[src], train)
        if train and self.drop_path and not op.is_identity:
          h = drop_path(h, drop_prob, self.make_rng('dropout'))
        if self.scale_by_arch_weights:
          h = h * jnp.asarray(weight, h.dtype)
        total = h if total is None else total + h
      states[node.index] = total
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nn.Module):
  """DARTS's auxiliary classifier (module docstring), from the 2/3 point."""
  num_classes: int
  stride: int = 3
  second_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(x)
    window = min(5, x.shape[1]), min(5, x.shape[2])
    x = nn.avg_pool(x, window, (self.stride, self.stride), 'VALID')
    x = ConvBN(128, 1, relu=False, name='conv_0')(x, train)
    x = nn.relu(x)
    kernel = _kernel(self, 'conv_1', x.shape[1:3] + (128, 768))
    x = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), 'VALID',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    if self.second_bn:
      x = _bn(train, name='bn_1')(x)
    x = nn.relu(x)
    return nn.Dense(self.num_classes, kernel_init=conv_init,
                    name='classifier')(x.reshape(x.shape[0], -1))


class EvalNetwork(nn.Module):
  """DARTS's evaluation network around a mixed-path genotype.

  Attributes:
    genotype: the derived architecture (``genotype.Genotype``).
    C: initial channels (36 on CIFAR, 48 on ImageNet).
    num_classes: classifier outputs.
    layers: cells; reductions at layers // 3 and 2 * layers // 3, where the
      channels double.
    auxiliary: add the auxiliary head after cell 2 * layers // 3.
    stem: 'cifar' (3x3 conv to 3C, BN) or 'imagenet' (three stride-2 3x3
      convs: 224 -> 28).
    scale_by_arch_weights: see the module docstring.
    drop_path: apply drop path in training.
  """
  genotype: genotype_lib.Genotype
  C: int  # pylint: disable=invalid-name
  num_classes: int
  layers: int
  auxiliary: bool = True
  stem: str = 'cifar'
  scale_by_arch_weights: bool = False
  drop_path: bool = True

  @property
  def reduction_layers(self) -> tuple[int, int]:
    return search_space.reduction_layers(self.layers)

  @nn.compact
  def __call__(self, x, *, train: bool, drop_prob=0.0):
    """Returns ``(logits, aux_logits)``; aux is None unless training with
    ``auxiliary``."""
    c = self.C
    if self.stem == 'cifar':
      s0 = s1 = ConvBN(3 * c, 3, relu=False, name='stem')(x, train)
      reduction_prev = False
    else:
      s0 = ConvBN(c // 2, 3, 2, relu=False, name='stem0_conv0')(x, train)
      s0 = ConvBN(c, 3, 2, name='stem0_conv1')(s0, train)
      s1 = ConvBN(c, 3, 2, name='stem1')(s0, train)
      reduction_prev = True
    drop_prob = jnp.asarray(drop_prob, jnp.float32)
    aux = None
    for i in range(self.layers):
      reduction = i in self.reduction_layers
      c = c * 2 if reduction else c
      nodes, concat = self.genotype.cell('reduce' if reduction else 'normal')
      cell = EvalCell(nodes, concat, c, reduction, reduction_prev,
                      self.scale_by_arch_weights, self.drop_path,
                      name=f'cell_{i}')
      s0, s1 = s1, cell(s0, s1, train, drop_prob)
      reduction_prev = reduction
      if self.auxiliary and train and i == self.reduction_layers[1]:
        imagenet = self.stem == 'imagenet'
        aux = AuxiliaryHead(self.num_classes, 2 if imagenet else 3,
                            second_bn=not imagenet, name=AUX_HEAD)(s1, train)
    out = jnp.mean(s1, axis=(1, 2))
    logits = nn.Dense(self.num_classes, kernel_init=conv_init,
                      name='classifier')(out)
    return logits, aux
