"""Orbax checkpoints of a whole job state: save, restore latest, resume.

Saves are atomic (Orbax writes a temporary directory and renames it), so a
run killed at any point resumes from the last complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class Checkpointer:
  """``CheckpointManager`` in ``<workdir>/checkpoints``, keeping the newest."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), 'checkpoints'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore(self, template: Any, step: Optional[int] = None) -> Any:
    """Restores ``step`` (default: latest) into the structure of ``template``."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(
        step, args=ocp.args.StandardRestore(template))

  def close(self) -> None:
    self._manager.close()
