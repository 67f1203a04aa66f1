"""Ahead-of-time compilation of a job's steps, timed, and kept on disk.

Steps compile once, ahead of time (``compile_step``) or on their first call
(``LazyCompiled``), so that the compile time is measured and reported apart
from the step time.

A job's steps are kept on disk (``ExecutableStore``): serialised whole after
their first compile and loaded by a rerun or a resumed run *without tracing
or lowering*, which for a supernet's gradients take longer than loading
the compiled program does. Keyed by the program's name, the abstract
signature of its arguments, and a salt that covers everything else the
traced function depends on: this package's source, the jax/jaxlib versions,
the devices, the compiler options and flags, and what the job adds (its
config, data constants).

The store replaces JAX's persistent compilation cache in the jobs rather
than adding to it: with jaxlib 0.10.2, an XLA:CPU executable that was
itself loaded from JAX's cache serialises incompletely, and loading that
copy fails at run time ("Function ... not found"). ``ExecutableStore``
therefore stores nothing while JAX's cache is on.

On XLA:CPU the programs compiled here (``compiler_options``) use
``CPU_OPTIONS``:

* YNNPACK fusions for dots only. jaxlib 0.10's default also hands
  reductions to YNNPACK, which cannot fuse the producer of a reduction's
  operand into it: a reduction of ``slice(x) * g`` (every depthwise kernel
  gradient, every batch norm) then materialises ``slice(x)`` first.
* Backend optimisation level 1 instead of 2: a supernet's programs compile
  faster and run as fast. Level 0 (``cpu_fast_compile``) compiles faster
  still but makes a supernet's steps several times slower, so it suits tiny
  networks only.

Programs compiled with ``cpu_tree_reductions=False`` (the CNN search's)
also skip XLA's tree reduction rewrite (``NO_TREE_REDUCTIONS``). XLA:CPU
turns every reduction over an axis longer than 32 into a tree of
``reduce-window``s, which it runs as scalar loops; without it such a
reduction is one vectorised loop, as the shorter ones already are. The
supernet's gradients at batch 64 (batch norm over an axis of 64 images,
the architecture gradients over N H W) are about 13% faster so; the
evaluation network's training step at batch 96 is 4% slower, so it keeps
the rewrite.

Measured effects of these choices: docs/performance.md.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any, Optional

from absl import logging
import jax
import jaxlib
from jax.experimental import serialize_executable

from sparsenas_jax.runtime import host_memory

# Compiler options for every program on XLA:CPU (module docstring).
CPU_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT',
    'xla_backend_optimization_level': 1}
# Added to them with ``cpu_tree_reductions=False`` (module docstring).
NO_TREE_REDUCTIONS = {'xla_disable_hlo_passes': 'tree_reduction_rewriter'}


def compiler_options(cpu_fast_compile: bool = False,
                     cpu_tree_reductions: bool = True
                     ) -> Optional[dict[str, Any]]:
  """The ``compiler_options`` of this project's programs on this backend.

  Args:
    cpu_fast_compile: on XLA:CPU, compile at backend optimisation level 0
      (module docstring).
    cpu_tree_reductions: on XLA:CPU, keep XLA's tree reduction rewrite;
      False adds ``NO_TREE_REDUCTIONS`` (module docstring).

  Returns:
    ``CPU_OPTIONS`` (level 0 instead of 1 if asked, ``NO_TREE_REDUCTIONS``
    added if asked) on XLA:CPU, else None.
  """
  if jax.default_backend() != 'cpu':
    return None
  options = dict(CPU_OPTIONS)
  if cpu_fast_compile:
    options['xla_backend_optimization_level'] = 0
  if not cpu_tree_reductions:
    options.update(NO_TREE_REDUCTIONS)
  return options


def compile_step(fn: Callable[..., Any], args: Sequence[Any], *,
                 cpu_fast_compile: bool = False,
                 cpu_tree_reductions: bool = True,
                 donate: Sequence[int] = (),
                 store: Optional[ExecutableStore] = None,
                 name: str = '') -> tuple[Any, float]:
  """``jax.jit(fn)`` lowered and compiled for ``args``; returns (compiled, s).

  The arguments are already placed (replicated or batch-sharded), and jit
  keeps their shardings.

  Args:
    fn: the step.
    args: example arguments (arrays; their shapes and shardings count).
    cpu_fast_compile: on XLA:CPU, compile at backend optimisation level 0
      (see the module docstring).
    cpu_tree_reductions: as in ``compiler_options``.
    donate: argument positions whose buffers the step may reuse.
    store: if given, the program is loaded from it when it holds one for
      ``name`` and these arguments (nothing traced), else compiled and
      saved there.
    name: the program's name in ``store`` (unique per job).

  Returns:
    The compiled step and the seconds spent tracing and compiling it (or
    loading it from ``store``).
  """
  t0 = time.perf_counter()
  options = compiler_options(cpu_fast_compile, cpu_tree_reductions)
  key = None
  if store is not None:
    if not name:
      raise ValueError('compile_step: pass name= with store=.')
    key = store.key(name, args, donate=donate, options=options)
    compiled = store.load(key)
    if compiled is not None:
      return compiled, time.perf_counter() - t0
  # Trimmed before, so that the compiler's memory does not come on top of
  # the pages kept from the last call (host_memory), and after, so that the
  # step's buffers do not come on top of the compiler's and the serialiser's.
  release_free_memory()
  compiled = jax.jit(fn, donate_argnums=tuple(donate)).lower(*args).compile(
      compiler_options=options)
  if store is not None:
    store.save(key, compiled)
  release_free_memory()
  return compiled, time.perf_counter() - t0


def release_free_memory() -> None:
  """Hands the C heap's free pages back to the OS (glibc's ``malloc_trim``).

  XLA frees the memory it used to compile a program, but glibc keeps those
  pages mapped, and the steps' buffers would then come on top of them;
  with ``host_memory.reuse_pages`` it also keeps the pages of every call's
  freed buffers. Serialising a program into an ``ExecutableStore`` and
  loading one from it leave such pages too. ``compile_step`` trims before
  each compile and after it (and its save), ``ExecutableStore`` after each
  load, which lowers the process's peak resident memory
  (docs/performance.md).
  A no-op where the C library is not glibc.
  """
  trim = getattr(host_memory.glibc(), 'malloc_trim', None)
  if trim is not None:
    trim(0)


# The package's root: this module sits in sparsenas_jax/runtime/.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_files() -> list[str]:
  """The package's Python sources, relative to its root, sorted."""
  return sorted(
      os.path.relpath(os.path.join(folder, f), _PACKAGE_ROOT)
      for folder, _, files in os.walk(_PACKAGE_ROOT)
      for f in files if f.endswith('.py'))


