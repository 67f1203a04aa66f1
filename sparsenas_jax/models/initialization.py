"""PyTorch's default initialisation of a network, filled on the host.

Shapes come from ``jax.eval_shape`` of the module's ``init`` (nothing
compiles: compiling the RNG of hundreds of small parameters is slow on
XLA:CPU), and the values are drawn with NumPy. Kernels (leaves of two or
more dimensions) are U(-1/√fan_in, 1/√fan_in), fan_in = the product of all
but the last (output) dimension, as PyTorch's conv and linear defaults;
BN scales and running variances start at one; biases, BN offsets and
running means at zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import numpy as np

_ONES = ('scale', 'var')


def fan_in_uniform(shapes: Any, seed: int, *,
                   leading_axes: Callable[[tuple[Any, ...]], int] = (
                       lambda path: 0),
                   fan_in: Optional[Callable[[tuple[Any, ...],
                                              Sequence[int]],
                                             Optional[int]]] = None) -> Any:
  """NumPy values for a pytree of ``jax.ShapeDtypeStruct`` (module docstring).

  Args:
    shapes: the variables' shapes, e.g. ``jax.eval_shape(model.init, ...)``.
    seed: of the NumPy generator; leaves are drawn in tree order.
    leading_axes: ``key path -> k``: the first k dimensions of that leaf
      stack independent kernels (e.g. one per edge) and are not part of
      its fan-in.
    fan_in: ``(key path, shape) -> fan-in or None``: the fan-in of a
      kernel laid out otherwise (e.g. ``batched_cell.packed_fan_in``);
      None falls back to the rule above.

  Returns:
    The same tree of float32 NumPy arrays.
  """
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if len(s.shape) >= 2:
      n = fan_in(path, s.shape) if fan_in is not None else None
      if n is None:
        n = np.prod(s.shape[leading_axes(path):-1])
      bound = 1 / np.sqrt(n)
      return rng.uniform(-bound, bound, s.shape).astype(np.float32)
    name = str(getattr(path[-1], 'key', path[-1])) if path else ''
    fill_value = 1.0 if name in _ONES else 0.0
    return np.full(s.shape, fill_value, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)
