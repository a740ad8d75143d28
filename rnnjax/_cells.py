"""Pure-function recurrent cells.

Every cell is a frozen dataclass holding only static, hashable config, and
exposes the same small protocol:

* ``init(key, input_size) -> params``: a dict of arrays (a pytree).
* ``initial_carry(batch_shape=(), dtype=None) -> carry``: zeros.
* ``cell(params, carry, x) -> (carry, y)``: one pure step, usable as a
  ``jax.lax.scan`` body. ``x`` is ``[*batch, I]``.
* The step is split in two so the scan engine can run the input projection
  for all time steps as one large matmul:
  ``input_projection(params, x) -> xp`` (``[*batch, G*H]``, bias included) and
  ``recurrent_step(params, carry, xp) -> (carry, y)`` (one fused recurrent
  matmul per step). ``cell(params, carry, x)`` is exactly
  ``recurrent_step(params, carry, input_projection(params, x))``.

Parameters use the "x @ W" layout: ``w_i`` is ``[I, G*H]``, ``w_h`` is
``[H, G*H]`` (gates fused along the last axis, in the gate order of each
cell), ``b`` is ``[G*H]``. PyTorch stores the transposes; see
``rnnjax.interop``.

Dtypes: ``param_dtype`` is the dtype of the stored parameters; ``dtype`` is the
compute dtype (``None``: no cast). With ``dtype=jnp.bfloat16`` the matmuls and
gate math run in bf16, and the new carry is cast back to the dtype of the
incoming carry, so a float32 carry stays float32 across steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import _checks
from rnnjax._activations import get_activation
from rnnjax._initializers import get_initializer, init_gates

Params = dict


class LSTMCarry(NamedTuple):
  """The LSTM carry. ``h``: hidden state ``[*batch, H]``; ``c``: cell state ``[*batch, H]``."""
  h: jax.Array
  c: jax.Array


def _canon_dtype(d, argname):
  if d is None:
    return None
  try:
    return jnp.dtype(d)
  except TypeError:
    raise TypeError(f"{argname} must be a dtype or None, got {d!r}.") from None


def _cast(x, dtype):
  return x if dtype is None else x.astype(dtype)


@dataclasses.dataclass(frozen=True)
class RNNCell:
  """Base class of the cells: shared config, validation and the step protocol."""

  hidden_size: int

  # Subclasses set these as class attributes.
  num_gates = 1

  def _setup(self):
    _checks.check_positive_int(self.hidden_size, "hidden_size")
    object.__setattr__(self, "param_dtype", _canon_dtype(self.param_dtype, "param_dtype"))
    object.__setattr__(self, "dtype", _canon_dtype(self.dtype, "dtype"))
    for name in ("kernel_init", "recurrent_init", "bias_init"):
      if hasattr(self, name):
        object.__setattr__(self, name, get_initializer(getattr(self, name), argname=name))

  def __post_init__(self):
    self._setup()

  # -- sizes ---------------------------------------------------------------
  @property
  def state_size(self) -> int:
    """Size of the recurrent state fed back into the recurrent matmul."""
    return self.hidden_size

  @property
  def output_size(self) -> int:
    return self.hidden_size

  @property
  def gate_size(self) -> int:
    """Width of the fused input projection, ``G * H``."""
    return self.num_gates * self.hidden_size

  # -- protocol ------------------------------------------------------------
  def initial_carry(self, batch_shape=(), dtype=None):
    """Zeros of shape ``[*batch_shape, state_size]``.

    Args:
      batch_shape: leading batch dimensions, ``()`` for a single sequence.
      dtype: carry dtype; default the cell's ``param_dtype``.
    """
    if isinstance(batch_shape, (int, np.integer)):
      batch_shape = (int(batch_shape),)
    batch_shape = tuple(batch_shape)
    dtype = dtype or self.param_dtype
    return jnp.zeros(batch_shape + (self.state_size,), dtype)

  def input_size_of(self, params) -> int:
    return params["w_i"].shape[0]

  def check_input(self, params, x, argname="x"):
    """Raises if ``x``'s feature size does not match ``params``."""
    if not isinstance(params, dict) or "w_i" not in params:
      raise TypeError(
          f"params must be the dict returned by {type(self).__name__}.init, got "
          f"{type(params).__name__}.")
    expected = self.input_size_of(params)
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != expected:
      raise ValueError(
          f"{argname} has feature size {jnp.shape(x)[-1] if jnp.ndim(x) else None} "
          f"(shape {jnp.shape(x)}), but params expect input_size={expected}.")

  def input_projection(self, params, x):
    """``x @ w_i + b``: ``[*batch, I] -> [*batch, G*H]`` (all gates, one matmul)."""
    dt = self.dtype
    return _cast(x, dt) @ _cast(params["w_i"], dt) + _cast(params["b"], dt)

  def recurrent_step(self, params, carry, xp):  # pragma: no cover - abstract
    raise NotImplementedError

  def __call__(self, params, carry, x):
    """One step: ``(carry, x [*batch, I]) -> (new_carry, y [*batch, output_size])``."""
    self.check_input(params, x)
    _checks.check_step_carry(carry, jax.eval_shape(self.initial_carry))
    return self.recurrent_step(params, carry, self.input_projection(params, x))