@functools.cache
def _source_digest() -> str:
  """SHA-256 of the whole package's Python sources (a code change anywhere
  in it is a new key)."""
  digest = hashlib.sha256()
  for name in source_files():
    digest.update(name.encode())
    with open(os.path.join(_PACKAGE_ROOT, name), 'rb') as f:
      digest.update(f.read())
  return digest.hexdigest()


def _describe(leaf) -> str:
  sharding = getattr(leaf, 'sharding', None)
  aval = jax.typeof(leaf)
  return f'{aval.str_short()}:{getattr(aval, "weak_type", False)}:{sharding}'


class ExecutableStore:
  """Compiled programs serialised in a folder, loaded without tracing.

  A loaded program is exactly the compiled executable of an earlier run, so
  the key must change whenever the traced function could: ``salt`` names what
  the caller's functions close over (e.g. the job's config and data
  constants); the store adds this package's source digest, the jax and
  jaxlib versions, the backend and its devices, ``XLA_FLAGS``, the JAX flags
  that change lowering, and per program its name, the compiler options, the
  donated arguments and the tree structure, shapes, dtypes and shardings of
  its arguments. Code outside this package that the traced function calls
  (a user's own model) is not covered: put a version of it in ``salt``.

  Files are written atomically; one that cannot be loaded (truncated, from
  an incompatible build) is logged and replaced by a fresh compile. Nothing
  is stored while JAX's persistent compilation cache is on (module
  docstring): a program it loaded would be stored broken.
  Single-process jobs only (``enabled`` is False under multi-host JAX, where
  each process's executable holds its own devices).
  Loading unpickles the files: point it only at folders this user's own
  runs wrote.

  A new store starts loading every program stored under its salt at once,
  largest first, in background threads, while the job builds its state:
  loading is mostly XLA:CPU linking each program's binary, and loads side by
  side finish sooner than one after the other. ``load`` then waits for the
  one it asks for.

  Args:
    directory: the folder (created if needed).
    salt: strings covering what the stored programs close over.
  """

  def __init__(self, directory: str, salt: Sequence[str] = ()):
    self.directory = directory
    self.enabled = jax.process_count() == 1
    devices = jax.devices()
    parts = [_source_digest(), jax.__version__, jaxlib.__version__,
             jax.default_backend(), devices[0].client.platform_version,
             devices[0].device_kind, str(len(devices)),
             os.environ.get('XLA_FLAGS', ''),
             str(jax.config.jax_enable_x64),
             str(jax.config.jax_default_matmul_precision), *salt]
    self._salt = hashlib.sha256('\0'.join(parts).encode()).hexdigest()
    self.loaded = self.saved = 0
    self._pending = self._prefetch()

  def _prefetch(self) -> dict[str, futures.Future]:
    """Starts loading this salt's stored programs, largest first."""
    if not self.enabled or not os.path.isdir(self.directory):
      return {}
    tag = f'-{self._salt[:16]}-'
    keys = [k for k in os.listdir(self.directory)
            if tag in k and k.endswith('.xla')]
    if not keys:
      return {}
    keys.sort(key=lambda k: -self._size(k))
    pool = futures.ThreadPoolExecutor(
        max_workers=min(len(keys), os.cpu_count() or 1),
        thread_name_prefix='ExecutableStore')
    pending = {k: pool.submit(self._read, k) for k in keys}
    pool.shutdown(wait=False)
    return pending

  def _size(self, key: str) -> int:
    try:  # another process may be replacing or deleting it
      return os.path.getsize(os.path.join(self.directory, key))
    except OSError:
      return 0

  def _read(self, key: str):
    with open(os.path.join(self.directory, key), 'rb') as f:
      serialized, in_tree, out_tree = pickle.load(f)
    compiled = serialize_executable.deserialize_and_load(
        serialized, in_tree, out_tree)
    release_free_memory()  # the pages that loading freed
    return compiled

  def key(self, name: str, args: Sequence[Any], *, donate: Sequence[int] = (),
          options: Optional[dict[str, Any]] = None) -> str:
    """The file name of program ``name`` compiled for ``args``."""
    leaves, treedef = jax.tree.flatten(args)
    signature = '\0'.join([self._salt, name, str(tuple(donate)),
                           repr(sorted((options or {}).items())),
                           str(treedef), *map(_describe, leaves)])
    digest = hashlib.sha256(signature.encode()).hexdigest()
    return f'{name}-{self._salt[:16]}-{digest[:32]}.xla'

  def load(self, key: str):
    """The program stored under ``key``, or None."""
    path = os.path.join(self.directory, key)
    pending = self._pending.pop(key, None)
    if pending is None and (not self.enabled or not os.path.exists(path)):
      return None
    try:
      compiled = self._read(key) if pending is None else pending.result()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('could not load %s (%s: %s); compiling it again', path,
                      type(e).__name__, e)
      return None
    self.loaded += 1
    return compiled

  def save(self, key: str, compiled) -> None:
    """Stores ``compiled`` under ``key``, atomically."""
    if not self.enabled:
      return
    if (jax.config.jax_compilation_cache_dir and
        jax.config.jax_enable_compilation_cache):
      logging.warning(
          'not storing program %s: JAX\'s persistent compilation cache is on, '
          'and a program loaded from it cannot be stored again (see '
          'sparsenas_jax.runtime.compilation)', key)
      return
    try:
      payload = pickle.dumps(serialize_executable.serialize(compiled))
    except (ValueError, NotImplementedError) as e:
      logging.warning('cannot store program %s: %s', key, e)
      return
    os.makedirs(self.directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=self.directory, prefix='.tmp-')
    try:
      with os.fdopen(fd, 'wb') as f:
        f.write(payload)
      os.replace(tmp, os.path.join(self.directory, key))
    except BaseException:
      os.unlink(tmp)
      raise
    self.saved += 1


