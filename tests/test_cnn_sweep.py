"""A sweep of CNN searches as one vmapped program (experiments/cnn_sweep.py):
its grid, each member's steps against the same search run alone, and the job
end to end with a resume."""

import functools
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cnn_search as search_config
from sparsenas_jax import data
from sparsenas_jax.experiments import cnn_search
from sparsenas_jax.experiments import cnn_sweep
from sparsenas_jax.experiments import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny supernet: 2 channels, 3 cells, 2 nodes, 3 ops; batches of 192 make
# 3 steps an epoch; λ jumps to 0.4 at the second (no cap); A from 1/|O|
# (the prox zeroes ops within the two epochs).
TINY = dict(init_channels=2, layers=3, nodes=2,
            ops='max_pool_3x3,skip_connect,sep_conv_3x3', epochs=2,
            batch_size=192, lambda_step=0.4, lambda_max=0.0,
            arch_init_scale=0.0)


def _config(**sweep):
  config = search_config.get_config('digits_sweep')
  config.update(TINY)
  for field in cnn_sweep.SWEEP_FIELDS:
    config.sweep[field] = sweep.get(field, '')
  return config


def test_grid_is_the_product_last_field_fastest():
  config = _config(seed='3,4', l1_ratio='0.2,0.8', arch_learning_rate='1e-3')
  members = cnn_sweep.grid(config)
  assert [(m['seed'], m['l1_ratio']) for m in members] == [
      (3, 0.2), (3, 0.8), (4, 0.2), (4, 0.8)]
  assert all(m['arch_learning_rate'] == 1e-3 and
             m['learning_rate'] == config.learning_rate and
             m['lambda_step'] == config.lambda_step for m in members)
  member = cnn_sweep.member_config(config, members[2])
  assert (member.job, member.seed, member.l1_ratio, member.data_seed,
          member.step_compilation) == ('cnn_search', 4, 0.2, config.seed,
                                       'fused')
  assert not any(member.sweep.values())
  cnn_search.validate(member)  # a member is a valid search on its own
  # A's initial value and λ's cap are a member's own too.
  config = _config(arch_init_scale='0,0.3', lambda_max='0.5')
  assert [(m.arch_init_scale, m.lambda_max) for m in (
      cnn_sweep.member_config(config, s) for s in cnn_sweep.grid(config))] == [
          (0.0, 0.5), (0.3, 0.5)]


# XLA:CPU's optimisation is most of the compile time of these tiny programs.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _solo(config, model, sample, total_steps, spe, mean, std):
  """A search's initial state and its jitted step, alone."""
  weight_opt = cnn_search.make_weight_optimizer(config, total_steps)
  state, arch_opt = cnn_search.create_state(
      config, model, sample, weight_opt,
      lambda a: common.make_arch_optimizer(config, a, spe))
  return state, _jit(cnn_search.make_search_step(
      config, model, weight_opt, arch_opt, total_steps, mean, std))


def _put(tree, k, member):
  return jax.tree.map(lambda x, m: jnp.asarray(x).at[k].set(m), tree, member)


