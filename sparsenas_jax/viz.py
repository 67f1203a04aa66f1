"""Pictures of genotypes: a derived cell pair drawn as two DAGs, and a
recurrent cell drawn as a chain of states beside a heat map of its weights.

  from sparsenas_jax import viz
  viz.plot_genotype(genotype, 'genotype.png', show_weights=True)
  viz.plot_recurrent_genotype(rnn_genotype, 'rnn_genotype.png')

The figure is drawn on matplotlib's Agg canvas directly, so the global
backend (``pyplot``'s) is neither needed nor changed.
"""

from __future__ import annotations

import math
import os

from matplotlib import colormaps
from matplotlib import figure
from matplotlib import patches
from matplotlib import path as mpath
from matplotlib.backends import backend_agg
import numpy as np

from sparsenas_jax import genotype as genotype_lib
from sparsenas_jax import rnn_genotype as rnn_genotype_lib
from sparsenas_jax import search_space

_OP_COLORS = {
    'max_pool_3x3': '#1f77b4', 'avg_pool_3x3': '#17becf',
    'skip_connect': '#000000', 'sep_conv_3x3': '#d62728',
    'sep_conv_5x5': '#ff7f0e', 'dil_conv_3x3': '#2ca02c',
    'dil_conv_5x5': '#9467bd',
}
_EXTRA_COLORS = ('#8c564b', '#e377c2', '#bcbd22', '#393b79', '#637939')
_SHORT = {'max_pool_3x3': 'max', 'avg_pool_3x3': 'avg', 'skip_connect': 'skip',
          'sep_conv_3x3': 'sep3', 'sep_conv_5x5': 'sep5',
          'dil_conv_3x3': 'dil3', 'dil_conv_5x5': 'dil5'}


def _edge_label(edges, show_weights, per_line=3):
  """An edge's ops, short names, ``per_line`` to a line (with weights, one
  per line)."""
  names = [(f'{_SHORT.get(op, op)} {w:.2g}' if show_weights
            else _SHORT.get(op, op)) for op, w in edges]
  per_line = 1 if show_weights else per_line
  return '\n'.join(' '.join(names[i:i + per_line])
                   for i in range(0, len(names), per_line))
_MARGIN = 1.3  # data units around a cell's nodes


def _layout(nodes):
  """Places a cell's nodes on an arch: c_{k-1}, c_{k-2}, nodes in order, c_k.

  Points on the upper half of an ellipse are in convex position, so a
  straight edge never runs through a third node, and the DAG still reads
  left to right like graphviz's LR layout.
  """
  order = [1, 0] + [node.index for node in nodes] + ['out']
  n = len(order)
  a = 1.6 * (n - 1)  # half width: about 2.5 units between neighbours
  b = 0.6 * a + 1.0
  pos = {}
  for j, key in enumerate(order):
    t = math.pi * (1 - j / (n - 1))
    pos[key] = (a * math.cos(t), b * math.sin(t))
  return pos


class _Arc:
  """A quadratic Bezier from p0 to p1 bent like matplotlib's ``arc3,rad``.

  The control point sits ``rad`` times the chord length off the chord's
  middle, so the curve's middle is ``rad / 2`` chord lengths off it.
  """

  def __init__(self, p0, p1, rad):
    (x0, y0), (x1, y1) = p0, p1
    self.points = (p0, ((x0 + x1) / 2 + rad * (y1 - y0),
                        (y0 + y1) / 2 - rad * (x1 - x0)), p1)

  def at(self, t):
    """The point at parameter t in [0, 1]."""
    return self._blossom(t, t)

  def _blossom(self, a, b):
    (x0, y0), (cx, cy), (x1, y1) = self.points
    w0, w1, w2 = (1 - a) * (1 - b), a * (1 - b) + (1 - a) * b, a * b
    return (w0 * x0 + w1 * cx + w2 * x1, w0 * y0 + w1 * cy + w2 * y1)

  def clipped(self, radius):
    """Control points of the part outside circles of ``radius`` at the ends.

    Clipping analytically (bisection on t, then the sub-curve's blossom)
    is much faster than matplotlib's generic patch clipping.
    """
    def leave(center, inside_at_0):
      lo, hi = 0.0, 0.5
      for _ in range(30):
        mid = (lo + hi) / 2
        x, y = self.at(mid if inside_at_0 else 1 - mid)
        if math.hypot(x - center[0], y - center[1]) < radius:
          lo = mid
        else:
          hi = mid
      return hi

    a = leave(self.points[0], True)
    b = 1 - leave(self.points[2], False)
    return self.at(a), self._blossom(a, b), self.at(b)


