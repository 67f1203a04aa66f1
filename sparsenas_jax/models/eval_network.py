"""The evaluation network: a derived mixed-path cell stacked and trained anew.

``EvalNetwork`` builds the discrete network of a ``genotype.Genotype`` as
DARTS's ``NetworkCIFAR`` / ``NetworkImageNet`` do (Liu et al. 2019), with the
mixed-path cells of SparseNAS (Wu et al. 2021): a node keeps any number of
``(input node, op)`` pairs (several ops may share an edge), nodes that the
search removed are absent, and the cell output concatenates the nodes of the
genotype's ``concat`` list, so a normal and a reduction cell may have
different output widths.

Ops differ from the search network's (``models.ops``) as in DARTS:

* every batch norm is affine and keeps running statistics (the
  ``batch_stats`` collection; PyTorch's momentum 0.1, eps 1e-5);
* pools have no batch norm after them;
* ``skip_connect`` is the identity, or a factorized reduce on the stride-2
  edges of a reduction cell.

Drop path (``drop_prob``, a traced scalar, so ramping it needs no
recompilation) zeroes each non-identity op's output per example with that
probability and rescales the rest, in training only.

Architecture weights. Whether the searched weight of a kept op scales its
output here is ``scale_by_arch_weights``; the default, False, sums the kept
ops with unit weights. Every conv op (and factorized reduce) ends in an
affine batch norm whose learned scale subsumes a constant factor, so for
them the flag changes only the initialisation; the pools and the identity
have no normalisation, and the searched magnitudes were learned against the
search network's non-affine batch norm after every pool, which is not here.
Unit weights are also what DARTS does with its derived cells. With the flag
on, each op's output is multiplied by its weight from the genotype (sign
included).

Layout. Inputs are images ``[N, H, W, C]`` and outputs logits, as for every
other model here; inside, feature maps are channels first, ``[C, N, H, W]``
(the modules below take and return that layout). Batch norm then reduces
over contiguous minor axes, 1x1 convs are one matmul ``[C_out, C] x
[C, N H W]``, and the depthwise convolutions (``models.depthwise``, the
per-backend primitive the search cell uses) and the separable pools
(``models.spatial``) read the maps as they are, without a transpose around
each op. Parameter shapes and names are the NHWC modules' (kernels HWIO).

Auxiliary head (training only, at 2/3 depth): ReLU, average pool (window 5,
stride 3 on CIFAR and 2 on ImageNet, valid padding; the window shrinks to
the feature map for small inputs), 1x1 conv to 128, BN, ReLU, a conv whose
kernel covers the remaining map, to 768 (BN on CIFAR only, as DARTS), ReLU,
linear classifier. On CIFAR (8x8 input) and ImageNet (7x7) this is DARTS's
head exactly.

  net = EvalNetwork(genotype, C=36, num_classes=10, layers=20)
  variables = init_variables(net, images[:1], seed=0)
  (logits, aux), updates = net.apply(
      variables, images, train=True, drop_prob=0.1,
      rngs={'dropout': key}, mutable=['batch_stats'])
  logits, _ = net.apply(variables, images, train=False)
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import search_space
from sparsenas_jax.models import depthwise
from sparsenas_jax.models import initialization
from sparsenas_jax.models import spatial
from sparsenas_jax.models.ops import BN_EPS
from sparsenas_jax.models.ops import conv_init
from sparsenas_jax.models.supernet import count_params

STEMS = ('cifar', 'imagenet')
AUX_HEAD = 'aux_head'


def _bn(train: bool, name: Optional[str] = None, axis: int = 0
        ) -> nn.BatchNorm:
  """Affine BN with running statistics (PyTorch's BatchNorm2d defaults),
  features on ``axis`` (0: ``[C, N, H, W]`` maps)."""
  return nn.BatchNorm(use_running_average=not train, axis=axis, momentum=0.9,
                      epsilon=BN_EPS, name=name)


def _kernel(module: nn.Module, name: str, shape) -> jax.Array:
  return module.param(name, conv_init, shape)


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """A same-padded conv of ``[C, N, H, W]`` with an HWIO kernel (stems)."""
  k = kernel.shape[0]
  if k == 1:
    return spatial.conv_1x1(x[:, :, ::stride, ::stride], kernel)
  pad = (k - 1) // 2
  return lax.conv_general_dilated(
      x, kernel.astype(x.dtype), (stride, stride), ((pad, pad), (pad, pad)),
      dimension_numbers=('CNHW', 'HWIO', 'CNHW'))


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
    kernel = _kernel(self, 'kernel', (k, k, x.shape[0], self.channels))
    x = nn.relu(x) if self.relu else x
    return _bn(train)(_conv(x, kernel, self.stride))


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
    k, c = self.kernel_size, x.shape[0]
    kernel = _kernel(self, 'depthwise', (k, k, 1, c))
    pointwise = _kernel(self, 'pointwise', (1, 1, c, self.channels))
    x = depthwise.conv(nn.relu(x)[None], kernel.astype(x.dtype), self.stride,
                       self.dilation)[0]
    return _bn(train)(spatial.conv_1x1(x, pointwise))


class FactorizedReduce(nn.Module):
  """ReLU, two 1x1 stride-2 convs (one on the input shifted by a pixel),
  concatenated, affine BN: halves H and W (``ops.FactorizedReduce``)."""
  channels: int

  @nn.compact
  def __call__(self, x, train: bool):
    if self.channels % 2:
      raise ValueError(f'FactorizedReduce needs an even channel count; got '
                       f'{self.channels}.')
    c, half = x.shape[0], self.channels // 2
    k0 = _kernel(self, 'kernel_0', (1, 1, c, half))
    k1 = _kernel(self, 'kernel_1', (1, 1, c, half))
    return _bn(train)(spatial.factorized_reduce(nn.relu(x), k0, k1))


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
      return spatial.max_pool_3x3(x, s)
    if op == 'avg_pool_3x3':
      return spatial.avg_pool_3x3(x, s)
    if op == 'skip_connect':
      return x if s == 1 else FactorizedReduce(c, name='reduce')(x, train)
    if op not in search_space.CONV_OPS:
      raise ValueError(f'EvalOp: unknown op {op!r}.')
    k, dilation, blocks = search_space.CONV_OPS[op]
    if blocks == 2:  # sep_conv: the first block keeps the input channels
      x = DepthwiseSeparable(x.shape[0], k, s, dilation,
                             name='block_0')(x, train)
      return DepthwiseSeparable(c, k, 1, dilation, name='block_1')(x, train)
    return DepthwiseSeparable(c, k, s, dilation, name='block_0')(x, train)


def live_nodes(nodes, concat) -> list[Any]:
  """The nodes on a path to the cell output, in order.

  ``derive_genotype`` already drops the others; a hand-written genotype may
  keep nodes that feed nothing, which would only add unused parameters.
  """
  needed, live = set(concat), []
  for node in reversed(nodes):
    if node.index in needed:
      live.append(node)
      needed.update(src for src, _, _ in node.inputs)
  return live[::-1]


def drop_path(x: jax.Array, drop_prob: jax.Array, key: jax.Array
              ) -> jax.Array:
  """Zeroes whole examples with probability ``drop_prob``, rescales the rest.

  As DARTS's ``drop_path``: a Bernoulli(1 - p) mask per example (axis 1 of
  ``[C, N, H, W]``), then division by 1 - p so that the expectation is
  unchanged.
  """
  keep = 1.0 - drop_prob
  mask = jax.random.bernoulli(key, keep, (1, x.shape[1], 1, 1))
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
    return jnp.concatenate([states[i] for i in self.concat])


class AuxiliaryHead(nn.Module):
  """DARTS's auxiliary classifier (module docstring), from the 2/3 point."""
  num_classes: int
  stride: int = 3
  second_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(x)
    window = min(5, x.shape[2]), min(5, x.shape[3])
    x = lax.reduce_window(x, 0.0, lax.add, (1, 1) + window,
                          (1, 1, self.stride, self.stride), 'VALID')
    x = x / (window[0] * window[1])
    x = ConvBN(128, 1, relu=False, name='conv_0')(x, train)
    x = nn.relu(x)
    kernel = _kernel(self, 'conv_1', x.shape[2:4] + (128, 768))
    x = jnp.einsum('cnhw,hwcd->nd', x, kernel.astype(x.dtype))  # [N, 768]
    if self.second_bn:
      x = _bn(train, name='bn_1', axis=-1)(x)
    x = nn.relu(x)
    return nn.Dense(self.num_classes, kernel_init=conv_init,
                    name='classifier')(x)


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

  def __post_init__(self):
    if self.stem not in STEMS:
      raise ValueError(f'EvalNetwork: stem must be one of {STEMS}; got '
                       f'{self.stem!r}.')
    if self.layers < 3:
      raise ValueError(f'EvalNetwork: layers={self.layers}; use >= 3 (two '
                       'reduction cells and a normal cell).')
    if self.C < 2 or self.C % 2:
      raise ValueError(f'EvalNetwork: C={self.C}; use an even number >= 2 '
                       '(factorized reduce halves it).')
    super().__post_init__()

  @property
  def reduction_layers(self) -> tuple[int, int]:
    return search_space.reduction_layers(self.layers)

  @nn.compact
  def __call__(self, x, *, train: bool, drop_prob=0.0):
    """Returns ``(logits, aux_logits)``; aux is None unless training with
    ``auxiliary``."""
    c = self.C
    x = jnp.transpose(x, (3, 0, 1, 2))  # [C, N, H, W] (module docstring)
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
    out = jnp.mean(s1, axis=(2, 3)).T
    logits = nn.Dense(self.num_classes, kernel_init=conv_init,
                      name='classifier')(out)
    return logits, aux


def init_variables(model: EvalNetwork, sample: jax.Array, seed: int
                   ) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` with PyTorch's default init, in NumPy
  (``models.initialization``: nothing compiles). The auxiliary head is
  included (it is created in training mode)."""
  shapes = jax.eval_shape(
      lambda: model.init({'params': jax.random.key(0),
                          'dropout': jax.random.key(1)},
                         sample, train=True))
  return initialization.fan_in_uniform(dict(shapes), seed)


def count_eval_params(params) -> int:
  """Parameters of the network without the auxiliary head (as DARTS
  reports them)."""
  return count_params({k: v for k, v in params.items() if k != AUX_HEAD})
