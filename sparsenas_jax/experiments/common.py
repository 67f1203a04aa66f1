"""Pieces the CNN search and training jobs share: config checks of the
network and the run, image scaling, DARTS's SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
      optax.clip_by_global_norm(grad_clip),
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum))
