"""SparseNAS recurrent cell search on Penn Treebank (Wu et al. 2021, Table 3).

DARTS's recurrent search space (``models.rnn.RNNSearchCell``: 8 nodes, each
fed by every earlier state through highways with tanh, relu, sigmoid or
identity) with linear mixing weights A, one SGL group per node, and DARTS's
``rnn/train_search.py`` + ``rnn/architect.py`` step: on each training
window, first A from the bi-level hypergradient on a validation window
(AdamHAPG by default; the unrolled weight step clipped, weight-decayed and
with the learning rate scaled by the window's length, as the real one), then
the weights by SGD on the training window (NLL + TAR, gradient clipping).
Two hidden states are carried across steps, one per stream (training and
validation), reset at each epoch's start, as DARTS does. ``runtime.loop``
runs the step; at the end the mixed-path recurrent genotype is derived from
the exactly sparse prox point (``genotype.json``, ``genotype.png``,
``architecture.npz``, ``search_results.json``).

BPTT windows have one shape, ``[batch, bptt + max_seq_len_delta]``, with a
mask: DARTS's lengths (35 w.p. 0.95 else 17.5, then N(·, 5), at least 5, at
most bptt + 20) are drawn per step from a generator seeded by (seed, epoch)
(``data.ptb.train_windows``), and the step reads the length from the mask.
A validation window starts where the training window does (modulo the
validation stream) and has DARTS's length bptt, shorter at the stream's end.

The job is a library: ``load_data``, ``make_model``, ``create_state``,
``make_search_step`` and ``run(config, workdir)``.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sparsenas_jax import bilevel
from sparsenas_jax import optim
from sparsenas_jax import rnn_genotype
from sparsenas_jax import search_space
from sparsenas_jax import viz
from sparsenas_jax.data import ptb
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.experiments import common
from sparsenas_jax.experiments import language_model as lm
from sparsenas_jax.models import rnn
from sparsenas_jax.models.supernet import count_params
from sparsenas_jax.runtime import compilation
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import loop
from sparsenas_jax.runtime import parallel



class RNNSearchState(NamedTuple):
  """Everything a step changes; checkpointed whole."""
  step: jax.Array  # int32 scalar, steps taken
  weights: Any  # network weights w (Flax params)
  arch: Any  # architecture weights A, the extrapolated point of (Adam)HAPG
  weight_opt_state: Any
  arch_opt_state: Any
  hidden: jax.Array  # float32[batch, nhid], the training stream's state
  hidden_val: jax.Array  # float32[batch, nhid], the validation stream's


# ---------------------------------------------------------------------------
# Config and data.
# ---------------------------------------------------------------------------


def parse_ops(ops: str) -> tuple[str, ...]:
  try:
    return search_space.check_rnn_ops(
        [s.strip() for s in ops.split(',') if s.strip()])
  except ValueError as e:
    raise ConfigError(f'config.ops: {e}') from None


def validate(config) -> tuple[str, ...]:
  """Checks the config; returns the op names."""
  lm.check_common(config)
  common.check_search_config(config)
  if config.max_seq_len_delta < 0:
    raise ConfigError('config.max_seq_len_delta must be >= 0.')
  return parse_ops(config.ops)


class SearchData(NamedTuple):
  vocab: tuple[str, ...]
  train: np.ndarray  # [rows, batch] int32, the weights' stream
  val: np.ndarray  # [rows, batch], the architecture's stream
  val_eval: np.ndarray  # [rows, eval_batch]: the validation perplexity


def load_data(config) -> SearchData:
  """The corpus batchified as DARTS's search: the training split for w, the
  validation split for A (and, in eval columns, for the perplexity)."""
  corpus = lm.load_corpus(config)
  return SearchData(corpus.vocab, ptb.batchify(corpus.train, config.batch_size),
                    ptb.batchify(corpus.valid, config.batch_size),
                    ptb.batchify(corpus.valid, config.eval_batch_size))


# ---------------------------------------------------------------------------
# Model, state, step.
# ---------------------------------------------------------------------------


def make_model(config, ntoken: int, ops) -> rnn.RNNModel:
  return rnn.RNNModel(
      ntoken=ntoken, nhid=config.nhid,
      cell=rnn.RNNSearchCell(nhid=config.nhid, nodes=config.nodes, ops=ops,
                             node_batch_norm=config.node_batch_norm),
      dropout=config.dropout, dropouth=config.dropouth,
      dropoutx=config.dropoutx, dropouti=config.dropouti,
      dropoute=config.dropoute, unroll=config.unroll,
      remat=config.remat)


def init_arch(rng: jax.Array, *, nodes: int, num_ops: int,
              scale: float) -> dict[str, jax.Array]:
  """A of node i (i + 1 predecessors) = scale / (i + 1) + 1e-3·N(0, 1).

  With ``scale = 1 / num_ops`` every node starts as the mean over its
  predecessors of their ops' mean highway: a convex combination of gated
  interpolations, as a DARTS node is before its batch norm up to the factor
  i + 1 that the batch norm removes. Without a batch norm after the nodes
  (``config.node_batch_norm``), weights that summed over predecessors would
  grow the state from node to node and from step to step.
  """
  shapes = search_space.rnn_arch_shapes(nodes, num_ops)
  keys = jax.random.split(rng, len(shapes))
  return {name: scale / shape[0] + 1e-3 * jax.random.normal(
      k, shape, jnp.float32) for k, (name, shape) in zip(keys,
                                                         shapes.items())}


def make_weight_optimizer(config) -> optax.GradientTransformation:
  """DARTS's recurrent weight step without its learning rate: clip the
  global norm, add L2 weight decay (the step scales by −η itself, η varying
  with the window's length)."""
  return optax.chain(optim.clip_by_global_norm(config.grad_clip),
                     optax.add_decayed_weights(config.weight_decay))


def create_state(config, model, ops, weight_opt, arch_opt_fn):
  """The initial state and the architecture optimizer."""
  arch = init_arch(jax.random.key(config.seed), nodes=config.nodes,
                   num_ops=len(ops),
                   scale=config.arch_init_scale or 1.0 / len(ops))
  weights = rnn.init_rnn_variables(model, config.seed, arch=arch)['params']
  arch_opt = arch_opt_fn(arch)
  hidden = jnp.zeros((config.batch_size, config.nhid), jnp.float32)
  return RNNSearchState(jnp.zeros([], jnp.int32), weights, arch,
                        weight_opt.init(weights), arch_opt.init(arch), hidden,
                        hidden), arch_opt


def _forward(model, weights, arch, batch, *, train: bool):
  """(logits [T, B, V], new hidden, raw outputs) of a batch-major window
  with its ``hidden`` and dropout ``key``."""
  return model.apply({'params': weights}, batch['input'].T, batch['hidden'],
                     batch['mask'][0], arch, train=train,
                     rngs={'dropout': batch['key']})


def make_search_step(config, model, weight_opt, arch_opt, steps_per_epoch,
                     mesh):
  """The search step: ``step(state, batch, key) -> (state, metrics)``.

  ``batch = {'train': w, 'val': w}``, each ``w = {'input', 'target',
  'mask'}`` of shape ``[batch, max_len]``. A pure function, meant to be
  jitted whole. Its new state keeps the replicated sharding of its input.
  """
  replicated = parallel.replicated(mesh)

  def nll(weights, arch, batch):
    logits, _, _ = _forward(model, weights, arch, batch, train=True)
    return lm.masked_mean_nll(logits, batch)

  def val_nll(weights, arch, batch):
    logits, hidden, _ = _forward(model, weights, arch, batch, train=True)
    return lm.masked_mean_nll(logits, batch), hidden

  def grads(loss, has_aux):
    return lambda w, a, b: (lambda r: (r[0], *r[1]))(jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=has_aux)(w, a, b))

  def arch_grads(loss, has_aux):
    return lambda w, a, b: jax.value_and_grad(
        lambda a: loss(w, a, b), has_aux=has_aux)(a)

  derivatives = bilevel.Derivatives(
      grads(nll, False), grads(val_nll, True),
      bilevel.mixed_product(nll, 'forward_over_reverse'),
      train_arch_grads=arch_grads(nll, False),
      val_arch_grads=arch_grads(val_nll, True))

  def weight_loss(weights, arch, batch):
    logits, hidden, outputs = _forward(model, weights, arch, batch,
                                       train=True)
    loss = lm.masked_mean_nll(logits, batch)
    tar = lm.temporal_activation_penalty(outputs, batch, config.tar_beta)
    return loss + tar, (loss, hidden)

  def step(state: RNNSearchState, batch, key):
    # DARTS starts every epoch from zero hidden states.
    fresh = state.step % steps_per_epoch == 0
    hidden = jnp.where(fresh, 0.0, state.hidden)
    hidden_val = jnp.where(fresh, 0.0, state.hidden_val)
    train_key, val_key, weight_key = jax.random.split(key, 3)
    train = {**batch['train'], 'hidden': hidden, 'key': train_key}
    val = {**batch['val'], 'hidden': hidden_val, 'key': val_key}
    # DARTS scales the learning rate by the window's length.
    eta = config.learning_rate * jnp.sum(batch['train']['mask'][0]) / (
        config.bptt)
    arch_grad, (arch_val_loss, hidden_val) = bilevel.split_hypergradient(
        derivatives, state.weights, state.arch, train, val, eta=eta,
        mode=config.hypergradient, weight_decay=config.weight_decay,
        grad_clip=config.grad_clip)
    updates, arch_opt_state = arch_opt.update(arch_grad, state.arch_opt_state,
                                              state.arch)
    arch = optax.apply_updates(state.arch, updates)
    (_, (loss, hidden)), g_w = jax.value_and_grad(weight_loss, has_aux=True)(
        state.weights, arch, {**train, 'key': weight_key})
    updates, weight_opt_state = weight_opt.update(
        g_w, state.weight_opt_state, state.weights)
    weights = jax.tree.map(lambda w, u: w - eta * u, state.weights, updates)
    new_state = RNNSearchState(state.step + 1, weights, arch,
                               weight_opt_state, arch_opt_state,
                               jax.lax.stop_gradient(hidden),
                               jax.lax.stop_gradient(hidden_val))
    metrics = {'train_loss': loss, 'arch_val_loss': arch_val_loss,
               divergence.KEY: divergence.finite_flags(
                   train_loss=loss, arch_val_loss=arch_val_loss,
                   weight_gradient=g_w, arch_gradient=arch_grad,
                   weights=weights, arch=arch)}
    return jax.lax.with_sharding_constraint(new_state, replicated), metrics

  return step


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------

