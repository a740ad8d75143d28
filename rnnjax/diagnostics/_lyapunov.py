"""Lyapunov exponents of the driven state map by QR re-orthonormalisation (Benettin).

For the flattened state map ``s_t = F_t(s_{t-1})`` with Jacobians ``J_t``, start
from a random ``Q_{-1}`` (``[D, k]``, orthonormal columns) and for every step
``t``:

.. math::  J_t Q_{t-1} = Q_t R_t, \\qquad \\operatorname{diag}(R_t) > 0,

then ``lambda_j = (1/N) sum_{t=warmup}^{L-1} log R_t[j, j]`` with
``N = L - warmup`` (natural log, per step). ``J_t Q`` is ``k`` JVPs of the
step; no dense Jacobian is formed. For a time-invariant linear map
``h_t = W h_{t-1}`` this converges to ``log|eig(W)|`` sorted descending (with
error ``O(1/N)``).

The exponents are differentiable with respect to the params and the inputs
(reverse mode through the scan, the JVPs and the QR steps, whose backward
pass is one ``k x k`` triangular solve per step: :func:`qr_positive`), which
is what gradient flossing needs (:mod:`rnnjax.train._flossing`). For the
linear map, ``d lambda_j / dW = v_j u_j^T / (mu_j v_j^T u_j)`` (right and left
eigenvectors ``u_j``, ``v_j`` of eigenvalue ``mu_j``), reached with error
``O(1/N)``; the sum of all ``D`` exponents is ``log|det W|`` at every ``N``.

References: Benettin, Galgani, Giorgilli & Strelcyn, Meccanica 15 (1980);
Engelken, "Gradient Flossing", NeurIPS 2023 (arXiv:2312.17306) for the
differentiated exponents.
"""

from __future__ import annotations

from typing import Any, Optional


import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.diagnostics import _core as core


def forward_pass(step, s0, xs, length, noise, *, k, warmup, observe=None):
  """One forward sweep: the states, the Lyapunov exponents and optional per-step stats.

  Args:
    step: the masked flat step ``F(s, x, t, length)``.
    s0: the initial flat state ``[D]``.
    xs: ``[T, I]``; length: scalar or None.
    noise: ``[D, k]`` Gaussian start for ``Q_{-1}``.
    observe: optional ``observe(s_prev, x, t) -> pytree`` recorded per step.

  Returns:
    ``(s_in [T, D], exponents [k] sorted descending, observed [T, ...] or None)``
    where ``s_in[t] = s_{t-1}``.
  """
  T = xs.shape[0]
  dtype = s0.dtype
  q0, _ = jnp.linalg.qr(noise)
  ts = jnp.arange(T)
  end = T if length is None else jnp.minimum(length, T)

  def body(c, inp):
    s, q, acc = c
    x, t = inp
    f = lambda u: step(u, x, t, length)
    s_new, jvp = jax.linearize(f, s)
    z = jax.vmap(jvp, in_axes=1, out_axes=1)(q)       # J_t Q  [D, k]
    obs = None if observe is None else observe(s, x, t)
    s_new, z, obs = core.serialize(s_new, z, obs)
    q_new, rdiag = qr_positive(z)
    logr = core.safe_log(rdiag)
    use = (t >= warmup) & (t < end)
    acc = acc + jnp.where(use, logr, 0.0)
    return (s_new, q_new, acc), (s, obs)
  (_, _, acc), (s_in, obs) = jax.lax.scan(body, (s0, q0, jnp.zeros((k,), dtype)), (xs, ts))
  n = end - warmup
  lam = jnp.where(n > 0, acc / jnp.maximum(n, 1).astype(dtype), jnp.nan)
  return s_in, -jnp.sort(-lam), obs


def _qr_positive_fwd(z):
  q, r = jnp.linalg.qr(z)
  sign = jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(z.dtype)
  q = q * sign[None, :]
  r = r * sign[:, None]
  return (q, jnp.diagonal(r)), (q, r)


