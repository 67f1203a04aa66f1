"""Hyperparameter plumbing shared by the proximal transformations."""

from __future__ import annotations

import jax
import numpy as np


NO_PARAMS_MSG = (
    'This transformation needs the current params: call '
    '`update(updates, state, params)`.')


def value_at(value, count):
  """A ScalarOrSchedule evaluated at step ``count``."""
  return value(count) if callable(value) else value


def _concrete(value):
  """``value`` as a NumPy array, or None if it is traced or a schedule."""
  if callable(value):
    return None
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError,
          jax.errors.ConcretizationTypeError):
    return None


def check_nonnegative(name: str, value) -> None:
  v = _concrete(value)
  if v is not None and np.any(v < 0):
    raise ValueError(f'{name} must be >= 0, got {v}.')


def check_unit_interval(name: str, value) -> None:
  v = _concrete(value)
  if v is not None and np.any((v < 0) | (v > 1)):
    raise ValueError(
        f'{name} must lie in [0, 1] (1 = Lasso, 0 = group Lasso), got {v}.')
