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


def test_flat_apply_is_the_per_leaf_update_with_the_state_layout_kept():
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  draw = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  params = {'conv': {'kernel': draw(3, 4)}, 'bias': draw(5,)}
  opt = optax.chain(common.darts_sgd(optax.linear_schedule(0.1, 0.01, 10),
                                     grad_clip=1.0, weight_decay=3e-4,
                                     momentum=0.9), optax.adam(1e-3))
  per_leaf, per_leaf_state = params, opt.init(params)
  flat, flat_state = params, opt.init(params)
  step = jax.jit(lambda g, s, p: common.flat_apply(opt, g, s, p))
  for _ in range(3):
    grads = jax.tree.map(lambda a: 3 * draw(*a.shape), params)
    updates, per_leaf_state = opt.update(grads, per_leaf_state, per_leaf)
    per_leaf = optax.apply_updates(per_leaf, updates)
    flat, flat_state, flat_grads, flat_params = step(grads, flat_state, flat)
  assert jax.tree.structure(flat_state) == jax.tree.structure(per_leaf_state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6,
                                                       atol=1e-7),
               (flat, flat_state), (per_leaf, per_leaf_state))
  np.testing.assert_array_equal(
      flat_params, jax.flatten_util.ravel_pytree(flat)[0])
  assert flat_grads.shape == (17,)
