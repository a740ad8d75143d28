"""Fused fast path for the scan of gated cells (SimpleRNN/IRNN, LSTM, GRU).

:func:`rnnjax.scan` dispatches here (``impl="auto"`` or ``"fused"``) for the
cells whose step is "one recurrent matmul + elementwise gate math". The result
is the same function as the reference scan (values and gradients, tested in
``tests/test_fastpath.py``), computed with less work per time step.

Forward (``T`` steps, time-major, batch flattened to ``B``; ``pre`` are the
gate pre-activations, per gate ``[B, H]``)::

  "inloop"  (CPU, not GRU): pre_t = [x_t, h_{t-1}] @ [W_i; W_h] + b     one dot per step
  "hoisted" (GPU/TPU, GRU): XP_g = X W_i[:, g] + b_g, one matmul per gate before the loop
                            pre_t = XP_t + h_{t-1} W_h                   one dot per step
  (carry_t, y_t) = gates(pre_t, carry_{t-1}, mask_t)                     elementwise

For the GRU ``pre`` has four blocks (a_r, a_z, x_n, h_n) because its n gate
needs x_n and h_n apart; its in-loop weight has a zero block, so the GRU
takes the hoisted projection on CPU too (:func:`choose_projection`).

Backward: a ``jax.custom_vjp``. With sigmoid/tanh/relu/identity activations
(and no compute-dtype cast) the forward keeps the activated gates and the
reverse loop applies hand-written derivatives written from those outputs;
otherwise it re-runs the gate math under ``jax.vjp`` from the stored ``pre``.
Either way the reverse loop does per step one elementwise pass emitting
``E_t = d pre_t`` and one dot ``E_t W_h^T`` for ``dh_{t-1}``; all parameter
and input gradients are single large matmuls after the loop::

  [dW_i; dW_h] = [X, H_prev]^T E      db = sum(E)      dX = E W_i^T

(as ``X^T E`` and ``H_prev^T E`` apart for the GRU, whose two sides see
different columns of E, and for H >= 256) with ``H_prev`` (the recurrent input of
each step) rebuilt from the outputs rather than stored. A plain ``lax.scan`` under ``jax.grad`` does instead a
weight-gradient dot and accumulation in every step.

On XLA:CPU every fusion and dot in the loop body is one thunk, and at small
shapes (B=16, H=64) each costs ~1 us on top of its work (measured: a backward
loop body of a dot, an update and a store took 12.7 us/step, the same with the
LSTM's 12 extra small fusions 25 us/step), so the loop bodies are written to
need few fusions: the LSTM with sigmoid/tanh gates computes its four gates in
one ``tanh`` pass (:func:`_lstm_gates_one_pass`) and its gate gradients as one
product of three ``[B, 4H]`` arrays.

Measured on XLA:CPU (jax 0.10.2): a ``[T, B, G*H]`` hoisted projection sliced
per gate inside the loop compiles to scalar code, and splitting it per gate
after the matmul costs G extra passes over a ``[T, B, H]`` array; the in-loop
concatenated matmul avoids both and was fastest forward at the small, long and
medium shapes. See benchmarks/RESULTS.md.

Forward-mode autodiff (``jax.jvp``/``jacfwd``) is not defined for a
``custom_vjp``; use ``rnnjax.scan(..., impl="reference")`` for it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._activations import ACTIVATIONS
from rnnjax._cells import GRU, LSTM, LSTMCarry, SimpleRNN


def _cast(x, dtype):
  return x if dtype is None else x.astype(dtype)


def supports(cell) -> bool:
  """Whether the fused path implements ``cell`` (by its step function).

  SimpleRNN and its subclasses (IRNN), LSTM and GRU with ``reset_after=True``,
  unless a subclass overrides ``recurrent_step`` or ``input_projection``.
  """
  t = type(cell)
  if isinstance(cell, SimpleRNN):
    base = SimpleRNN
  elif isinstance(cell, LSTM):
    base = LSTM
  elif isinstance(cell, GRU):
    if not cell.reset_after:
      return False
    base = GRU
  else:
    return False
  return (t.recurrent_step is base.recurrent_step
          and t.input_projection is base.input_projection)


# Measured on XLA:CPU (2-core AMD EPYC, jax 0.10.2, 2026-11-23, medians of 2
# interleaved rounds): a GRU with H >= 256 runs faster on the reference path
# (B=64,T=128,H=256: fwd 54 vs 65 ms, fwd+bwd 207 vs 225 ms; B=256,T=64,H=512:
# fwd 319 vs 383 ms, fwd+bwd 1026 vs 1211 ms), while at H=64 the fused path
# wins (fwd+bwd 14.9 vs 23.1 ms and 83 vs 121 ms).
_GRU_FUSED_MAX_HIDDEN = 255


def auto_prefers(cell) -> bool:
  """Whether ``impl="auto"`` picks the fused path for ``cell``.

  Every cell :func:`supports` covers, except a GRU with ``hidden_size >= 256``,
  which measured faster on the reference path (numbers above).
  """
  if not supports(cell):
    return False
  if isinstance(cell, GRU) and cell.hidden_size > _GRU_FUSED_MAX_HIDDEN:
    return False
  return True


# -- the elementwise part of each cell's step ---------------------------------
# G(pre, carry, mask) -> (new_carry, y), with the step's matmul results
# ``pre`` given per gate (a tuple of [B, H]):
#   SimpleRNN: (a,)                a = x U + h W + b
#   LSTM:      (a_i, a_f, a_g, a_o)
#   GRU:       (a_r, a_z, x_n, h_n)  a_r, a_z include both sides; x_n = x W_in + b_in;
#                                    h_n = h W_hn + b_hn
# ``mask`` [B] bool or None. Written to match the cells' ``recurrent_step``
# (same ops, same casts).

def _masked(mask, new_carry, old_carry, y):
  if mask is None:
    return new_carry, y
  m = mask[:, None]
  new_carry = jax.tree_util.tree_map(lambda n, o: jnp.where(m, n, o), new_carry, old_carry)
  return new_carry, jnp.where(m, y, jnp.zeros_like(y))


def _gates(cell, pre, carry, mask):
  if isinstance(cell, LSTM):
    h, c = carry
    ga, act = cell.gate_activation, cell.activation
    i, f, g, o = ga(pre[0]), ga(pre[1]), act(pre[2]), ga(pre[3])
    c_new = f * _cast(c, cell.dtype) + i * g
    h_new = (o * act(c_new)).astype(h.dtype)
    return _masked(mask, LSTMCarry(h=h_new, c=c_new.astype(c.dtype)), carry, h_new)
  if isinstance(cell, GRU):
    h = carry
    ga, act = cell.gate_activation, cell.activation
    r, z = ga(pre[0]), ga(pre[1])
    n = act(pre[2] + r * pre[3])
    h_new = ((1 - z) * n + z * _cast(h, cell.dtype)).astype(h.dtype)
    return _masked(mask, h_new, h, h_new)
  h = carry
  h_new = cell.activation(pre[0]).astype(h.dtype)
  return _masked(mask, h_new, h, h_new)


def _h_of(cell, carry):
  return carry.h if isinstance(cell, LSTM) else carry


def _num_pre(cell):
  """Number of [B, H] blocks of ``pre``: G, or 4 for the GRU (its n gate has two)."""
  return 4 if isinstance(cell, GRU) else cell.num_gates


# Derivatives written from the activation's *output* y = f(x), for the
# activations where that is exact; others use the generic (VJP) backward.
_DERIV_FROM_OUTPUT = {
    "sigmoid": lambda y: y * (1 - y),
    "tanh": lambda y: 1 - y * y,
    "relu": lambda y: (y > 0).astype(y.dtype),
    "identity": lambda y: jnp.ones_like(y),
    "linear": lambda y: jnp.ones_like(y),
}


def _known_deriv(act):
  name = getattr(act, "name", None)
  if name in _DERIV_FROM_OUTPUT and ACTIVATIONS.get(name) is getattr(act, "fn", None):
    return _DERIV_FROM_OUTPUT[name]
  return None


def _analytic(cell) -> bool:
  """Whether the hand-written backward applies (known activations, no compute-dtype cast)."""
  if cell.dtype is not None:
    return False
  acts = [cell.activation] + ([cell.gate_activation] if hasattr(cell, "gate_activation") else [])
  return all(_known_deriv(a) is not None for a in acts)


def choose_projection(cell, backend: Optional[str] = None) -> str:
  """The projection placement the fused path uses: ``"inloop"`` or ``"hoisted"``.

  On CPU (measured on XLA:CPU, jax 0.10.2, see benchmarks/RESULTS.md):
  ``"inloop"``, one ``[x_t, h] @ [W_i; W_h]`` matmul per step and no hoisted
  ``[T, B, G*H]`` array, for the SimpleRNN and the LSTM; ``"hoisted"`` for the
  GRU, whose in-loop weight carries a zero block (the hoisted GRU measured
  0.77-0.92x of the in-loop time forward and 0.91-0.98x forward+backward at the
  small, long and medium presets). Elsewhere (GPU, TPU): ``"hoisted"``.
  """
  backend = backend or jax.default_backend()
  if backend != "cpu" or isinstance(cell, GRU):
    return "hoisted"
  return "inloop"


def _sigmoid_tanh(cell) -> bool:
  """Whether an LSTM's gates are the standard sigmoid gates with a tanh activation."""
  ga, act = cell.gate_activation, cell.activation
  return (getattr(ga, "name", None) == "sigmoid" and getattr(ga, "fn", None) is ACTIVATIONS["sigmoid"]
          and getattr(act, "name", None) == "tanh" and getattr(act, "fn", None) is ACTIVATIONS["tanh"])


