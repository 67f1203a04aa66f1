"""Tests for sparsenas_jax.data: DIGITS, batching, augmentation, TFDS."""

import io
import json
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax import data
from sparsenas_jax.data import tfds_images


# ---------------------------------------------------------------- DIGITS


def test_load_digits_shapes_dtypes_range():
  x, y = data.load_digits()
  assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
  assert y.shape == (1797,) and y.dtype == np.int32
  assert x.min() == 0. and x.max() == 1.
  # Pixel counts 0..16 divided by 16.
  np.testing.assert_array_equal(x * 16, np.round(x * 16))
  assert set(np.unique(y)) == set(range(10))
  xf, yf = data.load_digits(flat=True)
  assert xf.shape == (1797, 64)
  np.testing.assert_array_equal(xf, x.reshape(1797, 64))
  np.testing.assert_array_equal(yf, y)


def test_part_sizes():
  np.testing.assert_array_equal(data.part_sizes(10, (.5, .5)), [5, 5])
  np.testing.assert_array_equal(data.part_sizes(10, (.25, .75)), [3, 7])
  np.testing.assert_array_equal(data.part_sizes(7, (1 / 3,) * 3), [3, 2, 2])
  np.testing.assert_array_equal(data.part_sizes(7, (1., 0.)), [7, 0])
  for bad in [(.5, .4), (1.2, -.2), ()]:
    with pytest.raises(ValueError):
      data.part_sizes(10, bad)


@pytest.mark.parametrize('fractions', [(.5, .5), (.37, .21, .42), (.9, .1)])
def test_split_indices_disjoint_exhaustive_stratified(fractions):
  _, y = data.load_digits()
  parts = data.split_indices(y, fractions, seed=3)
  np.testing.assert_array_equal(
      [len(p) for p in parts], data.part_sizes(len(y), fractions))
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)),
                                np.arange(len(y)))
  class_counts = np.bincount(y)
  for part, f in zip(parts, fractions):
    assert np.all(np.diff(part) > 0)  # sorted, no repeats
    deviation = np.bincount(y[part], minlength=10) - f * class_counts
    assert np.abs(deviation).max() <= 1.5, deviation


def test_split_indices_unstratified_differs_from_stratified():
  # Labels sorted by class: an unstratified split of a small part can miss
  # classes entirely; the stratified one cannot.
  y = np.repeat(np.arange(10), 10)
  for seed in range(5):
    strat, _ = data.split_indices(y, (.1, .9), seed=seed)
    np.testing.assert_array_equal(np.bincount(y[strat], minlength=10),
                                  np.ones(10))
  misses = 0
  for seed in range(5):
    plain, _ = data.split_indices(y, (.1, .9), seed=seed, stratify=False)
    misses += np.any(np.bincount(y[plain], minlength=10) != 1)
  assert misses > 0
  # An int means "no labels".
  a, b = data.split_indices(100, (.3, .7), seed=0)
  assert len(a) == 30 and len(b) == 70 and not set(a) & set(b)


def test_split_indices_deterministic_per_seed():
  _, y = data.load_digits()
  a = data.split_indices(y, (.5, .5), seed=7)
  b = data.split_indices(y, (.5, .5), seed=7)
  c = data.split_indices(y, (.5, .5), seed=8)
  for p, q in zip(a, b):
    np.testing.assert_array_equal(p, q)
  assert not np.array_equal(a[0], c[0])


def _image_ids(images):
  return [image.tobytes() for image in images]


def test_digits_splits_search_layout():
  splits = data.digits_splits(0, test_fraction=0.2, train_portion=0.5)
  assert sorted(splits) == ['test', 'train', 'val']
  sizes = {k: len(v[1]) for k, v in splits.items()}
  assert sizes == {'test': 359, 'train': 719, 'val': 719}
  x_all, y_all = data.load_digits()
  label_of = dict(zip(_image_ids(x_all), y_all))
  assert len(label_of) == 1797  # DIGITS images are all distinct
  seen = []
  for x, y in splits.values():
    assert x.dtype == np.float32 and x.shape[1:] == (8, 8, 1)
    assert y.dtype == np.int32
    ids = _image_ids(x)
    # Every example keeps its label.
    assert [label_of[i] for i in ids] == list(y)
    seen += ids
    # Stratified: every class in proportion.
    expected = len(y) / len(y_all) * np.bincount(y_all)
    assert np.abs(np.bincount(y, minlength=10) - expected).max() <= 2
  # Disjoint, and together exactly DIGITS.
  assert len(seen) == len(set(seen)) == 1797


