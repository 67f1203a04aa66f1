"""Ahead-of-time compilation of a job's steps, timed, and the persistent cache.

Steps compile once, ahead of time (``compile_step``) or on their first call
(``LazyCompiled``), so that the compile time is measured and reported apart
from the step time.

On XLA:CPU the steps compiled here are compiled with ``CPU_OPTIONS``:

* YNNPACK fusions for dots only. jaxlib 0.10's default also hands
  reductions to YNNPACK, which cannot fuse the producer of a reduction's
  operand into it: a reduction of ``slice(x) * g`` (every depthwise kernel
  gradient, every batch norm) then materialises ``slice(x)`` first. One
  DARTS search cell (C=16, batch 16, 32x32), loss gradient: 2.1 s with the
  default, 0.9 s with dots only.
* Backend optimisation level 1 instead of 2: the first-order search step at
  the DARTS size compiles in 208 s instead of 260 s and runs as fast
  (10.3 s). Level 0 (``cpu_fast_compile``) compiles faster still but runs a
  supernet about 5x slower: worth it only for tiny networks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax

# Compiler options for every program on XLA:CPU (module docstring).
CPU_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT',
    'xla_backend_optimization_level': 1}


def compiler_options(cpu_fast_compile: bool = False
                     ) -> Optional[dict[str, Any]]:
  """The ``compiler_options`` of this project's programs on this backend.

  Args:
    cpu_fast_compile: on XLA:CPU, compile at backend optimisation level 0
      (module docstring).

  Returns:
    ``CPU_OPTIONS`` (level 0 instead of 1 if asked) on XLA:CPU, else None.
  """
  if jax.default_backend() != 'cpu':
    return None
  options = dict(CPU_OPTIONS)
  if cpu_fast_compile:
    options['xla_backend_optimization_level'] = 0
  return options


def compile_step(fn: Callable[..., Any], args: Sequence[Any], *,
                 cpu_fast_compile: bool = False,
                 donate: Sequence[int] = ()) -> tuple[Any, float]:
  """``jax.jit(fn)`` lowered and compiled for ``args``; returns (compiled, s).

  The arguments are already placed (replicated or batch-sharded), and jit
  keeps their shardings.

  Args:
    fn: the step.
    args: example arguments (arrays; their shapes and shardings count).
    cpu_fast_compile: on XLA:CPU, compile at backend optimisation level 0
      (see the module docstring).
    donate: argument positions whose buffers the step may reuse.

  Returns:
    The compiled step and the seconds spent tracing and compiling it.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=tuple(donate)).lower(*args).compile(
      compiler_options=compiler_options(cpu_fast_compile))
  return compiled, time.perf_counter() - t0


def enable_compilation_cache(cache_dir: str) -> None:
  """Keeps every compiled program in ``cache_dir`` (JAX's persistent cache).

  A rerun or a resumed run of the same config then loads its programs
  instead of compiling them again (tracing and lowering still run).
  """
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


class LazyCompiled:
  """A jitted function compiled ahead of time on its first call, timed.

  For steps made of several programs called from Python: each compiles for
  the shapes and shardings of its first arguments (with ``compile_step``'s
  options), separately, and records how long that took in ``compile_s``.
  Later calls must pass arguments of the same shapes, dtypes and shardings.

  Args:
    fn: the function.
    cpu_fast_compile: as in ``compile_step``.
    donate: as in ``compile_step``.
  """

  def __init__(self, fn: Callable[..., Any], *, cpu_fast_compile: bool = False,
               donate: Sequence[int] = ()):
    self._fn, self._donate = fn, tuple(donate)
    self._cpu_fast_compile = cpu_fast_compile
    self._compiled = None
    self.compile_s = 0.0
    self.calls = 0

  @property
  def flops(self) -> Optional[float]:
    """XLA's count of floating-point operations per call; None before the
    first call."""
    return None if self._compiled is None else program_flops(self._compiled)

  def __call__(self, *args):
    if self._compiled is None:
      self._compiled, self.compile_s = compile_step(
          self._fn, args, cpu_fast_compile=self._cpu_fast_compile,
          donate=self._donate)
    self.calls += 1
    return self._compiled(*args)


def program_flops(compiled) -> Optional[float]:
  """XLA's cost-analysis FLOP count of a compiled program, if it has one."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  return None if flops is None else float(flops)