def job_store(config, workdir: str, *salt) -> ExecutableStore:
  """A job's compiled steps on disk (``config.compilation_cache_dir``,
  default ``<workdir>/jax_cache``), keyed by the whole config and ``salt``
  (what else the steps close over, e.g. data statistics), on top of what
  ``ExecutableStore`` covers itself."""
  return ExecutableStore(
      config.compilation_cache_dir or os.path.join(workdir, 'jax_cache'),
      salt=(config.to_json(sort_keys=True), *map(repr, salt)))


class LazyCompiled:
  """A jitted function compiled ahead of time on its first call, timed.

  For steps made of several programs called from Python: each compiles for
  the shapes and shardings of its first arguments (with ``compile_step``'s
  options), separately, and records how long that took in ``compile_s``.
  Later calls must pass arguments of the same shapes, dtypes and shardings.

  Args:
    fn: the function.
    cpu_fast_compile: as in ``compile_step``.
    cpu_tree_reductions: as in ``compile_step``.
    donate: as in ``compile_step``.
    store: as in ``compile_step``: load the program from there, or save it.
    name: as in ``compile_step``.
  """

  def __init__(self, fn: Callable[..., Any], *, cpu_fast_compile: bool = False,
               cpu_tree_reductions: bool = True, donate: Sequence[int] = (),
               store: Optional[ExecutableStore] = None, name: str = ''):
    self._fn, self._donate = fn, tuple(donate)
    self._cpu_fast_compile = cpu_fast_compile
    self._cpu_tree_reductions = cpu_tree_reductions
    self._store, self._name = store, name
    self._compiled = None
    self.compile_s = 0.0
    self.calls = 0

  @property
  def hlo_instructions(self) -> Optional[int]:
    """``program_size`` of the program; None before the first call."""
    return None if self._compiled is None else program_size(self._compiled)

  @property
  def kernels(self) -> Optional[tuple[int, int]]:
    """``program_kernels`` of the program; None before the first call."""
    return None if self._compiled is None else program_kernels(self._compiled)

  @property
  def flops(self) -> Optional[float]:
    """XLA's count of floating-point operations per call; None before the
    first call."""
    return None if self._compiled is None else program_flops(self._compiled)

  def __call__(self, *args):
    if self._compiled is None:
      self._compiled, self.compile_s = compile_step(
          self._fn, args, cpu_fast_compile=self._cpu_fast_compile,
          cpu_tree_reductions=self._cpu_tree_reductions,
          donate=self._donate, store=self._store, name=self._name)
    self.calls += 1
    return self._compiled(*args)


