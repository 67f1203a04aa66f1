"""Tests for sparsenas_jax.bilevel.

The reference for every mode is the unrolled objective F(A) = L_val(w′(A), A)
written out again here, differentiated by brute-force central differences and
by plain reverse mode, in float64.
"""

import functools

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax import bilevel
from sparsenas_jax.bilevel import darts_hypergradient

MODES = ('exact', 'finite_difference', 'first_order')


def _forward(weights, arch, x):
  """A two-layer supernet: A mixes the ops of each hidden unit and the paths.

  Hidden unit j is Σ_o A_ops[o, j] op_o(pre_j) over op_o in (tanh, sin, id);
  the output is A_paths[0] · (hidden path) + A_paths[1] · (skip path), so A
  interacts with every weight.
  """
  pre = x @ weights['hidden']['kernel'] + weights['hidden']['bias']
  ops = jnp.stack([jnp.tanh(pre), jnp.sin(pre), pre])
  hidden = jnp.einsum('onj,oj->nj', ops, arch['ops'])
  deep = jnp.tanh(hidden) @ weights['out']['kernel']
  skip = x @ weights['skip']['kernel']
  return arch['paths'][0] * deep + arch['paths'][1] * skip


def _loss(weights, arch, batch):
  x, y = batch
  return jnp.mean(jnp.square(_forward(weights, arch, x) - y))


_grad_w = jax.grad(_loss)
_grad_arch = jax.grad(_loss, argnums=1)


