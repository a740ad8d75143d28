"""rnnjax.parallel: associative scans, linear-recurrence cells, Newton solves.

References: float64 NumPy loops and least squares for the scan primitives;
``rnnjax.scan(..., impl="reference")`` (a plain ``lax.scan`` differentiated
by JAX) for values and gradients of every parallel method.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import parallel
from rnnjax.parallel import _linear_scan as ls

# A converged Newton solve equals the sequential scan to float32 round-off:
# atol + rtol * |ref| with these (states of order 1).
ATOL, RTOL = 2e-5, 2e-5
GRAD_RTOL = 2e-4  # gradients: relative to the largest entry of each leaf


def _close(a, b, atol=ATOL, rtol=RTOL):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=rtol)


def _close_grad(a, b, rtol=GRAD_RTOL):
  for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    u, v = np.asarray(u), np.asarray(v)
    assert np.max(np.abs(u - v)) <= rtol * (1 + np.max(np.abs(v))), np.max(np.abs(u - v))


# -- primitives ----------------------------------------------------------------
def test_scan_primitives_match_float64_loops(x64):
  rng = np.random.default_rng(0)
  T, D = 9, 3
  A = rng.normal(size=(T, D, D)) * 0.6
  a = rng.normal(size=(T, D))
  b = rng.normal(size=(T, D))
  h0 = rng.normal(size=D)
  fwd, bwd, dfwd, dbwd = [], [None] * T, [], [None] * T
  h = g = h0
  for t in range(T):
    h = A[t] @ h + b[t]
    g = a[t] * g + b[t]
    fwd.append(h)
    dfwd.append(g)
  h = g = h0
  for t in reversed(range(T)):
    h = A[t] @ h + b[t]
    g = a[t] * g + b[t]
    bwd[t], dbwd[t] = h, g
  np.testing.assert_allclose(ls.affine_scan(A, b, h0), fwd, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ls.affine_scan(A, b, h0, reverse=True), bwd, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ls.diagonal_scan(a, b, h0), dfwd, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(ls.diagonal_scan(a, b, h0, reverse=True), dbwd, rtol=1e-12, atol=1e-12)
  ap, bp, hp = np.abs(a), np.abs(b), np.abs(h0)
  h, ref = hp, []
  for t in range(T):
    h = ap[t] * h + bp[t]
    ref.append(h)
  np.testing.assert_allclose(np.exp(ls.log_space_scan(np.log(ap), np.log(bp), np.log(hp))), ref,
                             rtol=1e-12)


def test_diagonal_kalman_smoother_is_the_least_squares_solution(x64):
  rng = np.random.default_rng(1)
  T, D, q, r = 8, 2, 0.7, 0.3
  F, u, y, m0 = (rng.normal(size=s) for s in ((T, D), (T, D), (T, D), (D,)))
  xs = np.asarray(ls.diagonal_kalman_smoother(F, u, y, m0, q, r))
  for d in range(D):
    M, v = np.zeros((2 * T, T)), np.zeros(2 * T)
    for t in range(T):
      M[t, t] = 1 / np.sqrt(q)
      if t:
        M[t, t - 1] = -F[t, d] / np.sqrt(q)
      v[t] = (u[t, d] + (F[0, d] * m0[d] if t == 0 else 0.0)) / np.sqrt(q)
      M[T + t, t], v[T + t] = 1 / np.sqrt(r), y[t, d] / np.sqrt(r)
    np.testing.assert_allclose(xs[:, d], np.linalg.lstsq(M, v, rcond=None)[0], atol=1e-12)


def test_dense_kalman_smoother_matches_sequential_kalman_rts_float64(x64):
  # Reference: a sequential Kalman filter + Rauch-Tung-Striebel smoother in
  # NumPy float64, and the regularised least-squares problem it solves.
  rng = np.random.default_rng(3)
  T, D, q, r = 5, 3, 0.7, 0.3
  F = rng.normal(size=(T, D, D)) * 0.8
  u, y, m0 = rng.normal(size=(T, D)), rng.normal(size=(T, D)), rng.normal(size=D)
  out = np.asarray(jax.jit(ls.kalman_smoother)(F, u, y, m0, q, r))
  I = np.eye(D)
  m, P, filt, pred = m0, np.zeros((D, D)), [], []
  for t in range(T):
    mp, Pp = F[t] @ m + u[t], F[t] @ P @ F[t].T + q * I
    K = Pp @ np.linalg.inv(Pp + r * I)
    m, P = mp + K @ (y[t] - mp), (I - K) @ Pp
    filt.append((m, P))
    pred.append((mp, Pp))
  rts = [None] * T
  rts[-1] = filt[-1][0]
  for t in reversed(range(T - 1)):
    G = filt[t][1] @ F[t + 1].T @ np.linalg.inv(pred[t + 1][1])
    rts[t] = filt[t][0] + G @ (rts[t + 1] - pred[t + 1][0])
  np.testing.assert_allclose(out, np.array(rts), atol=1e-10, rtol=1e-10)
  M, v = np.zeros((2 * T * D, T * D)), np.zeros(2 * T * D)
  for t in range(T):
    blk = slice(t * D, (t + 1) * D)
    M[blk, blk] = I / np.sqrt(q)
    if t:
      M[blk, (t - 1) * D:t * D] = -F[t] / np.sqrt(q)
    v[blk] = (u[t] + (F[0] @ m0 if t == 0 else 0.0)) / np.sqrt(q)
    M[T * D + t * D:T * D + (t + 1) * D, blk] = I / np.sqrt(r)
    v[T * D + t * D:T * D + (t + 1) * D] = y[t] / np.sqrt(r)
  lsq = np.linalg.lstsq(M, v, rcond=None)[0].reshape(T, D)
  np.testing.assert_allclose(out, lsq, atol=1e-10, rtol=1e-10)


# -- linear-recurrence cells ---------------------------------------------------
def _sigmoid(v):
  return 1 / (1 + np.exp(-v))


def _g(v):
  return np.where(v >= 0, v + 0.5, _sigmoid(v))


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_min_cells_and_lru_match_float64_numpy_equations(x64, scale):
  # The log-space associative scan and the step-by-step scan (the direct form of
  # linear_recurrence) against the papers' equations; scale 40 drives the gates
  # deep into saturation.
  key = jax.random.PRNGKey(0)
  xs = scale * np.random.default_rng(2).normal(size=(7, 3))
  H = 4
  for cell in (rj.MinGRU(H, param_dtype=jnp.float64), rj.MinLSTM(H, param_dtype=jnp.float64),
               rj.LRU(H, r_min=0.4, param_dtype=jnp.float64)):
    p = jax.tree_util.tree_map(np.asarray, cell.init(key, 3))
    _, ys = parallel.linear_scan(cell, p, jnp.asarray(xs))
    _, ys_seq = rj.scan(cell, p, jnp.asarray(xs), impl="reference")
    h, ref = np.zeros(H, complex if isinstance(cell, rj.LRU) else float), []
    for x in xs:
      if isinstance(cell, rj.MinGRU):
        k = x @ p["w_i"] + p["b"]
        z = _sigmoid(k[:H])
        h = (1 - z) * h + z * _g(k[H:])
        ref.append(h)
      elif isinstance(cell, rj.MinLSTM):
        k = x @ p["w_i"] + p["b"]
        f, i = _sigmoid(k[:H]), _sigmoid(k[H:2 * H])
        h = f / (f + i) * h + i / (f + i) * _g(k[2 * H:])
        ref.append(h)
      else:
        lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
        B = p["w_i"][:, :H] + 1j * p["w_i"][:, H:2 * H]
        h = lam * h + np.exp(p["gamma_log"]) * (x @ B)
        C = p["c_re"] + 1j * p["c_im"]
        ref.append(np.real(h @ C) + x @ p["w_i"][:, 2 * H:])
    np.testing.assert_allclose(np.asarray(ys), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ys_seq), ref, rtol=1e-10, atol=1e-12)


def test_lru_ring_initialisation():
  cell = rj.LRU(256, r_min=0.9, r_max=0.99, max_phase=0.5)
  p = cell.init(jax.random.PRNGKey(3), 2)
  lam = np.asarray(cell.eigenvalues(p))
  assert np.all(np.abs(lam) >= 0.9 - 1e-5) and np.all(np.abs(lam) <= 0.99 + 1e-5)
  assert np.all(np.angle(lam) >= 0) and np.all(np.angle(lam) <= 0.5 + 1e-6)
  np.testing.assert_allclose(np.exp(p["gamma_log"]), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-4)
  assert cell.initial_carry((3,)).shape == (3, 512)
  with pytest.raises(ValueError, match="r_min"):
    rj.LRU(4, r_min=0.9, r_max=0.5)


def _loss(fn):
  def loss(p, xs, c0):
    out = fn(p, xs, c0)
    c, y = out[0], out[1]
    val = jnp.sum(y ** 2) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree_util.tree_leaves(c))
    return val, out
  return loss


@pytest.mark.parametrize("make", [
    lambda: rj.MinGRU(5), lambda: rj.MinLSTM(5),
    pytest.param(lambda: rj.LRU(4, r_min=0.5), marks=pytest.mark.slow),
    pytest.param(lambda: rj.Stack([rj.MinGRU(4), rj.LRU(3)]), marks=pytest.mark.slow)],
    ids=["mingru", "minlstm", "lru", "stack"])
@pytest.mark.parametrize("reverse", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_associative_matches_reference_values_and_grads(make, reverse):
  cell = make()
  p = cell.init(jax.random.PRNGKey(0), 3)
  xs = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 30, 3))
  L = jnp.array([[30], [17]])
  c0 = jax.tree_util.tree_map(lambda c: c + 0.3 * jax.random.normal(jax.random.PRNGKey(2), c.shape),
                              cell.initial_carry((2, 1)))
  ref = lambda p, xs, c0: rj.scan(cell, p, xs, c0, lengths=L, reverse=reverse, impl="reference")
  par = lambda p, xs, c0: parallel.scan_dispatch(cell, p, xs, c0, lengths=L, reverse=reverse,
                                                 impl="associative")
  g_ref, out_ref = jax.grad(_loss(ref), (0, 1, 2), has_aux=True)(p, xs, c0)
  g_par, out_par = jax.grad(_loss(par), (0, 1, 2), has_aux=True)(p, xs, c0)
  _close(out_par, out_ref, atol=2e-6, rtol=2e-6)
  _close_grad(g_par, g_ref, rtol=2e-5)
  # Padding: zero outputs past the length.
  assert float(jnp.abs(out_par[1][1, 0, 17:]).max()) == 0.0


def test_associative_rejects_nonlinear_cells_naming_them():
  cell = rj.LSTM(3)
  p = cell.init(jax.random.PRNGKey(0), 2)
  with pytest.raises(ValueError, match="LSTM.*deer"):
    parallel.scan_dispatch(cell, p, jnp.zeros((4, 2)), impl="associative")
  with pytest.raises(ValueError, match="impl"):
    parallel.scan_dispatch(cell, p, jnp.zeros((4, 2)), impl="fast")


# -- Newton solves --------------------------------------------------------------
NEWTON_CELLS = {
    "tanh": lambda: rj.SimpleRNN(5),
    "sigmoid": lambda: rj.SimpleRNN(5, activation="sigmoid"),
    "relu": lambda: rj.SimpleRNN(5, activation="relu"),
    "irnn": lambda: rj.IRNN(5, identity_scale=0.9),
    "jordan": lambda: rj.JordanRNN(5, output_size=2),
    "lstm": lambda: rj.LSTM(4),
    "gru": lambda: rj.GRU(4),
    "gru_cho": lambda: rj.GRU(4, reset_after=False),
    "stack": lambda: rj.Stack([rj.GRU(3), rj.SimpleRNN(3)]),
    "indrnn": lambda: rj.IndRNN(5, recurrent_min=-0.9, recurrent_max=0.9),
    "lstm_peephole": lambda: rj.LSTM(4, peephole=True),
}


def _newton_case(cell, method, reverse, T=24):
  p = cell.init(jax.random.PRNGKey(0), 3)
  if "w_p" in p:  # peepholes start at zero: make them count
    p["w_p"] = 0.5 * jax.random.normal(jax.random.PRNGKey(3), p["w_p"].shape)
  xs = jax.random.normal(jax.random.PRNGKey(1), (2, 1, T, 3))
  L = jnp.array([[T], [T - 9]])
  c0 = jax.tree_util.tree_map(lambda c: c + 0.2 * jax.random.normal(jax.random.PRNGKey(2), c.shape),
                              cell.initial_carry((2, 1)))
  ref = lambda p, xs, c0: rj.scan(cell, p, xs, c0, lengths=L, reverse=reverse, impl="reference")
  new = lambda p, xs, c0: parallel.newton_scan(cell, p, xs, c0, lengths=L, reverse=reverse,
                                               method=method)
  g_ref, out_ref = jax.grad(_loss(ref), (0, 1, 2), has_aux=True)(p, xs, c0)
  g_new, out_new = jax.grad(_loss(new), (0, 1, 2), has_aux=True)(p, xs, c0)
  info = out_new[2]
  assert info.iterations.shape == (2, 1)
  assert bool(jnp.all(info.converged)) and not bool(jnp.any(info.fallback)), info
  assert float(jnp.max(info.residual)) <= 20 * np.finfo(np.float32).eps * 50
  _close(out_new[:2], out_ref)
  _close_grad(g_new, g_ref)
  return info


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NEWTON_CELLS))
def test_deer_matches_sequential_scan_values_and_grads(name):
  info = _newton_case(NEWTON_CELLS[name](), "deer", reverse=name in ("lstm", "gru", "stack"))
  assert int(jnp.max(info.iterations)) <= 24


@pytest.mark.slow
@pytest.mark.parametrize("method,name", [
    (m, n) for m in ("quasi_deer", "quasi_elk") for n in ("tanh", "lstm", "indrnn", "lstm_peephole")]
    + [("elk", n) for n in ("tanh", "lstm", "gru", "indrnn", "lstm_peephole")])
def test_quasi_deer_and_elk_match_sequential_scan(method, name):
  info = _newton_case(NEWTON_CELLS[name](), method, reverse=name in ("lstm", "lstm_peephole"))
  if method == "elk":  # Levenberg-Marquardt: DEER's few iterations plus the damped start
    assert int(jnp.max(info.iterations)) <= 24


def _rnn_with_gain(gain, H=6, activation="tanh"):
  cell = rj.SimpleRNN(H, activation=activation)
  p = cell.init(jax.random.PRNGKey(4), 2)
  p["w_h"] = gain * p["w_h"]
  return cell, p


def test_unconverged_solve_falls_back_with_a_warning_eagerly_and_under_jit():
  cell, p = _rnn_with_gain(1.0)
  xs = jax.random.normal(jax.random.PRNGKey(5), (2, 30, 2))
  c_ref, y_ref = rj.scan(cell, p, xs)
  with pytest.warns(RuntimeWarning, match=r"iterations \[1, 1\].*residual"):
    c, y, info = parallel.newton_scan(cell, p, xs, method="quasi_deer", max_iters=1)
  assert bool(jnp.all(info.fallback)) and not bool(jnp.any(info.converged))
  _close((c, y), (c_ref, y_ref), atol=1e-6, rtol=1e-6)
  f = jax.jit(lambda p, xs: parallel.newton_scan(cell, p, xs, method="quasi_deer", max_iters=1))
  with pytest.warns(RuntimeWarning, match="falling back"):
    c, y, info = f(p, xs)
    jax.block_until_ready(y)
    jax.effects_barrier()
  assert bool(jnp.all(info.fallback))
  _close((c, y), (c_ref, y_ref), atol=1e-6, rtol=1e-6)


def test_lyapunov_estimates_and_guard():
  # A linear diagonal recurrence: the exponent is log of the largest |w_ii|.
  cell = rj.SimpleRNN(2, activation="identity")
  p = cell.init(jax.random.PRNGKey(0), 1)
  p["w_h"] = jnp.diag(jnp.array([0.5, 0.8]))
  xs = jax.random.normal(jax.random.PRNGKey(1), (64, 1))
  _, _, info_q = parallel.newton_scan(cell, p, xs, method="quasi_deer")
  _, _, info_d = parallel.newton_scan(cell, p, xs, method="deer")
  np.testing.assert_allclose(float(info_q.lyapunov), np.log(0.8), rtol=1e-5)
  np.testing.assert_allclose(float(info_d.lyapunov), np.log(0.8), atol=0.03)
  assert int(info_d.iterations) <= 2  # linear: one Newton step is exact
  # A chaotic tanh RNN (gain 3): the guard routes it to the sequential scan
  # (quasi-ELK: its trust region keeps the iterates finite; undamped DEER
  # overflows, which also falls back, with its own message).
  cell, p = _rnn_with_gain(3.0)
  xs = jax.random.normal(jax.random.PRNGKey(6), (200, 2))
  c_ref, y_ref = rj.scan(cell, p, xs)
  with pytest.warns(RuntimeWarning, match="Lyapunov exponent estimate"):
    c, y, info = parallel.newton_scan(cell, p, xs, method="quasi_elk")
  assert float(info.lyapunov) > parallel.LYAPUNOV_THRESHOLD and bool(info.fallback)
  _close((c, y), (c_ref, y_ref), atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_dense_elk_on_an_edge_of_chaos_rnn_falls_back_to_the_sequential_scan():
  # tanh RNN, gain 2, T = 64: the damped iterates stall (residual ~0.2) and the
  # Lyapunov estimate at them is positive, so the guard stops the solve at the
  # third iteration; the answer is the sequential scan's, with the warning.
  cell, p = _rnn_with_gain(2.0, H=8)
  xs = jax.random.normal(jax.random.PRNGKey(64), (64, 2))
  c_ref, y_ref = rj.scan(cell, p, xs)
  with pytest.warns(RuntimeWarning, match="falling back"):
    c, y, info = parallel.newton_scan(cell, p, xs, method="elk")
  assert bool(info.fallback) and int(info.iterations) <= 64
  _close((c, y), (c_ref, y_ref), atol=1e-6, rtol=1e-6)


def test_newton_bad_input_names_the_argument():
  cell = rj.SimpleRNN(3)
  p = cell.init(jax.random.PRNGKey(0), 2)
  xs = jnp.zeros((2, 5, 2))
  with pytest.raises(ValueError, match="method"):
    parallel.newton_scan(cell, p, xs, method="newton")
  for bad in (0, -3):
    with pytest.raises(ValueError, match="max_iters"):
      parallel.newton_scan(cell, p, xs, max_iters=bad)
  with pytest.raises(TypeError, match="max_iters"):
    parallel.newton_scan(cell, p, xs, max_iters=2.5)
  for bad in (0.0, -1e-3, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="tol"):
      parallel.newton_scan(cell, p, xs, tol=bad)
  with pytest.raises(TypeError, match="tol"):
    parallel.newton_scan(cell, p, xs, tol="small")
  with pytest.raises(ValueError, match=r"init leaf 0 has shape \(2, 4, 3\)"):
    parallel.newton_scan(cell, p, xs, init=jnp.zeros((2, 4, 3)))
  with pytest.raises(TypeError, match="init has structure"):
    parallel.newton_scan(cell, p, xs, init=(jnp.zeros((2, 5, 3)),))


def test_scan_dispatch_time_major_and_init_guess():
  cell = rj.GRU(3)
  p = cell.init(jax.random.PRNGKey(0), 2)
  xs = jax.random.normal(jax.random.PRNGKey(1), (12, 2, 2))  # [T, B, I]
  c_ref, y_ref = rj.scan(cell, p, xs, time_major=True, impl="reference")
  c, y = parallel.scan_dispatch(cell, p, xs, time_major=True, impl="deer")
  _close((c, y), (c_ref, y_ref))
  # Starting from the solution: converged at once.
  _, _, info = parallel.newton_scan(cell, p, jnp.swapaxes(xs, 0, 1), init=jnp.swapaxes(y_ref, 0, 1))
  assert np.all(np.asarray(info.iterations) <= 1)


def test_rj_scan_dispatches_the_parallel_impls():
  """rj.scan(impl=...) reaches rnnjax.parallel with the ordinary scan API."""
  cell = rj.MinGRU(4)
  p = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (2, 16, 3))
  lengths = jnp.array([16, 9])
  a = rj.scan(cell, p, xs, lengths=lengths, impl="associative")
  b = rj.scan(cell, p, xs, lengths=lengths, impl="reference")
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_allclose(x, y, atol=2e-5, rtol=2e-5)
  with pytest.raises(ValueError, match="impl must be one of"):
    rj.scan(cell, p, xs, impl="newton")
