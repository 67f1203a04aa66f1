"""Word-level text for the recurrent cell search: Penn Treebank, tiny corpus.

A corpus is three streams of word ids (train, valid, test), tokenised as
DARTS's ``data.Corpus``: each line split on whitespace, then ``'<eos>'``;
ids in order of first appearance over train, then valid, then test.

* ``load_ptb(data_dir)`` reads the Mikolov PTB files (10k words, ``'<unk>'``
  already in the text); nothing is downloaded.
* ``tiny_corpus()`` builds an offline corpus of real English from the text
  of CPython's ``pydoc_data.topics``, normalised as PTB was.

Batches follow DARTS (``rnn/utils.py``): ``batchify`` lays a stream out as
``batch_size`` columns, read down the rows; a BPTT window is a run of rows,
its targets the rows one below. ``window`` gives each window a fixed shape
(``max_len`` rows and a row mask) so a jitted step compiles once;
``train_windows`` and ``eval_windows`` give the starts and lengths of an
epoch's windows, pure functions of their arguments, so a resumed run needs
only the step::

  corpus = ptb.tiny_corpus()
  source = ptb.batchify(corpus.train, 32)
  starts, lengths = ptb.train_windows(
      len(source), ptb.steps_per_epoch(len(source), 35), bptt=35,
      max_len=55, seed=0, epoch=epoch)
  batch = ptb.window(source, starts[k], lengths[k], max_len=55)

The tiny corpus, as built by CPython 3.11.7 with the defaults
(``max_vocab=2000``, ``min_count=3``; another CPython's documentation gives
other figures): 79 topics, 63 to train, 8 to valid, 8 to test; train 55,887
tokens, valid 5,342, test 12,061 (``'<eos>'`` included); 1,526 words in the
vocabulary (``'<eos>'`` and ``'<unk>'`` included; ``min_count`` binds before
``max_vocab``); 3.4% of train, 7.6% of valid, 5.6% of test tokens are
``'<unk>'``. The test split's unigram perplexity under the train split's
unigram distribution (``unigram_perplexity``) is 219.3: a language model
that learns anything beyond word frequencies gets far below it.
"""

from __future__ import annotations

import collections
import os
import re
from typing import NamedTuple, Sequence

import numpy as np

from sparsenas_jax.data.tfds_images import DatasetNotPreparedError

EOS = '<eos>'
UNK = '<unk>'
NUMBER = 'N'

SPLITS = ('train', 'valid', 'test')
# The Mikolov distribution's names, then DARTS's data/penn/ names.
FILE_SCHEMES = (
    tuple(f'ptb.{split}.txt' for split in SPLITS),
    tuple(f'{split}.txt' for split in SPLITS),
)

# DARTS's length rule (rnn/train_search.py): the nominal length is bptt with
# probability 1 - P_HALF_BPTT, else bptt / 2; then a normal of this standard
# deviation around it, and at least MIN_WINDOW rows.
P_HALF_BPTT = 0.05
WINDOW_STD = 5.
MIN_WINDOW = 5

# Tiny corpus: topic k (in sorted-key order) goes to valid when k % 10 == 0,
# to test when k % 10 == 1, to train otherwise.
_TINY_EVERY = 10

# A word of letters, with apostrophes only inside it ("don't", "o'clock").
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
# PTB splits these clitics off: "don't" -> "do n't", "it's" -> "it 's".
_CLITIC = re.compile(r"^([a-z]+)(n't|'s|'re|'ve|'ll|'d|'m)$")
_DIGIT = re.compile(r'[0-9]')


class Corpus(NamedTuple):
  """A word-level corpus: a vocabulary and three streams of its ids."""
  vocab: tuple[str, ...]  # id -> word; contains '<eos>' and '<unk>'.
  train: np.ndarray  # int32[num_train_tokens], the whole split, lines joined.
  valid: np.ndarray  # int32[num_valid_tokens]
  test: np.ndarray  # int32[num_test_tokens]


