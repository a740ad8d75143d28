"""Differentiable Lyapunov exponents, gradient flossing and edge-of-chaos scaling.

References: central finite differences (float64), the closed form
``d log|mu_j| / dA = v_j u_j^T / (mu_j v_j^T u_j)`` for a linear map with
distinct real eigenvalues, ``d log|det W| / dW = W^{-T}``, the spectral
radius of a linear RNN and the mean-field transition to chaos of random
tanh networks at gain 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax as rj
from rnnjax import diagnostics as rd
from rnnjax import train
from rnnjax.diagnostics._lyapunov import qr_positive

F64 = jnp.float64


def linear_cell(W, input_size=1):
  """``h_t = A h_{t-1}`` with ``A = W`` (column convention): rnnjax's ``w_h`` is ``A^T``."""
  D = W.shape[0]
  cell = rj.SimpleRNN(D, activation="identity", param_dtype=F64)
  params = {"w_i": jnp.zeros((input_size, D), F64), "w_h": jnp.asarray(W.T, F64),
            "b": jnp.zeros((D,), F64)}
  return cell, params


def test_qr_positive_values_and_vjp(x64):
  z = jax.random.normal(jax.random.key(0), (6, 3), F64)
  q, d = qr_positive(z)
  R = np.asarray(q).T @ np.asarray(z)
  np.testing.assert_allclose(np.tril(R, -1), 0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(q) @ np.triu(R), z, atol=1e-12)
  np.testing.assert_allclose(np.diagonal(R), d, rtol=1e-12)
  assert np.all(np.asarray(d) > 0)
  np.testing.assert_allclose(np.asarray(q).T @ np.asarray(q), np.eye(3), atol=1e-12)
  gq = jax.random.normal(jax.random.key(1), (6, 3), F64)
  gd = jax.random.normal(jax.random.key(2), (3,), F64)

  def ref(z):
    qq, r = jnp.linalg.qr(z)
    s = jnp.sign(jnp.diagonal(r))
    return qq * s, jnp.abs(jnp.diagonal(r))
  f = lambda fn: lambda z: jnp.sum(fn(z)[0] * gq) + jnp.sum(jnp.log(fn(z)[1]) * gd)  # noqa: E731
  g = jax.grad(f(qr_positive))(z)
  eps = 1e-6
  v = jax.random.normal(jax.random.key(3), z.shape, F64)
  fd = (f(ref)(z + eps * v) - f(ref)(z - eps * v)) / (2 * eps)
  np.testing.assert_allclose(jnp.sum(g * v), fd, rtol=1e-7)
  np.testing.assert_allclose(g, jax.grad(f(ref))(z), rtol=1e-10, atol=1e-12)


def _fd_check(fun, x, n_dirs=3, eps=1e-5, rtol=2e-6, seed=0):
  """Directional derivatives of ``fun`` at pytree ``x``: jax.grad vs central differences."""
  g = jax.grad(fun)(x)
  fj = jax.jit(fun)
  leaves, tdef = jax.tree_util.tree_flatten(x)
  for i in range(n_dirs):
    ks = jax.random.split(jax.random.key(seed + i), len(leaves))
    v = [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(ks, leaves)]
    norm = np.sqrt(sum(float(jnp.sum(a * a)) for a in v))
    v = tdef.unflatten([a / norm for a in v])     # a unit direction
    plus = jax.tree_util.tree_map(lambda a, b: a + eps * b, x, v)
    minus = jax.tree_util.tree_map(lambda a, b: a - eps * b, x, v)
    fd = (float(fj(plus)) - float(fj(minus))) / (2 * eps)
    ad = sum(float(jnp.sum(a * b)) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(v)))
    assert abs(ad - fd) <= rtol * max(1.0, abs(fd)), (i, ad, fd)


@pytest.mark.parametrize("name", ["tanh", "lstm"])
def test_lyapunov_gradient_matches_finite_differences(x64, name):
  # A driven, chaotic-ish tanh RNN (gain 1.5) and an LSTM (two-leaf carry), batch of 2.
  if name == "tanh":
    cell = rj.SimpleRNN(4, "tanh", param_dtype=F64)
  else:
    cell = rj.LSTM(3, param_dtype=F64)
  p = cell.init(jax.random.key(0), input_size=2)
  p = jax.tree_util.tree_map(lambda a: 1.3 * a, p)
  xs = jax.random.normal(jax.random.key(1), (2, 25, 2), F64)
  # Weights on the exponents so that every one of them enters the check.
  w = jnp.arange(1.0, 4.0, dtype=F64)
  lam = lambda p, xs: jnp.sum(rd.lyapunov_exponents(cell, p, xs, k=3, warmup=3) * w)  # noqa: E731
  _fd_check(lambda p: lam(p, xs), p)                   # w.r.t. params
  _fd_check(lambda x: lam(p, x), xs, n_dirs=2)         # w.r.t. inputs
  # The flossing penalty the same way.
  _fd_check(lambda p: train.flossing_loss(cell, p, xs, k=2, warmup=3), p, n_dirs=2)


