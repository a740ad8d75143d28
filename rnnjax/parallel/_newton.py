r"""Parallel-in-time evaluation of any cell by Newton's method (DEER, ELK and their quasi forms).

A scan computes the states :math:`s_t = f_t(s_{t-1})` (``f_t`` the cell's step
with input ``x_t``, ``s`` its carry flattened to a vector of size ``D``) one
step after the other. Seen as a system of ``T * D`` equations
:math:`r_t(S) = s_t - f_t(s_{t-1}) = 0`, it can be solved for the whole
trajectory ``S`` at once. Newton's method linearises every step around the
current guess,

.. math::  s^{(i+1)}_t = J_t\, s^{(i+1)}_{t-1} + \big(f_t(s^{(i)}_{t-1}) - J_t s^{(i)}_{t-1}\big),
           \qquad J_t = \partial f_t / \partial s \,\big|_{s^{(i)}_{t-1}},

a *linear* recurrence, which an associative scan solves in ``O(log T)`` depth.
Each iteration fixes at least one more step exactly, so ``T`` iterations
always suffice; for a contracting system (largest Lyapunov exponent
:math:`\lambda < 0`) a handful do (Gonzalez et al. 2025).

Methods:

* ``"deer"`` (Lim et al., ICLR 2024): dense Jacobians ``[T, D, D]`` (by
  ``jax.jacfwd`` of the step), the scan composes affine maps by matrix
  products; quadratic convergence, ``O(T D^2)`` memory, ``O(T D^3)`` work.
* ``"quasi_deer"`` (Gonzalez et al., NeurIPS 2024): only the diagonal of
  ``J_t`` (``D`` JVPs of the step, evaluated one after the other so memory
  stays ``O(T D)``), an elementwise scan; more, cheaper iterations.
* ``"elk"`` (Gonzalez et al., NeurIPS 2024): the Levenberg-Marquardt
  (trust-region) form of DEER. Each iteration finds the MAP trajectory of the
  linear-Gaussian model

  .. math::  s_t = J_t s_{t-1} + u_t + \mathcal N(0, I), \qquad
             s^{(i)}_t = s_t + \mathcal N(0, \sigma^2 I)

  (:math:`u_t = f_t(s^{(i)}_{t-1}) - J_t s^{(i)}_{t-1}`), i.e. the minimiser of
  :math:`\sum_t |s_t - J_t s_{t-1} - u_t|^2 + |s_t - s^{(i)}_t|^2 / \sigma^2`
  (the linearised residual plus a proximal term), by the parallel
  (associative-scan) Kalman filter and RTS smoother of Särkkä &
  García-Fernández (2021) with dense ``D x D`` covariances
  (``rnnjax.parallel._linear_scan.kalman_smoother``): ``O(T D^3)`` work and
  ``O(T D^2)`` memory per iteration, like DEER. As ``sigma^2 -> inf`` the
  step becomes DEER's; as ``sigma^2 -> 0`` it stays put. ``sigma^2`` adapts
  as in Levenberg-Marquardt: times 10 after a step that lowers the squared
  residual :math:`\sum_t |s_t - f_t(s_{t-1})|^2`, divided by 10 and the step
  rejected otherwise (start 1, range [1e-4, 1e8]); a rejected step counts as
  an iteration.
* ``"quasi_elk"`` (Gonzalez et al., NeurIPS 2024, "quasi-ELK"): the same
  with the diagonal Jacobians of quasi-DEER and an elementwise Kalman
  smoother (``O(T D)`` memory).

Convergence is decided on the max-norm residual
:math:`\max_t |s_t - f_t(s_{t-1})|_\infty \le tol \cdot \max(1, \max|S|)`.
A result is never returned unconverged: when the solve stops without
converging (``max_iters`` reached, a non-finite iterate, or the Lyapunov
guard), the sequential scan (``rnnjax.scan``) computes the answer and a
``RuntimeWarning`` names the iterations and the residual. Called eagerly this
is decided on the concrete result after the jitted solve; under an outer
``jit``/``grad`` (traced inputs) the choice is a ``lax.cond`` in the graph
and the warning is raised at run time through ``jax.debug.callback``.
``info.fallback`` says which happened.

Lyapunov guard: from the Jacobians of each iteration the solver estimates
the largest Lyapunov exponent (per step, natural log): for ``"deer"`` and
``"elk"`` the mean log growth of a vector pushed through blocks of 32
consecutive ``J_t`` (renormalised every step, blocks in parallel); for the
diagonal methods ``max_i mean_t log|J_t[i, i]|`` (exact for a diagonal system). From
the third iteration on, an unconverged solve whose estimate exceeds
:data:`LYAPUNOV_THRESHOLD` (0: any positive exponent) stops, and a converged
one with such an estimate is not returned either: the sequential scan runs.
A chaotic system needs ``O(T)`` Newton iterations, and its converged Newton
trajectory differs from the sequential one by round-off amplified like
``exp(lambda t)`` (both measured in ``examples/parallel_study.py``). ``info.lyapunov`` reports the estimate at
the last iterate (at the solution when converged).

Gradients: a ``jax.custom_vjp`` at the solution. The adjoint
:math:`\bar s_t = g_t + J_{t+1}^\top \bar s_{t+1}` is one reverse associative
scan over the dense transposed Jacobians at the solution (for every method:
the gradient is exact, and needs ``O(T D^2)`` memory), then one vmapped VJP
of the step over all ``t`` gives the parameter, input and initial-carry
gradients. No differentiation through the iterations. Forward-mode autodiff
is not defined (use ``rnnjax.scan(..., impl="reference")``).

References: Lim, Zhu, Selfridge & Kasim, "Parallelizing non-linear sequential
models over the sequence length", ICLR 2024; Gonzalez, Warrington, Smith &
Linderman, "Towards scalable and stable parallelization of nonlinear RNNs",
NeurIPS 2024; Gonzalez et al., "Predictability enables parallelization of
nonlinear state space models", NeurIPS 2025.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax._scan import resolve_carry_and_lengths
from rnnjax._scan import scan as _sequential_scan
from rnnjax.parallel import _linear_scan as ls

METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")

LYAPUNOV_THRESHOLD = 0.0
"""Largest-Lyapunov-exponent estimate (per step) above which the sequential
scan runs instead of the Newton solve (measured: at lambda_1 = +0.03 to +0.04,
tanh RNNs with gain 1.5-2, DEER overflows, quasi-DEER needs ~T iterations, and
even a converged solve differs from the sequential scan by 1e-3 to 7e-3)."""

DEFAULT_MAX_ITERS = 100
_GUARD_FROM_ITER = 3
_LYAP_BLOCK = 32
_ELK_SIGMA2 = (1.0, 1e-4, 1e8)  # start, min, max of the observation variance


class NewtonInfo(NamedTuple):
  """What the solve did, one entry per sequence (shape ``[*B]``).

  Attributes:
    iterations: Newton iterations taken (int32).
    residual: max-norm of ``s_t - f_t(s_{t-1})`` at the last iterate.
    converged: whether the Newton solve met the tolerance (bool).
    lyapunov: the largest-Lyapunov-exponent estimate at the last iterate.
    fallback: whether the returned answer is the sequential scan's (bool;
      the whole batch falls back together).
  """
  iterations: jax.Array
  residual: jax.Array
  converged: jax.Array
  lyapunov: jax.Array
  fallback: jax.Array


# -- flat state --------------------------------------------------------------
def _flatten(carry):
  """Carry pytree with leaves ``[..., S_i]`` -> ``[..., D]``."""
  leaves = jax.tree_util.tree_leaves(carry)
  dt = jnp.result_type(*leaves)
  return jnp.concatenate([l.astype(dt) for l in leaves], axis=-1)


def _unflatten(flat, template):
  """Inverse of :func:`_flatten`; ``template`` leaves carry the sizes and dtypes."""
  leaves, treedef = jax.tree_util.tree_flatten(template)
  out, i = [], 0
  for l in leaves:
    n = l.shape[-1]
    out.append(flat[..., i:i + n].astype(l.dtype))
    i += n
  return jax.tree_util.tree_unflatten(treedef, out)


def _make_step(cell, params, template):
  """The masked flat step ``(s [D], x [I], valid) -> (s' [D], y [O])``."""
  def step(s, x, valid):
    c_new, y = cell(params, _unflatten(s, template), x)
    s_new = _flatten(c_new).astype(s.dtype)
    return jnp.where(valid, s_new, s), jnp.where(valid, y, jnp.zeros_like(y))
  return step


def _states_step(cell, template):
  return lambda p, s, x, v: _make_step(cell, p, template)(s, x, v)[0]


# -- one sequence ------------------------------------------------------------
def _prev(S, s0):
  return jnp.concatenate([s0[None], S[:-1]], axis=0)


def _dense_jac(f, P, xs, valid):
  """Values ``[T, D]`` and Jacobians ``[T, D, D]`` of ``f`` at every step."""
  g = lambda s, x, v: (f(s, x, v), f(s, x, v))
  J, fS = jax.vmap(jax.jacfwd(g, has_aux=True))(P, xs, valid)
  return fS, J


def _diag_jac(f, P, xs, valid):
  """Values ``[T, D]`` and Jacobian diagonals ``[T, D]``, in ``O(T D)`` memory."""
  fv = lambda P_: jax.vmap(f)(P_, xs, valid)
  fS, lin = jax.linearize(fv, P)
  D = P.shape[-1]

  def column(k):
    e = jnp.zeros((D,), P.dtype).at[k].set(1)
    return lin(jnp.broadcast_to(e, P.shape))[:, k]
  diag = jax.lax.map(column, jnp.arange(D), batch_size=min(D, 8))   # [D, T]
  return fS, diag.T


def _log_abs(x):
  tiny = jnp.finfo(x.dtype).tiny
  return jnp.log(jnp.maximum(jnp.abs(x), tiny))


def _lyapunov_diag(Jd, valid):
  n = jnp.maximum(jnp.sum(valid), 1).astype(Jd.dtype)
  per_dim = jnp.sum(jnp.where(valid[:, None], _log_abs(Jd), 0.0), axis=0) / n
  return jnp.max(per_dim)


def _lyapunov_dense(J, valid):
  """Mean log growth of a vector pushed through blocks of consecutive ``J_t``."""
  T, D, _ = J.shape
  K = min(_LYAP_BLOCK, T)
  nb = -(-T // K)
  pad = nb * K - T
  eye = jnp.broadcast_to(jnp.eye(D, dtype=J.dtype), (pad, D, D))
  Jb = jnp.concatenate([J, eye], 0).reshape(nb, K, D, D)
  vb = jnp.concatenate([valid, jnp.zeros((pad,), bool)]).reshape(nb, K)
  v0 = jnp.full((nb, D), 1 / math.sqrt(D), J.dtype)

  def body(v, inp):
    Jk, ok = inp                     # [nb, D, D], [nb]
    w = jnp.einsum("bij,bj->bi", Jk, v)
    nrm = jnp.linalg.norm(w, axis=-1)
    growth = jnp.where(ok, _log_abs(nrm), 0.0)
    v = jnp.where(ok[:, None], w / jnp.maximum(nrm, jnp.finfo(J.dtype).tiny)[:, None], v)
    return v, growth
  _, g = jax.lax.scan(body, v0, (jnp.swapaxes(Jb, 0, 1), vb.T))
  n = jnp.maximum(jnp.sum(valid), 1).astype(J.dtype)
  return jnp.sum(g) / n


class _Config(NamedTuple):
  method: str
  max_iters: int
  tol: float
  threshold: float


def _solve(cfg, f, xs, s0, valid, init):
  """Newton iterations for one sequence. Returns ``(S [T, D], stats)``."""
  method = cfg.method
  dense = method in ("deer", "elk")
  damped = method in ("elk", "quasi_elk")

  def evaluate(S):
    P = _prev(S, s0)
    fS, J = (_dense_jac if dense else _diag_jac)(f, P, xs, valid)
    res = jnp.max(jnp.abs(S - fS))
    merit = jnp.sum(jnp.square(S - fS))
    lyap = _lyapunov_dense(J, valid) if dense else _lyapunov_diag(J, valid)
    scale = jnp.maximum(1.0, jnp.max(jnp.abs(fS)))
    return P, fS, J, res, merit, lyap, scale

  def propose(S, P, fS, J, sigma2):
    if dense:
      u = fS - jnp.einsum("tij,tj->ti", J, P)
      if damped:
        return ls.kalman_smoother(J, u, S, s0, 1.0, sigma2)
      return ls.affine_scan(J, u, s0)
    u = fS - J * P
    if damped:
      return ls.diagonal_kalman_smoother(J, u, S, s0, 1.0, sigma2)
    return ls.diagonal_scan(J, u, s0)

  def done(res, scale):
    # Finite, and small: an overflowed iterate (inf scale) never counts as converged.
    return (res <= cfg.tol * scale) & jnp.isfinite(res) & jnp.isfinite(scale)

  ev0 = evaluate(init)
  sig0, sig_min, sig_max = _ELK_SIGMA2
  state0 = (jnp.int32(0), init, ev0, jnp.asarray(sig0, s0.dtype))

  def cond(st):
    it, S, (P, fS, J, res, merit, lyap, scale), sigma2 = st
    stop = done(res, scale) | ~jnp.isfinite(res) | (it >= cfg.max_iters)
    chaotic = (it >= _GUARD_FROM_ITER) & (lyap > cfg.threshold)
    return ~(stop | chaotic)

  def body(st):
    it, S, ev, sigma2 = st
    P, fS, J, res, merit, lyap, scale = ev
    S_new = propose(S, P, fS, J, sigma2)
    ev_new = evaluate(S_new)
    if not damped:
      return it + 1, S_new, ev_new, sigma2
    better = ev_new[4] < merit
    sigma2 = jnp.where(better, jnp.minimum(sigma2 * 10, sig_max),
                       jnp.maximum(sigma2 / 10, sig_min))
    S_keep = jnp.where(better, S_new, S)
    ev_keep = jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), ev_new, ev)
    return it + 1, S_keep, ev_keep, sigma2

  it, S, ev, _ = jax.lax.while_loop(cond, body, state0)
  res, lyap, scale = ev[3], ev[5], ev[6]
  converged = done(res, scale) & jnp.all(jnp.isfinite(S))
  return S, (it, res, converged, lyap)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fixed_point(cfg, cell, template, params, xs, s0, valid, init):
  f = _make_step(cell, params, template)
  f = (lambda f_: lambda s, x, v: f_(s, x, v)[0])(f)
  return _solve(cfg, f, xs, s0, valid, init)


