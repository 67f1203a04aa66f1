"""The DIGITS pruning ablation: metrics, a tiny grid and its outputs."""

import csv
import json

import jax.numpy as jnp
import numpy as np

from sparsenas_jax.experiments import digits_prune
from configs import digits_prune as digits_prune_config


def test_structure_metrics_count_what_was_pruned():
  model = digits_prune.MLP((3, 2, 2))
  rng = np.random.default_rng(0)
  params = {f'dense_{i}': {'kernel': rng.normal(size=s).astype(np.float32),
                           'bias': np.zeros(s[1], np.float32)}
            for i, s in enumerate([(4, 3), (3, 2), (2, 2)])}
  params['dense_0']['kernel'][1] = 0       # input feature 1 dropped
  params['dense_1']['kernel'][2] = 0       # hidden neuron 2 of layer 1 dropped
  params['dense_2']['kernel'][0, 1] = 0    # one weight, not a whole neuron
  x = rng.normal(size=(5, 4)).astype(np.float32)
  y = np.argmax(np.maximum(np.maximum(x @ params['dense_0']['kernel'], 0) @
                           params['dense_1']['kernel'], 0) @
                params['dense_2']['kernel'], -1)
  m = digits_prune.structure_metrics(
      {k: {n: jnp.asarray(v) for n, v in d.items()} for k, d in params.items()},
      model, jnp.asarray(x), jnp.asarray(y))
  assert int(m['features']) == 3
  assert int(m['neurons']) == 2 + 2
  np.testing.assert_allclose(float(m['sparsity_pct']), 100 * 6 / 22)
  assert float(m['val_accuracy']) == 1.0


def test_tiny_grid_runs_and_writes_table_and_figure(tmp_path):
  config = digits_prune_config.get_config('quick')
  config.runs = 'sgd:sgl,hapg:sgl,hapg:lasso'
  config.log10_lambda_min, config.log10_lambda_max = -3.0, -1.5
  config.epochs = 12
  rows, timings = digits_prune.run_grid(config)
  assert set(timings) == {'sgd', 'hapg'}  # one compiled program each
  assert len(rows) == 3 * 2
  for r in rows:
    assert 0 <= r['val_accuracy'] <= 1 and 0 <= r['sparsity_pct'] <= 100
    assert 0 <= r['features'] <= 64 and 0 <= r['neurons'] <= 60
  strong = [r for r in rows if r['optimizer'] == 'hapg'
            and r['lambda'] > 0.01]
  # λ = 10^-1.5 drives HAPG to exact zeros, and more so than λ = 1e-3.
  weak = [r for r in rows if r['optimizer'] == 'hapg' and r['lambda'] < 0.01]
  assert all(s['sparsity_pct'] > w['sparsity_pct'] for s, w in
             zip(sorted(strong, key=lambda r: r['penalty']),
                 sorted(weak, key=lambda r: r['penalty'])))
  assert min(r['val_accuracy'] for r in weak) > 0.5
  summary = digits_prune.summarize(rows)
  digits_prune.write_outputs(rows, summary, timings, config, str(tmp_path))
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  assert len(table) == len(rows) and 'sparsity_pct' in table[0]
  payload = json.loads((tmp_path / 'results.json').read_text())
  assert len(payload['summary']) == 6 and payload['timings']['hapg']['lanes']
  assert (tmp_path / 'fig3.png').stat().st_size > 10000
