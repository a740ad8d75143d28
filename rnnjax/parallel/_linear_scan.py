"""Parallel (associative-scan) solvers for linear recurrences.

Every routine here works on one sequence in processing order, time on the
leading axis, and runs in ``O(log T)`` depth with ``jax.lax.associative_scan``.

* :func:`affine_scan` -- ``h_t = A_t h_{t-1} + b_t`` with dense ``A_t``
  ``[T, D, D]`` (the element ``(A, b)`` composes as
  ``(A_2, b_2) o (A_1, b_1) = (A_2 A_1, A_2 b_1 + b_2)``).
* :func:`diagonal_scan` -- the same with diagonal ``a_t`` ``[T, *D]``
  (elementwise products; real or complex).
* :func:`log_space_scan` -- ``h_t = a_t h_{t-1} + b_t`` with ``a_t, b_t > 0``
  given as logs: ``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)``, the
  log-space form of Feng et al. (2024), combined with ``logaddexp`` (a
  ``logcumsumexp``-style scan).
* :func:`diagonal_kalman_smoother` -- the MAP trajectory of an elementwise
  linear-Gaussian model, by the parallel filter and smoother of Särkkä &
  García-Fernández (2021); used by quasi-ELK.
* :func:`kalman_smoother` -- the same with dense ``F_t`` ``[T, D, D]`` and
  ``D x D`` covariances; used by ELK.

Reference: Blelloch, "Prefix sums and their applications" (1990); Särkkä &
García-Fernández, "Temporal parallelization of Bayesian smoothers", IEEE TAC
66(1), 2021.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def affine_scan(A, b, h0, *, reverse=False):
  """``h_t = A_t h_{t-1} + b_t`` for all t; ``A`` ``[T, D, D]``, ``b`` ``[T, D]``, ``h0`` ``[D]``.

  With ``reverse=True`` the recursion runs backwards,
  ``h_t = A_t h_{t+1} + b_t`` with ``h_{T} = h0``. Returns ``h`` ``[T, D]``.
  """
  A, b, h0 = jnp.asarray(A), jnp.asarray(b), jnp.asarray(h0)
  b = b.at[-1 if reverse else 0].add(A[-1 if reverse else 0] @ h0)

  def combine(e1, e2):
    # e1 earlier in the recursion, e2 later: e2 o e1.
    A1, b1 = e1
    A2, b2 = e2
    return A2 @ A1, jnp.einsum("...ij,...j->...i", A2, b1) + b2

  # With reverse=True, associative_scan calls fn(later_in_time, earlier_in_time),
  # and later in time is earlier in the backward recursion: same combine.
  _, h = jax.lax.associative_scan(combine, (A, b), reverse=reverse)
  return h


def diagonal_scan(a, b, h0, *, reverse=False):
  """``h_t = a_t * h_{t-1} + b_t`` elementwise; ``a``, ``b`` ``[T, ...]``, ``h0`` ``[...]``.

  ``reverse=True``: ``h_t = a_t * h_{t+1} + b_t`` with ``h_T = h0``.
  """
  a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
  i = -1 if reverse else 0
  b = b.at[i].add(a[i] * h0)

  def combine(e1, e2):
    a1, b1 = e1
    a2, b2 = e2
    return a2 * a1, a2 * b1 + b2

  _, h = jax.lax.associative_scan(combine, (a, b), reverse=reverse)
  return h


def log_space_scan(log_a, log_b, log_h0):
  """``h_t = a_t h_{t-1} + b_t`` for positive ``a, b, h0`` given as logs; returns ``log h``.

  ``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)``, composed as
  ``(la2 + la1, logaddexp(la2 + lb1, lb2))`` so no product of many ``a_t``
  under- or overflows. Shapes as :func:`diagonal_scan` (time on axis 0).
  """
  log_a, log_b = jnp.asarray(log_a), jnp.asarray(log_b)
  log_b = log_b.at[0].set(jnp.logaddexp(log_a[0] + log_h0, log_b[0]))

  def combine(e1, e2):
    la1, lb1 = e1
    la2, lb2 = e2
    return la1 + la2, jnp.logaddexp(la2 + lb1, lb2)

  _, log_h = jax.lax.associative_scan(combine, (log_a, log_b))
  return log_h


def diagonal_kalman_smoother(F, u, y, m0, q, r):
  """Smoothed means of ``x_t = F_t x_{t-1} + u_t + N(0, q)``, ``y_t = x_t + N(0, r)``.

  Elementwise (diagonal) model, ``x_{-1} = m0`` known exactly. ``F``, ``u``,
  ``y``: ``[T, D]``; ``m0``: ``[D]``; ``q``, ``r``: positive scalars (or
  broadcastable). Both passes are associative scans (Särkkä &
  García-Fernández 2021, eqs. 14-17 and 22-24, with ``H = I``).

  Returns the smoothed means ``[T, D]`` -- the minimiser of
  ``sum_t |x_t - F_t x_{t-1} - u_t|^2 / q + |x_t - y_t|^2 / r``.
  """
  F, u, y, m0 = (jnp.asarray(v) for v in (F, u, y, m0))
  T = F.shape[0]
  q = jnp.broadcast_to(jnp.asarray(q, F.dtype), F.shape)
  r = jnp.broadcast_to(jnp.asarray(r, F.dtype), F.shape)
  # Filtering elements (A, b, C, eta, J).
  S = q + r
  K = q / S
  A = (1 - K) * F
  b = u + K * (y - u)
  C = (1 - K) * q
  eta = F * (y - u) / S
  J = F * F / S
  # First element: prior mean m1- = F_0 m0 + u_0, variance q (m0 is exact).
  m1 = F[0] * m0 + u[0]
  K1 = K[0]
  A = A.at[0].set(0.0)
  b = b.at[0].set(m1 + K1 * (y[0] - m1))
  C = C.at[0].set(q[0] - K1 * S[0] * K1)
  eta = eta.at[0].set(0.0)
  J = J.at[0].set(0.0)

  def f_combine(ei, ej):
    Ai, bi, Ci, ei_, Ji = ei
    Aj, bj, Cj, ej_, Jj = ej
    den = 1 + Ci * Jj
    Aij = Aj * Ai / den
    bij = Aj * (bi + Ci * ej_) / den + bj
    Cij = Aj * Ci * Aj / den + Cj
    eij = Ai * (ej_ - Jj * bi) / den + ei_
    Jij = Ai * Jj * Ai / den + Ji
    return Aij, bij, Cij, eij, Jij

  _, m, P, _, _ = jax.lax.associative_scan(f_combine, (A, b, C, eta, J))
  # Smoothing elements (E, g): x_t = E_t x_{t+1} + g_t (+ noise, not needed for the mean).
  Fn = jnp.concatenate([F[1:], jnp.zeros_like(F[:1])])
  un = jnp.concatenate([u[1:], jnp.zeros_like(u[:1])])
  qn = q
  pred = Fn * P * Fn + qn
  E = P * Fn / pred
  g = m - E * (Fn * m + un)
  last = T - 1
  E = E.at[last].set(0.0)
  g = g.at[last].set(m[last])
  # x_t = E_t x_{t+1} + g_t backwards from x_{T-1} = g_{T-1} (E_{T-1} = 0); the
  # smoothed covariances are not needed for the mean.
  return diagonal_scan(E, g, jnp.zeros_like(m[0]), reverse=True)


def _mv(M, v):
  return jnp.einsum("...ij,...j->...i", M, v)


def _inv(M):
  """Batched inverse ``[..., D, D]`` by Gauss-Jordan elimination with partial pivoting.

  A ``fori_loop`` over the ``D`` columns of plain array operations: the same
  arithmetic as an LU inverse, but one small loop body to compile (XLA's
  LAPACK LU takes seconds to compile on CPU, and the scans below hold one per
  level).
  """
  D = M.shape[-1]
  rows = jnp.arange(D)
  eye = jnp.broadcast_to(jnp.eye(D, dtype=M.dtype), M.shape)
  aug = jnp.concatenate([M, eye], axis=-1)                      # [..., D, 2D]

  def body(k, aug):
    col = jax.lax.dynamic_index_in_dim(aug, k, axis=-1, keepdims=False)   # [..., D]
    piv = jnp.argmax(jnp.where(rows >= k, jnp.abs(col), -1), axis=-1)    # [...]
    row_k = jax.lax.dynamic_index_in_dim(aug, k, axis=-2, keepdims=True)  # [..., 1, 2D]
    row_p = jnp.take_along_axis(aug, piv[..., None, None], axis=-2)      # [..., 1, 2D]
    is_k = (rows == k)[:, None]
    is_p = (rows == piv[..., None])[..., None]
    aug = aug + jnp.where(is_k, row_p - row_k, 0) + jnp.where(is_p, row_k - row_p, 0)
    row = row_p / jax.lax.dynamic_index_in_dim(row_p, k, axis=-1, keepdims=True)
    f = jnp.where(rows == k, 0, jax.lax.dynamic_index_in_dim(aug, k, axis=-1, keepdims=False))
    aug = aug - f[..., :, None] * row
    return jnp.where(is_k, row, aug)

  return jax.lax.fori_loop(0, D, body, aug)[..., D:]


def _sym(M):
  return 0.5 * (M + jnp.swapaxes(M, -1, -2))


def kalman_smoother(F, u, y, m0, q, r):
  r"""Smoothed means of ``x_t = F_t x_{t-1} + u_t + N(0, q I)``, ``y_t = x_t + N(0, r I)``.

  Dense transition matrices ``F`` ``[T, D, D]``; ``u``, ``y`` ``[T, D]``;
  ``x_{-1} = m0`` ``[D]`` known exactly; ``q``, ``r`` positive scalars. Both
  passes are associative scans over ``D x D`` elements (Särkkä &
  García-Fernández 2021, Lemmas 7-10, with ``H = I``, ``Q = q I``,
  ``R = r I``): ``O(log T)`` depth, ``O(T D^3)`` work, ``O(T D^2)`` memory.

  Filtering elements ``(A, b, C, eta, J)`` with the gain ``K = q / (q + r)``
  (a scalar, since ``Q`` and ``R`` are isotropic)::

    A_t = (1 - K) F_t,  b_t = u_t + K (y_t - u_t),  C_t = (1 - K) q I,
    eta_t = F_t^T (y_t - u_t) / (q + r),  J_t = F_t^T F_t / (q + r),

  combined as
  ``A_ij = A_j (I + C_i J_j)^{-1} A_i``,
  ``b_ij = A_j (I + C_i J_j)^{-1} (b_i + C_i eta_j) + b_j``,
  ``C_ij = A_j (I + C_i J_j)^{-1} C_i A_j^T + C_j``,
  ``eta_ij = A_i^T (I + J_j C_i)^{-1} (eta_j - J_j b_i) + eta_i``,
  ``J_ij = A_i^T (I + J_j C_i)^{-1} J_j A_i + J_i``; the scan's ``b, C`` are
  the filtered means and covariances ``m_t, P_t``. Smoothing elements
  ``E_t = P_t F_{t+1}^T (F_{t+1} P_t F_{t+1}^T + q I)^{-1}``,
  ``g_t = m_t - E_t (F_{t+1} m_t + u_{t+1})`` (``E = 0``, ``g = m`` at the
  last step): the backward affine recursion ``x_t = E_t x_{t+1} + g_t``, run by
  :func:`affine_scan` (``reverse=True``).

  Returns the smoothed means ``[T, D]`` -- the minimiser of
  ``sum_t |x_t - F_t x_{t-1} - u_t|^2 / q + |x_t - y_t|^2 / r``.
  """
  F, u, y, m0 = (jnp.asarray(v) for v in (F, u, y, m0))
  T, D = u.shape
  dt = F.dtype
  q = jnp.asarray(q, dt)
  r = jnp.asarray(r, dt)
  eye = jnp.eye(D, dtype=dt)
  S = q + r
  K = q / S
  Ft = jnp.swapaxes(F, -1, -2)
  A = (1 - K) * F
  b = u + K * (y - u)
  C = jnp.broadcast_to((1 - K) * q * eye, (T, D, D))
  eta = _mv(Ft, y - u) / S
  J = Ft @ F / S
  # First element: prior mean F_0 m0 + u_0, covariance q I (m0 is exact).
  m1 = F[0] @ m0 + u[0]
  A = A.at[0].set(0.0)
  b = b.at[0].set(m1 + K * (y[0] - m1))
  C = C.at[0].set((q - K * S * K) * eye)
  eta = eta.at[0].set(0.0)
  J = J.at[0].set(0.0)

  def f_combine(ei, ej):
    Ai, bi, Ci, etai, Ji = ei
    Aj, bj, Cj, etaj, Jj = ej
    # W = (I + C_i J_j)^{-1}; (I + J_j C_i)^{-1} = W^T (C, J symmetric).
    W = _inv(jnp.broadcast_to(eye, Ai.shape) + Ci @ Jj)
    WT = jnp.swapaxes(W, -1, -2)
    AjW, AiT = Aj @ W, jnp.swapaxes(Ai, -1, -2)
    Aij = AjW @ Ai
    bij = _mv(AjW, bi + _mv(Ci, etaj)) + bj
    Cij = _sym(AjW @ Ci @ jnp.swapaxes(Aj, -1, -2) + Cj)
    AiTWT = AiT @ WT
    etaij = _mv(AiTWT, etaj - _mv(Jj, bi)) + etai
    Jij = _sym(AiTWT @ Jj @ Ai + Ji)
    return Aij, bij, Cij, etaij, Jij

  _, m, P, _, _ = jax.lax.associative_scan(f_combine, (A, b, C, eta, J))
  # Smoothing elements (E, g): x_t = E_t x_{t+1} + g_t (+ noise, not needed for the mean).
  Fn = jnp.concatenate([F[1:], jnp.zeros_like(F[:1])])
  un = jnp.concatenate([u[1:], jnp.zeros_like(u[:1])])
  FP = Fn @ P                                                   # F_{t+1} P_t
  pred = _sym(FP @ jnp.swapaxes(Fn, -1, -2)) + q * eye          # F P F^T + q I
  E = jnp.swapaxes(_inv(pred) @ FP, -1, -2)                     # P F^T pred^{-1}
  g = m - _mv(E, _mv(Fn, m) + un)
  last = T - 1
  E = E.at[last].set(0.0)
  g = g.at[last].set(m[last])

  # x_t = E_t x_{t+1} + g_t backwards from x_{T-1} = g_{T-1} (E_{T-1} = 0).
  return affine_scan(E, g, jnp.zeros_like(m0), reverse=True)
