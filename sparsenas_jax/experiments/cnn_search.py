"""SparseNAS CNN cell search (Wu et al. 2021, Alg. 1; DARTS search space).

Each step updates the architecture weights A on a validation batch with the
configured architecture optimizer (AdamHAPG by default) from the bi-level
hypergradient (``bilevel.darts_hypergradient``), with the SGL strength λ
raised by ``config.lambda_step`` every epoch; then the network weights w on a
training batch with SGD (momentum, cosine learning rate, weight decay,
gradient clipping). The step is a pure function of (state, batches, key),
compiled once, as separately compiled programs (``step_compilation='split'``,
the default) or one (``'fused'``); ``runtime.loop`` runs it. At the end the
mixed-path genotype is derived from the exactly sparse proximal point of the
architecture optimizer and written to the workdir (``genotype.json``,
``genotype.png``, ``architecture.npz``, ``search_results.json``).

The job is a library: ``load_data``, ``make_model``, ``create_state``,
``make_search_step``, ``make_eval_step`` and ``run(config, workdir)``.
"""

from __future__ import annotations

import functools
import json
import os
import resource
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sparsenas_jax import bilevel
from sparsenas_jax import data
from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import viz
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.experiments import common
from sparsenas_jax.models import batched_cell
from sparsenas_jax.models import complexity
from sparsenas_jax.models import initialization
from sparsenas_jax.models import supernet
from sparsenas_jax.runtime import compilation
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import evaluation
from sparsenas_jax.runtime import loop
from sparsenas_jax.runtime import parallel
from sparsenas_jax.search_space import DARTS_OPS

DATASETS = data.splits.DATASETS
# 'split': separately compiled programs per step; 'fused': one program.
STEP_COMPILATIONS = ('split', 'fused')


class SearchState(NamedTuple):
  """Everything a step changes; checkpointed whole."""
  step: jax.Array  # int32 scalar, steps taken
  weights: Any  # network weights w (Flax params)
  arch: Any  # architecture weights A, the extrapolated point of (Adam)HAPG
  weight_opt_state: Any
  arch_opt_state: Any


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def parse_ops(ops: str) -> tuple[str, ...]:
  names = tuple(s.strip() for s in ops.split(',') if s.strip())
  unknown = [o for o in names if o not in DARTS_OPS]
  if unknown or not names:
    raise ConfigError(f'config.ops: unknown op {unknown[:1] or ops!r}; use a '
                      f'comma-separated subset of {",".join(DARTS_OPS)}.')
  return names


def validate(config) -> tuple[str, ...]:
  """Checks the config; returns the op names."""
  sweep = config.get('sweep')
  if config.job == 'cnn_search' and sweep is not None and any(
      sweep.values()):
    raise ConfigError('config.sweep.* lists values: run the sweep with '
                      '--config.job=cnn_sweep (experiments/cnn_sweep.py).')
  common.check_cnn_config(config, DATASETS)
  common.check_search_config(config)
  if not 0 < config.train_portion < 1:
    raise ConfigError(f'config.train_portion={config.train_portion}: use '
                      '(0, 1); the rest of the training set validates A.')
  if config.step_compilation not in STEP_COMPILATIONS:
    raise ConfigError(f'config.step_compilation={config.step_compilation!r}; '
                      f'valid: {STEP_COMPILATIONS}.')
  if config.cell_impl not in ('auto',) + supernet.CELL_IMPLS:
    raise ConfigError(f'config.cell_impl={config.cell_impl!r}; valid: '
                      f"{('auto',) + supernet.CELL_IMPLS}.")
  if (config.cell_impl in ('batched', 'stacked', 'scanned') and
      jax.default_backend() == 'gpu'):
    logging.warning(
        'config.cell_impl=%r on a GPU: XLA:GPU (jaxlib 0.11.2, H200) aborted '
        'compiling this cell at the DARTS size (triton_tiling_propagation.cc: '
        '"Check failed: subdim_size_accumulator == dim_size"); if it does, '
        'use --config.cell_impl=auto (the reference cell on GPUs).',
        config.cell_impl)
  return parse_ops(config.ops)


# ---------------------------------------------------------------------------
# Data.
# ---------------------------------------------------------------------------


