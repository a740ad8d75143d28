"""PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` state dicts <-> rnnjax params.

PyTorch stores, for layer ``k`` (suffix ``_l{k}``, plus ``_reverse`` for the
backward direction of a bidirectional module)::

  weight_ih_l{k}  [G*H, I]   rows are the gates, in PyTorch's gate order
  weight_hh_l{k}  [G*H, H]
  bias_ih_l{k}    [G*H]
  bias_hh_l{k}    [G*H]

with G = 1 (``nn.RNN``), 4 (``nn.LSTM``, gates i, f, g, o) or 3 (``nn.GRU``,
gates r, z, n). rnnjax uses the "x @ W" layout with the same gate orders, so
``w_i = weight_ih.T`` ``[I, G*H]`` and ``w_h = weight_hh.T`` ``[H, G*H]``.
PyTorch's two biases are summed into rnnjax's single ``b``, except the GRU's
hidden-side n bias, which sits inside the reset product
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))`` and is kept as ``b_hn``::

  SimpleRNN, LSTM:  b = bias_ih + bias_hh
  GRU:              b = bias_ih + [bias_hh_r, bias_hh_z, 0];  b_hn = bias_hh_n

Going back, :func:`to_torch` writes ``bias_ih = b`` and ``bias_hh = 0`` (GRU:
``bias_hh = [0, 0, b_hn]``), which computes the same function. So
``from_torch(cell, to_torch(cell, p)) == p`` exactly, while
``to_torch(cell, from_torch(cell, sd))`` equals ``sd`` up to how the biases
are split between ``bias_ih`` and ``bias_hh``.

Which rnnjax cell maps to which PyTorch module is one table,
``_TORCH_KINDS``, keyed by cell class and looked up along the cell's MRO (so
``IRNN`` uses ``SimpleRNN``'s entry): the module name, the ``module.mode``
values it matches, the activations PyTorch computes, and how the biases are
split and joined.

The activation is not part of a state dict. Given a *module*
(``nn.RNN(nonlinearity="relu")``, ``nn.LSTM``, ``nn.GRU``),
:func:`from_torch` checks that the cell computes what the module computes
(the module kind, ``nonlinearity`` for ``nn.RNN``, the fixed sigmoid/tanh of
``nn.LSTM``/``nn.GRU``, ``hidden_size``) and raises otherwise. Given only a
state dict, the activation cannot be checked: the weights of an
``nn.RNN(nonlinearity="relu")`` load into ``SimpleRNN("tanh")`` without an
error and compute a different function.

Arrays in, arrays out: this module never imports torch. It accepts NumPy
arrays, JAX arrays, or anything with ``.detach().cpu().numpy()`` (torch
tensors) or ``__array__``, and a ``state_dict`` may also be a module with a
``.state_dict()`` method.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from rnnjax._activations import get_activation
from rnnjax._cells import GRU, LSTM, JordanRNN, SimpleRNN
from rnnjax._layers import Bidirectional, Stack


def _bias_sum(b_ih, b_hh, H):
  """SimpleRNN, LSTM: ``b = bias_ih + bias_hh``."""
  return {"b": b_ih + b_hh}


def _bias_gru_split(b_ih, b_hh, H):
  """GRU: the hidden-side n bias stays inside ``r * (.)`` as ``b_hn``."""
  return {"b": b_ih + np.concatenate([b_hh[:2 * H], np.zeros(H)]), "b_hn": b_hh[2 * H:]}


def _bias_hh_zero(params, b, H):
  return np.zeros_like(b)


def _bias_hh_gru(params, b, H):
  bias_hh = np.zeros_like(b)
  bias_hh[2 * H:] = np.asarray(params["b_hn"])
  return bias_hh


def _no_check(cell, argname):
  del cell, argname


def _check_gru(cell, argname):
  if not cell.reset_after:
    raise ValueError(
        f"{argname}: GRU(reset_after=False) has no PyTorch equivalent; nn.GRU applies "
        "the reset gate after the hidden matmul (use GRU(reset_after=True)).")


def _no_torch_jordan(cell, argname):
  raise TypeError(
      f"{argname}: JordanRNN has no PyTorch equivalent (PyTorch has no output-"
      "feedback RNN); interop supports SimpleRNN/IRNN (nn.RNN), LSTM (nn.LSTM) and "
      "GRU(reset_after=True) (nn.GRU).")


class _TorchKind(NamedTuple):
  """How one rnnjax cell class maps to a PyTorch module (see the module docstring)."""
  module: str                      # "nn.RNN", "nn.LSTM", "nn.GRU"
  check: Callable                  # check(cell, argname): raises if no equivalent
  modes: dict                      # module.mode -> the activations the module computes
  split_bias: Optional[Callable]   # (bias_ih, bias_hh, H) -> {"b": ..., ...}
  bias_hh: Optional[Callable]      # (params, b, H) -> bias_hh for to_torch


_SIG_TANH = {"gate_activation": "sigmoid", "activation": "tanh"}

# Keyed by cell class; looked up along type(cell).__mro__ (IRNN -> SimpleRNN).
_TORCH_KINDS = {
    SimpleRNN: _TorchKind("nn.RNN", _no_check,
                          {"RNN_TANH": {"activation": "tanh"}, "RNN_RELU": {"activation": "relu"}},
                          _bias_sum, _bias_hh_zero),
    LSTM: _TorchKind("nn.LSTM", _no_check, {"LSTM": _SIG_TANH}, _bias_sum, _bias_hh_zero),
    GRU: _TorchKind("nn.GRU", _check_gru, {"GRU": _SIG_TANH}, _bias_gru_split, _bias_hh_gru),
    JordanRNN: _TorchKind("none", _no_torch_jordan, {}, None, None),
}


def _lookup(cell) -> Optional[_TorchKind]:
  for cls in type(cell).__mro__:
    if cls in _TORCH_KINDS:
      return _TORCH_KINDS[cls]
  return None


def _torch_spec(cell, argname="cell") -> _TorchKind:
  """The table entry of ``cell``, after checking that it has a PyTorch equivalent."""
  spec = _lookup(cell)
  if spec is None:
    raise TypeError(
        f"{argname} must be an rnnjax SimpleRNN, IRNN, LSTM or GRU(reset_after=True) "
        f"(or a Stack / Bidirectional of them), got {type(cell).__name__}.")
  spec.check(cell, argname)
  return spec


def _torch_module(cell) -> str:
  spec = _lookup(cell)
  return spec.module if spec is not None else "?"


def _check_module(cell, module, argname="cell") -> None:
  """Raises unless ``cell`` computes what the PyTorch ``module`` computes.

  ``module`` is an ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (anything with a
  ``mode`` attribute); its kind, nonlinearity and hidden size are compared
  with the cell's class, activations and ``hidden_size``.
  """
  spec = _torch_spec(cell, argname)
  mode = getattr(module, "mode", None)
  name = type(cell).__name__
  if mode not in spec.modes:
    raise ValueError(
        f"{argname} is a {name}, which reads {spec.module} weights, but the module is a "
        f"{type(module).__name__} (mode={mode!r}).")
  for attr, act in spec.modes[mode].items():
    mine = getattr(cell, attr)
    if mine != get_activation(act):
      what = (f"nonlinearity={act!r}" if spec.module == "nn.RNN"
              else f"a fixed {act} {attr.replace('_', ' ')}")
      raise ValueError(
          f"{argname} is {name}({attr}={mine.name!r}) but the {type(module).__name__} "
          f"module computes {what}: the converted params would compute a different "
          f"function. Use {name}(..., {attr}={act!r}).")
  H = getattr(module, "hidden_size", cell.hidden_size)
  if H != cell.hidden_size:
    raise ValueError(f"{argname} has hidden_size={cell.hidden_size}, the module has "
                     f"hidden_size={H}.")
  if getattr(module, "proj_size", 0):
    raise ValueError("the module is an nn.LSTM with proj_size > 0, which has no rnnjax "
                     "equivalent.")


def _is_torch_module(obj) -> bool:
  return hasattr(obj, "state_dict") and callable(obj.state_dict) and hasattr(obj, "mode")


def _as_numpy(x, name: str) -> np.ndarray:
  """A NumPy copy of a NumPy/JAX array, a torch tensor, or any array-like."""
  if hasattr(x, "detach"):  # a torch tensor, without importing torch
    t = x.detach()
    if hasattr(t, "cpu"):
      t = t.cpu()
    try:
      return np.array(t.numpy())
    except TypeError:  # e.g. torch.bfloat16 has no NumPy dtype
      return np.array(t.float().numpy())
  try:
    arr = np.array(x)
  except Exception as e:  # pragma: no cover - defensive
    raise TypeError(f"{name} must be an array, got {type(x).__name__}: {e}") from None
  if arr.dtype.kind not in "biufV":  # V: ml_dtypes such as bfloat16
    raise TypeError(f"{name} must be a numeric array, got {type(x).__name__} "
                    f"with dtype {arr.dtype}.")
  return arr


def _torch_kind(cell, argname="cell") -> int:
  """Checks that ``cell`` has a PyTorch equivalent; returns its gate count G."""
  _torch_spec(cell, argname)
  return cell.num_gates


def _suffix(layer, reverse) -> str:
  if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 0:
    raise ValueError(f"layer must be an int >= 0, got {layer!r}.")
  return f"_l{int(layer)}" + ("_reverse" if reverse else "")


def _get(sd: Mapping, key: str, *, required: bool):
  if key in sd:
    return _as_numpy(sd[key], f"state_dict[{key!r}]")
  if required:
    raise ValueError(
        f"state_dict has no key {key!r}; its keys are {sorted(sd)[:12]}"
        f"{' ...' if len(sd) > 12 else ''}. (Check layer=, reverse= and prefix=.)")
  return None


def _unwrap_state_dict(state_dict) -> Mapping:
  if hasattr(state_dict, "state_dict") and callable(state_dict.state_dict):
    state_dict = state_dict.state_dict()
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"state_dict must be a mapping of names to arrays (module.state_dict()), "
        f"got {type(state_dict).__name__}.")
  return state_dict


def _cell_from_torch(cell, sd, suffix, prefix):
  spec = _torch_spec(cell)
  G = cell.num_gates
  H = cell.hidden_size
  names = {n: f"{prefix}{n}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
  if f"{prefix}weight_hr{suffix}" in sd:
    raise ValueError(
        f"state_dict has {prefix}weight_hr{suffix}: an nn.LSTM with proj_size > 0 has "
        "no rnnjax equivalent.")
  w_ih = _get(sd, names["weight_ih"], required=True)
  w_hh = _get(sd, names["weight_hh"], required=True)
  if w_ih.ndim != 2 or w_ih.shape[0] != G * H:
    raise ValueError(
        f"state_dict[{names['weight_ih']!r}] has shape {w_ih.shape}, expected "
        f"({G * H}, input_size) for {type(cell).__name__}(hidden_size={H}) "
        f"({_torch_module(cell)}).")
  if w_hh.shape != (G * H, H):
    raise ValueError(
        f"state_dict[{names['weight_hh']!r}] has shape {w_hh.shape}, expected "
        f"({G * H}, {H}) for {type(cell).__name__}(hidden_size={H}).")
  b_ih = _get(sd, names["bias_ih"], required=False)
  b_hh = _get(sd, names["bias_hh"], required=False)
  zeros = np.zeros(G * H, np.float64)
  b_ih = zeros if b_ih is None else b_ih.astype(np.float64)
  b_hh = zeros if b_hh is None else b_hh.astype(np.float64)
  for n, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
    if b.shape != (G * H,):
      raise ValueError(f"state_dict[{names[n]!r}] has shape {b.shape}, expected ({G * H},).")
  pd = cell.param_dtype
  params = {"w_i": jnp.asarray(w_ih.T, pd), "w_h": jnp.asarray(w_hh.T, pd)}
  for k, v in spec.split_bias(b_ih, b_hh, H).items():
    params[k] = jnp.asarray(v, pd)
  return params


def _numpy_out(a) -> np.ndarray:
  arr = np.asarray(a)
  if arr.dtype not in (np.float16, np.float32, np.float64):
    arr = arr.astype(np.float32)  # bf16 & co.: torch.from_numpy cannot take them
  return np.ascontiguousarray(arr).copy()


def _fused_weights(cell, params, num_gates, asarray):
  """``(w_i, w_h, b)`` of ``params`` as ``asarray`` arrays, checked against ``cell``."""
  H, G = cell.hidden_size, num_gates
  if not isinstance(params, Mapping) or "w_i" not in params:
    raise TypeError(f"params must be the dict returned by {type(cell).__name__}.init, "
                    f"got {type(params).__name__}.")
  w_i, w_h, b = (asarray(params[k]) for k in ("w_i", "w_h", "b"))
  if w_i.ndim != 2 or w_i.shape[1] != G * H or w_h.shape != (H, G * H) or b.shape != (G * H,):
    raise ValueError(
        f"params do not match {type(cell).__name__}(hidden_size={H}): got w_i "
        f"{w_i.shape}, w_h {w_h.shape}, b {b.shape}; expected [I, {G * H}], "
        f"[{H}, {G * H}], [{G * H}].")
  return w_i, w_h, b


def _cell_to_torch(cell, params, suffix, prefix):
  spec = _torch_spec(cell)
  G = cell.num_gates
  H = cell.hidden_size
  w_i, w_h, b = _fused_weights(cell, params, G, np.asarray)
  bias_hh = spec.bias_hh(params, b, H)
  out = {"weight_ih": w_i.T, "weight_hh": w_h.T, "bias_ih": b, "bias_hh": bias_hh}
  return {f"{prefix}{k}{suffix}": _numpy_out(v) for k, v in out.items()}


def from_torch(cell, state_dict, *, layer: int = 0, reverse: bool = False,
               prefix: str = "") -> Any:
  """Converts a PyTorch ``nn.RNN``/``nn.LSTM``/``nn.GRU`` state dict to rnnjax params.

  Args:
    cell: the rnnjax cell the weights are for: ``SimpleRNN`` or ``IRNN``
      (``nn.RNN``; any activation, the layout is the same, but PyTorch itself
      only computes tanh and relu), ``LSTM`` (``nn.LSTM`` without
      ``proj_size``), ``GRU(reset_after=True)`` (``nn.GRU``). A
      :class:`~rnnjax.Stack` reads layers ``layer, layer + 1, ...``; a
      :class:`~rnnjax.Bidirectional` reads the forward direction and the
      ``_reverse`` one.
    state_dict: a PyTorch module (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) or a
      mapping of PyTorch names to arrays or tensors (e.g. a module's
      ``.state_dict()``). Given the module, the cell is checked against it:
      the module kind, ``nn.RNN``'s ``nonlinearity`` (``SimpleRNN("tanh")``
      refuses an ``nn.RNN(nonlinearity="relu")``), the fixed sigmoid/tanh of
      ``nn.LSTM``/``nn.GRU``, and ``hidden_size``. Given only a state dict,
      the activation cannot be checked (it is not stored in the weights):
      make sure the cell's activation is the module's. Missing biases
      (``bias=False``) read as zeros.
    layer: which ``_l{k}`` suffix to read.
    reverse: read the ``_l{k}_reverse`` weights (a bidirectional module's
      backward direction).
    prefix: a prefix of every key (e.g. ``"encoder.rnn."`` in a larger
      model's state dict).

  Returns:
    The cell's params (``{"w_i": [I, G*H], "w_h": [H, G*H], "b": [G*H]}``,
    GRU also ``"b_hn": [H]``) in the cell's ``param_dtype``; a tuple of them
    for a Stack; ``{"forward": ..., "backward": ...}`` for a Bidirectional.

  Raises:
    TypeError / ValueError: for a cell with no PyTorch equivalent (JordanRNN,
      GRU(reset_after=False)), a module that computes another function than
      the cell (another kind, nonlinearity or hidden size), a missing key, or a
      shape that does not match.
  """
  if _is_torch_module(state_dict):
    if isinstance(cell, Stack):
      named = [(f"cell.cells[{i}]", c) for i, c in enumerate(cell.cells)]
    elif isinstance(cell, Bidirectional):
      named = [("cell.forward", cell.forward), ("cell.backward", cell.backward)]
    else:
      named = [("cell", cell)]
    for argname, c in named:
      _check_module(c, state_dict, argname)
  sd = _unwrap_state_dict(state_dict)
  if isinstance(cell, Stack):
    return tuple(from_torch(c, sd, layer=layer + k, reverse=reverse, prefix=prefix)
                 for k, c in enumerate(cell.cells))
  if isinstance(cell, Bidirectional):
    return {"forward": from_torch(cell.forward, sd, layer=layer, prefix=prefix),
            "backward": from_torch(cell.backward, sd, layer=layer, reverse=True, prefix=prefix)}
  return _cell_from_torch(cell, sd, _suffix(layer, reverse), prefix)


def to_torch(cell, params, *, layer: int = 0, reverse: bool = False,
             prefix: str = "") -> dict:
  """Converts rnnjax params to a PyTorch state dict of NumPy arrays.

  Load it with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in
  sd.items()})`` into ``nn.RNN(I, H, nonlinearity=...)``, ``nn.LSTM(I, H)`` or
  ``nn.GRU(I, H)`` (``batch_first`` as you like; ``num_layers=len(cells)`` for
  a Stack; ``bidirectional=True`` for a Bidirectional). The module then
  computes what rnnjax computes (for SimpleRNN only when its activation is
  tanh or relu, the two ``nn.RNN`` has).

  Args:
    cell, layer, reverse, prefix: as in :func:`from_torch`.
    params: the cell's params.

  Returns:
    ``{"weight_ih_l{k}": [G*H, I], "weight_hh_l{k}": [G*H, H],
    "bias_ih_l{k}": [G*H], "bias_hh_l{k}": [G*H]}`` (NumPy, the params'
    dtype; bf16 becomes float32), ``bias_ih = b`` and ``bias_hh = 0`` except
    the GRU's n block, ``b_hn``.
  """
  if isinstance(cell, Stack):
    if not isinstance(params, (tuple, list)) or len(params) != len(cell.cells):
      raise TypeError(f"params must be a tuple of {len(cell.cells)} cell params for this "
                      f"Stack, got {type(params).__name__}.")
    out = {}
    for k, (c, p) in enumerate(zip(cell.cells, params)):
      out.update(to_torch(c, p, layer=layer + k, reverse=reverse, prefix=prefix))
    return out
  if isinstance(cell, Bidirectional):
    out = to_torch(cell.forward, params["forward"], layer=layer, prefix=prefix)
    out.update(to_torch(cell.backward, params["backward"], layer=layer, reverse=True,
                        prefix=prefix))
    return out
  return _cell_to_torch(cell, params, _suffix(layer, reverse), prefix)
