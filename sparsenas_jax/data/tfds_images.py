"""CIFAR-10/100 (and ImageNet) through TensorFlow Datasets, held in memory.

Nothing here downloads. A data set must already be prepared under
``data_dir`` (by default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``);
otherwise ``DatasetNotPreparedError`` says, in one line, how to prepare it.

Prepared files are read without TensorFlow when they are ArrayRecord files
(``tfds build <name> --file_format=array_record``), through TFDS's random
access data source. TFRecord files (TFDS's default) are read with
``tfds.load``, which needs TensorFlow: ``pip install -e ".[tfds]"``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from typing import Any, Optional

import numpy as np

# Per-channel statistics of the training images, on [0, 1] pixels.
# CIFAR-10: the DARTS constants.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# CIFAR-100: the statistics commonly used for it (e.g. by P-DARTS).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
# ImageNet: the usual torchvision statistics, as used by DARTS.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATION = {
    'cifar10': (CIFAR10_MEAN, CIFAR10_STD),
    'cifar100': (CIFAR100_MEAN, CIFAR100_STD),
    'imagenet2012': (IMAGENET_MEAN, IMAGENET_STD),
}
SUPPORTED_DATASETS = tuple(NORMALIZATION)
# ImageNet's images vary in size and do not fit in memory.
IN_MEMORY_DATASETS = ('cifar10', 'cifar100')

_BATCH_READ = 4096  # Records decoded per data source request.


class DatasetNotPreparedError(ValueError):
  """The TFDS data set is not on disk; the message says how to get it."""


class TensorFlowRequiredError(ImportError):
  """Reading these prepared TFDS files needs TensorFlow."""


def _has_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


@contextlib.contextmanager
def _quiet_absl():
  """Hides TFDS's warnings about a missing dataset folder (we raise one)."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _not_prepared_message(name: str, data_dir: str) -> str:
  build = (f'`tfds build {name} --data_dir={data_dir} '
           '--file_format=array_record`')
  if name == 'imagenet2012':
    manual = os.path.join(data_dir, 'downloads', 'manual')
    return (
        f"TFDS dataset '{name}' is not prepared under {data_dir}: it needs a "
        'manual download: get ILSVRC2012_img_train.tar and '
        'ILSVRC2012_img_val.tar from https://image-net.org (registration '
        f'required) into {manual}, then run {build} (or point '
        '--config.data_dir at a prepared copy), or use the `digits` variant, '
        'which needs no download.')
  return (
      f"TFDS dataset '{name}' is not prepared under {data_dir}: run {build} "
      'on a machine with internet (or point --config.data_dir at a prepared '
      'copy), or use the `digits` variant, which needs no download.')


def prepared_builder(name: str, *, data_dir: Optional[str] = None):
  """The TFDS builder of a prepared data set; never downloads.

  Args:
    name: one of ``SUPPORTED_DATASETS``.
    data_dir: the TFDS data directory; None for TFDS's default.

  Returns:
    A ``tfds.core.DatasetBuilder`` whose files are on disk.

  Raises:
    ValueError: for an unsupported name.
    DatasetNotPreparedError: when the data set is not prepared under
      ``data_dir``.
  """
  if name not in SUPPORTED_DATASETS:
    raise ValueError(
        f'Unsupported dataset {name!r}; expected one of {SUPPORTED_DATASETS}.')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with _quiet_absl():
    # Builds metadata from the code (TFDS's GCS metadata lookup is off), and
    # is_prepared only looks at the local files: no network.
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  if not prepared:
    raise DatasetNotPreparedError(
        _not_prepared_message(name, os.fspath(builder.data_dir_root)))
  return builder


def _random_access(builder) -> bool:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return bool(builder.info.available_file_formats()
              & tfds.core.FileFormat.with_random_access())


def image_data_source(name: str, split: str, *,
                      data_dir: Optional[str] = None) -> Any:
  """A TF-free random access source over a prepared ArrayRecord data set.

  For data too large to hold in memory (ImageNet); each element is a dict
  with ``'image'`` (uint8 HWC) and ``'label'``.

  Args:
    name: one of ``SUPPORTED_DATASETS``.
    split: a TFDS split, e.g. ``'train'``, ``'test'`` or ``'train[:90%]'``.
    data_dir: the TFDS data directory; None for TFDS's default.

  Returns:
    A sequence supporting ``len``, ``[i]`` and ``__getitems__``.

  Raises:
    DatasetNotPreparedError: when the data set is not prepared.
    ValueError: when the prepared files are not ArrayRecord.
  """
  builder = prepared_builder(name, data_dir=data_dir)
  if not _random_access(builder):
    raise ValueError(
        f"TFDS dataset '{name}' under {builder.data_dir_root} is stored as "
        f'{builder.info.file_format.value}, which has no random access: '
        f'rebuild it with `tfds build {name} --file_format=array_record`.')
  return builder.as_data_source(split=split)


def _read_data_source(source) -> tuple[np.ndarray, np.ndarray]:
  images, labels = [], []
  for start in range(0, len(source), _BATCH_READ):
    keys = range(start, min(start + _BATCH_READ, len(source)))
    for example in source.__getitems__(keys):
      images.append(example['image'])
      labels.append(example['label'])
  return np.stack(images).astype(np.uint8), np.asarray(labels, np.int32)


def load_image_dataset(name: str, split: str, *,
                       data_dir: Optional[str] = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """A whole split of a prepared TFDS image data set, as NumPy arrays.

  Args:
    name: ``'cifar10'`` or ``'cifar100'`` (fine labels). ``'imagenet2012'`` is
      recognised, to say how to prepare it (a manual download of the
      ILSVRC2012 tarballs into ``<data_dir>/downloads/manual``), but is too
      large to hold in memory: read it with ``image_data_source``.
    split: a TFDS split, e.g. ``'train'``, ``'test'`` or ``'train[:90%]'``.
    data_dir: the TFDS data directory; None for TFDS's default
      (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

  Returns:
    ``(images, labels)``: uint8 NHWC images and int32 labels, in the order
    of the prepared files.

  Raises:
    DatasetNotPreparedError: at once, when the data set is not prepared
      under ``data_dir`` (nothing is downloaded).
    TensorFlowRequiredError: when the prepared files are TFRecord files and
      TensorFlow is not installed.
  """
  builder = prepared_builder(name, data_dir=data_dir)
  if name not in IN_MEMORY_DATASETS:
    raise ValueError(
        f"'{name}' does not fit in memory: load_image_dataset reads "
        f'{IN_MEMORY_DATASETS}; stream it with image_data_source instead.')
  if _random_access(builder):
    return _read_data_source(builder.as_data_source(split=split))
  if not _has_tensorflow():
    raise TensorFlowRequiredError(
        f"TFDS dataset '{name}' under {builder.data_dir_root} is stored as "
        f'{builder.info.file_format.value} files, which need TensorFlow to '
        'read: run `pip install -e ".[tfds]"` (or rebuild the data with '
        '`tfds build --file_format=array_record`, read without TensorFlow).')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = tfds.as_numpy(tfds.load(
      name, split=split, data_dir=data_dir, batch_size=-1,
      as_supervised=True, download=False))
  return np.asarray(images, np.uint8), np.asarray(labels, np.int32)