def _init_common(cell, key, input_size, recurrent_fan_in):
  _checks.check_key(key)
  _checks.check_positive_int(input_size, "input_size")
  k1, k2, k3 = jax.random.split(key, 3)
  H, G, pd = cell.hidden_size, cell.num_gates, cell.param_dtype
  return {
      "w_i": init_gates(cell.kernel_init, k1, input_size, H, G, pd),
      "w_h": init_gates(cell.recurrent_init, k2, recurrent_fan_in, H, G, pd),
      "b": init_gates(cell.bias_init, k3, 1, H, G, pd)[0],
  }


@dataclasses.dataclass(frozen=True)
class SimpleRNN(RNNCell):
  r"""Elman (simple) RNN cell.

  .. math::  h_t = f(x_t U + h_{t-1} W + b)

  Params: ``w_i`` (U) ``[I, H]``, ``w_h`` (W) ``[H, H]``, ``b`` ``[H]``.
  Carry: ``h`` ``[*batch, H]``; output ``y_t = h_t``.

  Args:
    hidden_size: H.
    activation: f, a name (sigmoid, tanh, relu, leaky_relu, elu, hard_sigmoid,
      identity) or any callable.
    kernel_init, recurrent_init, bias_init: initialisers (names or callables).
    param_dtype, dtype: parameter and compute dtypes.

  Reference: Elman, "Finding structure in time", Cognitive Science 1990.
  """

  activation: Any = "tanh"
  kernel_init: Any = "glorot_uniform"
  recurrent_init: Any = "orthogonal"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 1

  def __post_init__(self):
    self._setup()
    object.__setattr__(self, "activation", get_activation(self.activation))

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, H], "w_h": [H, H], "b": [H]}``."""
    return _init_common(self, key, input_size, self.hidden_size)

  def recurrent_step(self, params, carry, xp):
    dt = self.dtype
    h = carry
    pre = xp + _cast(h, dt) @ _cast(params["w_h"], dt)
    h_new = self.activation(pre).astype(h.dtype)
    return h_new, h_new


@dataclasses.dataclass(frozen=True)
class IRNN(SimpleRNN):
  r"""IRNN: a ReLU Elman RNN whose recurrent matrix starts at ``identity_scale * I``.

  .. math::  h_t = \max(0, x_t U + h_{t-1} W + b),\quad W_0 = s I,\ b_0 = 0

  Input weights start at N(0, 0.001^2) as in the paper. Params and carry as
  :class:`SimpleRNN`.

  Reference: Le, Jaitly & Hinton, "A simple way to initialize recurrent
  networks of rectified linear units", arXiv:1504.00941 (2015).
  """

  activation: Any = "relu"
  kernel_init: Any = "small_normal"
  recurrent_init: Any = "identity"
  identity_scale: float = 1.0

  def init(self, key, input_size: int) -> Params:
    params = _init_common(self, key, input_size, self.hidden_size)
    params["w_h"] = params["w_h"] * jnp.asarray(self.identity_scale, self.param_dtype)
    return params


@dataclasses.dataclass(frozen=True)
class JordanRNN(RNNCell):
  r"""Jordan network: the previous *output* is fed back.

  .. math::
     h_t = f(x_t U + y_{t-1} W + b_h), \qquad y_t = g(h_t V + b_o)

  Params: ``w_i`` (U) ``[I, H]``, ``w_h`` (W) ``[O, H]``, ``b`` (b_h) ``[H]``,
  ``w_o`` (V) ``[H, O]``, ``b_o`` ``[O]``. Carry: ``y`` ``[*batch, O]``;
  output ``y_t``.

  Args:
    hidden_size: H.
    output_size: O.
    activation: f; output_activation: g.

  Reference: Jordan, "Serial order: a parallel distributed processing
  approach", ICS Report 8604 (1986).
  """

  output_size: int = 1  # type: ignore[assignment]
  activation: Any = "tanh"
  output_activation: Any = "identity"
  kernel_init: Any = "glorot_uniform"
  recurrent_init: Any = "glorot_uniform"
  output_init: Any = "glorot_uniform"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 1

  def __post_init__(self):
    self._setup()
    _checks.check_positive_int(self.output_size, "output_size")
    object.__setattr__(self, "activation", get_activation(self.activation))
    object.__setattr__(self, "output_activation",
                       get_activation(self.output_activation, argname="output_activation"))
    object.__setattr__(self, "output_init",
                       get_initializer(self.output_init, argname="output_init"))

  @property
  def state_size(self) -> int:
    return self.output_size

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I,H], "w_h": [O,H], "b": [H], "w_o": [H,O], "b_o": [O]}``."""
    k1, k2 = jax.random.split(key)
    params = _init_common(self, k1, input_size, self.output_size)
    params["w_o"] = self.output_init(k2, (self.hidden_size, self.output_size), self.param_dtype)
    params["b_o"] = jnp.zeros((self.output_size,), self.param_dtype)
    return params

  def recurrent_step(self, params, carry, xp):
    dt = self.dtype
    y_prev = carry
    h = self.activation(xp + _cast(y_prev, dt) @ _cast(params["w_h"], dt))
    y = self.output_activation(h @ _cast(params["w_o"], dt) + _cast(params["b_o"], dt))
    y = y.astype(y_prev.dtype)
    return y, y