def _fixed_point_fwd(cfg, cell, template, params, xs, s0, valid, init):
  S, stats = _fixed_point(cfg, cell, template, params, xs, s0, valid, init)
  return (S, stats), (params, xs, s0, valid, S)


def _fixed_point_bwd(cfg, cell, template, res, ct):
  params, xs, s0, valid, S = res
  gS = ct[0]
  F = _states_step(cell, template)
  P = _prev(S, s0)
  f = lambda s, x, v: F(params, s, x, v)
  _, J = _dense_jac(f, P, xs, valid)
  # Adjoint: lam_t = g_t + J_{t+1}^T lam_{t+1}, lam_{T-1} = g_{T-1}.
  A = jnp.concatenate([jnp.swapaxes(J[1:], -1, -2), jnp.zeros_like(J[:1])], 0)
  lam = ls.affine_scan(A, gS, jnp.zeros_like(s0), reverse=True)
  _, vjp = jax.vjp(lambda p, X, P_: jax.vmap(F, (None, 0, 0, 0))(p, P_, X, valid),
                   params, xs, P)
  gp, gx, gP = vjp(lam)
  return gp, gx, gP[0], None, None


_fixed_point.defvjp(_fixed_point_fwd, _fixed_point_bwd)


# -- batched driver ------------------------------------------------------------
def _one_sequence(cfg, cell, template, params, xs, s0, valid, init):
  """Solve, then outputs. ``xs [T, I]`` in processing order."""
  S, (it, res, conv, lyap) = _fixed_point(cfg, cell, template, params, xs, s0, valid, init)
  P = _prev(S, s0)
  step = _make_step(cell, params, template)
  ys = jax.vmap(step)(P, xs, valid)[1]
  return S[-1], ys, (it, res, conv, lyap)


