"""Proximal operators and group layouts against closed forms and optimality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax import optim
from sparsenas_jax.optim.groups import GroupLayout


def _sgl_objective(p, z, l1_t, grp_t, ids):
  """0.5‖p − z‖² + Σ l1_t|p| + Σₙ grp_t √|n| ‖pₙ‖ in NumPy (ids >= 0)."""
  val = 0.5 * np.sum((p - z) ** 2) + l1_t * np.abs(p).sum()
  for g in np.unique(ids):
    m = ids == g
    val += grp_t * np.sqrt(m.sum()) * np.linalg.norm(p[m])
  return val


def test_prox_l1_closed_form():
  x = jnp.array([-3.0, -0.5, 0.0, 0.2, 2.0])
  np.testing.assert_allclose(optim.prox_l1(x, 1.0), [-2.0, 0, 0, 0, 1.0])
  per_elem = optim.prox_l1({'a': x}, {'a': jnp.array([0, 1, 1, 0.1, 3])})
  np.testing.assert_allclose(per_elem['a'], [-3.0, 0, 0, 0.1, 0])


def test_prox_group_l2_closed_form():
  # Group 0 = (3, 4): norm 5, size 2: scale = 1 - 0.5*sqrt(2)/5.
  # Group 1 = (0.1, 0.1, 0.1): norm 0.173 < 0.5*sqrt(3): zeroed.
  x = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.1, 0.1, 0.1])}
  groups = {'a': np.array([0, 0]), 'b': np.array([1, 1, 1])}
  out = optim.prox_group_l2(x, 0.5, groups)
  np.testing.assert_allclose(out['a'], np.array([3., 4.]) *
                             (1 - 0.5 * np.sqrt(2) / 5), rtol=1e-6)
  assert np.all(np.asarray(out['b']) == 0)
  # Per-group thresholds, and unpenalised (-1) elements pass through.
  x = jnp.array([3.0, 4.0, 7.0])
  out = optim.prox_group_l2(x, jnp.array([1.0]), np.array([0, 0, -1]))
  np.testing.assert_allclose(out, [3 * (1 - np.sqrt(2) / 5),
                                   4 * (1 - np.sqrt(2) / 5), 7.0], rtol=1e-6)


@jax.enable_x64(True)
def test_prox_sgl_is_the_minimiser_of_the_prox_objective():
  """The composition of Eq. 5 is the exact prox: no direction improves it."""
  rng = np.random.default_rng(0)
  ids = np.repeat(np.arange(5), [2, 3, 4, 1, 6])
  l1_t, grp_t = 0.3, 0.4
  zero_groups = zero_in_live_group = 0
  for trial in range(5):
    z = rng.normal(size=ids.size) * (1 + trial / 2)
    p = np.asarray(optim.prox_sgl(jnp.asarray(z), l1_t, grp_t, ids))
    base = _sgl_objective(p, z, l1_t, grp_t, ids)
    # Convex objective: p is the global minimiser iff no small step in any
    # direction decreases it. Probe coordinates and random directions.
    dirs = np.concatenate([np.eye(ids.size), -np.eye(ids.size),
                           rng.normal(size=(200, ids.size))])
    for d in dirs:
      for h in (1e-3, 1e-2):
        assert _sgl_objective(p + h * d, z, l1_t, grp_t, ids) >= base - 1e-12
    for g in np.unique(ids):
      live = p[ids == g] != 0
      zero_groups += not live.any()
      zero_in_live_group += live.any() and not live.all()
  # The probes covered both kinds of sparsity the composition creates.
  assert zero_groups > 0 and zero_in_live_group > 0


def test_prox_sgl_special_cases_are_lasso_and_group_lasso():
  z = jnp.array([0.5, -2.0, 0.1, 3.0])
  ids = np.array([0, 0, 1, 1])
  np.testing.assert_allclose(optim.prox_sgl(z, 0.3, 0.0, ids),
                             optim.prox_l1(z, 0.3))
  np.testing.assert_allclose(optim.prox_sgl(z, 0.0, 0.3, ids),
                             optim.prox_group_l2(z, 0.3, ids))


def test_zero_group_stays_zero_with_finite_gradients():
  x = {'a': jnp.zeros(3), 'b': jnp.array([1.0, -2.0])}
  groups = optim.leaf_groups(x)
  def f(x):
    p = optim.prox_sgl(x, 0.1, 0.2, groups)
    return jnp.sum(p['a'] ** 2) + jnp.sum(p['b'])
  g = jax.grad(f)(x)
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))
  assert np.all(np.asarray(optim.prox_sgl(x, 0.1, 0.2, groups)['a']) == 0)
  gp = jax.grad(optim.sgl_penalty)(x, 1.0, 0.5, groups)
  np.testing.assert_array_equal(gp['a'], 0.0)
  assert np.all(np.isfinite(gp['b']))


def test_sgl_penalty_matches_numpy():
  rng = np.random.default_rng(1)
  x = {'k': rng.normal(size=(4, 3)), 'b': rng.normal(size=3)}
  groups = optim.row_groups(x)  # rows of k penalised, b unpenalised
  lam, alpha = 0.7, 0.3
  k = x['k']
  expected = lam * (alpha * np.abs(k).sum() + (1 - alpha) * np.sqrt(3) *
                    np.linalg.norm(k, axis=1).sum())
  np.testing.assert_allclose(optim.sgl_penalty(x, lam, alpha, groups),
                             expected, rtol=1e-5)


def test_group_layout_helpers():
  params = {'dense0': {'kernel': np.zeros((3, 2)), 'bias': np.zeros(2)},
            'dense1': {'kernel': np.zeros((2, 4)), 'bias': np.zeros(4)}}
  rows = optim.row_groups(params)
  np.testing.assert_array_equal(rows['dense0']['kernel'],
                                [[0, 0], [1, 1], [2, 2]])
  np.testing.assert_array_equal(rows['dense1']['kernel'],
                                [[3, 3, 3, 3], [4, 4, 4, 4]])
  np.testing.assert_array_equal(rows['dense0']['bias'], [-1, -1])
  leaves = optim.leaf_groups(params)
  assert sorted(np.unique(np.concatenate(
      [v.ravel() for v in jax.tree.leaves(leaves)]))) == [0, 1, 2, 3]
  layout = GroupLayout(rows)
  np.testing.assert_array_equal(layout.sizes, [2, 2, 2, 4, 4])
  arch = {'normal': {'node_0': np.zeros((2, 7)), 'node_1': np.zeros((3, 7))}}
  nodes = optim.darts_node_groups(arch)
  assert set(np.unique(nodes['normal']['node_1'])) == {1}
  with pytest.raises(ValueError, match='num_predecessors'):
    optim.darts_node_groups({'a': np.zeros(3)})


@pytest.mark.parametrize('size, ties', [(40, False), (40, True), (600, True)])
def test_lower_median_per_group_matches_numpy(size, ties):
  # 600 elements in 6 groups exceed the rank-selection width: the sort path.
  rng = np.random.default_rng(2)
  ids = rng.integers(0, 6, size=size).astype(np.int32)
  ids[:3] = -1
  values = rng.uniform(size=size).astype(np.float32)
  if ties:
    values = np.round(values * 3) / 3
  layout = GroupLayout(ids)
  got = layout.lower_median([jnp.asarray(values)], [layout.ids((), values)])
  for g in range(6):
    v = np.sort(values[ids == g])
    assert got[g] == v[(v.size - 1) // 2]


@pytest.mark.parametrize('groups, match', [
    ({'a': np.zeros(3, np.int32)}, 'no entry'),
    ({'w': np.zeros(4, np.int32)}, 'shape'),
    ({'w': np.zeros(3)}, 'integers'),
    ({'w': np.array([0, -2, 1])}, '-1'),
])
def test_bad_groups_raise_clear_errors(groups, match):
  with pytest.raises(ValueError, match=match):
    optim.prox_group_l2({'w': jnp.ones(3)}, 0.1, groups)
