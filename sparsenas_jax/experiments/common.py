"""Pieces the search and training jobs share: start-up, image scaling,
DARTS's SGD."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax

from sparsenas_jax import compilation
from sparsenas_jax import parallel


def start_job(config, workdir: str) -> jax.sharding.Mesh:
  """A job's start-up: multi-host init, the device mesh (checking that the
  batch splits over it) and the workdir."""
  parallel.initialize_distributed(config.multi_host)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  os.makedirs(workdir, exist_ok=True)
  return mesh


def executable_store(config, workdir: str,
                     *salt) -> compilation.ExecutableStore:
  """The job's compiled steps on disk (``config.compilation_cache_dir``,
  default ``<workdir>/jax_cache``), keyed by the whole config and ``salt``
  (what else the steps close over, e.g. data statistics), on top of what
  ``ExecutableStore`` covers itself."""
  return compilation.ExecutableStore(
      config.compilation_cache_dir or os.path.join(workdir, 'jax_cache'),
      salt=(config.to_json(sort_keys=True), *map(repr, salt)))


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