def _lstm_g_cols(H):
  """[4H] bool (a NumPy constant): the columns of the LSTM's g block (i, f, g, o order)."""
  col = np.arange(4 * H)
  return (col >= 2 * H) & (col < 3 * H)


def _lstm_gates_one_pass(z, H):
  """The activated LSTM gates [i, f, g, o] of ``z`` [B, 4H] in one elementwise pass.

  ``sigmoid(x) = tanh(x / 2) / 2 + 1/2``, so with ``s`` = 1 on the g block and
  1/2 elsewhere, ``tanh(s z) s + (1 - s)`` is sigmoid on i, f, o and tanh on g:
  one transcendental per element and one fusion, instead of four gate fusions
  (measured on XLA:CPU, small LSTM fwd+bwd 18.9 -> 16.3 ms).
  """
  s = jnp.asarray(np.where(_lstm_g_cols(H), 1.0, 0.5), z.dtype)
  return jnp.tanh(z * s) * s + (1 - s)


class _Static(NamedTuple):
  cell: Any
  reverse: bool
  unroll: int
  analytic: bool
  projection: str  # "inloop" | "hoisted"


def _masks(lengths, T):
  """[T, B] bool: step t of sequence b is valid (t < lengths[b])."""
  return jnp.arange(T, dtype=lengths.dtype)[:, None] < lengths[None, :]


