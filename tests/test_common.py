"""Tests of the jobs' shared pieces: experiments/common.py and the finite
flags of runtime/divergence.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax.experiments import common
from sparsenas_jax.runtime import divergence


def test_all_finite_sees_one_bad_element_in_any_leaf():
  tree = {'w': jnp.ones((4, 4)), 'b': jnp.ones((3,), jnp.bfloat16),
          'step': jnp.int32(3)}
  assert bool(divergence.all_finite(tree))
  for leaf, bad in (('w', np.nan), ('b', np.inf)):
    broken = dict(tree)
    broken[leaf] = tree[leaf].at[1].set(bad)
    assert not bool(divergence.all_finite(broken))
  assert bool(divergence.all_finite({'step': jnp.int32(1)}))


def test_lambda_ramps_per_epoch_and_holds_at_its_cap():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'lambda_step': 0.1, 'lambda_max': 0.25})
  schedule = common.lambda_schedule(config, steps_per_epoch=10)
  got = [float(schedule(step)) for step in (0, 9, 10, 25, 39, 1000)]
  assert got == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.25, 0.25])
  # Traced: the optimizers evaluate it inside the step.
  assert float(jax.jit(schedule)(jnp.int32(35))) == pytest.approx(0.25)
  config.lambda_max = 0.0  # no cap
  uncapped = common.lambda_schedule(config, steps_per_epoch=10)
  assert float(uncapped(1000)) == pytest.approx(10.0)
