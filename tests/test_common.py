"""Tests of the jobs' shared pieces (experiments/common.py) that XLA sees."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsenas_jax.experiments import common
from sparsenas_jax.runtime import divergence


def _tree(scale):
  rng = np.random.default_rng(0)
  return {'a': scale * rng.normal(size=(3, 4)).astype(np.float32),
          'b': {'c': scale * rng.normal(size=(5,)).astype(np.float32),
                'd': scale * rng.normal(size=(2, 2, 2)).astype(np.float32)}}


def test_global_norm_is_optax_tree_norm():
  tree = _tree(1.0)
  np.testing.assert_allclose(common.global_norm(tree), optax.tree.norm(tree),
                             rtol=1e-6)
  assert float(common.global_norm({})) == 0.0


@pytest.mark.parametrize('scale', [0.1, 10.0])  # below and above the norm
def test_clip_by_global_norm_is_optax(scale):
  tree = _tree(scale)
  ours = common.clip_by_global_norm(2.0)
  theirs = optax.clip_by_global_norm(2.0)
  got, _ = ours.update(tree, ours.init(tree))
  want, _ = theirs.update(tree, theirs.init(tree))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6)
  assert (float(optax.tree.norm(got)) < 2.0 + 1e-5) and (
      scale < 1 or float(optax.tree.norm(got)) > 2.0 - 1e-5)


def test_all_finite_sees_one_bad_element_in_any_leaf():
  tree = {'w': jnp.ones((4, 4)), 'b': jnp.ones((3,), jnp.bfloat16),
          'step': jnp.int32(3)}
  assert bool(divergence.all_finite(tree))
  for leaf, bad in (('w', np.nan), ('b', np.inf)):
    broken = dict(tree)
    broken[leaf] = tree[leaf].at[1].set(bad)
    assert not bool(divergence.all_finite(broken))
  assert bool(divergence.all_finite({'step': jnp.int32(1)}))
