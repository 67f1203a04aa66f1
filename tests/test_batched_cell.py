"""The edge-batched supernet computes the same function as the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsenas_jax.models import batched_cell
from sparsenas_jax.models import supernet
from sparsenas_jax.models.ops import DARTS_OPS

NODES = 2


def _fill(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), jnp.float32),
      shapes)


def _jit(fn, *args):
  """Compiled at XLA:CPU optimisation level 0: ~3x faster to compile."""
  return jax.jit(fn).lower(*args).compile(
      compiler_options={'xla_backend_optimization_level': 0})(*args)


def _loss(model, params, arch, x, y):
  logits = model.apply({'params': params}, x, arch)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_same_loss_and_gradients_as_the_reference_for_every_op():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32)
  y = jnp.arange(4) % 10
  # Random (not initial) architecture weights, all 7 ops, normal and
  # reduction cells (layers=3: one normal, two reductions).
  arch = jax.tree.map(
      lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32),
      supernet.init_arch(jax.random.key(0), nodes=NODES))
  make = lambda cell_impl: supernet.SearchNetwork(
      C=2, num_classes=10, layers=3, nodes=NODES, ops=DARTS_OPS,
      cell_impl=cell_impl)
  reference = make('reference')
  params = _fill(jax.eval_shape(
      lambda: reference.init(jax.random.key(0), x, arch))['params'], 1)
  grad = lambda m, p: _jit(jax.value_and_grad(
      lambda p, a: _loss(m, p, a, x, y), argnums=(0, 1)), p, arch)
  l_ref, (gw_ref, ga_ref) = grad(reference, params)
  for impl in ('batched', 'stacked'):
    optimized = make(impl)
    converted, gw_expected = params, gw_ref
    if impl == 'stacked':
      converted = batched_cell.reference_to_stacked_params(params, nodes=NODES)
      gw_expected = batched_cell.reference_to_stacked_params(gw_ref,
                                                             nodes=NODES)
    shapes = jax.eval_shape(
        lambda: optimized.init(jax.random.key(0), x, arch))['params']
    assert jax.tree.structure(shapes) == jax.tree.structure(converted)
    l_opt, (gw_opt, ga_opt) = grad(optimized, converted)
    np.testing.assert_allclose(l_opt, l_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(ga_opt), jax.tree.leaves(ga_ref)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    for a, b in zip(jax.tree.leaves(gw_opt), jax.tree.leaves(gw_expected)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_unknown_cell_impl_raises():
  with pytest.raises(ValueError, match='cell_impl'):
    supernet.SearchNetwork(C=4, num_classes=10, layers=3, cell_impl='fast')