@functools.partial(jax.jit, static_argnames=("cell", "cfg", "reverse", "in_graph_fallback"))
def _run(cell, cfg, reverse, in_graph_fallback, params, xs, carry, lengths, init):
  """``xs [N, T, I]``, ``carry`` leaves ``[N, S]``, ``lengths [N]`` or None, ``init [N, T, D]``."""
  N, T = xs.shape[:2]
  template = jax.tree_util.tree_map(
      lambda c: jax.ShapeDtypeStruct(c.shape[-1:], c.dtype), carry)
  s0 = _flatten(carry)
  if lengths is None:
    valid = jnp.ones((N, T), bool)
  else:
    valid = jnp.arange(T)[None, :] < lengths[:, None]
    # Padding influences nothing (as in rnnjax.scan): zero it before any arithmetic.
    xs = jnp.where(valid[..., None], xs, jnp.zeros_like(xs))
  xs_p, valid_p, init_p = xs, valid, init
  if reverse:
    xs_p, valid_p, init_p = xs[:, ::-1], valid[:, ::-1], init[:, ::-1]
  one = functools.partial(_one_sequence, cfg, cell, template)
  final, ys, (it, res, conv, lyap) = jax.vmap(one, (None, 0, 0, 0, 0))(
      params, xs_p, s0, valid_p, init_p)
  if reverse:
    ys = ys[:, ::-1]
  final = _unflatten(final, template)
  info = NewtonInfo(it, res, conv, lyap, jnp.zeros((N,), bool))
  if not in_graph_fallback:
    return final, ys, info

  all_ok = jnp.sum(jax.lax.stop_gradient(_accepted(conv, lyap, cfg.threshold)).astype(jnp.int32)) == N

  def newton():
    return final, ys, info

  def sequential():
    jax.debug.callback(_warn_callback, it, res, lyap, conv, cfg.threshold, cfg.method)
    fc, fy = _sequential_scan(cell, params, xs, carry, lengths=lengths, reverse=reverse)
    return fc, fy, info._replace(fallback=jnp.ones((N,), bool))
  return jax.lax.cond(all_ok, newton, sequential)


