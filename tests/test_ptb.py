"""Tests for sparsenas_jax.data.ptb: PTB files, tiny corpus, BPTT windows."""

import collections
import math
import re

import numpy as np
import pytest

from sparsenas_jax import data
from sparsenas_jax.data import ptb

# Three tiny splits in PTB's format (a leading space, '<unk>' in the text).
TRAIN = ' the cat sat \n the dog <unk> \n'
VALID = ' a cat \n'
TEST = ' the end \n'


def _write(folder, names, texts=(TRAIN, VALID, TEST)):
  folder.mkdir(parents=True, exist_ok=True)
  for name, text in zip(names, texts):
    (folder / name).write_text(text)
  return str(folder)


def _darts_words(text):
  """DARTS's tokenisation, re-derived: each line's words, then '<eos>'."""
  return [w for line in text.splitlines() for w in line.split() + ['<eos>']]


# ------------------------------------------------------------- load_ptb


@pytest.mark.parametrize('names', [
    ('ptb.train.txt', 'ptb.valid.txt', 'ptb.test.txt'),
    ('train.txt', 'valid.txt', 'test.txt'),
])
def test_load_ptb_ids_by_first_appearance(tmp_path, names):
  corpus = data.load_ptb(_write(tmp_path, names))
  assert isinstance(corpus, data.Corpus)
  # Hand-computed: ids in order of first appearance, train then valid, test.
  assert corpus.vocab == ('the', 'cat', 'sat', '<eos>', 'dog', '<unk>', 'a',
                          'end')
  np.testing.assert_array_equal(corpus.train, [0, 1, 2, 3, 0, 4, 5, 3])
  np.testing.assert_array_equal(corpus.valid, [6, 1, 3])
  np.testing.assert_array_equal(corpus.test, [0, 7, 3])
  for split, text in zip(corpus[1:], (TRAIN, VALID, TEST)):
    assert split.dtype == np.int32
    assert [corpus.vocab[i] for i in split] == _darts_words(text)
    # One '<eos>' per line.
    assert (split == corpus.vocab.index('<eos>')).sum() == text.count('\n')


def test_load_ptb_prefers_mikolov_names_and_adds_unk(tmp_path):
  folder = tmp_path / 'both'
  _write(folder, ('train.txt', 'valid.txt', 'test.txt'))
  texts = ('x y\nz\n', 'y\n', 'x w\n')  # No '<unk>' in these.
  corpus = data.load_ptb(
      _write(folder, ('ptb.train.txt', 'ptb.valid.txt', 'ptb.test.txt'),
             texts))
  assert corpus.vocab == ('x', 'y', '<eos>', 'z', 'w', '<unk>')
  np.testing.assert_array_equal(corpus.train, [0, 1, 2, 3, 2])
  np.testing.assert_array_equal(corpus.test, [0, 4, 2])


def _not_prepared(folder):
  with pytest.raises(data.DatasetNotPreparedError) as info:
    data.load_ptb(str(folder))
  message = str(info.value)
  assert '\n' not in message
  assert str(folder) in message
  assert 'configs/rnn_search.py:tiny' in message
  assert '--config.data_dir=' in message
  assert 'simple-examples.tgz' in message and 'data/penn' in message
  return message


def test_load_ptb_missing_files_one_line(tmp_path):
  message = _not_prepared(tmp_path)
  assert message.startswith(
      f'PTB text not found: ptb.train.txt, ptb.valid.txt, ptb.test.txt '
      f'missing in {tmp_path} ')
  for name in ('train.txt', 'valid.txt', 'test.txt'):
    assert name in message
  # A partial DARTS folder: its missing files are the ones named.
  _write(tmp_path, ('train.txt',), (TRAIN,))
  message = _not_prepared(tmp_path)
  assert message.startswith(
      f'PTB text not found: valid.txt, test.txt missing in {tmp_path} ')
  assert 'no such folder' in _not_prepared(tmp_path / 'absent')


# ---------------------------------------------------------- tiny corpus


def test_normalize_line_ptb_style():
  line = ("Don't call os.path.join() -- it's 3.14, x2, __init__ "
          "o'clock 'quoted' UTF-8")
  assert ptb.normalize_line(line) == [
      'do', "n't", 'call', 'os', 'path', 'join', 'it', "'s", 'N', 'N',
      'init', "o'clock", 'quoted', 'N']
  assert ptb.normalize_line('  >>> [] {} ::= ') == []


