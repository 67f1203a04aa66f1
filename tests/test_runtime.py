"""The shared runtime on a toy job: resume, the divergence guard, the masked
evaluator."""

import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenas_jax.errors import DivergenceError
from sparsenas_jax.runtime import checkpoints
from sparsenas_jax.runtime import divergence
from sparsenas_jax.runtime import evaluation
from sparsenas_jax.runtime import loop
from sparsenas_jax.runtime import parallel

RNG = np.random.default_rng(0)
X = RNG.normal(size=(32, 3)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5], np.float32)


class ToyState(NamedTuple):
  step: jax.Array
  w: jax.Array


def _init():
  return ToyState(jnp.zeros([], jnp.int32), jnp.zeros(3, jnp.float32))


def _job(learning_rate, *, total_steps, steps_per_epoch=4, calls=None):
  """Least squares by SGD on fixed batches."""

  def step(state, batch, key):
    del key
    def loss_fn(w):
      return jnp.mean((batch['x'] @ w - batch['y']) ** 2)
    loss, grad = jax.value_and_grad(loss_fn)(state.w)
    w = state.w - learning_rate * grad
    return ToyState(state.step + 1, w), {
        'loss': loss,
        divergence.KEY: divergence.finite_flags(loss=loss, gradient=grad,
                                                w=w)}

  def compile_step(state, batch, key):
    if calls is not None:
      calls.append(int(state.step))
    return jax.jit(step).lower(state, batch, key).compile()

  def batch_at(i):
    rows = np.arange(8 * i, 8 * i + 8) % len(X)
    return {'x': X[rows], 'y': Y[rows]}

  return loop.Job(
      init_state=_init,
      compile=compile_step, batch_at=batch_at, total_steps=total_steps,
      steps_per_epoch=steps_per_epoch, seed=0,
      divergence_hint='config.learning_rate', log_keys=(('loss', '.4f'),))


@pytest.fixture(scope='module')
def mesh():
  return parallel.make_mesh(1)


def _restore_latest(workdir):
  manager = checkpoints.Checkpointer(str(workdir))
  step = manager.latest_step()
  state = manager.restore(_init())
  manager.close()
  return step, state


def test_run_then_resume_continues_where_it_stopped(tmp_path, mesh):
  calls = []
  _, first = loop.run(_job(0.1, total_steps=8, calls=calls), str(tmp_path),
                      mesh)
  state, second = loop.run(_job(0.1, total_steps=12, calls=calls),
                           str(tmp_path), mesh)
  assert calls == [0, 8] and second['start_step'] == 8
  assert int(state.step) == 12
  # The same 12 steps in one go give the same weights.
  whole, _ = loop.run(_job(0.1, total_steps=12), str(tmp_path / 'whole'),
                      mesh)
  np.testing.assert_allclose(state.w, whole.w, rtol=1e-6)
  lines = [json.loads(l) for l in
           (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == [4, 8, 12]
  assert lines[-1]['loss'] < lines[0]['loss']
  # A finished run returns at once with its last scalars.
  _, again = loop.run(_job(0.1, total_steps=12, calls=calls), str(tmp_path),
                      mesh)
  assert calls == [0, 8] and again['loss'] == lines[-1]['loss']


@pytest.mark.parametrize('steps_per_epoch', [1, 4])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path, mesh, steps_per_epoch):
  loop.run(_job(0.1, total_steps=8, steps_per_epoch=steps_per_epoch),
           str(tmp_path), mesh)
  with pytest.raises(DivergenceError) as e:
    loop.run(_job(1e30, total_steps=40, steps_per_epoch=steps_per_epoch),
             str(tmp_path), mesh)
  message = str(e.value)
  step, _ = _restore_latest(tmp_path)
  assert f'resumes from step {step}' in message  # the latest checkpoint
  assert 'diverged at step' in message and 'not finite' in message
  assert 'config.learning_rate' in message
  assert '\n' not in message
  diverged_at = int(message.split('step ')[1].split(':')[0])
  assert 8 < diverged_at < 40
  step, state = _restore_latest(tmp_path)
  assert step < diverged_at  # nothing non-finite was saved
  assert np.all(np.isfinite(state.w))
  if steps_per_epoch == 1:
    return  # step 9 (finite, ~1e30) was saved: resuming it diverges again
  # The workdir resumes from the last epoch before the divergence.
  assert step == 8
  final, summary = loop.run(
      _job(0.1, total_steps=40, steps_per_epoch=steps_per_epoch),
      str(tmp_path), mesh)
  assert summary['start_step'] == 8 and int(final.step) == 40
  assert np.all(np.isfinite(final.w))


def test_divergence_check_names_every_non_finite_quantity():
  flags = jax.device_get(divergence.finite_flags(
      loss=jnp.float32(jnp.nan), gradient={'a': jnp.ones(2)},
      params={'a': jnp.array([1.0, jnp.inf]), 'n': jnp.arange(3)}))
  assert flags == {'loss': False, 'gradient': True, 'params': False}
  with pytest.raises(DivergenceError, match=r'step 7: loss, params not '
                     r'finite; lower config.lr and rerun'):
    divergence.check(flags, step=7, hint='config.lr', resume='x')
  divergence.check({'loss': True}, step=1, hint='', resume='')


@pytest.mark.parametrize('num_examples, batch_size, limit',
                         [(10, 4, None), (12, 4, None), (3, 8, None),
                          (10, 4, 7)])
def test_evaluate_counts_every_example_once(mesh, num_examples, batch_size,
                                            limit):
  values = RNG.normal(size=num_examples).astype(np.float32)
  labels = (values > 0).astype(np.int32)
  shapes = set()

  def eval_step(scale, batch):
    shapes.add(batch['image'].shape)
    return evaluation.masked_sums(
        {'value': batch['image'] * scale,
         'positive': batch['label'] == 1}, batch['mask'])

  out = evaluation.evaluate(
      jax.jit(eval_step), (jnp.float32(2.0),),
      evaluation.array_reader(values, labels), num_examples, batch_size,
      mesh, limit)
  n = limit or num_examples
  np.testing.assert_allclose(out['value'], 2 * values[:n].mean(), rtol=1e-5)
  np.testing.assert_allclose(out['positive'], labels[:n].mean(), rtol=1e-6)
  assert shapes == {(batch_size,)}  # one shape: the padded batch


def test_padded_marks_the_real_rows():
  batch = evaluation.padded({'image': np.ones((3, 2)), 'label': np.arange(3)},
                            5)
  np.testing.assert_array_equal(batch['mask'], [1, 1, 1, 0, 0])
  assert batch['image'].shape == (5, 2) and batch['label'][3:].tolist() == [0,
                                                                            0]


def test_after_epoch_changes_the_state_before_the_checkpoint(tmp_path, mesh):
  seen = []

  def after_epoch(state, scalars):
    seen.append(scalars['loss'])
    return state._replace(w=jnp.zeros_like(state.w))

  job = _job(0.1, total_steps=8)
  job = loop.Job(**{**job.__dict__, 'after_epoch': after_epoch})
  state, _ = loop.run(job, str(tmp_path), mesh)
  assert len(seen) == 2 and np.all(np.asarray(state.w) == 0)
  assert state.w.sharding == parallel.replicated(mesh)
  step, saved = _restore_latest(tmp_path)
  assert step == 8 and np.all(saved.w == 0)
