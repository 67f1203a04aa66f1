"""The command line and config checks: one-line errors for bad configs, before
any training; a warning for a risky one."""

import os
import subprocess
import sys

import pytest

from configs import cnn_search as search_config
from sparsenas_jax.experiments import cnn_search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  return subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main', *args],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.parametrize('override, needle', [
    ('--config.job=nope', 'unknown job'),
    ('--config.runs=hapg:ridge', "penalty in ('lasso', 'group_lasso', 'sgl')"),
    ('--config.runs=lbfgs:sgl', 'optimizer in'),
    ('--config.l1_ratio=1.5', 'l1_ratio must be in [0, 1]'),
])
def test_bad_config_values_fail_with_one_line(tmp_path, override, needle):
  proc = _main('--config=configs/digits_prune.py', f'--workdir={tmp_path}',
               override)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and needle in last
  assert 'Traceback' not in proc.stderr


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


@pytest.mark.parametrize('override, needle', [
    ('--config.ops=sep_conv_3x3,conv_9x9', 'unknown op'),
    ('--config.layers=2', 'layers=2'),
    ('--config.lambda_step=-0.01', 'negative'),
    ('--config.lambda_max=-1', 'lambda_max=-1'),
    ('--config.arch_optimizer=sgd', 'valid'),
    ('--config.sweep.seed=0,1', '--config.job=cnn_sweep'),
    ('--config.job=cnn_sweep --config.sweep.l1_ratio=0.5,x', 'comma-separated'),
    ('--config.job=cnn_sweep --config.sweep.seed=4', 'needs >= 2 members'),
    ('--config.job=cnn_sweep --config.sweep.l1_ratio=0.5,1.5', 'l1_ratio=1.5'),
])
def test_bad_search_config_values_fail_with_one_line(tmp_path, override,
                                                     needle):
  proc = _main('--config=configs/cnn_search.py:digits',
               f'--workdir={tmp_path}', *override.split())
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and needle in last


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
