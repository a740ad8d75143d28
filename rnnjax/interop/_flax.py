"""Flax recurrent cells (linen parameter trees, NNX modules) <-> rnnjax params.

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

Flax NNX cells (``flax.nnx``) hold the same weights as modules:
``nnx.LSTMCell`` one ``Linear`` per gate and side as linen (``if_`` for
``if``); ``nnx.OptimizedLSTMCell``, ``nnx.GRUCell`` and ``nnx.SimpleCell``
two fused ``Linear`` (``dense_i`` ``[I, G*H]``, ``dense_h`` ``[H, G*H]``),
with the bias on ``dense_h`` for the LSTM and on ``dense_i`` otherwise.
``nnx.GRUCell`` has no hidden-side bias at all (``b_hn = 0``). A linen
``nn.RNN(cell)`` nests the cell's parameters under ``"cell"``.

Carries differ in order: Flax's LSTM carry is ``(c, h)``, rnnjax's
:class:`~rnnjax.LSTMCarry` is ``(h, c)``. SimpleCell's ``residual=True``
has no rnnjax equivalent (invisible in linen parameters; an NNX cell with it
is rejected).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import _checks
from rnnjax._cells import GRU, LSTM, JordanRNN, SimpleRNN
from rnnjax.interop._torch import _as_numpy, _fused_weights

_GATES = {"LSTMCell": "ifgo", "OptimizedLSTMCell": "ifgo", "GRUCell": "rzn",
          "SimpleCell": None}
_KINDS = tuple(_GATES)


def _jordan_kind(cell, argname):
  raise TypeError(f"{argname}: JordanRNN has no Flax linen equivalent (nor NNX); interop supports "
                  "SimpleRNN (SimpleCell), LSTM (LSTMCell, OptimizedLSTMCell) and "
                  "GRU(reset_after=True) (GRUCell).")


def _gru_kind(cell, argname):
  if not cell.reset_after:
    raise ValueError(f"{argname}: GRU(reset_after=False) has no Flax linen equivalent; "
                     "GRUCell applies the reset gate after the hidden matmul "
                     "(use GRU(reset_after=True)).")
  return "GRUCell"


def _lstm_kind(cell, argname):
  if getattr(cell, "peephole", False):
    raise ValueError(f"{argname}: LSTM(peephole=True) has no Flax equivalent (Flax's LSTM "
                     "cells have no peephole weights); use LSTM(peephole=False).")
  return "LSTMCell"


# The Flax cell of each rnnjax cell class, looked up along the class's MRO (so
# IRNN, a SimpleRNN, maps to SimpleCell): a kind name, or a function
# (cell, argname) -> kind name that raises for a config Flax lacks.
_FLAX_KIND = {
    JordanRNN: _jordan_kind,
    GRU: _gru_kind,
    LSTM: _lstm_kind,
    SimpleRNN: "SimpleCell",
}


def _default_kind(cell, argname="cell") -> str:
  for klass in type(cell).__mro__:
    if klass in _FLAX_KIND:
      entry = _FLAX_KIND[klass]
      return entry(cell, argname) if callable(entry) else entry
  raise TypeError(f"{argname} must be an rnnjax SimpleRNN, IRNN, LSTM or "
                  f"GRU(reset_after=True), got {type(cell).__name__}.")


def _is_nnx(obj) -> bool:
  """Whether ``obj`` is a Flax NNX module instance or class."""
  from flax import nnx
  return (isinstance(obj, nnx.Module)
          or (isinstance(obj, type) and issubclass(obj, nnx.Module)))


def _kind_name(kind) -> tuple:
  """``(name, is_nnx)`` of a kind given as a name, a Flax class or an instance."""
  if isinstance(kind, str):
    if kind.startswith("nnx."):
      return kind[4:], True
    return kind, False
  is_nnx = _is_nnx(kind)
  return getattr(kind, "__name__", type(kind).__name__), is_nnx


def _check_kind(cell, kind) -> tuple:
  default = _default_kind(cell)
  if kind is None:
    return default, False
  name, is_nnx = _kind_name(kind)
  if name not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS} (a name, 'nnx.' + a name, or the linen "
                     f"or NNX class), got {kind!r}.")
  compatible = {"LSTMCell": "LSTMCell", "OptimizedLSTMCell": "LSTMCell"}.get(name, name)
  if compatible != default:
    raise ValueError(f"kind={name!r} does not match cell {type(cell).__name__} "
                     f"(expected {default!r}"
                     f"{' or OptimizedLSTMCell' if default == 'LSTMCell' else ''}).")
  return name, is_nnx


def _dense_names(kind):
  gates = _GATES[kind]
  if gates is None:
    return [("i", "h")]
  return [("i" + g, "h" + g) for g in gates]


def _split_columns(d, names, H, where):
  """A fused NNX Linear ``{kernel [fan_in, n*H], bias? [n*H]}`` -> one dict per gate."""
  n = len(names)
  kernel = np.asarray(d["kernel"])
  if kernel.ndim != 2 or kernel.shape[1] != n * H:
    raise ValueError(f"{where} has kernel {kernel.shape}, expected [fan_in, {n * H}] "
                     f"({n} gates of hidden size {H}).")
  out = {}
  for k, name in enumerate(names):
    out[name] = {"kernel": kernel[:, k * H:(k + 1) * H]}
    if "bias" in d:
      out[name]["bias"] = np.asarray(d["bias"])[k * H:(k + 1) * H]
  return out


def _nnx_params(cell, module) -> dict:
  """The linen-style parameter dict of an NNX cell (or of an ``nnx.RNN``'s cell)."""
  from flax import nnx
  if isinstance(module, nnx.RNN):
    module = module.cell
  name = type(module).__name__
  if name not in _KINDS or not type(module).__module__.startswith("flax.nnx"):
    raise TypeError(f"flax_params: an NNX module must be one of nnx.{', nnx.'.join(_KINDS)} "
                    f"or an nnx.RNN of one, got {type(module).__name__}.")
  _check_kind(cell, name)
  if name == "SimpleCell" and getattr(module, "residual", False):
    raise ValueError("flax_params: nnx.SimpleCell(residual=True) has no rnnjax equivalent.")
  pure = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  H = cell.hidden_size
  if name == "LSTMCell":  # ii, if_, ig, io, hi, hf, hg, ho (``if`` is a keyword)
    return {k.rstrip("_"): v for k, v in pure.items()}
  if name == "SimpleCell":
    return {"i": pure["dense_i"], "h": pure["dense_h"]}
  gates = _GATES[name]
  out = _split_columns(pure["dense_i"], ["i" + g for g in gates], H, "dense_i")
  out.update(_split_columns(pure["dense_h"], ["h" + g for g in gates], H, "dense_h"))
  return out


def from_flax(cell: Any, flax_params: Any) -> dict:
  """Converts a Flax cell's parameters (linen or NNX) to rnnjax params.

  Args:
    cell: ``LSTM`` (from ``LSTMCell`` or ``OptimizedLSTMCell``),
      ``GRU(reset_after=True)`` (``GRUCell``) or ``SimpleRNN`` with the same
      activation (``SimpleCell``, ``residual=False``).
    flax_params: one of

      * the variables of a linen cell from ``module.init``
        (``{"params": {...}}``) or the inner ``params`` dict;
      * the variables of a linen ``nn.RNN(cell)`` (``{"params": {"cell":
        {...}}}``);
      * an NNX cell (``nnx.LSTMCell``, ``nnx.OptimizedLSTMCell``,
        ``nnx.GRUCell``, ``nnx.SimpleCell``) or an ``nnx.RNN`` of one.
        NNX's GRUCell has no hidden-side bias: ``b_hn`` comes out zero.

  Returns:
    ``{"w_i": [I, G*H], "w_h": [H, G*H], "b": [G*H]}`` (GRU also
    ``"b_hn": [H]``), in the cell's ``param_dtype``.
  """
  kind = _default_kind(cell)
  if _is_nnx(flax_params):
    p = _nnx_params(cell, flax_params)
  elif not isinstance(flax_params, Mapping):
    raise TypeError(f"flax_params must be a dict of Flax parameters or an NNX cell, got "
                    f"{type(flax_params).__name__}.")
  else:
    p = flax_params.get("params", flax_params)
    if isinstance(p, Mapping) and set(p) == {"cell"} and isinstance(p["cell"], Mapping):
      p = p["cell"]  # the variables of a linen nn.RNN(cell)
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
  _checks.check_fan_in(dict(zip([n for n, _ in _dense_names(kind)], w_i)))
  pd = cell.param_dtype
  out = {"w_i": jnp.asarray(np.concatenate(w_i, 1), pd),
         "w_h": jnp.asarray(np.concatenate(w_h, 1), pd),
         "b": jnp.asarray(np.concatenate(b), pd)}
  if b_hn is not None:
    out["b_hn"] = jnp.asarray(b_hn, pd)
  return out


def _to_nnx(cell, name, out, w_i, w_h, b, params, rnn):
  """An NNX cell of kind ``name`` holding the weights in ``out`` (linen layout)."""
  from flax import nnx
  H = cell.hidden_size
  kwargs = {"param_dtype": cell.param_dtype, "rngs": nnx.Rngs(0)}
  if name == "SimpleCell":
    kwargs["activation_fn"] = cell.activation
  else:
    kwargs["activation_fn"] = cell.activation
    kwargs["gate_fn"] = cell.gate_activation
  module = getattr(nnx, name)(int(w_i.shape[0]), H, **kwargs)
  if name == "LSTMCell":
    pure = {("if_" if k == "if" else k): v for k, v in out.items()}
  elif name == "OptimizedLSTMCell":
    pure = {"dense_i": {"kernel": w_i}, "dense_h": {"kernel": w_h, "bias": b}}
  elif name == "GRUCell":
    b_hn = np.asarray(params["b_hn"])
    if np.any(b_hn != 0):
      raise ValueError("params['b_hn'] is not zero, but nnx.GRUCell has no hidden-side bias "
                       "(n = tanh(x W_in + b_in + r * (h W_hn))); use kind='GRUCell' "
                       "(linen), which has one.")
    pure = {"dense_i": {"kernel": w_i, "bias": b}, "dense_h": {"kernel": w_h}}
  else:  # SimpleCell
    pure = {"dense_i": {"kernel": w_i, "bias": b}, "dense_h": {"kernel": w_h}}
  state = nnx.state(module, nnx.Param)
  pure = jax.tree_util.tree_map(lambda v: jnp.asarray(v, cell.param_dtype), pure)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(module, state)
  return nnx.RNN(module) if rnn else module


def to_flax(cell: Any, params: Any, *, kind: Optional[Any] = None, rnn: bool = False) -> Any:
  """Converts rnnjax params to a Flax cell: linen variables or an NNX module.

  Args:
    cell: ``LSTM``, ``GRU(reset_after=True)`` or ``SimpleRNN``.
    params: the cell's params.
    kind: the Flax cell to target: a linen name or class, ``"LSTMCell"``
      (default for LSTM) or ``"OptimizedLSTMCell"`` (same tree),
      ``"GRUCell"``, ``"SimpleCell"``; or an NNX class (``nnx.LSTMCell``,
      ``nnx.OptimizedLSTMCell``, ``nnx.GRUCell``, ``nnx.SimpleCell``) or its
      name with an ``"nnx."`` prefix.
    rnn: wrap the cell as a whole linen ``nn.RNN(cell)`` (variables
      ``{"params": {"cell": {...}}}``) or an ``nnx.RNN``.

  Returns:
    linen: ``{"params": {...}}``, ready for ``module.apply(variables, carry,
    x)``, with biases where Flax has them (see the module docstring). NNX: a
    new module holding the weights (and the cell's activations), the inverse
    of :func:`from_flax`.
  """
  name, is_nnx = _check_kind(cell, kind)
  if not isinstance(rnn, bool):
    raise TypeError(f"rnn must be a bool, got {rnn!r}.")
  H = cell.hidden_size
  G = cell.num_gates
  w_i, w_h, b = _fused_weights(cell, params, G, jnp.asarray)
  out = {}
  for k, (in_name, h_name) in enumerate(_dense_names(name)):
    sl = slice(k * H, (k + 1) * H)
    if name in ("LSTMCell", "OptimizedLSTMCell"):
      out[in_name] = {"kernel": w_i[:, sl]}
      out[h_name] = {"kernel": w_h[:, sl], "bias": b[sl]}
    else:  # GRUCell, SimpleCell: input-side biases
      out[in_name] = {"kernel": w_i[:, sl], "bias": b[sl]}
      out[h_name] = {"kernel": w_h[:, sl]}
      if h_name == "hn":
        out[h_name]["bias"] = jnp.asarray(params["b_hn"])
  if is_nnx:
    return _to_nnx(cell, name, out, w_i, w_h, b, params, rnn)
  return {"params": {"cell": out}} if rnn else {"params": out}
