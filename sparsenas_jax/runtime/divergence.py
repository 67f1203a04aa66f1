"""The divergence guard: a step reports which of its quantities are finite.

A job's step calls ``finite_flags`` inside the jitted program and returns
the result under ``metrics['finite']``; ``runtime.loop`` reads the flags of
every step and stops the run with ``DivergenceError`` at the first false
one, before anything non-finite is checkpointed.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from sparsenas_jax.errors import DivergenceError

KEY = 'finite'  # the metrics entry that holds the flags


def all_finite(tree) -> jax.Array:
  """True (a bool scalar) when every element of every leaf is finite.

  One reduction over the leaves' concatenation: a reduction per leaf would
  be hundreds of small programs for XLA to compile in a supernet's step.
  """
  leaves = [jnp.ravel(x) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves)))


def finite_flags(**quantities) -> dict[str, jax.Array]:
  """``{name: all_finite(tree)}`` for each named quantity (loss, gradients,
  parameters), to return as ``metrics['finite']``."""
  return {name: all_finite(tree) for name, tree in quantities.items()}


def check(flags: Mapping[str, bool], *, step: int, hint: str,
          resume: str) -> None:
  """Raises ``DivergenceError`` naming the non-finite quantities.

  Args:
    flags: ``finite_flags`` of one step, fetched to the host.
    step: the number of that step (1 = the first).
    hint: which config fields to lower, e.g. ``'config.learning_rate'``.
    resume: where a rerun resumes from, for the message.
  """
  bad = sorted(name for name, ok in flags.items() if not bool(ok))
  if bad:
    raise DivergenceError(
        f'the run diverged at step {step}: {", ".join(bad)} not finite; lower '
        f'{hint} and rerun the same command ({resume}).')