def _pre_fn(st: _Static, w_i, b, w_h, extra):
  """(per-step sequence input, step function (seq_t, h) -> pre) for the chosen projection."""
  cell = st.cell
  dt = cell.dtype
  H, I = cell.hidden_size, w_i.shape[0]
  is_gru = isinstance(cell, GRU)
  w_i, b, w_h = _cast(w_i, dt), _cast(b, dt), _cast(w_h, dt)
  if st.projection == "inloop":
    if is_gru:
      # [x, h] @ [[W_i_rz, W_i_n, 0], [W_h_rz, 0, W_h_n]] + [b_rz, b_n, b_hn]
      zi = jnp.zeros((I, H), w_i.dtype)
      zh = jnp.zeros((H, H), w_h.dtype)
      w_cat = jnp.concatenate([
          jnp.concatenate([w_i[:, :2 * H], w_i[:, 2 * H:], zi], axis=1),
          jnp.concatenate([w_h[:, :2 * H], zh, w_h[:, 2 * H:]], axis=1)], axis=0)
      b_cat = jnp.concatenate([b, extra])
    else:
      w_cat = jnp.concatenate([w_i, w_h], axis=0)
      b_cat = b
    K = w_cat.shape[1] // H

    def pre(x_t, h):
      z = jnp.concatenate([_cast(x_t, dt), _cast(h, dt)], axis=-1) @ w_cat + b_cat
      return tuple(z[:, k * H:(k + 1) * H] for k in range(K))
    return None, pre

  # Hoisted: one [T*B, I] x [I, H] matmul per gate before the loop, so that the
  # loop reads one [T, B, H] array per gate (no slicing of a [T, B, G*H] array).
  G = cell.num_gates

  def project(xs_tm):
    T, B, _ = xs_tm.shape
    x2 = _cast(xs_tm.reshape(T * B, I), dt)
    return tuple((x2 @ w_i[:, g * H:(g + 1) * H] + b[g * H:(g + 1) * H]).reshape(T, B, H)
                 for g in range(G))

  def pre(xp_t, h):
    hp = _cast(h, dt) @ w_h
    if is_gru:
      return (xp_t[0] + hp[:, :H], xp_t[1] + hp[:, H:2 * H], xp_t[2], hp[:, 2 * H:] + extra)
    return tuple(xp_t[g] + hp[:, g * H:(g + 1) * H] for g in range(G))
  return project, pre


