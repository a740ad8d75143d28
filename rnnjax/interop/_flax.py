"""Flax linen recurrent-cell parameter trees <-> rnnjax params.

Flax linen cells keep one ``Dense`` per gate and per side, named
``i{gate}`` (input side, kernel ``[I, H]``) and ``h{gate}`` (hidden side,
kernel ``[H, H]``); rnnjax fuses them along the last axis in the same gate
order. Which denses carry a bias (flax 0.12)::

  LSTMCell, OptimizedLSTMCell  ii if ig io: kernel        hi hf hg ho: kernel, bias
  GRUCell                      ir iz in:    kernel, bias  hr hz: kernel;  hn: kernel, bias
  SimpleCell                   i:           kernel, bias  h: kernel

so, with ``|`` concatenation along the last axis::

  LSTM:       w_i = ii|if|ig|io,  w_h = hi|hf|hg|ho,  b = hi.b|hf.b|hg.b|ho.b
  GRU:        w_i = ir|iz|in,     w_h = hr|hz|hn,     b = ir.b|iz.b|in.b,  b_hn = hn.b
  SimpleRNN:  w_i = i,            w_h = h,            b = i.b

(:func:`from_flax` also sums any bias found on the other side, so a tree
with biases on both sides converts to the same function.) The equations
match: Flax's GRUCell is the reset-after form
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``.

Carries differ in order: Flax's LSTM carry is ``(c, h)``, rnnjax's
:class:`~rnnjax.LSTMCarry` is ``(h, c)``. SimpleCell's ``residual=True``
has no rnnjax equivalent (it is not visible in the parameters).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax.numpy as jnp
import numpy as np

from rnnjax._cells import GRU, LSTM, JordanRNN, SimpleRNN
from rnnjax.interop._torch import _as_numpy, _fused_weights

_GATES = {"LSTMCell": "ifgo", "OptimizedLSTMCell": "ifgo", "GRUCell": "rzn",
          "SimpleCell": None}
_KINDS = tuple(_GATES)


def _default_kind(cell, argname="cell") -> str:
  if isinstance(cell, JordanRNN):
    raise TypeError(f"{argname}: JordanRNN has no Flax linen equivalent; interop supports "
                    "SimpleRNN (SimpleCell), LSTM (LSTMCell, OptimizedLSTMCell) and "
                    "GRU(reset_after=True) (GRUCell).")
  if isinstance(cell, GRU):
    if not cell.reset_after:
      raise ValueError(f"{argname}: GRU(reset_after=False) has no Flax linen equivalent; "
                       "GRUCell applies the reset gate after the hidden matmul "
                       "(use GRU(reset_after=True)).")
    return "GRUCell"
  if isinstance(cell, LSTM):
    return "LSTMCell"
  if isinstance(cell, SimpleRNN):
    return "SimpleCell"
  raise TypeError(f"{argname} must be an rnnjax SimpleRNN, IRNN, LSTM or "
                  f"GRU(reset_after=True), got {type(cell).__name__}.")


def _check_kind(cell, kind) -> str:
  default = _default_kind(cell)
  if kind is None:
    return default
  if not isinstance(kind, str):
    kind = getattr(kind, "__name__", type(kind).__name__)  # a Flax class or instance
  if kind not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS} (or the Flax class), got {kind!r}.")
  compatible = {"LSTMCell": "LSTMCell", "OptimizedLSTMCell": "LSTMCell"}.get(kind, kind)
  if compatible != default:
    raise ValueError(f"kind={kind!r} does not match cell {type(cell).__name__} "
                     f"(expected {default!r}"
                     f"{' or OptimizedLSTMCell' if default == 'LSTMCell' else ''}).")
  return kind


def _dense_names(kind):
  gates = _GATES[kind]
  if gates is None:
    return [("i", "h")]
  return [("i" + g, "h" + g) for g in gates]


def from_flax(cell, flax_params) -> dict:
  """Converts a Flax linen cell's parameters to rnnjax params.

  Args:
    cell: ``LSTM`` (from ``LSTMCell`` or ``OptimizedLSTMCell``),
      ``GRU(reset_after=True)`` (``GRUCell``) or ``SimpleRNN`` with the same
      activation (``SimpleCell``, ``residual=False``).
    flax_params: the variables from ``module.init`` (``{"params": {...}}``)
      or the inner ``params`` dict.

  Returns:
    ``{"w_i": [I, G*H], "w_h": [H, G*H], "b": [G*H]}`` (GRU also
    ``"b_hn": [H]``), in the cell's ``param_dtype``.
  """
  kind = _default_kind(cell)
  if not isinstance(flax_params, Mapping):
    raise TypeError(f"flax_params must be a dict of Flax parameters, got "
                    f"{type(flax_params).__name__}.")
  p = flax_params.get("params", flax_params)
  H = cell.hidden_size
  w_i, w_h, b = [], [], []
  b_hn = None

  def dense(name):
    if name not in p or not isinstance(p[name], Mapping) or "kernel" not in p[name]:
      raise ValueError(f"flax_params has no dense {name!r} with a 'kernel' (expected the "
                       f"{kind} parameter names {[n for pair in _dense_names(kind) for n in pair]}; "
                       f"got {sorted(p)}).")
    d = p[name]
    kernel = _as_numpy(d["kernel"], f"flax_params[{name!r}]['kernel']").astype(np.float64)
    bias = (np.zeros(H) if "bias" not in d
            else _as_numpy(d["bias"], f"flax_params[{name!r}]['bias']").astype(np.float64))
    if kernel.ndim != 2 or kernel.shape[1] != H or bias.shape != (H,):
      raise ValueError(f"flax_params[{name!r}] has kernel {kernel.shape} and bias "
                       f"{bias.shape}, expected [fan_in, {H}] and [{H}] for "
                       f"{type(cell).__name__}(hidden_size={H}).")
    return kernel, bias

  for in_name, h_name in _dense_names(kind):
    ki, bi = dense(in_name)
    kh, bh = dense(h_name)
    if kh.shape != (H, H):
      raise ValueError(f"flax_params[{h_name!r}]['kernel'] has shape {kh.shape}, "
                       f"expected ({H}, {H}).")
    w_i.append(ki)
    w_h.append(kh)
    if h_name == "hn":  # GRU: the hidden-side n bias stays inside r * (.)
      b.append(bi)
      b_hn = bh
    else:
      b.append(bi + bh)
  pd = cell.param_dtype
  out = {"w_i": jnp.asarray(np.concatenate(w_i, 1), pd),
         "w_h": jnp.asarray(np.concatenate(w_h, 1), pd),
         "b": jnp.asarray(np.concatenate(b), pd)}
  if b_hn is not None:
    out["b_hn"] = jnp.asarray(b_hn, pd)
  return out


def to_flax(cell, params, *, kind: Optional[Any] = None) -> dict:
  """Converts rnnjax params to a Flax linen cell's variables.

  Args:
    cell: ``LSTM``, ``GRU(reset_after=True)`` or ``SimpleRNN``.
    params: the cell's params.
    kind: the Flax cell to target, a name or the class: ``"LSTMCell"``
      (default for LSTM) or ``"OptimizedLSTMCell"`` (same tree), ``"GRUCell"``,
      ``"SimpleCell"``.

  Returns:
    ``{"params": {...}}``, ready for ``module.apply(variables, carry, x)``,
    with biases where Flax has them (see the module docstring).
  """
  kind = _check_kind(cell, kind)
  H = cell.hidden_size
  G = cell.num_gates
  w_i, w_h, b = _fused_weights(cell, params, G, jnp.asarray)
  out = {}
  for k, (in_name, h_name) in enumerate(_dense_names(kind)):
    sl = slice(k * H, (k + 1) * H)
    if kind in ("LSTMCell", "OptimizedLSTMCell"):
      out[in_name] = {"kernel": w_i[:, sl]}
      out[h_name] = {"kernel": w_h[:, sl], "bias": b[sl]}
    else:  # GRUCell, SimpleCell: input-side biases
      out[in_name] = {"kernel": w_i[:, sl], "bias": b[sl]}
      out[h_name] = {"kernel": w_h[:, sl]}
      if h_name == "hn":
        out[h_name]["bias"] = jnp.asarray(params["b_hn"])
  return {"params": out}