def load_data(config) -> data.ImageSplits:
  """The training set split into weight (``train``) and architecture
  (``val``) halves by ``config.train_portion``, and the test set.

  Images stay uint8 (CIFAR) or float (DIGITS) on the host; they are scaled,
  augmented and normalised on the device inside the step.
  """
  return data.load_image_splits(
      config.dataset, seed=data_seed(config),
      train_portion=config.train_portion, data_dir=config.data_dir or None)


def data_seed(config) -> int:
  """The seed of the data split (DIGITS's test set): ``config.data_seed``,
  or ``config.seed`` when it is -1."""
  return config.seed if config.get('data_seed', -1) < 0 else config.data_seed


def run_length(config, search_data: data.ImageSplits) -> tuple[int, int]:
  """(steps per epoch, total steps) of a search; a one-line error when the
  batch does not fit a split."""
  num_train = len(search_data.train[0])
  if config.batch_size > min(num_train, len(search_data.val[0])):
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds a '
                      f'search split ({num_train} examples).')
  steps_per_epoch = data.steps_per_epoch(num_train, config.batch_size)
  return steps_per_epoch, steps_per_epoch * config.epochs


def search_batch(search_data: data.ImageSplits, batch_size: int, seed: int,
                 step: int) -> dict[str, dict[str, np.ndarray]]:
  """The step's ``{'train': b, 'val': b}`` (``b = {'image', 'label'}``) of a
  search seeded ``seed``: a function of the step, for resuming."""
  part = lambda split, stream: dict(zip(
      ('image', 'label'), data.batch_at(split, batch_size, stream, step)))
  return {'train': part(search_data.train, 2 * seed),
          'val': part(search_data.val, 2 * seed + 1)}


# ---------------------------------------------------------------------------
# Model and optimizers.
# ---------------------------------------------------------------------------


def make_model(config, num_classes: int) -> supernet.SearchNetwork:
  return supernet.SearchNetwork(
      C=config.init_channels, num_classes=num_classes, layers=config.layers,
      nodes=config.nodes, ops=parse_ops(config.ops),
      cell_impl=cell_impl(config), remat=config.remat)


def compile_options(config) -> dict[str, bool]:
  """``compilation.compile_step``'s options for every program of the
  search: ``config.cpu_fast_compile``, and no tree reduction rewrite
  (``cpu_tree_reductions=False``, ``runtime.compilation``)."""
  return {'cpu_fast_compile': config.cpu_fast_compile,
          'cpu_tree_reductions': False}


def cell_impl(config) -> str:
  """``config.cell_impl``, with 'auto' resolved for the default backend."""
  if config.cell_impl == 'auto':
    return supernet.default_cell_impl()
  return config.cell_impl