def test_digits_splits_determinism_and_test_independence():
  a = data.digits_splits(1, test_fraction=0.2, train_portion=0.5)
  b = data.digits_splits(1, test_fraction=0.2, train_portion=0.5)
  c = data.digits_splits(2, test_fraction=0.2, train_portion=0.5)
  for k in a:
    np.testing.assert_array_equal(a[k][0], b[k][0])
    np.testing.assert_array_equal(a[k][1], b[k][1])
  assert not np.array_equal(a['test'][0], c['test'][0])
  # The held-out test set does not depend on how the rest is divided.
  d = data.digits_splits(1, test_fraction=0.2, train_portion=0.8)
  np.testing.assert_array_equal(a['test'][0], d['test'][0])


def test_digits_splits_ablation_layout_and_normalize():
  raw = data.digits_splits(4, test_fraction=0., train_portion=0.8)
  assert sorted(raw) == ['train', 'val']
  assert len(raw['train'][1]) == 1438 and len(raw['val'][1]) == 359
  norm = data.digits_splits(4, test_fraction=0., train_portion=0.8,
                            flat=True, normalize=True)
  x_train = raw['train'][0]
  mean, std = x_train.mean(), x_train.std()
  for k in raw:
    assert norm[k][0].shape == (len(raw[k][1]), 64)
    np.testing.assert_allclose(
        norm[k][0], ((raw[k][0] - mean) / std).reshape(-1, 64), atol=1e-5)
  # Statistics of the train split only: train is standardised, val is not
  # exactly.
  assert abs(norm['train'][0].mean()) < 1e-5
  assert abs(norm['train'][0].std() - 1) < 1e-5
  assert abs(norm['val'][0].mean()) > 1e-4
  m, s = data.channel_stats(x_train)
  assert m.shape == s.shape == (1,)
  np.testing.assert_allclose([m[0], s[0]], [mean, std], rtol=1e-5)


def test_digits_splits_bad_arguments():
  with pytest.raises(ValueError):
    data.digits_splits(0, test_fraction=1.)
  with pytest.raises(ValueError):
    data.digits_splits(0, train_portion=0.)


# ---------------------------------------------------------------- batching


def test_steps_per_epoch():
  assert data.steps_per_epoch(10, 3) == 3
  assert data.steps_per_epoch(10, 10) == 1
  with pytest.raises(ValueError, match='larger than the data set'):
    data.steps_per_epoch(10, 11)
  with pytest.raises(ValueError, match='> 0'):
    data.steps_per_epoch(10, 0)


def test_batch_indices_cover_each_epoch_once():
  n, b, seed = 103, 10, 0
  spe = data.steps_per_epoch(n, b)
  epochs = []
  for epoch in range(3):
    idx = np.concatenate([data.batch_indices(n, b, seed, epoch * spe + i)
                          for i in range(spe)])
    assert len(idx) == spe * b == len(np.unique(idx))  # no repeats
    assert idx.min() >= 0 and idx.max() < n
    epochs.append(idx)
  # Each epoch drops a different remainder of 3 examples.
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(np.sort(epochs[0]), np.sort(epochs[1]))
  # Exactly once per epoch when nothing is dropped.
  idx = np.concatenate([data.batch_indices(100, 10, 3, s) for s in range(10)])
  np.testing.assert_array_equal(np.sort(idx), np.arange(100))
  # Epoch order is the documented permutation.
  np.testing.assert_array_equal(
      data.batch_indices(100, 10, 3, 12),
      np.random.default_rng([3, 1]).permutation(100)[20:30])


def test_batch_indices_pure_and_resumable():
  n, b, seed = 50, 8, 11
  stream = [data.batch_indices(n, b, seed, s).copy() for s in range(40)]
  data.epoch_permutation.cache_clear()
  for k in (0, 5, 6, 17, 39):
    data.epoch_permutation.cache_clear()
    resumed = [data.batch_indices(n, b, seed, s) for s in range(k, 40)]
    for s, r in zip(range(k, 40), resumed):
      np.testing.assert_array_equal(r, stream[s])
  assert not np.array_equal(data.batch_indices(n, b, seed + 1, 0), stream[0])
  with pytest.raises(ValueError):
    data.batch_indices(n, b, seed, -1)


