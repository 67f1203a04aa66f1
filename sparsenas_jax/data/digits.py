"""scikit-learn's DIGITS: the real image data set that needs no download.

1797 grey-scale 8x8 images of the digits 0-9 (about 180 per class), shipped
inside scikit-learn. It stands in for CIFAR where no TFDS data is available:
the same search code runs end to end on 8x8x1 inputs on a CPU (timings in
docs/performance.md).

Splits are drawn by ``split_indices``: deterministic per seed, disjoint,
exhaustive and, by default, stratified by class. ``digits_splits`` names them:

* ``'train'``: the examples the network weights are trained on;
* ``'val'``: the validation examples: the architecture-validation half of a
  search (DARTS ``train_portion`` 0.5) or the held-out validation set of the
  pruning ablation;
* ``'test'``: a held-out test set, drawn first, so that it depends only on
  ``seed`` and ``test_fraction``.

Example::

  # Architecture search: 20% test, the rest halved into train / val.
  splits = digits_splits(0, test_fraction=0.2, train_portion=0.5)
  # Pruning ablation: 20% validation, no test split.
  splits = digits_splits(0, test_fraction=0., train_portion=0.8, flat=True)
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

Seed = Union[int, Sequence[int]]

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def load_digits(*, flat: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """All of DIGITS, in scikit-learn's order.

  Args:
    flat: return images as vectors of 64 pixels instead of 8x8x1 images.

  Returns:
    ``(images, labels)``: float32 images in [0, 1] (pixel counts 0..16
    divided by 16) of shape ``(1797, 8, 8, 1)``, or ``(1797, 64)`` when
    ``flat``; int32 labels in ``[0, 10)`` of shape ``(1797,)``.
  """
  # Imported here: scikit-learn is slow to import and only DIGITS needs it.
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  bunch = datasets.load_digits()
  images = (bunch.images / 16.).astype(np.float32)
  labels = bunch.target.astype(np.int32)
  if flat:
    return images.reshape(len(images), -1), labels
  return images[..., None], labels


def part_sizes(num_examples: int, fractions: Sequence[float]) -> np.ndarray:
  """Integer part sizes summing to ``num_examples`` (largest remainders).

  Args:
    num_examples: the number of examples to share out.
    fractions: non-negative fractions summing to 1.

  Returns:
    An int64 array with one size per fraction; each is ``floor(f * n)`` or
    one more, and they sum to ``num_examples``.
  """
  f = np.asarray(fractions, np.float64)
  if f.ndim != 1 or not f.size or np.any(f < 0) or abs(f.sum() - 1) > 1e-6:
    raise ValueError(
        f'fractions must be non-negative and sum to 1, got {fractions}.')
  exact = f / f.sum() * num_examples
  sizes = np.floor(exact).astype(np.int64)
  short = num_examples - int(sizes.sum())
  # Stable sort: ties go to the earlier part.
  sizes[np.argsort(-(exact - sizes), kind='stable')[:short]] += 1
  return sizes


def _interleaved_parts(sizes: np.ndarray) -> np.ndarray:
  """Part labels for positions 0..n-1, spread evenly along the sequence.

  Member ``j`` of part ``p`` sits at key ``(j + 1/2) / n_p``; sorting the keys
  interleaves the parts so that every contiguous stretch of the sequence holds
  each part in proportion to its size (within about one example). Dealing a
  class-sorted list of examples along it stratifies every part.
  """
  keys = np.concatenate([(np.arange(s) + .5) / s for s in sizes if s])
  parts = np.repeat(np.arange(len(sizes)), sizes)
  return parts[np.argsort(keys, kind='stable')]


def split_indices(labels: Union[int, np.ndarray],
                  fractions: Sequence[float], *, seed: Seed,
                  stratify: bool = True) -> tuple[np.ndarray, ...]:
  """Disjoint, exhaustive, deterministic random index splits.

  Args:
    labels: the class label of every example, or just the number of
      examples (then the split cannot be, and is not, stratified).
    fractions: the share of each part: non-negative, summing to 1. The sizes
      are exact (``part_sizes``).
    seed: an int or a sequence of ints for ``np.random.default_rng``.
    stratify: give every part each class in (nearly, within about one
      example per class and part) the proportion it has overall.

  Returns:
    One sorted int64 index array per fraction. Together they hold every
    index once. The same arguments always give the same parts.
  """
  if isinstance(labels, (int, np.integer)):
    num_examples, labels = int(labels), None
  else:
    labels = np.asarray(labels)
    if labels.ndim != 1:
      raise ValueError(f'labels must be 1-D, got shape {labels.shape}.')
    num_examples = len(labels)
  sizes = part_sizes(num_examples, fractions)
  rng = np.random.default_rng(seed)
  order = rng.permutation(num_examples)
  if stratify and labels is not None:
    _, classes = np.unique(labels, return_inverse=True)
    # Classes in a random order, so no class always gets the rounding.
    class_rank = rng.permutation(classes.max() + 1)[classes]
    order = order[np.argsort(class_rank[order], kind='stable')]
  parts = _interleaved_parts(sizes)
  return tuple(np.sort(order[parts == p]) for p in range(len(sizes)))


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) standard deviation of NHWC images.

  Args:
    images: an array whose last axis is the channel axis.

  Returns:
    ``(mean, std)``, float32 arrays of shape ``(channels,)``.
  """
  images = np.asarray(images, np.float64)
  axes = tuple(range(images.ndim - 1))
  return (images.mean(axes).astype(np.float32),
          images.std(axes).astype(np.float32))


