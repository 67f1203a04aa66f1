"""XLA:CPU programs that reuse their buffers' pages from one call to the next.

XLA:CPU allocates every call's temporaries anew, gigabytes for a
supernet's gradient program. glibc serves allocations that large with a
fresh ``mmap`` (always so on a worker thread's arena, whatever the
settings) and unmaps them when they are freed, so every call faults in and
zeroes each of their pages again. ``reuse_pages`` makes a call reuse the
pages the previous one freed:

* programs run on the calling thread (JAX's
  ``jax_cpu_enable_async_dispatch`` off), whose allocations come from
  glibc's main heap;
* that heap serves large allocations itself instead of by ``mmap``
  (``M_MMAP_MAX`` 0) and never shrinks by itself (``M_TRIM_THRESHOLD``
  -1, which glibc documents as "disables trimming completely").

A jitted call then returns when its results are ready, as after
``jax.block_until_ready``; the jobs wait for every step anyway. Pages a
call frees stay with the process until ``compilation.release_free_memory``,
which runs before and after every compile and after every load of a
stored program, so that the compiler's peak does not come on top of the
last call's buffers.

The heap reuses a call's temporaries only where they are still one free
block, large enough, when the next call asks for them. A program that
allocates its outputs anew (no donated inputs), or programs of different
temporary sizes taking turns, can split that block, and the process then
keeps two regions of temporaries: the peak grows by up to the larger one.
Even one program alone now and then finds its block a few bytes short:
XLA asks for aligned memory, and glibc (2.36 here) keeps the slivers it cuts
off an aligned block in its per-thread cache, where they do not merge back
with the block when it is freed. That call maps a new region, and later
calls reuse either one. How much a job's peak grows is measured per job
before it is listed in ``sparsenas_jax.main.REUSES_PAGES`` (figures:
docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.util
import sys
from typing import Optional

import jax
from jax._src import xla_bridge

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def glibc() -> Optional[ctypes.CDLL]:
  """The C library where it is glibc on Linux (whose heap ``reuse_pages``
  and ``compilation.release_free_memory`` tune), else None."""
  if not sys.platform.startswith('linux'):
    return None
  name = ctypes.util.find_library('c')
  try:
    lib = ctypes.CDLL(name) if name else None
  except OSError:
    return None
  # gnu_get_libc_version exists in glibc only (not musl).
  return lib if hasattr(lib, 'gnu_get_libc_version') else None


def _mallopt():
  return getattr(glibc(), 'mallopt', None)


def _cpu_backend() -> bool:
  """Whether JAX will run on the CPU, decided without creating a backend
  (which would be too early for ``jax.distributed.initialize``)."""
  platforms = jax.config.values.get('jax_platforms') or ''
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  # GPU plugins install into the jax_plugins namespace, TPUs need libtpu.
  return not any(importlib.util.find_spec(name)
                 for name in ('jax_plugins', 'libtpu'))


def reuse_pages() -> bool:
  """Makes XLA:CPU calls reuse freed pages (module docstring).

  Call it before JAX's first computation in the process: the CPU client
  reads ``jax_cpu_enable_async_dispatch`` when it is created. It creates
  no backend itself, so ``jax.distributed.initialize`` may follow. It
  changes process-wide settings (the C heap's, JAX's dispatch), which is
  why the jobs' entry point calls it and the library does not on import.

  Returns:
    True if applied. False, with nothing changed, where the C library is
    not glibc on Linux, JAX's backends exist already, or JAX will not run
    on the CPU (``JAX_PLATFORMS`` names another platform first, or a GPU or
    TPU plugin is installed).
  """
  mallopt = _mallopt()
  # No public API tells whether the CPU client exists already.
  if (mallopt is None or xla_bridge.backends_are_initialized() or
      not _cpu_backend()):
    return False
  # Read by the CPU client when it is created.
  jax.config.update('jax_cpu_enable_async_dispatch', False)
  return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1))
