"""Tests of compilation.py: compiler options, timed AOT compilation."""

import jax
import jax.numpy as jnp
import numpy as np

from sparsenas_jax import compilation


def test_cpu_options_are_accepted_and_keep_the_numbers():
  # An option name this jaxlib does not know fails the compile: this keeps
  # CPU_OPTIONS in step with the pinned jax.
  assert jax.default_backend() == 'cpu'
  assert compilation.compiler_options() == compilation.CPU_OPTIONS
  fast = compilation.compiler_options(cpu_fast_compile=True)
  assert fast['xla_backend_optimization_level'] == 0

  def f(x, y):  # a reduction of a sliced product: what the option is for
    return jnp.sum(x[:, 1:] * y, axis=1)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 33)).astype(np.float32)
  y = rng.normal(size=(8, 32)).astype(np.float32)
  for fast_compile in (False, True):
    compiled, seconds = compilation.compile_step(
        f, (x, y), cpu_fast_compile=fast_compile)
    assert seconds > 0
    np.testing.assert_allclose(compiled(x, y), np.sum(x[:, 1:] * y, 1),
                               rtol=1e-5)


def test_lazy_compiled_compiles_once_and_counts():
  lazy = compilation.LazyCompiled(lambda x: x @ x)
  assert lazy.flops is None and lazy.calls == 0
  x = jnp.ones((4, 4))
  np.testing.assert_allclose(lazy(x), 4 * np.ones((4, 4)))
  first = lazy.compile_s
  lazy(2 * x)
  assert lazy.calls == 2 and lazy.compile_s == first > 0
  assert lazy.flops == 2 * 4 ** 3
