"""Tests of rnnjax.diagnostics against closed forms and independent references.

References: NumPy float64 matrix powers and products written from the
equations, central finite differences, ``jax.jacrev`` of a plain Python
unroll, and gate pre-activations recomputed in NumPy.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import diagnostics as rd

F64 = jnp.float64


def linear_cell(W, dtype=F64, input_size=1):
  """``h_t = W h_{t-1}`` (column convention) as an identity SimpleRNN, zero input weights."""
  W = np.asarray(W)
  D = W.shape[0]
  cell = rj.SimpleRNN(D, activation="identity", param_dtype=dtype)
  params = {"w_i": jnp.zeros((input_size, D), dtype), "w_h": jnp.asarray(W.T, dtype),
            "b": jnp.zeros((D,), dtype)}
  return cell, params


def power_norms(W, T, ord=2):
  return np.array([np.linalg.norm(np.linalg.matrix_power(W, T - 1 - i), ord) for i in range(T)])


def random_orthogonal(rng, n):
  q, r = np.linalg.qr(rng.normal(size=(n, n)))
  return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------
# Linear RNN closed forms


def test_linear_rnn_exact_equals_matrix_powers(x64):
  rng = np.random.default_rng(0)
  T = 12
  W = rng.normal(size=(3, 3))
  W *= 0.9 / np.max(np.abs(np.linalg.eigvals(W)))
  xs = jnp.zeros((T, 1), F64)
  cell, p = linear_cell(W)
  out = np.asarray(rd.jacobian_norms(cell, p, xs))
  np.testing.assert_allclose(out, power_norms(W, T), rtol=1e-12)
  assert out[-1] == pytest.approx(1.0, abs=1e-15)
  fro = np.asarray(rd.jacobian_norms(cell, p, xs, ord="fro"))
  np.testing.assert_allclose(fro, power_norms(W, T, "fro"), rtol=1e-12)
  # Every per-step Jacobian is W itself (row = output component).
  J = np.asarray(rd.step_jacobians(cell, p, xs))
  assert J.shape == (T, 3, 3)
  np.testing.assert_allclose(J, np.broadcast_to(W, (T, 3, 3)), rtol=1e-14)

  # Scaled orthogonal W = a Q: a^(T-1-i) exactly, also in log space.
  a = 0.7
  _, pq = linear_cell(a * random_orthogonal(rng, 3))
  lag = T - 1 - np.arange(T)
  np.testing.assert_allclose(np.asarray(rd.jacobian_norms(cell, pq, xs)), a ** lag, rtol=1e-12)
  np.testing.assert_allclose(np.asarray(rd.jacobian_norms(cell, pq, xs, log=True)),
                             lag * np.log(a), rtol=1e-12, atol=1e-13)


def test_non_normal_spectral_norm_differs_from_radius(x64):
  a, c, T = 0.9, 2.0, 15
  W = np.array([[a, c], [0.0, a]])
  cell, p = linear_cell(W)
  out = np.asarray(rd.jacobian_norms(cell, p, jnp.zeros((T, 1), F64)))
  ref = power_norms(W, T)
  np.testing.assert_allclose(out, ref, rtol=1e-12)
  # The transient growth of a non-normal W: ||W^k|| >> rho(W)^k = a^k.
  radius = a ** (T - 1 - np.arange(T))
  assert np.max(out / radius) > 10.0


def test_adjoint_of_linear_readout(x64):
  rng = np.random.default_rng(1)
  T = 10
  W = rng.normal(size=(3, 3)) * 0.5
  c = rng.normal(size=3)
  cell, p = linear_cell(W)
  xs = jnp.zeros((T, 1), F64)
  ref = [np.linalg.norm(np.linalg.matrix_power(W.T, T - 1 - i) @ c) for i in range(T)]
  by_carry = rd.adjoint_norms(lambda ys, final: final @ c, cell, p, xs)
  np.testing.assert_allclose(np.asarray(by_carry), ref, rtol=1e-12)
  # The output y_i = h_i is perturbed with the carry, so a loss on ys agrees.
  by_output = rd.adjoint_norms(lambda ys, final: ys[-1] @ c, cell, p, xs)
  np.testing.assert_allclose(np.asarray(by_output), ref, rtol=1e-12)


# ---------------------------------------------------------------------------
# Step Jacobians of every cell vs finite differences; exact = product of them


def _fd_jacobians(cell, p, xs1, c0):
  """Central differences of the flattened step along the trajectory (float64)."""
  from jax.flatten_util import ravel_pytree
  s, unravel = ravel_pytree(c0)
  s = np.asarray(s)
  out = []
  for x in xs1:
    f = lambda u: np.asarray(ravel_pytree(cell(p, unravel(jnp.asarray(u)), x)[0])[0])
    eps = 1e-6
    J = np.stack([(f(s + eps * e) - f(s - eps * e)) / (2 * eps) for e in np.eye(s.size)], 1)
    out.append(J)
    s = f(s)
  return np.stack(out)


CELLS = {
    "jordan": lambda: rj.JordanRNN(3, output_size=2, output_activation="tanh", param_dtype=F64),
    "lstm": lambda: rj.LSTM(2, param_dtype=F64),
    "gru": lambda: rj.GRU(3, param_dtype=F64),
    "stack": lambda: rj.Stack([rj.SimpleRNN(2, param_dtype=F64), rj.LSTM(2, param_dtype=F64)]),
}


@pytest.mark.parametrize("name", sorted(CELLS))
def test_step_jacobians_and_exact_norms_every_cell(x64, name):
  cell = CELLS[name]()
  T = 6
  p = cell.init(jax.random.key(3), 2)
  xs = jax.random.normal(jax.random.key(4), (T, 2), F64)
  c0 = jax.tree_util.tree_map(lambda z: z + 0.1, cell.initial_carry(()))
  J = np.asarray(rd.step_jacobians(cell, p, xs, c0))
  np.testing.assert_allclose(J, _fd_jacobians(cell, p, xs, c0), rtol=1e-6, atol=1e-8)
  # exact norms == norms of the explicit products J_{T-1} ... J_{i+1}
  ref, P = [], np.eye(J.shape[-1])
  for i in range(T - 1, -1, -1):
    ref.append(np.linalg.norm(P, 2))
    P = P @ J[i]
  out = np.asarray(rd.jacobian_norms(cell, p, xs, c0))
  np.testing.assert_allclose(out, ref[::-1], rtol=1e-10)


def test_tanh_step_jacobian_closed_form(x64):
  cell = rj.SimpleRNN(4, param_dtype=F64)
  p = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (5, 3), F64)
  U, W, b = (np.asarray(p[k]) for k in ("w_i", "w_h", "b"))
  h, ref = np.zeros(4), []
  for x in np.asarray(xs):                                  # h_t = tanh(x U + h W + b)
    h = np.tanh(x @ U + h @ W + b)
    ref.append(np.diag(1 - h ** 2) @ W.T)                   # column convention: diag(f') W^T
  np.testing.assert_allclose(np.asarray(rd.step_jacobians(cell, p, xs)), ref, rtol=1e-12)


def test_leaf_restriction_and_names(x64):
  cell = rj.LSTM(2, param_dtype=F64)
  p = cell.init(jax.random.key(5), 2)
  xs = jax.random.normal(jax.random.key(6), (6, 2), F64)
  J = np.asarray(rd.step_jacobians(cell, p, xs))          # [T, 4, 4], state [h, c]
  P = np.eye(4)
  ref = []
  for i in range(5, -1, -1):
    ref.append(np.linalg.norm(P[2:, 2:], 2))               # the c-block of the product
    P = P @ J[i]
  out = np.asarray(rd.jacobian_norms(cell, p, xs, leaf="c"))
  np.testing.assert_allclose(out, ref[::-1], rtol=1e-10)
  np.testing.assert_allclose(np.asarray(rd.step_jacobians(cell, p, xs, leaf=1)), J[:, 2:, 2:])
  assert rd.leaf_names(cell.initial_carry(())) == [".h", ".c"]
  stack = rj.Stack([rj.GRU(2), rj.LSTM(2)])
  assert rd.leaf_names(stack.initial_carry(())) == ["[0]", "[1].h", "[1].c"]


# ---------------------------------------------------------------------------
# Matrix-free methods vs exact


@pytest.mark.parametrize("cell", [rj.SimpleRNN(6), pytest.param(rj.LSTM(4), marks=pytest.mark.slow)],
                         ids=["tanh", "lstm"])
def test_power_and_hutchinson_agree_with_exact(cell):
  p = cell.init(jax.random.key(0), 3)
  T = 20
  xs = jax.random.normal(jax.random.key(1), (2, T, 3))
  J = np.asarray(rd.step_jacobians(cell, p, xs), np.float64)   # [2, T, D, D]
  ex, exf = np.zeros((2, T)), np.zeros((2, T))
  for b in range(2):                                       # exact, in float64 NumPy
    P = np.eye(J.shape[-1])
    for i in range(T - 1, -1, -1):
      ex[b, i], exf[b, i] = np.log(np.linalg.norm(P, 2)), np.log(np.linalg.norm(P, "fro"))
      P = P @ J[b, i]
  pw = np.asarray(rd.jacobian_norms(cell, p, xs, method="power", log=True))
  # Stated tolerance: k=4 probes, 20 iterations -> |log error| < 1e-4 here.
  np.testing.assert_allclose(pw, ex, atol=1e-4)
  assert np.all(pw <= ex + 1e-5)                          # a lower bound
  hu = np.asarray(rd.jacobian_norms(cell, p, xs, method="hutchinson", ord="fro", log=True,
                                    num_probes=2048, key=jax.random.key(7)))
  # m=2048 Rademacher probes: sd of the log norm <= sqrt(1/(2m)) ~ 0.016; 5 sd.
  np.testing.assert_allclose(hu, exf, atol=0.08)
  assert abs(np.mean(hu - exf)) < 0.02
  if isinstance(cell, rj.LSTM):
    return
  # jit-able: the same call inside jax.jit (key traced) gives the same numbers.
  f = jax.jit(lambda p, xs, key: rd.jacobian_norms(cell, p, xs, method="hutchinson", ord="fro",
                                                   log=True, num_probes=2048, key=key))
  np.testing.assert_allclose(np.asarray(f(p, xs, jax.random.key(7))), hu, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Adjoint norms vs jax.jacrev of the full unroll


def _ref_adjoint(cell, p, xs1, loss1):
  """jax.jacrev of a plain Python unroll w.r.t. additive perturbations of every (h, c).

  Returns ``dL/d(h_i, c_i)`` ``[T, 2H]``.
  """
  H = cell.hidden_size
  T = xs1.shape[0]

  def unroll(eps, p, xs1):
    c = cell.initial_carry((), F64)
    ys = []
    for t in range(T):
      c, _ = cell(p, c, xs1[t])
      c = rj.LSTMCarry(c.h + eps[t, :H], c.c + eps[t, H:])
      ys.append(c.h)
    return loss1(jnp.stack(ys), c)
  return np.asarray(jax.jit(jax.jacrev(unroll))(jnp.zeros((T, 2 * H), F64), p, xs1))


def test_adjoint_norms_match_jacrev_of_unroll(x64):
  cell = rj.LSTM(3, param_dtype=F64)
  p = cell.init(jax.random.key(0), 2)
  rng = np.random.default_rng(2)
  w = jnp.asarray(rng.normal(size=3))
  v = jnp.asarray(rng.normal(size=3))
  loss1 = lambda ys, final: jnp.sum(jnp.tanh(ys) ** 2 @ w) + final.c @ v
  xs = jax.random.normal(jax.random.key(1), (3, 7, 2), F64)
  lengths = jnp.array([7, 4, 0])

  def loss(ys, final):
    return sum(loss1(ys[b], jax.tree_util.tree_map(lambda z: z[b], final)) for b in range(3))
  out = np.asarray(rd.adjoint_norms(loss, cell, p, xs, lengths=lengths))
  assert out.shape == (3, 7)
  g0 = _ref_adjoint(cell, p, xs[0], loss1)
  np.testing.assert_allclose(out[0], np.linalg.norm(g0, axis=-1), rtol=1e-10)
  g1 = _ref_adjoint(cell, p, xs[1, :4], loss1)
  np.testing.assert_allclose(out[1, :4], np.linalg.norm(g1, axis=-1), rtol=1e-10)
  assert np.all(np.isnan(out[1, 4:])) and np.all(np.isnan(out[2]))
  out_h = np.asarray(rd.adjoint_norms(loss1, cell, p, xs[0], leaf="h"))
  np.testing.assert_allclose(out_h, np.linalg.norm(g0[:, :3], axis=-1), rtol=1e-10)


def test_lengths_and_batch_semantics(x64):
  cell = rj.LSTM(2, param_dtype=F64)
  p = cell.init(jax.random.key(2), 2)
  T = 9
  xs = jax.random.normal(jax.random.key(3), (3, T, 2), F64)
  lengths = np.array([9, 5, 0])
  J = np.asarray(rd.step_jacobians(cell, p, xs))           # [3, T, 4, 4], no lengths
  Jl = np.asarray(rd.step_jacobians(cell, p, xs, lengths=lengths))
  out = np.asarray(rd.jacobian_norms(cell, p, xs, lengths=lengths))
  assert out.shape == (3, T)
  for b, L in enumerate(lengths):
    np.testing.assert_allclose(Jl[b, :L], J[b, :L], rtol=1e-14)
    assert np.all(np.isnan(Jl[b, L:])) and np.all(np.isnan(out[b, L:]))
    P, ref = np.eye(4), []
    for i in range(L - 1, -1, -1):                           # last state h_{L-1}
      ref.append(np.linalg.norm(P, 2))
      P = P @ J[b, i]
    np.testing.assert_allclose(out[b, :L], ref[::-1], rtol=1e-10)


# ---------------------------------------------------------------------------
# Lyapunov exponents


def test_lyapunov_linear_and_tanh_fixed_point(x64):
  T = 400
  cell, p = linear_cell(np.diag([2.0, 0.5]))
  lam = np.asarray(rd.lyapunov_exponents(cell, p, jnp.zeros((T, 1), F64)))
  np.testing.assert_allclose(lam, [np.log(2), -np.log(2)], atol=5e-3)
  # tanh RNN at its fixed point h = 0 with zero input: J_t = W, a non-normal W.
  S = np.array([[1.0, 0.7], [0.2, 1.0]])
  W = S @ np.diag([1.5, -0.6]) @ np.linalg.inv(S)
  tcell = rj.SimpleRNN(2, param_dtype=F64)
  tp = {"w_i": jnp.zeros((1, 2), F64), "w_h": jnp.asarray(W.T), "b": jnp.zeros(2, F64)}
  lam = np.asarray(rd.lyapunov_exponents(tcell, tp, jnp.zeros((T, 1), F64), warmup=20))
  np.testing.assert_allclose(lam, [np.log(1.5), np.log(0.6)], atol=5e-3)


def test_lyapunov_lengths(x64):
  cell, p = linear_cell(np.diag([2.0, 0.5]))
  xs = jnp.zeros((2, 120, 1), F64)
  lam = np.asarray(rd.lyapunov_exponents(cell, p, xs, lengths=np.array([120, 60]), warmup=10))
  np.testing.assert_allclose(lam, [[np.log(2), -np.log(2)]] * 2, atol=2e-2)
  lam = np.asarray(rd.lyapunov_exponents(cell, p, xs, lengths=np.array([120, 10]), warmup=10))
  assert np.all(np.isfinite(lam[0])) and np.all(np.isnan(lam[1]))


class SwitchCell:
  """A time-varying linear cell: ``h_t = M(x_t) h_{t-1}``, ``M(x) = sum_j x_j mats[j]``."""

  def __init__(self, d):
    self.d = d

  def __hash__(self):
    return hash(("SwitchCell", self.d))

  def __eq__(self, other):
    return isinstance(other, SwitchCell) and other.d == self.d

  def initial_carry(self, batch_shape=(), dtype=None):
    return jnp.ones(tuple(batch_shape) + (self.d,), dtype or jnp.result_type(float))

  def __call__(self, params, carry, x):
    M = jnp.einsum("j,jab->ab", x, params["mats"])
    h = M @ carry
    return h, h


def test_time_varying_jacobians_pin_the_product_order(x64):
  rng = np.random.default_rng(11)
  mats = rng.normal(size=(3, 2, 2))
  A, B, C = mats
  cell = SwitchCell(2)
  p = {"mats": jnp.asarray(mats)}
  period = 3
  T = 300
  xs = jnp.asarray(np.eye(3)[np.arange(T) % period])      # A, B, C, A, B, C, ...
  short = xs[:7]
  out = np.asarray(rd.jacobian_norms(cell, p, short))
  seq = [mats[t % 3] for t in range(7)]
  ref, rev = [], []
  for i in range(7):
    P, R = np.eye(2), np.eye(2)
    for t in range(i + 1, 7):
      P = seq[t] @ P                                         # J_{T-1} ... J_{i+1}
      R = R @ seq[t]                                         # the wrong order
    ref.append(np.linalg.norm(P, 2))
    rev.append(np.linalg.norm(R, 2))
  np.testing.assert_allclose(out, ref, rtol=1e-12)
  assert np.max(np.abs(np.log(np.array(rev) / ref))) > 0.1
  # Lyapunov exponents of the period map C B A (applied A first), per step.
  lam = np.asarray(rd.lyapunov_exponents(cell, p, xs, warmup=30))
  ref_l = np.sort(np.log(np.abs(np.linalg.eigvals(C @ B @ A))) / 3)[::-1]
  wrong = np.sort(np.log(np.abs(np.linalg.eigvals(A @ B @ C))) / 3)[::-1]
  np.testing.assert_allclose(lam, ref_l, atol=2e-2)
  assert np.max(np.abs(wrong - ref_l)) > 0.1


def test_exact_log_space_over_5000_steps():
  """float32, 5,000 steps: the naive product under/overflows, the exact method does not."""
  T = 5000
  rng = np.random.default_rng(3)
  Q = random_orthogonal(rng, 2)
  xs = jnp.zeros((T, 1), jnp.float32)
  lag = T - 1 - np.arange(T)
  for a in (0.5, 1.5):
    cell, p = linear_cell(a * Q, jnp.float32)
    out = np.asarray(rd.jacobian_norms(cell, p, xs, log=True))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, lag * np.log(a), rtol=1e-4, atol=1e-3)
    naive = np.eye(2, dtype=np.float32)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
      for _ in range(T - 1):
        naive = naive @ (a * Q).astype(np.float32)
    # the naive product has underflowed to 0 (a = 0.5) or overflowed (a = 1.5)
    assert np.all(naive == 0) if a < 1 else not np.all(np.isfinite(naive))


# ---------------------------------------------------------------------------
# Qualitative truths from the seeds


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_sigmoid_decays_faster_than_tanh_at_equal_spectral_scale():
  rng = np.random.default_rng(4)
  H, T = 8, 30
  W = 1.0 * random_orthogonal(rng, H)                       # spectral norm 1
  xs = jax.random.normal(jax.random.key(0), (2, T, 3)) * 0.5
  rates = {}
  for act in ("sigmoid", "tanh"):
    cell = rj.SimpleRNN(H, activation=act)
    p = dict(cell.init(jax.random.key(1), 3), w_h=jnp.asarray(W.T, jnp.float32))
    logn = np.asarray(rd.jacobian_norms(cell, p, xs, log=True))
    lag = T - 1 - np.arange(T)
    if act == "sigmoid":                                    # sigmoid' <= 1/4
      assert np.all(logn <= lag * np.log(0.25) + 1e-4)
    rates[act] = np.polyfit(lag, logn.mean(0), 1)[0]
  assert rates["sigmoid"] < np.log(0.25) + 1e-3
  assert rates["tanh"] > -0.5
  assert rates["sigmoid"] < rates["tanh"] - 0.8


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_irnn_at_identity_keeps_norm_one_with_all_units_active():
  cell = rj.IRNN(5)
  p = cell.init(jax.random.key(0), 2)
  xs = jax.random.uniform(jax.random.key(1), (2, 40, 2))
  carry = jnp.ones((2, 5))                                  # positive state: ReLU linear
  out = np.asarray(rd.jacobian_norms(cell, p, xs, carry))
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)
  sat = rd.saturation(cell, p, xs, carry)
  assert float(sat["h"].fraction) == 0.0                    # no unit ever off
  assert float(sat["h"].mean_derivative) == 1.0


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_lstm_large_forget_bias_decays_slower():
  xs = jax.random.normal(jax.random.key(0), (2, 40, 3))
  rates = {}
  cell = rj.LSTM(6)                                         # one compile for both biases
  p0 = cell.init(jax.random.key(1), 3)
  for fb in (0.0, 5.0):
    p = dict(p0, b=p0["b"].at[6:12].set(fb))                # what LSTM(6, forget_bias=fb) writes
    np.testing.assert_array_equal(p["b"], rj.LSTM(6, forget_bias=fb).init(jax.random.key(1), 3)["b"])
    rep = rd.diagnose(cell, p, xs, k=2)
    rates[fb] = rep.decay_rate
    if fb == 5.0:
      assert rep.saturation["f"][0] > 0.9                   # forget gate near 1
  assert rates[5.0] > -0.02
  assert rates[0.0] < -0.2
  assert rates[5.0] > rates[0.0] + 0.2


# ---------------------------------------------------------------------------
# Saturation vs NumPy


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def test_saturation_lstm_and_gru_match_numpy(x64):
  T, B, I = 6, 2, 3
  xs = np.asarray(jax.random.normal(jax.random.key(0), (B, T, I), F64)) * 2
  # LSTM with scaled-up weights so that some units saturate.
  cell = rj.LSTM(4, param_dtype=F64)
  p = jax.tree_util.tree_map(lambda w: 3 * w, cell.init(jax.random.key(1), I))
  wi, wh, bb = (np.asarray(p[k]) for k in ("w_i", "w_h", "b"))
  stats = {g: [] for g in ("i", "f", "g", "o", "tanh_c")}
  for b in range(B):
    h, c = np.zeros(4), np.zeros(4)
    for t in range(T):
      z = xs[b, t] @ wi + h @ wh + bb
      zi, zf, zg, zo = np.split(z, 4)
      c = _sigmoid(zf) * c + _sigmoid(zi) * np.tanh(zg)
      h = _sigmoid(zo) * np.tanh(c)
      for g, a in (("i", zi), ("f", zf), ("o", zo)):
        y = _sigmoid(a)
        stats[g].append((((y < 0.1) | (y > 0.9)).mean(), (y * (1 - y)).mean()))
      for g, a in (("g", zg), ("tanh_c", c)):
        y = np.tanh(a)
        stats[g].append(((np.abs(y) > 0.9).mean(), (1 - y ** 2).mean()))
  sat = rd.saturation(cell, p, jnp.asarray(xs))
  assert list(sat) == ["i", "f", "g", "o", "tanh_c"]
  fracs = []
  for g, rows in stats.items():
    rows = np.array(rows)
    assert float(sat[g].fraction) == pytest.approx(rows[:, 0].mean(), abs=1e-12)
    assert float(sat[g].mean_derivative) == pytest.approx(rows[:, 1].mean(), rel=1e-10)
    assert sat[g].fraction_per_step.shape == (B, T)
    fracs.append(rows[:, 0].mean())
  assert max(fracs) > 0.2                                   # the test has saturated units

  gcell = rj.GRU(3, param_dtype=F64)
  gp = jax.tree_util.tree_map(lambda w: 3 * w, gcell.init(jax.random.key(2), I))
  gp["b_hn"] = jnp.full((3,), 0.5, F64)
  wi, wh, bb, bhn = (np.asarray(gp[k]) for k in ("w_i", "w_h", "b", "b_hn"))
  stats = {g: [] for g in ("r", "z", "n")}
  for b in range(B):
    h = np.zeros(3)
    for t in range(T):
      xp, hp = xs[b, t] @ wi + bb, h @ wh
      zr, zz = xp[:3] + hp[:3], xp[3:6] + hp[3:6]
      zn = xp[6:] + _sigmoid(zr) * (hp[6:] + bhn)
      h = (1 - _sigmoid(zz)) * np.tanh(zn) + _sigmoid(zz) * h
      for g, a in (("r", zr), ("z", zz)):
        y = _sigmoid(a)
        stats[g].append((((y < 0.1) | (y > 0.9)).mean(), (y * (1 - y)).mean()))
      y = np.tanh(zn)
      stats["n"].append(((np.abs(y) > 0.9).mean(), (1 - y ** 2).mean()))
  sat = rd.saturation(gcell, gp, jnp.asarray(xs), lengths=np.array([T, 3]))
  for g, rows in stats.items():
    rows = np.array(rows).reshape(B, T, 2)
    ref = np.concatenate([rows[0], rows[1, :3]])            # steps past lengths left out
    assert float(sat[g].fraction) == pytest.approx(ref[:, 0].mean(), abs=1e-12)
    assert float(sat[g].mean_derivative) == pytest.approx(ref[:, 1].mean(), rel=1e-10)
    assert np.all(np.isnan(np.asarray(sat[g].fraction_per_step)[1, 3:]))


# ---------------------------------------------------------------------------
# diagnose, Report, table, plot, study, CLI


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_diagnose_equals_the_separate_functions():
  cell = rj.GRU(4)
  p = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 15, 2))
  lengths = np.array([15, 9])
  key = jax.random.key(3)
  rep = rd.diagnose(cell, p, xs, lengths=lengths, k=3, warmup=2, key=key)
  _, k2 = jax.random.split(key)
  np.testing.assert_allclose(
      rep.log_jacobian_norms, rd.jacobian_norms(cell, p, xs, lengths=lengths, log=True),
      rtol=1e-5, atol=1e-5)
  loss = lambda ys, final: jnp.sum(rj.last_valid(ys, jnp.asarray(lengths)))
  np.testing.assert_allclose(
      rep.log_adjoint_norms, np.log(rd.adjoint_norms(loss, cell, p, xs, lengths=lengths)),
      rtol=1e-5, atol=1e-5)
  lam = rd.lyapunov_exponents(cell, p, xs, k=3, warmup=2, lengths=lengths, key=k2)
  np.testing.assert_allclose(rep.lyapunov, np.mean(np.asarray(lam), 0), rtol=1e-5, atol=1e-6)
  sat = rd.saturation(cell, p, xs, lengths=lengths)
  assert list(rep.saturation) == ["r", "z", "n"]
  for g, (f, d) in rep.saturation.items():
    assert f == pytest.approx(float(sat[g].fraction), abs=1e-6)
    assert d == pytest.approx(float(sat[g].mean_derivative), rel=1e-5)
  assert rep.largest_lyapunov == rep.lyapunov[0]


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_diagnose_stack_with_lengths():
  stack = rj.Stack([rj.SimpleRNN(3), rj.LSTM(2)])
  p = stack.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 10, 2))
  lengths = np.array([10, 6])
  rep = rd.diagnose(stack, p, xs, lengths=lengths, k=2)
  assert list(rep.saturation) == ["layer0.h", "layer1.i", "layer1.f", "layer1.g", "layer1.o",
                                  "layer1.tanh_c"]
  for b, L in enumerate(lengths):
    assert rep.log_jacobian_norms[b, L - 1] == pytest.approx(0.0, abs=1e-6)   # ||I|| = 1
    assert np.all(np.isnan(rep.log_jacobian_norms[b, L:]))
    assert np.all(np.isfinite(rep.log_jacobian_norms[b, :L]))
    # dL/dh_{L-1} of the default loss is all ones on the output leaf (the top h, 2 units)
    assert rep.log_adjoint_norms[b, L - 1] == pytest.approx(np.log(np.sqrt(2)), abs=1e-6)
  assert rep.lyapunov.shape == (2,) and np.all(np.isfinite(rep.lyapunov))
  assert rep.memory_horizon is None or rep.memory_horizon < 10


def test_report_summaries_on_linear_rnns(x64, tmp_path):
  rng = np.random.default_rng(5)
  Q = random_orthogonal(rng, 3)
  T = 60
  xs = jnp.zeros((2, T, 1), F64)
  reps = {}
  for a in (0.8, 1.0, 1.2):
    cell, p = linear_cell(a * Q)
    reps[a] = rd.diagnose(cell, p, xs, name=f"a={a}")
    assert reps[a].decay_rate == pytest.approx(np.log(a), abs=1e-10)
    np.testing.assert_allclose(reps[a].largest_lyapunov, np.log(a), atol=1e-2)
  assert reps[0.8].verdict == "vanishing"
  assert reps[0.8].memory_horizon == int(np.ceil(np.log(0.01) / np.log(0.8)))   # 21
  assert reps[1.0].verdict == "stable" and reps[1.0].memory_horizon is None
  assert reps[1.2].verdict == "exploding"
  text = str(reps[0.8])
  assert "vanishing" in text and "-0.2231" in text and "21" in text
  table = rd.summary_table(list(reps.values()))
  assert len(table.splitlines()) == 5 and "exploding" in table and ">59" in table
  # The linear adjoint of the default loss (sum of the last output) is ||(W^T)^l 1||.
  W = 0.8 * Q
  ref = [np.linalg.norm(np.linalg.matrix_power(W.T, T - 1 - i) @ np.ones(3)) for i in range(T)]
  np.testing.assert_allclose(np.exp(reps[0.8].log_adjoint_norms[0]), ref, rtol=1e-10)
  path = rd.plot_gradient_norms(list(reps.values()), tmp_path / "sub" / "g.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_vanishing_study_and_cli(tmp_path, capsys):
  # (the LSTM and GRU paths of diagnose are tested above; 3 cells keep the test short)
  reps, path = rd.vanishing_study(T=30, hidden=4, batch=2, out_dir=str(tmp_path),
                                  cells=("sigmoid", "tanh", "irnn"))
  names = [r.name for r in reps]
  assert names == ["SimpleRNN(sigmoid)", "SimpleRNN(tanh)", "IRNN"]
  by = dict(zip(names, reps))
  assert by["SimpleRNN(sigmoid)"].decay_rate < by["SimpleRNN(tanh)"].decay_rate - 0.5
  assert by["SimpleRNN(sigmoid)"].verdict == "vanishing"
  assert by["IRNN"].decay_rate == pytest.approx(0.0, abs=1e-6)
  assert os.path.getsize(path) > 1000
  out = capsys.readouterr().out
  assert "lambda_max" in out and "SimpleRNN(sigmoid)" in out

  from rnnjax import cli
  rc = cli.main(["diagnose", "--cell", "sigmoid", "--hidden", "4", "--T", "30", "--batch", "2",
                 "--out", str(tmp_path)])
  assert rc == 0
  out = capsys.readouterr().out
  assert "Report: SimpleRNN(sigmoid)" in out and "verdict" in out
  assert os.path.exists(tmp_path / "diagnose_sigmoid.png")
  with pytest.raises(SystemExit, match="--cell"):
    cli.main(["diagnose", "--cell", "nope"])


# ---------------------------------------------------------------------------
# Errors


def test_bad_inputs_raise_clear_errors():
  cell = rj.LSTM(2)
  p = cell.init(jax.random.key(0), 2)
  xs = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match="method"):
    rd.jacobian_norms(cell, p, xs, method="svd")
  with pytest.raises(ValueError, match="ord='fro'"):
    rd.jacobian_norms(cell, p, xs, method="hutchinson")
  with pytest.raises(ValueError, match="ord=2"):
    rd.jacobian_norms(cell, p, xs, method="power", ord="fro")
  with pytest.raises(ValueError, match="ord"):
    rd.jacobian_norms(cell, p, xs, ord=3)
  with pytest.raises(ValueError, match="leaf"):
    rd.jacobian_norms(cell, p, xs, leaf="x")
  with pytest.raises(ValueError, match="leaf"):
    rd.step_jacobians(cell, p, xs, leaf=2)
  with pytest.raises(ValueError, match="k must be"):
    rd.lyapunov_exponents(cell, p, xs, k=5)
  with pytest.raises(ValueError, match="warmup"):
    rd.lyapunov_exponents(cell, p, xs, warmup=4)
  with pytest.raises(ValueError, match="lengths"):
    rd.jacobian_norms(cell, p, jnp.zeros((2, 4, 2)), lengths=jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="rank"):
    rd.jacobian_norms(cell, p, jnp.zeros((2,)))
  with pytest.raises(ValueError, match="input_size"):
    rd.jacobian_norms(cell, p, jnp.zeros((4, 3)))
  with pytest.raises(TypeError, match="loss_fn"):
    rd.adjoint_norms(None, cell, p, xs)
  with pytest.raises(ValueError, match="scalar"):
    rd.adjoint_norms(lambda ys, c: ys, cell, p, xs)
  with pytest.raises(TypeError, match="saturation needs"):
    rd.saturation(SwitchCell(2), {"mats": jnp.zeros((2, 2, 2))}, xs)
  with pytest.raises(ValueError, match="fraction"):
    rd.diagnose(cell, p, xs, fraction=2.0)


# ---------------------------------------------------------------------------
# Benchmark smoke test


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_benchmark_quick(tmp_path, capsys):
  from benchmarks import bench_diagnostics
  out = tmp_path / "bench.json"
  bench_diagnostics.main(["--quick", "--json", str(out)])
  rows = json.loads(out.read_text())["rows"]
  methods = {r["method"] for r in rows}
  assert methods == {"exact", "power", "hutchinson", "adjoint_norms", "jacrev"}
  for r in rows:
    assert r["compile_s"] > 0 and r["median_s"] > 0
  # The benchmark's jacrev reference agrees with the exact method it times.
  assert all(r["max_abs_log_err"] < 1e-3 for r in rows if r["method"] == "power")
  assert "jacrev" in capsys.readouterr().out


def test_adjoint_norms_fresh_identical_lambda_compiles_once():
  """The loss is a static argument keyed by value: equal lambdas share one compiled program."""
  from rnnjax.diagnostics import _jacobians
  cell = rj.SimpleRNN(3)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 5, 3 - 1))
  make_loss = lambda: (lambda ys, carry: jnp.sum(ys[..., -1, :] ** 2))
  before = _jacobians._adjoint_impl._cache_size()
  a = rd.adjoint_norms(make_loss(), cell, params, xs)
  b = rd.adjoint_norms(make_loss(), cell, params, xs)
  assert _jacobians._adjoint_impl._cache_size() == before + 1
  np.testing.assert_array_equal(a, b)
  # A genuinely different loss compiles again.
  rd.adjoint_norms(lambda ys, carry: jnp.sum(ys ** 3), cell, params, xs)
  assert _jacobians._adjoint_impl._cache_size() == before + 2


@pytest.mark.parametrize("cell,names", [
    (rj.IndRNN(4, activation="tanh", recurrent_min=0.5, recurrent_max=0.9), ["h"]),
    pytest.param(rj.LSTM(4, peephole=True), ["i", "f", "g", "o", "tanh_c"],
                 marks=pytest.mark.slow),  # compile-heavy; the indrnn case runs in CI
], ids=["indrnn", "lstm-peephole"])
def test_new_cells_get_every_diagnostic(cell, names):
  """Cells written only in rnnjax/_cells.py get saturation, diagnose and Lyapunov exponents."""
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 30, 2))
  assert list(rd.saturation(cell, params, xs)) == names
  lyap = rd.lyapunov_exponents(cell, params, xs, k=2)
  assert lyap.shape == (2, 2) and np.all(np.isfinite(lyap))
  rep = rd.diagnose(cell, params, xs)
  assert rep.verdict in ("vanishing", "exploding", "stable")
  if isinstance(cell, rj.IndRNN):
    # dh_T/dh_0 is diagonal: its norm is max_n prod_t |u_n f'(a_t)| <= max|u|^T (|tanh'| <= 1).
    norms = rd.jacobian_norms(cell, params, xs)
    assert float(norms[0, 0]) <= float(np.max(np.abs(params["u"]))) ** 29 * (1 + 1e-4)
