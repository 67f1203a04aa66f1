"""Times the search step: compile time, step time, peak memory; one JSON.

  python benchmarks/search_step.py                      # DARTS search size
  python benchmarks/search_step.py --batch=16,32,64 --modes=first_order
  python benchmarks/search_step.py --cells=5,8 --nodes=2,4 --steps=3
  python benchmarks/search_step.py --step_compilation=fused --fast_compile=1
  python benchmarks/search_step.py --batch=64 --remat=1

Every combination of --modes × --batch × --cells × --nodes runs in its own
subprocess (so that its peak resident memory is its own, and its compile
time is not helped by another's in-process caches; no on-disk cache unless
--cache_dir: then the job's ``compilation.ExecutableStore`` there, as a
rerun of a search would have it; or --jax_cache_dir: JAX's persistent
compilation cache there instead, for comparison; run twice to time a warm
start). Per run:
compile_s (tracing and compiling every program of the step, or loading it
from --cache_dir, i.e. the time to first step less one step), first_step_s,
time_to_first_step_s (init_s, building the state, plus first_step_s),
step_s (median of --steps steps after the first), images_per_s (images of
the weight batch per second), peak_rss_gb, hlo_instructions_per_program
(optimised HLO, fused computations included), kernels_per_program
([kernels, distinct kernels]: XLA:CPU compiles each distinct kernel once,
so compile time follows the distinct count), and, from XLA's cost
analysis, flops per step and the FLOP/s achieved; on a GPU/TPU, the
fraction of the vendor's peak (where known) and of a float32 matmul rate
measured there and then, and the device's peak memory. Invocations given one --lock_file may
run at the same time on a many-core accelerator host: they compile
concurrently but take turns for the timed steps. ``first_order``,
``exact`` and ``finite_difference`` are the hypergradient modes of the
whole search step (architecture step + weight step). Never part of the
test run.
"""

import argparse
import contextlib
import fcntl
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Dense float32 peak FLOP/s by device kind (vendor figures; no tensor cores
# for float32 matmuls unless TF32 is on, which JAX's default precision uses
# on NVIDIA GPUs: the TF32 figure is given where that applies).
PEAK_FLOPS = {
    'NVIDIA H200': 494e12,  # TF32 tensor core, dense
    'NVIDIA H100 80GB HBM3': 494e12,
    'NVIDIA A100-SXM4-80GB': 156e12,
    'NVIDIA A100-SXM4-40GB': 156e12,
    'TPU v4': 275e12,  # bf16 MXU; float32 matmuls run as multi-pass bf16
    'TPU v5 lite': 197e12,
}


def measure(args):
  """Runs in the child: one (mode, batch, cells, nodes)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import cnn_search as cfg  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import compilation  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import parallel  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import cnn_search as cs  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import common  # pylint: disable=g-import-not-at-top

  # As the jobs' entry point does (sparsenas_jax.main).
  pages_reused = bool(args.reuse_pages) and host_memory.reuse_pages()
  config = cfg.get_config()
  config.init_channels, config.layers, config.nodes = (
      args.channels, args.cells, args.nodes)
  config.cell_impl = args.cell_impl
  config.cpu_fast_compile = bool(args.fast_compile)
  config.hypergradient = args.mode
  config.step_compilation = args.step_compilation
  config.remat = bool(args.remat)
  store = None
  if args.jax_cache_dir:
    jax.config.update('jax_compilation_cache_dir', args.jax_cache_dir)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  if args.cache_dir:
    config.compilation_cache_dir = args.cache_dir
    store = compilation.job_store(config, args.cache_dir)
  mesh = parallel.make_mesh(0)
  model = cs.make_model(config, 10)
  shape = (args.batch, args.image_size, args.image_size, 3)
  sample = jnp.zeros((1,) + shape[1:], jnp.float32)
  weight_opt = cs.make_weight_optimizer(config, 1000)
  t0 = time.perf_counter()
  state, arch_opt = cs.create_state(
      config, model, sample, weight_opt,
      lambda a: common.make_arch_optimizer(config, a, 100))
  init_s = time.perf_counter() - t0
  state = parallel.replicate(state, mesh)
  rng = np.random.default_rng(0)
  part = lambda: {'image': rng.integers(0, 256, shape, dtype=np.uint8),
                  'label': rng.integers(0, 10, shape[:1]).astype(np.int32)}
  batch = lambda: parallel.shard_batch({'train': part(), 'val': part()}, mesh)
  mean, std = jnp.full((3,), 0.5), jnp.full((3,), 0.25)
  split = args.step_compilation == 'split'
  step = cs.make_search_step(config, model, weight_opt, arch_opt, 1000, mean,
                             std, split=split, store=store)
  key = jax.random.key(0)
  if split:
    run, compile_s, flops = step, None, None
  else:
    run, compile_s = compilation.compile_step(
        step, (state, batch(), key), **cs.compile_options(config),
        store=store, name='search_step')
    flops = compilation.program_flops(run)

  def timed_step(i, state):
    b = batch()
    t0 = time.perf_counter()
    out = run(state, b, jax.random.fold_in(key, i))
    jax.block_until_ready(out)
    return out[0], time.perf_counter() - t0

  state, first_s = timed_step(0, state)  # compiles the split step's pieces
  with _exclusive(args.lock_file):
    times = [first_s]
    for i in range(1, args.steps + 1):
      state, seconds = timed_step(i, state)
      times.append(seconds)
    matmul_peak = (_matmul_flops_per_s() if jax.default_backend() != 'cpu'
                   else None)
  step_s = statistics.median(times[1:])
  first_step_s = times[0] + (0 if split else compile_s)
  if split:
    pieces = step.pieces.values()
    compile_s = sum(p.compile_s for p in pieces)
    flops = sum((p.flops or 0) * p.calls for p in pieces) / len(times)
  result = {
      'mode': args.mode, 'batch': args.batch, 'cells': args.cells,
      'nodes': args.nodes, 'channels': args.channels,
      'image_size': args.image_size, 'cell_impl': cs.cell_impl(config),
      'step_compilation': args.step_compilation,
      'fast_compile': bool(args.fast_compile), 'remat': bool(args.remat),
      'backend': jax.default_backend(),
      'device_kind': jax.devices()[0].device_kind,
      'devices': jax.device_count(),
      'glibc_tunables': os.environ.get('GLIBC_TUNABLES', ''),
      'pages_reused': pages_reused,
      'init_s': round(init_s, 2),
      'compile_s': round(compile_s, 2),
      'first_step_s': round(first_step_s, 2),
      # From building the state to the end of the first step: what a user
      # waits for (a rerun loads programs while it builds the state).
      'time_to_first_step_s': round(init_s + first_step_s, 2),
      'step_s': round(step_s, 3),
      'images_per_s': round(args.batch / step_s, 1),
      'peak_rss_gb': round(resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
  }
  if store is not None:
    result['programs_loaded'] = store.loaded
  if split:
    result['compile_s_per_program'] = {
        name: round(p.compile_s, 2) for name, p in step.pieces.items()
        if p.compile_s}
    result['hlo_instructions_per_program'] = {
        name: p.hlo_instructions for name, p in step.pieces.items()
        if p.calls}
    result['kernels_per_program'] = {
        name: p.kernels for name, p in step.pieces.items() if p.calls}
  else:
    result['hlo_instructions_per_program'] = {
        'search_step': compilation.program_size(run)}
    result['kernels_per_program'] = {
        'search_step': compilation.program_kernels(run)}
  if flops:
    result['gflops_per_step'] = round(flops / 1e9, 2)
    result['achieved_gflops_per_s'] = round(flops / step_s / 1e9, 2)
    peak = PEAK_FLOPS.get(result['device_kind'])
    if peak and result['backend'] != 'cpu':
      result['fraction_of_peak'] = round(
          flops / step_s / (peak * jax.device_count()), 4)
    if matmul_peak:
      result['matmul_gflops_per_s'] = round(matmul_peak / 1e9, 1)
      result['fraction_of_matmul_peak'] = round(
          flops / step_s / (matmul_peak * jax.device_count()), 4)
  if result['backend'] != 'cpu':
    stats = jax.devices()[0].memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      result['peak_device_memory_gb'] = round(
          stats['peak_bytes_in_use'] / 2**30, 2)
  return result


@contextlib.contextmanager
def _exclusive(path):
  """Holds an exclusive lock on ``path`` (nothing if empty) for the block."""
  if not path:
    yield
    return
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _matmul_flops_per_s(n=8192, repeats=10):
  """Measured float32 matmul rate of one device at JAX's default precision."""
  import jax  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.key(1), (n, n))
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 2 * n**3 / statistics.median(times)


