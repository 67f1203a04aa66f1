"""DARTS's CIFAR training augmentation as jit-able JAX functions.

All functions take a batch of NHWC float images and draw independent
randomness for every example from one ``jax.random`` key, without a Python
loop over examples. Sizes (``pad``, ``size``) and switches (``flip``) are
Python values, fixed when a step is traced.

DARTS trains on ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
``Normalize(mean, std)`` and, when evaluating a derived network, ``Cutout(16)``
after the normalisation; ``darts_augment`` applies them in that order. For
8x8 DIGITS a crop padding of 1 and no flip (digits are not mirror symmetric)
play the same role.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def normalize(images: Array, mean, std) -> Array:
  """``(images - mean) / std``, broadcast over the channel (last) axis.

  Args:
    images: NHWC images (scaled to [0, 1] for the DARTS constants).
    mean: per-channel means, shape ``(C,)`` (or a scalar).
    std: per-channel standard deviations, shape ``(C,)`` (or a scalar).

  Returns:
    The normalised images, in the dtype of ``images``.

  Raises:
    TypeError: for integer images (scale uint8 images to [0, 1] first).
  """
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
        f'normalize expects float images, got {images.dtype}: scale uint8 '
        'images to [0, 1] first (images / 255).')
  mean = jnp.asarray(mean, images.dtype)
  std = jnp.asarray(std, images.dtype)
  return (images - mean) / std


def random_crop(key: Array, images: Array, pad: int) -> Array:
  """Random crops of the zero-padded images, of the original size.

  Each image is padded with ``pad`` zero pixels on all four sides and an
  ``H x W`` window is cut at offsets ``(dy, dx)`` drawn uniformly from
  ``{0, ..., 2 * pad}``: ``jax.random.randint(key, (N, 2), 0, 2 * pad + 1)``.

  Args:
    key: a PRNG key.
    images: NHWC batch.
    pad: zero padding in pixels (4 for 32x32 CIFAR); 0 returns the images.

  Returns:
    The cropped batch, of the shape and dtype of ``images``.
  """
  if pad < 0:
    raise ValueError(f'pad must be >= 0, got {pad}.')
  if pad == 0:
    return images
  n, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(key, (n, 2), 0, 2 * pad + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def random_flip(key: Array, images: Array) -> Array:
  """Mirrors each image left-right with probability 1/2.

  Image ``i`` is flipped where ``jax.random.bernoulli(key, 0.5, (N,))[i]``.

  Args:
    key: a PRNG key.
    images: NHWC batch.

  Returns:
    The batch with some images flipped along the width axis.
  """
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def cutout(key: Array, images: Array, size: int) -> Array:
  """Zeroes a ``size x size`` square at a random centre of each image.

  As DARTS's ``Cutout``: the centre ``(cy, cx)`` is uniform over the pixels
  (``jax.random.randint(key, (N, 2), 0, (H, W))``), the square covers rows
  ``[cy - size // 2, cy + size // 2)`` and the same columns, clipped at the
  borders, in every channel. An odd ``size`` therefore masks ``size - 1``
  pixels a side, as in DARTS.

  Args:
    key: a PRNG key.
    images: NHWC batch.
    size: side of the square; 0 returns the images.

  Returns:
    The batch with one (clipped) square of zeros per image.
  """
  if size < 0:
    raise ValueError(f'size must be >= 0, got {size}.')
  if size == 0:
    return images
  n, h, w, _ = images.shape
  centre = jax.random.randint(key, (n, 2), 0, jnp.array([h, w]))
  half = size // 2
  rows = jnp.arange(h)[None, :]
  cols = jnp.arange(w)[None, :]
  cy, cx = centre[:, :1], centre[:, 1:]
  in_rows = (rows >= cy - half) & (rows < cy + half)  # (N, H)
  in_cols = (cols >= cx - half) & (cols < cx + half)  # (N, W)
  keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
  return images * keep[..., None].astype(images.dtype)


def color_jitter(key: Array, images: Array, strength: float) -> Array:
  """Random brightness, contrast and saturation, as torchvision's ColorJitter.

  Each image gets three factors uniform in ``[1 - strength, 1 + strength]``,
  applied in this order: brightness scales the pixels, contrast blends with
  the image's mean grey level, saturation blends with the per-pixel grey
  (ITU-R 601 luma); values are clipped to [0, 1] after each. (DARTS's
  ImageNet jitter also shifts hue by up to 0.2; that is not done here.)

  Args:
    key: a PRNG key.
    images: NHWC RGB float batch in [0, 1].
    strength: 0.4 in DARTS; 0 returns the images.

  Returns:
    The jittered batch.
  """
  if strength < 0:
    raise ValueError(f'strength must be >= 0, got {strength}.')
  if strength == 0:
    return images
  n = images.shape[0]
  f = jax.random.uniform(key, (3, n, 1, 1, 1), images.dtype, 1 - strength,
                         1 + strength)
  luma = jnp.asarray([0.299, 0.587, 0.114], images.dtype)
  grey = lambda x: jnp.sum(x * luma, axis=-1, keepdims=True)
  x = jnp.clip(images * f[0], 0, 1)
  mean = jnp.mean(grey(x), axis=(1, 2, 3), keepdims=True)
  x = jnp.clip(mean + f[1] * (x - mean), 0, 1)
  g = grey(x)
  return jnp.clip(g + f[2] * (x - g), 0, 1)


def darts_augment(key: Array, images: Array, *, pad: int, flip: bool,
                  mean=None, std=None, cutout_size: int = 0) -> Array:
  """DARTS's training transform: crop, flip, normalise, cutout.

  Args:
    key: a PRNG key (split three ways).
    images: NHWC float batch in [0, 1] (not yet normalised).
    pad: crop padding (``random_crop``); 0 for no crop.
    flip: whether to apply ``random_flip``.
    mean: per-channel means for ``normalize``; None to skip normalising.
    std: per-channel standard deviations; None to skip normalising.
    cutout_size: ``cutout`` square size; 0 (DARTS search) for no cutout.

  Returns:
    The augmented batch.
  """
  if (mean is None) != (std is None):
    raise ValueError('Give both mean and std, or neither.')
  crop_key, flip_key, cutout_key = jax.random.split(key, 3)
  images = random_crop(crop_key, images, pad)
  if flip:
    images = random_flip(flip_key, images)
  if mean is not None:
    images = normalize(images, mean, std)
  return cutout(cutout_key, images, cutout_size)