def _forward(st: _Static, w_i, b, w_h, extra, xs_tm, carry0, lengths, *, residuals: bool):
  cell = st.cell
  T = xs_tm.shape[0]
  H = cell.hidden_size
  project, pre_fn = _pre_fn(st, w_i, b, w_h, extra)
  seq = xs_tm if project is None else project(xs_tm)
  masks = None if lengths is None else _masks(lengths, T)
  is_lstm, is_gru = isinstance(cell, LSTM), isinstance(cell, GRU)

  def body(carry, inp):
    s_t, m = inp
    pre = pre_fn(s_t, _h_of(cell, carry))
    if not residuals:
      new, y = _gates(cell, pre, carry, m)
      return new, (y, ())
    if not st.analytic:
      # Generic backward: it re-runs the gate math from the pre-activations
      # (and, for the LSTM, the cell state, rebuilt from the stored c_t).
      new, y = _gates(cell, pre, carry, m)
      res = (jnp.concatenate(pre, axis=-1),) + ((new.c,) if is_lstm else ())
      return new, (y, res)
    # Analytic backward: keep the activated gates (one [B, K*H] array, plus the
    # cell state for the LSTM) so that it needs no transcendental but tanh(c).
    ga = getattr(cell, "gate_activation", None)
    act = cell.activation
    if is_lstm:
      h, c = carry
      if _sigmoid_tanh(cell):
        a = _lstm_gates_one_pass(jnp.concatenate(pre, axis=-1), H)
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
      else:
        i, f, g, o = ga(pre[0]), ga(pre[1]), act(pre[2]), ga(pre[3])
      c_new = f * c + i * g
      h_new = o * act(c_new)
      new, y = _masked(m, LSTMCarry(h=h_new, c=c_new), carry, h_new)
      res = (jnp.concatenate([i, f, g, o], axis=-1), new.c)
    elif is_gru:
      h = carry
      r, z = ga(pre[0]), ga(pre[1])
      n = act(pre[2] + r * pre[3])
      h_new = (1 - z) * n + z * h
      new, y = _masked(m, h_new, h, h_new)
      res = (jnp.concatenate([r, z, n, pre[3]], axis=-1),)
    else:
      h = carry
      h_new = act(pre[0])
      new, y = _masked(m, h_new, h, h_new)
      res = ()
    return new, (y, res)

  final, (ys, res) = jax.lax.scan(body, carry0, (seq, masks), reverse=st.reverse,
                                  unroll=st.unroll)
  return final, ys, res


def _shift_prev(st: _Static, stack, first):
  """The value entering each step from a stack of the values leaving each step."""
  first = first.astype(stack.dtype)
  if not st.reverse:
    return jnp.concatenate([first[None], stack[:-1]], axis=0)
  return jnp.concatenate([stack[1:], first[None]], axis=0)


