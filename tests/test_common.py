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
  # A sweep traces the step and the cap (0 traced: still no cap).
  swept = lambda step, cap: common.lambda_schedule(
      ml_collections.ConfigDict({'lambda_step': step, 'lambda_max': cap}),
      steps_per_epoch=10)(35)
  assert jax.jit(swept)(0.1, 0.25) == pytest.approx(0.25)
  assert jax.jit(swept)(0.1, 0.0) == pytest.approx(0.3)


@pytest.mark.parametrize('arch_optimizer', ['adam_hapg', 'hapg'])
def test_arch_momentum_zero_steps_to_the_prox_point(arch_optimizer):
  """config.arch_momentum = 0: A is the prox point after every step (no
  extrapolation); -1: the paper's u_t, A leaves it from the third step."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sparsenas_jax import optim  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arch = {t: {f'node_{j}': jnp.asarray(rng.normal(size=(j + 2, 3)),
                                       jnp.float32) for j in range(2)}
          for t in ('normal', 'reduce')}
  grads = [jax.tree.map(lambda a, s=s: jnp.asarray(
      np.random.default_rng(s).normal(size=a.shape), a.dtype), arch)
           for s in range(4)]
  gaps = {}
  for momentum in (0.0, -1.0):
    config = ml_collections.ConfigDict(dict(
        arch_optimizer=arch_optimizer, arch_learning_rate=0.1,
        lambda_step=1.0, lambda_max=0.0, l1_ratio=0.5, arch_b1=0.9,
        arch_b2=0.999, arch_momentum=momentum))
    opt = common.make_arch_optimizer(config, arch, steps_per_epoch=1)
    a, state = arch, opt.init(arch)
    for g in grads:
      updates, state = opt.update(g, state, a)
      a = jax.tree.map(jnp.add, a, updates)
    gaps[momentum] = max(float(jnp.max(jnp.abs(x - p))) for x, p in zip(
        jax.tree.leaves(a), jax.tree.leaves(optim.sparse_params(state))))
  assert gaps[0.0] < 1e-6  # a + (x - a): float rounding of x
  assert gaps[-1.0] > 1e-3
