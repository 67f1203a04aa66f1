"""ImageNet batches on the host: decode, crop and resize with PIL, in threads.

ImageNet neither fits in memory nor has one image size, so, unlike CIFAR,
its geometric augmentation runs on the host, per image, over a TFDS random
access source (``tfds_images.image_data_source``; any sequence of
``{'image': uint8 HWC, 'label': int}`` works). Batches are indexed by global
step (``batching.batch_indices``), so a resumed run reads the same batches;
the random crop of each image is seeded by (seed, step, position).

* training: DARTS's ``RandomResizedCrop(224)`` (area 8-100 %, aspect ratio
  3/4-4/3, ten tries, then a centre crop) and a horizontal flip; the colour
  jitter runs on the device (``augment.color_jitter``);
* evaluation: resize the shorter side to 256, centre crop 224.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
import math
from typing import Any

import numpy as np
from PIL import Image

from sparsenas_jax.data.batching import batch_indices

IMAGE_SIZE = 224
RESIZE = 256
NUM_CLASSES = 1000


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  return np.asarray(Image.fromarray(image).resize(
      (width, height), Image.BILINEAR))


def random_resized_crop(image: np.ndarray, rng: np.random.Generator,
                        size: int = IMAGE_SIZE, scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """A random crop of random area and aspect ratio, resized to size x size.

  The sampling of torchvision's ``RandomResizedCrop``: area uniform in
  ``scale`` of the image, log aspect ratio uniform in ``log(ratio)``, up to
  ten tries for a crop that fits, else the largest centre crop with the
  aspect ratio clipped to ``ratio``.
  """
  h, w = image.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      top = int(rng.integers(0, h - ch + 1))
      left = int(rng.integers(0, w - cw + 1))
      return _resize(image[top:top + ch, left:left + cw], size, size)
  aspect = w / h
  if aspect < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif aspect > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  top, left = (h - ch) // 2, (w - cw) // 2
  return _resize(image[top:top + ch, left:left + cw], size, size)


def center_crop(image: np.ndarray, size: int = IMAGE_SIZE,
                resize: int = RESIZE) -> np.ndarray:
  """Shorter side resized to ``resize``, then the central size x size."""
  h, w = image.shape[:2]
  if h <= w:
    nh, nw = resize, max(resize, int(round(w * resize / h)))
  else:
    nw, nh = resize, max(resize, int(round(h * resize / w)))
  image = _resize(image, nh, nw)
  top, left = (nh - size) // 2, (nw - size) // 2
  return image[top:top + size, left:left + size]


def _rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[:, :, None]
  return np.broadcast_to(image, image.shape[:2] + (3,)) if (
      image.shape[2] == 1) else image


class ImageNetBatches:
  """Step-indexed uint8 batches ``{'image': [B, 224, 224, 3], 'label': [B]}``.

  Args:
    source: a random access sequence of ``{'image', 'label'}`` examples.
    batch_size: examples per batch.
    seed: stream seed (the order of examples and the crops).
    train: training augmentation, else the evaluation crop.
    workers: threads decoding and cropping (PIL releases the GIL).
  """

  def __init__(self, source: Sequence[Any], batch_size: int, seed: int, *,
               train: bool, workers: int = 16):
    self._source, self._batch_size = source, batch_size
    self._seed, self._train = seed, train
    self._pool = futures.ThreadPoolExecutor(workers)

  def __len__(self) -> int:
    return len(self._source)

  def _example(self, index: int, step: int, position: int):
    example = self._source[int(index)]
    image = _rgb(example['image'])
    if self._train:
      rng = np.random.default_rng([self._seed, step, position])
      image = random_resized_crop(image, rng)
      if rng.random() < 0.5:
        image = image[:, ::-1]
    else:
      image = center_crop(image)
    return np.ascontiguousarray(image), int(example['label'])

  def _assemble(self, indices: np.ndarray, step: int) -> dict[str, Any]:
    examples = list(self._pool.map(
        lambda args: self._example(*args),
        [(i, step, p) for p, i in enumerate(indices)]))
    return {'image': np.stack([e[0] for e in examples]),
            'label': np.asarray([e[1] for e in examples], np.int32)}

  def batch_at(self, step: int) -> dict[str, Any]:
    """The training batch of global step ``step``."""
    return self._assemble(batch_indices(len(self._source), self._batch_size,
                                        self._seed, step), step)

  def ordered(self, start: int, stop: int) -> dict[str, Any]:
    """Examples ``[start, stop)`` in order (for evaluation)."""
    return self._assemble(np.arange(start, stop), 0)