def test_lyapunov_gradient_linear_closed_form(x64):
  # A with distinct real eigenvalues mu = 1.3, 0.8, -0.5: lambda_j = log|mu_j| and
  # d lambda_j / dA = v_j u_j^T / (mu_j v_j^T u_j) (u right, v left eigenvectors).
  rng = np.random.default_rng(0)
  V = rng.standard_normal((3, 3)) + 2 * np.eye(3)
  mu = np.array([1.3, 0.8, -0.5])
  A = V @ np.diag(mu) @ np.linalg.inv(V)
  cell, p = linear_cell(A)
  xs = jnp.zeros((800, 1), F64)
  U = V                                  # right eigenvectors (columns)
  Vl = np.linalg.inv(V).T                # left eigenvectors (columns): Vl[:, j]^T A = mu_j Vl[:, j]^T
  lam = rd.lyapunov_exponents(cell, p, xs, k=3, warmup=50)
  np.testing.assert_allclose(lam, np.log(np.abs(mu)), atol=2e-3)
  jac = jax.jacrev(lambda w: rd.lyapunov_exponents(cell, dict(p, w_h=w), xs, k=3, warmup=50))(p["w_h"])
  for j in range(3):
    dA = np.outer(Vl[:, j], U[:, j]) / (mu[j] * Vl[:, j] @ U[:, j])
    # w_h = A^T, so d lambda / d w_h = (d lambda / dA)^T.
    err = np.max(np.abs(np.asarray(jac[j]) - dA.T)) / np.max(np.abs(dA))
    assert err < 1e-8, (j, err)      # measured 4e-13 .. 1e-11
  # The sum of all exponents is log|det A| at any length: gradient A^{-T} exactly (w.r.t. A).
  g = jax.grad(lambda w: jnp.sum(rd.lyapunov_exponents(cell, dict(p, w_h=w), xs[:40], k=3)))(p["w_h"])
  np.testing.assert_allclose(np.asarray(g).T, np.linalg.inv(A).T, rtol=1e-10, atol=1e-12)


def test_floss_pushes_exponents_to_zero():
  # A strongly contracting tanh RNN (gain 0.3 on its recurrent weights, lambda ~ -1.2):
  # 60 Adam updates of flossing k=4 bring the first 4 exponents near zero.
  cell = rj.SimpleRNN(16, "tanh")
  p0 = cell.init(jax.random.key(0), input_size=1)
  xs = jax.random.normal(jax.random.key(1), (4, 60, 1))
  p = dict(p0, w_h=0.3 * p0["w_h"])
  before = np.asarray(rd.lyapunov_exponents(cell, p, xs, k=4, warmup=10)).mean(0)
  # optax.adam's bias correction mixes a Python float and an int32 count, which strict
  # promotion (tests/conftest.py) rejects inside optax itself: standard promotion here.
  with jax.numpy_dtype_promotion("standard"):
    pf, losses = train.floss(cell, p, xs, steps=60, k=4, warmup=10, optimizer=optax.adam(1e-2))
  after = np.asarray(rd.lyapunov_exponents(cell, pf, xs, k=4, warmup=10)).mean(0)
  # The first recorded penalty is flossing_loss at the initial params with key fold_in(key, 0).
  ref = train.flossing_loss(cell, p, xs, k=4, warmup=10, key=jax.random.fold_in(jax.random.key(0), 0))
  np.testing.assert_allclose(losses[0], ref, rtol=1e-5)
  assert np.all(before < -0.8), before
  assert np.all(np.abs(after) < 0.1), after
  assert losses[-1] < 0.01 * losses[0]