def _qr_positive_bwd(res, cts):
  # Reverse mode of the reduced QR A = Q R (m >= n, diag R > 0), with only
  # diag(R) read (Walter & Lehmann 2018; Seeger et al. 2017):
  #   M = R Rbar^T - Qbar^T Q,  Abar = (Qbar + Q copyltu(M)) R^{-T},
  # copyltu(M) = tril(M) + tril(M, -1)^T, Rbar = diag(dbar).
  q, r = res
  q_bar, d_bar = cts
  m = r * d_bar[None, :] - q_bar.T @ q          # R diag(dbar) = R Rbar^T (Rbar diagonal)
  m = jnp.tril(m) + jnp.tril(m, -1).T
  x = q_bar + q @ m
  x, r = core.serialize(x, r)                   # one LAPACK call at a time (see core.serialize)
  a_bar = jax.scipy.linalg.solve_triangular(r, x.T, lower=False).T
  return (a_bar,)


@jax.custom_vjp
def qr_positive(z):
  """``(Q, diag R)`` of the reduced QR ``z = Q R`` (``z [D, k]``, ``k <= D``) with ``diag R > 0``.

  Differentiable in reverse mode (the backward pass is one ``k x k``
  triangular solve, kept behind :func:`rnnjax.diagnostics._core.serialize`
  like the forward QR); ``diag R`` must be nonzero (full column rank).
  """
  return _qr_positive_fwd(z)[0]


qr_positive.defvjp(_qr_positive_fwd, _qr_positive_bwd)


@core.jit(static_argnames=("cell", "k", "warmup"))
def _lyapunov_impl(cell, params, xs, carry, lengths, key, *, k, warmup):
  template = jax.eval_shape(lambda: cell.initial_carry(()))
  prep = core.Prepared(xs.shape[:-2], xs.shape[-2], carry, lengths, template,
                       core.resolve_leaf(template, None))
  step = core.make_flat_step(cell, params, template)

  D = prep.leaf.size
  dtype = core.state_dtype(carry)
  noise = core.random_normal(key, (core.num_sequences(xs), D, k), dtype)

  def seq(xs1, c0, length, noise1):
    return forward_pass(step, core.flatten(c0), xs1, length, noise1, k=k, warmup=warmup)[1]
  return core.per_sequence(seq, prep, xs, noise)


def lyapunov_exponents(cell: Any, params: Any, xs: jax.Array, carry: Any = None, *,
                       k: Optional[int] = None, warmup: int = 0,
                       lengths: Optional[jax.Array] = None,
                       key: Optional[jax.Array] = None) -> jax.Array:
  """The ``k`` largest Lyapunov exponents of the driven state map.

  QR re-orthonormalisation (Benettin et al. 1980) of ``k`` tangent vectors
  pushed through the step with ``jax.jvp`` (equations in the module doc of
  :mod:`rnnjax.diagnostics._lyapunov` / :mod:`rnnjax.diagnostics`). The state is the
  full carry (all leaves flattened, ``D = sum S_j``): the map acts on all of
  it. A negative largest exponent means perturbations of the state shrink
  like ``exp(lambda_1 t)`` along the trajectory (vanishing gradients); a
  positive one means they grow (exploding gradients, chaos).

  Args:
    cell, params, xs, carry: as :func:`rnnjax.diagnostics.step_jacobians`.
    k: how many exponents (default: all ``D``; at most ``D``).
    warmup: leading steps whose ``R_t`` are not averaged (the tangent basis
      aligns with the dominant directions during them).
    lengths: optional int ``[*B]``: sequence ``b`` averages steps
      ``warmup <= t < L_b``; NaN if there are none.
    key: PRNG key for the random initial basis (default key 0).

  Returns:
    ``[*B, k]`` exponents per step (natural log), sorted descending
    (``[k]`` for unbatched ``xs``). Differentiable (``jax.grad``) with respect
    to ``params``, ``xs`` and ``carry``; memory ``O(T D k)`` in reverse mode.
  """
  prep = core.prepare(cell, params, xs, carry, lengths, None)
  D = prep.leaf.size
  if k is None:
    k = D
  core.check_positive(k, "k")
  if k > D:
    raise ValueError(f"k must be <= the state size D={D}, got k={k}.")
  if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
    raise ValueError(f"warmup must be a non-negative int, got {warmup!r}.")
  if warmup >= prep.T:
    raise ValueError(f"warmup={warmup} leaves no steps to average (T={prep.T}).")
  key = core.check_key(key)
  return _lyapunov_impl(cell, params, xs, prep.carry, prep.lengths, key, k=int(k),
                        warmup=int(warmup))
