r"""Pure-function recurrent cells and the cell protocol.

Every cell is a frozen dataclass holding only static, hashable config. Users
see a small API:

* ``init(key, input_size) -> params``: a dict of arrays (a pytree).
* ``initial_carry(batch_shape=(), dtype=None) -> carry``: zeros.
* ``cell(params, carry, x) -> (carry, y)``: one pure step, usable as a
  ``jax.lax.scan`` body. ``x`` is ``[*batch, I]``.
* ``input_projection(params, x) -> xp`` (``[*batch, G*H]``, bias included) and
  ``recurrent_step(params, carry, xp) -> (carry, y)``; ``cell(params, carry,
  x)`` is exactly ``recurrent_step(params, carry, input_projection(params, x))``,
  so a scan can run the input projection for all steps as one matmul.

The protocol: a cell declares its math once
-------------------------------------------
A step is "matmuls into K pre-activation blocks, then elementwise gate math".
A cell declares

* ``pre_blocks``: the names of the K blocks, each ``[*batch, H]``;
  ``x_blocks`` / ``h_blocks``: which blocks the input side (``x W_x``) and the
  recurrent side (``r(carry) W_h``) write, in the column order of ``W_x`` /
  ``W_h``. A block in both gets the sum; the bias ``b`` covers all K blocks.
* :meth:`RNNCell.fused_params` ``(params) -> FusedParams(w_x, w_h, b, gp)``:
  the weights in that layout (``w_x [I, Kx*H]``, ``w_h [S, Kh*H]`` or None,
  ``b [K*H]``) and ``gp``, the parameters the gate math reads itself
  (peepholes, an IndRNN's recurrent vector, a Jordan network's readout).
* :meth:`RNNCell.recurrent_input` ``(carry) -> [*batch, S]``: what multiplies
  ``W_h`` (the carry; ``h`` of an LSTM).
* :meth:`RNNCell.gates` ``(gp, pre, carry) -> (new_carry, y, named_gates)``:
  the elementwise step; ``named_gates`` is a tuple of
  :class:`NamedGate` ``(name, pre_activation, activation)``, one per
  nonlinearity.

From that single declaration rnnjax derives the reference step
(:meth:`RNNCell.recurrent_step`), the fused custom-VJP scan (the engine in
``rnnjax/_fused.py``; its backward differentiates :meth:`gates` with
``jax.vjp``), the gate-saturation statistics and the diagnostics' state map.
Optional extras:

* :meth:`RNNCell.custom_gates_vjp`: a hand-written :class:`GatesVJP` for the
  fused backward (kept only where measured faster: SimpleRNN, LSTM, GRU);
* :meth:`RNNCell.prefers_fused`: whether ``impl="auto"`` takes the fused
  path (default True).

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
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import _checks
from rnnjax._activations import ACTIVATIONS, get_activation
from rnnjax._initializers import get_initializer, init_gates

Params = dict


class LSTMCarry(NamedTuple):
  """The LSTM carry. ``h``: hidden state ``[*batch, H]``; ``c``: cell state ``[*batch, H]``."""
  h: jax.Array
  c: jax.Array


class FusedParams(NamedTuple):
  """A cell's parameters in the layout of its pre-activation blocks.

  Attributes:
    w_x: ``[I, Kx*H]``, the input weights of the blocks ``cell.x_blocks``.
    w_h: ``[S, Kh*H]``, the recurrent weights of the blocks ``cell.h_blocks``,
      or None when the cell has no recurrent matmul.
    b: ``[K*H]``, the bias of every pre-activation block.
    gp: a pytree of the parameters :meth:`RNNCell.gates` reads (``()`` if none).
  """
  w_x: jax.Array
  w_h: Optional[jax.Array]
  b: jax.Array
  gp: Any


class NamedGate(NamedTuple):
  """One nonlinearity of a step: ``act(pre)``, with ``pre`` ``[*batch, H]``."""
  name: str
  pre: jax.Array
  act: Callable


class GatesVJP(NamedTuple):
  """A hand-written forward/backward pair for :meth:`RNNCell.gates` (fused path).

  ``fwd(gp, pre, carry) -> (new_carry, y, res)``: the gate math, with ``res`` a
  tuple of ``[B, *]`` arrays kept for the backward.

  ``bwd(gp, res, carry_prev, carry_new, y, d_carry, dy) -> (e, d_carry_prev, d_gp)``:
  ``e = d pre`` as one ``[B, K*H]`` array (blocks in ``pre_blocks`` order),
  ``d_carry_prev`` the cotangent of the previous carry *except* through
  ``W_h`` (the engine adds ``e W_h^T``; a leaf may be None for zero), and
  ``d_gp`` the cotangent of ``gp`` (None if ``gp`` is empty).
  """
  fwd: Callable
  bwd: Callable


def _canon_dtype(d, argname):
  if d is None:
    return None
  try:
    d = jnp.dtype(d)
  except TypeError:
    raise TypeError(f"{argname} must be a dtype or None, got {d!r}.") from None
  if not jnp.issubdtype(d, jnp.floating):
    raise TypeError(f"{argname} must be a floating dtype (e.g. jnp.float32), got {d}.")
  return d


def _cast(x, dtype):
  return x if dtype is None else x.astype(dtype)


def _cast_tree(tree, dtype):
  if dtype is None:
    return tree
  return jax.tree_util.tree_map(lambda l: l.astype(dtype), tree)


# Derivatives written from an activation's *output* y = f(x), for the
# activations where that is exact (used by the hand-written gate VJPs).
_DERIV_FROM_OUTPUT = {
    "sigmoid": lambda y: y * (1 - y),
    "tanh": lambda y: 1 - y * y,
    "relu": lambda y: (y > 0).astype(y.dtype),
    "identity": jnp.ones_like,
    "linear": jnp.ones_like,
}


def deriv_from_output(act):
  """``f'`` as a function of ``f(x)`` for sigmoid/tanh/relu/identity, else None."""
  name = getattr(act, "name", None)
  if name in _DERIV_FROM_OUTPUT and ACTIVATIONS.get(name) is getattr(act, "fn", None):
    return _DERIV_FROM_OUTPUT[name]
  return None


