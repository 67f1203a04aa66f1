"""Tests of compilation.py: compiler options, timed AOT compilation."""

import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax.runtime import compilation


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


def test_no_tree_reductions_keeps_long_reductions_one_loop():
  # Batch norm's statistics at batch 64: XLA:CPU's tree reduction rewrite
  # makes reduce-windows of them (slow scalar loops) unless the program is
  # compiled with cpu_tree_reductions=False, which disables that pass by a
  # name XLA would silently ignore if it changed.
  def stats(x):
    return jnp.mean(x, axis=(1, 2, 3)), jnp.mean(jnp.square(x), axis=(1, 2, 3))

  x = np.random.default_rng(0).normal(size=(4, 64, 8, 8)).astype(np.float32)
  tree, _ = compilation.compile_step(stats, (x,))
  assert 'reduce-window' in tree.as_text()
  options = compilation.compiler_options(cpu_tree_reductions=False)
  assert options == {**compilation.CPU_OPTIONS,
                     **compilation.NO_TREE_REDUCTIONS}
  flat, _ = compilation.compile_step(stats, (x,), cpu_tree_reductions=False)
  assert 'reduce-window' not in flat.as_text()
  mean, square = flat(x)
  np.testing.assert_allclose(mean, x.mean((1, 2, 3)), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(square, np.square(x).mean((1, 2, 3)), rtol=1e-5)


def test_lazy_compiled_compiles_once_and_counts():
  lazy = compilation.LazyCompiled(lambda x: x @ x)
  assert lazy.flops is None and lazy.calls == 0
  x = jnp.ones((4, 4))
  np.testing.assert_allclose(lazy(x), 4 * np.ones((4, 4)))
  first = lazy.compile_s
  lazy(2 * x)
  assert lazy.calls == 2 and lazy.compile_s == first > 0
  assert lazy.flops == 2 * 4 ** 3


def test_executable_store_loads_without_tracing(tmp_path):
  traced = []

  def make_f():  # a new function object: jax's in-memory caches miss
    def f(x, y):
      traced.append(1)  # runs only when jax traces f
      return jnp.tanh(x) @ y
    return f

  rng = np.random.default_rng(0)
  x, y = (jnp.asarray(rng.normal(size=(8, 8)), jnp.float32) for _ in range(2))
  first = compilation.ExecutableStore(str(tmp_path), salt=['run'])
  compiled, _ = compilation.compile_step(make_f(), (x, y), store=first,
                                         name='f')
  assert first.saved == 1 and len(traced) == 1

  again = compilation.ExecutableStore(str(tmp_path), salt=['run'])
  lazy = compilation.LazyCompiled(make_f(), store=again, name='f')
  np.testing.assert_array_equal(lazy(x, y), compiled(x, y))
  assert again.loaded == 1 and len(traced) == 1  # not traced again
  assert lazy.flops == compilation.program_flops(compiled)
  assert lazy.hlo_instructions == compilation.program_size(compiled) > 2

  # Another salt, name, shape or sharding is another program.
  keys = {first.key('f', (x, y)), first.key('g', (x, y)),
          first.key('f', (x, y[:4])), first.key('f', (x, y), donate=(0,)),
          compilation.ExecutableStore(str(tmp_path), ['other']).key(
              'f', (x, y))}
  assert len(keys) == 5
  miss = compilation.ExecutableStore(str(tmp_path), salt=['other'])
  compilation.compile_step(make_f(), (x, y), store=miss, name='f')
  assert miss.loaded == 0 and len(traced) == 2


def test_executable_store_recompiles_a_damaged_file(tmp_path):
  x = jnp.arange(4.0)
  store = compilation.ExecutableStore(str(tmp_path))
  compilation.compile_step(jnp.sin, (x,), store=store, name='sin')
  (path,) = tmp_path.iterdir()
  path.write_bytes(path.read_bytes()[:100])  # e.g. a full disk
  again = compilation.ExecutableStore(str(tmp_path))
  compiled, _ = compilation.compile_step(jnp.sin, (x,), store=again,
                                         name='sin')
  np.testing.assert_allclose(compiled(x), np.sin(np.arange(4.0)), rtol=1e-6)
  assert again.loaded == 0 and again.saved == 1
  assert compilation.ExecutableStore(str(tmp_path)).load(path.name)


def test_executable_store_loads_its_own_programs_in_the_background(
    tmp_path, monkeypatch):
  x = jnp.arange(4.0)
  for salt in ('mine', 'other'):
    store = compilation.ExecutableStore(str(tmp_path), salt=[salt])
    compilation.compile_step(jnp.cos, (x,), store=store, name='cos')
    compilation.compile_step(jnp.sin, (x,), store=store, name='sin')
  loads = []
  deserialize = compilation.serialize_executable.deserialize_and_load

  def recorded(*args, **kwargs):
    loads.append(threading.current_thread().name)
    return deserialize(*args, **kwargs)

  monkeypatch.setattr(compilation.serialize_executable,
                      'deserialize_and_load', recorded)
  again = compilation.ExecutableStore(str(tmp_path), salt=['mine'])
  cos, _ = compilation.compile_step(jnp.cos, (x,), store=again, name='cos')
  sin, _ = compilation.compile_step(jnp.sin, (x,), store=again, name='sin')
  np.testing.assert_allclose(cos(x), np.cos(np.arange(4.0)), rtol=1e-6)
  np.testing.assert_allclose(sin(x), np.sin(np.arange(4.0)), rtol=1e-6)
  assert again.loaded == 2 and again.saved == 0
  # Its two programs were loaded by the store's threads, the other salt's
  # two not at all.
  assert len(loads) == 2
  assert all(name.startswith('ExecutableStore') for name in loads)


def test_free_pages_are_handed_back_after_each_save_and_load(
    tmp_path, monkeypatch):
  events = []
  monkeypatch.setattr(compilation, 'release_free_memory',
                      lambda: events.append('trim'))
  save = compilation.ExecutableStore.save
  deserialize = compilation.serialize_executable.deserialize_and_load

  def recorded_save(*args):
    save(*args)
    events.append('save')

  def recorded_load(*args):
    events.append('load')
    return deserialize(*args)

  monkeypatch.setattr(compilation.ExecutableStore, 'save', recorded_save)
  monkeypatch.setattr(compilation.serialize_executable,
                      'deserialize_and_load', recorded_load)
  x = jnp.arange(4.0)
  store = compilation.ExecutableStore(str(tmp_path))
  compilation.compile_step(jnp.sin, (x,), store=store, name='sin')
  assert events == ['trim', 'save', 'trim']  # before compiling, after saving
  events.clear()
  again = compilation.ExecutableStore(str(tmp_path))
  compiled, _ = compilation.compile_step(jnp.sin, (x,), store=again,
                                         name='sin')
  np.testing.assert_allclose(compiled(x), np.sin(np.arange(4.0)), rtol=1e-6)
  assert again.loaded == 1 and events == ['load', 'trim']


def test_compile_step_with_a_store_needs_a_name(tmp_path):
  store = compilation.ExecutableStore(str(tmp_path))
  with pytest.raises(ValueError, match='name='):
    compilation.compile_step(jnp.sin, (jnp.ones(2),), store=store)


def test_executable_store_stores_nothing_while_jax_cache_is_on(tmp_path):
  # jaxlib 0.10.2: a program loaded from JAX's persistent cache serialises
  # incompletely ("Function ... not found" when the copy runs), so the store
  # must not save while that cache is on. In a subprocess: the cache is
  # process-wide.
  script = textwrap.dedent(f'''
      import jax, jax.numpy as jnp
      from sparsenas_jax.runtime import compilation
      jax.config.update('jax_compilation_cache_dir', {str(tmp_path / 'jax')!r})
      jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
      store = compilation.ExecutableStore({str(tmp_path / 'store')!r})
      compiled, _ = compilation.compile_step(jnp.sin, (jnp.ones(3),),
                                             store=store, name='sin')
      assert store.saved == 0 and float(compiled(jnp.zeros(3)).sum()) == 0
      print('NOT STORED')
  ''')
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True,
                        text=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert 'NOT STORED' in proc.stdout, proc.stderr[-2000:]
  assert 'persistent compilation cache is on' in proc.stderr


def test_store_key_covers_the_whole_package_source():
  files = compilation.source_files()
  for name in ('models/supernet.py', 'optim/hapg.py', 'genotype.py',
               'experiments/cnn_search.py', 'runtime/compilation.py'):
    assert name in files, name


def test_program_kernels_counts_distinct_kernels_once():
  # Six elementwise loops over six inputs: five of one computation (x * 2,
  # tanh, + 1), one of another (x * 3): six kernels, two distinct.
  def f(xs):
    return ([jnp.tanh(x * 2.0) + 1.0 for x in xs[:5]] +
            [jnp.tanh(xs[5] * 3.0)])
  xs = [jnp.zeros((16, 64)) for _ in range(6)]
  compiled = jax.jit(f).lower(xs).compile()
  assert compilation.program_kernels(compiled) == (6, 2)
  lazy = compilation.LazyCompiled(f)
  assert lazy.kernels is None
  lazy(xs)
  assert lazy.kernels == (6, 2)
