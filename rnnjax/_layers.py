"""Layers built from cells: stacks, bidirectional wrappers, a readout, a model.

All layers are frozen dataclasses (static, hashable config) with
``init(key, input_size) -> params`` and pure apply functions, like the cells.

* :class:`Dense` -- the readout ``O_t = g(h_t V + b_o)``, g one of
  identity, sigmoid, softmax (or any activation name / callable).
* :class:`Stack` -- cells on top of each other. It is itself a cell (its step
  runs every layer once, carry = tuple of the layers' carries), so it scans
  and diagnoses like one; :meth:`Stack.apply` runs it layer by layer over the
  whole sequence (faster, and where dropout between layers goes).
* :class:`Bidirectional` -- a forward and a backward cell, outputs merged by
  ``concat``, ``sum`` or ``mean``; the backward pass respects ``lengths``.
* :class:`SequenceModel` -- recurrent layers + a :class:`Dense` readout,
  returning the whole output sequence or the output at each sequence's last
  valid step. Keras's ``SimpleRNN(64, relu) -> Dense(1, sigmoid)``
  is ``SequenceModel([SimpleRNN(64, "relu")], Dense(1, "sigmoid"))``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from rnnjax import _checks
from rnnjax._activations import get_activation
from rnnjax._initializers import get_initializer
from rnnjax._scan import scan


@dataclasses.dataclass(frozen=True)
class Dense:
  r"""Readout ``y = g(h V + b)``: ``[..., H] -> [..., out_size]``.

  Params: ``w`` ``[H, out_size]``, ``b`` ``[out_size]``.
  """

  out_size: int
  activation: Any = "identity"
  kernel_init: Any = "glorot_uniform"
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _checks.check_positive_int(self.out_size, "out_size")
    object.__setattr__(self, "activation", get_activation(self.activation))
    object.__setattr__(self, "kernel_init", get_initializer(self.kernel_init, argname="kernel_init"))

  def init(self, key, input_size: int):
    """Returns ``{"w": [H, O], "b": [O]}`` (``kernel_init`` / zeros)."""
    _checks.check_key(key)
    _checks.check_positive_int(input_size, "input_size")
    return {"w": self.kernel_init(key, (input_size, self.out_size), self.param_dtype),
            "b": jnp.zeros((self.out_size,), self.param_dtype)}

  def logits(self, params, h):
    """The pre-activation ``h V + b`` (for losses from logits)."""
    _checks.check_param_keys(params, ("w", "b"), "Dense")
    if jnp.shape(h)[-1] != params["w"].shape[0]:
      raise ValueError(f"h has feature size {jnp.shape(h)[-1]}, but the Dense params "
                       f"expect {params['w'].shape[0]}.")
    return h @ params["w"].astype(h.dtype) + params["b"].astype(h.dtype)

  def __call__(self, params, h):
    """``g(h V + b)``: ``[..., H] -> [..., O]``."""
    return self.activation(self.logits(params, h))


def _layer_output_size(layer) -> int:
  if isinstance(layer, Bidirectional):
    return layer.output_size
  if isinstance(layer, Stack):
    return layer.cells[-1].output_size
  return layer.output_size


def _dropout(key, x, rate):
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


@dataclasses.dataclass(frozen=True)
class Stack:
  """A stack of cells; layer l reads layer l-1's outputs.

  Params: a tuple, one entry per cell. Carry: a tuple of the cells' carries.

  Args:
    cells: the cells, bottom first.
    dropout: rate of inverted dropout applied to the outputs of every layer
      but the last in :meth:`apply`, when a ``key`` is given (explicitly keyed:
      no key, no dropout).
  """

  cells: tuple
  dropout: float = 0.0

  def __post_init__(self):
    if _checks.is_cell(self.cells) or not hasattr(self.cells, "__iter__") \
        or isinstance(self.cells, str):
      raise TypeError(f"cells must be a sequence of cells, e.g. Stack([LSTM(64), LSTM(64)]), "
                      f"got {type(self.cells).__name__}.")
    object.__setattr__(self, "cells", tuple(self.cells))
    if not self.cells:
      raise ValueError("cells must be a non-empty sequence of cells.")
    for i, c in enumerate(self.cells):
      _checks.check_cell(c, f"cells[{i}]")
    object.__setattr__(self, "dropout", _checks.check_rate(self.dropout, "dropout"))

  @property
  def output_size(self):
    """The output size of the top layer."""
    return self.cells[-1].output_size

  def init(self, key, input_size: int):
    """Returns a tuple of the cells' params, layer l built for layer l-1's output size."""
    _checks.check_key(key)
    keys = jax.random.split(key, len(self.cells))
    params, size = [], input_size
    for k, cell in zip(keys, self.cells):
      params.append(cell.init(k, size))
      size = cell.output_size
    return tuple(params)

  def initial_carry(self, batch_shape=(), dtype=None):
    """A tuple of the cells' initial carries (zeros)."""
    return tuple(c.initial_carry(batch_shape, dtype) for c in self.cells)

  def check_params(self, params, argname="params"):
    """Raises unless ``params`` is a tuple with one entry per cell, each fitting its cell."""
    _checks.check_layer_params(params, len(self.cells), self._label(), argname)
    for i, (cell, p) in enumerate(zip(self.cells, params)):
      if hasattr(cell, "check_params"):
        cell.check_params(p, f"{argname}[{i}]")

  def _label(self):
    return (f"the Stack of {len(self.cells)} cells ["
            + ", ".join(type(c).__name__ for c in self.cells) + "]")

  def check_input(self, params, x, argname="x"):
    """Raises if ``params`` do not fit the stack (one entry per layer) or ``x``'s feature size does not match."""
    self.check_params(params)
    if hasattr(self.cells[0], "check_input"):
      self.cells[0].check_input(params[0], x, argname)

  def __call__(self, params, carry, x):
    """One step of every layer: ``(carries, x) -> (carries, y_top)``."""
    self.check_params(params)
    new = []
    for cell, p, c in zip(self.cells, params, carry):
      c, x = cell(p, c, x)
      new.append(c)
    return tuple(new), x

  def apply(self, params, xs, carry=None, *, lengths=None, reverse=False, key=None,
            time_major=False, input_projection="auto"):
    """Runs the stack layer by layer over ``xs [*B, T, I]``; returns ``(carries, ys)``."""
    self.check_params(params)
    if carry is not None:
      _checks.check_layer_params(carry, len(self.cells), self._label(), "carry")
    if key is not None:
      _checks.check_key(key)
      keys = jax.random.split(key, len(self.cells))
    carries = []
    for l, (cell, p) in enumerate(zip(self.cells, params)):
      c0 = None if carry is None else carry[l]
      c, xs = scan(cell, p, xs, c0, lengths=lengths, reverse=reverse,
                   time_major=time_major, input_projection=input_projection)
      carries.append(c)
      if key is not None and self.dropout > 0 and l < len(self.cells) - 1:
        xs = _dropout(keys[l], xs, self.dropout)
    return tuple(carries), xs


