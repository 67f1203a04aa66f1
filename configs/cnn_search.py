"""SparseNAS CNN cell search (Wu et al. 2021, Table 1 search; DARTS setup).

  python -m sparsenas_jax.main --config=configs/cnn_search.py --workdir=DIR
  python -m sparsenas_jax.main --config=configs/cnn_search.py:digits ...

Variants: default = the paper's CIFAR-10 search (TFDS ``cifar10``, which must
be prepared; see README); ``digits`` = scikit-learn's DIGITS, embedded, with
a tiny supernet that searches in a few minutes on a CPU; ``digits_sweep`` =
that search over seeds 0, 1, 2 as one vmapped program (job ``cnn_sweep``).
"""

import ml_collections

from sparsenas_jax import search_space


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'cnn_search'
  # Data: digits | cifar10 | cifar100. The training set is split into a
  # weight-training part (train_portion) and an architecture-validation part.
  c.dataset = 'cifar10'
  c.data_dir = ''             # TFDS data_dir; '' = TFDS's default
  c.train_portion = 0.5
  c.crop_padding = 4          # random crop with this zero padding
  c.flip = True               # random horizontal flip
  c.seed = 0
  c.data_seed = -1            # the split's (DIGITS's test set) seed; -1 = seed
  # Supernet (DARTS search size): C, cells, intermediate nodes, candidate ops
  # (comma-separated; DARTS's list without 'none').
  c.init_channels = 16
  c.layers = 8
  c.nodes = 4
  c.ops = ','.join(search_space.DARTS_OPS)
  # auto: 'scanned' (edge-batched cell, params packed per stage, the
  # stages of the intermediate nodes' edges as one lax.scan) on CPU,
  # 'reference' (one MixedOp per edge) elsewhere; or force one of batched |
  # stacked | scanned | reference. Depthwise convs: models/depthwise.py.
  c.cell_impl = 'auto'
  c.remat = False             # recompute each cell in the backward pass
  c.arch_init_scale = 0.0     # A init mean; 0 = 1/len(ops) (see init_arch)
  # Search.
  c.epochs = 50
  c.batch_size = 64
  c.hypergradient = 'exact'   # exact | finite_difference | first_order
  # Network weights: SGD with momentum, cosine lr, weight decay, clipping.
  c.learning_rate = 0.025
  c.learning_rate_min = 0.001
  c.momentum = 0.9
  c.weight_decay = 3e-4
  c.grad_clip = 5.0
  # Architecture weights: adam_hapg (default) | hapg | adam (DARTS-like, no
  # sparsity). λ = lambda_step * epoch (paper: 0.01), α = l1_ratio (0.5).
  c.arch_optimizer = 'adam_hapg'
  c.arch_learning_rate = 3e-4
  c.arch_b1 = 0.5
  c.arch_b2 = 0.999
  # (Adam)HAPG's extrapolation u_t: -1 = (t - 2)/(t + 1) (paper, Eq. 7-8),
  # or a constant in [0, 1) (0: proximal Adam / proximal SGD).
  c.arch_momentum = -1.0
  c.arch_weight_decay = 1e-3  # adam only
  c.lambda_step = 0.01
  c.lambda_max = 0.0          # hold λ there once reached; 0 = no cap
  c.l1_ratio = 0.5
  # Runtime.
  c.eval_every_epochs = 1
  c.num_devices = 0           # 0 = every local device
  # Multi-host (Cloud TPU pods, multi-node GPU): jax.distributed.initialize()
  # first; every process runs the same command. The three fields below are
  # detected by JAX on Cloud TPU VMs and SLURM; set them elsewhere.
  c.multi_host = False
  c.coordinator_address = ''  # host:port of process 0
  c.num_processes = 0
  c.process_id = -1
  c.compilation_cache_dir = ''  # compiled steps; '' = <workdir>/jax_cache
  # XLA:CPU backend optimisation level 0: compiles ~2-3x faster, but the
  # unoptimised loops run several times slower at full size; worth it
  # only for tiny networks (the digits variant).
  c.cpu_fast_compile = False
  # split: the step's derivatives are separate XLA programs (compile much
  # faster on CPU, less peak memory); fused: the whole step is one program.
  c.step_compilation = 'split'
  # A sweep (--config.job=cnn_sweep): the grid of these comma-separated
  # lists ('' = the field's one value above), run as one vmapped program
  # (experiments/cnn_sweep.py).
  c.sweep = ml_collections.ConfigDict({
      'seed': '', 'arch_init_scale': '', 'learning_rate': '',
      'arch_learning_rate': '', 'lambda_step': '', 'lambda_max': '',
      'l1_ratio': ''})
  if arg in ('digits', 'digits_sweep'):
    c.dataset = 'digits'
    c.crop_padding = 1
    c.flip = False
    c.init_channels = 4
    c.layers = 3
    c.nodes = 4                 # DARTS's cell
    c.epochs = 10
    c.batch_size = 32
    c.learning_rate = 0.05
    c.arch_learning_rate = 3e-3
    # AdamHAPG without the accelerated extrapolation and with a long first
    # moment: zeros that stay zeros at this size; A starting at 0.5 and λ
    # held at 0.3 from the fourth epoch: the group prox removes whole nodes
    # without emptying a cell (docs/sparsity.md).
    c.arch_init_scale = 0.5
    c.arch_momentum = 0.0
    c.arch_b1 = 0.95
    c.lambda_step = 0.1
    c.lambda_max = 0.3
    c.l1_ratio = 0.8
    # Level 1: at 4 nodes the faster steps repay the longer compile.
    c.cpu_fast_compile = False
    if arg == 'digits_sweep':  # the digits search over three seeds
      c.job = 'cnn_sweep'
      c.sweep.seed = '0,1,2'
  elif arg not in (None, ''):
    raise ValueError(f'unknown cnn_search variant {arg!r}; use "digits", '
                     '"digits_sweep" or nothing.')
  return c