def _build_corpus(splits: Sequence[Sequence[str]]) -> Corpus:
  """Ids by first appearance over the splits in order; '<unk>' guaranteed."""
  index: dict[str, int] = {}
  streams = []
  for words in splits:
    ids = np.empty(len(words), np.int32)
    for i, word in enumerate(words):
      ids[i] = index.setdefault(word, len(index))
    streams.append(ids)
  # Both markers are part of the contract; a missing one gets the next id,
  # which no token uses.
  for marker in (EOS, UNK):
    index.setdefault(marker, len(index))
  return Corpus(tuple(index), *streams)


def _read_lines(path: str) -> list[str]:
  """DARTS's tokenisation of one file: each line's words, then '<eos>'."""
  words = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      words.extend(line.split())
      words.append(EOS)
  return words


def _missing_message(data_dir: str, missing: Sequence[str],
                     alternative: Sequence[str]) -> str:
  where = (data_dir if os.path.isdir(data_dir)
           else f'{data_dir} (no such folder)')
  return (
      f"PTB text not found: {', '.join(missing)} missing in {where} (DARTS's "
      f"names {', '.join(alternative)} also work); get ptb.train.txt, "
      'ptb.valid.txt and ptb.test.txt from the Mikolov PTB distribution '
      "simple-examples.tgz (its data/ptb.*.txt) or DARTS's data/penn/ "
      'folder, put them in a folder DIR and pass --config.data_dir=DIR; '
      'configs/rnn_search.py:tiny runs offline on an embedded corpus.')


def load_ptb(data_dir: str) -> Corpus:
  """Reads Penn Treebank (Mikolov's preprocessed text) from ``data_dir``.

  The folder holds either ``ptb.train.txt``, ``ptb.valid.txt``,
  ``ptb.test.txt`` (as in ``simple-examples.tgz``) or ``train.txt``,
  ``valid.txt``, ``test.txt`` (as in DARTS's ``data/penn/``); the first set
  wins when both are complete. Tokenised as DARTS's ``data.Corpus``: every
  line (blank ones too) gives its whitespace-separated words, then
  ``'<eos>'``; ids are given in order of first appearance over train, then
  valid, then test. Real PTB already has ``'<unk>'`` in its text and gives a
  vocabulary of 10,000 words; other files get ``'<eos>'`` / ``'<unk>'``
  appended to the vocabulary when they lack them (ids no token uses).

  Args:
    data_dir: the folder with the three files.

  Returns:
    The ``Corpus``; its streams are int32.

  Raises:
    DatasetNotPreparedError: at once, when a file is missing; its one-line
      message names the files and the folder, and says where to get them.
  """
  data_dir = os.path.expanduser(str(data_dir))
  missing = [[name for name in scheme
              if not os.path.isfile(os.path.join(data_dir, name))]
             for scheme in FILE_SCHEMES]
  for scheme, absent in zip(FILE_SCHEMES, missing):
    if not absent:
      return _build_corpus(
          [_read_lines(os.path.join(data_dir, name)) for name in scheme])
  # Name the files of the scheme that is closer to complete (PTB's on ties).
  closer = 0 if len(missing[0]) <= len(missing[1]) else 1
  raise DatasetNotPreparedError(_missing_message(
      data_dir, missing[closer], FILE_SCHEMES[1 - closer]))


def normalize_line(line: str) -> list[str]:
  """PTB-style words of one line of English text.

  Lowercased; a whitespace-separated token with a digit in it becomes one
  ``'N'`` (``"3.14,"``, ``"utf-8"``, ``"x2"``); in the others, the words are
  the runs of letters, apostrophes allowed inside a run (so
  ``"os.path.join()"`` gives ``os path join``, ``"__init__"`` gives
  ``init``); all other characters are dropped. As in PTB, the clitics
  ``n't 's 're 've 'll 'd 'm`` are split off (``"don't"`` -> ``do n't``,
  ``"it's"`` -> ``it 's``); other inner apostrophes stay (``o'clock``).

  Args:
    line: one line of text.

  Returns:
    Its words, possibly none.
  """
  words = []
  for token in line.lower().split():
    if _DIGIT.search(token):
      words.append(NUMBER)
      continue
    for word in _WORD.findall(token):
      clitic = _CLITIC.match(word)
      words.extend(clitic.groups() if clitic else (word,))
  return words


