"""Train a derived architecture from scratch (DARTS evaluation setting).

  python -m sparsenas_jax.main --config=configs/cnn_train.py \
      --config.genotype=SEARCH_WORKDIR/genotype.json --workdir=DIR
  python -m sparsenas_jax.main --config=configs/cnn_train.py:digits ...

Variants: ``cifar10`` (default), ``cifar100``, ``imagenet`` (TFDS
``imagenet2012``, which needs a manual download) and ``digits`` (embedded,
a tiny network that trains in minutes on a CPU). ``genotype`` is a path to a
``genotype.json`` or a registered name (``darts_v2``: DARTS's second-order
cell, for comparison).
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'cnn_train'
  c.genotype = 'darts_v2'     # genotype.json path or registered name
  c.scale_by_arch_weights = False  # multiply kept ops by searched weights
  # Data: digits | cifar10 | cifar100 | imagenet2012.
  c.dataset = 'cifar10'
  c.data_dir = ''             # TFDS data_dir; '' = TFDS's default
  c.crop_padding = 4          # random crop with this zero padding
  c.flip = True
  c.cutout = 16               # cutout square side; 0 = off
  c.color_jitter = 0.0        # ImageNet: brightness/contrast/saturation
  c.seed = 0
  # Network (DARTS CIFAR evaluation): C, cells, auxiliary head, drop path.
  c.init_channels = 36
  c.layers = 20
  c.auxiliary_weight = 0.4    # 0 = no auxiliary head
  c.drop_path_prob = 0.2      # ramped linearly from 0 over the epochs
  # Training: SGD, momentum, weight decay, clipping, per-epoch schedule.
  c.epochs = 600
  c.batch_size = 96
  c.learning_rate = 0.025
  c.learning_rate_min = 0.0
  c.lr_schedule = 'cosine'    # cosine | exponential (lr * lr_decay**epoch)
  c.lr_decay = 0.97
  c.momentum = 0.9
  c.weight_decay = 3e-4
  c.grad_clip = 5.0
  c.label_smoothing = 0.0
  # Runtime.
  c.eval_every_epochs = 10
  c.eval_limit = 0            # evaluate on the first N test images; 0 = all
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
  if arg in (None, '', 'cifar10'):
    pass
  elif arg == 'cifar100':
    c.dataset = 'cifar100'
  elif arg == 'imagenet':
    c.dataset = 'imagenet2012'
    c.init_channels = 48
    c.layers = 14
    c.epochs = 250
    c.batch_size = 128
    c.learning_rate = 0.1
    c.lr_schedule = 'exponential'
    c.weight_decay = 3e-5
    c.label_smoothing = 0.1
    c.drop_path_prob = 0.0    # DARTS's ImageNet default
    c.cutout = 0
    c.crop_padding = 0
    c.color_jitter = 0.4
    c.eval_every_epochs = 1
  elif arg == 'digits':
    c.dataset = 'digits'
    c.crop_padding = 1
    c.flip = False            # digits are not mirror-symmetric
    c.cutout = 3
    c.init_channels = 8
    c.layers = 3
    c.drop_path_prob = 0.1
    c.epochs = 15
    c.batch_size = 64
    c.learning_rate = 0.05
    c.eval_every_epochs = 5
    c.cpu_fast_compile = True
  else:
    raise ValueError(f'unknown cnn_train variant {arg!r}; use cifar10, '
                     'cifar100, imagenet or digits.')
  return c
