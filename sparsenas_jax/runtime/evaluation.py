"""The masked evaluator: means over every example of a split.

The last, partial batch is padded to the batch size and masked, so every
example counts once and the evaluation program compiles once. An eval step
returns, per batch, sums over the masked examples (``masked_sums``);
``evaluate`` adds them up over the split and divides by its size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparsenas_jax.runtime import parallel

Reader = Callable[[int, int], Mapping[str, np.ndarray]]  # [start, stop) rows


def masked_sums(per_example: Mapping[str, jax.Array],
                mask: jax.Array) -> dict[str, jax.Array]:
  """``{name: Σ_i value_i · mask_i}``: what an eval step returns."""
  return {k: jnp.sum(v * mask) for k, v in per_example.items()}


def array_reader(images: np.ndarray, labels: np.ndarray) -> Reader:
  """Rows [start, stop) of in-memory arrays as ``{'image', 'label'}``."""
  return lambda start, stop: {'image': images[start:stop],
                              'label': labels[start:stop]}


def padded(batch: Mapping[str, np.ndarray], size: int) -> dict[str, Any]:
  """``batch`` zero-padded to ``size`` rows, with ``'mask'`` (1 = real)."""
  n = len(next(iter(batch.values())))
  pad = lambda a: np.concatenate(
      [a, np.zeros((size - n,) + a.shape[1:], a.dtype)])
  return {**{k: pad(np.asarray(v)) for k, v in batch.items()},
          'mask': pad(np.ones(n, np.float32))}


def evaluate(eval_step: Callable[..., Mapping[str, jax.Array]],
             args: Sequence[Any], read: Reader, num_examples: int,
             batch_size: int, mesh: jax.sharding.Mesh,
             limit: Optional[int] = None) -> dict[str, float]:
  """Means over the first ``limit`` (default: all) examples of a split.

  Args:
    eval_step: ``eval_step(*args, batch) -> masked sums``, ``batch`` holding
      the reader's fields and ``'mask'``.
    args: the step's leading arguments (placed parameters).
    read: rows of the split.
    num_examples: the split's size.
    batch_size: rows per call (the global batch, split across ``mesh``).
    mesh: where the batches go.
    limit: evaluate only this many examples.

  Returns:
    ``{name: Σ sums / n}`` with n the number of examples evaluated.
  """
  n = num_examples if limit is None else min(limit, num_examples)
  if n < 1:
    raise ValueError('evaluate: the split is empty.')
  totals = None
  for start in range(0, n, batch_size):
    batch = padded(read(start, min(start + batch_size, n)), batch_size)
    out = eval_step(*args, parallel.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return {k: float(v) / n for k, v in parallel.to_host(totals).items()}
