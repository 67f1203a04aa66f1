"""SparseNAS CNN cell search (Wu et al. 2021, Alg. 1; DARTS search space).

Each step updates the architecture weights A on a validation batch with the
configured architecture optimizer (AdamHAPG by default) from the bi-level
hypergradient (``bilevel.darts_hypergradient``), with the SGL strength λ
raised by ``config.lambda_step`` every epoch; then the network weights w on a
training batch with SGD (momentum, cosine learning rate, weight decay,
gradient clipping). The whole step is one jitted pure function, compiled
once. At the end the mixed-path genotype is derived from the exactly sparse
proximal point of the architecture optimizer and written to the workdir
(``genotype.json``, ``genotype.png``, ``search_results.json``).

The job is a library: ``create_state``, ``make_search_step``, ``evaluate``
and ``run(config, workdir)``.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sparsenas_jax import bilevel
from sparsenas_jax import checkpointing
from sparsenas_jax import compilation
from sparsenas_jax import data
from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import optim
from sparsenas_jax import parallel
from sparsenas_jax.errors import ConfigError
from sparsenas_jax.experiments import common
from sparsenas_jax.metric_writers import MetricWriter
from sparsenas_jax.models import supernet
from sparsenas_jax.models.ops import DARTS_OPS

ARCH_OPTIMIZERS = ('adam_hapg', 'hapg', 'adam')
DATASETS = ('digits', 'cifar10', 'cifar100')
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
  if config.dataset not in DATASETS:
    raise ConfigError(f'config.dataset={config.dataset!r}; valid: {DATASETS}.')
  if config.arch_optimizer not in ARCH_OPTIMIZERS:
    raise ConfigError(f'config.arch_optimizer={config.arch_optimizer!r}; '
                      f'valid: {ARCH_OPTIMIZERS}.')
  if config.hypergradient not in bilevel.MODES:
    raise ConfigError(f'config.hypergradient={config.hypergradient!r}; '
                      f'valid: {bilevel.MODES}.')
  if config.layers < 3:
    raise ConfigError(f'config.layers={config.layers}: the search network '
                      'needs >= 3 cells (two of them reductions).')
  if config.nodes < 1:
    raise ConfigError(f'config.nodes={config.nodes}: use >= 1.')
  if config.init_channels < 2 or config.init_channels % 2:
    raise ConfigError(f'config.init_channels={config.init_channels}: use an '
                      'even number >= 2.')
  if config.lambda_step < 0:
    raise ConfigError(f'config.lambda_step={config.lambda_step} is negative; '
                      'λ is ramped up by lambda_step >= 0 per epoch.')
  if not 0 <= config.l1_ratio <= 1:
    raise ConfigError(f'config.l1_ratio={config.l1_ratio}: use [0, 1].')
  if config.epochs < 1 or config.batch_size < 1:
    raise ConfigError('config.epochs and config.batch_size must be >= 1.')
  if config.step_compilation not in STEP_COMPILATIONS:
    raise ConfigError(f'config.step_compilation={config.step_compilation!r}; '
                      f'valid: {STEP_COMPILATIONS}.')
  if config.cell_impl not in ('auto',) + supernet.CELL_IMPLS:
    raise ConfigError(f'config.cell_impl={config.cell_impl!r}; valid: '
                      f"{('auto',) + supernet.CELL_IMPLS}.")
  if (config.cell_impl in ('batched', 'stacked') and
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


class SearchData(NamedTuple):
  train: tuple[np.ndarray, np.ndarray]  # weight-training half (w)
  val: tuple[np.ndarray, np.ndarray]  # architecture-validation half (A)
  test: tuple[np.ndarray, np.ndarray]  # held out: supernet accuracy
  mean: np.ndarray
  std: np.ndarray
  num_classes: int


def load_data(config) -> SearchData:
  """The training set split into weight/architecture halves, plus a test set.

  Images stay uint8 (CIFAR) or float (DIGITS) on the host; they are scaled,
  augmented and normalised on the device inside the step.
  """
  if config.dataset == 'digits':
    splits = data.digits_splits(config.seed, test_fraction=0.2,
                                train_portion=config.train_portion)
    mean, std = data.channel_stats(splits['train'][0])
    return SearchData(splits['train'], splits['val'], splits['test'], mean,
                      std, data.digits.NUM_CLASSES)
  data_dir = config.data_dir or None
  images, labels = data.load_image_dataset(config.dataset, 'train',
                                           data_dir=data_dir)
  split = int(len(images) * config.train_portion)  # as DARTS: first / rest
  test = data.load_image_dataset(config.dataset, 'test', data_dir=data_dir)
  mean, std = data.NORMALIZATION[config.dataset]
  return SearchData((images[:split], labels[:split]),
                    (images[split:], labels[split:]), test,
                    np.asarray(mean, np.float32), np.asarray(std, np.float32),
                    100 if config.dataset == 'cifar100' else 10)


# ---------------------------------------------------------------------------
# Model and optimizers.
# ---------------------------------------------------------------------------


def make_model(config, num_classes: int) -> supernet.SearchNetwork:
  return supernet.SearchNetwork(
      C=config.init_channels, num_classes=num_classes, layers=config.layers,
      nodes=config.nodes, ops=parse_ops(config.ops),
      cell_impl=cell_impl(config), remat=config.remat)


def cell_impl(config) -> str:
  """``config.cell_impl``, with 'auto' resolved for the default backend."""
  if config.cell_impl == 'auto':
    return supernet.default_cell_impl()
  return config.cell_impl


def init_weights(model, sample, arch, seed: int):
  """Network weights with PyTorch's default fan-in uniform init, in NumPy.

  Shapes come from ``jax.eval_shape`` (nothing compiled); filling them on the
  host avoids compiling the RNG of hundreds of tiny parameters, which takes
  minutes on XLA:CPU. The distribution is that of ``ops.conv_init``:
  U(-1/√fan_in, 1/√fan_in); the classifier bias starts at zero. Leaves of
  the stacked layout (under ``stage_{k}``) have a leading edge axis, which
  is not part of the fan-in.
  """
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), sample, arch))['params']
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if len(s.shape) < 2:
      return np.zeros(s.shape, np.float32)
    stacked = any(str(getattr(k, 'key', '')).startswith('stage_')
                  for k in path)
    bound = 1 / np.sqrt(np.prod(s.shape[1 if stacked else 0:-1]))
    return rng.uniform(-bound, bound, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def lambda_schedule(config, steps_per_epoch: int):
  """λ raised by ``lambda_step`` at the start of every epoch (λ₀ = 0)."""
  return lambda count: config.lambda_step * (count // steps_per_epoch)


def make_arch_optimizer(config, arch, steps_per_epoch: int):
  groups = optim.darts_node_groups(arch)
  lam = lambda_schedule(config, steps_per_epoch)
  if config.arch_optimizer == 'adam_hapg':
    return optim.adam_hapg(config.arch_learning_rate, lam, config.l1_ratio,
                           groups=groups, b1=config.arch_b1,
                           b2=config.arch_b2)
  if config.arch_optimizer == 'hapg':
    return optim.hapg(config.arch_learning_rate, lam, config.l1_ratio,
                      groups=groups)
  # DARTS's architecture optimizer: Adam with L2 weight decay, no sparsity.
  return optax.chain(
      optax.add_decayed_weights(config.arch_weight_decay),
      optax.adam(config.arch_learning_rate, b1=config.arch_b1,
                 b2=config.arch_b2))


def weight_schedule(config, total_steps: int):
  return optax.cosine_decay_schedule(
      config.learning_rate, total_steps,
      alpha=config.learning_rate_min / config.learning_rate)


def make_weight_optimizer(config, total_steps: int):
  return common.darts_sgd(weight_schedule(config, total_steps),
                          grad_clip=config.grad_clip,
                          weight_decay=config.weight_decay,
                          momentum=config.momentum)


def architecture(config, state: SearchState):
  """The architecture to read: the exactly sparse prox point of (Adam)HAPG."""
  if config.arch_optimizer in ('adam_hapg', 'hapg'):
    return optim.sparse_params(state.arch_opt_state)
  return state.arch


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

  Returns ``step(state, train_batch, val_batch, key) -> (state, metrics)``,
  a pure function. With ``split=False`` it is meant to be jitted whole, as
  one XLA program. With ``split=True`` it is plain Python calling separately
  compiled programs (``compilation.LazyCompiled``, compiled on the first
  step, and only those the hypergradient mode calls): the loss gradients
  (``grads``: ∇_w and ∇_A, called one to three times per step), the
  architecture gradient alone (``arch_grads``, about a third cheaper: the
  first-order architecture step and the two finite-difference points), the
  mixed second derivative of the exact mode, and small programs for
  augmentation and the two optimizer updates. The same arithmetic; on
  XLA:CPU, where compile time grows super-linearly with program size, a
  supernet's whole second-order step compiles several times slower than its
  pieces, and peak memory is that of the largest piece. ``step.pieces``
  holds the programs (their ``compile_s``); with a
  ``compilation.ExecutableStore`` as ``store`` they are loaded from there
  when it has them.
  """
  lr_schedule = weight_schedule(config, total_steps)
  pad = config.crop_padding

  def augment(key, train_batch, val_batch):
    def one(key, batch):
      images = data.darts_augment(key, common.as_float(batch['image']), pad=pad,
                                  flip=config.flip, mean=mean, std=std)
      return {'image': images, 'label': batch['label']}
    train_key, val_key = jax.random.split(key)
    return one(train_key, train_batch), one(val_key, val_batch)

  def grads(weights, arch, batch):
    """(loss, accuracy, ∇_w loss, ∇_A loss)."""
    (loss, logits), (g_w, g_a) = jax.value_and_grad(
        functools.partial(_loss_and_logits, model), argnums=(0, 1),
        has_aux=True)(weights, arch, batch)
    return loss, jnp.mean(jnp.argmax(logits, -1) == batch['label']), g_w, g_a

  def arch_grads(weights, arch, batch):
    """(loss, ∇_A loss): no weight gradients (first order, FD points)."""
    return jax.value_and_grad(
        lambda a: _loss_and_logits(model, weights, a, batch)[0])(arch)

  def arch_update(arch_grad, arch_opt_state, arch):
    updates, arch_opt_state = arch_opt.update(arch_grad, arch_opt_state, arch)
    return optax.apply_updates(arch, updates), arch_opt_state

  def weight_update(state, arch, arch_opt_state, g_w, loss, accuracy,
                    arch_val_loss):
    updates, weight_opt_state = weight_opt.update(
        g_w, state.weight_opt_state, state.weights)
    weights = optax.apply_updates(state.weights, updates)
    metrics = {'train_loss': loss, 'train_accuracy': accuracy,
               'arch_val_loss': arch_val_loss}
    return SearchState(state.step + 1, weights, arch, weight_opt_state,
                       arch_opt_state), metrics

  # The mixed derivative is reverse over forward: convs written for it.
  forward_model = model.clone(conv_derivatives='forward')
  train_loss = lambda w, a, batch: _loss_and_logits(forward_model, w, a,
                                                    batch)[0]
  mixed_product = bilevel.autodiff_derivatives(
      train_loss, train_loss).mixed_product
  pieces = {'augment': augment, 'grads': grads, 'arch_grads': arch_grads,
            'mixed_product': mixed_product, 'arch_update': arch_update,
            'weight_update': weight_update}
  if split:
    pieces = {name: compilation.LazyCompiled(
        fn, cpu_fast_compile=config.cpu_fast_compile, store=store, name=name)
              for name, fn in pieces.items()}
  loss_grads = lambda w, a, batch: (lambda r: (r[0], r[2], r[3]))(
      pieces['grads'](w, a, batch))
  derivatives = bilevel.Derivatives(
      loss_grads, loss_grads, pieces['mixed_product'],
      train_arch_grads=pieces['arch_grads'],
      val_arch_grads=pieces['arch_grads'])

  def step(state: SearchState, train_batch, val_batch, key):
    train_batch, val_batch = pieces['augment'](key, train_batch, val_batch)
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
                                   accuracy, arch_val_loss)

  step.pieces = pieces
  return step