def _draw_arrow(ax, arc, radius, color, label, placed, *, spots, fontsize,
                style):
  """Draws ``arc`` as an arrow between two node circles of ``radius``.

  The label slides along the curve, over the parameters ``spots``, to the
  spot farthest from the anchors in ``placed`` (other labels, nodes), the
  first spot winning ties; labels are wide, so horizontal distance counts
  for less. The chosen spot is appended to ``placed``.
  """
  curve = mpath.Path(arc.clipped(radius * 1.04),
                     [mpath.Path.MOVETO, mpath.Path.CURVE3,
                      mpath.Path.CURVE3])
  ax.add_patch(patches.FancyArrowPatch(
      path=curve, arrowstyle='-|>', mutation_scale=13, color=color, lw=1.3,
      linestyle=style, zorder=2))
  if not label:
    return
  points = [arc.at(t) for t in spots]
  best = max(points, key=lambda q: min(
      math.hypot((q[0] - r[0]) / 3, q[1] - r[1]) for r in placed) + 1e-3 * (
          q == points[0]))
  placed.append(best)
  ax.text(*best, label, ha='center', va='center', fontsize=fontsize,
          color=color, zorder=5, linespacing=1.1,
          bbox=dict(boxstyle='round,pad=0.15', fc='white', ec='none',
                    alpha=0.85))


def _count(n: int, noun: str) -> str:
  return f'{n} {noun}' + ('' if n == 1 else 's')


def _draw_cell(ax, title, nodes, concat, ops, show_weights):
  """Draws one cell on ``ax`` in data units; returns the data extent."""
  pos = _layout(nodes)
  radius = 0.6
  names = {0: r'$c_{k-2}$', 1: r'$c_{k-1}$', 'out': r'$c_{k}$'}
  for key, (x, y) in pos.items():
    circle = patches.Circle(
        (x, y), radius, facecolor='#a6d8f0' if key in names else '#fff3b0',
        edgecolor='black', lw=1.2, zorder=3)
    ax.add_patch(circle)
    ax.text(x, y, names.get(key, str(key)), ha='center', va='center',
            fontsize=12, zorder=4)

  extra = iter(_EXTRA_COLORS * (1 + len(ops)))
  colors = {op: _OP_COLORS.get(op) or next(extra) for op in ops}
  placed = list(pos.values())  # label anchors so far, nodes included

  def arrow(src, dst, rad, color, label, style='-'):
    _draw_arrow(ax, _Arc(pos[src], pos[dst], rad), radius, color, label,
                placed, spots=(0.5, 0.43, 0.57, 0.36, 0.64, 0.29, 0.71),
                fontsize=7, style=style)

  for node in nodes:
    by_src = {}
    for src, op, w in node.inputs:
      by_src.setdefault(src, []).append((op, w))
    for src, edges in by_src.items():
      # One arrow per kept edge, listing its ops (the heat map beside the
      # cell has their weights); coloured by the op when it keeps one.
      color = colors[edges[0][0]] if len(edges) == 1 else '#444444'
      arrow(src, node.index, 0.12, color,
            _edge_label(edges, show_weights))
  for index in concat:
    arrow(index, 'out', 0.0, '#888888', None, style='--')

  xs = [p[0] for p in pos.values()]
  ys = [p[1] for p in pos.values()]
  margin = _MARGIN
  ax.set_xlim(min(xs) - margin, max(xs) + margin)
  ax.set_ylim(min(ys) - margin, max(ys) + margin)
  ax.set_aspect('equal')
  ax.axis('off')
  n_ops = sum(len(n.inputs) for n in nodes)
  ax.set_title(f'{title}: {_count(len(nodes), "node")}, '
               f'{_count(n_ops, "op")}', fontsize=13)
  return (max(xs) - min(xs) + 2 * margin, max(ys) - min(ys) + 2 * margin)


def _draw_weights(fig, ax, rows, ops, title):
  """Heat map of kept weights: a row per edge, a column per op.

  Args:
    fig: the figure (for the colour bar).
    ax: the axes to draw on.
    rows: ``[(label, {op: weight})]``, one per edge; ops not kept blank.
    ops: the column order.
    title: the panel's title.
  """
  col = {op: c for c, op in enumerate(ops)}
  weights = np.full((max(len(rows), 1), len(ops)), np.nan)
  for r, (_, kept) in enumerate(rows):
    for op, w in kept.items():
      weights[r, col[op]] = w
  finite = weights[np.isfinite(weights)]
  vmax = float(np.max(np.abs(finite))) if finite.size else 1.0
  vmax = vmax or 1.0
  cmap = colormaps['RdBu_r'].with_extremes(bad='#eeeeee')
  image = ax.imshow(np.ma.masked_invalid(weights), cmap=cmap, vmin=-vmax,
                    vmax=vmax, aspect='auto', interpolation='nearest')
  for (r, c), w in np.ndenumerate(weights):
    if np.isfinite(w):
      ax.text(c, r, f'{w:.2g}', ha='center', va='center', fontsize=7,
              color='white' if abs(w) > 0.6 * vmax else 'black')
  ax.set_xticks(range(len(ops)), [_SHORT.get(op, op) for op in ops],
                rotation=45, ha='right', fontsize=8)
  ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
  ax.set_title(title, fontsize=11)
  fig.colorbar(image, ax=ax, shrink=0.8)


