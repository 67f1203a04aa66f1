"""Wall time of the whole DIGITS pruning grid (Fig. 3), as JSON.

  python benchmarks/digits_prune.py [--variant=wide]

Compile and run time per optimizer (each one compiled program vmapped over
its penalties, λs and seeds), the total, and peak resident memory.
"""

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import digits_prune as cfg  # pylint: disable=g-import-not-at-top,wrong-import-position
from sparsenas_jax.experiments import digits_prune  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='')
  args = parser.parse_args()
  config = cfg.get_config(args.variant or None)
  t0 = time.perf_counter()
  rows, timings = digits_prune.run_grid(config)
  print(json.dumps({
      'runs': len(rows), 'per_optimizer': timings,
      'total_s': round(time.perf_counter() - t0, 1),
      'peak_rss_gb': round(resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}, indent=1))


if __name__ == '__main__':
  main()
