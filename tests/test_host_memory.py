"""runtime.host_memory: a repeated XLA:CPU call stops faulting in its pages."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from sparsenas_jax.runtime import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program with hundreds of MiB of temporaries (a concatenate of more than
# 8 operands is never fused on XLA:CPU). Prints whether reuse_pages applied,
# the temporaries' pages and the median of the minor page faults of calls 2
# to 9 (now and then one of them finds its freed block too small and maps a
# new region, see host_memory's docstring; the median is robust to that).
_PROBE = textwrap.dedent("""
    import resource, sys
    import jax, jax.numpy as jnp
    from sparsenas_jax.runtime import host_memory
    applied = host_memory.reuse_pages() if sys.argv[1] == '1' else False
    x = jnp.ones((2048, 4096), jnp.float32)
    f = jax.jit(lambda x: (jnp.concatenate([x * i for i in range(9)], 1).T
                           * 2).sum(0)).lower(x).compile()
    f(x).block_until_ready()
    faults = []
    for _ in range(8):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, f.memory_analysis().temp_size_in_bytes // 4096,
          sorted(faults)[len(faults) // 2])
""")


def _probe(reuse):
  out = subprocess.run(
      [sys.executable, '-c', _PROBE, '1' if reuse else '0'], cwd=REPO,
      capture_output=True, text=True, timeout=120, check=True,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'}).stdout.split()
  return out[0] == 'True', int(out[1]), int(out[2])


@pytest.mark.skipif(host_memory._mallopt() is None,
                    reason='needs glibc on Linux (what reuse_pages changes)')
def test_a_repeated_call_reuses_its_pages():
  applied, pages, faults = _probe(True)
  assert applied and pages > 100_000
  assert faults < pages // 20, (faults, pages)
  # The control: without it the same call faults its temporaries in again.
  applied, pages, faults = _probe(False)
  assert not applied and faults > pages // 2, (faults, pages)


def test_nothing_changes_once_the_backends_exist():
  jnp.zeros(1).block_until_ready()
  before = jax.config.values['jax_cpu_enable_async_dispatch']
  assert host_memory.reuse_pages() is False
  assert jax.config.values['jax_cpu_enable_async_dispatch'] == before