_MERGES = ("concat", "sum", "mean")


@dataclasses.dataclass(frozen=True)
class Bidirectional:
  """Runs ``forward`` left to right and ``backward`` right to left, then merges.

  With ``lengths`` the backward cell reads each sequence from its own last
  valid step (padding is never read first). Params ``{"forward", "backward"}``;
  carry ``(forward_carry, backward_carry)``.

  Args:
    forward: a cell.
    backward: a cell (default: a copy of ``forward``'s config).
    merge: ``"concat"`` (``[..., O_f + O_b]``), ``"sum"`` or ``"mean"``.
  """

  forward: Any
  backward: Any = None
  merge: str = "concat"

  def __post_init__(self):
    _checks.check_cell(self.forward, "forward")
    if self.backward is None:
      object.__setattr__(self, "backward", self.forward)
    _checks.check_cell(self.backward, "backward")
    if self.merge not in _MERGES:
      raise ValueError(f"merge must be one of {_MERGES}, got {self.merge!r}.")
    if self.merge != "concat" and self.forward.output_size != self.backward.output_size:
      raise ValueError(f"merge={self.merge!r} needs equal output sizes, got "
                       f"{self.forward.output_size} and {self.backward.output_size}.")

  @property
  def output_size(self):
    """``2 O`` with ``merge="concat"``, else ``O`` (the cells' output size)."""
    if self.merge == "concat":
      return self.forward.output_size + self.backward.output_size
    return self.forward.output_size

  def init(self, key, input_size: int):
    """Returns ``{"forward": params, "backward": params}``."""
    _checks.check_key(key)
    kf, kb = jax.random.split(key)
    return {"forward": self.forward.init(kf, input_size),
            "backward": self.backward.init(kb, input_size)}

  def initial_carry(self, batch_shape=(), dtype=None):
    """``{"forward": carry, "backward": carry}`` of zeros."""
    return (self.forward.initial_carry(batch_shape, dtype),
            self.backward.initial_carry(batch_shape, dtype))

  def apply(self, params, xs, carry=None, *, lengths=None, time_major=False,
            input_projection="auto", key=None):
    """``xs [*B, T, I] -> ((carry_f, carry_b), ys [*B, T, O])``."""
    del key
    _checks.check_param_keys(params, ("forward", "backward"), "Bidirectional")
    if carry is not None and (not isinstance(carry, (tuple, list)) or len(carry) != 2):
      raise TypeError("carry of Bidirectional must be a pair (forward_carry, backward_carry), "
                      f"got {type(carry).__name__}.")
    cf, cb = (None, None) if carry is None else carry
    cf, yf = scan(self.forward, params["forward"], xs, cf, lengths=lengths,
                  time_major=time_major, input_projection=input_projection)
    cb, yb = scan(self.backward, params["backward"], xs, cb, lengths=lengths,
                  reverse=True, time_major=time_major, input_projection=input_projection)
    if self.merge == "concat":
      ys = jnp.concatenate([yf, yb], axis=-1)
    elif self.merge == "sum":
      ys = yf + yb
    else:
      ys = 0.5 * (yf + yb)
    return (cf, cb), ys


