"""The DARTS recurrent cell (Penn Treebank): search cell, derived cell, model.

The cell of DARTS's recurrent search space (Liu et al. 2019, after ENAS),
with SparseNAS's linear mixing of the candidate activations (Wu et al.
2021, Eq. 1). One time step maps the input x_t and the previous hidden
state h_{t-1} to h_t through ``nodes + 1`` states:

* the input state ``s_0 = h + σ(c_0)⊙(tanh(h_0) − h)``, h = h_{t-1},
  ``[c_0|h_0] = [x_t⊙m_x, h⊙m_h] W_0`` with ``W_0: (ninp + nhid, 2 nhid)``;
* intermediate node i (0-based) reads every earlier state s_0 … s_i. On
  the edge from s_j, ``[c|h] = (s_j⊙m_h) W_i``, with one ``W_i: (nhid,
  2 nhid)`` per node shared by its predecessors, and activation f gives the
  highway term ``s_j + σ(c)⊙(f(h) − s_j)``, f in ``search_space.RNN_OPS``;
* h_t is the mean of the intermediate nodes s_1 … s_nodes.

In the search cell node i is ``Σ_j Σ_f A[node_i][j, f] highway_f(s_j)``,
with A unconstrained (no softmax, no ``none``: a zero weight removes a
path), and a non-affine batch norm follows s_0 and every node, as DARTS's
``BatchNorm1d(affine=False)`` (``RNNSearchCell.node_batch_norm`` can
turn off the one after each node). That batch norm always uses the statistics
of the current batch (there are no running averages, as in ``models.ops``):
every step is a pure function of (params, arch, batch), with no
``batch_stats`` collection; evaluating a search model therefore needs a
batch of several rows, and its outputs depend on the batch's composition
(DARTS evaluates with running averages). There are no biases in the cell.

Batch norm and node groups. Node i is linear in its own group of
architecture weights A[node_i], and a batch norm follows it, so scaling that
whole group by any c > 0 leaves the cell, hence the loss, unchanged (up to
the ``eps`` of the batch norm: ``BN(c x)`` normalises with ``var + eps /
c²``). Consequences: the gradient of the loss with respect to A[node_i] is
orthogonal to A[node_i] and grows like 1 / ‖A[node_i]‖; the loss does not
resist a group penalty shrinking the group's norm, so the penalty alone
decides the group's magnitude, and magnitudes of different groups cannot be
compared as measures of importance; only when ‖A[node_i]‖ is so small that
eps matters does the node start to fade, and at exactly zero it is 0 before
its batch norm, and 0 after it. A zeroed node is the state 0, not an absent
one: it still counts in the mean that gives h_t, and a later node's
``sigmoid`` edge from it contributes ``σ(0)·σ(0) = 1/4`` per element
(``tanh``, ``relu`` and ``identity`` give 0). The search job has to handle
this (e.g. with ``node_batch_norm=False``); this module only computes
the cell.

The derived cell (``RNNEvalCell``) has no batch norm (DARTS's ``DARTSCell``)
and is built from a recurrent genotype whose node may keep several inputs
(``weighting``).

Dropout, in training only, as DARTS (Merity et al. 2018): the embedding
matrix loses whole word rows (``dropoute``); the embedding output
(``dropouti``), the cell's input x_t (``dropoutx``), the hidden state fed to
every matrix product of the cell (``dropouth``) and the cell's output before
the decoder (``dropout``) are multiplied by variational (locked) masks,
drawn once per sequence and batch row and scaled by 1 / keep. All draws use
the Flax rng ``'dropout'``.

  cell = RNNSearchCell(nhid=850)
  model = RNNModel(ntoken=10000, nhid=850, cell=cell)
  variables = init_rnn_variables(model, seed=0)
  logits, hidden, outputs = model.apply(
      variables, tokens, hidden, mask, arch, train=True,
      rngs={'dropout': key})

References:
  Wu et al. 2021, "Neural Architecture Search as Sparse Supernet", Eq. 1;
  Liu, Simonyan and Yang 2019 (DARTS), Sec. 2.1 and their rnn/ code;
  Pham et al. 2018 (ENAS) for the cell; Merity, Keskar and Socher 2018
  (AWD-LSTM) for the dropouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from sparsenas_jax import search_space
from sparsenas_jax.models.eval_network import live_nodes
from sparsenas_jax.models.ops import BN_EPS

INIT_RANGE = 0.04
"""Every weight but the decoder bias starts U(-INIT_RANGE, INIT_RANGE)
(DARTS's ``INITRANGE``)."""

WEIGHTINGS = ('mean', 'arch')
"""How ``RNNEvalCell`` combines a node's inputs."""

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
"""``RNNModel.remat``: what a time step keeps for the backward pass."""

_ACTIVATIONS = {
    'tanh': jnp.tanh,
    'relu': jax.nn.relu,
    'sigmoid': jax.nn.sigmoid,
    'identity': lambda x: x,
}


def _uniform_init(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -INIT_RANGE, INIT_RANGE)


# ----------------------------------------------------------------------------
# Pure pieces of the cell.
# ----------------------------------------------------------------------------


def batch_norm_1d(x: jax.Array, eps: float = BN_EPS) -> jax.Array:
  """Non-affine batch norm over the batch axis, with batch statistics.

  ``(x - mean) / sqrt(var + eps)``, biased variance, as PyTorch's
  ``BatchNorm1d(affine=False)`` in training mode; statistics in float32.

  Args:
    x: ``[B, D]``.
    eps: added to the variance.

  Returns:
    ``[B, D]``, the dtype of ``x``. An all-zero column stays zero.
  """
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=0)
  var = jnp.mean(jnp.square(x32 - mean), axis=0)
  return ((x32 - mean) * lax.rsqrt(var + eps)).astype(x.dtype)


