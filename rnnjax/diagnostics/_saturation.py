"""Gate saturation: how many units sit where their nonlinearity's derivative is small.

For every nonlinearity of the cell's step (the activation of a simple RNN; a
Jordan network's hidden and output activations; the LSTM's i, f, g, o gates
and the ``tanh(c_t)`` of its output; the GRU's r, z, n) the pre-activation
``a`` and ``y = act(a)`` are recomputed along the trajectory and a unit counts
as *saturated* when

=========================  ==================================================
activation                 saturated when
=========================  ==================================================
sigmoid, hard_sigmoid      ``y < 0.1`` or ``y > 0.9``   (``sigmoid' < 0.09``)
tanh                       ``|y| > 0.9``                (``tanh' < 0.19``)
relu, leaky_relu           ``a <= 0`` (the unit is off: derivative 0 / 0.01)
identity                   never
anything else (elu, ...)   ``|act'(a)| < 0.1``
=========================  ==================================================

The mean derivative ``act'(a)`` is reported alongside (``sigmoid' <= 1/4``,
``tanh' <= 1``: the reason why sigmoid RNNs forget fast).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.diagnostics import _core as core
from rnnjax._cells import RNNCell
from rnnjax._layers import Stack


class GateSaturation(NamedTuple):
  """Saturation statistics of one nonlinearity.

  Attributes:
    fraction: fraction of (sequence, valid step, unit) triples saturated (scalar).
    mean_derivative: mean of ``act'(a)`` over the same triples (scalar).
    fraction_per_step: ``[*B, T]`` fraction of units saturated at each step
      (NaN past ``lengths``).
  """
  fraction: jax.Array
  mean_derivative: jax.Array
  fraction_per_step: jax.Array


def _gates(cell, params, carry, x):
  """One step of ``cell`` that also returns ``[(name, pre_activation, activation)]``.

  The gates come from the cell's own declaration (``cell.step_with_gates``,
  the protocol of ``rnnjax/_cells.py``); a Stack prefixes them by layer.
  """
  if isinstance(cell, Stack):
    new, out = [], []
    for l, (c, p, h) in enumerate(zip(cell.cells, params, carry)):
      h, x, g = _gates(c, p, h, x)
      new.append(h)
      out += [(f"layer{l}.{n}", a, act) for n, a, act in g]
    return tuple(new), x, out
  if not supported(cell):
    raise TypeError(
        f"saturation needs a cell that declares its gates (an rnnjax.RNNCell) or a Stack of "
        f"them, got {type(cell).__name__}.")
  new, y, named = cell.step_with_gates(params, carry, x)
  return new, y, [tuple(g) for g in named]


def _saturated(act, pre):
  """Boolean mask of saturated units and the derivative, by the module's table."""
  y, dy = jax.jvp(act, (pre,), (jnp.ones_like(pre),))
  name = getattr(act, "name", None)
  if name in ("sigmoid", "hard_sigmoid"):
    sat = (y < 0.1) | (y > 0.9)
  elif name == "tanh":
    sat = jnp.abs(y) > 0.9
  elif name in ("relu", "leaky_relu"):
    sat = pre <= 0
  elif name in ("identity", "linear"):
    sat = jnp.zeros(pre.shape, bool)
  else:
    sat = jnp.abs(dy) < 0.1
  return sat, dy


def supported(cell) -> bool:
  """Whether :func:`saturation` knows the gates of ``cell`` (protocol cells and Stacks of them)."""
  cells = cell.cells if isinstance(cell, Stack) else (cell,)
  return all(isinstance(c, RNNCell) and type(c).gates is not RNNCell.gates for c in cells)


def gate_names(cell) -> list:
  """The gate names of :func:`saturation`'s result, in the cell's gate order.

  Read from the cell's ``gates`` by tracing one step abstractly.
  """
  if isinstance(cell, Stack):
    return [f"layer{l}.{n}" for l, c in enumerate(cell.cells) for n in gate_names(c)]
  if not supported(cell):
    return []
  return list(_gate_names(cell))


@functools.lru_cache(maxsize=256)
def _gate_names(cell):
  names = []

  def f():
    params = cell.init(jax.random.key(0), 1)
    carry = cell.initial_carry((1,))
    _, _, named = cell.step_with_gates(params, carry, jnp.zeros((1, 1), cell.param_dtype))
    names.extend(g[0] for g in named)
    return 0
  jax.eval_shape(f)
  return tuple(names)


def gate_stats(cell, params, carry, x):
  """One step: ``(new_carry, {gate: (saturated fraction, mean derivative)})`` over units."""
  new, _, gates = _gates(cell, params, carry, x)
  stats = {}
  for name, pre, act in gates:
    sat, dy = _saturated(act, pre)
    stats[name] = (jnp.mean(sat.astype(pre.dtype)), jnp.mean(dy))
  return new, stats


def aggregate(stats, names) -> dict:
  """``{gate: (frac [*B, T], deriv [*B, T])}`` -> ``{gate: GateSaturation}`` in gate order."""
  return {n: GateSaturation(jnp.nanmean(stats[n][0]), jnp.nanmean(stats[n][1]), stats[n][0])
          for n in names}


@core.jit(static_argnames=("cell",))
def _saturation_impl(cell, params, xs, carry, lengths):
  template = jax.eval_shape(lambda: cell.initial_carry(()))
  prep = core.Prepared(xs.shape[:-2], xs.shape[-2], carry, lengths, template,
                       core.resolve_leaf(template, None))

  def seq(xs1, c0, length):
    ts = jnp.arange(xs1.shape[0])

    def body(c, inp):
      x, t = inp
      new, stats = gate_stats(cell, params, c, x)
      if length is not None:
        new = jax.tree_util.tree_map(lambda n, o: jnp.where(t < length, n, o), new, c)
      return new, stats
    _, stats = jax.lax.scan(body, c0, (xs1, ts))
    return jax.tree_util.tree_map(lambda v: core.mask_past_length(v, length), stats)

  return core.per_sequence(seq, prep, xs)


def saturation(cell, params, xs, carry=None, *, lengths=None):
  """Fraction of saturated units and mean derivative for every nonlinearity.

  Thresholds are in the table of the module docstring (sigmoid outside
  [0.1, 0.9], tanh ``|y| > 0.9``, ReLU off, other activations ``|act'| < 0.1``).

  Args:
    cell: an rnnjax cell (any :class:`rnnjax.RNNCell`: its ``gates`` name the
      nonlinearities) or a Stack of them.
    params, xs, carry, lengths: as :func:`rnnjax.diagnostics.step_jacobians`
      (steps past ``lengths`` are left out of the means).

  Returns:
    ``{name: GateSaturation(fraction, mean_derivative, fraction_per_step)}``
    with names ``"h"`` (simple RNN, IRNN), ``"h"``/``"y"`` (Jordan),
    ``"i"``, ``"f"``, ``"g"``, ``"o"``, ``"tanh_c"`` (LSTM), ``"r"``, ``"z"``,
    ``"n"`` (GRU), ``"h"`` (IndRNN), prefixed ``"layer{l}."`` in a Stack.
  """
  prep = core.prepare(cell, params, xs, carry, lengths, None)
  if not supported(cell):
    raise TypeError(
        f"saturation needs cells that declare their gates (rnnjax.RNNCell subclasses) or a "
        f"Stack of them, got {cell!r}.")
  stats = _saturation_impl(cell, params, xs, prep.carry, prep.lengths)
  return aggregate(stats, gate_names(cell))
