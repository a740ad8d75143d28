r"""Cells whose recurrence is linear in the state: minGRU, minLSTM, LRU.

Each cell declares its recurrence once, elementwise,

.. math::  h_t = a_t \odot h_{t-1} + b_t, \qquad y_t = \mathrm{out}(h_t, x_t),

through :meth:`LinearRecurrentCell.linear_recurrence` ``(params, xp) -> (a, b)``
(``xp`` the input projection of ``x_t``; ``a_t``, ``b_t`` depend on the input
only) and :meth:`LinearRecurrentCell.linear_output`. The ordinary step
``cell(params, carry, x)`` is derived from them, so ``rnnjax.scan`` runs
these cells step by step like any other cell, and
``rnnjax.parallel.linear_scan`` (``impl="associative"``) runs the same
recurrence as one ``jax.lax.associative_scan`` in ``O(log T)`` depth.
Cells with positive ``a`` and ``b`` (minGRU, minLSTM) also declare
:meth:`log_recurrence` ``-> (log a, log b)``, which the associative scan uses
(the log-space form of Feng et al.).

References: Feng, Tung, Ahmed, Bengio & Hajimirsadeghi, "Were RNNs all we
needed?", arXiv:2410.01201 (2024); Orvieto, Smith, Gu, Fernando, Gulcehre,
Pascanu & De, "Resurrecting recurrent neural networks for long sequences",
ICML 2023.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from rnnjax import _checks
from rnnjax._cells import FusedParams, NamedGate, RNNCell
from rnnjax._initializers import init_gates

Params = dict


def _g(x):
  """minGRU's positive activation ``g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0)``."""
  return jnp.where(x >= 0, x + 0.5, jax.nn.sigmoid(x))


def _log_g(x):
  """``log g(x)`` for minGRU's positive activation ``g(x) = x + 0.5 (x >= 0), sigmoid(x) (x < 0)``."""
  return jnp.where(x >= 0, jnp.log(jax.nn.relu(x) + 0.5), -jax.nn.softplus(-x))


def _init_input_only(cell, key, input_size):
  _checks.check_key(key)
  _checks.check_positive_int(input_size, "input_size")
  k1, k2 = jax.random.split(key)
  H, G, pd = cell.hidden_size, cell.num_gates, cell.param_dtype
  return {"w_i": init_gates(cell.kernel_init, k1, input_size, H, G, pd),
          "b": init_gates(cell.bias_init, k2, 1, H, G, pd)[0]}


@dataclasses.dataclass(frozen=True)
class LinearRecurrentCell(RNNCell):
  """Base of the linear-recurrence cells: the step is derived from
  :meth:`linear_recurrence` and :meth:`linear_output`."""

  def linear_recurrence(self, params, xp):  # pragma: no cover - abstract
    """``xp [*batch, G*H] -> (a, b)``, each ``[*batch, H]`` (real or complex)."""
    raise NotImplementedError

  def log_recurrence(self, params, xp):
    """``(log a, log b)`` where ``a, b > 0``; ``None`` if the cell has no log form."""
    return None

  def carry_to_state(self, carry):
    """The carry as the state ``h`` of the linear recurrence."""
    return carry

  def state_to_carry(self, h, dtype):
    return h.astype(dtype)

  def linear_output(self, params, h, xp):
    """``y_t`` from the new state ``h_t`` and ``xp_t``; default ``h_t``."""
    return h

  def named_gates(self, pre):
    """The :class:`NamedGate` tuple of the step's nonlinearities (saturation statistics)."""
    return ()

  # -- the cell protocol (rnnjax._cells), derived from the recurrence -------------
  h_blocks = ()   # no recurrent matmul: a_t, b_t read the input only
  fused_on_cpu = True   # measured per cell: see prefers_fused

  def prefers_fused(self, backend: str) -> bool:
    """The fused path except on CPU for the cells whose ``fused_on_cpu`` is False.

    Measured on XLA:CPU (one Zen 3 core; B, T, I, H = 8, 256, 16, 32 / 20, 120,
    10, 128 / 16, 128, 64, 512), fused over reference time, forward+backward:
    MinGRU 0.98 / 1.28 / 1.06, MinLSTM 1.38 / 1.83 / 1.62 (forward alone
    0.92-1.16: a tie), LRU 0.81 / 0.80 / 0.91. So MinGRU and MinLSTM take the
    reference path on CPU, LRU the fused one.
    """
    return backend != "cpu" or self.fused_on_cpu

  def fused_params(self, params) -> FusedParams:
    """Input weights and bias; the whole params dict is handed to the gate math."""
    return FusedParams(params["w_i"], None, params["b"], params)

  def gates(self, gp, pre, carry):
    """``h_t = a_t * h_{t-1} + b_t`` with ``(a, b) = linear_recurrence(params, xp)``."""
    xp = jnp.concatenate(pre, axis=-1)
    a, b = self.linear_recurrence(gp, xp)
    h = a * self.carry_to_state(carry) + b
    y = self.linear_output(gp, h, xp).astype(carry.dtype)
    return self.state_to_carry(h, carry.dtype), y, self.named_gates(pre)


