"""Many CNN searches as one program: a sweep of ``cnn_search`` over a grid.

A sweep runs the searches of a grid of settings — seeds, A's initial
value, learning rates, λ steps and caps, α — as one ``jax.vmap``ped search
step over a leading axis of independent search states (weights, A, both
optimizer states), compiled once for the whole grid. Member k takes the
steps the search with its settings takes alone (``cnn_search`` with
``step_compilation='fused'``): its weights and A are initialised, its
batches drawn and its augmentation keys folded from its own seed (and A
from its own ``arch_init_scale``), and its optimizers built from its own
hyperparameters, traced as arrays. All members share the data split and
test set (``config.data_seed``, else ``config.seed``), so their results are
comparable.

The grid is the product of ``config.sweep.<field>`` lists (comma-separated;
empty: the config's one value) over ``SWEEP_FIELDS``, in that order, the
last field varying fastest. ``runtime.loop`` runs the step, checkpoints
the whole sweep and resumes it. Outputs: ``member_<k>/`` per member (what a
search writes: ``genotype.json``, ``genotype.png``, ``architecture.npz``,
``search_results.json`` with the member's settings and per-epoch curves),
and ``sweep_results.json`` (every member's settings, counts and accuracy;
mean ± std over seeds for each other setting).

The sweep runs on one device; its members are the batch of the program.

From the same state, a member's step and its solo search's step agree to
float rounding (the programs differ, so not bitwise) in every hypergradient
mode; over many steps the two trajectories part, as any two programs of a
float32 search do.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.experiments import cnn_search
from sparsenas_jax.experiments import common
from sparsenas_jax.runtime import compilation
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import evaluation
from sparsenas_jax.runtime import loop
from sparsenas_jax.runtime import parallel

# The settings a sweep can vary; the rest of the config is shared.
SWEEP_FIELDS = ('seed', 'arch_init_scale', 'learning_rate',
                'arch_learning_rate', 'lambda_step', 'lambda_max', 'l1_ratio')
_GRID_FILE = 'sweep.json'


class SweepState(NamedTuple):
  """The sweep's checkpointed state."""
  step: jax.Array  # int32 scalar, steps taken by every member
  members: cnn_search.SearchState  # every leaf with a leading member axis
  settings: dict[str, jax.Array]  # SWEEP_FIELDS -> [members], constant


# ---------------------------------------------------------------------------
# The grid.
# ---------------------------------------------------------------------------


def grid(config) -> list[dict[str, Any]]:
  """The members' settings, ``[{field: value}]`` over ``SWEEP_FIELDS``."""
  values = []
  for field in SWEEP_FIELDS:
    text = config.sweep.get(field, '')
    kind = int if field == 'seed' else float
    try:
      listed = [kind(v) for v in text.split(',') if v.strip()] if text else []
    except ValueError:
      raise ConfigError(
          f'config.sweep.{field}={text!r}: give comma-separated '
          f'{"integers" if kind is int else "numbers"}, e.g. '
          f'{"0,1,2" if kind is int else "0.3,0.5,0.7"}.') from None
    values.append(listed or [config[field]])
  return [dict(zip(SWEEP_FIELDS, combo))
          for combo in itertools.product(*values)]


def member_config(config, settings) -> ml_collections.ConfigDict:
  """The ``cnn_search`` config of one member: the search it equals."""
  member = ml_collections.ConfigDict(config.to_dict())
  member.job = 'cnn_search'
  member.step_compilation = 'fused'
  member.data_seed = cnn_search.data_seed(config)
  for field in SWEEP_FIELDS:
    member.sweep[field] = ''
  member.update(settings)
  return member


def describe(settings) -> str:
  return ', '.join(f'{k}={v:g}' for k, v in settings.items())


class _Traced:
  """A config whose swept fields read one member's traced settings."""

  def __init__(self, config, settings):
    self._config, self._settings = config, settings

  def __getattr__(self, name):
    if name.startswith('_'):
      raise AttributeError(name)
    return self._settings[name] if name in self._settings else getattr(
        self._config, name)

  __getitem__ = __getattr__

  def get(self, name, default=None):
    return self[name] if name in self._settings or name in self._config else (
        default)


def validate(config) -> list[dict[str, Any]]:
  """Checks the sweep and its members' configs; returns the grid."""
  members = grid(config)
  if len(members) < 2:
    raise ConfigError('a sweep needs >= 2 members: list several values in '
                      f'config.sweep.{{{",".join(SWEEP_FIELDS)}}}.')
  for settings in members:
    cnn_search.validate(member_config(config, settings))
  return members


def _check_grid(workdir: str, members) -> None:
  """Writes the grid to the workdir, or checks it against the grid there."""
  path = os.path.join(workdir, _GRID_FILE)
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != members:
        raise ConfigError(f'{workdir} holds a sweep of another grid '
                          f'({_GRID_FILE}); use a new --workdir.')
    return
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      json.dump(members, f, indent=1)


# ---------------------------------------------------------------------------
# The step.
# ---------------------------------------------------------------------------