def _cell_edges(nodes):
  """``[(label, {op: weight})]`` per kept edge of a cell, by target."""
  names = {0: '$c_{k-2}$', 1: '$c_{k-1}$'}
  rows = []
  for node in nodes:
    kept = {}
    for src, op, w in node.inputs:
      kept.setdefault(src, {})[op] = w
    for src in sorted(kept):
      rows.append((f'{names.get(src, src)} $\\to$ {node.index}', kept[src]))
  return rows


def plot_genotype(genotype: genotype_lib.Genotype,
                  path: genotype_lib.PathLike, *,
                  show_weights: bool = False, dpi: int = 150) -> None:
  """Draws both cells, each beside a heat map of its weights, into a PNG.

  In the style of DARTS's graphviz pictures: cell inputs c_{k-2} and c_{k-1}
  on the left, intermediate nodes (numbered as in the genotype) by depth,
  output c_{k} on the right; one arrow per kept edge, listing its ops
  (short names: sep3 = sep_conv_3x3, ...) and coloured by the op where it
  keeps one (dark grey where it keeps several), grey arrows from the
  concatenated nodes into c_{k}. Beside each cell, its kept weights: a row
  per edge, a column per op, blank where an op was removed. Normal cell
  above, reduction cell below. Uses matplotlib's Agg canvas directly, so
  the global backend is left alone.

  Args:
    genotype: the architecture to draw.
    path: the PNG file to write (parent folders are created).
    show_weights: also print each op's weight on its arrow.
    dpi: resolution.
  """
  fig = figure.Figure(layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  scale = 0.75  # inches per data unit of a cell
  weights_width = 2.2 + 0.5 * len(genotype.ops)
  # Both cells at one scale: the panels as wide as the wider cell.
  cell_width = max(_layout(genotype.cell(t)[0])['out'][0] * 2 + 2 * _MARGIN
                   for t in search_space.CELL_TYPES)
  heights = []
  for cell_type in search_space.CELL_TYPES:
    nodes, _ = genotype.cell(cell_type)
    heights.append(max(0.55 * scale * cell_width,
                       0.28 * len(_cell_edges(nodes)) + 1.6))
  axes = fig.subplots(2, 2, gridspec_kw={
      'width_ratios': [scale * cell_width, weights_width],
      'height_ratios': heights})
  for row, cell_type in zip(axes, search_space.CELL_TYPES):
    nodes, concat = genotype.cell(cell_type)
    _draw_cell(row[0], f'{cell_type} cell', nodes, concat, genotype.ops,
               show_weights)
    _draw_weights(fig, row[1], _cell_edges(nodes), genotype.ops,
                  f'{cell_type} cell: kept weights')
  fig.set_size_inches(scale * cell_width + weights_width, sum(heights) + 0.6)
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=dpi, format='png')


# -- The recurrent cell ------------------------------------------------------

_RNN_OP_COLORS = {'tanh': '#d62728', 'relu': '#1f77b4', 'sigmoid': '#2ca02c',
                  'identity': '#000000'}
_RNN_SPACING = 3.0  # data units between neighbouring states


def _rnn_arc_height(span):
  """How far above the line an edge over ``span`` positions bulges.

  Straight between neighbours; higher with the span, so that the labels of
  edges over different spans sit at different heights.
  """
  return 0.0 if span <= 1 else 0.7 + 0.6 * (span - 2)