@pytest.fixture(scope='module')
def tiny():
  return data.tiny_corpus()


def test_tiny_corpus_deterministic_and_sane(tiny):
  again = data.tiny_corpus()
  assert again.vocab == tiny.vocab
  for a, b in zip(tiny[1:], again[1:]):
    np.testing.assert_array_equal(a, b)
  assert len(tiny.train) > 50_000
  assert 2_000 < len(tiny.valid) < len(tiny.train)
  assert 2_000 < len(tiny.test) < len(tiny.train)
  assert len(tiny.vocab) <= 2000 + 2
  assert len(set(tiny.vocab)) == len(tiny.vocab)
  for marker in ('<unk>', '<eos>', 'N'):
    assert marker in tiny.vocab
  assert not any(re.search('[0-9]', w) for w in tiny.vocab)
  for split in tiny[1:]:
    assert split.dtype == np.int32
    assert split.min() >= 0 and split.max() < len(tiny.vocab)
    # Each line ends with '<eos>'; no line is empty.
    eos = tiny.vocab.index('<eos>')
    assert split[-1] == eos
    assert not np.any((split[1:] == eos) & (split[:-1] == eos))
  # Every kept word occurs at least min_count (3) times in train.
  counts = np.bincount(tiny.train, minlength=len(tiny.vocab))
  words = [i for i, w in enumerate(tiny.vocab) if w not in ('<unk>', '<eos>')]
  assert counts[words].min() >= 3
  perplexity = data.unigram_perplexity(tiny)
  assert math.isfinite(perplexity) and perplexity > 50


def test_tiny_corpus_keeps_the_most_frequent_words():
  full = data.tiny_corpus(max_vocab=10**6, min_count=1)
  assert '<unk>' not in {full.vocab[i] for i in full.train}
  small = data.tiny_corpus(max_vocab=100, min_count=1)
  assert len(small.vocab) == 102
  # Re-derived with a Counter over the full train text.
  words = [full.vocab[i] for i in full.train]
  counts = collections.Counter(w for w in words if w != '<eos>')
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  kept = {w for w, _ in ranked[:100]} | {'<eos>', '<unk>'}
  assert set(small.vocab) == kept
  assert [small.vocab[i] for i in small.train] == [
      w if w in kept else '<unk>' for w in words]
  assert (len(small.valid), len(small.test)) == (len(full.valid),
                                                 len(full.test))


def test_unigram_perplexity_closed_form():
  corpus = data.Corpus(('a', 'b', '<eos>', '<unk>'),
                       np.array([0, 0, 1], np.int32), np.array([], np.int32),
                       np.array([0, 1], np.int32))
  # p(a) = 3/7, p(b) = 2/7 (add-one over 4 words): exp(-mean log p).
  assert data.unigram_perplexity(corpus) == pytest.approx(7 / math.sqrt(6))


# -------------------------------------------------------------- batches


