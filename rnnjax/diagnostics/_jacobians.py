"""Per-step state Jacobians, norms of their products over lags, adjoint norms.

Notation (see :mod:`rnnjax.diagnostics`): ``s_i`` is the flattened carry after
step ``i``, ``J_t = ds_t/ds_{t-1}`` (``[D, D]``, row = output component),
``E`` selects the chosen leaf's rows (``[D, d]``) and, for a sequence whose
last valid state is ``s_{L-1}``,

.. math::  A_i = E^T J_{L-1} J_{L-2} \\cdots J_{i+1} E, \\qquad A_{L-1} = I_d.

``jacobian_norms`` returns ``||A_i||`` for every ``i``; ``adjoint_norms``
returns ``||E^T dL/ds_i||``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._activations import NamedFn
from rnnjax.diagnostics import _core as core

_METHODS = ("exact", "power", "hutchinson")
_ORDS = (2, -2, 1, -1, np.inf, -np.inf, "fro", "nuc")


# ---------------------------------------------------------------------------
# step_jacobians


@core.jit(static_argnames=("cell", "leaf"))
def _step_jacobians_impl(cell, params, xs, carry, lengths, leaf):
  prep = core.Prepared(xs.shape[:-2], xs.shape[-2], carry, lengths,
                       jax.eval_shape(lambda: cell.initial_carry(())), leaf)
  step = core.make_flat_step(cell, params, prep.template)
  a, b = leaf.start, leaf.stop

  def seq(xs1, c0, length):
    s0 = core.flatten(c0)
    s_in = core.forward_states(step, s0, xs1, length)
    ts = jnp.arange(xs1.shape[0])
    jac = jax.vmap(lambda s, x, t: jax.jacfwd(lambda u: step(u, x, t, length))(s))(s_in, xs1, ts)
    return core.mask_past_length(jac[:, a:b, a:b], length)
  return core.per_sequence(seq, prep, xs)


def step_jacobians(cell: Any, params: Any, xs: jax.Array, carry: Any = None, *,
                   lengths: Optional[jax.Array] = None,
                   leaf: Union[None, int, str] = None) -> jax.Array:
  """Exact per-step state Jacobians ``J_i = dh_i/dh_{i-1}``.

  Dense: memory ``O(T D^2)`` and ``D`` JVPs per step, so meant for small
  state sizes ``D`` (a few hundred); use :func:`jacobian_norms` with
  ``method="power"`` or ``"hutchinson"`` for large ``D``.

  Args:
    cell: any rnnjax cell (or :class:`rnnjax.Stack`, or your own cell with
      ``initial_carry`` and ``cell(params, carry, x)``).
    params: the cell's parameters.
    xs: ``[T, I]`` or ``[*B, T, I]``.
    carry: the initial carry ``h_{-1}`` (default zeros).
    lengths: optional int ``[*B]``; entries ``i >= lengths`` are NaN.
    leaf: None (all carry leaves flattened together, ``D = sum S_j``), or one
      leaf by index or name (``"h"``/``"c"`` for an LSTM): the ``[d, d]``
      diagonal block of ``J_i``.

  Returns:
    ``[*B, T, d, d]``; ``out[..., i, r, c] = d h_i[r] / d h_{i-1}[c]``.
  """
  prep = core.prepare(cell, params, xs, carry, lengths, leaf)
  return _step_jacobians_impl(cell, params, xs, prep.carry, prep.lengths, prep.leaf)


# ---------------------------------------------------------------------------
# jacobian_norms: the three methods, each for one sequence


def matrix_norm(m, ord):
  """``jnp.linalg.norm(m, ord)`` (ord=2: the largest singular value, LAPACK gesdd)."""
  return jnp.linalg.norm(m, ord=ord)


def exact_backward(step, s_in, xs, length, *, leaf, ord, extra=None):
  """Backward accumulation of the leaf rows ``R_i = E^T J_{T-1} ... J_{i+1}``.

  ``R`` is kept as ``R~ exp(ls)`` with ``max|R~| = 1`` (log-space
  renormalisation), and ``log||A_i|| = ls_i + log||R~_i E||``.

  ``extra`` (``[m, D]``, optional) are cotangents ``g`` at the last state
  propagated alongside (each with its own scale): for a loss that reads only
  the last state, ``g = dL/dh_{T-1}`` gives ``||E^T dL/dh_i||``.

  Returns:
    ``log||A_i||`` ``[T]`` (and ``[T, m]`` log norms of the extra rows).
  """
  a, b = leaf.start, leaf.stop
  T, D = s_in.shape
  dtype = s_in.dtype
  r0 = jnp.eye(D, dtype=dtype)[a:b]
  ts = jnp.arange(T)
  m = 0 if extra is None else extra.shape[0]

  def body(c, inp):
    r, ls, g, gls = c
    s_prev, x, t = inp
    out = ls + core.safe_log(matrix_norm(r[:, a:b], ord))
    gout = gls + core.safe_log(jnp.linalg.norm(g[:, a:b], axis=-1))
    out, r, g = core.serialize(out, r, g)
    _, vjp = jax.vjp(lambda s: step(s, x, t, length), s_prev)
    rows = jax.vmap(lambda row: vjp(row)[0])(jnp.concatenate([r, g], axis=0))
    r, ls = core.renormalise(rows[:b - a], ls)
    g, gls = core.renormalise(rows[b - a:], gls, axis_rows=1)
    return (r, ls, g, gls), (out, gout)
  g0 = jnp.zeros((0, D), dtype) if extra is None else extra.astype(dtype)
  init = (r0, jnp.zeros((), dtype), g0, jnp.zeros((m,), dtype))
  _, (logn, logg) = jax.lax.scan(body, init, (s_in, xs, ts), reverse=True)
  return logn, logg


def _exact_seq(step, s0, xs, length, noise, *, leaf, ord):
  del noise
  s_in = core.forward_states(step, s0, xs, length)
  return exact_backward(step, s_in, xs, length, leaf=leaf, ord=ord)[0]


def _hutchinson_seq(step, s0, xs, length, noise, *, leaf, num_probes):
  """One backward VJP sweep of ``m`` Rademacher probes ``u`` gives every lag:

  ``||A_i||_F^2 = E_u ||u^T A_i||^2`` and ``u^T A_i`` is the running cotangent.
  """
  a, b = leaf.start, leaf.stop
  s_in = core.forward_states(step, s0, xs, length)
  T, D = s_in.shape
  g0 = jnp.zeros((num_probes, D), s0.dtype).at[:, a:b].set(noise)
  ts = jnp.arange(T)

  def body(c, inp):
    g, ls = c
    s_prev, x, t = inp
    sq = 2.0 * (ls + core.safe_log(jnp.linalg.norm(g[:, a:b], axis=-1)))
    out = 0.5 * (jax.nn.logsumexp(sq) - jnp.log(jnp.asarray(num_probes, s0.dtype)))
    _, vjp = jax.vjp(lambda s: step(s, x, t, length), s_prev)
    g = jax.vmap(lambda row: vjp(row)[0])(g)
    g, ls = core.renormalise(g, ls, axis_rows=1)
    return (g, ls), out
  init = (g0, jnp.zeros((num_probes,), s0.dtype))
  _, logn = jax.lax.scan(body, init, (s_in, xs, ts), reverse=True)
  return logn


def _orth_rows(m, fallback):
  """Orthonormal rows spanning the rows of ``m [k, d]`` (``fallback`` where m == 0)."""
  q, _ = jnp.linalg.qr(m.T)
  ok = jnp.any(m != 0)
  return jnp.where(ok, q.T, fallback)


def _log_smax(m):
  return core.safe_log(matrix_norm(m, 2))


def _power_seq(step, s0, xs, length, noise, *, leaf, num_probes, num_iters):
  """Block power iteration on every ``A_i`` at once, matrix-free.

  One lane per lag ``i`` holds ``k`` vectors (rows ``[T, k, D]``, each lane
  with its own log-scale). A backward sweep applies ``J_t^T`` (VJP) to the
  lanes with ``i < t`` and yields ``Z_i = A_i^T U_i``; a forward sweep applies
  ``J_t`` (JVP) to the lanes with ``i < t`` and yields ``W_i = A_i V_i`` with
  ``V_i = orth(Z_i)``; ``U_i = orth(W_i)``. The estimate ``sigma_max(W_i)``
  (for orthonormal ``V_i``) is a lower bound that converges to ``||A_i||_2``
  like ``(sigma_{k+1}/sigma_1)^{2n}``. Memory ``O(T k D)``, work
  ``O(n T^2 k)`` step VJPs/JVPs.
  """
  a, b = leaf.start, leaf.stop
  d = b - a
  k = num_probes
  s_in = core.forward_states(step, s0, xs, length)
  T, D = s_in.shape
  ts = jnp.arange(T)
  lanes = jnp.arange(T)
  dtype = s0.dtype
  u0 = jax.vmap(lambda m: _orth_rows(m, jnp.eye(k, d, dtype=dtype)))(noise)
  eye_kd = jnp.eye(k, d, dtype=dtype)

  def embed(m):
    return jnp.zeros(m.shape[:-1] + (D,), dtype).at[..., a:b].set(m)

  def sweep(block, reverse):
    ls0 = jnp.zeros((T,), dtype)

    def body(c, inp):
      g, ls = c
      s_prev, x, t = inp
      f = lambda s: step(s, x, t, length)
      rows = g.reshape(T * k, D)
      if reverse:
        _, vjp = jax.vjp(f, s_prev)
        new = jax.vmap(lambda r: vjp(r)[0])(rows)
      else:
        _, jvp = jax.linearize(f, s_prev)
        new = jax.vmap(jvp)(rows)
      new, nls = core.renormalise(new.reshape(T, k, D), ls, axis_rows=1)
      active = (lanes < t)[:, None, None]
      g = jnp.where(active, new, g)
      ls = jnp.where(lanes < t, nls, ls)
      return (g, ls), None
    (g, ls), _ = jax.lax.scan(body, (block, ls0), (s_in, xs, ts), reverse=reverse)
    return g[..., a:b], ls

  def iteration(_, c):
    u, _ = c
    z, _ = sweep(embed(u), reverse=True)
    v = jax.vmap(_orth_rows, in_axes=(0, None))(z, eye_kd)
    w, ls = sweep(embed(v), reverse=False)
    logsig = ls + jax.vmap(_log_smax)(w)
    logsig, w = core.serialize(logsig, w)
    u = jax.vmap(lambda m, f: _orth_rows(m, f))(w, u)
    return u, logsig
  _, logsig = jax.lax.fori_loop(0, num_iters, iteration, (u0, jnp.zeros((T,), dtype)))
  return logsig


@core.jit(static_argnames=("cell", "leaf", "method", "ord", "log",
                                             "num_probes", "num_iters"))
def _jacobian_norms_impl(cell, params, xs, carry, lengths, key, *, leaf, method, ord, log,
                         num_probes, num_iters):
  prep = core.Prepared(xs.shape[:-2], xs.shape[-2], carry, lengths,
                       jax.eval_shape(lambda: cell.initial_carry(())), leaf)
  step = core.make_flat_step(cell, params, prep.template)
  n = core.num_sequences(xs)
  d = leaf.stop - leaf.start
  dtype = core.state_dtype(carry)
  if method == "exact":
    fn = functools.partial(_exact_seq, leaf=leaf, ord=ord)
    noise = jnp.zeros((n,), dtype)
  elif method == "hutchinson":
    fn = functools.partial(_hutchinson_seq, leaf=leaf, num_probes=num_probes)
    noise = core.random_rademacher(key, (n, num_probes, d), dtype)
  else:
    fn = functools.partial(_power_seq, leaf=leaf, num_probes=num_probes, num_iters=num_iters)
    noise = core.random_normal(key, (n, xs.shape[-2], num_probes, d), dtype)

  def seq(xs1, c0, length, noise1):
    logn = fn(step, core.flatten(c0), xs1, length, noise1)
    return core.mask_past_length(logn, length)
  logn = core.per_sequence(seq, prep, xs, noise)
  return logn if log else jnp.exp(logn)


def jacobian_norms(cell: Any, params: Any, xs: jax.Array, carry: Any = None, *,
                   ord: Union[int, str] = 2, method: str = "exact", log: bool = False,
                   lengths: Optional[jax.Array] = None, leaf: Union[None, int, str] = None,
                   num_probes: Optional[int] = None, num_iters: int = 20,
                   key: Optional[jax.Array] = None) -> jax.Array:
  """Norms of the Jacobian products ``||dh_{T-1}/dh_i||`` for every ``i``.

  Entry ``i`` is ``||A_i||`` with ``A_i = J_{T-1} ... J_{i+1}`` (``J_t =
  dh_t/dh_{t-1}``), so the last entry is ``||I||`` (1 for ``ord=2``), and for a
  linear RNN ``h_i = W h_{i-1} + U x_i`` entry ``i`` is ``||W^(T-1-i)||``. With
  ``lengths`` the last state of sequence ``b`` is ``h_{L_b-1}`` and entries
  ``i >= L_b`` are NaN.

  Methods:
    * ``"exact"``: backward accumulation of ``E^T J_{T-1} ... J_{i+1}`` with
      ``d`` VJPs per step (``d`` = state size of the leaf), renormalised in log
      space (``R = R~ exp(ls)``, ``max|R~| = 1``) so that it neither
      underflows nor overflows over thousands of steps. Any matrix ``ord`` of
      ``jnp.linalg.norm``. Memory ``O(T D + d D)``.
    * ``"power"``: spectral norm (``ord=2`` only) by block power iteration
      on ``A_i^T A_i`` for every lag at once, with ``jax.vjp``/``jax.jvp`` of
      the step (matrix-free); a lower bound that converges geometrically.
      Memory ``O(T k D)``; work ``O(num_iters T^2 k)`` step products, so it
      pays off when ``D`` is much larger than ``T``.
    * ``"hutchinson"``: Frobenius norm (``ord="fro"`` only), unbiased for
      ``||A_i||_F^2`` from ``m`` Rademacher probes: one backward VJP sweep
      from the last step yields every lag at once. Relative standard
      deviation of the squared norm ``<= sqrt(2/m)``. Memory ``O(T + m D)``.

  Args:
    cell, params, xs, carry: as :func:`step_jacobians`.
    ord: matrix norm order (2: spectral, ``"fro"``: Frobenius, ...).
    method: ``"exact"``, ``"power"`` or ``"hutchinson"``.
    log: return ``log||A_i||`` (natural log). Exact where the norm itself
      under- or overflows the dtype.
    lengths: optional int ``[*B]``.
    leaf: restrict rows and columns to one carry leaf (index or name).
    num_probes: ``k`` (power; default 4, at most ``d``) or ``m`` (hutchinson;
      default 64).
    num_iters: power iterations (default 20). Against ``"exact"`` (tested):
      tanh RNN and LSTM, T=20, k=4, 20 iterations: ``|log error| < 1e-4``
      (measured 1e-6); with k=2 the LSTM needed 40 (error 2e-3 at 20).
    key: PRNG key for the random start vectors / probes (default key 0).

  Returns:
    ``[*B, T]`` (``[T]`` for unbatched ``xs``).
  """
  check_method_ord(method, ord)
  if not isinstance(log, (bool, np.bool_)):
    raise TypeError(f"log must be a bool, got {log!r}.")
  if num_probes is None:
    num_probes = 4 if method == "power" else 64
  core.check_positive(num_probes, "num_probes")
  core.check_positive(num_iters, "num_iters")
  prep = core.prepare(cell, params, xs, carry, lengths, leaf)
  if method == "power":
    num_probes = min(num_probes, prep.leaf.stop - prep.leaf.start)
  key = core.check_key(key)
  return _jacobian_norms_impl(cell, params, xs, prep.carry, prep.lengths, key,
                              leaf=prep.leaf, method=method, ord=ord, log=bool(log),
                              num_probes=int(num_probes), num_iters=int(num_iters))


def check_method_ord(method, ord):
  core.check_choice(method, _METHODS, "method")
  if isinstance(ord, (bool, np.bool_)) or not isinstance(ord, (int, float, str, np.number)) \
      or ord not in _ORDS:
    raise ValueError(f"ord must be a matrix norm order, one of {_ORDS}, got {ord!r}.")
  if method == "power" and ord != 2:
    raise ValueError(f"method='power' estimates the spectral norm; it needs ord=2, got "
                     f"ord={ord!r}.")
  if method == "hutchinson" and ord != "fro":
    raise ValueError(f"method='hutchinson' estimates the Frobenius norm; pass ord='fro' "
                     f"(got ord={ord!r}).")


# ---------------------------------------------------------------------------
# adjoint_norms


def _find_output_leaf(new_carry, y):
  for j, leaf in enumerate(jax.tree_util.tree_leaves(new_carry)):
    if leaf is y:
      return j
  return None


@core.jit(static_argnames=("loss_fn", "cell"))
def _adjoint_impl(loss_fn, cell, params, xs, carry, lengths):
  """Squared norms ``||dL/dh_i^{(j)}||^2`` per carry leaf j: ``[*B, T, n_leaves]``.

  (Per leaf, so that every ``leaf=`` choice shares one compiled program.)
  """
  batch_shape, T = xs.shape[:-2], xs.shape[-2]
  nb = len(batch_shape)
  bsize = math.prod(batch_shape) if nb else None
  lead = (bsize,) if nb else ()
  xs_tm = xs.reshape(lead + xs.shape[-2:])
  if nb:
    xs_tm = jnp.swapaxes(xs_tm, 0, 1)
  c0 = jax.tree_util.tree_map(lambda c: c.reshape(lead + c.shape[nb:]), carry)
  flat_len = None if lengths is None else jnp.reshape(lengths, lead)
  eps0 = jax.tree_util.tree_map(lambda c: jnp.zeros((T,) + c.shape, c.dtype), c0)
  ts = jnp.arange(T)

  def unroll(eps):
    def body(c, inp):
      x, e, t = inp
      new, y = cell(params, c, x)
      j = _find_output_leaf(new, y)
      if flat_len is not None:
        mask = t < flat_len
        new = jax.tree_util.tree_map(
            lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - mask.ndim)), n, o),
            new, c)
        ymask = mask.reshape(mask.shape + (1,) * (y.ndim - mask.ndim))
        y = jnp.where(ymask, y, jnp.zeros_like(y))
      new = jax.tree_util.tree_map(jnp.add, new, e)
      if j is not None:
        ej = jax.tree_util.tree_leaves(e)[j]
        y = y + (ej if flat_len is None else jnp.where(ymask, ej, jnp.zeros_like(ej)))
      return new, y
    final, ys = jax.lax.scan(body, c0, (xs_tm, eps, ts))
    if nb:
      ys = jnp.swapaxes(ys, 0, 1)
    ys = ys.reshape(batch_shape + (T,) + ys.shape[-1:])
    final = jax.tree_util.tree_map(lambda c: c.reshape(batch_shape + c.shape[-1:]), final)
    loss = loss_fn.fn(ys, final)
    if jnp.shape(loss) != ():
      raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}.")
    return loss

  grads = jax.grad(unroll)(eps0)
  sq = jnp.stack([jnp.sum(jnp.square(l), axis=-1) for l in jax.tree_util.tree_leaves(grads)],
                 axis=-1)                         # [T, *lead, n_leaves]
  if nb:
    sq = jnp.swapaxes(sq, 0, 1).reshape(batch_shape + (T, sq.shape[-1]))
  if lengths is not None:
    sq = jnp.where((ts < lengths[..., None])[..., None], sq, jnp.nan)
  return sq


def adjoint_norms(loss_fn: Callable[[jax.Array, Any], jax.Array], cell: Any, params: Any,
                  xs: jax.Array, carry: Any = None, *, lengths: Optional[jax.Array] = None,
                  leaf: Union[None, int, str] = None) -> jax.Array:
  """``||dL/dh_i||`` for every step ``i``, in one backward pass.

  A zero perturbation ``e_i`` is added to the carry after every step
  (``h_i <- h_i + e_i``) inside the scan, and ``dL/de_i = dL/dh_i`` is the
  total derivative through every later step and the final carry. When the
  step returns one of its carry leaves as its output (every rnnjax cell and
  :class:`rnnjax.Stack` do: ``y_i = h_i``), that output is perturbed too, so a
  loss on ``ys`` sees ``h_i`` directly; other outputs are differentiated
  through the carry only.

  Args:
    loss_fn: ``loss_fn(ys, final_carry) -> scalar`` with ``ys [*B, T, O]``
      (zeros past ``lengths``, as :func:`rnnjax.scan`) and the final carry
      (leaves ``[*B, S]``). A batched loss couples the sequences only through
      its sum, so entry ``[b, i]`` is the gradient w.r.t. sequence b's state.
      The compiled program is cached by the function's *value* (bytecode,
      constants, closure and the globals it reads): a fresh but identical
      lambda does not recompile; a lambda closing over a different array does.
    cell, params, xs, carry: as :func:`step_jacobians`.
    lengths: optional int ``[*B]``; entries ``i >= L_b`` are NaN.
    leaf: restrict the norm to one carry leaf (index or name).

  Returns:
    ``[*B, T]`` Euclidean norms (``[T]`` for unbatched ``xs``).
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be a callable loss_fn(ys, final_carry) -> scalar, got "
                    f"{type(loss_fn).__name__}.")
  prep = core.prepare(cell, params, xs, carry, lengths, leaf)
  # Keyed by value: a fresh but identical lambda reuses the compiled program.
  loss_key = loss_fn if isinstance(loss_fn, NamedFn) else NamedFn(
      getattr(loss_fn, "__name__", "loss_fn"), loss_fn)
  sq = _adjoint_impl(loss_key, cell, params, xs, prep.carry, prep.lengths)
  if prep.leaf.index is not None:
    return jnp.sqrt(sq[..., prep.leaf.index])
  return jnp.sqrt(jnp.sum(sq, axis=-1))