@dataclasses.dataclass(frozen=True)
class MinGRU(LinearRecurrentCell):
  r"""minGRU (Feng et al. 2024): a GRU whose gates read only the input.

  .. math::
     z_t = \sigma(x_t W_z + b_z),\quad \tilde h_t = g(x_t W_h + b_h),\quad
     h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

  with the paper's positive ``g(v) = v + 1/2`` for ``v >= 0`` and
  ``sigmoid(v)`` below (so ``h > 0`` from a non-negative start, and the
  log-space scan ``log h_t = logaddexp(log(1-z_t) + log h_{t-1},
  log z_t + log g(.))`` applies). Gate order along the fused axis: **z, h**.
  Params: ``w_i`` ``[I, 2H]``, ``b`` ``[2H]``. Carry ``h`` ``[*batch, H]``;
  output ``y_t = h_t``. No recurrent weights: the recurrence is linear in
  ``h``, ``a_t = 1 - z_t``, ``b_t = z_t g(.)``.
  """

  kernel_init: Any = "glorot_uniform"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 2
  pre_blocks = ("z", "h")
  fused_on_cpu = False

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, 2H], "b": [2H]}``."""
    return _init_input_only(self, key, input_size)

  def named_gates(self, pre):
    return NamedGate("z", pre[0], jax.nn.sigmoid), NamedGate("h", pre[1], _g)

  def log_recurrence(self, params, xp):
    H = self.hidden_size
    k, v = xp[..., :H], xp[..., H:]
    log_a = -jax.nn.softplus(k)        # log(1 - z)
    log_b = -jax.nn.softplus(-k) + _log_g(v)   # log z + log g(v)
    return log_a, log_b

  def linear_recurrence(self, params, xp):
    # exp of log_recurrence, written directly: two sigmoids instead of three
    # softplus, a log and two exps per element (3.3x faster forward steps on CPU).
    H = self.hidden_size
    k, v = xp[..., :H], xp[..., H:]
    return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * _g(v)


@dataclasses.dataclass(frozen=True)
class MinLSTM(LinearRecurrentCell):
  r"""minLSTM (Feng et al. 2024), with the normalised (time-independent) gates.

  .. math::
     f_t = \sigma(x_t W_f + b_f),\ i_t = \sigma(x_t W_i + b_i),\
     \tilde h_t = g(x_t W_h + b_h) \\
     f'_t = f_t / (f_t + i_t),\ i'_t = i_t / (f_t + i_t),\quad
     h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

  ``g`` as in :class:`MinGRU`. Log space: with
  ``d = softplus(-k_f) - softplus(-k_i)``, ``log f' = -softplus(d)`` and
  ``log i' = -softplus(-d)``. Gate order: **f, i, h**. Params: ``w_i``
  ``[I, 3H]``, ``b`` ``[3H]``. Carry ``h`` ``[*batch, H]``; output ``h_t``.

  Args:
    forget_bias: added to the f block of ``b`` at init.
  """

  forget_bias: float = 0.0
  kernel_init: Any = "glorot_uniform"
  bias_init: Any = "zeros"
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 3
  pre_blocks = ("f", "i", "h")
  fused_on_cpu = False

  def named_gates(self, pre):
    return (NamedGate("f", pre[0], jax.nn.sigmoid), NamedGate("i", pre[1], jax.nn.sigmoid),
            NamedGate("h", pre[2], _g))

  def init(self, key, input_size: int) -> Params:
    """Returns ``{"w_i": [I, 3H], "b": [3H]}``."""
    p = _init_input_only(self, key, input_size)
    H = self.hidden_size
    p["b"] = p["b"].at[:H].add(jnp.asarray(self.forget_bias, self.param_dtype))
    return p

  def _gate_difference(self, xp):
    """``(d, v)``: ``d = log i - log f = softplus(-k_f) - softplus(-k_i)``, so that
    ``f' = sigmoid(-d)``, ``i' = sigmoid(d)``; ``v`` the candidate pre-activation."""
    H = self.hidden_size
    kf, ki, v = xp[..., :H], xp[..., H:2 * H], xp[..., 2 * H:]
    return jax.nn.softplus(-kf) - jax.nn.softplus(-ki), v

  def log_recurrence(self, params, xp):
    d, v = self._gate_difference(xp)
    return -jax.nn.softplus(d), -jax.nn.softplus(-d) + _log_g(v)

  def linear_recurrence(self, params, xp):
    # exp of log_recurrence, written directly.
    d, v = self._gate_difference(xp)
    return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * _g(v)


@dataclasses.dataclass(frozen=True)
class LRU(LinearRecurrentCell):
  r"""Linear recurrent unit (Orvieto et al., ICML 2023).

  .. math::
     \lambda &= \exp(-\exp(\nu_{\log}) + i \exp(\theta_{\log})) \in \mathbb{C}^H \\
     h_t &= \lambda \odot h_{t-1} + \gamma \odot (x_t B),\qquad
     \gamma = \exp(\gamma_{\log}) \\
     y_t &= \mathrm{Re}(h_t C) + x_t D

  Initialisation: ``|lambda|`` uniform on the ring ``[r_min, r_max]``
  (``nu_log = log(-log|lambda|)`` with ``|lambda|^2`` uniform between
  ``r_min^2`` and ``r_max^2``), phase ``exp(theta_log)`` uniform in
  ``[0, max_phase]``, ``gamma = sqrt(1 - |lambda|^2)``; ``B`` and ``C``
  complex Gaussian with variances ``1/I`` and ``1/H``, ``D`` standard Gaussian.

  Carry: the complex state as a real array ``[*batch, 2H]`` = ``[Re h, Im h]``
  (so every carry check and diagnostic that expects real floats works).
  Params (all real): ``w_i`` ``[I, 3H]`` = ``[Re B | Im B | D]`` (blocks
  ``re, im, skip``; no bias), ``nu_log``, ``theta_log``, ``gamma_log``
  ``[H]``, ``c_re``, ``c_im`` ``[H, H]``. Output ``y_t`` ``[*batch, H]`` (the
  paper's output size equals the model width; stack a :class:`rnnjax.Dense`
  for another size).

  Args:
    hidden_size: H (complex state size, and output size).
    r_min, r_max: the ring of initial eigenvalue moduli, ``0 <= r_min < r_max <= 1``.
    max_phase: initial phases in ``[0, max_phase]``.
  """

  r_min: float = 0.0
  r_max: float = 1.0
  max_phase: float = 2 * math.pi
  param_dtype: Any = jnp.float32
  dtype: Any = None

  num_gates = 3
  pre_blocks = ("re", "im", "skip")

  def __post_init__(self):
    self._setup()
    if not 0.0 <= float(self.r_min) < float(self.r_max) <= 1.0:
      raise ValueError(f"r_min and r_max must satisfy 0 <= r_min < r_max <= 1, got "
                       f"r_min={self.r_min}, r_max={self.r_max}.")
    if not float(self.max_phase) > 0:
      raise ValueError(f"max_phase must be > 0, got {self.max_phase}.")

  @property
  def state_size(self) -> int:
    return 2 * self.hidden_size

  def init(self, key, input_size: int) -> Params:
    """Returns the real params listed in the class doc."""
    _checks.check_key(key)
    _checks.check_positive_int(input_size, "input_size")
    H, pd = self.hidden_size, self.param_dtype
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    u1 = jax.random.uniform(k1, (H,), pd)
    u2 = jax.random.uniform(k2, (H,), pd)
    r2 = u1 * (self.r_max ** 2 - self.r_min ** 2) + self.r_min ** 2
    r2 = jnp.clip(r2, jnp.finfo(pd).tiny, 1 - jnp.finfo(pd).eps)
    nu_log = jnp.log(-0.5 * jnp.log(r2))
    theta_log = jnp.log(jnp.maximum(self.max_phase * u2, jnp.finfo(pd).tiny))
    gamma_log = 0.5 * jnp.log(1 - r2)
    B = jax.random.normal(k3, (input_size, 2 * H), pd) / math.sqrt(2 * input_size)
    C = jax.random.normal(k4, (H, 2 * H), pd) / math.sqrt(2 * H)
    D = jax.random.normal(k5, (input_size, H), pd)
    return {"w_i": jnp.concatenate([B, D], axis=1), "nu_log": nu_log,
            "theta_log": theta_log, "gamma_log": gamma_log,
            "c_re": C[:, :H], "c_im": C[:, H:]}

  def fused_params(self, params) -> FusedParams:
    """``w_i`` and a zero bias (the LRU has none); the gate math reads the rest."""
    b = jnp.zeros((3 * self.hidden_size,), params["w_i"].dtype)
    return FusedParams(params["w_i"], None, b, params)

  def eigenvalues(self, params):
    """The complex diagonal ``lambda`` ``[H]``."""
    return jnp.exp(jax.lax.complex(-jnp.exp(params["nu_log"]), jnp.exp(params["theta_log"])))

  def linear_recurrence(self, params, xp):
    H = self.hidden_size
    bx = jax.lax.complex(xp[..., :H], xp[..., H:2 * H])
    gamma = jnp.exp(params["gamma_log"]).astype(xp.dtype)
    b = bx * jax.lax.complex(gamma, jnp.zeros_like(gamma))
    lam = self.eigenvalues(params).astype(b.dtype)
    return jnp.broadcast_to(lam, b.shape), b

  def carry_to_state(self, carry):
    H = self.hidden_size
    return jax.lax.complex(carry[..., :H], carry[..., H:])

  def state_to_carry(self, h, dtype):
    return jnp.concatenate([jnp.real(h), jnp.imag(h)], axis=-1).astype(dtype)

  def linear_output(self, params, h, xp):
    H = self.hidden_size
    re, im = jnp.real(h), jnp.imag(h)
    y = re @ params["c_re"].astype(re.dtype) - im @ params["c_im"].astype(re.dtype)
    return y + xp[..., 2 * H:].astype(re.dtype)


LINEAR_CELLS = (MinGRU, MinLSTM, LRU)