def _h_prev(st: _Static, ys, h0, lengths):
  """The recurrent input of every step, [T, B, H], rebuilt from the outputs.

  Only its values at valid steps matter (the gate gradients are zero at masked
  steps). Forward: step t reads y_{t-1} (h0 at t=0). Reverse: step t reads
  y_{t+1} when t+1 is a valid step of that sequence, else h0.
  """
  shifted = _shift_prev(st, ys, h0)
  if not st.reverse or lengths is None:
    return shifted
  T = ys.shape[0]
  nxt_valid = jnp.arange(1, T + 1, dtype=lengths.dtype)[:, None] < lengths[None, :]
  return jnp.where(nxt_valid[..., None], shifted, h0.astype(ys.dtype)[None])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _run(st, w_i, b, w_h, extra, xs_tm, carry0, lengths):
  final, ys, _ = _forward(st, w_i, b, w_h, extra, xs_tm, carry0, lengths, residuals=False)
  return final, ys


def _run_fwd(st, w_i, b, w_h, extra, xs_tm, carry0, lengths):
  final, ys, res = _forward(st, w_i, b, w_h, extra, xs_tm, carry0, lengths, residuals=True)
  return (final, ys), (w_i, b, w_h, extra, xs_tm, carry0, lengths, ys, res)


def _recurrent_wt(cell, w):
  """The [K*H, H] matrix mapping d(pre) to the gradient of h_{t-1} (through W_h).

  ``W_h^T``; for the GRU with a zero block for the x_n slot of ``pre``.
  """
  if isinstance(cell, GRU):
    H = cell.hidden_size
    return jnp.concatenate([w[:, :2 * H].T, jnp.zeros((H, H), w.dtype), w[:, 2 * H:].T], axis=0)
  return w.T


def _split_mask(m, d_h, dy):
  """Cotangent of the unmasked new h, and the part passed through masked steps."""
  if m is None:
    return d_h + dy, None
  m = m[:, None]
  zero = jnp.zeros_like(dy)
  return jnp.where(m, d_h + dy, zero), jnp.where(m, zero, d_h)


def _bwd_loop_generic(st, wt, ys, res, carry0, lengths, d_final, d_ys):
  """Reverse loop re-running the gate math under ``jax.vjp`` (any activation)."""
  cell = st.cell
  T = ys.shape[0]
  H = cell.hidden_size
  K = _num_pre(cell)
  is_lstm = isinstance(cell, LSTM)
  h_prev = _h_prev(st, ys, _h_of(cell, carry0), lengths)
  if is_lstm:
    pres, c_after = res
    carries_prev = LSTMCarry(h=h_prev, c=_shift_prev(st, c_after, carry0.c))
  else:
    (pres,) = res
    carries_prev = h_prev
  masks = None if lengths is None else _masks(lengths, T)

  def body(bc, inp):
    d_dot, d_carry = bc
    pre_t, cprev_t, m, dy_t = inp
    leaves, tdef = jax.tree_util.tree_flatten(d_carry)
    leaves[0] = leaves[0] + d_dot.astype(leaves[0].dtype)  # leaf 0 is h
    d_carry = jax.tree_util.tree_unflatten(tdef, leaves)
    pre_parts = tuple(pre_t[:, k * H:(k + 1) * H] for k in range(K))
    _, vjp = jax.vjp(lambda p_, c_: _gates(cell, p_, c_, m), pre_parts, cprev_t)
    d_pre, d_cprev = vjp((d_carry, dy_t))
    e = jnp.concatenate(d_pre, axis=-1)
    return (e @ wt, d_cprev), e

  h0 = _h_of(cell, carry0)
  init = (jnp.zeros(h0.shape, wt.dtype), d_final)
  (d_dot, d_carry0), e = jax.lax.scan(body, init, (pres, carries_prev, masks, d_ys),
                                      reverse=not st.reverse, unroll=st.unroll)
  leaves, tdef = jax.tree_util.tree_flatten(d_carry0)
  leaves[0] = leaves[0] + d_dot.astype(leaves[0].dtype)
  return e, h_prev, jax.tree_util.tree_unflatten(tdef, leaves)