def _masked(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  return x if mask is None else x * mask.astype(x.dtype)


def input_state(x_t: jax.Array, h_prev: jax.Array, w0: jax.Array,
                x_mask: Optional[jax.Array] = None,
                h_mask: Optional[jax.Array] = None) -> jax.Array:
  """The cell's input state s_0 (module docstring).

  Args:
    x_t: ``[B, ninp]``.
    h_prev: ``[B, nhid]``.
    w0: ``[ninp + nhid, 2 nhid]``; columns ``[:nhid]`` give the gate c_0.
    x_mask: ``[B, ninp]`` dropout mask on x_t, or None (no dropout).
    h_mask: ``[B, nhid]`` dropout mask on h_prev in the product, or None.

  Returns:
    ``s_0 = h + σ(c_0)⊙(tanh(h_0) − h)``, ``[B, nhid]``, with the unmasked
    h = h_prev in the interpolation.
  """
  xh = jnp.concatenate([_masked(x_t, x_mask), _masked(h_prev, h_mask)], -1)
  c0, h0 = jnp.split(xh @ w0.astype(xh.dtype), 2, axis=-1)
  return h_prev + jax.nn.sigmoid(c0) * (jnp.tanh(h0) - h_prev)


def search_node(states: jax.Array, a: jax.Array, w: jax.Array,
                ops: Sequence[str], h_mask: Optional[jax.Array] = None
                ) -> jax.Array:
  """One search node before its batch norm: the linear mix of all paths.

  ``Σ_j Σ_f a[j, f] (s_j + σ(c_j)⊙(f(h_j) − s_j))`` with ``[c_j|h_j] =
  (s_j⊙m_h) w``, all predecessors and ops at once. Computed as
  ``Σ_j ā_j (1 − σ(c_j))⊙s_j + σ(c_j)⊙Σ_f a[j, f] f(h_j)``, ``ā_j =
  Σ_f a[j, f]``: the same sum without a highway term per op.

  Args:
    states: ``[J, B, nhid]``, the predecessors s_0 … s_{J-1}.
    a: ``[J, len(ops)]``, the node's architecture weights.
    w: ``[nhid, 2 nhid]``, the node's weights, shared by its predecessors.
    ops: activation names.
    h_mask: ``[B, nhid]`` dropout mask on the states in the product, or None.

  Returns:
    ``[B, nhid]``; exactly 0 when ``a`` is all zeros.

  References:
    Wu et al. 2021, Eq. 1; Liu et al. 2019 (DARTS), ``DARTSCellSearch``.
  """
  a = a.astype(states.dtype)
  masked = states if h_mask is None else states * h_mask.astype(
      states.dtype)[None]
  ch = jnp.einsum('jbd,de->jbe', masked, w.astype(states.dtype))
  c, h = jnp.split(ch, 2, axis=-1)
  gate = jax.nn.sigmoid(c)
  # Elementwise, not an einsum over ops: XLA:CPU would run a dot of
  # contraction len(ops) per predecessor.
  mixed = sum(a[:, f, None, None] * _ACTIVATIONS[op](h)
              for f, op in enumerate(ops))
  a_sum = jnp.sum(a, axis=-1)[:, None, None]
  return jnp.sum(a_sum * (1 - gate) * states + gate * mixed, axis=0)


def _check_arch(arch, nodes: int, num_ops: int) -> None:
  expected = search_space.rnn_arch_shapes(nodes, num_ops)
  got = ({k: tuple(np.shape(v)) for k, v in arch.items()}
         if hasattr(arch, 'items') else type(arch).__name__)
  if got != expected:
    raise ValueError(f'arch does not match nodes={nodes}, {num_ops} ops: '
                     f'expected shapes {expected}, got {got}.')


# ----------------------------------------------------------------------------
# Cells.
# ----------------------------------------------------------------------------


class RNNSearchCell(nn.Module):
  """The recurrent search cell: every path of every node, mixed linearly.

  Params: ``'W0'`` ``[ninp + nhid, 2 nhid]`` and ``f'node_{i}'`` ``[nhid,
  2 nhid]`` for node i = 0 … nodes - 1 (the W_i producing state s_{i+1}),
  the names the arch uses. Batch norm after s_0 and, with
  ``node_batch_norm``, after every node (module docstring).

  Attributes:
    nhid: hidden size.
    nodes: intermediate nodes (8 in DARTS).
    ops: activations, a subset of ``search_space.RNN_OPS``; fixes the arch's
      last axis.
    node_batch_norm: the batch norm after every intermediate node (DARTS;
      the default). It makes the loss blind to the scale of each node's
      group (module docstring); False leaves the nodes unnormalised. The
      batch norm after s_0, which no architecture weight reaches, stays.

  References:
    Wu et al. 2021, Eq. 1; Liu et al. 2019 (DARTS), ``DARTSCellSearch``.
  """
  nhid: int
  nodes: int = search_space.RNN_NODES
  ops: tuple[str, ...] = search_space.RNN_OPS
  node_batch_norm: bool = True

  def __post_init__(self):
    search_space.check_rnn_ops(self.ops)
    if self.nodes < 1:
      raise ValueError(f'nodes must be >= 1, got {self.nodes}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, x_t, h_prev, arch, x_mask=None, h_mask=None):
    """One time step.

    Args:
      x_t: ``[B, ninp]``.
      h_prev: ``[B, nhid]``.
      arch: ``{f'node_{i}': [i + 1, len(ops)]}``
        (``search_space.rnn_arch_shapes``); not a Flax param.
      x_mask: ``[B, ninp]`` locked dropout mask of the input, or None.
      h_mask: ``[B, nhid]`` locked dropout mask of the hidden, or None.

    Returns:
      h_t, ``[B, nhid]``: the mean of the (normalised) nodes s_1 … s_nodes.

    Raises:
      ValueError: if the arch's shapes do not match ``nodes`` and ``ops``.
    """
    _check_arch(arch, self.nodes, len(self.ops))
    d = self.nhid
    w0 = self.param('W0', _uniform_init, (x_t.shape[-1] + d, 2 * d))
    states = batch_norm_1d(input_state(x_t, h_prev, w0, x_mask, h_mask))[None]
    for i in range(self.nodes):
      w = self.param(f'node_{i}', _uniform_init, (d, 2 * d))
      s = search_node(states, arch[f'node_{i}'], w, self.ops, h_mask)
      s = batch_norm_1d(s) if self.node_batch_norm else s
      states = jnp.concatenate([states, s[None]], axis=0)
    return jnp.mean(states[1:], axis=0)


def _check_genotype(genotype) -> None:
  """One-line ValueError unless the genotype's nodes and concat are sound."""
  existing = [0]
  for node in genotype.nodes:
    if node.index <= existing[-1]:
      raise ValueError(f'recurrent genotype: node indices must increase from '
                       f'1; got {node.index} after {existing[-1]}.')
    if not node.inputs:
      raise ValueError(f'recurrent genotype: node {node.index} has no '
                       'inputs.')
    for pred, op, _ in node.inputs:
      if pred not in existing:
        raise ValueError(f'recurrent genotype: node {node.index} reads state '
                         f'{pred}, not one of {existing}.')
      if op not in search_space.RNN_OPS:
        raise ValueError(f'recurrent genotype: node {node.index}: op {op!r} '
                         f'is not one of {search_space.RNN_OPS}.')
    existing.append(node.index)
  concat = tuple(genotype.concat)
  if not concat or any(i not in existing for i in concat):
    raise ValueError(f'recurrent genotype: concat {concat} must be a '
                     f'non-empty list of states among {existing}.')


class RNNEvalCell(nn.Module):
  """A derived recurrent cell: each node's kept paths, no batch norm.

  Built from a recurrent genotype (duck typed): ``genotype.nodes``, each
  node with ``.index`` (its state number, 1 … : s_1, s_2, …) and
  ``.inputs``, ``(pred, op, weight)`` triples with pred a state number
  below ``index`` (0 is s_0); ``genotype.concat``, the state numbers
  averaged into h_t. Nodes on no path to ``concat`` are left out.

  Params: ``'W0'`` and ``f'node_{index - 1}'`` ``[nhid, 2 nhid]`` per
  node, one W shared by all its inputs (the search cell's names).

  ``weighting`` says how a node combines its inputs' highway terms
  ``s_p + σ(c_p)⊙(f(h_p) − s_p)``:

  * ``'mean'`` (default): their mean. A one-input node is then exactly
    DARTS's node, and every node stays a gated interpolation (a convex
    combination, element by element) of its predecessors and their
    activations, as in DARTS. A sum would grow a node with its number of
    inputs, compounding through the later nodes and over time, and the
    search cell's batch norm, which absorbed such scales, is not here.
  * ``'arch'``: ``Σ weight · highway``, the genotype's weights as in the
    supernet's own mix (sign and magnitude included).

  Attributes:
    genotype: the recurrent genotype (above).
    nhid: hidden size.
    weighting: ``'mean'`` or ``'arch'``.

  References:
    Liu et al. 2019 (DARTS), ``DARTSCell``; Wu et al. 2021 for mixed paths.
  """
  genotype: Any
  nhid: int
  weighting: str = 'mean'

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f'weighting must be one of {WEIGHTINGS}; got '
                       f'{self.weighting!r}.')
    _check_genotype(self.genotype)
    super().__post_init__()

  @nn.compact
  def __call__(self, x_t, h_prev, arch=None, x_mask=None, h_mask=None):
    """One time step; as ``RNNSearchCell.__call__``, ``arch`` must be None.

    Returns:
      h_t, ``[B, nhid]``: the mean of the states in ``genotype.concat``.
    """
    if arch is not None:
      raise ValueError('RNNEvalCell takes no arch (its genotype fixes the '
                       'cell); pass arch=None.')
    d = self.nhid
    w0 = self.param('W0', _uniform_init, (x_t.shape[-1] + d, 2 * d))
    states = {0: input_state(x_t, h_prev, w0, x_mask, h_mask)}
    concat = tuple(self.genotype.concat)
    for node in live_nodes(self.genotype.nodes, concat):
      w = self.param(f'node_{node.index - 1}', _uniform_init, (d, 2 * d))
      preds = jnp.stack([states[p] for p, _, _ in node.inputs])
      masked = preds if h_mask is None else preds * h_mask.astype(
          preds.dtype)[None]
      c, h = jnp.split(
          jnp.einsum('nbd,de->nbe', masked, w.astype(preds.dtype)), 2, -1)
      acts = jnp.stack([_ACTIVATIONS[op](h[k])
                        for k, (_, op, _) in enumerate(node.inputs)])
      terms = preds + jax.nn.sigmoid(c) * (acts - preds)
      if self.weighting == 'mean':
        states[node.index] = jnp.mean(terms, axis=0)
      else:
        weights = jnp.asarray([wt for _, _, wt in node.inputs], terms.dtype)
        states[node.index] = jnp.einsum('n,nbd->bd', weights, terms)
    return jnp.mean(jnp.stack([states[i] for i in concat]), axis=0)


# ----------------------------------------------------------------------------
# Dropout and the language model.
# ----------------------------------------------------------------------------


def locked_mask(key: jax.Array, rate: float, shape, dtype=jnp.float32
                ) -> jax.Array:
  """A dropout mask: Bernoulli(1 - rate) / (1 - rate), of ``shape``.

  Drawn once per sequence (``[B, D]``) and applied at every step, it is
  the variational (locked) dropout of DARTS's ``mask2d`` and
  ``LockedDropout``.
  """
  keep = 1.0 - rate
  return jax.random.bernoulli(key, keep, shape).astype(dtype) / keep


def embedding_dropout(embedding: jax.Array, key: jax.Array, rate: float
                      ) -> jax.Array:
  """The embedding matrix with whole word rows dropped, the rest scaled by
  1 / (1 - rate) (DARTS's ``embedded_dropout``).

  Args:
    embedding: ``[ntoken, D]``.
    key: a ``jax.random`` key.
    rate: probability of dropping a word.

  Returns:
    ``[ntoken, D]``.
  """
  return embedding * locked_mask(key, rate, (embedding.shape[0], 1),
                                 embedding.dtype)


def _cell_step(cell, h_prev, xs, arch, x_mask, h_mask):
  """One scanned step; a padded step (mask 0) keeps the hidden state."""
  x_t, real = xs
  h_t = cell(x_t, h_prev, arch, x_mask, h_mask)
  h = jnp.where(real > 0, h_t, h_prev)
  return h, h


class RNNModel(nn.Module):
  """DARTS's language model around a recurrent cell, tied embeddings.

  Embedding (``ntoken x nhid``), the cell scanned over time, output dropout,
  and a decoder tied to the embedding: ``logits = h Eᵀ + bias``.

  Params: ``'embedding'`` ``[ntoken, nhid]``, ``'decoder_bias'``
  ``[ntoken]`` and the cell's under ``'cell'``. There is no other
  collection (no batch statistics, no state); dropout draws from the rng
  ``'dropout'``, only with ``train=True`` and a non-zero rate.

  Attributes:
    ntoken: vocabulary size.
    nhid: hidden size, also the embedding size (tied weights).
    cell: an unbound ``RNNSearchCell`` or ``RNNEvalCell`` with this
      ``nhid``; the model adopts it as its submodule ``'cell'``.
    dropout: locked dropout on the cell's output before the decoder.
    dropouth: locked dropout on the hidden state in the cell's products.
    dropoutx: locked dropout on the cell's input.
    dropouti: locked dropout on the embedding output.
    dropoute: probability of dropping a word's whole embedding row.
    unroll: time steps per iteration of the scan's loop (the same numbers;
      a larger one trades compile time for fewer loop iterations).
    remat: what each time step keeps for the backward pass (the same
      numbers; ``REMAT_POLICIES``): ``'none'`` every intermediate of the T
      steps; ``'full'`` only the carried state, the cell recomputed in the
      backward; ``'dots'`` the matrix products' outputs, the elementwise
      rest recomputed (a few hundred MB at DARTS's search size, and faster
      than both others on XLA:CPU).

  References:
    Liu et al. 2019 (DARTS), ``RNNModel``; Merity et al. 2018.
  """
  ntoken: int
  nhid: int
  cell: nn.Module
  dropout: float = 0.5
  dropouth: float = 0.5
  dropoutx: float = 0.5
  dropouti: float = 0.5
  dropoute: float = 0.1
  unroll: int = 1
  remat: str = 'none'

  def __post_init__(self):
    if not isinstance(self.cell, (RNNSearchCell, RNNEvalCell)):
      raise ValueError(f'cell must be an RNNSearchCell or RNNEvalCell; got '
                       f'{type(self.cell).__name__}.')
    if self.cell.nhid != self.nhid:
      raise ValueError(f'the cell has nhid={self.cell.nhid}, the model '
                       f'{self.nhid}; they must agree.')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'remat must be one of {", ".join(REMAT_POLICIES)}; '
                       f'got {self.remat!r}.')
    for name in ('dropout', 'dropouth', 'dropoutx', 'dropouti', 'dropoute'):
      rate = getattr(self, name)
      if not 0.0 <= rate < 1.0:
        raise ValueError(f'{name} must be in [0, 1); got {rate}.')
    super().__post_init__()

  @property
  def is_search(self) -> bool:
    return isinstance(self.cell, RNNSearchCell)

  def _mask(self, train: bool, rate: float, shape, dtype):
    if not train or rate == 0.0:
      return None
    return locked_mask(self.make_rng('dropout'), rate, shape, dtype)

  @nn.compact
  def __call__(self, tokens, hidden, mask, arch=None, *, train: bool):
    """Runs the model over a window of T steps.

    Args:
      tokens: ``int32[T, B]``.
      hidden: ``[B, nhid]``, the hidden state before the window.
      mask: ``float32[T]``, 1 for a real step, 0 for padding. A padded step
        leaves the hidden state unchanged, so a window padded to a fixed
        length gives the new hidden and the real steps' log-probs of the
        unpadded window (padding at the end; the masks are drawn per
        sequence, so this holds with dropout too, for the same rng).
      arch: the search cell's architecture weights, ``{f'node_{i}': [i + 1,
        len(ops)]}``; None with an eval cell.
      train: apply dropout (the ``'dropout'`` rng is then needed).

    Returns:
      ``(logits [T, B, ntoken], new_hidden [B, nhid], outputs [T, B,
      nhid])``: unnormalised next-word scores (a loss normalises them
      itself, without keeping the log-probabilities, the step's largest
      arrays). ``outputs`` are the cell's h_t before output dropout (for
      DARTS's temporal activation regularisation); at a padded step they
      and the logits repeat the held state, to be masked by the caller.

    Raises:
      ValueError: for a search cell without arch, or an eval cell with one.
    """
    if self.is_search and arch is None:
      raise ValueError('a search cell needs arch.')
    if not self.is_search and arch is not None:
      raise ValueError('an eval cell takes no arch; pass arch=None.')
    d, (_, b) = self.nhid, tokens.shape
    embedding = self.param('embedding', _uniform_init, (self.ntoken, d))
    bias = self.param('decoder_bias', nn.initializers.zeros, (self.ntoken,))
    dtype = embedding.dtype
    lookup = embedding
    if train and self.dropoute:
      lookup = embedding_dropout(embedding, self.make_rng('dropout'),
                                 self.dropoute)
    x = jnp.take(lookup, tokens, axis=0)
    x = _masked(x, self._mask(train, self.dropouti, (b, d), dtype))
    x_mask = self._mask(train, self.dropoutx, (b, d), dtype)
    h_mask = self._mask(train, self.dropouth, (b, d), dtype)
    body = _cell_step if self.remat == 'none' else nn.remat(
        _cell_step, prevent_cse=False, policy=REMAT_POLICIES[self.remat])
    scan = nn.scan(body, variable_broadcast='params',
                   split_rngs={'params': False},
                   in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                   unroll=self.unroll)
    new_hidden, outputs = scan(self.cell, hidden.astype(dtype),
                               (x, jnp.asarray(mask)), arch, x_mask, h_mask)
    out = _masked(outputs, self._mask(train, self.dropout, (b, d), dtype))
    logits = jnp.einsum('tbd,vd->tbv', out, embedding) + bias
    return logits, new_hidden, outputs


