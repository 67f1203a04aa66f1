"""The math core (``optim``, ``bilevel``) imports with jax, optax and numpy only.

Each check runs in a fresh interpreter in which the packages of the jobs
(Flax, TensorFlow, TFDS, Orbax, CLU, matplotlib, ml_collections, sklearn,
absl) cannot be imported, as if they were not installed.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Run before the code under test. A sys.meta_path finder refuses to load a
# blocked module; since a finder is never asked for a module already in
# sys.modules, a builtins.__import__ hook also refuses import statements of a
# blocked module whatever is cached. absl is the exception that needs both:
# optax itself runs `from absl import logging` (absl-py is one of optax's
# requirements), so absl is let through for imports made by jax, optax and
# absl's own modules, and refused to everyone else, sparsenas_jax included.
_BLOCKER = textwrap.dedent('''
    import builtins
    import sys

    BLOCKED = frozenset({
        'flax', 'tensorflow', 'tensorflow_datasets', 'orbax', 'clu',
        'matplotlib', 'ml_collections', 'sklearn', 'absl'})
    ABSL_IMPORTERS = frozenset({'jax', 'jaxlib', 'optax', 'absl'})

    def _check(name, importer):
      top = name.partition('.')[0]
      if top not in BLOCKED:
        return
      if top == 'absl' and importer.partition('.')[0] in ABSL_IMPORTERS:
        return
      raise ModuleNotFoundError(
          f'blocked module {top!r} (import of {name!r} by {importer})',
          name=name)

    class _BlockingFinder:
      def find_spec(self, name, path=None, target=None):
        _check(name, _importer())
        return None

    def _importer():
      """__name__ of the module whose code asked for the import."""
      frame = sys._getframe(1)
      while frame is not None and (
          frame.f_code in _OWN_CODE or
          frame.f_globals.get('__name__', '').startswith('importlib')):
        frame = frame.f_back
      return frame.f_globals.get('__name__', '?') if frame else '?'

    _real_import = builtins.__import__

    def _import(name, globals=None, locals=None, fromlist=(), level=0):
      if level == 0:
        _check(name, (globals or {}).get('__name__', '?'))
      return _real_import(name, globals, locals, fromlist, level)

    _OWN_CODE = {_check.__code__, _BlockingFinder.find_spec.__code__,
                 _importer.__code__, _import.__code__}
    sys.meta_path.insert(0, _BlockingFinder())
    builtins.__import__ = _import
''')


def _run_blocked(code: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-c', _BLOCKER + textwrap.dedent(code)],
      cwd=_REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
      check=False)


def test_optim_and_bilevel_import_and_run_without_the_job_packages():
  proc = _run_blocked('''
      import jax.numpy as jnp
      import numpy as np

      import sparsenas_jax
      from sparsenas_jax import bilevel
      from sparsenas_jax import optim

      w = {'a': jnp.arange(4.0) - 1.5}
      opt = optim.adam_hapg(0.1, 0.1, 0.5, groups=optim.leaf_groups(w))
      updates, _ = opt.update(w, opt.init(w), w, value=jnp.zeros(()))
      assert np.all(np.isfinite(updates['a']))

      loss = lambda w, arch, y: jnp.sum((w['a'] * arch['x'] - y) ** 2)
      g = bilevel.darts_hypergradient(loss, loss, w, {'x': jnp.ones(4)},
                                      1.0, 2.0, eta=0.1)
      assert np.all(np.isfinite(g['x'])) and np.any(g['x'] != 0)

      print('core ran:', sparsenas_jax.__version__,
            sorted(m for m in sys.modules if m.startswith('sparsenas_jax')))
  ''')
  assert proc.returncode == 0, proc.stderr
  assert 'core ran:' in proc.stdout, proc.stdout + proc.stderr
  assert 'sparsenas_jax.models' not in proc.stdout


@pytest.mark.parametrize('code, blocked', [
    # A real consumer of a job package, through import statements.
    ('import sparsenas_jax.models', 'flax'),
    # importlib bypasses __import__: the meta_path finder catches it.
    ('import importlib; importlib.import_module("matplotlib.pyplot")',
     'matplotlib'),
    # absl is cached by optax but still refused to anyone else.
    ('import optax\nfrom absl import logging', 'absl'),
])
def test_the_blocker_refuses_blocked_modules(code, blocked):
  proc = _run_blocked(code)
  assert proc.returncode != 0, proc.stdout + proc.stderr
  assert f"ModuleNotFoundError: blocked module '{blocked}'" in proc.stderr, (
      proc.stderr)
