"""The training job (configs/cnn_train.py) on DIGITS: artifacts, exact resume,
one-line errors for bad genotypes and unprepared data."""

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--config.init_channels=4', '--config.epochs=2',
        '--config.eval_every_epochs=1', '--config.batch_size=128']


def _main(workdir, *args, variant='digits'):
  return subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main',
       f'--config=configs/cnn_train.py:{variant}', f'--workdir={workdir}',
       *args], cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_training_resumes_exactly_from_a_checkpoint(tmp_path):
  workdir, cache = tmp_path / 'run', f'--config.compilation_cache_dir={tmp_path}/c'
  full = _main(workdir, *TINY, cache)
  assert full.returncode == 0, full.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  lines = [json.loads(l) for l in
           (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == [11, 22]  # 1437 images / 128
  assert lines[0]['drop_prob'] == 0 and lines[1]['drop_prob'] > 0
  assert 'network: ' in full.stderr and 'multiply-adds' in full.stderr
  assert results['steps'] == 22 and 0 < results['test_error'] < 0.9
  assert results['params'] < results['params_with_aux']

  # Lose the last epoch, as if killed during it: the rerun resumes from the
  # first epoch's checkpoint and ends where the uninterrupted run did.
  shutil.rmtree(workdir / 'checkpoints' / '22')
  os.remove(workdir / 'results.json')
  resumed = _main(workdir, *TINY, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'resumed from the checkpoint of step 11' in resumed.stderr
  again = json.loads((workdir / 'results.json').read_text())
  assert again['test_loss'] == results['test_loss']
  assert again['train_loss'] == results['train_loss']

  # An absurd learning rate for a third epoch: one line, exit 2, and the
  # checkpoint of step 22 stays the latest (tests/test_runtime.py resumes
  # such a workdir).
  diverged = _main(workdir, *TINY, cache, '--config.epochs=3',
                   '--config.learning_rate=1e12')
  assert diverged.returncode == 2, diverged.stderr[-3000:]
  last = diverged.stderr.strip().splitlines()[-1]
  assert last.startswith('error: the run diverged at step ')
  assert 'config.learning_rate' in last and 'resumes from step 22' in last
  assert 'Traceback' not in diverged.stderr
  assert sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                if p.name.isdigit()) == [11, 22]


@pytest.mark.parametrize('text, needle', [
    ('{"ops": [', 'not valid JSON'),
    ('{"ops": ["max_pool_3x3"], "normal": {"nodes": [{"index": 2, "inputs": '
     '[[0, "conv_9x9", 1.0]]}], "concat": [2]}, "reduce": {"nodes": [], '
     '"concat": []}}', "unknown op 'conv_9x9'"),
    ('{"ops": ["max_pool_3x3"], "normal": {"nodes": [{"index": 2, "inputs": '
     '[[3, "max_pool_3x3", 1.0]]}], "concat": [2]}, "reduce": {"nodes": '
     '[{"index": 2, "inputs": [[0, "max_pool_3x3", 1.0]]}], "concat": [2]}}',
     'input node 3 does not exist'),
])
def test_bad_genotype_file_fails_with_one_line(tmp_path, text, needle):
  path = tmp_path / 'genotype.json'
  path.write_text(text)
  proc = _main(tmp_path / 'w', f'--config.genotype={path}')
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and needle in last and str(path) in last
  assert 'Traceback' not in proc.stderr


def test_unknown_genotype_name_lists_the_registry(tmp_path):
  proc = _main(tmp_path / 'w', '--config.genotype=darts_v9')
  assert proc.returncode == 2
  assert 'darts_v2' in proc.stderr.strip().splitlines()[-1]


def test_offline_imagenet_says_how_to_get_it(tmp_path):
  proc = _main(tmp_path / 'w', f'--config.data_dir={tmp_path}/tfds',
               variant='imagenet')
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert 'ILSVRC2012_img_train.tar' in last and 'manual' in last
