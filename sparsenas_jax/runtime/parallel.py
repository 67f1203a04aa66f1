"""The only module that knows about devices: the data-parallel mesh.

Data parallelism over every local device: the batch is sharded along the mesh
axis ``'data'`` and every parameter (network weights, architecture weights,
optimizer states) is replicated. Steps are plain ``jax.jit`` functions with
these ``NamedSharding``s: XLA's SPMD partitioner inserts the cross-device
reductions, so gradients (architecture gradients included) and batch-norm
statistics are taken over the *global* batch and every device holds the same
A. One device and N devices therefore compute the same step for the same
global batch, up to the order of floating-point sums.
"""

from __future__ import annotations

from typing import Optional

from absl import logging
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from sparsenas_jax.errors import ConfigError

DATA_AXIS = 'data'


def initialize_distributed(config) -> None:
  """Joins a multi-host job (Cloud TPU pods, multi-node GPU) when
  ``config.multi_host`` is set.

  ``config.coordinator_address``, ``config.num_processes`` and
  ``config.process_id`` are passed to ``jax.distributed.initialize`` when
  set ('', 0 and -1 leave them to JAX's detection of the cluster, as on
  Cloud TPU VMs and SLURM).
  """
  if not config.multi_host:
    return
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address or None,
      num_processes=config.num_processes or None,
      process_id=None if config.process_id < 0 else config.process_id)
  logging.info('process %d of %d', jax.process_index(), jax.process_count())


def make_mesh(num_devices: Optional[int] = None) -> jax.sharding.Mesh:
  """A 1-D ``'data'`` mesh over the first ``num_devices`` devices (0: all)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if not 1 <= n <= len(devices):
    raise ConfigError(
        f'config.num_devices={num_devices} but {len(devices)} devices are '
        'available; use 0 for all of them.')
  # Auto axes: XLA propagates the batch sharding through the step (explicit
  # sharding-in-types would have to be threaded through every vmap).
  return jax.make_mesh((n,), (DATA_AXIS,), (jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ConfigError(
        f'config.batch_size={batch_size} is not divisible by the {n} devices; '
        f'use a multiple of {n} or set config.num_devices.')


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Places a pytree on every device of the mesh, every leaf its own buffer.

  Leaves that share a buffer (an optimizer state initialised to the params,
  say) are copied apart, so that the tree can be donated to a jitted step.
  Under multi-host JAX every process passes the same values.
  """
  sharding = replicated(mesh)
  host = jax.tree.map(np.array, tree)
  if jax.process_count() == 1:
    return jax.device_put(host, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          x.shape, sharding, lambda index: x[index]), host)


def shard_batch(batch, mesh: jax.sharding.Mesh):
  """Splits the leading (batch) axis of every array across the devices.

  ``batch`` is the global batch. Under multi-host JAX every process passes
  the same global batch and transfers only the rows of its own devices.
  """
  sharding = batch_sharded(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          x.shape, sharding, lambda index: x[index]), batch)


def to_host(tree):
  """Fetches a (replicated) pytree to NumPy on the host."""
  return jax.tree.map(np.asarray, jax.device_get(tree))