def digits_splits(seed: int, *, test_fraction: float = 0.2,
                  train_portion: float = 0.5, flat: bool = False,
                  normalize: bool = False
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """DIGITS as named, stratified, disjoint splits.

  First ``test_fraction`` of all examples is held out as ``'test'``; the rest
  is split into ``'train'`` (a ``train_portion`` share) and ``'val'``. A split
  that would be empty (``test_fraction=0`` or ``train_portion=1``) is left out
  of the dict.

  Args:
    seed: non-negative seed; the same seed gives the same splits.
    test_fraction: share of all examples held out for testing, in [0, 1).
    train_portion: share of the remaining examples used for training the
      weights, in (0, 1] (DARTS ``train_portion``: 0.5 for a search).
    flat: return images as 64-vectors (for MLPs) instead of 8x8x1.
    normalize: standardise the pixels of every split with the mean and
      standard deviation of the ``'train'`` split (one channel). Leave it
      False when augmenting: DARTS crops and flips raw images and normalises
      afterwards (``augment.darts_augment``), with ``channel_stats`` of the
      train images.

  Returns:
    A dict from split name to ``(images, labels)``: float32 images, int32
    labels, as ``load_digits``.
  """
  if not 0 <= test_fraction < 1:
    raise ValueError(f'test_fraction must be in [0, 1), got {test_fraction}.')
  if not 0 < train_portion <= 1:
    raise ValueError(f'train_portion must be in (0, 1], got {train_portion}.')
  images, labels = load_digits()
  rest, test = split_indices(
      labels, (1 - test_fraction, test_fraction), seed=[seed, 0])
  train, val = split_indices(
      labels[rest], (train_portion, 1 - train_portion), seed=[seed, 1])
  parts = {'train': rest[train], 'val': rest[val], 'test': test}
  splits = {name: (images[idx], labels[idx])
            for name, idx in parts.items() if idx.size}
  if normalize:
    mean, std = channel_stats(splits['train'][0])
    splits = {name: ((x - mean) / std, y) for name, (x, y) in splits.items()}
  if flat:
    splits = {name: (x.reshape(len(x), -1), y)
              for name, (x, y) in splits.items()}
  return splits
