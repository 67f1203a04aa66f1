"""Pieces the jobs share: config checks of the CNN jobs, image scaling,
DARTS's SGD, and the searches' architecture optimizer (λ ramp, AdamHAPG,
HAPG or DARTS's Adam) and the architecture they read."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from sparsenas_jax import bilevel
from sparsenas_jax import optim
from sparsenas_jax.errors import ConfigError


def check_cnn_config(config, datasets) -> None:
  """The fields both CNN jobs have: dataset, network size, run length."""
  if config.dataset not in datasets:
    raise ConfigError(f'config.dataset={config.dataset!r}; valid: {datasets}.')
  if config.layers < 3:
    raise ConfigError(f'config.layers={config.layers}: the network needs >= '
                      '3 cells (two of them reductions).')
  if config.init_channels < 2 or config.init_channels % 2:
    raise ConfigError(f'config.init_channels={config.init_channels}: use an '
                      'even number >= 2.')
  if config.epochs < 1 or config.batch_size < 1:
    raise ConfigError('config.epochs and config.batch_size must be >= 1.')


def as_float(images: jax.Array) -> jax.Array:
  """uint8 images to [0, 1] float32; float images cast to float32."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def darts_sgd(learning_rate, *, grad_clip: float, weight_decay: float,
              momentum: float) -> optax.GradientTransformation:
  """DARTS's weight optimizer: clip the gradient's global norm, add L2 weight
  decay (to every parameter, as PyTorch's SGD does, after the clipping),
  then SGD with momentum."""
  return optax.chain(
      optim.clip_by_global_norm(grad_clip),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum))


ARCH_OPTIMIZERS = ('adam_hapg', 'hapg', 'adam')


def check_search_config(config) -> None:
  """The fields both searches have: the architecture optimizer, the
  hypergradient, the cell's nodes and the SGL penalty."""
  if config.arch_optimizer not in ARCH_OPTIMIZERS:
    raise ConfigError(f'config.arch_optimizer={config.arch_optimizer!r}; '
                      f'valid: {ARCH_OPTIMIZERS}.')
  if config.hypergradient not in bilevel.MODES:
    raise ConfigError(f'config.hypergradient={config.hypergradient!r}; '
                      f'valid: {bilevel.MODES}.')
  if config.nodes < 1:
    raise ConfigError(f'config.nodes={config.nodes}: use >= 1.')
  if config.lambda_step < 0:
    raise ConfigError(f'config.lambda_step={config.lambda_step} is negative; '
                      'λ is ramped up by lambda_step >= 0 per epoch.')
  if config.get('lambda_max', 0.0) < 0:
    raise ConfigError(f'config.lambda_max={config.lambda_max} is negative; '
                      'use 0 (no cap) or the largest λ to ramp up to.')
  if not 0 <= config.l1_ratio <= 1:
    raise ConfigError(f'config.l1_ratio={config.l1_ratio}: use [0, 1].')
  momentum = arch_momentum(config)
  if momentum is not None and not 0 <= momentum < 1:
    raise ConfigError(f'config.arch_momentum={momentum}: use -1 (the '
                      'accelerated u_t = (t - 2)/(t + 1)) or a constant in '
                      '[0, 1).')


def arch_momentum(config):
  """(Adam)HAPG's ``momentum`` from ``config.arch_momentum``: ``None`` (the
  accelerated u_t) for -1, the default, else the constant."""
  momentum = config.get('arch_momentum', -1.0)
  return None if momentum == -1.0 else momentum


def lambda_schedule(config, steps_per_epoch: int):
  """λ raised by ``lambda_step`` at the start of every epoch (λ₀ = 0), held
  at ``lambda_max`` once it gets there (0: never). Both fields may be traced
  (a sweep's members)."""
  cap = config.get('lambda_max', 0.0)

  def schedule(count):
    lam = config.lambda_step * (count // steps_per_epoch)
    return jnp.where(cap > 0, jnp.minimum(lam, cap), lam)
  return schedule


def make_arch_optimizer(config, arch, steps_per_epoch: int):
  """The search's optimizer of A (``config.arch_optimizer``), one SGL group
  per node (``optim.darts_node_groups``), λ ramped per epoch."""
  groups = optim.darts_node_groups(arch)
  lam = lambda_schedule(config, steps_per_epoch)
  momentum = arch_momentum(config)
  if config.arch_optimizer == 'adam_hapg':
    return optim.adam_hapg(config.arch_learning_rate, lam, config.l1_ratio,
                           groups=groups, b1=config.arch_b1,
                           b2=config.arch_b2, momentum=momentum)
  if config.arch_optimizer == 'hapg':
    return optim.hapg(config.arch_learning_rate, lam, config.l1_ratio,
                      groups=groups, momentum=momentum)
  # DARTS's architecture optimizer: Adam with L2 weight decay, no sparsity.
  return optax.chain(
      optax.add_decayed_weights(config.arch_weight_decay),
      optax.adam(config.arch_learning_rate, b1=config.arch_b1,
                 b2=config.arch_b2))


def architecture(config, arch, arch_opt_state):
  """The architecture to read: the exactly sparse prox point of (Adam)HAPG,
  or ``arch`` itself for DARTS's Adam."""
  if config.arch_optimizer in ('adam_hapg', 'hapg'):
    return optim.sparse_params(arch_opt_state)
  return arch