def last_valid(ys, lengths=None):
  """``ys [*B, T, O] -> [*B, O]``: the output at each sequence's last valid step.

  Without ``lengths`` this is ``ys[..., -1, :]``. A sequence of length 0 gives
  zeros.

  Args:
    ys: ``[*B, T, O]`` (``T >= 1`` unless ``lengths`` is given).
    lengths: optional int ``[*B]`` in ``[0, T]``. Checked when concrete (a
      float dtype, a wrong shape or a value outside ``[0, T]`` raises); under
      ``jit`` only dtype and shape are checked and values act as if clipped.
  """
  if not hasattr(ys, "shape") or jnp.ndim(ys) < 2:
    raise ValueError(f"ys must be an array [*B, T, O] of rank >= 2, got "
                     f"{getattr(ys, 'shape', type(ys).__name__)}.")
  if lengths is not None:
    lengths = _checks.check_lengths(lengths, ys.shape[:-2], ys.shape[-2])
  if ys.shape[-2] == 0:
    if lengths is None:
      raise ValueError(f"ys has no time steps (shape {ys.shape}) and no lengths: there is "
                       "no last step (pass lengths, all 0, for zeros).")
    return jnp.zeros(ys.shape[:-2] + ys.shape[-1:], ys.dtype)
  if lengths is None:
    return ys[..., -1, :]
  idx = jnp.clip(lengths - 1, 0, ys.shape[-2] - 1)
  out = jnp.take_along_axis(ys, idx[..., None, None].astype(jnp.int32), axis=-2)[..., 0, :]
  return jnp.where((lengths > 0)[..., None], out, jnp.zeros_like(out))


