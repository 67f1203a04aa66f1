"""Scalar logging: TensorBoard through clu when TensorFlow is installed.

``clu.metric_writers`` needs TensorFlow (the ``[tfds]`` extra brings
``tensorflow-cpu``). Without it, scalars still go to the log and to
``<workdir>/metrics.jsonl`` (one JSON object per write), which is always
written so that runs can be compared without TensorBoard.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

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

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
