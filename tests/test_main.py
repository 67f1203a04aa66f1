"""The command line and config checks: one-line errors for bad configs, before
any training; a warning for a risky one."""

import importlib
import os
import subprocess
import sys

import pytest

from configs import cnn_search as search_config
from configs import digits_prune as prune_config
from sparsenas_jax import errors
from sparsenas_jax import main
from sparsenas_jax.experiments import cnn_search
from sparsenas_jax.runtime import host_memory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  return subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main', *args],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
  """The command line's path: main's own check, and a job's check raised
  inside its run, each one line on stderr, exit 2, no traceback."""
  for config, override, needle in [
      ('configs/digits_prune.py', '--config.job=nope', 'unknown job'),
      ('configs/cnn_search.py:digits', '--config.lambda_step=-0.01',
       'negative')]:
    proc = _main(f'--config={config}', f'--workdir={tmp_path}', override)
    assert proc.returncode == 2, override
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and needle in last
    assert 'Traceback' not in proc.stderr


_CONFIGS = {'digits_prune': prune_config, 'cnn_search': search_config}


def _rejected(job, variant, overrides, needle):
  """The job's ``validate`` raises a ConfigError naming ``needle`` (what
  main prints as its one line)."""
  config = _CONFIGS[job].get_config(variant)
  for path, value in overrides.items():
    *parents, field = path.split('.')
    node = config
    for name in parents:
      node = node[name]
    node[field] = value
  module = importlib.import_module(main.JOBS[config.job])
  with pytest.raises(errors.ConfigError) as raised:
    module.validate(config)
  assert needle in str(raised.value)
  assert '\n' not in str(raised.value)


@pytest.mark.parametrize('overrides, needle', [
    ({'runs': 'hapg:ridge'}, "penalty in ('lasso', 'group_lasso', 'sgl')"),
    ({'runs': 'lbfgs:sgl'}, 'optimizer in'),
    ({'l1_ratio': 1.5}, 'l1_ratio must be in [0, 1]'),
])
def test_bad_prune_config_values_are_rejected(overrides, needle):
  _rejected('digits_prune', None, overrides, needle)


def test_unknown_variant_names_the_valid_ones(tmp_path):
  proc = _main('--config=configs/digits_prune.py:nope',
               f'--workdir={tmp_path}')
  assert proc.returncode != 0
  assert 'unknown digits_prune variant' in proc.stderr


def test_offline_cifar_search_fails_at_once_saying_how_to_get_it(tmp_path):
  proc = _main('--config=configs/cnn_search.py', f'--workdir={tmp_path}/w',
               f'--config.data_dir={tmp_path}/tfds')
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert 'tfds build cifar10' in last and 'digits' in last


@pytest.mark.parametrize('overrides, needle', [
    ({'ops': 'sep_conv_3x3,conv_9x9'}, 'unknown op'),
    ({'layers': 2}, 'layers=2'),
    ({'lambda_max': -1.0}, 'lambda_max=-1'),
    ({'arch_optimizer': 'sgd'}, 'valid'),
    ({'arch_momentum': 1.0}, 'arch_momentum=1.0'),
    ({'sweep.seed': '0,1'}, '--config.job=cnn_sweep'),
    ({'job': 'cnn_sweep', 'sweep.l1_ratio': '0.5,x'}, 'comma-separated'),
    ({'job': 'cnn_sweep', 'sweep.seed': '4'}, 'needs >= 2 members'),
    ({'job': 'cnn_sweep', 'sweep.l1_ratio': '0.5,1.5'}, 'l1_ratio=1.5'),
])
def test_bad_search_config_values_are_rejected(overrides, needle):
  _rejected('cnn_search', 'digits', overrides, needle)


@pytest.mark.parametrize('impl, warns', [
    ('stacked', True), ('batched', True), ('reference', False),
    ('auto', False)])
def test_search_warns_when_a_cell_that_aborted_xla_gpu_is_forced_there(
    monkeypatch, impl, warns):
  warnings = []
  monkeypatch.setattr(cnn_search.jax, 'default_backend', lambda: 'gpu')
  monkeypatch.setattr(cnn_search.logging, 'warning',
                      lambda msg, *args: warnings.append(msg % args))
  config = search_config.get_config('digits')
  config.cell_impl = impl
  cnn_search.validate(config)
  assert bool(warnings) == warns
  assert all('--config.cell_impl=auto' in w for w in warnings)


@pytest.mark.parametrize('config, override, reused', [
    ('configs/cnn_search.py:digits', '--config.lambda_step=-0.01', True),
    ('configs/rnn_search.py:tiny', '--config.max_seq_len_delta=-1', False),
])
def test_the_cnn_jobs_reuse_pages_and_the_recurrent_ones_do_not(
    tmp_path, config, override, reused):
  """main.REUSES_PAGES, before the job starts (a bad config ends it)."""
  proc = _main(f'--config={config}', f'--workdir={tmp_path}', override)
  assert proc.returncode == 2
  applied = 'XLA:CPU calls reuse freed pages: True' in proc.stderr
  assert applied == (reused and host_memory._mallopt() is not None)
