"""Trains a derived recurrent cell from scratch (DARTS's rnn/train.py setup).

  python -m sparsenas_jax.main --config=configs/rnn_train.py --workdir=DIR \
      --config.data_dir=PTB_DIR --config.genotype=SEARCH_DIR/genotype.json
  python -m sparsenas_jax.main --config=configs/rnn_train.py:tiny ...

Variants: default = DARTS's Penn Treebank evaluation (nhid 850; DARTS trains
for up to 8000 epochs); ``tiny`` = the embedded corpus and a small network,
a few minutes on a CPU.
"""

import ml_collections


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'rnn_train'
  c.genotype = 'darts_v2'     # a genotype.json, or darts_v1 | darts_v2
  # A node with several inputs: the mean of their highway terms ('mean') or
  # their sum weighted by the searched weights ('arch').
  c.weighting = 'mean'
  c.dataset = 'ptb'           # ptb (files in data_dir) | tiny (embedded)
  c.data_dir = ''
  c.seed = 1267               # DARTS's
  c.nhid = 850                # = embedding size (tied)
  c.dropout = 0.75
  c.dropouth = 0.25
  c.dropoutx = 0.75
  c.dropouti = 0.2
  c.dropoute = 0.1
  c.tar_beta = 1e-3
  c.epochs = 8000
  c.batch_size = 64
  c.eval_batch_size = 10
  c.test_batch_size = 1
  c.bptt = 35
  c.max_seq_len_delta = 20
  c.learning_rate = 20.0
  c.grad_clip = 0.25
  c.weight_decay = 8e-7
  c.nonmono = 5               # averaged SGD after this many worse epochs
  # Runtime.
  c.num_devices = 0
  c.multi_host = False        # see configs/cnn_search.py
  c.coordinator_address = ''
  c.num_processes = 0
  c.process_id = -1
  c.compilation_cache_dir = ''
  c.cpu_fast_compile = False
  c.unroll = 1                # time steps per scan iteration
  c.remat = 'dots'            # what a time step keeps for the backward:
                              # none | full (recompute) | dots (products)
  if arg == 'tiny':
    c.dataset = 'tiny'
    c.nhid = 64
    c.batch_size = 32
    c.bptt = 20
    c.max_seq_len_delta = 10
    c.epochs = 12
    c.dropout = c.dropoutx = 0.3
    c.dropouth = c.dropouti = 0.1
    c.dropoute = 0.0
    c.nonmono = 2
    c.test_batch_size = 10
  elif arg not in (None, ''):
    raise ValueError(f'unknown rnn_train variant {arg!r}; use "tiny" or '
                     'nothing.')
  return c
