"""sparsenas_jax: Neural Architecture Search as Sparse Supernet in JAX.

A JAX/Flax/Optax implementation of SparseNAS (Wu et al., AAAI 2021).
"""

from sparsenas_jax.optim import adam_hapg
from sparsenas_jax.optim import darts_node_groups
from sparsenas_jax.optim import hapg
from sparsenas_jax.optim import leaf_groups
from sparsenas_jax.optim import prox_group_l2
from sparsenas_jax.optim import prox_l1
from sparsenas_jax.optim import prox_sgl
from sparsenas_jax.optim import row_groups
from sparsenas_jax.optim import sgl_penalty
from sparsenas_jax.optim import sgl_prox
from sparsenas_jax.optim import sparse_params

__version__ = '0.2.0'

__all__ = [
    'adam_hapg', 'darts_node_groups', 'hapg', 'leaf_groups', 'prox_group_l2',
    'prox_l1', 'prox_sgl', 'row_groups', 'sgl_penalty', 'sgl_prox',
    'sparse_params',
]
