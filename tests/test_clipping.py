"""Tests of global-norm clipping (optim/clipping.py) against optax."""

import jax
import numpy as np
import optax
import pytest

from sparsenas_jax import optim


def _tree(scale):
  rng = np.random.default_rng(0)
  return {'a': scale * rng.normal(size=(3, 4)).astype(np.float32),
          'b': {'c': scale * rng.normal(size=(5,)).astype(np.float32),
                'd': scale * rng.normal(size=(2, 2, 2)).astype(np.float32)}}


def test_global_norm_is_optax_tree_norm():
  tree = _tree(1.0)
  np.testing.assert_allclose(optim.global_norm(tree), optax.tree.norm(tree),
                             rtol=1e-6)
  assert float(optim.global_norm({})) == 0.0


@pytest.mark.parametrize('scale', [0.1, 10.0])  # below and above the norm
def test_clip_by_global_norm_is_optax(scale):
  tree = _tree(scale)
  ours = optim.clip_by_global_norm(2.0)
  theirs = optax.clip_by_global_norm(2.0)
  got, _ = ours.update(tree, ours.init(tree))
  want, _ = theirs.update(tree, theirs.init(tree))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-6)
  assert (float(optax.tree.norm(got)) < 2.0 + 1e-5) and (
      scale < 1 or float(optax.tree.norm(got)) > 2.0 - 1e-5)


def test_clip_coefficient_matches_the_transform():
  tree = _tree(10.0)
  c = float(optim.clip_coefficient(tree, 2.0))
  np.testing.assert_allclose(c, 2.0 / float(optax.tree.norm(tree)), rtol=1e-6)
  assert float(optim.clip_coefficient(_tree(0.1), 2.0)) == 1.0
