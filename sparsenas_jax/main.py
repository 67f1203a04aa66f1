"""Command line: ``python -m sparsenas_jax.main --config=FILE[:variant] --workdir=DIR``.

Every config field can be overridden as ``--config.field=value``.
"""

import importlib
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sparsenas_jax.data import DatasetNotPreparedError
from sparsenas_jax.data import TensorFlowRequiredError
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.errors import DivergenceError
from sparsenas_jax.runtime import host_memory

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Job config: configs/<job>.py[:variant].',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])
_REUSE_PAGES = flags.DEFINE_bool(
    'reuse_pages', True,
    'On XLA:CPU, the jobs in REUSES_PAGES (the CNN search, sweep and '
    'training) let each call of a step reuse the memory pages the previous '
    "call freed (runtime.host_memory); --noreuse_pages keeps JAX's and the "
    "C heap's defaults.")

# Jobs whose steps run faster with host_memory.reuse_pages at the same peak
# memory (measured: docs/performance.md). The recurrent search's
# finite-difference step doubles its peak with it, so the recurrent jobs
# keep the defaults.
REUSES_PAGES = ('cnn_search', 'cnn_sweep', 'cnn_train')

# job name -> module with run(config, workdir)
JOBS = {
    'cnn_search': 'sparsenas_jax.experiments.cnn_search',
    'cnn_sweep': 'sparsenas_jax.experiments.cnn_sweep',
    'cnn_train': 'sparsenas_jax.experiments.cnn_train',
    'digits_prune': 'sparsenas_jax.experiments.digits_prune',
    'rnn_search': 'sparsenas_jax.experiments.rnn_search',
    'rnn_train': 'sparsenas_jax.experiments.rnn_train',
}


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; fields are set as '
          '--config.field=value.')
  config = _CONFIG.value
  job = config.get('job')
  if job not in JOBS:
    _fail(f'unknown job {job!r} in the config; valid jobs: '
          f'{", ".join(sorted(JOBS))}.')
  if _REUSE_PAGES.value and job in REUSES_PAGES:
    logging.info('XLA:CPU calls reuse freed pages: %s',
                 host_memory.reuse_pages())
  module = importlib.import_module(JOBS[job])
  logging.info('job %s, workdir %s\n%s', job, _WORKDIR.value, config)
  try:
    module.run(config, _WORKDIR.value)
  except (ConfigError, DatasetNotPreparedError, DivergenceError,
          TensorFlowRequiredError) as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main)
