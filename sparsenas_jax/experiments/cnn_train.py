"""Trains a derived mixed-path architecture from scratch (DARTS evaluation).

The searched cells (a ``genotype.json`` from the search job, or a registered
genotype such as ``darts_v2``) are stacked into ``models.EvalNetwork`` and
trained with DARTS's evaluation recipe: SGD with momentum, a per-epoch
learning rate (cosine for CIFAR, ×0.97 per epoch for ImageNet), weight decay,
gradient clipping, the auxiliary head, drop path ramped linearly over the
epochs, cutout (CIFAR) and label smoothing (ImageNet). The test error is
reported every ``eval_every_epochs`` and at the end, in ``results.json``.

Each step is one jitted pure function of (state, batch, key); the drop path
probability is computed inside it from the step count, so nothing recompiles
as it ramps. Checkpoints (Orbax) hold the whole state; a rerun of the same
command resumes from the latest one, on the same batches.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sparsenas_jax import data
from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax.data import imagenet
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.experiments import common
from sparsenas_jax.models import complexity
from sparsenas_jax.models import eval_network
from sparsenas_jax.runtime import compilation
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import evaluation
from sparsenas_jax.runtime import loop

DATASETS = data.splits.DATASETS + ('imagenet2012',)
LR_SCHEDULES = ('cosine', 'exponential')


class TrainState(NamedTuple):
  """Everything a step changes; checkpointed whole."""
  step: jax.Array  # int32 scalar, steps taken
  params: Any
  batch_stats: Any  # BN running statistics
  opt_state: Any


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def load_genotype(config) -> genotype_lib.Genotype:
  """The genotype named by ``config.genotype``; ConfigError if it is bad."""
  if not config.genotype:
    raise ConfigError(
        'config.genotype is empty: pass --config.genotype=WORKDIR/'
        f'genotype.json from a search, or one of '
        f'{", ".join(sorted(genotype_lib.GENOTYPES))}.')
  try:
    return genotype_lib.resolve_genotype(config.genotype)
  except (ValueError, OSError) as e:
    raise ConfigError(f'config.genotype: {e}') from None


def validate(config) -> genotype_lib.Genotype:
  """Checks the config; returns the genotype to train."""
  common.check_cnn_config(config, DATASETS)
  if config.lr_schedule not in LR_SCHEDULES:
    raise ConfigError(f'config.lr_schedule={config.lr_schedule!r}; valid: '
                      f'{LR_SCHEDULES}.')
  if not 0 <= config.drop_path_prob < 1:
    raise ConfigError(f'config.drop_path_prob={config.drop_path_prob}: use '
                      '[0, 1).')
  if not 0 <= config.label_smoothing < 1:
    raise ConfigError(f'config.label_smoothing={config.label_smoothing}: use '
                      '[0, 1).')
  if config.cutout < 0 or config.crop_padding < 0:
    raise ConfigError('config.cutout and config.crop_padding must be >= 0.')
  return load_genotype(config)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


class TrainData(NamedTuple):
  num_train: int
  train_batch: Callable[[int], dict[str, np.ndarray]]  # step -> batch
  num_test: int
  test_slice: Callable[[int, int], dict[str, np.ndarray]]  # [start, stop)
  mean: np.ndarray
  std: np.ndarray
  num_classes: int
  image_shape: tuple[int, int, int]


def _in_memory(train, test, batch_size, seed, mean, std, num_classes):
  def train_batch(step):
    images, labels = data.batch_at(train, batch_size, seed, step)
    return {'image': images, 'label': labels}
  return TrainData(
      len(train[0]), train_batch, len(test[0]),
      lambda a, b: {'image': test[0][a:b], 'label': test[1][a:b]},
      np.asarray(mean, np.float32), np.asarray(std, np.float32), num_classes,
      tuple(train[0].shape[1:]))


def load_data(config) -> TrainData:
  """The whole training set and the test set (ImageNet: its validation set).

  DIGITS, CIFAR-10 and CIFAR-100 are held in memory (uint8 CIFAR images;
  scaled, augmented and normalised on the device). ImageNet is read per
  batch from a prepared ArrayRecord TFDS source and cropped on the host.
  """
  data_dir = config.data_dir or None
  if config.dataset != 'imagenet2012':
    splits = data.load_image_splits(config.dataset, seed=config.seed,
                                    train_portion=1.0, data_dir=data_dir)
    return _in_memory(splits.train, splits.test, config.batch_size,
                      config.seed, splits.mean, splits.std,
                      splits.num_classes)
  mean, std = data.NORMALIZATION[config.dataset]
  train = imagenet.ImageNetBatches(
      data.image_data_source('imagenet2012', 'train', data_dir=data_dir),
      config.batch_size, config.seed, train=True)
  test = imagenet.ImageNetBatches(
      data.image_data_source('imagenet2012', 'validation',
                             data_dir=data_dir),
      config.batch_size, config.seed, train=False)
  size = imagenet.IMAGE_SIZE
  return TrainData(len(train), train.batch_at, len(test), test.ordered,
                   np.asarray(mean, np.float32),
                   np.asarray(std, np.float32), imagenet.NUM_CLASSES,
                   (size, size, 3))


# ---------------------------------------------------------------------------
# Model, optimizer, steps.
# ---------------------------------------------------------------------------


def make_model(config, genotype, num_classes: int) -> eval_network.EvalNetwork:
  return eval_network.EvalNetwork(
      genotype, C=config.init_channels, num_classes=num_classes,
      layers=config.layers, auxiliary=config.auxiliary_weight > 0,
      stem='imagenet' if config.dataset == 'imagenet2012' else 'cifar',
      scale_by_arch_weights=config.scale_by_arch_weights,
      drop_path=config.drop_path_prob > 0)


def learning_rate_schedule(config, steps_per_epoch: int):
  """The learning rate of a step: set per epoch, as DARTS's schedulers.

  ``cosine``: lr_min + (lr - lr_min)(1 + cos(π e / epochs)) / 2 at epoch e;
  ``exponential``: lr · decay^e (ImageNet: 0.97).
  """
  lr, lr_min, epochs = (config.learning_rate, config.learning_rate_min,
                        config.epochs)

  def schedule(step):
    epoch = (step // steps_per_epoch).astype(jnp.float32)
    if config.lr_schedule == 'exponential':
      return lr * config.lr_decay ** epoch
    return lr_min + (lr - lr_min) * 0.5 * (1 + jnp.cos(jnp.pi * epoch /
                                                       epochs))
  return schedule


def make_optimizer(config, steps_per_epoch: int):
  # Weight decay on every parameter, BN included, as DARTS.
  return common.darts_sgd(learning_rate_schedule(config, steps_per_epoch),
                          grad_clip=config.grad_clip,
                          weight_decay=config.weight_decay,
                          momentum=config.momentum)


def _cross_entropy(logits, labels, smoothing: float):
  if not smoothing:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  targets = optax.smooth_labels(
      jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _augment(config, key, images, mean, std):
  """Training transform on the device (ImageNet's crop ran on the host)."""
  images = common.as_float(images)
  if config.dataset == 'imagenet2012':
    images = data.color_jitter(key, images, config.color_jitter)
    return data.normalize(images, mean, std)
  return data.darts_augment(key, images, pad=config.crop_padding,
                            flip=config.flip, mean=mean, std=std,
                            cutout_size=config.cutout)


def make_train_step(config, model, optimizer, steps_per_epoch: int, mean,
                    std):
  """The pure training step: (state, batch, key) -> (state, metrics)."""
  total_epochs = config.epochs

  def step(state: TrainState, batch, key):
    augment_key, dropout_key = jax.random.split(key)
    images = _augment(config, augment_key, batch['image'], mean, std)
    labels = batch['label']
    # DARTS: drop_path_prob * epoch / epochs, epoch counted from 0.
    epoch = (state.step // steps_per_epoch).astype(jnp.float32)
    drop_prob = config.drop_path_prob * epoch / total_epochs

    def loss_fn(params):
      (logits, aux), updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, images,
          train=True, drop_prob=drop_prob, rngs={'dropout': dropout_key},
          mutable=['batch_stats'])
      loss = _cross_entropy(logits, labels, config.label_smoothing).mean()
      total = loss
      if aux is not None:
        total = total + config.auxiliary_weight * _cross_entropy(
            aux, labels, config.label_smoothing).mean()
      return total, (loss, logits, updates['batch_stats'])

    (_, (loss, logits, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state,
                                          state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'train_loss': loss,
               'train_accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
               'drop_prob': drop_prob,
               divergence.KEY: divergence.finite_flags(
                   train_loss=loss, gradient=grads, params=params,
                   batch_stats=batch_stats)}
    return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

  return step


def make_eval_step(model, mean, std):
  """Masked sums of correct top-1 / top-5 predictions and of losses."""
  def eval_step(params, batch_stats, batch):
    images = data.normalize(common.as_float(batch['image']), mean, std)
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats},
                            images, train=False)
    labels = batch['label']
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    return evaluation.masked_sums({
        'accuracy': top_k[:, 0] == labels,
        'top5_accuracy': jnp.any(top_k == labels[:, None], -1),
        'loss': optax.softmax_cross_entropy_with_integer_labels(
            logits, labels)}, batch['mask'])
  return eval_step


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def model_complexity(model, variables, image_shape) -> dict[str, float]:
  """Parameters (without the auxiliary head) and multiply-adds per image."""
  macs = complexity.count_macs(
      lambda x: model.apply(variables, x, train=False)[0],
      jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
  return {'params': eval_network.count_eval_params(variables['params']),
          'params_with_aux': sum(int(np.size(x)) for x in jax.tree.leaves(
              variables['params'])),
          'macs': macs}


DIVERGENCE_HINT = 'config.learning_rate (or config.grad_clip)'
LOG_KEYS = (('train_loss', '.3f'), ('train_accuracy', '.3f'),
            ('test_error', '.4f'), ('learning_rate', '.4f'),
            ('drop_prob', '.3f'))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes training) the genotype; returns the final metrics."""
  genotype = validate(config)
  mesh = loop.start(config, workdir)
  train_data = load_data(config)
  if config.batch_size > train_data.num_train:
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds the '
                      f'training set ({train_data.num_train} examples).')
  steps_per_epoch = data.steps_per_epoch(train_data.num_train,
                                         config.batch_size)
  total_steps = steps_per_epoch * config.epochs
  # A rerun's stored programs start loading now, while the state is built.
  # The genotype may come from a file: its text is part of the key.
  store = compilation.job_store(
      config, workdir, genotype.to_json(), np.asarray(train_data.mean).tolist(),
      np.asarray(train_data.std).tolist(), train_data.num_classes,
      steps_per_epoch)
  model = make_model(config, genotype, train_data.num_classes)
  sample = jnp.zeros((1,) + train_data.image_shape, jnp.float32)
  variables = eval_network.init_variables(model, sample, config.seed)
  sizes = model_complexity(model, variables, train_data.image_shape)
  logging.info('network: %.3fM params (%.3fM with the auxiliary head), '
               '%.1fM multiply-adds per image; %d steps/epoch',
               sizes['params'] / 1e6, sizes['params_with_aux'] / 1e6,
               sizes['macs'] / 1e6, steps_per_epoch)
  optimizer = make_optimizer(config, steps_per_epoch)
  mean = jnp.asarray(train_data.mean)
  std = jnp.asarray(train_data.std)
  lr_schedule = learning_rate_schedule(config, steps_per_epoch)

  def init_state():
    return TrainState(jnp.zeros([], jnp.int32), variables['params'],
                      variables['batch_stats'],
                      optimizer.init(variables['params']))

  def compile_step(state, batch, key):
    compiled, _ = compilation.compile_step(
        make_train_step(config, model, optimizer, steps_per_epoch, mean, std),
        (state, batch, key), cpu_fast_compile=config.cpu_fast_compile,
        donate=(0,), store=store, name='train_step')
    return compiled

  eval_step = compilation.LazyCompiled(
      make_eval_step(model, mean, std),
      cpu_fast_compile=config.cpu_fast_compile, store=store, name='eval_step')

  def evaluate(state):
    test = evaluation.evaluate(
        eval_step, (state.params, state.batch_stats), train_data.test_slice,
        train_data.num_test, config.batch_size, mesh,
        config.eval_limit or None)
    test['error'] = 1 - test['accuracy']
    return {f'test_{k}': v for k, v in test.items()}

  def epoch_scalars(state, step):
    del state
    return {'learning_rate': float(lr_schedule(jnp.asarray(step - 1)))}

  job = loop.Job(
      init_state=init_state, compile=compile_step,
      batch_at=train_data.train_batch, total_steps=total_steps,
      steps_per_epoch=steps_per_epoch, seed=config.seed,
      divergence_hint=DIVERGENCE_HINT, evaluate=evaluate,
      eval_every_epochs=config.eval_every_epochs, epoch_scalars=epoch_scalars,
      log_keys=LOG_KEYS)
  state, summary = loop.run(job, workdir, mesh)
  summary.update(sizes)
  summary.update({
      'images_per_s': summary.get('steps_per_s', 0.0) * config.batch_size,
      'eval_compile_s': eval_step.compile_s, 'programs_loaded': store.loaded,
      'genotype': config.genotype, 'dataset': config.dataset,
      'epochs': config.epochs, 'steps': int(state.step),
      'peak_rss_gb': resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 2**20})
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(summary, f, indent=1)
  logging.info('test error %.4f (top-5 %.4f) after %d epochs; %.3fM params',
               summary['test_error'], 1 - summary['test_top5_accuracy'],
               config.epochs, sizes['params'] / 1e6)
  return summary
