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
``tanh' <= 1``: seed 000's reason why sigmoid RNNs forget).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rnnjax.diagnostics import _core as core
from rnnjax._cells import GRU, LSTM, JordanRNN, LSTMCarry, SimpleRNN, _cast
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
  """One step of ``cell`` that also returns ``[(name, pre_activation, activation)]``."""
  if isinstance(cell, Stack):
    new, out = [], []
    for l, (c, p, h) in enumerate(zip(cell.cells, params, carry)):
      h, x, g = _gates(c, p, h, x)
      new.append(h)
      out += [(f"layer{l}.{n}", a, act) for n, a, act in g]
    return tuple(new), x, out
  dt = getattr(cell, "dtype", None)
  if isinstance(cell, (SimpleRNN, JordanRNN, LSTM, GRU)):
    cell.check_input(params, x)
    xp = cell.input_projection(params, x)
  if isinstance(cell, SimpleRNN):
    pre = xp + _cast(carry, dt) @ _cast(params["w_h"], dt)
    h = cell.activation(pre).astype(carry.dtype)
    return h, h, [("h", pre, cell.activation)]
  if isinstance(cell, JordanRNN):
    hpre = xp + _cast(carry, dt) @ _cast(params["w_h"], dt)
    h = cell.activation(hpre)
    ypre = h @ _cast(params["w_o"], dt) + _cast(params["b_o"], dt)
    y = cell.output_activation(ypre).astype(carry.dtype)
    return y, y, [("h", hpre, cell.activation), ("y", ypre, cell.output_activation)]
  if isinstance(cell, LSTM):
    h, c = carry
    H = cell.hidden_size
    z = xp + _cast(h, dt) @ _cast(params["w_h"], dt)
    zi, zf, zg, zo = (z[..., j * H:(j + 1) * H] for j in range(4))
    ga, act = cell.gate_activation, cell.activation
    c_new = ga(zf) * _cast(c, dt) + ga(zi) * act(zg)
    h_new = (ga(zo) * act(c_new)).astype(h.dtype)
    return (LSTMCarry(h_new, c_new.astype(c.dtype)), h_new,
            [("i", zi, ga), ("f", zf, ga), ("g", zg, act), ("o", zo, ga), ("tanh_c", c_new, act)])
  if isinstance(cell, GRU):
    H = cell.hidden_size
    hc = _cast(carry, dt)
    w_h = _cast(params["w_h"], dt)
    ga, act = cell.gate_activation, cell.activation
    if cell.reset_after:
      hp = hc @ w_h
      zr, zz = xp[..., :H] + hp[..., :H], xp[..., H:2 * H] + hp[..., H:2 * H]
      zn = xp[..., 2 * H:] + ga(zr) * (hp[..., 2 * H:] + _cast(params["b_hn"], dt))
    else:
      hp = hc @ w_h[:, :2 * H]
      zr, zz = xp[..., :H] + hp[..., :H], xp[..., H:2 * H] + hp[..., H:2 * H]
      zn = xp[..., 2 * H:] + (ga(zr) * hc) @ w_h[:, 2 * H:]
    z = ga(zz)
    h_new = ((1 - z) * act(zn) + z * hc).astype(carry.dtype)
    return h_new, h_new, [("r", zr, ga), ("z", zz, ga), ("n", zn, act)]
  raise TypeError(
      f"saturation supports the rnnjax cells (SimpleRNN, IRNN, JordanRNN, LSTM, GRU) and "
      f"Stack of them, got {type(cell).__name__}.")


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
  """Whether :func:`saturation` knows the gates of ``cell``."""
  cells = cell.cells if isinstance(cell, Stack) else (cell,)
  return all(isinstance(c, (SimpleRNN, JordanRNN, LSTM, GRU)) for c in cells)


def gate_names(cell) -> list:
  """The gate names of :func:`saturation`'s result, in the cell's gate order."""
  if isinstance(cell, Stack):
    return [f"layer{l}.{n}" for l, c in enumerate(cell.cells) for n in gate_names(c)]
  if isinstance(cell, SimpleRNN):
    return ["h"]
  if isinstance(cell, JordanRNN):
    return ["h", "y"]
  if isinstance(cell, LSTM):
    return ["i", "f", "g", "o", "tanh_c"]
  if isinstance(cell, GRU):
    return ["r", "z", "n"]
  return []


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
    cell: an rnnjax cell (SimpleRNN, IRNN, JordanRNN, LSTM, GRU) or a Stack.
    params, xs, carry, lengths: as :func:`rnnjax.diagnostics.step_jacobians`
      (steps past ``lengths`` are left out of the means).

  Returns:
    ``{name: GateSaturation(fraction, mean_derivative, fraction_per_step)}``
    with names ``"h"`` (simple RNN, IRNN), ``"h"``/``"y"`` (Jordan),
    ``"i"``, ``"f"``, ``"g"``, ``"o"``, ``"tanh_c"`` (LSTM), ``"r"``, ``"z"``,
    ``"n"`` (GRU), prefixed ``"layer{l}."`` in a Stack.
  """
  prep = core.prepare(cell, params, xs, carry, lengths, None)
  if not supported(cell):
    raise TypeError(
        f"saturation supports the rnnjax cells (SimpleRNN, IRNN, JordanRNN, LSTM, GRU) and "
        f"Stack of them, got {cell!r}.")
  stats = _saturation_impl(cell, params, xs, prep.carry, prep.lengths)
  return aggregate(stats, gate_names(cell))