def test_batch_indices_are_cached_read_only_and_batch_at():
  data.epoch_permutation.cache_clear()
  for step in range(5):  # one epoch: one permutation drawn
    data.batch_indices(20, 4, 0, step)
  assert data.epoch_permutation.cache_info().misses == 1
  idx = data.batch_indices(20, 4, 0, 0)
  with pytest.raises(ValueError):
    idx[0] = 0
  x = np.arange(20) * 10
  y = np.arange(20)
  xb, yb = data.batch_at((x, y), 4, 0, 0)
  np.testing.assert_array_equal(yb, idx)
  np.testing.assert_array_equal(xb, idx * 10)
  with pytest.raises(ValueError):
    data.batch_at((x, y[:5]), 4, 0, 0)


# ---------------------------------------------------------------- augment

# One batch shape and module-level jitted functions throughout, so that each
# program compiles once for the whole module.
_N, _H, _W, _C = 1024, 8, 8, 3
_jit_crop = jax.jit(data.random_crop, static_argnums=2)
_jit_flip = jax.jit(data.random_flip)
_jit_cutout = jax.jit(data.cutout, static_argnums=2)
_jit_augment = jax.jit(data.darts_augment,
                       static_argnames=('pad', 'flip', 'cutout_size'))


def _batch(low=0.):
  # Continuous random pixels: distinct windows never coincide by chance.
  return np.random.default_rng(0).uniform(
      low, 1., (_N, _H, _W, _C)).astype(np.float32)


@pytest.mark.parametrize('pad', [1, 4])
def test_random_crop_is_a_window_of_the_padded_image(pad):
  x = _batch()
  out = np.asarray(_jit_crop(jax.random.key(0), jnp.asarray(x), pad))
  assert out.shape == x.shape and out.dtype == x.dtype
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  found = np.full((_N, 2), -1)
  for dy in range(2 * pad + 1):
    for dx in range(2 * pad + 1):
      window = padded[:, dy:dy + _H, dx:dx + _W]
      found[np.all(out == window, axis=(1, 2, 3))] = dy, dx
  assert np.all(found >= 0), 'some crop is not a window of the padded image'
  # Every offset in {0..2 pad}^2 occurs, each about equally often.
  counts = np.bincount(found[:, 0] * (2 * pad + 1) + found[:, 1])
  assert len(counts) == (2 * pad + 1) ** 2 and counts.min() > 0
  assert counts.max() < 3 * _N / (2 * pad + 1) ** 2
  # Examples get their own offsets.
  assert len({tuple(f) for f in found[:8]}) > 1


def test_random_crop_pad_zero_is_identity():
  x = jnp.asarray(_batch())
  np.testing.assert_array_equal(_jit_crop(jax.random.key(1), x, 0), x)


def test_random_flip_flips_exactly_when_drawn():
  x = _batch()
  out = np.asarray(_jit_flip(jax.random.key(3), jnp.asarray(x)))
  flipped = np.all(out == np.flip(x, axis=2), axis=(1, 2, 3))
  same = np.all(out == x, axis=(1, 2, 3))
  assert np.all(flipped ^ same)  # each image is one or the other
  assert 0.4 < flipped.mean() < 0.6


def _clipped_interval(line, size):
  """(start, stop) of the zeros of a boolean line, checking they are a
  DARTS cutout interval ``[c - size//2, c + size//2)`` clipped to the line."""
  (where,) = np.nonzero(line)
  start, stop = where[0], where[-1] + 1
  assert stop - start == len(where), 'zeros are not contiguous'
  half, n = size // 2, len(line)
  assert any(max(c - half, 0) == start and min(c + half, n) == stop
             for c in range(n)), (start, stop)
  return start, stop