def init_rnn_variables(model: RNNModel, seed: int, *, arch=None
                       ) -> dict[str, Any]:
  """``{'params': ...}`` of ``model``, drawn in NumPy (nothing compiles).

  Shapes from ``jax.eval_shape`` of ``model.init``; every leaf is
  U(-INIT_RANGE, INIT_RANGE) (DARTS's init of the embedding and the cell)
  except ``'decoder_bias'``, zero. Leaves are drawn in tree order.

  Args:
    model: an ``RNNModel``.
    seed: of the NumPy generator.
    arch: with a search cell, an arch to take the shapes from (only its
      shapes are used); None for ``search_space.rnn_arch_shapes`` of the
      cell. Ignored with an eval cell.

  Returns:
    The variables, float32 NumPy arrays.
  """
  cell = model.cell
  if not isinstance(cell, RNNSearchCell):
    arch = None
  elif arch is None:
    arch = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in
            search_space.rnn_arch_shapes(cell.nodes, len(cell.ops)).items()}
  arch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype),
                      arch)

  def init(arch):
    return model.init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
        jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, model.nhid)),
        jnp.ones((1,)), arch, train=False)

  shapes = jax.eval_shape(init, arch)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if getattr(path[-1], 'key', None) == 'decoder_bias':
      return np.zeros(s.shape, np.float32)
    return rng.uniform(-INIT_RANGE, INIT_RANGE, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, dict(shapes))