def _is(act, name):
  return getattr(act, "name", None) == name and getattr(act, "fn", None) is ACTIVATIONS[name]


@dataclasses.dataclass(frozen=True)
class RNNCell:
  """Base class of the cells: shared config, validation and the derived step.

  Subclasses declare ``num_gates`` (G, the width of the input projection in
  units of H), optionally ``pre_blocks`` / ``x_blocks`` / ``h_blocks``, and
  implement :meth:`init` and :meth:`gates` (see the module docstring).
  """

  hidden_size: int

  # Subclasses set these as class attributes.
  num_gates = 1
  pre_blocks = ("a",)   # names of the K pre-activation blocks
  x_blocks = None       # blocks the input side writes; None: range(num_gates)
  h_blocks = None       # blocks the recurrent matmul writes; None: range(num_gates)

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
    """Size of the output ``y`` of a step."""
    return self.hidden_size

  @property
  def gate_size(self) -> int:
    """Width of the fused input projection, ``G * H``."""
    return self.num_gates * self.hidden_size

  @property
  def input_blocks(self) -> tuple:
    """The pre-activation blocks the input side writes (``x_blocks`` or all G)."""
    return tuple(range(self.num_gates)) if self.x_blocks is None else tuple(self.x_blocks)

  @property
  def recurrent_blocks(self) -> tuple:
    """The pre-activation blocks the recurrent matmul writes (``h_blocks`` or all G)."""
    return tuple(range(self.num_gates)) if self.h_blocks is None else tuple(self.h_blocks)

  @property
  def num_pre_blocks(self) -> int:
    """K, the number of ``[*batch, H]`` pre-activation blocks."""
    return len(self.pre_blocks)

  # -- the protocol (declared by each cell) ----------------------------------
  def fused_params(self, params) -> FusedParams:
    """The params in the layout of the pre-activation blocks (default: ``w_i``, ``w_h``, ``b``)."""
    return FusedParams(params["w_i"], params["w_h"], params["b"], ())

  def recurrent_input(self, carry):
    """What multiplies ``W_h``: ``[..., S]`` from a carry with any leading dims (default: the carry)."""
    return carry

  def gates(self, gp, pre, carry):  # pragma: no cover - abstract
    """The elementwise step: ``(gp, pre (K arrays [*batch, H]), carry) -> (new_carry, y, named_gates)``."""
    raise NotImplementedError(f"{type(self).__name__} does not implement gates().")

  def custom_gates_vjp(self) -> Optional[GatesVJP]:
    """A hand-written fused backward for :meth:`gates`, or None (autodiff)."""
    return None

  def prefers_fused(self, backend: str) -> bool:
    """Whether ``impl="auto"`` runs this cell on the fused path on ``backend``."""
    return True

  # -- user API ---------------------------------------------------------------
  def initial_carry(self, batch_shape=(), dtype=None):
    """Zeros of shape ``[*batch_shape, state_size]``.

    Args:
      batch_shape: leading batch dimensions (a tuple of non-negative ints, or
        one int), ``()`` for a single sequence.
      dtype: carry dtype; default the cell's ``param_dtype``.
    """
    batch_shape = _checks.check_batch_shape(batch_shape)
    dtype = _canon_dtype(dtype, "dtype") or self.param_dtype
    return jnp.zeros(batch_shape + (self.state_size,), dtype)

  def input_size_of(self, params) -> int:
    """The input size I the params were built for (rows of ``w_i``)."""
    return params["w_i"].shape[0]

  def check_params(self, params, argname: str = "params"):
    """Raises unless ``params`` has the structure, shapes and dtype kind ``init`` gives.

    Checked once at the entry of :func:`rnnjax.scan` and the layers, so that
    params of another cell (or another configuration) fail with the leaf and
    the expected shape named, not deep inside a matmul.
    """
    name = type(self).__name__
    if not isinstance(params, dict) or "w_i" not in params or jnp.ndim(params["w_i"]) != 2:
      raise TypeError(
          f"{argname} must be the dict returned by {name}.init (with a 2-D 'w_i'), got "
          f"{type(params).__name__}" + (f" with keys {sorted(params)}" if isinstance(params, dict) else "") + ".")
    expected = _param_shapes(self, int(params["w_i"].shape[0]))
    got = {k: tuple(jnp.shape(v)) for k, v in params.items()}
    if set(got) != set(expected):
      missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
      raise ValueError(
          f"{argname} do not belong to {self!r}: expected the leaves {sorted(expected)}"
          + (f"; missing {[f'{k} {expected[k]}' for k in missing]}" if missing else "") + (f"; unexpected {extra}" if extra else "")
          + ". Were they made by another cell's init?")
    for k, shape in expected.items():
      if got[k] != shape:
        raise ValueError(
            f"{argname}[{k!r}] has shape {got[k]}, but {name}(hidden_size={self.hidden_size}) "
            f"with input_size={params['w_i'].shape[0]} expects {shape}.")
      dt = jnp.result_type(params[k])
      if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{argname}[{k!r}] has dtype {dt}; expected a floating dtype.")

  def check_input(self, params, x, argname="x"):
    """Raises if ``params`` do not fit this cell or ``x``'s feature size does not match them."""
    self.check_params(params)
    expected = self.input_size_of(params)
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != expected:
      raise ValueError(
          f"{argname} has feature size {jnp.shape(x)[-1] if jnp.ndim(x) else None} "
          f"(shape {jnp.shape(x)}), but params expect input_size={expected}.")

  def input_projection(self, params, x):
    """``x W_x + b_x``: ``[*batch, I] -> [*batch, G*H]`` (the input side of every block, one matmul)."""
    dt = self.dtype
    fp = self.fused_params(params)
    return _cast(x, dt) @ _cast(fp.w_x, dt) + _cast(_block_cols(fp.b, self.input_blocks, self.hidden_size), dt)

  def recurrent_step(self, params, carry, xp):
    """One step from the projected input ``xp`` ``[*batch, G*H]``: ``(carry, y)``.

    Assembles the pre-activation blocks (``xp``, ``r(carry) W_h`` and the
    bias of the blocks only the recurrent side writes) and applies
    :meth:`gates`.
    """
    fp = _cast_tree(self.fused_params(params), self.dtype)
    pre = assemble_pre(self, xp, _recurrent_part(self, fp.w_h, carry), fp.b)
    new_carry, y, _ = self.gates(fp.gp, pre, carry)
    return new_carry, y

  def __call__(self, params, carry, x):
    """One step: ``(carry, x [*batch, I]) -> (new_carry, y [*batch, output_size])``."""
    self.check_input(params, x)
    _checks.check_step_carry(carry, jax.eval_shape(self.initial_carry))
    return self.recurrent_step(params, carry, self.input_projection(params, x))

  def step_with_gates(self, params, carry, x):
    """One step that also returns the :class:`NamedGate` tuple (saturation statistics)."""
    self.check_input(params, x)
    fp = _cast_tree(self.fused_params(params), self.dtype)
    xp = self.input_projection(params, x)
    pre = assemble_pre(self, xp, _recurrent_part(self, fp.w_h, carry), fp.b)
    return self.gates(fp.gp, pre, carry)


