"""Pictures of genotypes."""

import pytest

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import viz

N = genotype_lib.Node

# Mixed paths: two ops on one edge, node 3 removed (indices 2, 4, 5), an
# input skipped by node 4, a reduction cell with a single live node.
MIXED = genotype_lib.Genotype(
    normal=(N(2, [(0, 'sep_conv_3x3', 0.41), (0, 'dil_conv_5x5', -0.2),
                  (1, 'max_pool_3x3', 1.7)]),
            N(4, [(2, 'skip_connect', 0.33)]),
            N(5, [(1, 'dil_conv_3x3', 1e-3), (4, 'avg_pool_3x3', 0.5),
                  (4, 'sep_conv_5x5', 0.9)])),
    normal_concat=(2, 4, 5),
    reduce=(N(2, [(0, 'max_pool_3x3', 0.8), (1, 'skip_connect', 0.25),
                  (1, 'sep_conv_3x3', -0.6)]),),
    reduce_concat=(2,))


def _png_size(data):
  """Width and height from a PNG's IHDR chunk."""
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  return tuple(int.from_bytes(data[16 + 4 * i:20 + 4 * i], 'big')
               for i in range(2))


@pytest.mark.parametrize('name, show_weights', [('mixed', True),
                                                ('darts_v2', False)])
def test_plot_genotype_writes_png(tmp_path, name, show_weights):
  genotype = MIXED if name == 'mixed' else genotype_lib.GENOTYPES[name]
  path = tmp_path / 'pics' / f'{name}.png'  # parent folders are created
  viz.plot_genotype(genotype, path, show_weights=show_weights, dpi=60)
  data = path.read_bytes()
  assert len(data) > 10_000
  width, height = _png_size(data)
  # Two rows (normal, reduce), each a cell beside its heat map.
  assert width > height > 0

