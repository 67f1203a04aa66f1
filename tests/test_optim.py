"""sgl_prox, hapg and adam_hapg against a peer solver and NumPy transcriptions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsenas_jax import optim

LAM, ALPHA = 0.25, 0.5
# Two leaves; group 1 spans both, so ids are global across the tree.
GROUPS = {'a': np.array([0, 0, 0, 1, 1, 1], np.int32),
          'b': np.array([1, 2, 2, 2, 3, 3], np.int32)}


def _problem():
  rng = np.random.default_rng(0)
  n, p = 80, 12
  x = rng.normal(size=(n, p))
  w_true = np.r_[1.5, -2.0, 1.0, 0.3, 0, 0, 0, 0, 0, 0, 2.0, 0.05]
  y = x @ w_true + 0.1 * rng.normal(size=n)
  return x, y


def _split(w):
  return {'a': w[:6], 'b': w[6:]}


def _loss_fn(x, y):
  def loss(w):
    flat = jnp.concatenate([w['a'], w['b']])
    return 0.5 * jnp.mean((x @ flat - y) ** 2)
  return loss


def _skglm_solution(x, y):
  from skglm.datafits import QuadraticGroup  # pylint: disable=g-import-not-at-top
  from skglm.penalties import WeightedL1GroupL2  # pylint: disable=g-import-not-at-top
  from skglm.solvers import GroupBCD  # pylint: disable=g-import-not-at-top
  ids = np.concatenate([GROUPS['a'], GROUPS['b']])
  order = np.argsort(ids, kind='stable').astype(np.int32)
  sizes = np.bincount(ids)
  ptr = np.r_[0, np.cumsum(sizes)].astype(np.int32)
  penalty = WeightedL1GroupL2(
      alpha=LAM, weights_groups=(1 - ALPHA) * np.sqrt(sizes),
      weights_features=np.full(ids.size, ALPHA), grp_ptr=ptr,
      grp_indices=order)
  datafit = QuadraticGroup(grp_ptr=ptr, grp_indices=order)
  solver = GroupBCD(ws_strategy='fixpoint', tol=1e-14, max_iter=100000)
  return solver.solve(x, y, datafit, penalty)[0]


def _numpy_fista(x, y, steps=3000):
  """FISTA written from Beck & Teboulle (2009) with the SGL prox, in NumPy."""
  ids = np.concatenate([GROUPS['a'], GROUPS['b']])
  sizes = np.bincount(ids)
  step = x.shape[0] / np.linalg.norm(x, 2) ** 2
  group_t = step * LAM * (1 - ALPHA) * np.sqrt(sizes)

  def prox(z):
    z = np.sign(z) * np.maximum(np.abs(z) - step * LAM * ALPHA, 0)
    norms = np.sqrt(np.bincount(ids, weights=z * z))
    scale = np.where(norms > group_t, 1 - group_t / np.maximum(norms, 1e-300),
                     0)
    return z * scale[ids]

  w = w_prev = np.zeros(ids.size)
  s = 1.0
  for _ in range(steps):
    s_next = (1 + np.sqrt(1 + 4 * s * s)) / 2
    yk = w + (s - 1) / s_next * (w - w_prev)
    grad = x.T @ (x @ yk - y) / x.shape[0]
    w_prev, w, s = w, prox(yk - step * grad), s_next
  return w


def _run(opt, loss, w0, steps):
  @jax.jit
  def run(w, state):
    def body(carry, _):
      w, state = carry
      updates, state = opt.update(jax.grad(loss)(w), state, w)
      return (optax.apply_updates(w, updates), state), None
    return jax.lax.scan(body, (w, state), None, length=steps)[0]
  return run(w0, opt.init(w0))


def test_numpy_reference_agrees_with_the_skglm_peer_solver():
  # skglm compiles with numba (~50 s on 2 cores): checked once, here.
  x, y = _problem()
  np.testing.assert_allclose(_numpy_fista(x, y), _skglm_solution(x, y),
                             atol=1e-9)


@jax.enable_x64(True)
def test_ista_and_hapg_converge_to_the_sgl_solution():
  x, y = _problem()
  reference = _numpy_fista(x, y)
  zero = reference == 0
  # Both exact zeros and a zero inside a live group: the test exercises both
  # levels of the hierarchical prox.
  assert zero[7:10].all() and zero[3:7].any() and not zero[3:7].all()

  loss = _loss_fn(x, y)
  lr = x.shape[0] / np.linalg.norm(x, 2) ** 2
  w0 = _split(jnp.zeros(12))
  ista = optax.chain(optax.sgd(lr),
                     optim.sgl_prox(LAM, ALPHA, groups=GROUPS, step_size=lr))
  w_ista, _ = _run(ista, loss, w0, 3000)
  w_hapg, state = _run(optim.hapg(lr, LAM, ALPHA, groups=GROUPS), loss, w0,
                       3000)
  for got in (w_ista, optim.sparse_params(state)):
    flat = np.concatenate([got['a'], got['b']])
    np.testing.assert_allclose(flat, reference, atol=1e-8)
    np.testing.assert_array_equal(flat == 0, zero)  # exact zeros
  # The extrapolated HAPG params are not where the architecture is read.
  assert np.isfinite(np.concatenate([w_hapg['a'], w_hapg['b']])).all()


def _numpy_prox(z, l1_t, grp_t, ids):
  out = np.sign(z) * np.maximum(np.abs(z) - l1_t, 0)
  for g in np.unique(ids):
    m = ids == g
    nrm = np.linalg.norm(out[m])
    t = grp_t[g] * np.sqrt(m.sum())
    out[m] = 0 if nrm <= t else out[m] * (1 - t / nrm)
  return out


def _numpy_hapg(grads, a0, ids, lr, lam, alpha, adam=None):
  """Eq. 6-8 transcribed literally (v carried in state, u_t from t)."""
  a, v, u_prev = a0.copy(), np.zeros_like(a0), 0.0
  m = s2 = np.zeros_like(a0)
  out = []
  for t, grad_fn in enumerate(grads, start=1):
    g = grad_fn(a)
    u = max((t - 2) / (t + 1), 0.0)
    if adam is None:
      z = a - lr * g
      l1_t = lr * lam * alpha
      grp_t = np.full(ids.max() + 1, lr * lam * (1 - alpha))
    else:
      b1, b2, eps = adam
      m = b1 * m + (1 - b1) * g
      s2 = b2 * s2 + (1 - b2) * g * g
      m_hat, s2_hat = m / (1 - b1 ** t), s2 / (1 - b2 ** t)
      step = lr / (np.sqrt(s2_hat) + eps)
      z = a - step * m_hat
      l1_t = step * lam * alpha
      grp_t = np.array([np.sort(step[ids == g_])[((ids == g_).sum() - 1) // 2]
                        for g_ in range(ids.max() + 1)]) * lam * (1 - alpha)
    prox = _numpy_prox(z, l1_t, grp_t, ids)
    v = prox - a + u_prev * v                                   # Eq. 7
    a = prox + u * v                                            # Eq. 8
    u_prev = u
    out.append((a.copy(), prox))
  return out


@pytest.mark.parametrize('adam', [None, (0.5, 0.999, 1e-8), (0.9, 0.99, 1e-3)])
@jax.enable_x64(True)
def test_single_steps_match_a_numpy_transcription(adam):
  rng = np.random.default_rng(3)
  ids = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2], np.int32)
  a0 = rng.normal(size=10)
  mats = [rng.normal(size=(10, 10)) for _ in range(6)]
  grads = [lambda a, q=q: 0.2 * q @ a + 0.1 for q in mats]
  lr, lam, alpha = 0.05, 4.0, 0.4
  expected = _numpy_hapg(grads, a0, ids, lr, lam, alpha, adam)
  if adam is None:
    opt = optim.hapg(lr, lam, alpha, groups=ids)
  else:
    b1, b2, eps = adam
    opt = optim.adam_hapg(lr, lam, alpha, groups=ids, b1=b1, b2=b2, eps=eps)
  step = jax.jit(opt.update)
  a, state = jnp.asarray(a0), opt.init(jnp.asarray(a0))
  for grad_fn, (a_ref, prox_ref) in zip(grads, expected):
    updates, state = step(jnp.asarray(grad_fn(np.asarray(a))), state, a)
    a = optax.apply_updates(a, updates)
    np.testing.assert_allclose(a, a_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(optim.sparse_params(state), prox_ref,
                               rtol=1e-10, atol=1e-12)
  assert np.any(prox_ref == 0)  # the steps did reach the thresholds


def test_adam_b1_close_to_one_with_acceleration_is_the_documented_pitfall():
  x, y = _problem()
  loss = _loss_fn(x, y)
  w0 = _split(jnp.zeros(12))
  objective = lambda w: loss(w) + optim.sgl_penalty(w, LAM, ALPHA, GROUPS)
  optimum = float(objective(_split(jnp.asarray(_numpy_fista(x, y)))))
  finals = {}
  for b1 in (0.5, 0.9):
    _, state = _run(optim.adam_hapg(0.05, LAM, ALPHA, groups=GROUPS, b1=b1),
                    loss, w0, 2000)
    finals[b1] = float(objective(optim.sparse_params(state)))
  # The default lands within 2% of the optimum (AdamHAPG's median-step group
  # prox is a heuristic, so not on it); b1 = 0.9 stacked with u_t diverges.
  assert finals[0.5] < 1.02 * optimum
  assert finals[0.9] > 10 * optimum


def test_adam_then_sgl_prox_lands_on_the_prox_of_the_adam_step():
  x, y = _problem()
  loss = _loss_fn(x, y)
  lr, lam = 0.05, 1.0
  opt = optax.chain(optax.adam(lr),
                    optim.sgl_prox(lam, ALPHA, groups=GROUPS, step_size=lr))
  adam = optax.adam(lr)
  ids = np.concatenate([GROUPS['a'], GROUPS['b']])
  w = _split(jnp.asarray(np.random.default_rng(4).normal(size=12) * 0.3))
  state, adam_state = opt.init(w), adam.init(w)
  step = jax.jit(opt.update)
  for _ in range(3):
    g = jax.grad(loss)(w)
    updates, state = step(g, state, w)
    adam_updates, adam_state = adam.update(g, adam_state, w)
    z = np.concatenate([w['a'] + adam_updates['a'],
                        w['b'] + adam_updates['b']])
    expected = _numpy_prox(z, lr * lam * ALPHA,
                           np.full(4, lr * lam * (1 - ALPHA)), ids)
    w = optax.apply_updates(w, updates)
    np.testing.assert_allclose(np.concatenate([w['a'], w['b']]), expected,
                               atol=1e-6)
  # Small weights were caught at exactly zero, large ones survive.
  assert np.any(expected == 0) and np.any(expected != 0)


def test_no_recompilation_and_inject_hyperparams_schedule():
  x, y = _problem()
  loss = _loss_fn(x, y)
  schedule = optax.linear_schedule(0.0, 0.5, transition_steps=10)
  injected = optax.inject_hyperparams(optim.hapg)(
      learning_rate=0.1, strength=schedule, l1_ratio=ALPHA, groups=GROUPS)
  direct = optim.hapg(0.1, schedule, ALPHA, groups=GROUPS)
  traces = []
  direct_update = jax.jit(direct.update)

  @jax.jit
  def step(w, state):
    traces.append(1)
    updates, state = injected.update(jax.grad(loss)(w), state, w)
    return optax.apply_updates(w, updates), state

  w = w_direct = _split(jnp.zeros(12))
  state, state_direct = injected.init(w), direct.init(w)
  strengths = []
  for _ in range(12):
    w, state = step(w, state)
    strengths.append(float(state.hyperparams['strength']))
    updates, state_direct = direct_update(jax.grad(loss)(w_direct),
                                          state_direct, w_direct)
    w_direct = optax.apply_updates(w_direct, updates)
  assert len(traces) == 1
  np.testing.assert_allclose(strengths[:3], [0.0, 0.05, 0.1], atol=1e-7)
  np.testing.assert_allclose(optim.sparse_params(state)['b'],
                             optim.sparse_params(state_direct)['b'], atol=1e-6)


def test_partition_and_masked_resolve_groups_by_key_path():
  x, y = _problem()
  loss = _loss_fn(x, y)
  w0 = _split(jnp.zeros(12))
  labels = {'a': 'sgd', 'b': 'hapg'}
  part = optax.partition(
      {'sgd': optax.sgd(0.1), 'hapg': optim.hapg(0.1, LAM, ALPHA,
                                                 groups=GROUPS)}, labels)
  w_part, state = _run(part, loss, w0, 50)
  sparse = optim.sparse_params(state)
  assert isinstance(sparse['a'], optax.MaskedNode)
  assert np.any(np.asarray(sparse['b']) == 0)

  masked = optax.chain(
      optax.sgd(0.1),
      optax.masked(optim.sgl_prox(LAM, ALPHA, groups=GROUPS, step_size=0.1),
                   {'a': False, 'b': True}))
  w_masked, _ = _run(masked, loss, w0, 50)
  assert np.all(np.asarray(w_masked['a']) != 0)  # plain SGD: no exact zeros
  assert np.any(np.asarray(w_masked['b']) == 0)
  assert np.all(np.isfinite(np.asarray(w_part['a'])))


@pytest.mark.parametrize('make, match', [
    (lambda: optim.hapg(0.1, -1.0, 0.5, groups=GROUPS), 'strength'),
    (lambda: optim.adam_hapg(0.1, 0.1, 1.5, groups=GROUPS), 'l1_ratio'),
    (lambda: optim.sgl_prox(0.1, -0.1, groups=GROUPS, step_size=0.1),
     'l1_ratio'),
    (lambda: optim.sgl_prox(0.1, 0.5, groups=GROUPS, step_size=-1),
     'step_size'),
])
def test_bad_hyperparameters_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_missing_params_and_missing_state_raise():
  opt = optim.hapg(0.1, 0.1, 0.5, groups=GROUPS)
  w = _split(jnp.zeros(12))
  with pytest.raises(ValueError, match='params'):
    opt.update(w, opt.init(w))
  with pytest.raises(ValueError, match='no hapg'):
    optim.sparse_params(optax.sgd(0.1).init(w))


# Every public factory of ``optim`` that returns a transformation.
_TRANSFORMATIONS = {
    'hapg': lambda: optim.hapg(0.1, LAM, ALPHA, groups=GROUPS),
    'adam_hapg': lambda: optim.adam_hapg(0.1, LAM, ALPHA, groups=GROUPS),
    'sgl_prox': lambda: optim.sgl_prox(LAM, ALPHA, groups=GROUPS,
                                       step_size=0.1),
    'clip_by_global_norm': lambda: optim.clip_by_global_norm(1.0),
}


def test_every_public_transformation_is_covered_by_the_extra_args_tests():
  import inspect  # pylint: disable=g-import-not-at-top
  returns_a_transformation = {
      name for name in optim.__all__
      if inspect.isfunction(getattr(optim, name)) and 'GradientTransformation'
      in str(inspect.signature(getattr(optim, name)).return_annotation)}
  assert returns_a_transformation == set(_TRANSFORMATIONS)


@pytest.mark.parametrize('name', sorted(_TRANSFORMATIONS))
def test_update_accepts_and_ignores_extra_args_like_optax(name):
  x, y = _problem()
  loss = _loss_fn(x, y)
  w = _split(jnp.asarray(np.random.default_rng(5).normal(size=12) * 0.3))
  opt = _TRANSFORMATIONS[name]()
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  chained = optax.chain(optax.clip_by_global_norm(1.), opt)
  for tx in (opt, chained):
    state = tx.init(w)
    for _ in range(2):  # the second step also exercises the carried state
      value, g = jax.value_and_grad(loss)(w)
      plain, plain_state = tx.update(g, state, w)
      extra, extra_state = tx.update(g, state, w, value=value)
      jax.tree.map(np.testing.assert_array_equal, extra, plain)
      jax.tree.map(np.testing.assert_array_equal, extra_state, plain_state)
      w, state = optax.apply_updates(w, plain), plain_state