@functools.lru_cache(maxsize=512)
def _param_shapes(cell, input_size):
  shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
  return {k: tuple(v.shape) for k, v in shapes.items()}


def _block_cols(v, blocks, H):
  """The columns of the listed blocks of a ``[..., K*H]`` array, in that order."""
  blocks = tuple(blocks)
  if blocks and blocks == tuple(range(blocks[0], blocks[0] + len(blocks))):  # contiguous
    return v[..., blocks[0] * H:(blocks[-1] + 1) * H]
  return jnp.concatenate([v[..., k * H:(k + 1) * H] for k in blocks], axis=-1)


def _recurrent_part(cell, w_h, carry):
  """``r(carry) W_h`` in the compute dtype, or None for a cell without a recurrent matmul."""
  if w_h is None or not cell.recurrent_blocks:
    return None
  return _cast(cell.recurrent_input(carry), cell.dtype) @ w_h


def assemble_pre(cell, xp, hp, b):
  """The K pre-activation blocks from the input side ``xp`` ``[*, Kx*H]``.

  ``hp`` ``[*, Kh*H]`` (or None) is the recurrent side, ``b`` ``[K*H]`` the
  bias (already in ``xp`` for the input blocks; added here for the others).
  Returns a tuple of K arrays ``[*, H]``.
  """
  H = cell.hidden_size
  xb, hb = cell.input_blocks, cell.recurrent_blocks if hp is not None else ()
  pre = []
  for k in range(cell.num_pre_blocks):
    part = None
    if k in xb:
      j = xb.index(k)
      part = xp[..., j * H:(j + 1) * H]
    if k in hb:
      j = hb.index(k)
      hpart = hp[..., j * H:(j + 1) * H]
      part = hpart if part is None else part + hpart
    if k not in xb:
      bk = b[k * H:(k + 1) * H]
      part = bk if part is None else part + bk
    pre.append(part)
  return tuple(pre)


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


