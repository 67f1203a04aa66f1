"""Trains a derived recurrent cell from scratch (DARTS's ``rnn/train.py``).

The genotype (a ``genotype.json`` from ``rnn_search``, or a registered one
such as ``darts_v2``) becomes ``models.rnn.RNNEvalCell`` in DARTS's language
model (tied embedding, embedding and locked dropouts, TAR), trained with SGD
(learning rate scaled by each window's length, gradient clipping, weight
decay) until the validation loss stops improving — DARTS's non-monotone
trigger: the loss of an epoch is worse than the best of all but the last
``nonmono`` epochs — and then with averaged SGD (the iterates' running mean,
PyTorch's ASGD with λ = 0, t0 = 0). Validation and test perplexity are taken
with the averaged weights once averaging has begun; the test pass runs with
``test_batch_size`` columns (DARTS: 1). ``results.json`` holds them.
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

from sparsenas_jax import rnn_genotype
from sparsenas_jax.data import ptb
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.experiments import language_model as lm
from sparsenas_jax.experiments import rnn_search
from sparsenas_jax.models import rnn
from sparsenas_jax.models.supernet import count_params
from sparsenas_jax.runtime import compilation
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import loop
from sparsenas_jax.runtime import parallel

WEIGHTINGS = ('mean', 'arch')


class RNNTrainState(NamedTuple):
  """Everything a step or an epoch's end changes; checkpointed whole."""
  step: jax.Array  # int32 scalar, steps taken
  params: Any
  opt_state: Any
  averaged: Any  # running mean of params since averaging began
  averaging: jax.Array  # bool scalar: averaged SGD has begun
  count: jax.Array  # int32 scalar, steps averaged
  val_losses: jax.Array  # float32[epochs], NaN where not (yet) recorded
  hidden: jax.Array  # float32[batch, nhid]


def load_genotype(config) -> rnn_genotype.RecurrentGenotype:
  if not config.genotype:
    raise ConfigError(
        'config.genotype is empty: pass --config.genotype=WORKDIR/'
        'genotype.json from an rnn_search, or one of '
        f'{", ".join(sorted(rnn_genotype.RECURRENT_GENOTYPES))}.')
  try:
    return rnn_genotype.resolve_recurrent_genotype(config.genotype)
  except (ValueError, OSError) as e:
    raise ConfigError(f'config.genotype: {e}') from None


def validate(config) -> rnn_genotype.RecurrentGenotype:
  lm.check_common(config)
  if config.weighting not in WEIGHTINGS:
    raise ConfigError(f'config.weighting={config.weighting!r}; valid: '
                      f'{WEIGHTINGS}.')
  if config.nonmono < 1 or config.test_batch_size < 1:
    raise ConfigError('config.nonmono and config.test_batch_size must be '
                      '>= 1.')
  return load_genotype(config)


def make_model(config, genotype, ntoken: int) -> rnn.RNNModel:
  return rnn.RNNModel(
      ntoken=ntoken, nhid=config.nhid,
      cell=rnn.RNNEvalCell(genotype=genotype, nhid=config.nhid,
                           weighting=config.weighting),
      dropout=config.dropout, dropouth=config.dropouth,
      dropoutx=config.dropoutx, dropouti=config.dropouti,
      dropoute=config.dropoute, unroll=config.unroll,
      remat=config.remat)


def make_train_step(config, model, optimizer, steps_per_epoch, mesh):
  """``step(state, window, key) -> (state, metrics)``, pure, jitted whole."""
  replicated = parallel.replicated(mesh)

  def loss_fn(params, batch):
    logits, hidden, outputs = model.apply(
        {'params': params}, batch['input'].T, batch['hidden'],
        batch['mask'][0], train=True, rngs={'dropout': batch['key']})
    loss = lm.masked_mean_nll(logits, batch)
    tar = lm.temporal_activation_penalty(outputs, batch, config.tar_beta)
    return loss + tar, (loss, hidden)

  def step(state: RNNTrainState, batch, key):
    hidden = jnp.where(state.step % steps_per_epoch == 0, 0.0, state.hidden)
    (_, (loss, hidden)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, {**batch, 'hidden': hidden, 'key': key})
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    eta = config.learning_rate * jnp.sum(batch['mask'][0]) / config.bptt
    params = jax.tree.map(lambda p, u: p - eta * u, state.params, updates)
    # Averaged SGD: the running mean of the iterates since it began.
    count = jnp.where(state.averaging, state.count + 1, state.count)
    averaged = jax.tree.map(
        lambda a, p: jnp.where(state.averaging, a + (p - a) / count, a),
        state.averaged, params)
    new_state = state._replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        averaged=averaged, count=count,
        hidden=jax.lax.stop_gradient(hidden))
    metrics = {'train_loss': loss, divergence.KEY: divergence.finite_flags(
        train_loss=loss, gradient=grads, params=params)}
    return jax.lax.with_sharding_constraint(new_state, replicated), metrics

  return step


def switch_to_averaging(val_losses: np.ndarray, epoch: int,
                        nonmono: int) -> bool:
  """DARTS's trigger after ``epoch`` (1-based) epochs of plain SGD: its loss
  is worse than the best of all but the last ``nonmono`` recorded ones."""
  history = val_losses[:epoch]
  return (len(history) > nonmono and
          history[-1] > np.min(history[:-nonmono]))