def _draw_recurrent_cell(ax, genotype, show_weights):
  """Draws the cell on ``ax`` in data units; returns the data extent."""
  order = [0] + [node.index for node in genotype.nodes] + ['out']
  place = {key: j for j, key in enumerate(order)}
  pos = {key: (_RNN_SPACING * j, 0.0) for key, j in place.items()}
  radius = 0.6
  names = {0: r'$s_0$', 'out': r'$h_t$'}
  for key, (x, y) in pos.items():
    ax.add_patch(patches.Circle(
        (x, y), radius, facecolor='#a6d8f0' if key in names else '#fff3b0',
        edgecolor='black', lw=1.2, zorder=3))
    ax.text(x, y, names.get(key, f'$s_{{{key}}}$'), ha='center',
            va='center', fontsize=12, zorder=4)

  placed = list(pos.values())  # label anchors so far, nodes included

  def arrow(src, dst, height, color, label, style='-'):
    chord = pos[dst][0] - pos[src][0]
    # _Arc's curve peaks at rad / 2 chord lengths off the chord; negative
    # rad bends a left-to-right edge upwards.
    _draw_arrow(ax, _Arc(pos[src], pos[dst], -2 * height / chord), radius,
                color, label, placed, spots=(0.5, 0.42, 0.58, 0.34, 0.66),
                fontsize=8, style=style)

  top = 0.0
  for node in genotype.nodes:
    by_pred = {}
    for pred, op, w in node.inputs:
      by_pred.setdefault(pred, []).append((op, w))
    for pred, edges in by_pred.items():
      height = _rnn_arc_height(place[node.index] - place[pred])
      top = max(top, height)
      label = '\n'.join(f'{op} ({w:.3g})' if show_weights else op
                        for op, w in edges)
      color = (_RNN_OP_COLORS.get(edges[0][0], '#8c564b') if len(edges) == 1
               else '#444444')
      arrow(pred, node.index, height, color, label)
  bottom = 0.0
  for index in genotype.concat:
    # Mean into h_t: grey, dashed, below the line, out of the labels' way.
    height = -0.3 * (place['out'] - place[index] - 1)
    bottom = min(bottom, height)
    arrow(index, 'out', height, '#888888', None, style='--')

  margin = _MARGIN
  xs = [p[0] for p in pos.values()]
  ax.set_xlim(min(xs) - margin, max(xs) + margin)
  ax.set_ylim(bottom - margin, top + margin)
  ax.set_aspect('equal')
  ax.axis('off')
  n_ops = sum(len(n.inputs) for n in genotype.nodes)
  ax.set_title(f'recurrent cell: {_count(len(genotype.nodes), "node")}, '
               f'{_count(n_ops, "op")}',
               fontsize=13)
  return max(xs) - min(xs) + 2 * margin, top - bottom + 2 * margin


def _recurrent_edges(genotype):
  """``{(node, pred): {op: weight}}`` of a recurrent genotype."""
  edges = {}
  for node in genotype.nodes:
    for pred, op, w in node.inputs:
      edges.setdefault((node.index, pred), {})[op] = w
  return edges


def plot_recurrent_genotype(genotype: rnn_genotype_lib.RecurrentGenotype,
                            path: genotype_lib.PathLike, *,
                            show_weights: bool = True,
                            dpi: int = 150) -> None:
  """Draws a recurrent cell and a heat map of its weights into a PNG.

  Left, the cell: states left to right, s_0 first, the live intermediate
  states by number, h_t on the right; one arrow per kept edge pred -> node
  (straight between neighbours, arched above the line over longer spans)
  labelled with its op(s), coloured by the op (dark grey when one edge keeps
  several), and grey dashed arrows below the line from the states averaged
  into h_t. Right, the kept weights: a row per edge, a column per op, blank
  where an op was not kept. Uses matplotlib's Agg canvas directly, so the
  global backend is left alone.

  Args:
    genotype: the cell to draw.
    path: the PNG file to write (parent folders are created).
    show_weights: also print each op's architecture weight on its arrow.
    dpi: resolution.
  """
  fig = figure.Figure(layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  n_edges = len({(node.index, pred) for node in genotype.nodes
                 for pred, _, _ in node.inputs})
  scale = 0.75  # inches per data unit of the cell
  n = len(genotype.nodes)
  cell_width = scale * (_RNN_SPACING * (n + 1) + 2 * _MARGIN)
  weights_width = 2.2 + 0.5 * len(genotype.ops)
  axes = fig.subplots(1, 2, gridspec_kw={
      'width_ratios': [cell_width, weights_width]})
  width, height = _draw_recurrent_cell(axes[0], genotype, show_weights)
  rows = [(f'$s_{{{p}}} \\to s_{{{k}}}$', kept)
          for (k, p), kept in sorted(_recurrent_edges(genotype).items())]
  _draw_weights(fig, axes[1], rows, genotype.ops, 'kept weights')
  fig.set_size_inches(scale * width + weights_width,
                      max(scale * height + 0.5, 0.28 * n_edges + 1.6))
  parent = os.path.dirname(os.fspath(path))
  if parent:
    os.makedirs(parent, exist_ok=True)
  fig.savefig(path, dpi=dpi, format='png')