# --------------------------------------------------------------------------
# Elman / IRNN / IndRNN / Jordan
# --------------------------------------------------------------------------

def _simple_vjp(act):
  """Hand-written gate VJP of ``h = f(a)`` (derivative from the output)."""
  dact = deriv_from_output(act)

  def fwd(gp, pre, carry):
    h = act(pre[0])
    return h, h, ()

  def bwd(gp, res, carry_prev, carry_new, y, d_carry, dy):
    return (d_carry + dy) * dact(y), None, None
  return GatesVJP(fwd, bwd)


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
  pre_blocks = ("h",)

  def __post_init__(self):
    self._setup()
    object.__setattr__(self, "activation", get_activation(self.activation))

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, H], "w_h": [H, H], "b": [H]}``."""
    return _init_common(self, key, input_size, self.hidden_size)

  def gates(self, gp, pre, carry):
    """``h_t = f(a)``: the new carry and the output are ``h_t``."""
    h = self.activation(pre[0]).astype(carry.dtype)
    return h, h, (NamedGate("h", pre[0], self.activation),)

  def custom_gates_vjp(self):
    """The derivative from the output for sigmoid/tanh/relu/identity (no compute-dtype cast)."""
    if self.dtype is None and deriv_from_output(self.activation) is not None:
      return _simple_vjp(self.activation)
    return None


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

  def __post_init__(self):
    super().__post_init__()
    _checks.check_real_number(self.identity_scale, "identity_scale")

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, H], "w_h": s I [H, H], "b": [H]}``."""
    params = _init_common(self, key, input_size, self.hidden_size)
    params["w_h"] = params["w_h"] * jnp.asarray(self.identity_scale, self.param_dtype)
    return params


