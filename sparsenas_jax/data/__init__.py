"""Input pipelines: embedded DIGITS, TFDS images, batching, augmentation.

Data arrive as NumPy arrays held in memory; batches are indexed by global step
(``batch_at``), so resuming needs only the step; augmentation runs in JAX
inside the jitted step::

  from sparsenas_jax import data
  splits = data.digits_splits(0, test_fraction=0.2, train_portion=0.5)
  mean, std = data.channel_stats(splits['train'][0])
  xb, yb = data.batch_at(splits['train'], 64, seed=0, step=step)
  xb = data.darts_augment(key, xb, pad=1, flip=False, mean=mean, std=std)
"""

from sparsenas_jax.data.augment import color_jitter
from sparsenas_jax.data.augment import cutout
from sparsenas_jax.data.augment import darts_augment
from sparsenas_jax.data.augment import normalize
from sparsenas_jax.data.augment import random_crop
from sparsenas_jax.data.augment import random_flip
from sparsenas_jax.data.batching import batch_at
from sparsenas_jax.data.batching import batch_indices
from sparsenas_jax.data.batching import epoch_permutation
from sparsenas_jax.data.batching import steps_per_epoch
from sparsenas_jax.data.digits import channel_stats
from sparsenas_jax.data.digits import digits_splits
from sparsenas_jax.data.digits import load_digits
from sparsenas_jax.data.digits import part_sizes
from sparsenas_jax.data.digits import split_indices
from sparsenas_jax.data.ptb import batchify
from sparsenas_jax.data.ptb import Corpus
from sparsenas_jax.data.ptb import eval_windows
from sparsenas_jax.data.ptb import load_ptb
from sparsenas_jax.data.ptb import steps_per_epoch as ptb_steps_per_epoch
from sparsenas_jax.data.ptb import tiny_corpus
from sparsenas_jax.data.ptb import train_windows
from sparsenas_jax.data.ptb import unigram_perplexity
from sparsenas_jax.data.ptb import window
from sparsenas_jax.data.splits import ImageSplits
from sparsenas_jax.data.splits import load_image_splits
from sparsenas_jax.data.tfds_images import CIFAR100_MEAN
from sparsenas_jax.data.tfds_images import CIFAR100_STD
from sparsenas_jax.data.tfds_images import CIFAR10_MEAN
from sparsenas_jax.data.tfds_images import CIFAR10_STD
from sparsenas_jax.data.tfds_images import DatasetNotPreparedError
from sparsenas_jax.data.tfds_images import image_data_source
from sparsenas_jax.data.tfds_images import load_image_dataset
from sparsenas_jax.data.tfds_images import NORMALIZATION
from sparsenas_jax.data.tfds_images import prepared_builder
from sparsenas_jax.data.tfds_images import TensorFlowRequiredError

__all__ = [
    'CIFAR100_MEAN', 'CIFAR100_STD', 'CIFAR10_MEAN', 'CIFAR10_STD',
    'Corpus', 'DatasetNotPreparedError', 'ImageSplits', 'NORMALIZATION',
    'TensorFlowRequiredError',
    'batch_at', 'batch_indices', 'channel_stats', 'color_jitter', 'cutout',
    'darts_augment',
    'digits_splits', 'epoch_permutation', 'image_data_source',
    'load_digits', 'load_image_dataset', 'load_image_splits', 'normalize',
    'part_sizes',
    'prepared_builder', 'random_crop', 'random_flip', 'split_indices',
    'steps_per_epoch',
    # PTB text (the PTB steps_per_epoch is data.ptb_steps_per_epoch).
    'batchify', 'eval_windows', 'load_ptb', 'ptb_steps_per_epoch',
    'tiny_corpus', 'train_windows', 'unigram_perplexity', 'window',
]