def _problem(seed=0, dtype=np.float64):
  """Weights, arch, momentum buffer and two batches of NumPy ``dtype``."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: rng.normal(size=shape).astype(dtype)
  weights = {
      'hidden': {'kernel': normal(3, 4), 'bias': 0.1 * normal(4)},
      'out': {'kernel': normal(4, 2)},
      'skip': {'kernel': 0.5 * normal(3, 2)},
  }
  arch = {'ops': 0.5 + 0.3 * normal(3, 4), 'paths': 1. + 0.2 * normal(2)}
  buf = jax.tree.map(lambda w: 0.1 * normal(*w.shape), weights)
  train_batch = (normal(6, 3), normal(6, 2))
  val_batch = (normal(6, 3), normal(6, 2))
  return weights, arch, buf, train_batch, val_batch


def _unrolled_objective(weights, buf, train_batch, val_batch, *, eta,
                        momentum, weight_decay):
  """F(A) = L_val(w′(A), A), w′ = w − η (μ·buf + ∇_w L_train + λ·w)."""

  def objective(arch):
    grad_w = _grad_w(weights, arch, train_batch)
    w_new = jax.tree.map(
        lambda w, g, b: w - eta * (momentum * b + g + weight_decay * w),
        weights, grad_w, buf)
    return _loss(w_new, arch, val_batch)

  return objective


def _central_difference(f, arch, step=1e-6):
  """∂f/∂A coordinate by coordinate, as a pytree like ``arch``."""
  flat, unravel = ravel_pytree(arch)
  f_flat = lambda a: f(unravel(a))
  grad = np.zeros_like(flat)
  for i in range(flat.size):
    e = np.zeros_like(flat)
    e[i] = step
    grad[i] = (f_flat(flat + e) - f_flat(flat - e)) / (2 * step)
  return unravel(jnp.asarray(grad))


def _flat(tree):
  return np.concatenate(
      [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _rel_err(a, b):
  a, b = _flat(a), _flat(b)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


# (eta, momentum, weight_decay): plain Eq. 12, and DARTS's full SGD step.
STEPS = [(0.3, 0.0, 0.0), (0.2, 0.9, 3e-2)]


@pytest.mark.parametrize('eta,momentum,weight_decay', STEPS)
def test_exact_matches_central_difference_and_reverse_mode(
    x64, eta, momentum, weight_decay):
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  g = darts_hypergradient(
      _loss, _loss, weights, arch, train_batch, val_batch, eta=eta,
      mode='exact', momentum=momentum, momentum_buffer=buf,
      weight_decay=weight_decay)
  assert jax.tree.structure(g) == jax.tree.structure(arch)
  assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(g))

  objective = _unrolled_objective(
      weights, buf, train_batch, val_batch, eta=eta, momentum=momentum,
      weight_decay=weight_decay)
  brute_force = _central_difference(objective, arch)
  np.testing.assert_allclose(_flat(g), _flat(brute_force), rtol=1e-6,
                             atol=1e-9)
  reverse = jax.jit(jax.grad(objective))(arch)
  np.testing.assert_allclose(_flat(g), _flat(reverse), rtol=1e-10,
                             atol=1e-13)


def test_momentum_and_weight_decay_change_the_gradient(x64):
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  grad = functools.partial(darts_hypergradient, _loss, _loss, weights, arch,
                           train_batch, val_batch, eta=0.2)
  plain = grad()
  assert _rel_err(grad(momentum=0.9, momentum_buffer=buf), plain) > 1e-3
  assert _rel_err(grad(weight_decay=0.1), plain) > 1e-3
  # No buffer yet counts as a zero buffer.
  zeros = jax.tree.map(jnp.zeros_like, weights)
  np.testing.assert_allclose(
      _flat(grad(momentum=0.9)),
      _flat(grad(momentum=0.9, momentum_buffer=zeros)), rtol=1e-14)


@pytest.mark.parametrize('eta,momentum,weight_decay', STEPS)
def test_finite_difference_approaches_exact(x64, eta, momentum, weight_decay):
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  grad = functools.partial(
      darts_hypergradient, _loss, _loss, weights, arch, train_batch,
      val_batch, eta=eta, momentum=momentum, momentum_buffer=buf,
      weight_decay=weight_decay)
  exact, fd = grad(mode='exact'), grad(mode='finite_difference')

  # The second-order term alone, so the first-order part cannot hide errors.
  w_new = jax.tree.map(
      lambda w, g, b: w - eta * (momentum * b + g + weight_decay * w),
      weights, _grad_w(weights, arch, train_batch), buf)
  direct = _grad_arch(w_new, arch, val_batch)
  correction = jax.tree.map(jnp.subtract, exact, direct)
  assert np.linalg.norm(_flat(correction)) > 0.05 * np.linalg.norm(
      _flat(exact))
  fd_correction = jax.tree.map(jnp.subtract, fd, direct)
  assert _rel_err(fd_correction, correction) < 1e-3
  assert _rel_err(fd, exact) < 1e-3
  # Central differences are not exact: a mode that silently fell back on
  # the exact product would pass the bounds above but not this.
  assert _rel_err(fd_correction, correction) > 1e-12


def test_first_order_is_validation_gradient_at_current_weights(x64):
  del x64
  weights, arch, _, train_batch, val_batch = _problem()
  g = darts_hypergradient(_loss, _loss, weights, arch, train_batch,
                          val_batch, eta=0.3, mode='first_order')
  expected = _grad_arch(weights, arch, val_batch)
  np.testing.assert_allclose(_flat(g), _flat(expected), rtol=1e-12)
  exact = darts_hypergradient(_loss, _loss, weights, arch, train_batch,
                              val_batch, eta=0.3, mode='exact')
  assert _rel_err(g, exact) > 1e-2


def test_modes_coincide_without_unrolling(x64):
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  grads = [
      darts_hypergradient(_loss, _loss, weights, arch, train_batch,
                          val_batch, eta=0.0, mode=mode, momentum=0.9,
                          momentum_buffer=buf, weight_decay=0.1)
      for mode in MODES]
  for g in grads[1:]:
    np.testing.assert_allclose(_flat(g), _flat(grads[0]), rtol=1e-12)


def test_finite_difference_guards_zero_direction(x64):
  """v = 0 when L_val ignores w; ε = 0.01 / ‖v‖ must not make NaNs."""
  del x64
  weights, arch, _, train_batch, val_batch = _problem()
  val_loss = lambda w, a, batch: jnp.sum(jnp.square(a['ops'])) + jnp.sum(
      a['paths'])
  expected = {'ops': 2 * arch['ops'], 'paths': np.ones(2)}
  for mode in MODES:
    g = darts_hypergradient(_loss, val_loss, weights, arch, train_batch,
                            val_batch, eta=0.3, mode=mode)
    np.testing.assert_allclose(_flat(g), _flat(expected), rtol=1e-14)


def test_return_val_loss(x64):
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  kwargs = dict(eta=0.2, momentum=0.9, momentum_buffer=buf,
                weight_decay=3e-2)
  objective = _unrolled_objective(weights, buf, train_batch, val_batch,
                                  eta=0.2, momentum=0.9, weight_decay=3e-2)
  for mode in MODES:
    g, value = darts_hypergradient(
        _loss, _loss, weights, arch, train_batch, val_batch, mode=mode,
        return_val_loss=True, **kwargs)
    plain = darts_hypergradient(_loss, _loss, weights, arch, train_batch,
                                val_batch, mode=mode, **kwargs)
    np.testing.assert_array_equal(_flat(g), _flat(plain))
    expected = (_loss(weights, arch, val_batch) if mode == 'first_order'
                else objective(arch))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
  assert not np.isclose(_loss(weights, arch, val_batch), objective(arch))


@pytest.mark.parametrize('mode', MODES)
def test_jit_with_static_mode_traces_once(x64, mode):
  del x64
  traces = []

  def counting(loss):
    def counted(weights, arch, batch):
      traces.append(None)  # Runs only while tracing.
      return loss(weights, arch, batch)
    return counted

  train_loss, val_loss = counting(_loss), counting(_loss)
  jitted = jax.jit(darts_hypergradient, static_argnums=(0, 1),
                   static_argnames=('mode',))
  for seed, eta in ((0, 0.3), (1, 0.1), (2, 0.05)):
    weights, arch, buf, train_batch, val_batch = _problem(seed)
    kwargs = dict(mode=mode, momentum=0.9, momentum_buffer=buf,
                  weight_decay=3e-2)
    g = jitted(train_loss, val_loss, weights, arch, train_batch, val_batch,
               eta=jnp.float64(eta), **kwargs)
    if seed == 0:
      traced_once = len(traces)
      assert traced_once > 0
    assert jax.tree.structure(g) == jax.tree.structure(arch)
    eager = darts_hypergradient(_loss, _loss, weights, arch, train_batch,
                                val_batch, eta=eta, **kwargs)
    np.testing.assert_allclose(_flat(g), _flat(eager), rtol=1e-10)
  # New values of the weights, batches and eta reuse the first trace.
  assert len(traces) == traced_once


def test_float32_keeps_dtypes_and_agrees_with_float64():
  weights, arch, buf, train_batch, val_batch = _problem()
  kwargs = dict(eta=0.2, momentum=0.9, momentum_buffer=buf,
                weight_decay=3e-2)
  with jax.enable_x64(True):
    g64 = darts_hypergradient(_loss, _loss, weights, arch, train_batch,
                              val_batch, **kwargs)
  cast = lambda t: jax.tree.map(lambda x: np.asarray(x, np.float32), t)
  jitted = jax.jit(darts_hypergradient, static_argnums=(0, 1))
  g32 = jitted(_loss, _loss, cast(weights), cast(arch), cast(train_batch),
               cast(val_batch), **kwargs | {'momentum_buffer': cast(buf)})
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g32))
  assert _rel_err(g32, g64) < 1e-4


@pytest.mark.parametrize('mode', MODES)
def test_split_hypergradient_uses_arch_only_gradients(x64, mode):
  """Given ∇_A-only derivatives, the split assembly calls them where no ∇_w
  is needed (first order: the validation gradient; finite differences: the
  two points) and gets darts_hypergradient's numbers."""
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  kwargs = dict(eta=0.2, mode=mode, momentum=0.9, momentum_buffer=buf,
                weight_decay=3e-2)
  full = bilevel.autodiff_derivatives(_loss, _loss)
  calls = {'train': 0, 'val': 0, 'full': 0}

  def counted(fn, name):
    def wrapped(*args):
      calls[name] += 1
      return fn(*args)
    return wrapped

  arch_only = lambda name: counted(
      jax.value_and_grad(_loss, argnums=1), name)
  derivatives = bilevel.Derivatives(
      counted(full.train_grads, 'full'), counted(full.val_grads, 'full'),
      full.mixed_product, train_arch_grads=arch_only('train'),
      val_arch_grads=arch_only('val'))
  g, value = bilevel.split_hypergradient(
      derivatives, weights, arch, train_batch, val_batch, **kwargs)
  expected, expected_value = darts_hypergradient(
      _loss, _loss, weights, arch, train_batch, val_batch,
      return_val_loss=True, **kwargs)
  np.testing.assert_allclose(_flat(g), _flat(expected), rtol=1e-12)
  np.testing.assert_allclose(value, expected_value, rtol=1e-12)
  assert calls == {'exact': {'train': 0, 'val': 0, 'full': 2},
                   'finite_difference': {'train': 2, 'val': 0, 'full': 2},
                   'first_order': {'train': 0, 'val': 1, 'full': 0}}[mode]


