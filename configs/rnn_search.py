"""SparseNAS recurrent cell search (Wu et al. 2021, Table 3; DARTS's PTB
search setup).

  python -m sparsenas_jax.main --config=configs/rnn_search.py --workdir=DIR \
      --config.data_dir=PTB_DIR
  python -m sparsenas_jax.main --config=configs/rnn_search.py:tiny ...

Variants: default = DARTS's Penn Treebank search (the standard ptb.*.txt
files in ``data_dir``; see README); ``tiny`` = an embedded English corpus
(CPython's pydoc topics) with a small network, a few minutes on a CPU.
"""

import ml_collections

from sparsenas_jax import search_space


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.job = 'rnn_search'
  # Data: ptb (files in data_dir) | tiny (embedded). The training split
  # trains w, the validation split A (DARTS).
  c.dataset = 'ptb'
  c.data_dir = ''
  c.seed = 0
  # Network (DARTS search: emsize = nhid = 300) and cell.
  c.nhid = 300
  c.nodes = search_space.RNN_NODES
  c.ops = ','.join(search_space.RNN_OPS)
  # DARTS's batch norm after every node makes the loss blind to the scale
  # of the node's whole SGL group: no loss resists the group lasso, and the
  # gradient grows as 1/‖A‖ (so do Adam's steps shrink), so no weight
  # reaches an exact zero below a critical λ (README). Off: A starts at
  # 1 / (len(ops) · predecessors), each node a mean of highways.
  c.node_batch_norm = False
  c.dropout = 0.75            # output (locked)
  c.dropouth = 0.25           # hidden-to-hidden (variational)
  c.dropoutx = 0.75           # input-to-hidden (variational)
  c.dropouti = 0.2            # embedding output (locked)
  c.dropoute = 0.0            # embedding rows
  c.tar_beta = 1e-3           # temporal activation regularisation
  # Search.
  c.epochs = 50
  c.batch_size = 256
  c.eval_batch_size = 10
  c.bptt = 35
  c.max_seq_len_delta = 20    # windows are at most bptt + this long
  c.hypergradient = 'exact'   # exact | finite_difference | first_order
  # Weights: SGD (lr scaled by the window's length / bptt), clipping, decay.
  c.learning_rate = 20.0
  c.grad_clip = 0.25
  c.weight_decay = 5e-7
  # Architecture: adam_hapg (default; HAPG diverged on PTB in the paper) |
  # hapg | adam (DARTS, no sparsity). λ = lambda_step * epoch, α = l1_ratio.
  c.arch_optimizer = 'adam_hapg'
  c.arch_learning_rate = 3e-3
  c.arch_b1 = 0.5
  c.arch_b2 = 0.999
  # (Adam)HAPG's extrapolation u_t: -1 = (t - 2)/(t + 1) (paper, Eq. 7-8),
  # or a constant in [0, 1) (0: proximal Adam / proximal SGD).
  c.arch_momentum = -1.0
  c.arch_weight_decay = 1e-3  # adam only
  c.arch_init_scale = 0.0     # A's start; 0 = 1 / len(ops)
  c.lambda_step = 0.01
  c.lambda_max = 0.0          # hold λ there once reached; 0 = no cap
  c.l1_ratio = 0.5
  # Runtime.
  c.eval_every_epochs = 1
  c.num_devices = 0           # 0 = every device
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
    c.nhid = 32
    c.nodes = 4
    c.batch_size = 32
    c.bptt = 20
    c.max_seq_len_delta = 10
    c.epochs = 4
    c.dropout = c.dropoutx = 0.3
    c.dropouth = c.dropouti = 0.1
    c.lambda_step = 0.03
  elif arg not in (None, ''):
    raise ValueError(f'unknown rnn_search variant {arg!r}; use "tiny" or '
                     'nothing.')
  return c