def _bwd_loop_analytic(st, wt, ys, res, carry0, lengths, d_final, d_ys):
  """Reverse loop with the hand-written gate derivatives (known activations).

  Per step: one elementwise pass producing ``E_t = d(pre)_t`` (``[B, K*H]``)
  and the direct carry gradients, and one dot ``E_t W^T`` (see _recurrent_wt).
  """
  cell = st.cell
  T = ys.shape[0]
  H = cell.hidden_size
  is_lstm, is_gru = isinstance(cell, LSTM), isinstance(cell, GRU)
  h0 = _h_of(cell, carry0)
  h_prev = _h_prev(st, ys, h0, lengths)
  masks = None if lengths is None else _masks(lengths, T)
  dact = _known_deriv(cell.activation)
  dga = _known_deriv(cell.gate_activation) if hasattr(cell, "gate_activation") else None

  if is_lstm:
    acts, c_after = res
    c_prev = _shift_prev(st, c_after, carry0.c)

    def body(bc, inp):
      d_dot, d_c = bc
      a_t, c_t, cp_t, m, dy_t = inp
      dh, dh_pass = _split_mask(m, d_dot, dy_t)
      if m is None:
        dc_in, dc_pass = d_c, None
      else:
        dc_in = jnp.where(m[:, None], d_c, jnp.zeros_like(d_c))
        dc_pass = jnp.where(m[:, None], jnp.zeros_like(d_c), d_c)
      i, f, g, o = a_t[:, :H], a_t[:, H:2 * H], a_t[:, 2 * H:3 * H], a_t[:, 3 * H:]
      tc = cell.activation(c_t)
      dc = dc_in + dh * o * dact(tc)
      # E = [dc g i', dc c_prev f', dc i g', dh tanh(c) o'] as one product of
      # three [B, 4H] arrays (fewer fusions per step than four block products).
      mult = jnp.concatenate([dc, dc, dc, dh], axis=-1)
      partner = jnp.concatenate([g, cp_t, i, tc], axis=-1)
      e = mult * partner * jnp.where(_lstm_g_cols(H), dact(a_t), dga(a_t))
      dc_prev = dc * f if dc_pass is None else dc * f + dc_pass
      d_dot_new = e @ wt
      if dh_pass is not None:
        d_dot_new = d_dot_new + dh_pass
      return (d_dot_new, dc_prev), e

    # c_t at masked steps is the carried value; its gradient terms are masked out.
    (d_h0, d_c0), e = jax.lax.scan(body, (d_final.h, d_final.c), (acts, c_after, c_prev, masks, d_ys),
                                   reverse=not st.reverse, unroll=st.unroll)
    return e, h_prev, LSTMCarry(h=d_h0, c=d_c0)

  if is_gru:
    (acts,) = res

    def body(bc, inp):
      d_dot, d_direct = bc
      a_t, hp_t, m, dy_t = inp
      dh, dh_pass = _split_mask(m, d_dot + d_direct, dy_t)
      r, z, n, hn = a_t[:, :H], a_t[:, H:2 * H], a_t[:, 2 * H:3 * H], a_t[:, 3 * H:]
      dn = dh * (1 - z) * dact(n)
      e = jnp.concatenate([dn * hn * dga(r), dh * (hp_t - n) * dga(z), dn, dn * r], axis=-1)
      d_direct_new = dh * z if dh_pass is None else dh * z + dh_pass
      return (e @ wt, d_direct_new), e

    zero = jnp.zeros_like(d_final)
    (d_dot, d_direct), e = jax.lax.scan(body, (zero, d_final), (acts, h_prev, masks, d_ys),
                                        reverse=not st.reverse, unroll=st.unroll)
    return e, h_prev, d_dot + d_direct

  # SimpleRNN: y = h_new = act(pre).
  def body(d_dot, inp):
    y_t, m, dy_t = inp
    dh, dh_pass = _split_mask(m, d_dot, dy_t)
    e = dh * dact(y_t)
    d_prev = e @ wt
    if dh_pass is not None:
      d_prev = d_prev + dh_pass
    return d_prev, e

  d_h0, e = jax.lax.scan(body, d_final, (ys, masks, d_ys), reverse=not st.reverse,
                         unroll=st.unroll)
  return e, h_prev, d_h0