def test_flossing_stage_in_fit_equals_manual_updates():
  # SGD(lr) with flossing every 2 updates: update 0 uses grad(loss) + w grad(floss), update 1
  # grad(loss) only, update 2 both again (checked against hand-made updates).
  model = rj.SequenceModel([rj.SimpleRNN(6)], rj.Dense(1))
  params = model.init(jax.random.key(0), input_size=2)
  cell = model.layers[0]
  xf = jax.random.normal(jax.random.key(2), (3, 30, 2))
  batches = [train.adding_problem(8, length=12, seed=(0, i)) for i in range(3)]
  lr, w = 0.05, 0.7
  stage = train.flossing(cell, xf, every=2, k=2, weight=w, warmup=5, key=jax.random.key(7))
  res = train.fit(model, params, lambda i: batches[i], loss="mse", steps=3,
                  optimizer=optax.chain(stage, optax.sgd(lr)), progress=False)
  loss_fn = train.model_loss(model, "mse")
  p = params
  for i in range(3):
    g = jax.grad(lambda q: loss_fn(q, batches[i], None), has_aux=True)(p)[0]
    if i % 2 == 0:
      kk = jax.random.fold_in(jax.random.key(7), i)
      gf = jax.grad(lambda q: train.flossing_loss(cell, q["layers"][0], xf, k=2, warmup=5, key=kk))(p)
      g = jax.tree_util.tree_map(lambda a, b: a + w * b, g, gf)
    p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)
  for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(p)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
  st = res.opt_state[0]
  assert int(st.count) == 3 and st.exponents.shape == (2,) and np.all(np.isfinite(st.exponents))


def test_scale_to_edge_of_chaos_linear(x64):
  # lambda_1(g) = log(g rho(W)): the gain is 1/rho(W).
  rng = np.random.default_rng(1)
  W = rng.standard_normal((5, 5)) / np.sqrt(5)
  cell, p = linear_cell(W)
  xs = jnp.zeros((300, 1), F64)
  ps, gain = train.scale_to_edge_of_chaos(cell, p, xs, warmup=50, tol=1e-4)
  rho = np.max(np.abs(np.linalg.eigvals(W)))
  np.testing.assert_allclose(gain, 1 / rho, rtol=5e-3)
  np.testing.assert_allclose(ps["w_h"], gain * p["w_h"])
  # target -0.1: g rho = e^-0.1.
  _, gain2 = train.scale_to_edge_of_chaos(cell, p, xs, target=-0.1, warmup=50, tol=1e-4)
  np.testing.assert_allclose(gain2, np.exp(-0.1) / rho, rtol=5e-3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "orthogonal"])
def test_scale_to_edge_of_chaos_tanh_mean_field(kind):
  # h_t = tanh(g W h_{t-1}), no input, no bias, W_ij ~ N(0, 1/N) or orthogonal, N = 200:
  # mean-field theory puts the transition to chaos at g = 1 (Sompolinsky et al. 1988);
  # at N = 200 the finite-size spectral radius moves it by a few percent. Tolerance 0.08.
  N = 200
  rng = np.random.default_rng(2)
  if kind == "gaussian":
    W = rng.standard_normal((N, N)) / np.sqrt(N)
  else:
    W = np.linalg.qr(rng.standard_normal((N, N)))[0]
  cell = rj.SimpleRNN(N, "tanh")
  p = {"w_i": jnp.zeros((1, N)), "w_h": jnp.asarray(W.T, jnp.float32), "b": jnp.zeros((N,))}
  xs = jnp.zeros((400, 1))
  h0 = jnp.asarray(rng.standard_normal(N), jnp.float32)
  _, gain = train.scale_to_edge_of_chaos(cell, p, xs, h0, warmup=100, tol=1e-2)
  assert abs(gain - 1.0) < 0.08, gain


def test_flossing_errors():
  cell = rj.SimpleRNN(4)
  p = cell.init(jax.random.key(0), input_size=1)
  xs = jnp.zeros((10, 1))
  with pytest.raises(ValueError, match="k"):
    train.flossing_loss(cell, p, xs, k=0)
  with pytest.raises(ValueError, match="length"):
    train.flossing_loss(cell, p, xs, length=11)
  with pytest.raises(ValueError, match="steps"):
    train.floss(cell, p, xs, steps=0)
  with pytest.raises(ValueError, match="every"):
    train.flossing(cell, xs, every=0)
  with pytest.raises(ValueError, match="w_h"):
    train.scale_to_edge_of_chaos(cell, {"w": p["w_h"]}, xs)
  with pytest.raises(ValueError, match="bracket"):
    train.scale_to_edge_of_chaos(cell, p, xs, bracket=(2.0, 1.0))
  stage = train.flossing(cell, xs)
  with pytest.raises(ValueError, match="params"):
    stage.update(p, stage.init(p))