@dataclasses.dataclass(frozen=True)
class IndRNN(RNNCell):
  r"""Independently recurrent network: each unit sees only its own past.

  .. math::  h_t = f(x_t W + u \odot h_{t-1} + b)

  with an elementwise recurrent weight ``u`` ``[H]``, so
  :math:`\partial h_{t}/\partial h_{t-k}` is the diagonal
  :math:`\prod_j u \odot f'(a_j)`: with ReLU its norm is :math:`|u|^k` on the
  active units, and the paper keeps gradients from vanishing or exploding over
  T steps by constraining :math:`|u_n| \in [\epsilon^{1/T}, \gamma^{1/T}]`
  (Li et al. 2018, eq. 4-6), e.g. ``recurrent_max = 2 ** (1 / T)``.

  Params: ``{"w_i": [I, H], "u": [H], "b": [H]}``. Carry ``h`` ``[*batch, H]``;
  output ``y_t = h_t``.

  Args:
    hidden_size: H.
    activation: f (default relu).
    recurrent_min, recurrent_max: ``u`` is drawn uniformly from
      ``[recurrent_min, recurrent_max]`` at init (default [0, 1]).
    recurrent_clip: if set (a positive float, typically
      ``recurrent_max``), the step uses ``clip(u, -c, c)``: the paper's
      constraint applied in the forward pass (its gradient is zero for the
      clipped units). With ``rnnjax.train.weight_clip`` you can instead
      project ``u`` after each update.
    kernel_init, bias_init, param_dtype, dtype: as :class:`SimpleRNN`.

  Reference: Li, Li, Cook, Zhu & Gao, "Independently recurrent neural network
  (IndRNN): building a longer and deeper RNN", CVPR 2018.
  """

  activation: Any = "relu"
  recurrent_min: float = 0.0
  recurrent_max: float = 1.0
  recurrent_clip: Optional[float] = None
  kernel_init: Any = "glorot_uniform"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 1
  pre_blocks = ("h",)
  h_blocks = ()

  def __post_init__(self):
    self._setup()
    object.__setattr__(self, "activation", get_activation(self.activation))
    lo = _checks.check_real_number(self.recurrent_min, "recurrent_min")
    hi = _checks.check_real_number(self.recurrent_max, "recurrent_max")
    if lo > hi:
      raise ValueError(f"recurrent_min ({lo}) must be <= recurrent_max ({hi}).")
    if self.recurrent_clip is not None:
      c = _checks.check_real_number(self.recurrent_clip, "recurrent_clip")
      if c <= 0:
        raise ValueError(f"recurrent_clip must be a positive number or None, got {c}.")

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, H], "u": [H] ~ U[recurrent_min, recurrent_max], "b": [H]}``."""
    _checks.check_key(key)
    _checks.check_positive_int(input_size, "input_size")
    k1, k2, k3 = jax.random.split(key, 3)
    H, pd = self.hidden_size, self.param_dtype
    return {
        "w_i": init_gates(self.kernel_init, k1, input_size, H, 1, pd),
        "u": jax.random.uniform(k2, (H,), pd, self.recurrent_min, self.recurrent_max),
        "b": init_gates(self.bias_init, k3, 1, H, 1, pd)[0],
    }

  def fused_params(self, params) -> FusedParams:
    """No recurrent matmul: ``u`` is read by the gate math."""
    return FusedParams(params["w_i"], None, params["b"], {"u": params["u"]})

  def gates(self, gp, pre, carry):
    """``h_t = f(a + u * h_{t-1})``."""
    u = gp["u"]
    if self.recurrent_clip is not None:
      u = jnp.clip(u, -self.recurrent_clip, self.recurrent_clip)
    a = pre[0] + u * _cast(carry, self.dtype)
    h = self.activation(a).astype(carry.dtype)
    return h, h, (NamedGate("h", a, self.activation),)


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
  pre_blocks = ("h",)

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
    """O: the carry is the previous output."""
    return self.output_size

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I,H], "w_h": [O,H], "b": [H], "w_o": [H,O], "b_o": [O]}``."""
    k1, k2 = jax.random.split(key)
    params = _init_common(self, k1, input_size, self.output_size)
    params["w_o"] = self.output_init(k2, (self.hidden_size, self.output_size), self.param_dtype)
    params["b_o"] = jnp.zeros((self.output_size,), self.param_dtype)
    return params

  def fused_params(self, params) -> FusedParams:
    """The readout ``(w_o, b_o)`` is read by the gate math."""
    return FusedParams(params["w_i"], params["w_h"], params["b"],
                       {"w_o": params["w_o"], "b_o": params["b_o"]})

  def gates(self, gp, pre, carry):
    """``h = f(a)``, ``y = g(h V + b_o)``; the new carry and the output are ``y``."""
    h = self.activation(pre[0])
    ypre = h @ gp["w_o"] + gp["b_o"]
    y = self.output_activation(ypre).astype(carry.dtype)
    return y, y, (NamedGate("h", pre[0], self.activation),
                  NamedGate("y", ypre, self.output_activation))

  def prefers_fused(self, backend: str) -> bool:
    """The reference path: its readout matmul would need a per-step weight-gradient sum."""
    return False


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------

