"""Pieces the CNN search and training jobs share: image scaling, DARTS's
SGD."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
