"""The multi-host path, executed: two processes on localhost with two CPU
devices each (JAX's distributed runtime, gloo CPU collectives) run the same
search as one process with four devices, and resume after both are killed."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny first-order search (one node, two ops) with HAPG, whose steps are
# continuous in the gradient (Adam's sign-like steps turn float noise into
# differences of a learning rate), so runs agree to float tolerance.
TINY = ['--config=configs/cnn_search.py:digits', '--config.init_channels=2',
        '--config.layers=3', '--config.nodes=1',
        '--config.ops=skip_connect,sep_conv_3x3',
        '--config.hypergradient=first_order', '--config.batch_size=64',
        '--config.train_portion=0.25', '--config.epochs=3',
        '--config.lambda_step=5', '--config.lambda_max=0',
        '--config.arch_optimizer=hapg',
        '--config.arch_momentum=-1', '--config.l1_ratio=0.5',
        '--config.cpu_fast_compile=True']


def _env(devices):
  return {**os.environ, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_processes(workdir, cache):
  port = _free_port()
  return [subprocess.Popen(
      [sys.executable, '-m', 'sparsenas_jax.main', *TINY,
       f'--workdir={workdir}', f'--config.compilation_cache_dir={cache}',
       '--config.multi_host=True',
       f'--config.coordinator_address=127.0.0.1:{port}',
       '--config.num_processes=2', f'--config.process_id={i}'],
      cwd=REPO, env=_env(2), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True) for i in range(2)]


def _wait(procs, timeout=600):
  errs = [p.communicate(timeout=timeout)[1] for p in procs]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  return errs


def test_two_hosts_equal_one_host_with_four_devices_and_resume(tmp_path):
  single = subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main', *TINY,
       f'--workdir={tmp_path / "single"}',
       f'--config.compilation_cache_dir={tmp_path / "cache1"}'],
      cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]

  workdir = tmp_path / 'multi'
  procs = _two_processes(workdir, tmp_path / 'cache2')
  ckpt, deadline = workdir / 'checkpoints', time.time() + 600
  while time.time() < deadline and all(p.poll() is None for p in procs):
    if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
      break
    time.sleep(0.05)
  assert all(p.poll() is None for p in procs), [
      p.communicate()[1][-2000:] for p in procs]
  for p in procs:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
  assert not (workdir / 'architecture.npz').exists()

  errs = _wait(_two_processes(workdir, tmp_path / 'cache2'))
  assert 'resumed from the checkpoint of step' in errs[0]
  assert 'process 0 of 2' in errs[0]
  a = np.load(tmp_path / 'single' / 'architecture.npz')
  b = np.load(workdir / 'architecture.npz')
  assert a.files == b.files
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
  # λ = 5, 10 in epochs 2, 3 shrank A from its start (1/len(ops) = 0.5).
  assert max(np.abs(a[k]).max() for k in a.files) < 0.1
