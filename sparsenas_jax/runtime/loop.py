"""The loop every job runs: start-up, restore-or-init, epochs, checkpoints.

A job builds its data, model, state and step, and hands them to ``run`` as a
``Job``; ``run`` restores the latest checkpoint of the workdir if there is
one (a rerun of the same command resumes), places the state on the mesh,
compiles the step, runs the remaining steps with the next batch prepared
while a step runs, and at the end of every epoch averages the step metrics,
evaluates, writes scalars (``runtime.metrics``), logs a progress line with
steps/s and ETA, and saves a checkpoint. Every step's ``metrics['finite']``
(``runtime.divergence``) is checked, one step behind the device and always
before a save, so a diverging run stops with ``DivergenceError`` and no
non-finite state is ever checkpointed.

Batches and keys are functions of the global step, so a resumed run takes
the same steps as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from sparsenas_jax.runtime import checkpoints
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import metrics as metrics_lib
from sparsenas_jax.runtime import parallel

Step = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, Any]]]


def start(config, workdir: str) -> jax.sharding.Mesh:
  """A job's start-up: multi-host init (``parallel.initialize_distributed``),
  logging from process 0 only, the device mesh (``config.num_devices``; the
  global ``config.batch_size`` must split over it) and the workdir."""
  parallel.initialize_distributed(config)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_batch_size(config.batch_size, mesh)
  os.makedirs(workdir, exist_ok=True)
  return mesh


@dataclasses.dataclass(frozen=True)
class Job:
  """What a job hands to ``run``.

  Attributes:
    init_state: ``() -> state`` on the host, a pytree whose ``step`` field
      is an int32 scalar (steps taken); also the structure a checkpoint is
      restored into.
    compile: ``(state, batch, key) -> step`` for the placed state and the
      first step's batch and key: a compiled ``step(state, batch, key) ->
      (state, metrics)``, or a function that compiles its programs on its
      first call. ``metrics`` holds scalars to average per epoch and
      ``metrics['finite']`` (``divergence.finite_flags``).
    batch_at: ``step -> batch``: the global batch of a step as NumPy arrays
      (leading axis: examples); ``run`` shards it over the mesh.
    total_steps: steps of the whole run.
    steps_per_epoch: steps between epoch ends (the last epoch may be
      shorter).
    seed: step k's key is ``fold_in(key(seed), k)``.
    divergence_hint: the config fields to lower when the run diverges.
    evaluate: ``state -> scalars`` (``runtime.evaluation``), run every
      ``eval_every_epochs`` epochs and at the end.
    eval_every_epochs: see ``evaluate``.
    epoch_scalars: ``(state, step) -> scalars`` added at each epoch's end
      (e.g. λ and sparsity counts).
    log_keys: ``(name, format)`` pairs of the scalars on the progress line.
    after_epoch: ``(state, scalars) -> state``, run at each epoch's end
      after the scalars and before the checkpoint: a change of the state
      that depends on them (DARTS's switch to averaged SGD when the
      validation loss stops improving). The new state's leaves are placed
      as the old ones.
  """
  init_state: Callable[[], Any]
  compile: Callable[[Any, Any, jax.Array], Step]
  batch_at: Callable[[int], Any]
  total_steps: int
  steps_per_epoch: int
  seed: int
  divergence_hint: str
  evaluate: Optional[Callable[[Any], Mapping[str, float]]] = None
  eval_every_epochs: int = 1
  epoch_scalars: Callable[[Any, int], Mapping[str, float]] = (
      lambda state, step: {})
  log_keys: Sequence[tuple[str, str]] = ()
  after_epoch: Optional[Callable[[Any, Mapping[str, float]], Any]] = None


def _epoch_means(step_metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  fetched = jax.device_get(list(step_metrics))
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def _progress_line(epoch, epochs, scalars, log_keys, rate, eta_s) -> str:
  parts = [f'epoch {epoch}/{epochs}']
  parts += [f'{name} {format(scalars[name], fmt)}' for name, fmt in log_keys
            if name in scalars]
  parts += [f'{rate:.2f} steps/s', f'ETA {eta_s:.0f}s']
  return '  '.join(parts)


def run(job: Job, workdir: str, mesh: jax.sharding.Mesh
        ) -> tuple[Any, dict[str, Any]]:
  """Runs (or resumes) ``job`` to its last step.

  Returns:
    The final state (placed on the mesh) and a summary: the last epoch's
    scalars (read back from ``metrics.jsonl`` if the workdir's run had
    already ended), ``compile_s`` (the time ``job.compile`` took),
    ``first_step_s`` (the first step of this run, which includes the
    compilation a lazily compiled step does), ``steps_per_s`` (the steps
    after it) and ``start_step``.

  Raises:
    DivergenceError: a step reported a non-finite quantity; the checkpoints
      saved before it are kept.
  """
  checkpointer = checkpoints.Checkpointer(workdir)
  writer = metrics_lib.MetricWriter(workdir)
  prefetcher = futures.ThreadPoolExecutor(1, thread_name_prefix='batches')
  try:
    state = job.init_state()
    start_step = checkpointer.latest_step()
    if start_step is not None:
      state = checkpointer.restore(state)
      logging.info('resumed from the checkpoint of step %d', start_step)
    state = parallel.replicate(state, mesh)
    first = int(state.step)
    base_key = jax.random.key(job.seed)
    batch_of = lambda step: parallel.shard_batch(job.batch_at(step), mesh)
    summary: dict[str, Any] = {'start_step': first}
    if first >= job.total_steps:
      summary.update(writer.last() or {})
      return state, summary

    t0 = time.perf_counter()
    batch, key = batch_of(first), jax.random.fold_in(base_key, first)
    step_fn = job.compile(state, batch, key)
    summary['compile_s'] = time.perf_counter() - t0
    epochs = -(-job.total_steps // job.steps_per_epoch)
    saved = [start_step]  # the latest checkpoint, for the divergence message

    def check(step, step_metrics):
      resume = (f'it resumes from step {saved[0]}' if saved[0]
                else 'it starts afresh: no checkpoint yet')
      divergence.check(jax.device_get(step_metrics[divergence.KEY]),
                       step=step + 1, hint=job.divergence_hint, resume=resume)

    progress, pending, epoch_metrics = None, None, []
    for step in range(first, job.total_steps):
      next_batch = (prefetcher.submit(batch_of, step + 1)
                    if step + 1 < job.total_steps else None)
      t_step = time.perf_counter()
      state, step_metrics = step_fn(state, batch, key)
      if pending is not None:  # the previous step, while this one runs
        check(*pending)
      pending = (step, step_metrics)
      if progress is None:  # the first step of this run: it compiled
        jax.block_until_ready(state)
        summary['first_step_s'] = time.perf_counter() - t_step
        logging.info('first step of this run in %.1f s (after %.1f s compiling '
                     'ahead of it)',
                     summary['first_step_s'], summary['compile_s'])
        progress = metrics_lib.Progress(step + 1, job.total_steps)
      epoch_metrics.append({k: v for k, v in step_metrics.items()
                            if k != divergence.KEY})
      if next_batch is not None:
        batch = next_batch.result()
        key = jax.random.fold_in(base_key, step + 1)
      done = step + 1
      if done % job.steps_per_epoch and done != job.total_steps:
        continue
      check(*pending)
      pending = None
      epoch = -(-done // job.steps_per_epoch)
      scalars = _epoch_means(epoch_metrics)
      scalars.update(job.epoch_scalars(state, done))
      if job.evaluate is not None and (
          epoch % job.eval_every_epochs == 0 or done == job.total_steps):
        scalars.update(job.evaluate(state))
      rate = progress.rate(done)
      scalars['steps_per_s'] = rate
      writer.write_scalars(done, scalars)
      logging.info(_progress_line(epoch, epochs, scalars, job.log_keys, rate,
                                  progress.eta_s(done)))
      if job.after_epoch is not None:
        state = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding),
                             job.after_epoch(state, scalars), state)
      checkpointer.save(done, state)
      saved[0] = done
      epoch_metrics = []
      summary.update(scalars)
    return state, summary
  finally:
    prefetcher.shutdown(wait=True, cancel_futures=True)
    checkpointer.close()
    writer.close()
