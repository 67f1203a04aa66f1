"""The paper's sparsity studies (Fig. 4, Table 4) on DIGITS; one JSON.

  python benchmarks/sparsity_studies.py --workdir=/tmp/studies
  python benchmarks/sparsity_studies.py --workdir=/tmp/studies --seeds=0,1,2 \
      --lambda_steps=0.025,0.05,0.075 --l1_ratios=0.3,0.5,0.7 \
      --optimizers=adam_hapg,hapg,adam --retrain=l1_ratios --retrain_seeds=0

Runs ``cnn_sweep`` jobs of ``configs/cnn_search.py:digits_sweep`` with the
``--base`` overrides (each one vmapped program over its grid; a rerun
resumes or reuses them):

* ``lambda_steps/``: seeds × λ steps: Fig. 4, supernet accuracy during the
  search, with ops kept and live nodes per epoch;
* ``l1_ratios/``: seeds × α: Table 4's sparsity;
* ``optimizer_<name>/``: seeds, per architecture optimizer (AdamHAPG, HAPG,
  DARTS's Adam without sparsity).

An empty ``--lambda_steps`` or ``--l1_ratios`` skips that grid. Then trains
the derived cells of the ``--retrain`` grids' members with a seed in
``--retrain_seeds`` from scratch (``configs/cnn_train.py:digits``, under
``<grid>_train/member_<k>/``), and DARTS V2 in the same setting, and prints
one JSON object: per grid point the mean ± std over seeds of the final
supernet test accuracy, ops kept and live nodes, per retrained cell its
test error and parameters. ``--figure`` (default
``docs/figures/digits_lambda_steps.png``) gets the Fig. 4 curves, mean ±
std over seeds per λ step. Never part of the tests.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(args, workdir, log):
  """Runs ``sparsenas_jax.main`` with ``args`` into ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  with open(log, 'w') as f:
    proc = subprocess.run(
        [sys.executable, '-m', 'sparsenas_jax.main', f'--workdir={workdir}',
         *args], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    sys.exit(f'{" ".join(args)} failed (exit {proc.returncode}); see {log}')


def _flags(overrides: str):
  """'field=value,field=value' as --config.field=value flags."""
  return [f'--config.{kv.strip()}' for kv in overrides.split(',')
          if kv.strip()]


def sweep(workdir, name, seeds, base, *flags):
  """The sweep over seeds of the variant with the ``base`` overrides and
  ``flags`` (``--config.sweep.*`` lists among them); its
  ``sweep_results.json`` and folder."""
  out = os.path.join(workdir, name)
  results = os.path.join(out, 'sweep_results.json')
  if not os.path.exists(results):
    _main(['--config=configs/cnn_search.py:digits_sweep',
           f'--config.sweep.seed={seeds}', *_flags(base), *flags],
          out, os.path.join(workdir, f'{name}.log'))
  with open(results) as f:
    return json.load(f), out


def train(workdir, genotype, log):
  """``cnn_train.py:digits`` of ``genotype``; its ``results.json``."""
  results = os.path.join(workdir, 'results.json')
  if not os.path.exists(results):
    _main(['--config=configs/cnn_train.py:digits',
           f'--config.genotype={genotype}'], workdir, log)
  with open(results) as f:
    return json.load(f)


def _member_curves(out, k):
  with open(os.path.join(out, f'member_{k}', 'search_results.json')) as f:
    return json.load(f)['curves']


def figure(results, out, path):
  """Fig. 4: per λ step, mean ± std over seeds of the curves per epoch."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  panels = (('test_accuracy', 'supernet test accuracy'),
            ('ops_nonzero', 'non-zero ops (of both cells)'),
            ('nodes_live', 'live nodes (of both cells)'))
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for group in results['over_seeds']:
    step = group['settings']['lambda_step']
    members = [k for k, m in enumerate(results['members'])
               if m['settings']['lambda_step'] == step]
    curves = [_member_curves(out, k) for k in members]
    for ax, (key, title) in zip(axes, panels):
      values = np.array([c[key] for c in curves], dtype=float)
      epochs = np.arange(1, values.shape[1] + 1)
      mean, std = values.mean(0), values.std(0)
      ax.plot(epochs, mean, label=f'λ step {step:g}')
      ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
      ax.set_title(title)
      ax.set_xlabel('epoch')
  totals = results['members'][0]['counts']
  axes[1].set_ylim(0, totals['ops_total'] + 1)
  axes[2].set_ylim(0, totals['nodes_total'] + 0.2)
  axes[0].legend()
  fig.suptitle(f'DIGITS search, seeds {group["seeds"]}: mean ± std')
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, dpi=110)


def _table(results):
  return [{'settings': g['settings'], 'seeds': g['seeds'],
           **{k: g[k] for k in ('test_accuracy', 'ops_kept', 'nodes_live')}}
          for g in results['over_seeds']]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--base', default='',
                      help='config overrides of every search, '
                      "'field=value,field=value'")
  parser.add_argument('--lambda_steps', default='0.025,0.05,0.075',
                      help="the λ-step grid ('' = none)")
  parser.add_argument('--l1_ratios', default='0.3,0.5,0.7',
                      help="the α grid ('' = none)")
  parser.add_argument('--optimizers', default='adam_hapg,hapg,adam',
                      help="architecture optimizers, a grid of seeds each "
                      "('' = none)")
  parser.add_argument('--retrain', default='l1_ratios',
                      help='grids whose members are trained from scratch '
                      '(lambda_steps, l1_ratios, optimizer_<name>)')
  parser.add_argument('--retrain_seeds', default='0')
  parser.add_argument('--figure', default=os.path.join(
      REPO, 'docs', 'figures', 'digits_lambda_steps.png'))
  args = parser.parse_args()

  report, grids = {}, {}
  if args.lambda_steps:
    lam, grids['lambda_steps'] = sweep(
        args.workdir, 'lambda_steps', args.seeds, args.base,
        f'--config.sweep.lambda_step={args.lambda_steps}')
    figure(lam, grids['lambda_steps'], args.figure)
    report.update(lambda_steps=_table(lam), lambda_steps_wall_s=lam.get(
        'wall_s'), figure=args.figure)
  if args.l1_ratios:
    alpha, grids['l1_ratios'] = sweep(
        args.workdir, 'l1_ratios', args.seeds, args.base,
        f'--config.sweep.l1_ratio={args.l1_ratios}')
    report.update(l1_ratios=_table(alpha),
                  l1_ratios_wall_s=alpha.get('wall_s'))
  # The optimizer changes the state's structure: one grid of seeds each.
  report['optimizers'] = {}
  for name in filter(None, args.optimizers.split(',')):
    r, grids[f'optimizer_{name}'] = sweep(
        args.workdir, f'optimizer_{name}', args.seeds, args.base,
        f'--config.arch_optimizer={name}')
    report['optimizers'][name] = {**_table(r)[0], 'wall_s': r.get('wall_s')}
  retrain_seeds = {int(s) for s in args.retrain_seeds.split(',') if s}
  report['retrained'] = []
  for grid in filter(None, args.retrain.split(',')):
    with open(os.path.join(grids[grid], 'sweep_results.json')) as f:
      members = json.load(f)['members']
    for k, member in enumerate(members):
      if member['settings']['seed'] not in retrain_seeds:
        continue
      if member.get('empty_cells'):  # no genotype to train
        report['retrained'].append({
            'grid': grid, 'settings': member['settings'],
            'counts': member['counts'],
            'empty_cells': member['empty_cells']})
        continue
      name = f'{grid}_train/member_{k}'
      r = train(os.path.join(args.workdir, name),
                os.path.join(grids[grid], f'member_{k}', 'genotype.json'),
                os.path.join(args.workdir, f'{grid}_train_{k}.log'))
      report['retrained'].append({
          'grid': grid, 'settings': member['settings'],
          'counts': member['counts'],
          'search_test_accuracy': member['test_accuracy'],
          'test_error': r['test_error'], 'params': r.get('params')})
  darts = train(os.path.join(args.workdir, 'darts_v2_train'), 'darts_v2',
                os.path.join(args.workdir, 'darts_v2_train.log'))
  report['darts_v2'] = {'test_error': darts['test_error'],
                        'params': darts.get('params')}
  print(json.dumps(report, indent=1))


if __name__ == '__main__':
  main()
