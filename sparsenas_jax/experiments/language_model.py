"""Pieces the recurrent jobs share: the corpus, BPTT batches, the language
model's losses, perplexity, and the workdir's vocabulary check.

Windows have one fixed shape, ``[batch, max_len]`` (batch-major, so the
batch axis is the one ``runtime.parallel`` shards), with a ``mask`` marking
the real steps: DARTS's variable BPTT lengths become a mask, not a new
program per length.
"""

from __future__ import annotations

import functools
import hashlib
import os
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsenas_jax.data import ptb
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.models import rnn

DATASETS = ('ptb', 'tiny')


def load_corpus(config) -> ptb.Corpus:
  """PTB from ``config.data_dir``, or the embedded ``tiny`` corpus."""
  if config.dataset == 'tiny':
    return ptb.tiny_corpus()
  return ptb.load_ptb(config.data_dir)


def check_vocabulary(workdir: str, vocab) -> None:
  """Writes the vocabulary's digest to the workdir, or checks that a resumed
  run's data has the vocabulary its checkpoints were made with."""
  digest = hashlib.sha256('\n'.join(vocab).encode()).hexdigest()[:16]
  path = os.path.join(workdir, 'vocabulary.txt')
  line = f'{len(vocab)} {digest}'
  if os.path.exists(path):
    with open(path) as f:
      saved = f.read().strip()
    if saved != line:
      raise ConfigError(
          f'{workdir} holds a run on another vocabulary ({saved.split()[0]} '
          f'words, digest {saved.split()[-1]}; this data: {len(vocab)} words, '
          f'digest {digest}); use a new --workdir or the data of that run.')
    return
  if jax.process_index() == 0:
    with open(path, 'w') as f:
      f.write(line + '\n')


def batch_major(window: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A ``ptb.window`` ([T, B], mask [T]) as ``[B, T]`` arrays with the mask
  repeated per row, so every leaf has the batch as its leading axis."""
  batch = window['input'].shape[1]
  return {'input': window['input'].T, 'target': window['target'].T,
          'mask': np.broadcast_to(window['mask'], (batch,) + window[
              'mask'].shape).copy()}


def eval_windows(source: np.ndarray, bptt: int) -> dict[str, np.ndarray]:
  """DARTS's evaluation pass over a batchified split as stacked windows:
  ``[num_windows, B, bptt]`` inputs and targets and a mask (the last window
  may be shorter)."""
  starts, lengths = ptb.eval_windows(len(source), bptt)
  windows = [batch_major(ptb.window(source, int(s), int(n), bptt))
             for s, n in zip(starts, lengths)]
  return {k: np.stack([w[k] for w in windows]) for k in windows[0]}


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """−log softmax(logits)[target] per step: ``[T, B, V]``, ``[T, B]`` →
  ``[T, B]``, without materialising the log-probabilities."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def masked_mean_nll(logits, batch) -> jax.Array:
  """The mean NLL over the window's real steps (time-major logits)."""
  mask = batch['mask'].T  # [T, B]
  nll = token_nll(logits, batch['target'].T)
  return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1)


def temporal_activation_penalty(outputs, batch, beta: float) -> jax.Array:
  """DARTS's TAR, β·mean((h_{t+1} − h_t)²) over consecutive real steps."""
  mask = batch['mask'].T  # [T, B]
  pairs = mask[1:] * mask[:-1]
  squares = jnp.mean(jnp.square(outputs[1:] - outputs[:-1]), -1)
  return beta * jnp.sum(squares * pairs) / jnp.maximum(jnp.sum(pairs), 1)


def make_perplexity(apply_fn):
  """A jitted ``(params, arch, windows, hidden0) -> (nll sum, tokens)``.

  ``apply_fn(params, arch, tokens [T, B], hidden, mask [T]) -> (logits,
  hidden)`` runs the model in evaluation mode; the windows are scanned in
  order with the hidden state carried across them, as DARTS evaluates.
  """

  @jax.jit
  def perplexity(params, arch, windows, hidden):
    def body(hidden, window):
      mask = window['mask'].T
      logits, hidden = apply_fn(params, arch, window['input'].T, hidden,
                                mask[:, 0])
      nll = token_nll(logits, window['target'].T)
      return hidden, (jnp.sum(nll * mask), jnp.sum(mask))
    _, (sums, counts) = jax.lax.scan(body, hidden, windows)
    return jnp.sum(sums), jnp.sum(counts)

  return perplexity


def perplexity_of(perplexity, params, arch, windows, nhid: int
                  ) -> dict[str, float]:
  """Mean NLL and perplexity of a split (``make_perplexity``)."""
  batch = windows['input'].shape[1]
  total, count = perplexity(params, arch, windows,
                            jnp.zeros((batch, nhid), jnp.float32))
  loss = float(total) / max(float(count), 1.0)
  return {'loss': loss, 'perplexity': float(np.exp(min(loss, 700.0)))}


@functools.lru_cache(maxsize=4)
def epoch_windows(num_rows: int, steps: int, bptt: int, max_len: int,
                  seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """``ptb.train_windows`` of one epoch, cached (every step asks)."""
  return ptb.train_windows(num_rows, steps, bptt=bptt, max_len=max_len,
                           seed=seed, epoch=epoch)


def check_common(config) -> None:
  """The fields both recurrent jobs have."""
  if config.dataset not in DATASETS:
    raise ConfigError(f'config.dataset={config.dataset!r}; valid: '
                      f'{DATASETS}.')
  if config.bptt < 2:
    raise ConfigError(f'config.bptt={config.bptt}: use >= 2 (a window needs '
                      'an input and a next word).')
  for name in ('epochs', 'batch_size', 'eval_batch_size', 'nhid'):
    if config[name] < 1:
      raise ConfigError(f'config.{name}={config[name]}: use >= 1.')
  for name in ('dropout', 'dropouth', 'dropoutx', 'dropouti', 'dropoute'):
    if not 0 <= config[name] < 1:
      raise ConfigError(f'config.{name}={config[name]}: use [0, 1).')
  if config.remat not in rnn.REMAT_POLICIES:
    raise ConfigError(f'config.remat={config.remat!r}; valid: '
                      f'{", ".join(rnn.REMAT_POLICIES)}.')