@dataclasses.dataclass(frozen=True)
class LSTM(RNNCell):
  r"""Long short-term memory cell (the standard form, with a cell state).

  .. math::
     [i, f, g, o] &= x_t W_i + h_{t-1} W_h + b \\
     i, f, o &= \sigma(i), \sigma(f), \sigma(o);\quad g = \tanh(g) \\
     c_t &= f \odot c_{t-1} + i \odot g \\
     h_t &= o \odot \tanh(c_t)

  Gate order along the fused axis: **i, f, g, o** (PyTorch's). Params:
  ``w_i`` ``[I, 4H]``, ``w_h`` ``[H, 4H]``, ``b`` ``[4H]`` (PyTorch's two
  biases summed). Carry: :class:`LSTMCarry` ``(h, c)``, each ``[*batch, H]``;
  output ``y_t = h_t``.

  Args:
    hidden_size: H.
    forget_bias: written into the f block of ``b`` at init (Jozefowicz et al.
      2015 recommend 1); never added in the forward pass.
    gate_activation: sigma (default sigmoid; ``"hard_sigmoid"`` also common).
    activation: the candidate and cell-output nonlinearity (default tanh).

  Reference: Hochreiter & Schmidhuber, Neural Computation 1997; the forget
  gate of Gers, Schmidhuber & Cummins 2000.
  """

  forget_bias: float = 1.0
  gate_activation: Any = "sigmoid"
  activation: Any = "tanh"
  kernel_init: Any = "glorot_uniform"
  recurrent_init: Any = "orthogonal"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 4

  def __post_init__(self):
    self._setup()
    object.__setattr__(self, "activation", get_activation(self.activation))
    object.__setattr__(self, "gate_activation",
                       get_activation(self.gate_activation, argname="gate_activation"))

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, 4H], "w_h": [H, 4H], "b": [4H]}`` (b_f = forget_bias)."""
    params = _init_common(self, key, input_size, self.hidden_size)
    H = self.hidden_size
    params["b"] = params["b"].at[H:2 * H].add(
        jnp.asarray(self.forget_bias, self.param_dtype))
    return params

  def initial_carry(self, batch_shape=(), dtype=None) -> LSTMCarry:
    z = RNNCell.initial_carry(self, batch_shape, dtype)
    return LSTMCarry(h=z, c=z)

  def recurrent_step(self, params, carry, xp):
    dt = self.dtype
    h, c = carry
    H = self.hidden_size
    z = xp + _cast(h, dt) @ _cast(params["w_h"], dt)
    i = self.gate_activation(z[..., 0 * H:1 * H])
    f = self.gate_activation(z[..., 1 * H:2 * H])
    g = self.activation(z[..., 2 * H:3 * H])
    o = self.gate_activation(z[..., 3 * H:4 * H])
    c_new = f * _cast(c, dt) + i * g
    h_new = o * self.activation(c_new)
    h_new = h_new.astype(h.dtype)
    return LSTMCarry(h=h_new, c=c_new.astype(c.dtype)), h_new


@dataclasses.dataclass(frozen=True)
class GRU(RNNCell):
  r"""Gated recurrent unit.

  Gate order along the fused axis: **r, z, n** (PyTorch's).

  ``reset_after=True`` (default; PyTorch, cuDNN, Flax, Keras 2+):

  .. math::
     r &= \sigma(x W_{ir} + b_{ir} + h W_{hr}) \\
     z &= \sigma(x W_{iz} + b_{iz} + h W_{hz}) \\
     n &= \tanh(x W_{in} + b_{in} + r \odot (h W_{hn} + b_{hn})) \\
     h' &= (1 - z) \odot n + z \odot h

  ``reset_after=False`` (Cho et al. 2014): the reset gate acts on h *before*
  the matmul, :math:`n = \tanh(x W_{in} + b_{in} + (r \odot h) W_{hn})`.

  In both forms z near 1 keeps the history: :math:`h' = z h + (1-z) n`
  (seed 004's prose, its garbled formula corrected).

  Params: ``w_i`` ``[I, 3H]``, ``w_h`` ``[H, 3H]``, ``b`` ``[3H]`` (input-side
  biases, with PyTorch's hidden-side r and z biases folded in), and with
  ``reset_after=True`` also ``b_hn`` ``[H]``. Carry ``h`` ``[*batch, H]``;
  output ``y_t = h_t``.

  References: Cho et al., "Learning phrase representations using RNN
  encoder-decoder", EMNLP 2014; Chung et al. 2014.
  """

  reset_after: bool = True
  gate_activation: Any = "sigmoid"
  activation: Any = "tanh"
  kernel_init: Any = "glorot_uniform"
  recurrent_init: Any = "orthogonal"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 3

  def __post_init__(self):
    self._setup()
    object.__setattr__(self, "activation", get_activation(self.activation))
    object.__setattr__(self, "gate_activation",
                       get_activation(self.gate_activation, argname="gate_activation"))
    if not isinstance(self.reset_after, (bool, np.bool_)):
      raise TypeError(f"reset_after must be a bool, got {self.reset_after!r}.")

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I,3H], "w_h": [H,3H], "b": [3H]}`` (+ ``"b_hn": [H]``)."""
    params = _init_common(self, key, input_size, self.hidden_size)
    if self.reset_after:
      params["b_hn"] = jnp.zeros((self.hidden_size,), self.param_dtype)
    return params

  def recurrent_step(self, params, carry, xp):
    dt = self.dtype
    h = carry
    hc = _cast(h, dt)
    H = self.hidden_size
    w_h = _cast(params["w_h"], dt)
    if self.reset_after:
      hp = hc @ w_h
      r = self.gate_activation(xp[..., :H] + hp[..., :H])
      z = self.gate_activation(xp[..., H:2 * H] + hp[..., H:2 * H])
      n = self.activation(xp[..., 2 * H:] + r * (hp[..., 2 * H:] + _cast(params["b_hn"], dt)))
    else:
      hp = hc @ w_h[:, :2 * H]
      r = self.gate_activation(xp[..., :H] + hp[..., :H])
      z = self.gate_activation(xp[..., H:2 * H] + hp[..., H:2 * H])
      n = self.activation(xp[..., 2 * H:] + (r * hc) @ w_h[:, 2 * H:])
    h_new = ((1 - z) * n + z * hc).astype(h.dtype)
    return h_new, h_new


CELLS = (SimpleRNN, IRNN, JordanRNN, LSTM, GRU)