def make_sweep_step(config, members, model, total_steps, steps_per_epoch,
                    mean, std):
  """``step(sweep_state, batch, key) -> (sweep_state, metrics)``: every
  member's ``cnn_search`` step, vmapped.

  ``batch`` has a leading member axis (each member's own batches); ``key``
  is unused: member k's key is ``fold_in(key(seed_k), step)``, a solo
  search's. ``metrics`` has every member's scalars as
  ``member_<k>/<name>``, their means across members as ``<name>``, and
  finite flags named after the member's settings.
  """
  def member_step(state, settings, batch, step):
    traced = _Traced(config, settings)
    weight_opt = cnn_search.make_weight_optimizer(traced, total_steps)
    arch_opt = common.make_arch_optimizer(traced, state.arch, steps_per_epoch)
    search_step = cnn_search.make_search_step(
        traced, model, weight_opt, arch_opt, total_steps, mean, std)
    key = jax.random.fold_in(jax.random.key(settings['seed']), step)
    return search_step(state, batch, key)

  def step(sweep: SweepState, batch, key):
    del key
    states, metrics = jax.vmap(member_step, in_axes=(0, 0, 0, None))(
        sweep.members, sweep.settings, batch, sweep.step)
    flags = metrics.pop(divergence.KEY)
    out = {name: jnp.mean(v) for name, v in metrics.items()}
    for k, settings in enumerate(members):
      out.update({f'member_{k}/{name}': v[k] for name, v in metrics.items()})
    out[divergence.KEY] = {
        f'{name} of member {k} ({describe(settings)})': ok[k]
        for name, ok in flags.items() for k, settings in enumerate(members)}
    return SweepState(sweep.step + 1, states, sweep.settings), out

  return step


def create_state(members, configs, model, sample, total_steps: int,
                 steps_per_epoch: int) -> SweepState:
  """The sweep's initial state: each member's ``cnn_search.create_state``
  (from its own config), stacked."""
  states = []
  for member in configs:
    state, _ = cnn_search.create_state(
        member, model, sample,
        cnn_search.make_weight_optimizer(member, total_steps),
        lambda a, m=member: common.make_arch_optimizer(m, a, steps_per_epoch))
    states.append(state)
  settings = {f: np.asarray([s[f] for s in members],
                            np.int32 if f == 'seed' else np.float32)
              for f in SWEEP_FIELDS}
  return SweepState(jnp.zeros([], jnp.int32), _stack(states), settings)


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                      *trees)