def test_unknown_mode_raises():
  weights, arch, _, train_batch, val_batch = _problem(dtype=np.float32)
  with pytest.raises(ValueError,
                     match="'exact', 'finite_difference', 'first_order'"):
    darts_hypergradient(_loss, _loss, weights, arch, train_batch, val_batch,
                        eta=0.1, mode='second_order')


@pytest.mark.parametrize('grad_clip', [1e-3, 1e3])
def test_clipped_unrolled_step_matches_central_difference(x64, grad_clip):
  """With clipping, g is the derivative of L_val(w′(A), A) for
  w′ = w − η (c ∇_w L_train(w, A) + λ·w), c = min(1, clip / ‖∇_w L‖) held
  at its value for the current A (the tiny clip binds, the large one not)."""
  del x64
  weights, arch, _, train_batch, val_batch = _problem()
  eta, weight_decay = 0.3, 1e-2
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(
      _grad_w(weights, arch, train_batch))))
  clip = min(1.0, grad_clip / norm)

  def objective(a):
    grad_w = _grad_w(weights, a, train_batch)
    w_new = jax.tree.map(lambda w, g: w - eta * (clip * g + weight_decay * w),
                         weights, grad_w)
    return _loss(w_new, a, val_batch)

  brute_force = _central_difference(objective, arch)
  for mode, rtol in (('exact', 1e-6), ('finite_difference', 1e-3)):
    g = darts_hypergradient(
        _loss, _loss, weights, arch, train_batch, val_batch, eta=eta,
        mode=mode, weight_decay=weight_decay, grad_clip=grad_clip)
    np.testing.assert_allclose(_flat(g), _flat(brute_force), rtol=rtol,
                               atol=1e-9)
  if grad_clip < norm:  # the clip binds: not the unclipped gradient
    unclipped = darts_hypergradient(
        _loss, _loss, weights, arch, train_batch, val_batch, eta=eta,
        mode='exact', weight_decay=weight_decay)
    assert _rel_err(unclipped, brute_force) > 1e-3


