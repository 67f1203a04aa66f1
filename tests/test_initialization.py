"""PyTorch's default init filled in NumPy: bounds, fan-in, constants."""

import jax
import jax.numpy as jnp
import numpy as np

from sparsenas_jax.models import initialization


def _shapes(**leaves):
  return {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in leaves.items()}


def test_kernels_are_fan_in_uniform_and_bn_constants_are_torchs():
  shapes = {'conv': _shapes(kernel=(3, 3, 16, 8)),
            'dense': _shapes(kernel=(64, 10), bias=(10,)),
            'bn': _shapes(scale=(8,), bias=(8,), mean=(8,), var=(8,))}
  values = initialization.fan_in_uniform(shapes, seed=0)
  conv = values['conv']['kernel']
  bound = 1 / np.sqrt(3 * 3 * 16)  # PyTorch: fan_in = k·k·c_in
  assert conv.dtype == np.float32 and np.abs(conv).max() <= bound
  assert np.abs(conv).max() > 0.9 * bound  # uniform over the whole range
  assert abs(conv.mean()) < 0.1 * bound
  assert np.abs(values['dense']['kernel']).max() <= 1 / np.sqrt(64)
  np.testing.assert_array_equal(values['dense']['bias'], 0)
  np.testing.assert_array_equal(values['bn']['scale'], 1)
  np.testing.assert_array_equal(values['bn']['var'], 1)
  np.testing.assert_array_equal(values['bn']['mean'], 0)
  again = initialization.fan_in_uniform(shapes, seed=0)
  np.testing.assert_array_equal(again['conv']['kernel'], conv)


def test_leading_axes_are_not_part_of_the_fan_in():
  shapes = {'stage_0': _shapes(kernel=(100, 4, 4)), 'head': _shapes(
      kernel=(100, 4, 4))}
  values = initialization.fan_in_uniform(
      shapes, seed=1, leading_axes=lambda path: int(
          path[0].key.startswith('stage_')))
  # Stacked: fan_in = 4 (bound 0.5); plain: fan_in = 100 * 4 (bound 0.05).
  assert 0.45 < np.abs(values['stage_0']['kernel']).max() <= 0.5
  assert np.abs(values['head']['kernel']).max() <= 0.05