def _lstm_g_cols(H):
  """[4H] bool (a NumPy constant): the columns of the LSTM's g block (i, f, g, o order)."""
  col = np.arange(4 * H)
  return (col >= 2 * H) & (col < 3 * H)


def _lstm_gates_one_pass(z, H):
  """The activated LSTM gates [i, f, g, o] of ``z`` [B, 4H] in one elementwise pass.

  ``sigmoid(x) = tanh(x / 2) / 2 + 1/2``, so with ``s`` = 1 on the g block and
  1/2 elsewhere, ``tanh(s z) s + (1 - s)`` is sigmoid on i, f, o and tanh on g:
  one transcendental per element and one fusion instead of four (fewer
  XLA:CPU thunks per step; measured in benchmarks/RESULTS.md).
  """
  s = jnp.asarray(np.where(_lstm_g_cols(H), 1.0, 0.5), z.dtype)
  return jnp.tanh(z * s) * s + (1 - s)


def _lstm_vjp(cell):
  """Hand-written gate VJP of the (non-peephole) LSTM: keeps the activated gates."""
  H = cell.hidden_size
  ga, act = cell.gate_activation, cell.activation
  dga, dact = deriv_from_output(ga), deriv_from_output(act)
  one_pass = _is(ga, "sigmoid") and _is(act, "tanh")

  def fwd(gp, pre, carry):
    h, c = carry
    if one_pass:
      a = _lstm_gates_one_pass(jnp.concatenate(pre, axis=-1), H)
      i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    else:
      i, f, g, o = ga(pre[0]), ga(pre[1]), act(pre[2]), ga(pre[3])
      a = jnp.concatenate([i, f, g, o], axis=-1)
    c_new = f * c + i * g
    h_new = o * act(c_new)
    return LSTMCarry(h=h_new, c=c_new), h_new, (a,)

  def bwd(gp, res, carry_prev, carry_new, y, d_carry, dy):
    (a,) = res
    i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    dh = d_carry.h + dy
    tc = act(carry_new.c)
    dc = d_carry.c + dh * o * dact(tc)
    # E = [dc g i', dc c_prev f', dc i g', dh tanh(c) o'] as one product of
    # three [B, 4H] arrays (fewer fusions per step than four block products).
    mult = jnp.concatenate([dc, dc, dc, dh], axis=-1)
    partner = jnp.concatenate([g, carry_prev.c, i, tc], axis=-1)
    e = mult * partner * jnp.where(_lstm_g_cols(H), dact(a), dga(a))
    return e, LSTMCarry(h=None, c=dc * f), None
  return GatesVJP(fwd, bwd)


