"""The DIGITS pruning ablation (Wu et al. 2021, Fig. 3).

  python -m sparsenas_jax.main --config=configs/digits_prune.py --workdir=DIR
  python -m sparsenas_jax.main --config=configs/digits_prune.py:quick ...

Variants: default (the paper's grid), ``wide`` (λ up to 1e-2), ``quick`` (a
smoke run in seconds).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'digits_prune'
  # Comma-separated optimizer:penalty pairs. Optimizers: sgd, adam (penalty
  # in the loss, subgradient), hapg, adam_hapg (proximal). Penalties: lasso,
  # group_lasso, sgl.
  c.runs = ('sgd:sgl,adam:sgl,hapg:lasso,hapg:group_lasso,hapg:sgl,'
            'adam_hapg:lasso,adam_hapg:group_lasso,adam_hapg:sgl')
  # λ grid: num_lambdas values log-spaced from 10^min to 10^max (paper:
  # 1e-5 to 10^-3.7).
  c.log10_lambda_min = -5.0
  c.log10_lambda_max = -3.7
  c.num_lambdas = 8
  c.l1_ratio = 0.5            # α of the sgl penalty
  c.hidden = (40, 20)         # MLP 64-40-20-10
  c.num_seeds = 3             # seeds seed, seed+1, ...: init and batch order
  c.seed = 0
  c.split_seed = 0            # the train/val split, shared by all runs
  c.val_fraction = 0.3        # stratified hold-out for validation accuracy
  c.epochs = 100
  c.batch_size = 64
  # HAPG's momentum u_t -> 1 amplifies the step about 1/(1 - u) times: at
  # lr 0.1 it diverged here, so the proximal optimizers take smaller rates.
  c.learning_rates = ml_collections.ConfigDict(
      {'sgd': 0.1, 'adam': 1e-3, 'hapg': 0.01, 'adam_hapg': 1e-4})
  c.adam_b1 = 0.5             # adam_hapg's β₁ (see optim.adam_hapg)
  # SGD/Adam never reach exact zeros: |w| below this counts as zero, and the
  # accuracy is measured with those weights zeroed.
  c.zero_threshold = 1e-3
  if arg == 'wide':
    # The paper's λ range gives little sparsity with a mean cross-entropy
    # loss; this grid continues it to where every network is pruned away.
    c.log10_lambda_max = -2.0
    c.num_lambdas = 8
  elif arg == 'quick':
    c.num_lambdas = 2
    c.num_seeds = 1
    c.epochs = 5
  elif arg not in (None, ''):
    raise ValueError(f'unknown digits_prune variant {arg!r}; use "wide", '
                     '"quick" or nothing.')
  return c
