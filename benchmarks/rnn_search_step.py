"""Times the recurrent search step: compile, step time, peak memory; JSON.

  python benchmarks/rnn_search_step.py                 # DARTS's PTB search size
  python benchmarks/rnn_search_step.py --modes=first_order --batch=64

Every mode runs in its own subprocess (its peak resident memory is its own).
Per mode: init_s (building the state), compile_s (tracing and compiling the
whole step, one program), first_step_s, time_to_first_step_s (init_s +
compile_s + first_step_s), step_s (median of --steps steps after the first),
tokens_per_s, peak_rss_gb. Random token ids over --ntoken words, windows of
--bptt steps (the mask full), as the PyTorch harness
``shared/peers/darts_rnn_bench.py [batch] [bptt] [steps] [ntoken] [nhid]``
does. Never part of the test run.
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
  """Runs in the child: one mode."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import rnn_search as cfg  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import common  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import rnn_search as rs  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import compilation  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import parallel  # pylint: disable=g-import-not-at-top

  pages_reused = bool(args.reuse_pages) and host_memory.reuse_pages()
  config = cfg.get_config()
  config.hypergradient = args.mode
  config.batch_size, config.bptt, config.nhid = args.batch, args.bptt, args.nhid
  config.max_seq_len_delta = 0
  config.remat = args.remat
  mesh = parallel.make_mesh(0)
  ops = rs.parse_ops(config.ops)
  model = rs.make_model(config, args.ntoken, ops)
  weight_opt = rs.make_weight_optimizer(config)
  t0 = time.perf_counter()
  state, arch_opt = rs.create_state(
      config, model, ops, weight_opt,
      lambda a: common.make_arch_optimizer(config, a, 100))
  state = parallel.replicate(state, mesh)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  shape = (args.batch, args.bptt)
  window = lambda: {
      'input': rng.integers(0, args.ntoken, shape).astype(np.int32),
      'target': rng.integers(0, args.ntoken, shape).astype(np.int32),
      'mask': np.ones(shape, np.float32)}
  batch = lambda: parallel.shard_batch({'train': window(), 'val': window()},
                                       mesh)
  key = jax.random.key(0)
  step = rs.make_search_step(config, model, weight_opt, arch_opt, 1000, mesh)
  t0 = time.perf_counter()
  run, _ = compilation.compile_step(step, (state, batch(), key), donate=(0,))
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(args.steps + 1):
    b = batch()
    t0 = time.perf_counter()
    state, metrics = run(state, b, jax.random.fold_in(key, i))
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times[1:])
  return {
      'mode': args.mode, 'batch': args.batch, 'bptt': args.bptt,
      'ntoken': args.ntoken, 'nhid': args.nhid, 'remat': args.remat,
      'backend': jax.default_backend(), 'devices': jax.device_count(),
      'pages_reused': pages_reused,
      'init_s': round(init_s, 2), 'compile_s': round(compile_s, 2),
      'first_step_s': round(times[0], 2),
      'time_to_first_step_s': round(init_s + compile_s + times[0], 2),
      'step_s': round(step_s, 3),
      'tokens_per_s': round(args.batch * args.bptt / step_s, 1),
      'peak_rss_gb': round(resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      'train_loss': float(metrics['train_loss'])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--modes', default='first_order,exact,finite_difference')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--bptt', type=int, default=35)
  parser.add_argument('--ntoken', type=int, default=10000)
  parser.add_argument('--nhid', type=int, default=300)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--remat', default='dots',
                      help='none | full | dots (models.rnn.REMAT_POLICIES)')
  # 1: with host_memory.reuse_pages, which the recurrent jobs do not call
  # (sparsenas_jax.main.REUSES_PAGES).
  parser.add_argument('--reuse_pages', type=int, default=0)
  parser.add_argument('--timeout', type=int, default=3600)
  parser.add_argument('--child', default='')
  args = parser.parse_args()
  if args.child:
    args.mode = args.modes
    print('RESULT ' + json.dumps(measure(args)), flush=True)
    return
  results = []
  for mode in args.modes.split(','):
    flags = {**vars(args), 'modes': mode, 'child': 1}
    cmd = [sys.executable, __file__] + [
        f'--{k}={v}' for k, v in flags.items() if k != 'timeout']
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True,
                            timeout=args.timeout)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      results.append(json.loads(lines[-1][7:]) if lines else
                     {'mode': mode,
                      'error': proc.stderr.strip().splitlines()[-3:]})
    except subprocess.TimeoutExpired:
      results.append({'mode': mode,
                      'error': f'timed out after {args.timeout} s'})
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(json.dumps({'results': results}, indent=1))


if __name__ == '__main__':
  main()