@dataclasses.dataclass(frozen=True)
class LSTM(RNNCell):
  r"""Long short-term memory cell (the standard form, with a cell state).

  .. math::
     [i, f, g, o] &= x_t W_i + h_{t-1} W_h + b \\
     i, f, o &= \sigma(i), \sigma(f), \sigma(o);\quad g = \tanh(g) \\
     c_t &= f \odot c_{t-1} + i \odot g \\
     h_t &= o \odot \tanh(c_t)

  With ``peephole=True`` (Gers & Schmidhuber 2000) the gates also see the
  cell state through diagonal weights :math:`p_i, p_f, p_o`:

  .. math::
     i = \sigma(a_i + p_i \odot c_{t-1}),\quad f = \sigma(a_f + p_f \odot c_{t-1}),\quad
     o = \sigma(a_o + p_o \odot c_t)

  Gate order along the fused axis: **i, f, g, o** (PyTorch's). Params:
  ``w_i`` ``[I, 4H]``, ``w_h`` ``[H, 4H]``, ``b`` ``[4H]`` (PyTorch's two
  biases summed), with ``peephole=True`` also ``w_p`` ``[3, H]`` (rows: the
  peepholes of i, f, o; zeros at init). Carry: :class:`LSTMCarry` ``(h, c)``,
  each ``[*batch, H]``; output ``y_t = h_t``.

  Args:
    hidden_size: H.
    forget_bias: written into the f block of ``b`` at init (Jozefowicz et al.
      2015 recommend 1); never added in the forward pass.
    gate_activation: sigma (default sigmoid; ``"hard_sigmoid"`` also common).
    activation: the candidate and cell-output nonlinearity (default tanh).
    peephole: add the peephole connections.

  References: Hochreiter & Schmidhuber, Neural Computation 1997; the forget
  gate of Gers, Schmidhuber & Cummins 2000; peepholes: Gers & Schmidhuber,
  "Recurrent nets that time and count", IJCNN 2000.
  """

  forget_bias: float = 1.0
  gate_activation: Any = "sigmoid"
  activation: Any = "tanh"
  kernel_init: Any = "glorot_uniform"
  recurrent_init: Any = "orthogonal"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None
  peephole: bool = False

  num_gates = 4
  pre_blocks = ("i", "f", "g", "o")

  def __post_init__(self):
    self._setup()
    object.__setattr__(self, "activation", get_activation(self.activation))
    object.__setattr__(self, "gate_activation",
                       get_activation(self.gate_activation, argname="gate_activation"))
    _checks.check_real_number(self.forget_bias, "forget_bias")
    if not isinstance(self.peephole, (bool, np.bool_)):
      raise TypeError(f"peephole must be a bool, got {self.peephole!r}.")

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, 4H], "w_h": [H, 4H], "b": [4H]}`` (b_f = forget_bias; + ``"w_p": [3, H]``)."""
    params = _init_common(self, key, input_size, self.hidden_size)
    H = self.hidden_size
    params["b"] = params["b"].at[H:2 * H].add(
        jnp.asarray(self.forget_bias, self.param_dtype))
    if self.peephole:
      params["w_p"] = jnp.zeros((3, H), self.param_dtype)
    return params

  def initial_carry(self, batch_shape=(), dtype=None) -> LSTMCarry:
    """``LSTMCarry(h, c)`` of zeros, each ``[*batch_shape, H]``."""
    z = RNNCell.initial_carry(self, batch_shape, dtype)
    return LSTMCarry(h=z, c=z)

  def fused_params(self, params) -> FusedParams:
    """The standard layout; the peepholes ``w_p`` are read by the gate math."""
    gp = {"w_p": params["w_p"]} if self.peephole else ()
    return FusedParams(params["w_i"], params["w_h"], params["b"], gp)

  def recurrent_input(self, carry):
    """``h`` multiplies ``W_h``."""
    return carry.h

  def gates(self, gp, pre, carry):
    """``c_t = f c + i g``, ``h_t = o tanh(c_t)`` (peepholes when configured)."""
    h, c = carry
    ga, act = self.gate_activation, self.activation
    cc = _cast(c, self.dtype)
    zi, zf, zg, zo = pre
    if self.peephole:
      w_p = gp["w_p"]
      zi, zf = zi + w_p[0] * cc, zf + w_p[1] * cc
    i, f, g = ga(zi), ga(zf), act(zg)
    c_new = f * cc + i * g
    if self.peephole:
      zo = zo + gp["w_p"][2] * c_new
    h_new = ga(zo) * act(c_new)
    h_new = h_new.astype(h.dtype)
    named = (NamedGate("i", zi, ga), NamedGate("f", zf, ga), NamedGate("g", zg, act),
             NamedGate("o", zo, ga), NamedGate("tanh_c", c_new, act))
    return LSTMCarry(h=h_new, c=c_new.astype(c.dtype)), h_new, named

  def custom_gates_vjp(self):
    """Hand-written for known activations, no peepholes, no compute-dtype cast."""
    if (self.dtype is None and not self.peephole and deriv_from_output(self.activation)
        and deriv_from_output(self.gate_activation)):
      return _lstm_vjp(self)
    return None


# --------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------

# A GRU with H >= 256 measured faster on the reference path on XLA:CPU
# (benchmarks/RESULTS.md), so impl="auto" takes it there.
GRU_FUSED_MAX_HIDDEN = 255


def _gru_vjp(cell):
  """Hand-written gate VJP of the reset-after GRU: keeps r, z, n and h_n."""
  H = cell.hidden_size
  ga, act = cell.gate_activation, cell.activation
  dga, dact = deriv_from_output(ga), deriv_from_output(act)

  def fwd(gp, pre, carry):
    h = carry
    r, z = ga(pre[0]), ga(pre[1])
    n = act(pre[2] + r * pre[3])
    h_new = (1 - z) * n + z * h
    return h_new, h_new, (jnp.concatenate([r, z, n, pre[3]], axis=-1),)

  def bwd(gp, res, carry_prev, carry_new, y, d_carry, dy):
    (a,) = res
    r, z, n, hn = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    dh = d_carry + dy
    dn = dh * (1 - z) * dact(n)
    e = jnp.concatenate([dn * hn * dga(r), dh * (carry_prev - n) * dga(z), dn, dn * r], axis=-1)
    return e, dh * z, None
  return GatesVJP(fwd, bwd)


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

  In both forms z near 1 keeps the history: :math:`h' = z h + (1-z) n`.

  Params: ``w_i`` ``[I, 3H]``, ``w_h`` ``[H, 3H]``, ``b`` ``[3H]`` (input-side
  biases, with PyTorch's hidden-side r and z biases folded in), and with
  ``reset_after=True`` also ``b_hn`` ``[H]``. Carry ``h`` ``[*batch, H]``;
  output ``y_t = h_t``.

  Pre-activation blocks (the fused engine's view): reset-after
  ``(a_r, a_z, x_n, h_n)`` with ``x_n = x W_in + b_in`` and
  ``h_n = h W_hn + b_hn``; reset-before ``(a_r, a_z, x_n)``, the
  ``(r h) W_hn`` product inside the gate math.

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

  # The block layout depends on reset_after, so these are properties.
  @property
  def pre_blocks(self):  # type: ignore[override]
    """``("r", "z", "x_n", "h_n")`` (reset-after) or ``("r", "z", "x_n")``."""
    return ("r", "z", "x_n", "h_n") if self.reset_after else ("r", "z", "x_n")

  @property
  def h_blocks(self):  # type: ignore[override]
    """``(0, 1, 3)`` (reset-after) or ``(0, 1)``: the recurrent matmul's blocks."""
    return (0, 1, 3) if self.reset_after else (0, 1)

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I,3H], "w_h": [H,3H], "b": [3H]}`` (+ ``"b_hn": [H]``)."""
    params = _init_common(self, key, input_size, self.hidden_size)
    if self.reset_after:
      params["b_hn"] = jnp.zeros((self.hidden_size,), self.param_dtype)
    return params

  def fused_params(self, params) -> FusedParams:
    """Reset-after: ``b_hn`` is the bias of the ``h_n`` block. Reset-before:
    ``W_hn`` is read by the gate math."""
    H = self.hidden_size
    if self.reset_after:
      return FusedParams(params["w_i"], params["w_h"],
                         jnp.concatenate([params["b"], params["b_hn"]]), ())
    w_h = params["w_h"]
    return FusedParams(params["w_i"], w_h[:, :2 * H], params["b"], {"w_hn": w_h[:, 2 * H:]})

  def gates(self, gp, pre, carry):
    """``h' = (1 - z) n + z h``."""
    ga, act = self.gate_activation, self.activation
    hc = _cast(carry, self.dtype)
    r, z = ga(pre[0]), ga(pre[1])
    if self.reset_after:
      zn = pre[2] + r * pre[3]
    else:
      zn = pre[2] + (r * hc) @ gp["w_hn"]
    h_new = ((1 - z) * act(zn) + z * hc).astype(carry.dtype)
    return h_new, h_new, (NamedGate("r", pre[0], ga), NamedGate("z", pre[1], ga),
                          NamedGate("n", zn, act))

  def custom_gates_vjp(self):
    """Hand-written for the reset-after form with known activations, no compute-dtype cast."""
    if (self.reset_after and self.dtype is None and deriv_from_output(self.activation)
        and deriv_from_output(self.gate_activation)):
      return _gru_vjp(self)
    return None

  def prefers_fused(self, backend: str) -> bool:
    """Reset-after with ``hidden_size <= GRU_FUSED_MAX_HIDDEN`` (measured on XLA:CPU)."""
    return self.reset_after and self.hidden_size <= GRU_FUSED_MAX_HIDDEN


CELLS = (SimpleRNN, IRNN, IndRNN, JordanRNN, LSTM, GRU)