def test_members_take_the_steps_of_their_searches_alone():
  """A member differing from the config's own values in seed and α (the
  weights' learning rate is the grid's one value) takes its solo search's
  steps: from the same state, one step of the sweep and one of the search
  alone agree to float tolerance, at every step of the first epoch and the
  first of the second (λ jumps to 300: the prox zeroes).

  Each step starts from the solo search's state (the search is chaotic in
  float32: two programs' last-bit differences grow along a trajectory, by
  ~1e-4 within a few steps here). HAPG: AdamHAPG's first steps are
  sign-like and turn last-bit differences of a near-zero gradient element
  into whole steps. First order: it compiles in half the time of the
  second-order modes, whose member steps agree as closely.
  """
  config = _config(seed='0,1', l1_ratio='0.2,0.9', learning_rate='0.1')
  config.arch_optimizer = 'hapg'
  config.lambda_step = 300.0  # thresholds λα·lr of 0.18-0.81 from step spe
  config.hypergradient = 'first_order'
  members = cnn_sweep.validate(config)
  configs = [cnn_sweep.member_config(config, s) for s in members]
  search_data = cnn_search.load_data(configs[0])
  spe = data.steps_per_epoch(len(search_data.train[0]), config.batch_size)
  assert spe <= 3
  total_steps = spe * config.epochs
  model = cnn_search.make_model(config, search_data.num_classes)
  sample = jnp.zeros((1,) + search_data.train[0].shape[1:], jnp.float32)
  mean, std = jnp.asarray(search_data.mean), jnp.asarray(search_data.std)

  sweep = cnn_sweep.create_state(members, configs, model, sample, total_steps,
                                 spe)
  sweep_step = _jit(cnn_sweep.make_sweep_step(config, members, model,
                                              total_steps, spe, mean, std))
  checked = (3,)  # seed 1, α 0.9
  assert (configs[3].seed, configs[3].l1_ratio) == (1, 0.9)
  solos = {k: _solo(configs[k], model, sample, total_steps, spe, mean, std)
           for k in checked}
  states = {k: solos[k][0] for k in checked}
  for k in checked:  # the sweep's initial members are the solo searches'
    for got, want in zip(jax.tree.leaves(cnn_sweep._member(sweep.members, k)),
                         jax.tree.leaves(states[k])):
      np.testing.assert_array_equal(got, want)
  for i in range(spe + 1):
    members_in = sweep.members
    for k in checked:
      members_in = _put(members_in, k, states[k])
    batch = cnn_sweep._stack([cnn_search.search_batch(
        search_data, config.batch_size, s['seed'], i) for s in members])
    sweep, metrics = sweep_step(sweep._replace(members=members_in), batch,
                                jax.random.key(99))
    for k in checked:
      states[k], solo_metrics = solos[k][1](
          states[k], cnn_search.search_batch(
              search_data, config.batch_size, configs[k].seed, i),
          jax.random.fold_in(jax.random.key(configs[k].seed), i))
      member = cnn_sweep._member(sweep.members, k)
      for got, want in zip(jax.tree.leaves(member),
                           jax.tree.leaves(states[k])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                   err_msg=f'step {i}, member {k}')
      np.testing.assert_allclose(metrics[f'member_{k}/train_loss'],
                                 solo_metrics['train_loss'], rtol=1e-6)
  assert sorted(k for k in metrics if k.startswith('member_1/')) == [
      'member_1/arch_val_loss', 'member_1/train_accuracy',
      'member_1/train_loss']
  assert all(bool(v) for v in metrics['finite'].values())
  assert any('member 2 (seed=1, ' in name and 'learning_rate=0.1' in name
             for name in metrics['finite'])
  # The prox acted, and the members differ.
  zeros = sum(int(np.sum(np.asarray(a) == 0)) for a in jax.tree.leaves(
      common.architecture(configs[3], states[3].arch,
                          states[3].arch_opt_state)))
  assert zeros > 0
  other = cnn_sweep._member(sweep.members, 0)  # seed 0, α 0.2
  assert not all(np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(other.weights), jax.tree.leaves(states[3].weights)))


def _run(workdir):
  args = [f'--config.{k}={v}' for k, v in TINY.items()]
  return subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main',
       '--config=configs/cnn_search.py:digits_sweep', f'--workdir={workdir}',
       '--config.sweep.seed=0,1', '--config.sweep.lambda_step=0.1,0.4',
       '--config.cpu_fast_compile=True',
       '--config.hypergradient=first_order',  # compiles in half the time
       *args],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def test_sweep_writes_every_member_and_resumes(tmp_path):
  workdir = tmp_path / 'sweep'
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / 'sweep_results.json').read_text())
  assert [m['settings']['lambda_step'] for m in results['members']] == [
      0.1, 0.4, 0.1, 0.4]
  for k, member in enumerate(results['members']):
    out = json.loads((workdir / f'member_{k}' /
                      'search_results.json').read_text())
    assert out['settings'] == member['settings']
    assert out['counts'] == member['counts']
    assert member['empty_cells'] == []
    assert 0.0 <= out['test_accuracy'] <= 1.0
    assert len(out['curves']['test_accuracy']) == TINY['epochs']
    assert (workdir / f'member_{k}' / 'genotype.png').stat().st_size > 1000
  groups = {g['settings']['lambda_step']: g for g in results['over_seeds']}
  assert sorted(groups) == [0.1, 0.4]
  assert groups[0.4]['seeds'] == [0, 1]
  accuracies = [results['members'][k]['test_accuracy'] for k in (1, 3)]
  assert groups[0.4]['test_accuracy']['mean'] == pytest.approx(
      np.mean(accuracies))
  # A larger λ step zeroes more ops.
  assert (groups[0.4]['ops_kept']['mean'] < groups[0.1]['ops_kept']['mean'])

  # Resume: without its last checkpoint, the sweep reruns the last epoch
  # from the first and ends in the same architectures.
  before = {k: dict(np.load(workdir / f'member_{k}' / 'architecture.npz'))
            for k in range(4)}
  checkpoints = workdir / 'checkpoints'
  last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  shutil.rmtree(checkpoints / str(last))
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'resumed from the checkpoint of step' in proc.stderr
  for k in range(4):
    after = np.load(workdir / f'member_{k}' / 'architecture.npz')
    for name, value in before[k].items():
      np.testing.assert_array_equal(after[name], value)

  # Another grid in this workdir is refused.
  proc = subprocess.run(
      [sys.executable, '-m', 'sparsenas_jax.main',
       '--config=configs/cnn_search.py:digits_sweep', f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2
  assert 'another grid' in proc.stderr.strip().splitlines()[-1]