def program_size(compiled) -> Optional[int]:
  """Instructions in a compiled program's optimised HLO (fused computations
  included), or None where the executable has no HLO text."""
  try:
    text = compiled.as_text()
  except Exception:  # pylint: disable=broad-except
    return None
  return sum(1 for line in text.splitlines() if ' = ' in line) if text else None


_NOT_KERNELS = ('parameter', 'get-tuple-element', 'tuple', 'bitcast',
                'constant', 'while', 'call', 'conditional')


def program_kernels(compiled) -> Optional[tuple[int, int]]:
  """(kernels, distinct kernels) of a compiled program, from its HLO text.

  A kernel is an instruction of the entry computation or of a loop body
  that runs code (a fusion, a dot, a copy, ...); two are the same when their
  computations match but for names and metadata. XLA:CPU compiles each
  distinct kernel once, so compile time grows with the distinct count
  (and their size), not with the total. None where the executable has no
  HLO text.
  """
  try:
    text = compiled.as_text()
  except Exception:  # pylint: disable=broad-except
    return None
  if not text:
    return None
  blocks = re.split(r'\n(?=\S)', text)
  bodies, callees = {}, set()
  for block in blocks:
    head = re.match(r'(?:ENTRY )?%([\w.\-]+)', block)
    if head:
      bodies[head.group(1)] = block
    callees.update(re.findall(r'(?:calls|to_apply)=%([\w.\-]+)', block))
  canon = lambda t: re.sub(r'%[\w.\-]+', '%', re.sub(
      r', metadata=\{[^}]*\}', '', t)).strip()
  kernels, distinct = 0, set()
  for name, block in bodies.items():
    if name in callees:  # fused computations, reducers
      continue
    for line in block.splitlines()[1:]:
      op = re.search(r' = \(?[a-z0-9]+\[[^=]*? ([a-z\-]+)\(', line)
      if not op or op.group(1) in _NOT_KERNELS:
        continue
      kernels += 1
      callee = re.search(r'calls=%([\w.\-]+)', line)
      distinct.add(canon(bodies.get(callee.group(1), '').split('\n', 1)[-1])
                   if callee else canon(line))
  return kernels, len(distinct)


def program_flops(compiled) -> Optional[float]:
  """XLA's cost-analysis FLOP count of a compiled program, if it has one."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get('flops')
  return None if flops is None else float(flops)