def _run_bwd(st, saved, cts):
  w_i, b, w_h, extra, xs_tm, carry0, lengths, ys, res = saved
  d_final, d_ys = cts
  cell = st.cell
  dt = cell.dtype
  T, B, I = xs_tm.shape
  H = cell.hidden_size
  wt = _recurrent_wt(cell, _cast(w_h, dt))
  loop = _bwd_loop_analytic if st.analytic else _bwd_loop_generic
  e, h_prev, d_carry0 = loop(st, wt, ys, res, carry0, lengths, d_final, d_ys)
  # Every parameter gradient as one large matmul over all T*B rows.
  # E = d(pre): the input side sees its first G*H columns, except that for the
  # GRU the input side is (a_r, a_z, x_n) and the hidden side (a_r, a_z, h_n).
  e2 = e.reshape(T * B, -1)
  if isinstance(cell, GRU):
    d_xp2 = e2[:, :3 * H]
    d_hp2 = jnp.concatenate([e2[:, :2 * H], e2[:, 3 * H:]], axis=1)
  else:
    d_xp2 = d_hp2 = e2
  x2 = _cast(xs_tm.reshape(T * B, I), dt)
  # The GRU's two sides see different columns of E. Otherwise, below H = 256,
  # one [I+H, T*B] x [T*B, G*H] matmul: these post-loop matmuls measured 20%
  # faster than two on XLA:CPU at the small and long presets (H=64); at H=256
  # and 512 the same in isolation and 4-5% slower end to end (within noise).
  if isinstance(cell, GRU) or H >= 256:
    hp2 = _cast(h_prev, dt).reshape(T * B, H)
    d_w_h = (hp2.T @ d_hp2).astype(w_h.dtype)
    d_w_i = (x2.T @ d_xp2).astype(w_i.dtype)
  else:
    xh2 = jnp.concatenate([_cast(xs_tm, dt), _cast(h_prev, dt)], axis=-1).reshape(T * B, I + H)
    d_w = xh2.T @ e2
    d_w_i, d_w_h = d_w[:I].astype(w_i.dtype), d_w[I:].astype(w_h.dtype)
  d_b = jnp.sum(d_xp2, axis=0).astype(b.dtype)
  d_x = (d_xp2 @ _cast(w_i, dt).T).reshape(T, B, I).astype(xs_tm.dtype)
  d_extra = None
  if extra is not None:  # GRU b_hn: enters with h_n
    d_extra = jnp.sum(e2[:, 3 * H:], axis=0).astype(extra.dtype)
  d_carry0 = jax.tree_util.tree_map(lambda d, c: d.astype(c.dtype), d_carry0, carry0)
  return d_w_i, d_b, d_w_h, d_extra, d_x, d_carry0, None


_run.defvjp(_run_fwd, _run_bwd)


def fused_scan(cell, params, xs_tm, carry, lengths, *, reverse: bool, unroll: int,
               projection: Optional[str] = None):
  """The fused scan on flattened time-major input.

  Args:
    cell: a cell with ``supports(cell)``.
    params: its params.
    xs_tm: ``[T, B, I]`` (B a single flattened batch dim).
    carry: the initial carry, leaves ``[B, S]``.
    lengths: ``None`` or int ``[B]``.
    reverse, unroll: as in :func:`rnnjax.scan`.
    projection: ``"inloop"``, ``"hoisted"`` or None (:func:`choose_projection`).

  Returns:
    ``(final_carry, ys [T, B, H])``.
  """
  T = xs_tm.shape[0]
  extra = None
  if isinstance(cell, GRU):
    extra = _cast(params["b_hn"], cell.dtype)
  if lengths is not None:
    lengths = jnp.clip(lengths, 0, T)
  if projection is None:
    projection = choose_projection(cell)
  if projection not in ("inloop", "hoisted"):
    raise ValueError(f"projection must be 'inloop' or 'hoisted', got {projection!r}.")
  st = _Static(cell, bool(reverse), int(unroll), _analytic(cell), projection)
  return _run(st, params["w_i"], params["b"], params["w_h"], extra, xs_tm, carry, lengths)