@pytest.mark.parametrize('size', [4, 5])
def test_cutout_zeroes_a_clipped_square(size):
  x = _batch(low=0.5)  # no zeros before cutout
  out = np.asarray(_jit_cutout(jax.random.key(4), jnp.asarray(x), size))
  zero = out == 0
  np.testing.assert_array_equal(out[~zero], x[~zero])
  sides = set()
  for mask in zero:
    assert np.all(mask == mask[..., :1])  # every channel alike
    rows = _clipped_interval(mask[..., 0].any(1), size)
    cols = _clipped_interval(mask[..., 0].any(0), size)
    expected = np.zeros((_H, _W), bool)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = True
    np.testing.assert_array_equal(mask[..., 0], expected)
    sides.add((rows[1] - rows[0], cols[1] - cols[0]))
  # Whole squares (side 2 * (size // 2)) and squares clipped at a border.
  full = 2 * (size // 2)
  assert (full, full) in sides and len(sides) > 1
  assert all(r <= full and c <= full for r, c in sides)


def test_normalize_and_darts_augment():
  x = jnp.asarray(_batch())
  mean = jnp.array([0.1, 0.2, 0.3])
  std = jnp.array([0.5, 0.25, 2.])
  np.testing.assert_allclose(
      data.normalize(x, mean, std),
      (np.asarray(x) - np.asarray(mean)) / np.asarray(std), rtol=1e-5,
      atol=1e-6)
  with pytest.raises(TypeError):
    data.normalize(jnp.zeros((1, 2, 2, 3), jnp.uint8), mean, std)
  key = jax.random.key(5)
  out = _jit_augment(key, x, pad=1, flip=True, mean=mean, std=std,
                     cutout_size=4)
  # Same as the steps one after the other, in DARTS's order.
  k_crop, k_flip, k_cut = jax.random.split(key, 3)
  want = _jit_flip(k_flip, _jit_crop(k_crop, x, 1))
  want = (np.asarray(want) - np.asarray(mean)) / np.asarray(std)
  want = _jit_cutout(k_cut, jnp.asarray(want, jnp.float32), 4)
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
  # No augmentation at all is the identity.
  np.testing.assert_array_equal(
      _jit_augment(key, x, pad=0, flip=False), x)


# ---------------------------------------------------------------- TFDS


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError(f'network access attempted: {args}')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
def test_unprepared_dataset_fails_fast_offline(tmp_path, no_network, name):
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotPreparedError) as err:
    data.load_image_dataset(name, 'train', data_dir=str(tmp_path))
  assert time.perf_counter() - start < 10
  message = str(err.value)
  assert '\n' not in message
  assert f'tfds build {name}' in message
  assert str(tmp_path) in message and 'digits' in message
  assert isinstance(err.value, ValueError)


def test_unprepared_imagenet_names_the_manual_download(tmp_path, no_network):
  with pytest.raises(data.DatasetNotPreparedError) as err:
    data.load_image_dataset('imagenet2012', 'train', data_dir=str(tmp_path))
  message = str(err.value)
  assert str(tmp_path / 'downloads' / 'manual') in message
  assert 'ILSVRC2012_img_train.tar' in message


def test_unknown_dataset_is_rejected():
  with pytest.raises(ValueError, match='Unsupported dataset'):
    data.load_image_dataset('mnist', 'train')