DIVERGENCE_HINT = 'config.learning_rate (or config.grad_clip)'
LOG_KEYS = (('train_loss', '.3f'), ('val_perplexity', '.1f'),
            ('averaging', '.0f'))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes training) the genotype; returns the final metrics."""
  genotype = validate(config)
  mesh = loop.start(config, workdir)
  corpus = lm.load_corpus(config)
  lm.check_vocabulary(workdir, corpus.vocab)
  ntoken = len(corpus.vocab)
  train = ptb.batchify(corpus.train, config.batch_size)
  val_windows = lm.eval_windows(ptb.batchify(corpus.valid,
                                             config.eval_batch_size),
                                config.bptt)
  rows = len(train)
  steps_per_epoch = ptb.steps_per_epoch(rows, config.bptt)
  total_steps = steps_per_epoch * config.epochs
  max_len = config.bptt + config.max_seq_len_delta
  store = compilation.job_store(config, workdir, ntoken, genotype.to_json())
  model = make_model(config, genotype, ntoken)
  optimizer = rnn_search.make_weight_optimizer(config)

  def init_state():
    params = rnn.init_rnn_variables(model, config.seed)['params']
    logging.info('recurrent model: %d parameters (%d words, nhid %d)',
                 count_params(params), ntoken, config.nhid)
    return RNNTrainState(
        jnp.zeros([], jnp.int32), params, optimizer.init(params),
        jax.tree.map(jnp.zeros_like, params), jnp.bool_(False),
        jnp.zeros([], jnp.int32),
        jnp.full((config.epochs,), jnp.nan, jnp.float32),
        jnp.zeros((config.batch_size, config.nhid), jnp.float32))

  def compile_step(state, batch, key):
    compiled, _ = compilation.compile_step(
        make_train_step(config, model, optimizer, steps_per_epoch, mesh),
        (state, batch, key), cpu_fast_compile=config.cpu_fast_compile,
        donate=(0,), store=store, name='train_step')
    return compiled

  def batch_at(step):
    epoch, index = divmod(step, steps_per_epoch)
    starts, lengths = lm.epoch_windows(rows, steps_per_epoch, config.bptt,
                                       max_len, config.seed, epoch)
    return lm.batch_major(ptb.window(train, int(starts[index]),
                                     int(lengths[index]), max_len))

  perplexity = lm.make_perplexity(
      lambda p, _, tokens, hidden, mask: model.apply(
          {'params': p}, tokens, hidden, mask, train=False)[:2])

  def weights_to_read(state):
    """The averaged weights once at least one step was averaged."""
    averaged = state.count > 0
    return jax.tree.map(lambda a, p: jnp.where(averaged, a, p),
                        state.averaged, state.params)

  def evaluate(state):
    out = lm.perplexity_of(perplexity, weights_to_read(state), None,
                           val_windows, config.nhid)
    return {'val_loss': out['loss'], 'val_perplexity': out['perplexity'],
            'averaging': float(bool(state.count > 0))}

  def after_epoch(state, scalars):
    epoch = -(-int(state.step) // steps_per_epoch)
    if bool(state.averaging) or 'val_loss' not in scalars:
      return state
    losses = np.asarray(state.val_losses).copy()
    losses[epoch - 1] = scalars['val_loss']
    state = state._replace(val_losses=jnp.asarray(losses))
    if switch_to_averaging(losses, epoch, config.nonmono):
      logging.info('epoch %d: the validation loss stopped improving; '
                   'switching to averaged SGD', epoch)
      state = state._replace(averaging=jnp.bool_(True))
    return state

  job = loop.Job(
      init_state=init_state, compile=compile_step, batch_at=batch_at,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      seed=config.seed, divergence_hint=DIVERGENCE_HINT, evaluate=evaluate,
      eval_every_epochs=1, log_keys=LOG_KEYS, after_epoch=after_epoch)
  state, summary = loop.run(job, workdir, mesh)
  test_windows = lm.eval_windows(
      ptb.batchify(corpus.test, config.test_batch_size), config.bptt)
  test = lm.perplexity_of(perplexity, weights_to_read(state), None,
                          test_windows, config.nhid)
  val_losses = np.asarray(state.val_losses)
  summary.update({
      'test_loss': test['loss'], 'test_perplexity': test['perplexity'],
      'params': count_params(state.params),
      'params_formula': rnn_genotype.recurrent_genotype_params(
          genotype, ntoken=ntoken, nhid=config.nhid),
      'averaged_from_epoch': (int(np.sum(~np.isnan(val_losses))) + 1
                              if bool(state.averaging) else None),
      'unigram_perplexity': ptb.unigram_perplexity(corpus),
      'genotype': config.genotype, 'dataset': config.dataset,
      'epochs': config.epochs, 'steps': int(state.step),
      'programs_loaded': store.loaded,
      'peak_rss_gb': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(summary, f, indent=1)
  logging.info('validation perplexity %.2f, test perplexity %.2f (unigram '
               '%.1f); %d parameters', summary.get('val_perplexity', np.nan),
               test['perplexity'], summary['unigram_perplexity'],
               summary['params'])
  return summary
