"""Runs DIGITS searches with config overrides; prints one JSON line each.

  python benchmarks/digits_search_study.py \
      --run "lambda_step=0.0" \
      --run "lambda_step=0.1,lambda_max=0.4" \
      --run "lambda_step=0.1,lambda_max=0.4,arch_optimizer=hapg"

Each --run is one search of ``configs/cnn_search.py:digits`` (plus the
--base overrides, then the run's own), in its own process, one after the
other, in WORKDIR/<index> (which must not exist yet). Per run: the overrides, wall time, the final
counts (ops kept and total, live nodes, per cell type), supernet test
accuracy and ops kept, live nodes and test accuracy after every epoch, read
from the run's ``search_results.json`` and ``metrics.jsonl``. Never part of
the tests.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(overrides: str):
  return [f'--config.{kv.strip()}' for kv in overrides.split(',')
          if kv.strip()]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', action='append', default=[],
                      help='comma-separated config overrides of one search')
  parser.add_argument('--base', default='',
                      help='overrides applied to every run first')
  parser.add_argument('--workdir', default='/tmp/digits_search_study')
  args = parser.parse_args()
  runs = args.run or ['']
  # A search resumes from a workdir it finds: an old study's folders would
  # report that study's results as this one's.
  stale = [os.path.join(args.workdir, str(i)) for i in range(len(runs))
           if os.path.exists(os.path.join(args.workdir, str(i)))]
  if stale:
    sys.exit(f'error: {stale[0]} exists (a search there would resume, not '
             f'run); remove it or pass another --workdir.')
  for index, overrides in enumerate(runs):
    workdir = os.path.join(args.workdir, str(index))
    command = [sys.executable, '-m', 'sparsenas_jax.main',
               '--config=configs/cnn_search.py:digits', f'--workdir={workdir}',
               *_flags(args.base), *_flags(overrides)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
      print(json.dumps({'run': overrides, 'returncode': proc.returncode,
                        'stderr': proc.stderr[-2000:]}), flush=True)
      continue
    with open(os.path.join(workdir, 'search_results.json')) as f:
      results = json.load(f)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      epochs = [json.loads(line) for line in f]
    print(json.dumps({
        'run': overrides, 'base': args.base, 'wall_s': round(wall, 1),
        'counts': results['counts'],
        'counts_per_cell': results['counts_per_cell'],
        'test_accuracy': epochs[-1].get('test_accuracy'),
        'per_epoch': [{k: e.get(k) for k in ('lambda', 'ops_nonzero',
                                             'nodes_live', 'test_accuracy',
                                             'train_loss')}
                      for e in epochs]}), flush=True)


if __name__ == '__main__':
  main()