def test_batchify_column_major():
  expected = [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # ids 9, 10 are trimmed.
  result = data.batchify(np.arange(11), 3)
  np.testing.assert_array_equal(result, expected)
  assert result.dtype == np.int32 and result.flags['C_CONTIGUOUS']
  with pytest.raises(ValueError, match='2 rows'):
    data.batchify(np.arange(5), 3)


def test_window_shapes_offset_and_short_end():
  source = data.batchify(np.arange(24), 2)  # source[r, b] = 12 * b + r.
  batch = data.window(source, 0, 5, 7)
  assert batch['input'].shape == batch['target'].shape == (7, 2)
  assert batch['input'].dtype == batch['target'].dtype == np.int32
  assert batch['mask'].dtype == np.float32
  np.testing.assert_array_equal(batch['input'][:5, 1], [12, 13, 14, 15, 16])
  np.testing.assert_array_equal(batch['target'][:5], source[1:6])
  np.testing.assert_array_equal(batch['mask'], [1, 1, 1, 1, 1, 0, 0])
  # At row 9 only rows 9, 10 have a target (rows 10, 11).
  end = data.window(source, 9, 5, 7)
  np.testing.assert_array_equal(end['input'][:2], [[9, 21], [10, 22]])
  np.testing.assert_array_equal(end['target'][:2], [[10, 22], [11, 23]])
  np.testing.assert_array_equal(end['mask'], [1, 1, 0, 0, 0, 0, 0])
  assert not end['input'][2:].any() and not end['target'][2:].any()
  for start, length, max_len in [(11, 5, 7), (0, 8, 7), (-1, 3, 7)]:
    with pytest.raises(ValueError):
      data.window(source, start, length, max_len)


def test_steps_per_epoch():
  assert data.ptb_steps_per_epoch(101, 35) == 3
  assert data.ptb_steps_per_epoch(71, 35) == 2
  assert data.ptb_steps_per_epoch(2, 35) == 1
  assert ptb.steps_per_epoch is data.ptb_steps_per_epoch


def _check_walk(starts, lengths, num_rows, max_len):
  assert starts.dtype == lengths.dtype == np.int64
  assert starts[0] == 0
  assert lengths.min() >= 5 and lengths.max() <= max_len
  assert np.all(starts >= 0) and np.all(starts + lengths <= num_rows - 1)
  ends = starts[:-1] + lengths[:-1]
  wrapped = starts[1:] != ends
  # A restart is at row 0, and only when the next window would not fit.
  assert np.all(starts[1:][wrapped] == 0)
  assert np.all(ends[wrapped] + lengths[1:][wrapped] > num_rows - 1)
  return wrapped.sum()


def test_train_windows_deterministic_and_inside():
  kwargs = dict(bptt=35, max_len=55, seed=3)
  starts, lengths = data.train_windows(400, 40, epoch=2, **kwargs)
  again = data.train_windows(400, 40, epoch=2, **kwargs)
  np.testing.assert_array_equal(starts, again[0])
  np.testing.assert_array_equal(lengths, again[1])
  other = data.train_windows(400, 40, epoch=3, **kwargs)
  assert not np.array_equal(lengths, other[1])
  # 40 windows of ~34 rows in 399: the stream wraps a few times.
  assert _check_walk(starts, lengths, 400, 55) >= 2
  source = data.batchify(np.arange(400 * 2), 2)
  for start, length in zip(starts, lengths):
    batch = data.window(source, start, length, 55)
    assert batch['mask'].sum() == length


def test_train_windows_darts_length_rule():
  # bptt 70 keeps the two nominal lengths (70, 35) apart at std 5.
  bptt, num_rows = 70, 100_000
  lengths = np.concatenate([
      data.train_windows(num_rows, 100, bptt=bptt, max_len=bptt + 20,
                         seed=0, epoch=epoch)[1] for epoch in range(100)])
  # 0.95 * bptt + 0.05 * bptt / 2; int() truncation lowers it by ~0.5.
  assert abs(lengths.mean() - (0.95 * bptt + 0.05 * bptt / 2)) < 1.5
  # About 5% of the windows have the half length (35 +- 5).
  assert 0.04 < np.mean(lengths < 52) < 0.06
  # A short max_len caps every window.
  capped = data.train_windows(num_rows, 500, bptt=bptt, max_len=60, seed=0,
                              epoch=0)[1]
  assert capped.max() == 60 and capped.min() >= 5


@pytest.mark.parametrize('num_rows,bptt', [(2, 35), (10, 4), (71, 35),
                                           (100, 35), (101, 7)])
def test_eval_windows_cover_each_target_once(num_rows, bptt):
  starts, lengths = data.eval_windows(num_rows, bptt)
  assert len(starts) == data.ptb_steps_per_epoch(num_rows, bptt)
  rows = np.concatenate([np.arange(s + 1, s + 1 + n)
                         for s, n in zip(starts, lengths)])
  np.testing.assert_array_equal(np.sort(rows), np.arange(1, num_rows))
  source = data.batchify(np.arange(num_rows * 3), 3)
  targets = []
  for start, length in zip(starts, lengths):
    batch = data.window(source, start, length, bptt)
    targets.append(batch['target'][batch['mask'] > 0])
  np.testing.assert_array_equal(np.concatenate(targets), source[1:])


def test_eval_windows_hand_example():
  starts, lengths = data.eval_windows(10, 4)
  np.testing.assert_array_equal(starts, [0, 4, 8])
  np.testing.assert_array_equal(lengths, [4, 4, 1])
