"""Times the search step: compile time, step time and peak memory, as JSON.

  python benchmarks/search_step.py                      # DARTS search size
  python benchmarks/search_step.py --batch=16,64 --modes=first_order,exact
  python benchmarks/search_step.py --cells=5 --nodes=2 --steps=3

Each (mode, batch) runs in its own subprocess so that its peak resident
memory is its own. ``first_order``, ``exact`` and ``finite_difference`` are
the hypergradient modes of the whole search step (architecture step + weight
step). Prints one JSON object; never part of the test run.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def measure(args):
  """Runs in the child: one mode, one batch size."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import cnn_search as cfg  # pylint: disable=g-import-not-at-top
  from sparsenas_jax import compilation  # pylint: disable=g-import-not-at-top
  from sparsenas_jax import parallel  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import cnn_search as cs  # pylint: disable=g-import-not-at-top

  config = cfg.get_config()
  config.init_channels, config.layers, config.nodes = (
      args.channels, args.cells, args.nodes)
  config.cell_impl = args.cell_impl
  config.cpu_fast_compile = bool(args.fast_compile)
  config.hypergradient = args.mode
  if args.cache_dir:
    compilation.enable_compilation_cache(args.cache_dir)
  mesh = parallel.make_mesh(0)
  model = cs.make_model(config, 10)
  shape = (args.batch, args.image_size, args.image_size, 3)
  sample = jnp.zeros((1,) + shape[1:], jnp.float32)
  weight_opt = cs.make_weight_optimizer(config, 1000)
  t0 = time.perf_counter()
  state, arch_opt = cs.create_state(
      config, model, sample, weight_opt,
      lambda a: cs.make_arch_optimizer(config, a, 100))
  init_s = time.perf_counter() - t0
  state = parallel.replicate(state, mesh)
  rng = np.random.default_rng(0)
  batch = lambda: parallel.shard_batch(
      {'image': rng.integers(0, 256, shape, dtype=np.uint8),
       'label': rng.integers(0, 10, shape[:1]).astype(np.int32)}, mesh)
  mean, std = jnp.full((3,), 0.5), jnp.full((3,), 0.25)
  step = cs.make_search_step(config, model, weight_opt, arch_opt, 1000, mean,
                             std)
  key = jax.random.key(0)
  example = (state, batch(), batch(), key)
  t0 = time.perf_counter()
  compiled, _ = compilation.compile_step(
      step, example, cpu_fast_compile=config.cpu_fast_compile)
  trace_compile_s = time.perf_counter() - t0
  times = []
  for i in range(args.steps + 1):
    b1, b2 = batch(), batch()
    t0 = time.perf_counter()
    out = compiled(state, b1, b2, jax.random.fold_in(key, i))
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t0)
    state = out[0]
  return {
      'mode': args.mode, 'batch': args.batch, 'cells': args.cells,
      'nodes': args.nodes, 'channels': args.channels,
      'image_size': args.image_size, 'cell_impl': args.cell_impl,
      'backend': jax.default_backend(), 'devices': jax.device_count(),
      'init_s': round(init_s, 2),
      'compile_s': round(trace_compile_s, 2),
      'first_step_s': round(times[0], 3),
      'step_s': round(statistics.median(times[1:]), 3),
      'images_per_s': round(args.batch / statistics.median(times[1:]), 1),
      'peak_rss_gb': round(resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--modes', default='first_order,exact,finite_difference')
  parser.add_argument('--batch', default='16')
  parser.add_argument('--cells', type=int, default=8)
  parser.add_argument('--nodes', type=int, default=4)
  parser.add_argument('--channels', type=int, default=16)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--cell_impl', default='batched')
  parser.add_argument('--fast_compile', type=int, default=1)
  parser.add_argument('--cache_dir', default='')
  parser.add_argument('--timeout', type=int, default=3600)
  parser.add_argument('--child_mode', default='')
  args = parser.parse_args()
  if args.child_mode:
    args.mode, args.batch = args.child_mode, int(args.batch)
    print('RESULT ' + json.dumps(measure(args)), flush=True)
    return
  results = []
  for batch in args.batch.split(','):
    for mode in args.modes.split(','):
      cmd = [sys.executable, __file__, f'--child_mode={mode}',
             f'--batch={batch}'] + [
                 f'--{k}={v}' for k, v in vars(args).items()
                 if k not in ('modes', 'batch', 'child_mode', 'timeout')]
      try:
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=args.timeout)
        lines = [l for l in proc.stdout.splitlines()
                 if l.startswith('RESULT ')]
        results.append(json.loads(lines[-1][7:]) if lines else
                       {'mode': mode, 'batch': int(batch),
                        'error': proc.stderr.strip().splitlines()[-1:]})
      except subprocess.TimeoutExpired:
        results.append({'mode': mode, 'batch': int(batch),
                        'error': f'timed out after {args.timeout} s'})
      print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(json.dumps({'results': results}, indent=1))


if __name__ == '__main__':
  main()
