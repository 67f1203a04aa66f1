"""The paper's sparsity optimizers as Optax transformations.

``hapg``, ``adam_hapg`` and ``sgl_prox`` return
``optax.GradientTransformationExtraArgs``: like optax's own optimizers their
``update`` accepts (and ignores) extra keyword arguments such as
``value=loss``. ``clip_by_global_norm`` is optax's, with the norm as one
reduction over all leaves. This package needs only jax, optax and numpy.

Compose them into your own chains::

  from sparsenas_jax import optim
  groups = optim.darts_node_groups(arch)
  opt = optim.adam_hapg(3e-3, optax.linear_schedule(0., .5, 5000), 0.5,
                        groups=groups)
"""

from sparsenas_jax.optim.clipping import clip_by_global_norm
from sparsenas_jax.optim.clipping import clip_coefficient
from sparsenas_jax.optim.clipping import global_norm
from sparsenas_jax.optim.groups import UNPENALIZED
from sparsenas_jax.optim.groups import darts_node_groups
from sparsenas_jax.optim.groups import leaf_groups
from sparsenas_jax.optim.groups import row_groups
from sparsenas_jax.optim.hapg import adam_hapg
from sparsenas_jax.optim.hapg import AdamHapgState
from sparsenas_jax.optim.hapg import hapg
from sparsenas_jax.optim.hapg import HapgState
from sparsenas_jax.optim.hapg import sparse_params
from sparsenas_jax.optim.prox import prox_group_l2
from sparsenas_jax.optim.prox import prox_l1
from sparsenas_jax.optim.prox import prox_sgl
from sparsenas_jax.optim.prox import sgl_penalty
from sparsenas_jax.optim.sgl_prox import sgl_prox
from sparsenas_jax.optim.sgl_prox import SglProxState

__all__ = [
    'UNPENALIZED', 'AdamHapgState', 'HapgState', 'SglProxState', 'adam_hapg',
    'clip_by_global_norm', 'clip_coefficient', 'darts_node_groups',
    'global_norm', 'hapg', 'leaf_groups', 'prox_group_l2', 'prox_l1',
    'prox_sgl', 'row_groups', 'sgl_penalty', 'sgl_prox', 'sparse_params',
]