DIVERGENCE_HINT = 'config.learning_rate or config.arch_learning_rate'
LOG_KEYS = (('train_loss', '.3f'), ('arch_val_loss', '.3f'),
            ('val_perplexity', '.1f'), ('lambda', '.3f'),
            ('ops_nonzero', '.0f'), ('nodes_live', '.0f'))


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs (or resumes) a recurrent search; returns the final summary."""
  ops = validate(config)
  mesh = loop.start(config, workdir)
  search_data = load_data(config)
  lm.check_vocabulary(workdir, search_data.vocab)
  ntoken = len(search_data.vocab)
  rows = len(search_data.train)
  steps_per_epoch = ptb.steps_per_epoch(rows, config.bptt)
  total_steps = steps_per_epoch * config.epochs
  max_len = config.bptt + config.max_seq_len_delta
  store = compilation.job_store(config, workdir, ntoken)
  model = make_model(config, ntoken, ops)
  weight_opt = make_weight_optimizer(config)
  arch_opt = None

  def init_state():
    nonlocal arch_opt
    state, arch_opt = create_state(
        config, model, ops, weight_opt,
        lambda a: common.make_arch_optimizer(config, a, steps_per_epoch))
    logging.info('recurrent supernet: %d weights, %d architecture weights, '
                 '%d words; %d steps/epoch', count_params(state.weights),
                 count_params(state.arch), ntoken, steps_per_epoch)
    return state

  def compile_step(state, batch, key):
    step_fn = make_search_step(config, model, weight_opt, arch_opt,
                               steps_per_epoch, mesh)
    compiled, _ = compilation.compile_step(
        step_fn, (state, batch, key), cpu_fast_compile=config.cpu_fast_compile,
        donate=(0,), store=store, name='search_step')
    return compiled

  def batch_at(step):
    epoch, index = divmod(step, steps_per_epoch)
    starts, lengths = lm.epoch_windows(rows, steps_per_epoch, config.bptt,
                                       max_len, config.seed, epoch)
    start, length = int(starts[index]), int(lengths[index])
    val_start = start % (len(search_data.val) - 1)
    return {
        'train': lm.batch_major(ptb.window(search_data.train, start, length,
                                           max_len)),
        'val': lm.batch_major(ptb.window(search_data.val, val_start,
                                         config.bptt, max_len))}

  perplexity = lm.make_perplexity(
      lambda w, a, tokens, hidden, mask: model.apply(
          {'params': w}, tokens, hidden, mask, a, train=False)[:2])
  val_windows = lm.eval_windows(search_data.val_eval, config.bptt)

  def sparse_arch(state):
    return common.architecture(config, state.arch, state.arch_opt_state)

  def evaluate(state):
    out = lm.perplexity_of(perplexity, state.weights, sparse_arch(state),
                           val_windows, config.nhid)
    return {'val_loss': out['loss'], 'val_perplexity': out['perplexity']}

  def epoch_scalars(state, step):
    counts = rnn_genotype.recurrent_sparsity_counts(
        parallel.to_host(sparse_arch(state)))
    return {'lambda': float(common.lambda_schedule(
        config, steps_per_epoch)(step - 1)),
            'ops_nonzero': counts['ops_nonzero'],
            'nodes_live': counts['nodes_live']}

  job = loop.Job(
      init_state=init_state, compile=compile_step, batch_at=batch_at,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      seed=config.seed, divergence_hint=DIVERGENCE_HINT, evaluate=evaluate,
      eval_every_epochs=config.eval_every_epochs, epoch_scalars=epoch_scalars,
      log_keys=LOG_KEYS)
  state, summary = loop.run(job, workdir, mesh)
  summary['programs_loaded'] = store.loaded
  return _finish(config, sparse_arch(state), ops, workdir, summary)


def _finish(config, arch, ops, workdir, summary):
  """Derives, saves and pictures the genotype; writes search_results.json
  (process 0)."""
  arch = parallel.to_host(arch)
  if jax.process_index() != 0:
    return summary
  np.savez(os.path.join(workdir, 'architecture.npz'), **arch)
  counts = rnn_genotype.recurrent_sparsity_counts(arch)
  try:
    genotype = rnn_genotype.derive_recurrent_genotype(arch, ops)
  except ValueError:  # every node removed
    raise ConfigError(
        'the search removed every node of the recurrent cell (λ grew too '
        'large for this run); lower config.lambda_step and search again in a '
        'new --workdir.') from None
  rnn_genotype.save_recurrent_genotype(
      genotype, os.path.join(workdir, 'genotype.json'))
  viz.plot_recurrent_genotype(genotype, os.path.join(workdir, 'genotype.png'))
  summary = {**summary, 'counts': counts,
             'multi_input_nodes': sum(len(n.inputs) > 1
                                      for n in genotype.nodes),
             'params_at_eval_size': rnn_genotype.recurrent_genotype_params(
                 genotype, ntoken=10000, nhid=850),
             'peak_rss_gb': resource.getrusage(
                 resource.RUSAGE_SELF).ru_maxrss / 2**20}
  with open(os.path.join(workdir, 'search_results.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  logging.info('genotype: %s', genotype.to_json())
  logging.info('kept %d of %d ops and %d of %d nodes (%d with several '
               'inputs)', counts['ops_nonzero'], counts['ops_total'],
               counts['nodes_live'], counts['nodes_total'],
               summary['multi_input_nodes'])
  return summary