def _accepted(conv, lyap, threshold):
  """A Newton answer is returned only when converged and not chaotic.

  With a positive exponent a small residual does not make the trajectory the
  sequential scan's: round-off differences grow like ``exp(lambda t)``
  (measured in examples/parallel_study.py: residual 2e-6, outputs 7e-3 apart).
  """
  return conv & ~(lyap > threshold)


def _warn_message(it, res, lyap, conv, threshold, method):
  it, res, lyap, conv = (np.asarray(a) for a in (it, res, lyap, conv))
  bad = ~_accepted(conv, lyap, threshold)
  guard = bad & (lyap > threshold)
  msg = (f"rnnjax.parallel.newton_scan(method={method!r}) did not converge, or is chaotic, for "
         f"{int(bad.sum())} of {bad.size} sequence(s) (iterations {it[bad].tolist()}, "
         f"residual {res[bad].tolist()}); ")
  if (bad & ~np.isfinite(res)).any():
    msg += "a non-finite iterate (the linearised recurrence overflowed: unstable dynamics); "
  if guard.any():
    msg += (f"Lyapunov exponent estimate {float(lyap[bad].max()):.3g} > {threshold} "
            "(chaotic: Newton needs O(T) iterations); ")
  return msg + "falling back to the sequential scan."


def _warn_callback(it, res, lyap, conv, threshold, method):
  warnings.warn(_warn_message(it, res, lyap, conv, threshold, method), RuntimeWarning,
                stacklevel=2)


