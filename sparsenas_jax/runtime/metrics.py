"""Scalars of a run: ``metrics.jsonl``, TensorBoard, and steps/s with ETA.

``<workdir>/metrics.jsonl`` (one JSON object per write) is always written,
so runs can be compared without TensorBoard. TensorBoard summaries go
through ``clu.metric_writers`` when TensorFlow is installed (the ``[tfds]``
extra). ``clu.periodic_actions`` imports TensorFlow too, so the steps/s and
ETA of the progress line are measured here (``Progress``). Only process 0
writes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from typing import Any, Optional

from absl import logging
import jax


class MetricWriter:
  """Writes scalars to metrics.jsonl and, if possible, to TensorBoard."""

  def __init__(self, workdir: str):
    self._primary = jax.process_index() == 0
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tensorboard = None
    if not self._primary:
      return
    os.makedirs(workdir, exist_ok=True)
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top
    except ImportError:
      logging.info('TensorFlow is not installed: no TensorBoard summaries '
                   '(pip install -e ".[tfds]"); scalars go to %s', self._path)
    else:
      self._tensorboard = metric_writers.SummaryWriter(workdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self._primary:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': int(step), **scalars}) + '\n')
    if self._tensorboard is not None:
      self._tensorboard.write_scalars(step, scalars)
      self._tensorboard.flush()

  def last(self) -> Optional[dict[str, Any]]:
    """The last line written to metrics.jsonl (by this run or an earlier
    one), or None."""
    if not os.path.exists(self._path):
      return None
    with open(self._path) as f:
      lines = f.read().splitlines()
    return json.loads(lines[-1]) if lines else None

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


class Progress:
  """Steps per second and the time left, from a starting step on.

  Start it after the first step of a run (which includes compiling), so the
  rate is that of the compiled steps.
  """

  def __init__(self, start_step: int, total_steps: int):
    self._start, self._total = start_step, total_steps
    self._t0 = time.perf_counter()

  def rate(self, step: int) -> float:
    """Steps per second from the start to ``step`` (steps taken)."""
    elapsed = time.perf_counter() - self._t0
    return (step - self._start) / elapsed if elapsed > 0 else 0.0

  def eta_s(self, step: int) -> float:
    """Seconds until ``total_steps`` at the rate so far (0 when unknown)."""
    rate = self.rate(step)
    return (self._total - step) / rate if rate > 0 else 0.0