@dataclasses.dataclass(frozen=True)
class SequenceModel:
  """Recurrent layers followed by a :class:`Dense` readout.

  Args:
    layers: cells, :class:`Stack` or :class:`Bidirectional` layers, bottom first.
    readout: a :class:`Dense` applied to the top layer's outputs (or None).
    return_sequences: if False (default), return the readout at each sequence's
      last valid step ``[*B, O]``; if True, at every step ``[*B, T, O]``.
    dropout: inverted dropout between recurrent layers when a key is given.

  Example (a Keras-style model)::

    model = rj.SequenceModel([rj.SimpleRNN(64, "relu")], rj.Dense(1, "sigmoid"))
    params = model.init(jax.random.key(0), input_size=8)
    probs = model.apply(params, xs)           # [B, 1]
  """

  layers: tuple
  readout: Optional[Dense] = None
  return_sequences: bool = False
  dropout: float = 0.0

  def __post_init__(self):
    if _checks.is_cell(self.layers) or isinstance(self.layers, (Bidirectional, str)) \
        or not hasattr(self.layers, "__iter__"):
      raise TypeError(f"layers must be a sequence of cells or layers, e.g. "
                      f"SequenceModel([LSTM(64)], Dense(1)), got {type(self.layers).__name__}.")
    object.__setattr__(self, "layers", tuple(self.layers))
    if not self.layers:
      raise ValueError("layers must be a non-empty sequence of cells or layers.")
    for i, layer in enumerate(self.layers):
      if not (_checks.is_cell(layer) or isinstance(layer, Bidirectional)):
        _checks.check_cell(layer, f"layers[{i}]")
    if self.readout is not None and not isinstance(self.readout, Dense):
      raise TypeError(f"readout must be a Dense or None, got {type(self.readout).__name__}.")
    object.__setattr__(self, "dropout", _checks.check_rate(self.dropout, "dropout"))

  def init(self, key, input_size: int):
    """Returns ``{"layers": (params per recurrent layer), "readout": Dense params}``."""
    _checks.check_key(key)
    _checks.check_positive_int(input_size, "input_size")
    keys = jax.random.split(key, len(self.layers) + 1)
    params, size = {"layers": []}, input_size
    for k, layer in zip(keys, self.layers):
      params["layers"].append(layer.init(k, size))
      size = _layer_output_size(layer)
    params["layers"] = tuple(params["layers"])
    if self.readout is not None:
      params["readout"] = self.readout.init(keys[-1], size)
    return params

  def features(self, params, xs, *, lengths=None, key=None, input_projection="auto"):
    """The top recurrent layer's outputs ``[*B, T, H]`` (before the readout)."""
    self.check_params(params)
    keys = (jax.random.split(key, 2 * len(self.layers)) if key is not None else None)
    for l, (layer, p) in enumerate(zip(self.layers, params["layers"])):
      lkey = None if keys is None else keys[2 * l]
      if isinstance(layer, (Stack, Bidirectional)):
        _, xs = layer.apply(p, xs, lengths=lengths, key=lkey,
                            input_projection=input_projection)
      else:
        _, xs = scan(layer, p, xs, lengths=lengths, input_projection=input_projection)
      if keys is not None and self.dropout > 0 and l < len(self.layers) - 1:
        xs = _dropout(keys[2 * l + 1], xs, self.dropout)
    return xs

  def check_params(self, params, argname="params"):
    """Raises unless ``params`` has the structure :meth:`init` returns."""
    keys = ("layers", "readout") if self.readout is not None else ("layers",)
    _checks.check_param_keys(params, keys, "SequenceModel", argname)
    layers, n = params["layers"], len(self.layers)
    if isinstance(layers, (tuple, list)) and len(layers) != n:
      raise ValueError(f"{argname}['layers'] of a SequenceModel with {n} recurrent layers must "
                       f"have one entry per layer (SequenceModel.init's result), got "
                       f"{len(layers)} layers.")
    _checks.check_layer_params(params["layers"], len(self.layers), "SequenceModel",
                               f"{argname}['layers']")

  def logits(self, params, xs, *, lengths=None, key=None, input_projection="auto"):
    """Like :meth:`apply` but returns the readout's pre-activation."""
    h = self.features(params, xs, lengths=lengths, key=key, input_projection=input_projection)
    if not self.return_sequences:
      h = last_valid(h, lengths)
    if self.readout is None:
      return h
    return self.readout.logits(params["readout"], h)

  def apply(self, params, xs, *, lengths=None, key=None, input_projection="auto"):
    """``xs [*B, T, I]`` -> ``[*B, O]`` (or ``[*B, T, O]`` with return_sequences)."""
    z = self.logits(params, xs, lengths=lengths, key=key, input_projection=input_projection)
    if self.readout is None:
      return z
    return self.readout.activation(z)

  __call__ = apply