def _normalize_text(text: str) -> list[str]:
  """The words of every line with a word in it, each line ending '<eos>'."""
  words = []
  for line in text.splitlines():
    line_words = normalize_line(line)
    if line_words:
      words.extend(line_words)
      words.append(EOS)
  return words


def _tiny_topics() -> tuple[list[str], list[str], list[str]]:
  """The pydoc topics' texts, sorted by key, dealt to train, valid, test."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  parts = ([], [], [])
  for k, key in enumerate(sorted(topics.topics)):
    part = {0: 1, 1: 2}.get(k % _TINY_EVERY, 0)
    parts[part].append(topics.topics[key])
  return parts


def tiny_corpus(*, max_vocab: int = 2000, min_count: int = 3) -> Corpus:
  """An offline corpus of real English: CPython's documentation topics.

  The text is the values of ``pydoc_data.topics.topics`` (the
  documentation behind ``help('topic')``, shipped with CPython), in
  sorted-key order; topic ``k`` goes to valid when ``k % 10 == 0``, to
  test when ``k % 10 == 1``, to train otherwise (no randomness). Every line
  with a word in it is normalised as ``normalize_line`` says and ends with
  ``'<eos>'``; lines without words (blank lines, rules of ``*``) are
  dropped. A word is kept when it is among the ``max_vocab`` most frequent
  train words (ties broken alphabetically) and occurs at least
  ``min_count`` times in train; every other word, in every split, becomes
  ``'<unk>'``. Ids are given as ``load_ptb`` gives them. The figures for
  the defaults are in the module docstring.

  Args:
    max_vocab: the most words kept, not counting ``'<eos>'`` and
      ``'<unk>'``; the vocabulary has at most ``max_vocab + 2`` entries.
    min_count: the fewest train occurrences of a kept word.

  Returns:
    The ``Corpus``; the same for the same arguments on the same CPython.

  Raises:
    ValueError: if ``max_vocab < 1`` or ``min_count < 1``.
  """
  if max_vocab < 1 or min_count < 1:
    raise ValueError(f'tiny_corpus needs max_vocab >= 1 and min_count >= 1, '
                     f'got max_vocab={max_vocab}, min_count={min_count}.')
  splits = [_normalize_text('\n'.join(texts)) for texts in _tiny_topics()]
  counts = collections.Counter(splits[0])
  for marker in (EOS, UNK):
    counts.pop(marker, None)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  kept = {word for word, count in ranked[:max_vocab] if count >= min_count}
  kept.update((EOS, UNK))
  return _build_corpus(
      [[word if word in kept else UNK for word in words] for words in splits])


def unigram_perplexity(corpus: Corpus) -> float:
  """Perplexity of the test split under the train split's unigram model.

  ``p(w) = (count_train(w) + 1) / (num_train_tokens + V)`` (add-one
  smoothing over the ``V = len(corpus.vocab)`` words); the result is
  ``exp(-mean_t log p(test_t))``. It is the perplexity a model gets from
  word frequencies alone.

  Args:
    corpus: the corpus.

  Returns:
    The perplexity, a float ``>= 1``.

  Raises:
    ValueError: if the test split is empty.
  """
  if len(corpus.test) == 0:
    raise ValueError('unigram_perplexity needs a non-empty test split.')
  size = len(corpus.vocab)
  counts = np.bincount(corpus.train, minlength=size).astype(np.float64)
  log_p = np.log(counts + 1.) - np.log(counts.sum() + size)
  return float(np.exp(-log_p[corpus.test].mean()))


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Lays a stream out as ``batch_size`` columns, as DARTS's ``batchify``.

  The stream is trimmed to a multiple of ``batch_size``, cut into
  ``batch_size`` consecutive pieces of ``rows`` ids, and piece ``b`` becomes
  column ``b``: ``result[r, b] = ids[b * rows + r]``. Reading down a column
  reads the text in order.

  Args:
    ids: int[num_tokens], a stream of word ids.
    batch_size: the number of columns.

  Returns:
    int32[rows, batch_size], ``rows = len(ids) // batch_size``, C-contiguous.

  Raises:
    ValueError: if ``ids`` is not 1-D, ``batch_size < 1``, or fewer than two
      rows would remain (a window needs a row and the row of its targets).
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f'batchify needs a 1-D stream of ids, got shape '
                     f'{ids.shape}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  rows = len(ids) // batch_size
  if rows < 2:
    raise ValueError(
        f'{len(ids)} tokens in {batch_size} columns give {rows} rows; a '
        'window needs at least 2 rows (use a smaller batch_size).')
  columns = ids[:rows * batch_size].reshape(batch_size, rows)
  return np.ascontiguousarray(columns.T, dtype=np.int32)


def window(source: np.ndarray, start: int, length: int,
           max_len: int) -> dict[str, np.ndarray]:
  """One BPTT window of a batchified stream, padded to ``max_len`` rows.

  As DARTS's ``get_batch``: ``n = min(length, rows - 1 - start)`` rows from
  ``start`` are the inputs and the rows one below them the targets, so a
  window at the end of the stream is shorter. Rows ``t >= n`` of ``input``
  and ``target`` are zeros and their ``mask`` is 0, so every window has the
  same shape.

  Args:
    source: int[rows, batch_size], from ``batchify``.
    start: the first input row, ``0 <= start``.
    length: the rows wanted, ``<= max_len``.
    max_len: the rows of the result.

  Returns:
    ``{'input': int32[max_len, B], 'target': int32[max_len, B],
    'mask': float32[max_len]}``: for ``t < n``, ``input[t] = source[start +
    t]``, ``target[t] = source[start + t + 1]``, ``mask[t] = 1``.

  Raises:
    ValueError: if ``source`` is not 2-D, ``start < 0``, ``length >
      max_len``, or ``n < 1`` (no row left after ``start``).
  """
  source = np.asarray(source)
  if source.ndim != 2:
    raise ValueError(f'window needs a batchified [rows, batch] source, got '
                     f'shape {source.shape}.')
  start, length, max_len = int(start), int(length), int(max_len)
  if length > max_len:
    raise ValueError(f'window length {length} exceeds max_len {max_len}.')
  n = min(length, source.shape[0] - 1 - start)
  if start < 0 or n < 1:
    raise ValueError(
        f'window at row {start} of length {length} has {n} rows in a '
        f'source of {source.shape[0]} rows (needs start >= 0 and at least '
        'one row with a target).')
  batch = source.shape[1]
  inputs = np.zeros((max_len, batch), np.int32)
  targets = np.zeros((max_len, batch), np.int32)
  inputs[:n] = source[start:start + n]
  targets[:n] = source[start + 1:start + 1 + n]
  mask = np.zeros((max_len,), np.float32)
  mask[:n] = 1.
  return {'input': inputs, 'target': targets, 'mask': mask}


def steps_per_epoch(num_rows: int, bptt: int) -> int:
  """The training windows of an epoch: ``ceil((num_rows - 1) / bptt)``.

  DARTS's evaluation pass takes this many windows; a training epoch of as
  many windows of mean length about ``0.975 * bptt`` (DARTS's rule) covers
  about the whole stream.

  Args:
    num_rows: rows of the batchified stream, ``>= 2``.
    bptt: the nominal window length, ``>= 1``.

  Returns:
    The number of windows, ``>= 1``.

  Raises:
    ValueError: if ``num_rows < 2`` or ``bptt < 1``.
  """
  _check_rows_bptt(num_rows, bptt)
  return -(-(int(num_rows) - 1) // int(bptt))


def _check_rows_bptt(num_rows: int, bptt: int) -> None:
  if num_rows < 2 or bptt < 1:
    raise ValueError(f'need num_rows >= 2 and bptt >= 1, got num_rows='
                     f'{num_rows}, bptt={bptt}.')


def train_windows(num_rows: int, steps: int, *, bptt: int, max_len: int,
                  seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
  """The training windows of one epoch, from ``(seed, epoch)`` alone.

  Lengths follow DARTS's ``train_search.py``: the nominal length ``b`` is
  ``bptt`` with probability 0.95, else ``bptt / 2``; ``L = max(5,
  int(normal(b, 5)))``, then ``L = min(L, max_len)`` (DARTS's cap is ``bptt
  + max_seq_len_delta``) and ``L <= num_rows - 1`` (so a window fits in
  the stream). Draws come from ``np.random.default_rng((seed, epoch))``, so
  a resumed run takes the same windows.

  Windows are consecutive from row 0 (``start[k+1] = start[k] + L[k]``),
  like DARTS's walk; a window that would need rows past the end
  (``start + L > num_rows - 1``) starts at row 0 instead: the stream wraps,
  and every window has its full length (no mask needed). DARTS walks the
  stream exactly once per epoch, so its number of steps varies and its last
  window is cut short; here an epoch has a fixed number of steps (take
  ``steps_per_epoch(num_rows, bptt)`` to cover about the whole stream). A
  job that carries the hidden state across windows, as DARTS does, should
  reset it where ``start == 0``, where the text does not continue.

  Args:
    num_rows: rows of the batchified stream, ``>= 2``.
    steps: the number of windows, ``>= 0``.
    bptt: the nominal window length, ``>= 1``.
    max_len: the longest window (the rows of ``window``), ``>= 1``.
    seed: the stream seed, ``>= 0``.
    epoch: the epoch, ``>= 0``.

  Returns:
    ``(starts, lengths)``, int64[steps] each; ``1 <= lengths <=
    min(max_len, num_rows - 1)``, ``lengths >= 5`` when that bound allows,
    ``starts + lengths <= num_rows - 1``.

  Raises:
    ValueError: on arguments out of range.
  """
  _check_rows_bptt(num_rows, bptt)
  if steps < 0 or max_len < 1 or seed < 0 or epoch < 0:
    raise ValueError(f'need steps >= 0, max_len >= 1, seed >= 0, epoch >= 0, '
                     f'got steps={steps}, max_len={max_len}, seed={seed}, '
                     f'epoch={epoch}.')
  rng = np.random.default_rng((int(seed), int(epoch)))
  nominal = np.where(rng.random(steps) < 1. - P_HALF_BPTT, bptt, bptt / 2.)
  drawn = rng.normal(nominal, WINDOW_STD)
  # int() truncates toward zero, as astype does.
  lengths = np.maximum(MIN_WINDOW, drawn.astype(np.int64))
  lengths = np.minimum(lengths, min(int(max_len), int(num_rows) - 1))
  starts = np.empty(steps, np.int64)
  position = 0
  for k, length in enumerate(lengths):
    if position + length > num_rows - 1:
      position = 0
    starts[k] = position
    position += length
  return starts, lengths


def eval_windows(num_rows: int, bptt: int) -> tuple[np.ndarray, np.ndarray]:
  """DARTS's evaluation pass: consecutive windows of ``bptt`` rows.

  Starts ``0, bptt, 2 * bptt, ... < num_rows - 1``; lengths ``min(bptt,
  num_rows - 1 - start)``, so every target row ``1 .. num_rows - 1`` is
  predicted exactly once. Pass ``max_len >= bptt`` to ``window``.

  Args:
    num_rows: rows of the batchified stream, ``>= 2``.
    bptt: the window length, ``>= 1``.

  Returns:
    ``(starts, lengths)``, int64[steps_per_epoch(num_rows, bptt)] each.

  Raises:
    ValueError: if ``num_rows < 2`` or ``bptt < 1``.
  """
  _check_rows_bptt(num_rows, bptt)
  starts = np.arange(0, int(num_rows) - 1, int(bptt), dtype=np.int64)
  lengths = np.minimum(int(bptt), int(num_rows) - 1 - starts)
  return starts, lengths