@pytest.mark.parametrize('order', bilevel.MIXED_ORDERS)
def test_mixed_product_orders_match_central_difference(x64, order):
  """∇²_{A,w} L v in either order equals the central difference of ∇_A L
  along v, coordinate of A by coordinate (float64), and the hypergradient
  assembled with it equals the brute-force derivative of F(A)."""
  del x64
  weights, arch, buf, train_batch, val_batch = _problem()
  v = jax.tree.map(lambda w: 0.3 * jnp.cos(w), weights)
  got = jax.jit(bilevel.mixed_product(_loss, order))(weights, arch, v,
                                                     train_batch)
  eps = 1e-5
  shifted = lambda s: _grad_arch(
      jax.tree.map(lambda w, d: w + s * d, weights, v), arch, train_batch)
  expected = jax.tree.map(lambda p, m: (p - m) / (2 * eps), shifted(eps),
                          shifted(-eps))
  np.testing.assert_allclose(_flat(got), _flat(expected), rtol=1e-7,
                             atol=1e-10)

  derivatives = bilevel.autodiff_derivatives(_loss, _loss, mixed_order=order)
  g, _ = bilevel.split_hypergradient(derivatives, weights, arch, train_batch,
                                     val_batch, eta=0.3, mode='exact')
  objective = _unrolled_objective(weights, buf, train_batch, val_batch,
                                  eta=0.3, momentum=0.0, weight_decay=0.0)
  np.testing.assert_allclose(_flat(g), _flat(jax.grad(objective)(arch)),
                             rtol=1e-10, atol=1e-13)


def test_unknown_mixed_order_raises():
  with pytest.raises(ValueError, match="'reverse_over_forward', "
                     "'forward_over_reverse'; got 'hessian'"):
    bilevel.mixed_product(_loss, 'hessian')