def _member(tree, k):
  return jax.tree.map(lambda x: x[k], tree)


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs (or resumes) a sweep; returns its summary (``sweep_results.json``)."""
  members = validate(config)
  configs = [member_config(config, s) for s in members]
  mesh = loop.start(config, workdir)
  if mesh.devices.size != 1:
    raise ConfigError('a sweep runs on one device (its members are the '
                      'batch of the program); set --config.num_devices=1.')
  _check_grid(workdir, members)
  search_data = cnn_search.load_data(configs[0])
  steps_per_epoch, total_steps = cnn_search.run_length(config, search_data)
  store = compilation.job_store(
      config, workdir, search_data.mean.tolist(), search_data.std.tolist(),
      search_data.num_classes, total_steps)
  model = cnn_search.make_model(configs[0], search_data.num_classes)
  sample = jnp.zeros((1,) + search_data.train[0].shape[1:], jnp.float32)

  def init_state():
    logging.info('sweep of %d searches: %s', len(members),
                 '; '.join(describe(s) for s in members))
    return create_state(members, configs, model, sample, total_steps,
                        steps_per_epoch)

  mean, std = jnp.asarray(search_data.mean), jnp.asarray(search_data.std)
  compiled_s = {}

  def compile_step(state, batch, key):
    step_fn = make_sweep_step(config, members, model, total_steps,
                              steps_per_epoch, mean, std)
    compiled, compiled_s['sweep_step'] = compilation.compile_step(
        step_fn, (state, batch, key), cpu_fast_compile=config.cpu_fast_compile,
        donate=(0,), store=store, name='sweep_step')
    return compiled

  def batch_at(step):
    return _stack([cnn_search.search_batch(search_data, config.batch_size,
                                           s['seed'], step) for s in members])

  member_eval = cnn_search.make_eval_step(model, mean, std)

  def eval_all(weights, arch, batch):
    sums = jax.vmap(member_eval, in_axes=(0, 0, None))(weights, arch, batch)
    return {f'member_{k}/{name}': v[k] for name, v in sums.items()
            for k in range(len(members))}

  eval_step = compilation.LazyCompiled(
      eval_all, cpu_fast_compile=config.cpu_fast_compile, store=store,
      name='eval_step')

  def sparse_archs(state):
    return jax.vmap(lambda a, s: common.architecture(config, a, s))(
        state.members.arch, state.members.arch_opt_state)

  def evaluate(state):
    scalars = evaluation.evaluate(
        eval_step, (state.members.weights, sparse_archs(state)),
        evaluation.array_reader(*search_data.test), len(search_data.test[0]),
        config.batch_size, mesh)
    for name in ('test_accuracy', 'test_loss'):
      scalars[name] = float(np.mean([scalars[f'member_{k}/{name}']
                                     for k in range(len(members))]))
    return scalars

  def epoch_scalars(state, step):
    archs = parallel.to_host(sparse_archs(state))
    scalars = {}
    for k, member in enumerate(configs):
      counts = genotype_lib.sparsity_counts(_member(archs, k))
      scalars[f'member_{k}/ops_nonzero'] = counts['ops_nonzero']
      scalars[f'member_{k}/nodes_live'] = counts['nodes_live']
      scalars[f'member_{k}/lambda'] = float(common.lambda_schedule(
          member, steps_per_epoch)(step - 1))
    for name in ('ops_nonzero', 'nodes_live'):
      scalars[name] = float(np.mean([scalars[f'member_{k}/{name}']
                                     for k in range(len(members))]))
    return scalars

  job = loop.Job(
      init_state=init_state, compile=compile_step, batch_at=batch_at,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      seed=config.seed, divergence_hint=cnn_search.DIVERGENCE_HINT,
      evaluate=evaluate, eval_every_epochs=config.eval_every_epochs,
      epoch_scalars=epoch_scalars,
      log_keys=(('train_loss', '.3f'), ('arch_val_loss', '.3f'),
                ('test_accuracy', '.3f'), ('ops_nonzero', '.1f'),
                ('nodes_live', '.1f')))
  t0 = time.perf_counter()
  state, summary = loop.run(job, workdir, mesh)
  summary.update(wall_s=time.perf_counter() - t0,
                 compile_s=compiled_s.get('sweep_step', 0.0),
                 eval_compile_s=eval_step.compile_s,
                 programs_loaded=store.loaded)
  return _finish(config, members, configs, parallel.to_host(state.members),
                 workdir, summary)


def _curves(workdir: str, k: int) -> dict[str, list]:
  """Member k's per-epoch scalars from the sweep's metrics.jsonl (an epoch
  that a resumed run took again: its last record)."""
  prefix, records = f'member_{k}/', {}
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      record = json.loads(line)
      records[record['step']] = record
  curves = {'step': sorted(records)}
  for step in curves['step']:
    for name, value in records[step].items():
      if name.startswith(prefix):
        curves.setdefault(name[len(prefix):], []).append(value)
  return curves


def _finish(config, members, configs, states, workdir, summary):
  """Each member's search outputs under member_<k>/, then
  sweep_results.json (process 0)."""
  results = []
  for k, (settings, member) in enumerate(zip(members, configs)):
    prefix = f'member_{k}/'
    member_summary = {name[len(prefix):]: v for name, v in summary.items()
                      if name.startswith(prefix)}
    member_summary.update(settings=settings, curves=(
        _curves(workdir, k) if jax.process_index() == 0 else {}))
    member_dir = os.path.join(workdir, f'member_{k}')
    os.makedirs(member_dir, exist_ok=True)
    out = cnn_search.finish(member, _member(states, k), member_dir,
                            member_summary)
    if out.get('empty_cells'):
      logging.warning('member %d (%s): the prox removed every node of the %s '
                      'cell; no genotype', k, describe(settings),
                      ' and '.join(out['empty_cells']))
    results.append({'settings': settings, 'counts': out.get('counts'),
                    'test_accuracy': out.get('test_accuracy'),
                    'empty_cells': out.get('empty_cells', [])})
  if jax.process_index() != 0:
    return summary
  groups = {}
  for r in results:
    rest = tuple((f, v) for f, v in r['settings'].items() if f != 'seed')
    groups.setdefault(rest, []).append(r)
  over_seeds = []
  for rest, group in groups.items():
    stat = lambda xs: {'mean': float(np.mean(xs)), 'std': float(np.std(xs))}
    over_seeds.append({
        'settings': dict(rest), 'seeds': [r['settings']['seed'] for r in group],
        'test_accuracy': stat([r['test_accuracy'] for r in group]),
        'ops_kept': stat([r['counts']['ops_kept'] for r in group]),
        'nodes_live': stat([r['counts']['nodes_live'] for r in group])})
  sweep_summary = {
      'members': results, 'over_seeds': over_seeds,
      **{k: summary[k] for k in ('wall_s', 'compile_s', 'eval_compile_s',
                                 'first_step_s', 'steps_per_s', 'start_step',
                                 'programs_loaded') if k in summary}}
  with open(os.path.join(workdir, 'sweep_results.json'), 'w') as f:
    json.dump(sweep_summary, f, indent=1)
  for g in over_seeds:
    logging.info('%s over seeds %s: test accuracy %.3f ± %.3f, ops kept '
                 '%.1f ± %.1f', describe(g['settings']) or 'the config',
                 g['seeds'], g['test_accuracy']['mean'],
                 g['test_accuracy']['std'], g['ops_kept']['mean'],
                 g['ops_kept']['std'])
  return sweep_summary
