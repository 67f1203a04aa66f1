"""The CNN search job end to end on DIGITS: artifacts, kill and resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sparsenas_jax import genotype as genotype_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny supernet: 2 channels, 3 cells, 2 nodes, 3 ops; three short epochs,
# A from 1/|O| (the prox zeroes ops within them).
TINY = ['--config.init_channels=2', '--config.layers=3', '--config.nodes=2',
        '--config.ops=max_pool_3x3,skip_connect,sep_conv_3x3',
        '--config.epochs=3', '--config.batch_size=64',
        '--config.arch_init_scale=0', '--config.lambda_step=0.14',
        '--config.cpu_fast_compile=True']


def _command(workdir, cache, *extra):
  return [sys.executable, '-m', 'sparsenas_jax.main',
          '--config=configs/cnn_search.py:digits', f'--workdir={workdir}',
          f'--config.compilation_cache_dir={cache}', *TINY, *extra]


def _env():
  return {**os.environ, 'JAX_PLATFORMS': 'cpu'}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted search, and one SIGKILLed after its first checkpoint."""
  root = tmp_path_factory.mktemp('search')
  cache = root / 'cache'
  full = subprocess.run(_command(root / 'full', cache), cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=900)
  assert full.returncode == 0, full.stderr[-3000:]

  killed = root / 'killed'
  proc = subprocess.Popen(_command(killed, cache), cwd=REPO, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 600
  ckpt = killed / 'checkpoints'
  while time.time() < deadline and proc.poll() is None:
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / 'genotype.json').exists()
  resumed = subprocess.run(_command(killed, cache), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return root / 'full', killed, full.stderr, resumed.stderr


def test_search_writes_a_sparse_genotype_and_progress(runs):
  full, _, log, _ = runs
  genotype = genotype_lib.load_genotype(str(full / 'genotype.json'))
  results = json.loads((full / 'search_results.json').read_text())
  counts = results['counts']
  # λ reached 0.28 by the last epoch: the prox removed ops.
  assert counts['ops_nonzero'] < counts['ops_total']
  per_cell = results['counts_per_cell']
  assert sorted(per_cell) == ['normal', 'reduce']
  for key, total in counts.items():
    assert sum(per_cell[t][key] for t in per_cell) == total
  kept = sum(len(n.inputs) for t in ('normal', 'reduce')
             for n in genotype.cell(t)[0])
  assert kept == results['genotype_stats']['total']['ops_kept'] > 0
  assert (full / 'genotype.png').stat().st_size > 1000
  lines = [json.loads(l) for l in
           (full / 'metrics.jsonl').read_text().splitlines()]
  per_epoch = lines[0]['step']
  assert [l['step'] for l in lines] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
  assert [l['lambda'] for l in lines] == pytest.approx([0.0, 0.14, 0.28])
  assert lines[0]['test_accuracy'] > 0.25  # 10 classes: chance is 0.1
  assert 'epoch 3/3' in log and 'ETA' in log


def test_killed_run_resumes_to_the_same_architecture(runs):
  full, killed, _, resumed_log = runs
  assert 'resumed from the checkpoint of step' in resumed_log
  a = np.load(full / 'architecture.npz')
  b = np.load(killed / 'architecture.npz')
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])
  assert ((full / 'genotype.json').read_text() ==
          (killed / 'genotype.json').read_text())
  # The resumed run loaded the programs the first run stored (same config,
  # same cache) instead of tracing them, and computed the same numbers.
  loaded = lambda run: json.loads(
      (run / 'search_results.json').read_text())['programs_loaded']
  assert loaded(full) == 0 and loaded(killed) >= 3


def test_search_derive_train_end_to_end(runs, tmp_path):
  """The searched genotype, trained from scratch on DIGITS, learns."""
  import counting  # pylint: disable=g-import-not-at-top
  full = runs[0]
  genotype_path = full / 'genotype.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main',
       '--config=configs/cnn_train.py:digits', f'--workdir={tmp_path}',
       f'--config.genotype={genotype_path}', '--config.epochs=4',
       '--config.eval_every_epochs=4'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['test_accuracy'] > 0.6  # 10 balanced classes: chance 0.1
  genotype = genotype_lib.load_genotype(str(genotype_path))
  assert results['params'] == counting.eval_network_params(
      genotype, C=8, num_classes=10, layers=3, in_channels=1)


def test_divergence_stops_at_once_and_keeps_the_checkpoints(runs, tmp_path):
  """An absurd learning rate in a fourth epoch: one line, exit 2, the
  finished run's checkpoints untouched and nothing past them saved."""
  workdir = tmp_path / 'diverged'
  shutil.copytree(runs[0], workdir, ignore=shutil.ignore_patterns('jax_cache'))
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir())
  proc = subprocess.run(
      _command(workdir, tmp_path / 'cache', '--config.epochs=4',
               '--config.learning_rate=1e12',
               '--config.hypergradient=first_order'),  # compiles faster
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: the run diverged at step ')
  assert 'not finite' in last and 'config.learning_rate' in last
  assert 'resumes from step' in last and 'Traceback' not in proc.stderr
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


def test_a_search_that_removed_a_whole_cell_keeps_its_weights(tmp_path):
  """A normal cell without live nodes has no genotype: finish writes A and
  the counts, names the empty cell, and draws nothing."""
  import types  # pylint: disable=g-import-not-at-top
  from configs import cnn_search as search_config  # pylint: disable=g-import-not-at-top
  from sparsenas_jax.experiments import cnn_search  # pylint: disable=g-import-not-at-top
  config = search_config.get_config('digits')
  config.update(nodes=2, ops='skip_connect,sep_conv_3x3',
                arch_optimizer='adam')  # adam: A is read as it is
  arch = {t: {f'node_{j}': np.full((j + 2, 2), 0.5, np.float32)
              for j in range(2)} for t in ('normal', 'reduce')}
  arch['normal'] = {k: np.zeros_like(v) for k, v in arch['normal'].items()}
  state = types.SimpleNamespace(arch=arch, arch_opt_state=None)
  summary = cnn_search.finish(config, state, str(tmp_path), {'wall_s': 1.0})
  assert summary['empty_cells'] == ['normal']
  assert summary['counts_per_cell']['normal']['nodes_live'] == 0
  assert summary['counts_per_cell']['reduce']['ops_kept'] == 10
  saved = json.loads((tmp_path / 'search_results.json').read_text())
  assert saved['empty_cells'] == ['normal'] and saved['wall_s'] == 1.0
  np.testing.assert_array_equal(
      np.load(tmp_path / 'architecture.npz')['reduce/node_1'], 0.5)
  assert not (tmp_path / 'genotype.json').exists()