def make_eval_step(model, mean, std):
  def eval_step(weights, arch, batch):
    images = data.normalize(common.as_float(batch['image']), mean, std)
    logits = model.apply({'params': weights}, images, arch)
    return {
        'correct': jnp.sum(jnp.argmax(logits, -1) == batch['label']),
        'loss_sum': jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
            logits, batch['label'])),
    }
  return eval_step


def evaluate(eval_step, weights, arch, images, labels, batch_size, mesh):
  """Supernet accuracy and loss over a whole split (full batches only)."""
  n = (len(images) // batch_size) * batch_size
  correct = loss = 0.0
  for i in range(0, n, batch_size):
    batch = parallel.shard_batch(
        {'image': images[i:i + batch_size],
         'label': labels[i:i + batch_size]}, mesh)
    out = eval_step(weights, arch, batch)
    correct += float(out['correct'])
    loss += float(out['loss_sum'])
  return {'accuracy': correct / max(n, 1), 'loss': loss / max(n, 1)}


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


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs (or resumes) a search; returns the final summary dict."""
  ops = validate(config)
  mesh = common.start_job(config, workdir)
  search_data = load_data(config)
  num_train = len(search_data.train[0])
  if config.batch_size > min(num_train, len(search_data.val[0])):
    raise ConfigError(f'config.batch_size={config.batch_size} exceeds a '
                      f'search split ({num_train} examples).')
  steps_per_epoch = data.steps_per_epoch(num_train, config.batch_size)
  total_steps = steps_per_epoch * config.epochs
  # A rerun's stored programs start loading now, while the state is built.
  store = common.executable_store(
      config, workdir, search_data.mean.tolist(), search_data.std.tolist(),
      search_data.num_classes, total_steps)
  model = make_model(config, search_data.num_classes)
  sample = jnp.zeros((1,) + search_data.train[0].shape[1:], jnp.float32)
  weight_opt = make_weight_optimizer(config, total_steps)
  state, arch_opt = create_state(
      config, model, sample, weight_opt,
      lambda a: make_arch_optimizer(config, a, steps_per_epoch))
  checkpointer = checkpointing.Checkpointer(workdir)
  start = checkpointer.latest_step()
  if start is not None:
    state = checkpointer.restore(state)
    logging.info('resumed from the checkpoint of step %d', start)
  state = parallel.replicate(state, mesh)
  base_key = jax.random.key(config.seed)
  logging.info('supernet: %d weights, %d architecture weights; %d steps/epoch',
               supernet.count_params(state.weights),
               supernet.count_params(state.arch), steps_per_epoch)

  mean, std = jnp.asarray(search_data.mean), jnp.asarray(search_data.std)
  split = config.step_compilation == 'split'
  step_fn = make_search_step(config, model, weight_opt, arch_opt, total_steps,
                             mean, std, split=split, store=store)
  batch_of = lambda split, seed, step: parallel.shard_batch(
      dict(zip(('image', 'label'),
               data.batch_at(split, config.batch_size, seed, step))), mesh)
  first = int(state.step)
  if split:  # its programs compile during the first step, below
    search_step, compile_s = step_fn, None
  else:
    example = (state, batch_of(search_data.train, 2 * config.seed, first),
               batch_of(search_data.val, 2 * config.seed + 1, first),
               jax.random.fold_in(base_key, first))
    search_step, compile_s = compilation.compile_step(
        step_fn, example, cpu_fast_compile=config.cpu_fast_compile,
        donate=(0,), store=store, name='search_step')
  eval_step, eval_compile_s = compilation.compile_step(
      make_eval_step(model, mean, std),
      (state.weights, state.arch, batch_of(search_data.test, 0, 0)),
      cpu_fast_compile=config.cpu_fast_compile, store=store, name='eval_step')
  if compile_s is not None:
    logging.info('compiled (or loaded) the search step in %.1f s, the eval '
                 'step in %.1f s', compile_s, eval_compile_s)

  writer = MetricWriter(workdir)
  summary = {'compile_s': compile_s or 0.0, 'eval_compile_s': eval_compile_s,
             'programs_loaded': store.loaded}
  epoch_metrics, t_epoch = [], time.perf_counter()
  t_start, first_run_step = time.perf_counter(), first
  for step in range(first, total_steps):
    state, metrics = search_step(
        state, batch_of(search_data.train, 2 * config.seed, step),
        batch_of(search_data.val, 2 * config.seed + 1, step),
        jax.random.fold_in(base_key, step))
    epoch_metrics.append(metrics)
    if compile_s is None:  # the split step's first step: it compiled
      compile_s = sum(p.compile_s for p in step_fn.pieces.values())
      summary.update(compile_s=compile_s, programs_loaded=store.loaded)
      logging.info(
          'first search step in %.1f s, of which compiling (or loading) %s; '
          'the eval step in %.1f s; %d of these programs loaded from %s',
          time.perf_counter() - t_start, ', '.join(
              f'{name} {p.compile_s:.1f} s'
              for name, p in step_fn.pieces.items() if p.compile_s),
          eval_compile_s, store.loaded, store.directory)
      # Rates and ETA count from here, as after an ahead-of-time compile.
      t_epoch = t_start = time.perf_counter()
      first_run_step = step + 1
    if (step + 1) % steps_per_epoch and step + 1 != total_steps:
      continue
    epoch = (step + 1) // steps_per_epoch
    scalars = {k: float(np.mean([m[k] for m in epoch_metrics]))
               for k in epoch_metrics[0]}
    arch = architecture(config, state)
    counts = genotype_lib.sparsity_counts(parallel.to_host(arch))
    if epoch % config.eval_every_epochs == 0 or step + 1 == total_steps:
      test = evaluate(eval_step, state.weights, arch, *search_data.test,
                      config.batch_size, mesh)
      scalars.update({'test_accuracy': test['accuracy'],
                      'test_loss': test['loss']})
    elapsed = time.perf_counter() - t_epoch
    rate = len(epoch_metrics) / elapsed
    scalars.update({
        'lambda': config.lambda_step * (step // steps_per_epoch),
        'ops_nonzero': counts['ops_nonzero'],
        'nodes_live': counts['nodes_live'], 'steps_per_s': rate,
        'learning_rate': float(weight_schedule(config, total_steps)(step))})
    writer.write_scalars(step + 1, scalars)
    eta = (total_steps - step - 1) / max(
        (step + 1 - first_run_step) / (time.perf_counter() - t_start), 1e-9)
    logging.info(
        'epoch %d/%d  loss %.3f  train acc %.3f  arch val loss %.3f  '
        'test acc %s  λ %.3f  ops %d/%d  nodes %d/%d  %.2f steps/s  ETA %.0fs',
        epoch, config.epochs, scalars['train_loss'],
        scalars['train_accuracy'], scalars['arch_val_loss'],
        f"{scalars['test_accuracy']:.3f}" if 'test_accuracy' in scalars
        else '-', scalars['lambda'], counts['ops_nonzero'],
        counts['ops_total'], counts['nodes_live'], counts['nodes_total'],
        rate, eta)
    checkpointer.save(step + 1, state)
    epoch_metrics, t_epoch = [], time.perf_counter()
    summary.update(scalars)
  checkpointer.close()
  writer.close()
  return _finish(config, state, ops, workdir, summary)


def _finish(config, state, ops, workdir, summary):
  """Derives, saves and pictures the genotype; writes search_results.json."""
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if 'train_loss' not in summary and os.path.exists(metrics_path):
    # Resumed after the last step: report the last epoch's scalars.
    with open(metrics_path) as f:
      lines = f.read().splitlines()
    summary = {**json.loads(lines[-1]), **summary} if lines else summary
  arch = parallel.to_host(architecture(config, state))
  np.savez(os.path.join(workdir, 'architecture.npz'),
           **{f'{t}/{n}': v for t in arch for n, v in arch[t].items()})
  genotype = genotype_lib.derive_genotype(arch, ops)
  genotype_lib.save_genotype(genotype, os.path.join(workdir, 'genotype.json'))
  genotype_lib.plot_genotype(genotype, os.path.join(workdir, 'genotype.png'))
  stats = genotype_lib.genotype_stats(genotype, config.init_channels)
  summary = {**summary, 'genotype_stats': stats,
             'counts': genotype_lib.sparsity_counts(arch),
             'peak_rss_gb': resource.getrusage(
                 resource.RUSAGE_SELF).ru_maxrss / 2**20}
  with open(os.path.join(workdir, 'search_results.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  logging.info('genotype: %s', genotype.to_json())
  logging.info('kept %d ops and %d nodes; derived cell params at C=%d: %d',
               stats['total']['ops_kept'], stats['total']['nodes_kept'],
               config.init_channels, stats['total']['params'])
  return summary