def _png(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


@pytest.fixture
def fake_cifar10(tmp_path):
  """A tiny CIFAR-10 prepared as ArrayRecord files under tmp_path, TF-free."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  written = {
      'train': (rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
                rng.integers(0, 10, 12)),
      'test': (rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
               rng.integers(0, 10, 5)),
  }

  class FakeCifar10(tfds.builder_cls('cifar10'), skip_registration=True):
    name = 'cifar10'

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._examples(split) for split in written}

    def _examples(self, split):
      images, labels = written[split]
      for i, (image, label) in enumerate(zip(images, labels)):
        key = f'{split}_{i}'
        yield key, {'id': key, 'image': _png(image), 'label': int(label)}

  builder = FakeCifar10(data_dir=str(tmp_path), file_format='array_record')
  builder.download_and_prepare()
  return tmp_path, written, builder


def test_load_prepared_array_record_without_tensorflow(fake_cifar10,
                                                       no_network):
  data_dir, written, _ = fake_cifar10
  for split, (images, labels) in written.items():
    x, y = data.load_image_dataset('cifar10', split, data_dir=str(data_dir))
    assert x.shape == images.shape and x.dtype == np.uint8
    assert y.shape == labels.shape and y.dtype == np.int32
    # TFDS shuffles on write: compare as sets of (image, label).
    assert (sorted((a.tobytes(), int(b)) for a, b in zip(x, y))
            == sorted((a.tobytes(), int(b)) for a, b in zip(images, labels)))
  source = data.image_data_source('cifar10', 'test', data_dir=str(data_dir))
  assert len(source) == 5


def test_tfrecord_files_without_tensorflow_say_how_to_install(
    fake_cifar10, monkeypatch, no_network):
  data_dir, _, builder = fake_cifar10
  # Relabel the prepared files as TFRecord ones (TFDS's default format).
  info_path = builder.data_path / 'dataset_info.json'
  info = json.loads(info_path.read_text())
  info['fileFormat'] = 'tfrecord'
  info_path.write_text(json.dumps(info))
  monkeypatch.setattr(tfds_images, '_has_tensorflow', lambda: False)
  with pytest.raises(data.TensorFlowRequiredError) as err:
    data.load_image_dataset('cifar10', 'train', data_dir=str(data_dir))
  assert 'pip install -e ".[tfds]"' in str(err.value)
  assert '\n' not in str(err.value)


def test_normalization_constants():
  mean, std = data.NORMALIZATION['cifar10']
  np.testing.assert_allclose(mean, (0.4914, 0.4822, 0.4465))
  np.testing.assert_allclose(std, (0.2470, 0.2435, 0.2616))


# ----------------------------------------------------------------------------
# ImageNet host pipeline (on a fake random access source) and colour jitter.
# ----------------------------------------------------------------------------


def _fake_imagenet(n=12):
  rng = np.random.default_rng(0)
  sizes = [(300, 400), (500, 260), (224, 224), (90, 120)]
  return [{'image': rng.integers(0, 256, sizes[i % 4] + (3,), np.uint8)
           if i % 5 else rng.integers(0, 256, sizes[i % 4], np.uint8),
           'label': i % 7} for i in range(n)]


def test_imagenet_batches_are_step_indexed_and_224():
  from sparsenas_jax.data import imagenet
  source = _fake_imagenet()
  train = imagenet.ImageNetBatches(source, 4, seed=3, train=True, workers=2)
  a, b = train.batch_at(5), train.batch_at(5)
  assert a['image'].shape == (4, 224, 224, 3) and a['image'].dtype == np.uint8
  np.testing.assert_array_equal(a['image'], b['image'])  # resumable
  assert not np.array_equal(a['image'], train.batch_at(6)['image'])
  idx = data.batch_indices(len(source), 4, 3, 5)
  np.testing.assert_array_equal(a['label'], [source[i]['label'] for i in idx])
  test = imagenet.ImageNetBatches(source, 4, seed=3, train=False)
  ordered = test.ordered(8, 12)
  np.testing.assert_array_equal(ordered['label'], [1, 2, 3, 4])
  # Grey (2-D) images become three equal channels.
  grey = test.ordered(10, 11)['image'][0]
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_center_crop_geometry():
  from sparsenas_jax.data import imagenet
  # A horizontal ramp: after resizing the short side 300 -> 256 and taking
  # the centre 224 columns, the middle column keeps the middle value.
  ramp = np.tile(np.linspace(0, 255, 600).astype(np.uint8), (300, 1))
  out = imagenet.center_crop(np.stack([ramp] * 3, -1))
  assert out.shape == (224, 224, 3)
  assert abs(int(out[112, 112, 0]) - 127) <= 2
  crop = imagenet.random_resized_crop(np.stack([ramp] * 3, -1),
                                      np.random.default_rng(0))
  assert crop.shape == (224, 224, 3)


def test_color_jitter_factors_on_grey_images():
  # On a constant grey image, contrast and saturation change nothing and
  # brightness multiplies by a factor in [1 - s, 1 + s].
  images = jnp.full((64, 4, 4, 3), 0.5)
  out = np.asarray(data.color_jitter(jax.random.key(0), images, 0.4))
  factors = out[:, 0, 0, 0] / 0.5
  assert np.all(out == out[:, :1, :1, :1])
  assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
  assert factors.std() > 0.1
  assert data.color_jitter(jax.random.key(0), images, 0.0) is images
  colourful = jax.random.uniform(jax.random.key(1), (8, 4, 4, 3))
  jittered = data.color_jitter(jax.random.key(2), colourful, 0.4)
  assert float(jittered.min()) >= 0 and float(jittered.max()) <= 1
