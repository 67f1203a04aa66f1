"""The recurrent search and training jobs end to end on the embedded corpus:
artifacts, kill and resume, 4 devices against 1, one-line errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from sparsenas_jax import rnn_genotype

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny supernet: 8 units, 2 nodes, windows of 8 words over 256 columns.
TINY = ['--config.nhid=8', '--config.nodes=2', '--config.batch_size=256',
        '--config.bptt=8', '--config.max_seq_len_delta=2',
        '--config.epochs=2', '--config.lambda_step=0.1',
        '--config.hypergradient=first_order']


def _env(devices=1):
  return {**os.environ, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}


def _main(config, workdir, *args, devices=1, timeout=600):
  return subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main', f'--config={config}',
       f'--workdir={workdir}', *args], cwd=REPO, env=_env(devices),
      capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted search, and one SIGKILLed after its first checkpoint
  and resumed (the two share stored programs)."""
  root = tmp_path_factory.mktemp('rnn_search')
  cache = f'--config.compilation_cache_dir={root / "cache"}'
  full = _main('configs/rnn_search.py:tiny', root / 'full', *TINY, cache)
  assert full.returncode == 0, full.stderr[-3000:]
  killed = root / 'killed'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'sparsenas_jax.main',
       '--config=configs/rnn_search.py:tiny', f'--workdir={killed}', *TINY,
       cache], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE)
  ckpt, deadline = killed / 'checkpoints', time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run ended before it could be killed'
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  resumed = _main('configs/rnn_search.py:tiny', killed, *TINY, cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return root / 'full', killed, full.stderr, resumed.stderr


def test_search_writes_a_sparse_recurrent_genotype(runs):
  full, _, log, _ = runs
  genotype = rnn_genotype.load_recurrent_genotype(str(full / 'genotype.json'))
  results = json.loads((full / 'search_results.json').read_text())
  counts = results['counts']
  assert counts['ops_total'] == (1 + 2) * 4
  assert counts['ops_nonzero'] == sum(len(n.inputs) for n in genotype.nodes)
  assert counts['ops_nonzero'] < counts['ops_total']  # λ = 0.1 removed ops
  assert results['val_perplexity'] < 1600  # the vocabulary: ~1.5k words
  assert (full / 'genotype.png').stat().st_size > 10000
  lines = [json.loads(l) for l in
           (full / 'metrics.jsonl').read_text().splitlines()]
  assert len(lines) == 2 and lines[1]['lambda'] == pytest.approx(0.1)
  assert 'epoch 2/2' in log and 'ETA' in log


def test_killed_search_resumes_to_the_same_architecture(runs):
  full, killed, _, resumed_log = runs
  assert 'resumed from the checkpoint of step' in resumed_log
  a, b = np.load(full / 'architecture.npz'), np.load(
      killed / 'architecture.npz')
  for k in a.files:
    np.testing.assert_array_equal(a[k], b[k])
  assert ((full / 'genotype.json').read_text() ==
          (killed / 'genotype.json').read_text())


def test_searched_cell_trains_from_scratch(runs, tmp_path):
  genotype = runs[0] / 'genotype.json'
  proc = _main('configs/rnn_train.py:tiny', tmp_path / 'train',
               f'--config.genotype={genotype}', '--config.nhid=16',
               '--config.batch_size=128', '--config.bptt=8',
               '--config.max_seq_len_delta=2', '--config.epochs=2',
               '--config.nonmono=1')
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / 'train' / 'results.json').read_text())
  assert results['params'] == results['params_formula']
  # Uniform over the ~1.5k words would be ~1526: the model learned.
  assert results['test_perplexity'] < 1000 and results['steps'] > 0
  assert np.isfinite(results['val_perplexity'])


def test_vocabulary_mismatch_is_a_one_line_error(runs, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(runs[0], workdir,
                  ignore=shutil.ignore_patterns('jax_cache', 'checkpoints'))
  (workdir / 'vocabulary.txt').write_text('10000 0123456789abcdef\n')
  proc = _main('configs/rnn_search.py:tiny', workdir, *TINY)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert 'another vocabulary' in last and 'new --workdir' in last


@pytest.mark.parametrize('args, needle', [
    (['--config=configs/rnn_search.py'], 'ptb.train.txt'),
    (['--config=configs/rnn_search.py:tiny', '--config.ops=tanh,gelu'],
     'recurrent ops'),
    (['--config=configs/rnn_search.py:tiny', '--config.bptt=1'],
     'bptt=1'),
    (['--config=configs/rnn_train.py:tiny', '--config.remat=True'],
     "remat='True'; valid: none, full, dots"),
    (['--config=configs/rnn_train.py:tiny', '--config.genotype=darts_v9'],
     'darts_v2'),
])
def test_bad_inputs_fail_with_one_line(tmp_path, args, needle):
  proc = subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main', *args,
       f'--workdir={tmp_path}', f'--config.data_dir={tmp_path}/ptb'],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and needle in last
  assert 'Traceback' not in proc.stderr


def test_batch_not_divisible_by_devices_is_a_one_line_error(tmp_path):
  proc = _main('configs/rnn_search.py:tiny', tmp_path, '--config.batch_size=30',
               devices=4)
  assert proc.returncode == 2
  assert 'not divisible by the 4 devices' in proc.stderr.splitlines()[-1]


FOUR_DEVICES = textwrap.dedent('''
    import jax, numpy as np
    from sparsenas_jax.runtime import parallel
    from sparsenas_jax.experiments import common, language_model as lm
    from sparsenas_jax.experiments import rnn_search as rs
    from sparsenas_jax.data import ptb
    import configs.rnn_search as cfg
    assert jax.device_count() == 4, jax.devices()
    c = cfg.get_config('tiny')
    c.nhid, c.nodes, c.batch_size, c.bptt, c.max_seq_len_delta = 8, 2, 16, 6, 2
    ops = rs.parse_ops(c.ops)
    d = rs.load_data(c)
    model = rs.make_model(c, len(d.vocab), ops)
    wopt = rs.make_weight_optimizer(c)
    state0, aopt = rs.create_state(
        c, model, ops, wopt, lambda a: common.make_arch_optimizer(c, a, 5))
    finals = []
    for n in (1, 4):
      mesh = parallel.make_mesh(n)
      state = parallel.replicate(state0, mesh)
      step = jax.jit(rs.make_search_step(c, model, wopt, aopt, 100, mesh))
      for i in range(2):
        window = lambda src, start, n: lm.batch_major(
            ptb.window(src, start, n, 8))
        batch = parallel.shard_batch({'train': window(d.train, 6 * i, 6 - i),
                                      'val': window(d.val, 6 * i, 6)}, mesh)
        state, _ = step(state, batch, jax.random.fold_in(jax.random.key(0), i))
      finals.append(parallel.to_host(state))
    for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    moved = any(np.any(a != b) for a, b in zip(
        jax.tree.leaves(finals[0].arch), jax.tree.leaves(state0.arch)))
    assert moved
    print('SAME')
''')


def test_four_devices_compute_the_steps_of_one():
  proc = subprocess.run([sys.executable, '-c', FOUR_DEVICES], cwd=REPO,
                        env=_env(4), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0 and 'SAME' in proc.stdout, proc.stderr[-3000:]
