"""Resumable minibatch indices: a pure function of (seed, global step).

Every epoch visits each example once, in an order drawn from
``np.random.default_rng([seed, epoch])``; the last ``num_examples %
batch_size`` examples of each epoch's order are dropped. Because the batch of a
step depends on nothing but ``(seed, step)``, a checkpoint only has to store
the step to resume the data stream exactly, and two streams (the weight-train
and architecture-val halves of a search) never interfere.

Example::

  x, y = splits['train']
  for step in range(start_step, num_steps):
    xb, yb = batch_at((x, y), batch_size=64, seed=seed, step=step)
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """The number of full batches in an epoch (the remainder is dropped).

  Args:
    num_examples: size of the data set.
    batch_size: examples per batch.

  Returns:
    ``num_examples // batch_size``.

  Raises:
    ValueError: if ``batch_size <= 0`` or ``batch_size > num_examples``.
  """
  num_examples, batch_size = int(num_examples), int(batch_size)
  if batch_size <= 0:
    raise ValueError(f'batch_size must be > 0, got {batch_size}.')
  if batch_size > num_examples:
    raise ValueError(
        f'batch_size {batch_size} is larger than the data set '
        f'({num_examples} examples): not even one full batch per epoch.')
  return num_examples // batch_size


@functools.lru_cache(maxsize=16)
def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The (read-only, cached) order of the examples in epoch ``epoch``.

  The cache keeps the last few epochs of several streams, so consecutive
  steps, or a search alternating between two streams, draw each permutation
  once.

  Args:
    num_examples: size of the data set.
    seed: non-negative stream seed.
    epoch: non-negative epoch number.

  Returns:
    An int64 permutation of ``range(num_examples)``.
  """
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  perm.setflags(write=False)
  return perm


def batch_indices(num_examples: int, batch_size: int, seed: int,
                  step: int) -> np.ndarray:
  """Indices of the examples in the batch of global step ``step``.

  Args:
    num_examples: size of the data set.
    batch_size: examples per batch.
    seed: non-negative stream seed.
    step: non-negative global step (counted across epochs).

  Returns:
    An int64 array of shape ``(batch_size,)``: positions ``[i * batch_size,
    (i + 1) * batch_size)`` of the permutation of epoch ``step //
    steps_per_epoch``, with ``i = step % steps_per_epoch``.

  Raises:
    ValueError: for a bad batch size, or a negative seed or step.
  """
  per_epoch = steps_per_epoch(num_examples, batch_size)
  seed, step = int(seed), int(step)
  if seed < 0 or step < 0:
    raise ValueError(f'seed and step must be >= 0, got {seed} and {step}.')
  epoch, i = divmod(step, per_epoch)
  perm = epoch_permutation(int(num_examples), seed, epoch)
  return perm[i * batch_size:(i + 1) * batch_size]


def batch_at(arrays: Sequence[np.ndarray], batch_size: int, seed: int,
             step: int) -> tuple[np.ndarray, ...]:
  """The batch of step ``step`` taken from arrays sharing a leading axis.

  Args:
    arrays: e.g. ``(images, labels)``; all of the same length.
    batch_size: examples per batch.
    seed: non-negative stream seed.
    step: non-negative global step.

  Returns:
    A tuple with ``a[batch_indices(len(a), batch_size, seed, step)]`` for
    each array ``a``.
  """
  lengths = {len(a) for a in arrays}
  if len(lengths) != 1:
    raise ValueError(f'Arrays have different lengths: {sorted(lengths)}.')
  idx = batch_indices(lengths.pop(), batch_size, seed, step)
  return tuple(np.asarray(a)[idx] for a in arrays)