def init_weights(model, sample, arch, seed: int):
  """Network weights with PyTorch's default fan-in uniform init, in NumPy
  (``models.initialization``; the classifier bias starts at zero). Leaves of
  the stacked layout (under ``stage_{k}``) have a leading edge axis, which
  is not part of the fan-in; those of the packed layout say their fan-in
  (``batched_cell.packed_fan_in``)."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), sample, arch))['params']
  stacked = lambda path: int(any(
      str(getattr(k, 'key', '')).startswith('stage_') for k in path))
  return initialization.fan_in_uniform(shapes, seed, leading_axes=stacked,
                                       fan_in=batched_cell.packed_fan_in)


def weight_schedule(config, total_steps: int):
  return optax.cosine_decay_schedule(
      config.learning_rate, total_steps,
      alpha=config.learning_rate_min / config.learning_rate)


def make_weight_optimizer(config, total_steps: int):
  return common.darts_sgd(weight_schedule(config, total_steps),
                          grad_clip=config.grad_clip,
                          weight_decay=config.weight_decay,
                          momentum=config.momentum)


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------


def _loss_and_logits(model, weights, arch, batch):
  logits = model.apply({'params': weights}, batch['image'], arch)
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['label']).mean()
  return loss, logits


def make_search_step(config, model, weight_opt, arch_opt, total_steps,
                     mean, std, *, split: bool = False, store=None):
  """The search step (Alg. 1): architecture update, then weights.

  Returns ``step(state, batch, key) -> (state, metrics)``, a pure function
  of ``batch = {'train': b, 'val': b}`` (``b = {'image', 'label'}``, the
  weight-training and architecture-validation batches). ``metrics`` holds
  the step's scalars and ``metrics['finite']`` (``runtime.divergence``):
  the losses, both gradients and both parameter sets.

  With ``split=False`` the step is meant to be jitted whole, as one XLA
  program. With ``split=True`` it is plain Python calling separately
  compiled programs (``compilation.LazyCompiled``, compiled on the first
  step, and only those the hypergradient mode calls): the
  loss gradients (``grads``: ∇_w and ∇_A), the architecture gradients alone
  (``arch_grads``: the first-order step's and the finite-difference
  points'), the mixed second derivative of the exact mode, and small
  programs for augmentation and the two optimizer updates. The arithmetic
  is the same; separately compiled pieces compile faster on XLA:CPU and
  peak at the memory of the largest piece. ``step.pieces`` holds the
  programs (their ``compile_s``); with a ``compilation.ExecutableStore`` as
  ``store`` they are loaded from there when it has them.
  """
  lr_schedule = weight_schedule(config, total_steps)
  pad = config.crop_padding

  def augment(key, batch):
    def one(key, b):
      images = data.darts_augment(key, common.as_float(b['image']), pad=pad,
                                  flip=config.flip, mean=mean, std=std)
      return {'image': images, 'label': b['label']}
    train_key, val_key = jax.random.split(key)
    return one(train_key, batch['train']), one(val_key, batch['val'])

  def grads(weights, arch, batch):
    """(loss, accuracy, ∇_w loss, ∇_A loss)."""
    (loss, logits), (g_w, g_a) = jax.value_and_grad(
        functools.partial(_loss_and_logits, model), argnums=(0, 1),
        has_aux=True)(weights, arch, batch)
    return loss, jnp.mean(jnp.argmax(logits, -1) == batch['label']), g_w, g_a

  def arch_grads(weights, arch, batch):
    """(loss, ∇_A loss): no weight gradients to compute."""
    return jax.value_and_grad(
        lambda a: _loss_and_logits(model, weights, a, batch)[0])(arch)

  def arch_update(arch_grad, arch_opt_state, arch):
    updates, arch_opt_state = arch_opt.update(arch_grad, arch_opt_state, arch)
    return optax.apply_updates(arch, updates), arch_opt_state

  def weight_update(state, arch, arch_opt_state, g_w, loss, accuracy,
                    arch_val_loss, arch_grad):
    updates, weight_opt_state = weight_opt.update(
        g_w, state.weight_opt_state, state.weights)
    weights = optax.apply_updates(state.weights, updates)
    metrics = {'train_loss': loss, 'train_accuracy': accuracy,
               'arch_val_loss': arch_val_loss,
               divergence.KEY: divergence.finite_flags(
                   train_loss=loss, arch_val_loss=arch_val_loss,
                   weight_gradient=g_w, arch_gradient=arch_grad,
                   weights=weights, arch=arch)}
    return SearchState(state.step + 1, weights, arch, weight_opt_state,
                       arch_opt_state), metrics

  train_loss = lambda w, a, batch: _loss_and_logits(model, w, a, batch)[0]
  # Forward over reverse: as fast as reverse over forward on the supernet,
  # with fewer temporaries (docs/performance.md).
  mixed_product = bilevel.mixed_product(train_loss, 'forward_over_reverse')
  pieces = {'augment': augment, 'grads': grads, 'arch_grads': arch_grads,
            'mixed_product': mixed_product, 'arch_update': arch_update,
            'weight_update': weight_update}
  if split:
    pieces = {name: compilation.LazyCompiled(
        fn, **compile_options(config), store=store, name=name)
              for name, fn in pieces.items()}
  loss_grads = lambda w, a, batch: (lambda r: (r[0], r[2], r[3]))(
      pieces['grads'](w, a, batch))
  # The architecture gradients of the first-order step and of the finite
  # differences skip the weight gradients: a program more to compile, for
  # a faster architecture step (docs/performance.md).
  derivatives = bilevel.Derivatives(
      loss_grads, loss_grads, pieces['mixed_product'],
      train_arch_grads=pieces['arch_grads'],
      val_arch_grads=pieces['arch_grads'])

  def step(state: SearchState, batch, key):
    train_batch, val_batch = pieces['augment'](key, batch)
    # Step 1: A, from the hypergradient of Eq. 11-13 on the val batch. The
    # unrolled weight step mirrors the real one (momentum, weight decay).
    momentum_buffer = optax.tree_utils.tree_get(state.weight_opt_state,
                                                'trace')
    arch_grad, arch_val_loss = bilevel.split_hypergradient(
        derivatives, state.weights, state.arch, train_batch, val_batch,
        eta=lr_schedule(state.step), mode=config.hypergradient,
        momentum=config.momentum, momentum_buffer=momentum_buffer,
        weight_decay=config.weight_decay)
    arch, arch_opt_state = pieces['arch_update'](
        arch_grad, state.arch_opt_state, state.arch)
    # Step 2: w, on the training batch with the new A.
    loss, accuracy, g_w, _ = pieces['grads'](state.weights, arch, train_batch)
    return pieces['weight_update'](state, arch, arch_opt_state, g_w, loss,
                                   accuracy, arch_val_loss, arch_grad)

  step.pieces = pieces
  return step


def make_eval_step(model, mean, std):
  """Masked sums of the supernet's correct predictions and losses."""
  def eval_step(weights, arch, batch):
    images = data.normalize(common.as_float(batch['image']), mean, std)
    logits = model.apply({'params': weights}, images, arch)
    return evaluation.masked_sums({
        'test_accuracy': jnp.argmax(logits, -1) == batch['label'],
        'test_loss': optax.softmax_cross_entropy_with_integer_labels(
            logits, batch['label'])}, batch['mask'])
  return eval_step


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def create_state(config, model, sample, weight_opt, arch_opt_fn):
  arch = supernet.init_arch(
      jax.random.key(config.seed), nodes=config.nodes,
      ops=parse_ops(config.ops), scale=config.arch_init_scale or None)
  weights = init_weights(model, sample, arch, config.seed)
  arch_opt = arch_opt_fn(arch)
  return SearchState(jnp.zeros([], jnp.int32), weights, arch,
                     weight_opt.init(weights), arch_opt.init(arch)), arch_opt


DIVERGENCE_HINT = 'config.learning_rate or config.arch_learning_rate'
LOG_KEYS = (('train_loss', '.3f'), ('train_accuracy', '.3f'),
            ('arch_val_loss', '.3f'), ('test_accuracy', '.3f'),
            ('lambda', '.3f'), ('ops_nonzero', '.0f'), ('nodes_live', '.0f'))


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs (or resumes) a search; returns the final summary dict."""
  validate(config)
  mesh = loop.start(config, workdir)
  search_data = load_data(config)
  steps_per_epoch, total_steps = run_length(config, search_data)
  # A rerun's stored programs start loading now, while the state is built.
  store = compilation.job_store(
      config, workdir, search_data.mean.tolist(), search_data.std.tolist(),
      search_data.num_classes, total_steps)
  model = make_model(config, search_data.num_classes)
  sample = jnp.zeros((1,) + search_data.train[0].shape[1:], jnp.float32)
  weight_opt = make_weight_optimizer(config, total_steps)
  arch_opt = None

  def init_state():
    nonlocal arch_opt
    state, arch_opt = create_state(
        config, model, sample, weight_opt,
        lambda a: common.make_arch_optimizer(config, a, steps_per_epoch))
    logging.info('supernet: %d weights, %d architecture weights; %d '
                 'steps/epoch', supernet.count_params(state.weights),
                 supernet.count_params(state.arch), steps_per_epoch)
    return state

  mean, std = jnp.asarray(search_data.mean), jnp.asarray(search_data.std)
  split = config.step_compilation == 'split'
  pieces = {}

  def compile_step(state, batch, key):
    step_fn = make_search_step(config, model, weight_opt, arch_opt,
                               total_steps, mean, std, split=split,
                               store=store)
    if split:  # its programs compile during the first step
      pieces.update(step_fn.pieces)
      return step_fn
    compiled, pieces['search_step'] = compilation.compile_step(
        step_fn, (state, batch, key), **compile_options(config),
        donate=(0,), store=store, name='search_step')
    return compiled

  eval_step = compilation.LazyCompiled(
      make_eval_step(model, mean, std), **compile_options(config),
      store=store, name='eval_step')

  def batch_at(step):
    return search_batch(search_data, config.batch_size, config.seed, step)

  def epoch_scalars(state, step):
    counts = genotype_lib.sparsity_counts(
        parallel.to_host(common.architecture(config, state.arch,
                                             state.arch_opt_state)))
    return {'lambda': float(common.lambda_schedule(
        config, steps_per_epoch)(step - 1)),
            'ops_nonzero': counts['ops_nonzero'],
            'nodes_live': counts['nodes_live'],
            'learning_rate': float(weight_schedule(config, total_steps)(
                step - 1))}

  def evaluate(state):
    return evaluation.evaluate(
        eval_step, (state.weights, common.architecture(
            config, state.arch, state.arch_opt_state)),
        evaluation.array_reader(*search_data.test),
        len(search_data.test[0]), config.batch_size, mesh)

  job = loop.Job(
      init_state=init_state, compile=compile_step, batch_at=batch_at,
      total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      seed=config.seed, divergence_hint=DIVERGENCE_HINT, evaluate=evaluate,
      eval_every_epochs=config.eval_every_epochs, epoch_scalars=epoch_scalars,
      log_keys=LOG_KEYS)
  state, summary = loop.run(job, workdir, mesh)
  compiled = {name: (p if isinstance(p, float) else p.compile_s)
              for name, p in pieces.items()}
  if compiled:
    logging.info('compiling (or loading) took %s; the eval step %.1f s; %d '
                 'programs loaded from %s', ', '.join(
                     f'{n} {s:.1f} s' for n, s in compiled.items() if s),
                 eval_step.compile_s, store.loaded, store.directory)
  summary.update(compile_s=sum(compiled.values()),
                 eval_compile_s=eval_step.compile_s,
                 programs_loaded=store.loaded)
  summary = finish(config, state, workdir, summary)
  if summary.get('empty_cells'):
    lam = common.lambda_schedule(config, steps_per_epoch)(total_steps - 1)
    raise ConfigError(
        f'the search removed every node of the '
        f'{" and ".join(summary["empty_cells"])} cell (λ grew to '
        f'{float(lam):g}): no genotype; A is in {workdir}/architecture.npz. '
        'Lower config.lambda_step or set config.lambda_max, and search again '
        'in a new --workdir.')
  return summary


def finish(config, state, workdir, summary):
  """Derives, saves and pictures the genotype of ``state`` (a
  ``SearchState``, placed or on the host); writes architecture.npz and
  search_results.json with ``summary`` and the counts (process 0). Returns
  that summary; where the prox removed every node of a cell there is no
  genotype, and the summary's ``empty_cells`` names those cells."""
  ops = parse_ops(config.ops)
  arch = parallel.to_host(common.architecture(config, state.arch,
                                              state.arch_opt_state))
  if jax.process_index() != 0:
    return summary
  np.savez(os.path.join(workdir, 'architecture.npz'),
           **{f'{t}/{n}': v for t in arch for n, v in arch[t].items()})
  per_cell = {t: genotype_lib.sparsity_counts({t: arch[t]}) for t in arch}
  summary = {**summary, 'counts': genotype_lib.sparsity_counts(arch),
             'counts_per_cell': per_cell,
             'empty_cells': sorted(t for t, c in per_cell.items()
                                   if not c['nodes_live']),
             'peak_rss_gb': resource.getrusage(
                 resource.RUSAGE_SELF).ru_maxrss / 2**20}
  if not summary['empty_cells']:
    genotype = genotype_lib.derive_genotype(arch, ops)
    genotype_lib.save_genotype(genotype,
                               os.path.join(workdir, 'genotype.json'))
    viz.plot_genotype(genotype, os.path.join(workdir, 'genotype.png'))
    stats = complexity.genotype_stats(genotype, config.init_channels)
    summary['genotype_stats'] = stats
    logging.info('genotype: %s', genotype.to_json())
    logging.info('kept %d ops and %d nodes; derived cell params at C=%d: %d',
                 stats['total']['ops_kept'], stats['total']['nodes_kept'],
                 config.init_channels, stats['total']['params'])
  with open(os.path.join(workdir, 'search_results.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary
