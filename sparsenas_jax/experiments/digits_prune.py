"""The DIGITS pruning ablation of Wu et al. 2021 (Fig. 3), on a CPU.

An MLP 64-40-20-10 is trained on scikit-learn's DIGITS with a sparsity penalty
on its weights, grouped as in Scardapane et al. 2017: all outgoing weights of
each input feature and of each hidden neuron form a group (the rows of the
Dense kernels); biases are unpenalised. Optimizers:

* ``sgd`` and ``adam``: the penalty is added to the loss and descended with
  its autodiff subgradient. They never reach exact zeros, so a weight counts
  as zero when ``|w| < config.zero_threshold`` and accuracy is measured with
  those weights zeroed.
* ``hapg`` and ``adam_hapg``: the proximal optimizers of the paper; the
  network is read from ``sparse_params`` and zeros are exact.

Penalties: ``lasso`` (α = 1), ``group_lasso`` (α = 0), ``sgl``
(α = ``config.l1_ratio``). Each optimizer is one compiled program that
vmaps over every (penalty, λ, seed) lane it runs, with the whole training
loop inside a ``lax.scan``.

Outputs in the workdir: ``results.csv`` and ``results.json`` (one row per
run, plus means over seeds and the timings) and ``fig3.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import resource
import time
from typing import Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sparsenas_jax import optim
from sparsenas_jax.data import digits
from sparsenas_jax.errors import ConfigError

OPTIMIZERS = ('sgd', 'adam', 'hapg', 'adam_hapg')
PENALTIES = ('lasso', 'group_lasso', 'sgl')
_PROXIMAL = ('hapg', 'adam_hapg')
METRICS = ('val_accuracy', 'features', 'neurons', 'sparsity_pct')


class MLP(nn.Module):
  """ReLU MLP whose layers are named ``dense_0``, ``dense_1``, ..."""
  features: Sequence[int]

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.features):
      x = nn.Dense(width, name=f'dense_{i}')(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


@dataclasses.dataclass(frozen=True)
class Run:
  optimizer: str
  penalty: str


def parse_runs(spec: str) -> tuple[Run, ...]:
  """``'hapg:sgl,adam:sgl'`` → runs; a bad name raises ``ConfigError``."""
  runs = []
  for item in filter(None, (s.strip() for s in spec.split(','))):
    opt, sep, pen = item.partition(':')
    if not sep or opt not in OPTIMIZERS or pen not in PENALTIES:
      raise ConfigError(
          f'config.runs: bad entry {item!r}; use optimizer:penalty with '
          f'optimizer in {OPTIMIZERS} and penalty in {PENALTIES}.')
    runs.append(Run(opt, pen))
  if not runs:
    raise ConfigError('config.runs is empty; e.g. "hapg:sgl,adam:sgl".')
  return tuple(runs)


def lambdas(config) -> np.ndarray:
  if config.num_lambdas < 1:
    raise ConfigError('config.num_lambdas must be >= 1.')
  return np.logspace(config.log10_lambda_min, config.log10_lambda_max,
                     config.num_lambdas)


def validate(config) -> tuple[Run, ...]:
  runs = parse_runs(config.runs)
  if not 0 <= config.l1_ratio <= 1:
    raise ConfigError(
        f'config.l1_ratio must be in [0, 1], got {config.l1_ratio}.')
  if config.log10_lambda_min > config.log10_lambda_max:
    raise ConfigError('config.log10_lambda_min must be <= log10_lambda_max.')
  for name in ('epochs', 'batch_size', 'num_seeds'):
    if config[name] < 1:
      raise ConfigError(f'config.{name} must be >= 1, got {config[name]}.')
  for opt in OPTIMIZERS:
    if config.learning_rates[opt] <= 0:
      raise ConfigError(f'config.learning_rates.{opt} must be > 0.')
  return runs


def _penalty_ratio(penalty: str, config) -> float:
  return {'lasso': 1.0, 'group_lasso': 0.0, 'sgl': config.l1_ratio}[penalty]


def _make_optimizer(name, lam, l1_ratio, groups, config):
  lr = config.learning_rates[name]
  if name == 'sgd':
    return optax.sgd(lr)
  if name == 'adam':
    return optax.adam(lr)
  if name == 'hapg':
    return optim.hapg(lr, lam, l1_ratio, groups=groups)
  return optim.adam_hapg(lr, lam, l1_ratio, groups=groups, b1=config.adam_b1)


def structure_metrics(params, model, x_val, y_val):
  """Accuracy and sparsity of a pruned network (zeros already applied)."""
  kernels = [params[f'dense_{i}']['kernel'] for i in range(len(model.features))]
  rows_alive = [jnp.any(k != 0, axis=1) for k in kernels]
  zeros = sum(jnp.sum(k == 0) for k in kernels)
  total = sum(k.size for k in kernels)
  logits = model.apply({'params': params}, x_val)
  return {
      'val_accuracy': jnp.mean(jnp.argmax(logits, -1) == y_val),
      # Input features with an outgoing weight left (rows of the 1st kernel).
      'features': jnp.sum(rows_alive[0]),
      # Hidden neurons with an outgoing weight left (rows of later kernels).
      'neurons': sum(jnp.sum(r) for r in rows_alive[1:]),
      'sparsity_pct': 100.0 * zeros / total,
  }


def make_train_fn(optimizer: str, config, model, groups, num_train: int):
  """A pure function (key, λ, α, data) → metrics of one trained network."""
  batch = config.batch_size
  steps = num_train // batch
  if steps < 1:
    raise ConfigError(
        f'config.batch_size {batch} exceeds the {num_train} training examples.')

  def loss_fn(params, x, y, lam, l1_ratio):
    logits = model.apply({'params': params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    if optimizer not in _PROXIMAL:  # subgradient baselines
      loss += optim.sgl_penalty(params, lam, l1_ratio, groups)
    return loss

  def train(key, lam, l1_ratio, x_train, y_train, x_val, y_val):
    init_key, data_key = jax.random.split(key)
    params = model.init(init_key, x_train[:1])['params']
    opt = _make_optimizer(optimizer, lam, l1_ratio, groups, config)
    state = opt.init(params)

    def step(carry, idx):
      params, state = carry
      grads = jax.grad(loss_fn)(params, x_train[idx], y_train[idx], lam,
                                l1_ratio)
      updates, state = opt.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    def epoch(carry, e):
      perm = jax.random.permutation(jax.random.fold_in(data_key, e),
                                    num_train)
      return jax.lax.scan(step, carry, perm[:steps * batch].reshape(
          steps, batch))[0], None

    (params, state), _ = jax.lax.scan(epoch, (params, state),
                                      jnp.arange(config.epochs))
    if optimizer in _PROXIMAL:
      final = optim.sparse_params(state)
    else:
      # Only the penalised kernels are pruned; biases stay as trained.
      final = {name: {**layer, 'kernel': jnp.where(
          jnp.abs(layer['kernel']) < config.zero_threshold, 0,
          layer['kernel'])} for name, layer in params.items()}
    return structure_metrics(final, model, x_val, y_val)

  return train


def run_grid(config, workdir=None):
  """Trains every run of the config; returns (rows, timings)."""
  runs = validate(config)
  splits = digits.digits_splits(
      config.split_seed, test_fraction=0.0,
      train_portion=1.0 - config.val_fraction, flat=True, normalize=False)
  (x_train, y_train), (x_val, y_val) = splits['train'], splits['val']
  model = MLP(tuple(config.hidden) + (digits.NUM_CLASSES,))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x_train[:1])['params']
  groups = optim.row_groups(shapes)
  lams = lambdas(config)
  seeds = np.arange(config.num_seeds) + config.seed
  rows, timings = [], {}
  for optimizer in OPTIMIZERS:
    penalties = [r.penalty for r in runs if r.optimizer == optimizer]
    if not penalties:
      continue
    # Lanes: every (penalty, λ, seed) of this optimizer, one vmapped program.
    grid = [(p, lam, s) for p in penalties for lam in lams for s in seeds]
    keys = jax.vmap(jax.random.key)(jnp.asarray([s for *_, s in grid]))
    lam_arr = jnp.asarray([lam for _, lam, _ in grid], jnp.float32)
    ratio_arr = jnp.asarray([_penalty_ratio(p, config) for p, *_ in grid],
                            jnp.float32)
    train = make_train_fn(optimizer, config, model, groups, len(x_train))
    batched = jax.jit(jax.vmap(train, in_axes=(0, 0, 0) + (None,) * 4))
    args = (keys, lam_arr, ratio_arr, x_train, y_train, x_val, y_val)
    t0 = time.perf_counter()
    compiled = batched.lower(*args).compile()
    t1 = time.perf_counter()
    metrics = jax.device_get(compiled(*args))
    t2 = time.perf_counter()
    timings[optimizer] = {'lanes': len(grid), 'compile_s': t1 - t0,
                          'run_s': t2 - t1}
    logging.info('%s: %d runs, compile %.1f s, train %.1f s', optimizer,
                 len(grid), t1 - t0, t2 - t1)
    for i, (penalty, lam, seed) in enumerate(grid):
      rows.append({'optimizer': optimizer, 'penalty': penalty,
                   'lambda': float(lam), 'seed': int(seed),
                   **{m: float(metrics[m][i]) for m in METRICS}})
  return rows, timings


def summarize(rows):
  """Mean and std over seeds per (optimizer, penalty, λ)."""
  keyed = {}
  for r in rows:
    keyed.setdefault((r['optimizer'], r['penalty'], r['lambda']), []).append(r)
  out = []
  for (opt, pen, lam), group in keyed.items():
    entry = {'optimizer': opt, 'penalty': pen, 'lambda': lam,
             'seeds': len(group)}
    for m in METRICS:
      vals = np.array([g[m] for g in group])
      entry[m] = float(vals.mean())
      entry[m + '_std'] = float(vals.std())
    out.append(entry)
  return out


def plot(summary, path):
  """Four panels like the paper's Fig. 3, mean ± std over seeds."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(18, 4.2))
  axes = fig.subplots(1, 4)
  titles = ['valid accuracy', 'selected input features',
            'remaining hidden neurons', 'weight sparsity (%)']
  labels = sorted({(s['optimizer'], s['penalty']) for s in summary})
  for ax, metric, title in zip(axes, METRICS, titles):
    for opt, pen in labels:
      pts = sorted((s for s in summary
                    if (s['optimizer'], s['penalty']) == (opt, pen)),
                   key=lambda s: s['lambda'])
      x = np.log10([p['lambda'] for p in pts])
      y = np.array([p[metric] for p in pts])
      err = np.array([p[metric + '_std'] for p in pts])
      style = '-' if pen == 'sgl' else '--' if pen == 'lasso' else ':'
      ax.errorbar(x, y, yerr=err, fmt=style, marker='o', ms=3, capsize=2,
                  label=f'{opt} + {pen}')
    ax.set_title(title)
    ax.set_xlabel('log10 λ')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def write_outputs(rows, summary, timings, config, workdir):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  payload = {'config': config.to_dict(), 'timings': timings,
             'summary': summary, 'runs': rows}
  tmp = os.path.join(workdir, 'results.json.tmp')
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1)
  os.replace(tmp, os.path.join(workdir, 'results.json'))
  plot(summary, os.path.join(workdir, 'fig3.png'))


def run(config: ml_collections.ConfigDict, workdir: str):
  """Entry point of ``python -m sparsenas_jax.main --config=...``."""
  t0 = time.perf_counter()
  rows, timings = run_grid(config)
  summary = summarize(rows)
  timings['total_s'] = time.perf_counter() - t0
  timings['peak_rss_gb'] = (
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
  write_outputs(rows, summary, timings, config, workdir)
  for s in sorted(summary, key=lambda s: (s['optimizer'], s['penalty'],
                                          s['lambda'])):
    logging.info(
        '%-9s %-11s λ=%.2e  acc %.3f  features %4.1f  neurons %4.1f  '
        'sparsity %5.1f%%', s['optimizer'], s['penalty'], s['lambda'],
        s['val_accuracy'], s['features'], s['neurons'], s['sparsity_pct'])
  logging.info('wrote %s/results.{csv,json} and fig3.png in %.1f s', workdir,
               timings['total_s'])
  return summary