def _is_traced(*trees):
  return any(isinstance(l, jax.core.Tracer) for t in trees
             for l in jax.tree_util.tree_leaves(t))


# -- public ------------------------------------------------------------------
def _check_method(method):
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


def _check_max_iters(max_iters, T):
  if max_iters is None:
    return min(DEFAULT_MAX_ITERS, max(T, 1))
  if isinstance(max_iters, bool) or not isinstance(max_iters, (int, np.integer)):
    raise TypeError(f"max_iters must be a positive int or None, got {max_iters!r}.")
  if max_iters < 1:
    raise ValueError(f"max_iters must be a positive int (>= 1) or None, got {max_iters}.")
  return int(max_iters)


def _check_tol(tol, dtype):
  if tol is None:
    return float(20 * jnp.finfo(dtype).eps)
  try:
    t = float(tol)
  except (TypeError, ValueError):
    raise TypeError(f"tol must be a positive float or None, got {tol!r}.") from None
  if not (math.isfinite(t) and t > 0):
    raise ValueError(f"tol must be a positive finite float or None, got {tol!r}.")
  return t


def newton_scan(cell, params, xs, carry=None, *, lengths=None, reverse=False,
                method="deer", max_iters=None, tol=None, init=None):
  """Runs ``cell`` over ``xs`` by a parallel-in-time Newton solve (see module doc).

  Same semantics as ``rnnjax.scan(cell, params, xs, carry, lengths=lengths,
  reverse=reverse)``: ``xs`` ``[*B, T, I]``; steps ``t >= lengths[b]`` leave
  the carry unchanged and output zeros; ``reverse=True`` reads each sequence
  backwards within its own length; ``ys[t]`` is the output after ``xs[t]``.

  Args:
    cell: any rnnjax cell (used only through ``cell(params, carry, x)`` and
      ``initial_carry``), including a :class:`rnnjax.Stack`.
    params: the cell's parameters.
    xs: ``[*B, T, I]``.
    carry: initial carry (default zeros, in the params' dtype).
    lengths: optional int ``[*B]``.
    reverse: read the sequences backwards.
    method: ``"deer"``, ``"quasi_deer"``, ``"elk"`` or ``"quasi_elk"``.
    max_iters: Newton iterations at most (default ``min(T, 100)``).
    tol: convergence when ``max |s_t - f_t(s_{t-1})| <= tol * max(1, max|s|)``
      (default ``20 * eps`` of the state dtype: about ``2.4e-6`` in float32).
    init: optional guess of the state trajectory, the carry after every step
      (a pytree like ``carry`` with leaves ``[*B, T, S]``, in the time order
      of ``xs``); default: the initial carry at every step.

  Returns:
    ``(final_carry, ys, info)``; ``ys`` ``[*B, T, O]``, ``info`` a
    :class:`NewtonInfo` with fields of shape ``[*B]``.

  Tolerance: converged results equal the sequential scan's to float32
  round-off (tested: within ``2e-5`` absolute plus ``2e-5`` relative for
  the library's cells at unit-scale states).
  """
  _check_method(method)
  if not isinstance(reverse, (bool, np.bool_)):
    raise TypeError(f"reverse must be a bool, got {reverse!r}.")
  if not hasattr(xs, "ndim"):
    raise TypeError(f"xs must be an array, got {type(xs).__name__}.")
  if xs.ndim < 2:
    raise ValueError(f"xs must have rank >= 2 ([T, I] or [*batch, T, I]), got shape {xs.shape}.")
  if not jnp.issubdtype(xs.dtype, jnp.floating):
    raise TypeError(f"xs must be a floating array, got dtype {xs.dtype}.")
  if hasattr(cell, "check_input"):
    cell.check_input(params, xs, argname="xs")
  batch_shape, T = tuple(xs.shape[:-2]), xs.shape[-2]
  if T < 1:
    raise ValueError(f"xs must have at least one time step, got shape {xs.shape}.")
  carry, lengths = resolve_carry_and_lengths(cell, params, batch_shape, T, carry, lengths)
  max_iters = _check_max_iters(max_iters, T)
  state_dtype = jnp.result_type(*jax.tree_util.tree_leaves(carry))
  tol = _check_tol(tol, state_dtype)

  N = math.prod(batch_shape)
  xs_f = xs.reshape((N, T, xs.shape[-1]))
  carry_f = jax.tree_util.tree_map(lambda c: c.reshape((N, c.shape[-1])), carry)
  len_f = None if lengths is None else jnp.reshape(jnp.asarray(lengths), (N,))
  if init is None:
    init_f = jnp.broadcast_to(_flatten(carry_f)[:, None, :], (N, T, _flatten(carry_f).shape[-1]))
  else:
    init_f = _check_init(init, carry, batch_shape, T)
    init_f = _flatten(init_f).reshape((N, T, -1)).astype(state_dtype)

  cfg = _Config(method, max_iters, tol, LYAPUNOV_THRESHOLD)
  traced = _is_traced(params, xs, carry, lengths, init)
  final, ys, info = _run(cell, cfg, bool(reverse), traced, params, xs_f, carry_f, len_f, init_f)
  if not traced and not bool(np.all(np.asarray(
      _accepted(info.converged, info.lyapunov, cfg.threshold)))):
    warnings.warn(_warn_message(info.iterations, info.residual, info.lyapunov,
                                info.converged, cfg.threshold, method),
                  RuntimeWarning, stacklevel=2)
    final, ys = _sequential_scan(cell, params, xs_f, carry_f, lengths=len_f, reverse=reverse)
    info = info._replace(fallback=jnp.ones((N,), bool))
  ys = ys.reshape(batch_shape + (T, ys.shape[-1]))
  final = jax.tree_util.tree_map(lambda c: c.reshape(batch_shape + c.shape[-1:]), final)
  info = NewtonInfo(*(jnp.reshape(a, batch_shape) for a in info))
  return final, ys, info


def _check_init(init, carry, batch_shape, T):
  s_init = jax.tree_util.tree_structure(init)
  s_carry = jax.tree_util.tree_structure(carry)
  if s_init != s_carry:
    raise TypeError(f"init has structure {s_init}, expected {s_carry} (that of the carry, "
                    "with leaves [*batch, T, state]).")
  for i, (a, c) in enumerate(zip(jax.tree_util.tree_leaves(init),
                                 jax.tree_util.tree_leaves(carry))):
    want = tuple(batch_shape) + (T, c.shape[-1])
    if tuple(jnp.shape(a)) != want:
      raise ValueError(f"init leaf {i} has shape {tuple(jnp.shape(a))}, expected {want} "
                       "([*batch, T, state]: the carry after every step).")
    if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
      raise TypeError(f"init leaf {i} has dtype {jnp.result_type(a)}, expected floating.")
  return jax.tree_util.tree_map(
      lambda a: jnp.reshape(a, (math.prod(batch_shape), T, a.shape[-1])), init)
