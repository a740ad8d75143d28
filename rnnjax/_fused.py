"""The fused scan: a generic custom-VJP engine for every cell of the protocol.

:func:`rnnjax.scan` dispatches here (``impl="auto"`` or ``"fused"``). The
engine knows a cell only through the protocol of ``rnnjax/_cells.py``
(``fused_params``, ``pre_blocks``/``x_blocks``/``h_blocks``,
``recurrent_input``, ``gates``, optionally ``custom_gates_vjp``); the result is
the same function as the reference scan (values and gradients, tested in
``tests/test_fastpath.py``), computed with less work per time step.

Forward (``T`` steps, time-major, batch flattened to ``B``; ``pre`` are the K
pre-activation blocks, each ``[B, H]``; ``r`` is ``cell.recurrent_input``)::

  "inloop":  pre_t = [x_t, r(c_{t-1})] @ [W_x'; W_h'] + b          one dot per step
             (W_x', W_h' are W_x, W_h scattered into the K blocks)
  "hoisted": XP_k = X W_x[:, k] + b_k, one matmul per input block before the loop
             pre_t = XP_t + r(c_{t-1}) W_h                          one dot per step
  (c_t, y_t) = gates(gp, pre_t, c_{t-1}), masked by lengths          elementwise

Backward: a ``jax.custom_vjp``. The reverse loop does per step one
elementwise pass emitting ``E_t = d pre_t`` (the cell's hand-written
:class:`~rnnjax._cells.GatesVJP` where it has one, else ``jax.vjp`` of
``gates`` from the stored ``pre``) and one dot ``E_t W_h'^T`` for the
gradient of ``r(c_{t-1})``; all weight and input gradients are single large
matmuls after the loop::

  [dW_x; dW_h] = [X, R_prev]^T E      db = sum(E)      dX = E_x W_x^T

(one combined matmul when every block is on both sides and
``H < XH_COMBINED_MAX_HIDDEN``), with ``R_prev`` (the recurrent input of each
step) rebuilt from the stored outputs and carries rather than stored twice.
The gradients of ``gp`` (parameters the gate math reads) are summed in the
loop. A plain ``lax.scan`` under ``jax.grad`` instead does a weight-gradient
dot and accumulation in every step.

On XLA:CPU every fusion and dot in the loop body is one thunk with ~1 us of
overhead at small shapes, so the loop bodies are written to need few fusions
(benchmarks/RESULTS.md has the measurements).

Forward-mode autodiff (``jax.jvp``/``jacfwd``) is not defined for a
``custom_vjp``; use ``rnnjax.scan(..., impl="reference")`` for it.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from rnnjax import _layout
from rnnjax._cells import FusedParams, RNNCell, _block_cols, _cast, _cast_tree

# Below this hidden size the post-loop weight gradients are one
# [I+S, T*B] x [T*B, K*H] matmul (measured 20% faster on XLA:CPU at H=64);
# from it on, two (4-5% faster at H=256 and 512).
XH_COMBINED_MAX_HIDDEN = 255


def supports(cell) -> bool:
  """Whether the fused path can run ``cell``: a protocol cell whose step is the derived one.

  Any :class:`~rnnjax.RNNCell` that implements ``gates`` and does not
  override ``recurrent_step`` or ``input_projection`` (the engine would not
  see such an override).
  """
  if not isinstance(cell, RNNCell):
    return False
  t = type(cell)
  return (t.gates is not RNNCell.gates and t.recurrent_step is RNNCell.recurrent_step
          and t.input_projection is RNNCell.input_projection)


def choose_projection(cell, backend: Optional[str] = None) -> str:
  """The projection placement the fused path uses: ``"inloop"`` or ``"hoisted"``.

  On CPU ``"inloop"`` (one ``[x_t, r] @ [W_x'; W_h']`` matmul per step, no
  hoisted ``[T, B, K*H]`` array; measured fastest forward for the SimpleRNN
  and the LSTM) when every pre-activation block is written by both sides;
  ``"hoisted"`` when the in-loop weight would carry zero blocks (the GRU's
  ``x_n``/``h_n``; measured 0.77-0.92x of the in-loop time forward) or the
  cell has no recurrent matmul. Elsewhere (GPU, TPU): ``"hoisted"``.
  """
  backend = backend or jax.default_backend()
  if backend != "cpu":
    return "hoisted"
  xb, hb = cell.input_blocks, cell.recurrent_blocks
  return "inloop" if hb and xb == hb == tuple(range(cell.num_pre_blocks)) else "hoisted"


class _Static(NamedTuple):
  cell: Any
  reverse: bool
  unroll: int
  hand: bool       # use cell.custom_gates_vjp()
  projection: str  # "inloop" | "hoisted"


def _scatter_cols(w, blocks, K, H):
  """``[R, len(blocks)*H]`` -> ``[R, K*H]`` with zero blocks elsewhere (no-op for all blocks)."""
  if tuple(blocks) == tuple(range(K)):
    return w
  zero = jnp.zeros((w.shape[0], H), w.dtype)
  parts = [w[:, blocks.index(k) * H:(blocks.index(k) + 1) * H] if k in blocks else zero
           for k in range(K)]
  return jnp.concatenate(parts, axis=1)


def _recurrent_weight_t(cell, w_h, K, H):
  """``[K*H, S]``: maps ``d pre`` to the gradient of ``r(c_{t-1})`` (zero rows off ``h_blocks``)."""
  return _scatter_cols(w_h, cell.recurrent_blocks, K, H).T


def _pre_fn(st: _Static, fp: FusedParams):
  """(per-step sequence input, step function (seq_t, carry) -> pre) for the chosen projection."""
  cell = st.cell
  dt = cell.dtype
  H, K = cell.hidden_size, cell.num_pre_blocks
  xb = cell.input_blocks
  hb = cell.recurrent_blocks if fp.w_h is not None else ()

  if st.projection == "inloop":
    w_cat = _scatter_cols(fp.w_x, xb, K, H)
    if hb:
      w_cat = jnp.concatenate([w_cat, _scatter_cols(fp.w_h, hb, K, H)], axis=0)

    def pre(x_t, carry):
      inp = _cast(x_t, dt)
      if hb:
        inp = jnp.concatenate([inp, _cast(cell.recurrent_input(carry), dt)], axis=-1)
      z = inp @ w_cat + fp.b
      return tuple(z[:, k * H:(k + 1) * H] for k in range(K))
    return None, pre

  # Hoisted: one [T*B, I] x [I, H] matmul per input block before the loop, so
  # that the loop reads one [T, B, H] array per block (slicing a hoisted
  # [T, B, K*H] array per block inside the loop compiled to slow code on XLA:CPU).
  def project(xs_tm):
    T, B, I = xs_tm.shape
    x2 = _cast(xs_tm.reshape(T * B, I), dt)
    return tuple((x2 @ fp.w_x[:, j * H:(j + 1) * H] + fp.b[k * H:(k + 1) * H]).reshape(T, B, H)
                 for j, k in enumerate(xb))

  def pre(xp_t, carry):
    hp = _cast(cell.recurrent_input(carry), dt) @ fp.w_h if hb else None
    out = []
    for k in range(K):
      part = xp_t[xb.index(k)] if k in xb else None
      if k in hb:
        j = hb.index(k)
        part = hp[:, j * H:(j + 1) * H] if part is None else part + hp[:, j * H:(j + 1) * H]
      if k not in xb:
        bk = fp.b[k * H:(k + 1) * H]
        part = jnp.broadcast_to(bk, (xp_t[0].shape[0], H)) if part is None else part + bk
      out.append(part)
    return tuple(out)
  return project, pre


def _masked(mask, new_carry, old_carry, y):
  if mask is None:
    return new_carry, y
  return _layout.tree_where(mask, new_carry, old_carry), jnp.where(mask[:, None], y, jnp.zeros_like(y))


def _forward(st: _Static, fp: FusedParams, xs_tm, carry0, lengths, *, residuals: bool):
  """The forward loop. With ``residuals``: also the per-step residuals and ``stored``,
  per carry leaf the stacked leaf, or None where the leaf is the output ``y``."""
  cell = st.cell
  T = xs_tm.shape[0]
  fpc = _cast_tree(fp, cell.dtype)
  project, pre_fn = _pre_fn(st, fpc)
  seq = xs_tm if project is None else project(xs_tm)
  masks = None if lengths is None else _layout.step_masks(lengths, T)
  rule = cell.custom_gates_vjp() if st.hand else None
  def body(carry, inp):
    s_t, m = inp
    pre = pre_fn(s_t, carry)
    if rule is not None and residuals:
      new, y, res = rule.fwd(fpc.gp, pre, carry)
    else:
      new, y, _ = cell.gates(fpc.gp, pre, carry)
      res = (jnp.concatenate(pre, axis=-1),) if residuals else ()
    new_m, y_m = _masked(m, new, carry, y)
    if not residuals:
      return new_m, (y_m, (), ())
    # A carry leaf that is the output itself is not stored twice (rebuilt from ys).
    stored = tuple(None if leaf is y else lm for leaf, lm in
                   zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(new_m)))
    return new_m, (y_m, res, stored)

  final, (ys, res, stored) = jax.lax.scan(body, carry0, (seq, masks), reverse=st.reverse,
                                          unroll=st.unroll)
  return final, ys, res, stored


def _shift_prev(reverse, stack, first):
  """The value entering each step from a stack of the values leaving each step."""
  first = first.astype(stack.dtype)
  if not reverse:
    return jnp.concatenate([first[None], stack[:-1]], axis=0)
  return jnp.concatenate([stack[1:], first[None]], axis=0)


def _carries_prev(st: _Static, carry_after, carry0, lengths):
  """The carry entering every step, leaves ``[T, B, S]``, from the carries after every step.

  Only its values at valid steps matter (the gate gradients are zero at masked
  steps). Forward: step t reads the carry after t-1 (``carry0`` at t=0).
  Reverse: step t reads the carry after t+1 when t+1 is a valid step of that
  sequence, else ``carry0``.
  """
  shifted = jax.tree_util.tree_map(lambda s, c: _shift_prev(st.reverse, s, c), carry_after, carry0)
  if not st.reverse or lengths is None:
    return shifted
  T = jax.tree_util.tree_leaves(carry_after)[0].shape[0]
  nxt_valid = jnp.arange(1, T + 1, dtype=lengths.dtype)[:, None] < lengths[None, :]
  return jax.tree_util.tree_map(
      lambda s, c: jnp.where(nxt_valid[..., None], s, c.astype(s.dtype)[None]), shifted, carry0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _run(st, fp, xs_tm, carry0, lengths):
  final, ys, _, _ = _forward(st, fp, xs_tm, carry0, lengths, residuals=False)
  return final, ys


def _run_fwd(st, fp, xs_tm, carry0, lengths):
  final, ys, res, stored = _forward(st, fp, xs_tm, carry0, lengths, residuals=True)
  return (final, ys), (fp, xs_tm, carry0, lengths, ys, res, stored)


def _add(a, b):
  return b if a is None else a if b is None else a + b


def _run_bwd(st, saved, cts):
  fp, xs_tm, carry0, lengths, ys, res, stored = saved
  d_final, d_ys = cts
  cell = st.cell
  dt = cell.dtype
  T, B, I = xs_tm.shape
  H, K = cell.hidden_size, cell.num_pre_blocks
  xb = cell.input_blocks
  hb = cell.recurrent_blocks if fp.w_h is not None else ()
  fpc = _cast_tree(fp, dt)
  rule = cell.custom_gates_vjp() if st.hand else None

  # The carry after every step: the output where a leaf is the output, else stored.
  tdef = jax.tree_util.tree_structure(carry0)
  carry_after = jax.tree_util.tree_unflatten(tdef, [ys if s is None else s for s in stored])
  carry_prev = _carries_prev(st, carry_after, carry0, lengths)
  masks = None if lengths is None else _layout.step_masks(lengths, T)
  wt = _recurrent_weight_t(cell, fpc.w_h, K, H) if hb else None
  gp_zero = jax.tree_util.tree_map(jnp.zeros_like, fpc.gp)

  def body(bc, inp):
    d_carry, d_gp_acc = bc
    res_t, cprev_t, cnew_t, y_t, m, dy_t = inp
    if m is None:
      d_in, d_pass, dy_v = d_carry, None, dy_t
    else:
      mm = m[:, None]
      d_in = jax.tree_util.tree_map(lambda d: jnp.where(mm, d, jnp.zeros_like(d)), d_carry)
      d_pass = jax.tree_util.tree_map(lambda d: jnp.where(mm, jnp.zeros_like(d), d), d_carry)
      dy_v = jnp.where(mm, dy_t, jnp.zeros_like(dy_t))
    if rule is not None:
      e, d_direct, d_gp = rule.bwd(fpc.gp, res_t, cprev_t, cnew_t, y_t, d_in, dy_v)
    else:
      pre_t = tuple(res_t[0][:, k * H:(k + 1) * H] for k in range(K))
      _, vjp = jax.vjp(lambda g, p, c: cell.gates(g, p, c)[:2], fpc.gp, pre_t, cprev_t)
      d_gp, d_pre, d_direct = vjp((d_in, dy_v))
      e = jnp.concatenate(d_pre, axis=-1)
    if hb:
      r_t, rin_vjp = jax.vjp(lambda c: _cast(cell.recurrent_input(c), dt), cprev_t)
      (d_rin,) = rin_vjp((e @ wt).astype(r_t.dtype))
    else:
      d_rin = None
    # d_prev = d_direct + d_rin + d_pass, leaf by leaf (None stands for zero).
    d_prev = jax.tree_util.tree_map(
        lambda c, a, b, p: _add(_add(a, b), p).astype(c.dtype)
        if _add(_add(a, b), p) is not None else jnp.zeros_like(c),
        cprev_t, _or_none(d_direct, tdef), _or_none(d_rin, tdef), _or_none(d_pass, tdef),
        is_leaf=lambda x: x is None)
    if d_gp is not None:
      d_gp_acc = jax.tree_util.tree_map(jnp.add, d_gp_acc, d_gp)
    return (d_prev, d_gp_acc), e

  (d_carry0, d_gp), e = jax.lax.scan(
      body, (d_final, gp_zero), (res, carry_prev, carry_after, ys, masks, d_ys),
      reverse=not st.reverse, unroll=st.unroll)

  # Every weight gradient as one large matmul over all T*B rows.
  e2 = e.reshape(T * B, K * H)
  e_x = _block_cols(e2, xb, H)
  x2 = _cast(xs_tm.reshape(T * B, I), dt)
  d_w_h = None
  if hb:
    rprev = _cast(cell.recurrent_input(carry_prev), dt)
    S = rprev.shape[-1]
    rp2 = rprev.reshape(T * B, S)
    if xb == hb == tuple(range(K)) and H <= XH_COMBINED_MAX_HIDDEN:
      d_w = jnp.concatenate([x2, rp2], axis=-1).T @ e2
      d_w_x, d_w_h = d_w[:I], d_w[I:]
    else:
      d_w_x = x2.T @ e_x
      d_w_h = rp2.T @ _block_cols(e2, hb, H)
    d_w_h = d_w_h.astype(fp.w_h.dtype)
  else:
    d_w_x = x2.T @ e_x
  d_fp = FusedParams(
      w_x=d_w_x.astype(fp.w_x.dtype), w_h=d_w_h, b=jnp.sum(e2, axis=0).astype(fp.b.dtype),
      gp=jax.tree_util.tree_map(lambda d, g: d.astype(g.dtype), d_gp, fp.gp))
  d_x = (e_x @ fpc.w_x.T).reshape(T, B, I).astype(xs_tm.dtype)
  d_carry0 = jax.tree_util.tree_map(lambda d, c: d.astype(c.dtype), d_carry0, carry0)
  return d_fp, d_x, d_carry0, None


def _or_none(tree, tdef):
  """A carry-shaped tree, or a tree of Nones when ``tree`` is None."""
  if tree is None:
    return jax.tree_util.tree_unflatten(tdef, [None] * tdef.num_leaves)
  return tree


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
    ``(final_carry, ys [T, B, O])``.
  """
  T = xs_tm.shape[0]
  if lengths is not None:
    lengths = jnp.clip(lengths, 0, T)
  if projection is None:
    projection = choose_projection(cell)
  if projection not in ("inloop", "hoisted"):
    raise ValueError(f"projection must be 'inloop' or 'hoisted', got {projection!r}.")
  st = _Static(cell, bool(reverse), int(unroll), cell.custom_gates_vjp() is not None, projection)
  return _run(st, cell.fused_params(params), xs_tm, carry, lengths)
