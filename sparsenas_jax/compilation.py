"""Ahead-of-time compilation of a job's steps, timed, and the persistent cache.

Both jobs compile their steps once, before the first step, so that the
compile time is measured (and reported) apart from the step time; on
XLA:CPU a supernet's LLVM backend dominates it, hence the option of
optimisation level 0.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


def compile_step(fn: Callable[..., Any], args: Sequence[Any], *,
                 cpu_fast_compile: bool = True,
                 donate: Sequence[int] = ()) -> tuple[Any, float]:
  """``jax.jit(fn)`` lowered and compiled for ``args``; returns (compiled, s).

  The arguments are already placed (replicated or batch-sharded), and jit
  keeps their shardings.

  Args:
    fn: the step.
    args: example arguments (arrays; their shapes and shardings count).
    cpu_fast_compile: on XLA:CPU, compile at backend optimisation level 0:
      ~3x faster to compile and, for these small kernels, as fast to run.
    donate: argument positions whose buffers the step may reuse.

  Returns:
    The compiled step and the seconds spent tracing and compiling it.
  """
  options = None
  if cpu_fast_compile and jax.default_backend() == 'cpu':
    options = {'xla_backend_optimization_level': 0}
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=tuple(donate)).lower(*args).compile(
      compiler_options=options)
  return compiled, time.perf_counter() - t0


def enable_compilation_cache(cache_dir: str) -> None:
  """Keeps every compiled program in ``cache_dir`` (JAX's persistent cache).

  A rerun or a resumed run of the same config then loads its steps in
  seconds instead of compiling them again.
  """
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