def _ints(text):
  return [int(x) for x in text.split(',') if x]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--modes', default='first_order,exact,finite_difference')
  parser.add_argument('--batch', default='16')
  parser.add_argument('--cells', default='8')
  parser.add_argument('--nodes', default='4')
  parser.add_argument('--channels', type=int, default=16)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--cell_impl', default='auto')
  parser.add_argument('--step_compilation', default='split')
  parser.add_argument('--fast_compile', type=int, default=0)
  parser.add_argument('--remat', type=int, default=0)
  # 0: without host_memory.reuse_pages, which the jobs call.
  parser.add_argument('--reuse_pages', type=int, default=1)
  parser.add_argument('--cache_dir', default='')
  parser.add_argument('--jax_cache_dir', default='')
  parser.add_argument('--timeout', type=int, default=3600)
  # Several benchmark invocations sharing one --lock_file compile at the same
  # time (many-core hosts) but take turns for their timed steps.
  parser.add_argument('--lock_file', default='')
  parser.add_argument('--child', default='')
  args = parser.parse_args()
  if args.cache_dir and args.jax_cache_dir:
    parser.error('pass --cache_dir or --jax_cache_dir, not both')
  if args.child:
    args.mode = args.modes
    args.batch, args.cells, args.nodes = (
        int(args.batch), int(args.cells), int(args.nodes))
    print('RESULT ' + json.dumps(measure(args)), flush=True)
    return
  results = []
  grid = itertools.product(_ints(args.batch), _ints(args.cells),
                           _ints(args.nodes), args.modes.split(','))
  for batch, cells, nodes, mode in grid:
    flags = {**vars(args), 'modes': mode, 'batch': batch, 'cells': cells,
             'nodes': nodes, 'child': 1}
    cmd = [sys.executable, __file__] + [
        f'--{k}={v}' for k, v in flags.items() if k != 'timeout']
    where = {'mode': mode, 'batch': batch, 'cells': cells, 'nodes': nodes}
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=args.timeout)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      results.append(json.loads(lines[-1][7:]) if lines else
                     {**where, 'error': proc.stderr.strip().splitlines()[-3:]})
    except subprocess.TimeoutExpired:
      results.append({**where, 'error': f'timed out after {args.timeout} s'})
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(json.dumps({'results': results}, indent=1))


if __name__ == '__main__':
  main()
