"""Times the evaluation network's training step: images/s, compile, memory.

  python benchmarks/train_step.py                    # CIFAR-10 net, batch 96
  python benchmarks/train_step.py --genotype=WORKDIR/genotype.json
  python benchmarks/train_step.py --variant=imagenet --batch=32

Builds the network of ``configs/cnn_train.py`` (default variant ``cifar10``:
DARTS V2 cell, C=36, 20 cells, auxiliary head, drop path), compiles its
training step on random uint8 images and prints one JSON object: compile_s
(tracing + compilation, i.e. time to first step), step_s (median),
images_per_s, peak_rss_gb, params and multiply-adds. Never part of the tests.
"""

import argparse
from concurrent import futures
import json
import os
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='cifar10')
  parser.add_argument('--genotype', default='darts_v2')
  parser.add_argument('--batch', type=int, default=0, help='0: the config')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--fast_compile', type=int, default=-1,
                      help='XLA:CPU optimisation level 0 (1) or not (0); '
                           '-1: the variant config\'s cpu_fast_compile')
  # 0: without host_memory.reuse_pages, which the jobs call.
  parser.add_argument('--reuse_pages', type=int, default=1)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import cnn_train as cfg  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import compilation  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import host_memory  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.runtime import parallel  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import cnn_train as ct  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.models import eval_network  # pylint: disable=g-import-not-at-top

  # As the jobs' entry point does (sparsenas_jax.main).
  pages_reused = bool(args.reuse_pages) and host_memory.reuse_pages()

  config = cfg.get_config(args.variant)
  config.genotype = args.genotype
  if args.fast_compile >= 0:
    config.cpu_fast_compile = bool(args.fast_compile)
  batch_size = args.batch or config.batch_size
  genotype = ct.validate(config)
  imagenet = config.dataset == 'imagenet2012'
  shape = (224, 224, 3) if imagenet else (32, 32, 3)
  classes = {'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000,
             'digits': 10}[config.dataset]
  if config.dataset == 'digits':
    shape = (8, 8, 1)
  mesh = parallel.make_mesh(0)
  model = ct.make_model(config, genotype, classes)
  variables = eval_network.init_variables(
      model, jnp.zeros((1,) + shape, jnp.float32), 0)
  sizes = ct.model_complexity(model, variables, shape)
  steps_per_epoch = 50000 // batch_size
  optimizer = ct.make_optimizer(config, steps_per_epoch)
  state = parallel.replicate(ct.TrainState(
      jnp.zeros([], jnp.int32), variables['params'],
      variables['batch_stats'], optimizer.init(variables['params'])), mesh)
  rng = np.random.default_rng(0)
  batch = lambda: parallel.shard_batch(
      {'image': rng.integers(0, 256, (batch_size,) + shape, dtype=np.uint8),
       'label': rng.integers(0, classes, batch_size).astype(np.int32)}, mesh)
  mean, std = jnp.full(shape[-1:], 0.5), jnp.full(shape[-1:], 0.25)
  step = ct.make_train_step(config, model, optimizer, steps_per_epoch, mean,
                            std)
  key = jax.random.key(0)
  # Donating the state, as the job does (experiments.cnn_train).
  compiled, compile_s = compilation.compile_step(
      step, (state, batch(), key), cpu_fast_compile=config.cpu_fast_compile,
      donate=(0,))
  times = []
  # Batches come from another thread, as in runtime.loop.
  prefetcher = futures.ThreadPoolExecutor(1)
  for i in range(args.steps + 1):
    b = prefetcher.submit(batch).result()
    t0 = time.perf_counter()
    state, metrics = compiled(state, b, jax.random.fold_in(key, i))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times[1:])
  print(json.dumps({
      'variant': args.variant, 'genotype': args.genotype,
      'batch': batch_size, 'backend': jax.default_backend(),
      'pages_reused': pages_reused,
      'devices': jax.device_count(),
      'compile_s': round(compile_s, 2), 'first_step_s': round(times[0], 3),
      'step_s': round(step_s, 3),
      'images_per_s': round(batch_size / step_s, 1),
      'peak_rss_gb': round(resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
      'params_m': round(sizes['params'] / 1e6, 3),
      'macs_m': round(sizes['macs'] / 1e6, 1),
  }, indent=1))


if __name__ == '__main__':
  main()
