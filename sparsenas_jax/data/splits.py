"""An image classification dataset as in-memory splits for the CNN jobs.

DIGITS (embedded), CIFAR-10 and CIFAR-100 (TFDS) as weight-training,
architecture-validation and test splits, with the per-channel statistics
that the jobs normalise by. A search splits the training set into its two
halves (``train_portion``, as DARTS); training from scratch takes all of it
(``train_portion=1``, no validation split).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from sparsenas_jax.data import digits
from sparsenas_jax.data import tfds_images

DATASETS = ('digits', 'cifar10', 'cifar100')
NUM_CLASSES = {'digits': digits.NUM_CLASSES, 'cifar10': 10, 'cifar100': 100}

Split = tuple[np.ndarray, np.ndarray]  # (images, labels)


class ImageSplits(NamedTuple):
  train: Split  # trains the weights w
  val: Optional[Split]  # validates the architecture A; None if portion 1
  test: Split  # held out
  mean: np.ndarray  # per channel, float32, of [0, 1]-scaled images
  std: np.ndarray
  num_classes: int


def load_image_splits(dataset: str, *, seed: int, train_portion: float,
                      data_dir: Optional[str] = None) -> ImageSplits:
  """The splits of ``dataset``; images stay uint8 (CIFAR) or float (DIGITS).

  DIGITS holds out a stratified fifth as its test set (seeded by ``seed``)
  and normalises by its training split's statistics. CIFAR's training set
  is split as DARTS does (the first ``train_portion`` for the weights, the
  rest for the architecture), its test set is TFDS's, and the statistics are
  DARTS's constants.

  Raises:
    ValueError: an unknown dataset or a train_portion outside (0, 1].
    DatasetNotPreparedError, TensorFlowRequiredError: CIFAR is not prepared
      in ``data_dir`` (the message says how).
  """
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; valid: {DATASETS}.')
  if not 0 < train_portion <= 1:
    raise ValueError(f'train_portion must be in (0, 1], got {train_portion}.')
  if dataset == 'digits':
    parts = digits.digits_splits(seed, test_fraction=0.2,
                                 train_portion=train_portion)
    mean, std = digits.channel_stats(parts['train'][0])
    return ImageSplits(parts['train'], parts.get('val'), parts['test'], mean,
                       std, NUM_CLASSES[dataset])
  images, labels = tfds_images.load_image_dataset(dataset, 'train',
                                                  data_dir=data_dir)
  cut = int(len(images) * train_portion)
  val = (images[cut:], labels[cut:]) if cut < len(images) else None
  test = tfds_images.load_image_dataset(dataset, 'test', data_dir=data_dir)
  mean, std = tfds_images.NORMALIZATION[dataset]
  return ImageSplits((images[:cut], labels[:cut]), val, test,
                     np.asarray(mean, np.float32), np.asarray(std, np.float32),
                     NUM_CLASSES[dataset])
