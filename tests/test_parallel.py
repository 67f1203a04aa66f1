"""Data parallelism: 4 (fake CPU) devices compute the same step as 1, and
the split step (separately compiled programs) the same as the fused one."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from sparsenas_jax.runtime import parallel
    from sparsenas_jax.experiments import cnn_search as cs
    from sparsenas_jax.experiments import common
    import configs.cnn_search as cfg
    assert jax.device_count() == 4, jax.devices()
    c = cfg.get_config('digits')
    c.init_channels, c.layers, c.nodes = 2, 3, 1
    c.ops = 'skip_connect,sep_conv_3x3'
    c.batch_size = 16
    d = cs.load_data(c)
    model = cs.make_model(c, d.num_classes)
    sample = jnp.zeros((1, 8, 8, 1))
    wopt = cs.make_weight_optimizer(c, 100)
    state0, aopt = cs.create_state(
        c, model, sample, wopt, lambda a: common.make_arch_optimizer(c, a, 5))
    mean, std = jnp.asarray(d.mean), jnp.asarray(d.std)
    finals = []
    # One device with the whole step as one program; four devices with the
    # step's separately compiled programs.
    for n, split in ((1, False), (4, True)):
      mesh = parallel.make_mesh(n)
      state = parallel.replicate(state0, mesh)
      step = cs.make_search_step(c, model, wopt, aopt, 100, mean, std,
                                 split=split)
      f = step if split else jax.jit(step)
      for i in range(2):
        part = lambda split, seed: dict(zip(
            ('image', 'label'), cs.data.batch_at(split, 16, seed, i)))
        batch = parallel.shard_batch(
            {'train': part(d.train, 0), 'val': part(d.val, 1)}, mesh)
        state, _ = f(state, batch, jax.random.fold_in(jax.random.key(0), i))
      if n == 4:
        leaf = jax.tree.leaves(state.arch)[0]
        assert len(leaf.sharding.device_set) == 4  # replicated on all 4
      finals.append(parallel.to_host(state))
    for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    arch_moved = any(np.any(a != b) for a, b in zip(
        jax.tree.leaves(finals[0].arch), jax.tree.leaves(state0.arch)))
    assert arch_moved
    print('SAME')
''')


def test_four_devices_match_one_device():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0 and 'SAME' in proc.stdout, proc.stderr[-3000:]


def test_batch_not_divisible_by_devices_is_a_one_line_error(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  proc = subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main',
       '--config=configs/cnn_search.py:digits', f'--workdir={tmp_path}',
       '--config.batch_size=30'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 2
  assert 'not divisible by the 4 devices' in proc.stderr.splitlines()[-1]
