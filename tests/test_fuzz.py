"""Property-based tests (hypothesis) of the public API's contract.

For generated shapes, dtypes, lengths, cells and bad inputs, every call either
returns the documented result -- checked against a float64 NumPy loop written
here from the equations in the docstrings, and ``impl="reference"`` against
``impl="auto"`` -- or raises a ``ValueError``/``TypeError`` that names the bad
argument, raised by rnnjax's own checks (never an exception from inside JAX).
Finite inputs never give NaN.

Bounded for CI: tiny shapes drawn from few values (so that jit caches are
reused), 6-30 examples per property, no deadline, derandomized (the same cases
every run). ``RNNJAX_FUZZ_SCALE=10`` multiplies the example counts and
``RNNJAX_FUZZ_RANDOM=1`` draws fresh cases, for a deeper local search:

  RNNJAX_FUZZ_SCALE=10 RNNJAX_FUZZ_RANDOM=1 pytest tests/test_fuzz.py --hypothesis-show-statistics

``test_core_bad_inputs`` covers checks that live in the core engine
(rnnjax/_cells.py, _scan.py); it passes once those are in.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rnnjax as rj  # noqa: E402
from rnnjax import diagnostics as rd  # noqa: E402
from rnnjax import train  # noqa: E402

_SCALE = max(1, int(os.environ.get("RNNJAX_FUZZ_SCALE", "1")))
_RANDOM = os.environ.get("RNNJAX_FUZZ_RANDOM", "") not in ("", "0")


def fuzz(n):
  return settings(max_examples=n * _SCALE, deadline=None, derandomize=not _RANDOM,
                  database=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])


H = 2  # every generated cell has hidden size 2 (few shapes: compiled programs are reused)

CELLS = {
    "SimpleRNN-tanh": rj.SimpleRNN(H, "tanh"),
    "SimpleRNN-relu": rj.SimpleRNN(H, "relu"),
    "SimpleRNN-sigmoid": rj.SimpleRNN(H, "sigmoid"),
    "SimpleRNN-tanh-bf16": rj.SimpleRNN(H, "tanh", dtype=jnp.bfloat16),
    "IRNN": rj.IRNN(H),
    "JordanRNN": rj.JordanRNN(H, 3),
    "LSTM": rj.LSTM(H),
    "LSTM-bf16": rj.LSTM(H, dtype=jnp.bfloat16),
    "GRU": rj.GRU(H),
    "GRU-reset_before": rj.GRU(H, reset_after=False),
}

# ---------------------------------------------------------------------------------------
# Float64 NumPy reference, from the equations in the cells' docstrings ("x @ W" layout).

_ACT = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0.0),
        "sigmoid": lambda a: 0.5 * (1.0 + np.tanh(0.5 * a)), "identity": lambda a: a}


def _np_step(cell, p, carry, x):
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  if isinstance(cell, rj.LSTM):
    h, c = carry
    z = x @ p["w_i"] + h @ p["w_h"] + p["b"]
    i, f, g, o = (z[..., k * H:(k + 1) * H] for k in range(4))
    s = _ACT["sigmoid"]
    c = s(f) * c + s(i) * np.tanh(g)
    h = s(o) * np.tanh(c)
    return (h, c), h
  if isinstance(cell, rj.GRU):
    h = carry
    xp = x @ p["w_i"] + p["b"]
    s = _ACT["sigmoid"]
    if cell.reset_after:
      hp = h @ p["w_h"]
      r, z = s(xp[..., :H] + hp[..., :H]), s(xp[..., H:2 * H] + hp[..., H:2 * H])
      n = np.tanh(xp[..., 2 * H:] + r * (hp[..., 2 * H:] + p["b_hn"]))
    else:
      hp = h @ p["w_h"][:, :2 * H]
      r, z = s(xp[..., :H] + hp[..., :H]), s(xp[..., H:2 * H] + hp[..., H:2 * H])
      n = np.tanh(xp[..., 2 * H:] + (r * h) @ p["w_h"][:, 2 * H:])
    h = (1 - z) * n + z * h
    return h, h
  if isinstance(cell, rj.JordanRNN):
    y = carry
    h = _ACT[cell.activation.name](x @ p["w_i"] + y @ p["w_h"] + p["b"])
    y = _ACT[cell.output_activation.name](h @ p["w_o"] + p["b_o"])
    return y, y
  h = _ACT[cell.activation.name](x @ p["w_i"] + carry @ p["w_h"] + p["b"])
  return h, h


def np_scan(cell, params, xs, lengths=None, reverse=False):
  """``xs [*B, T, I]`` -> ``(final carry leaves [*B, S] as a list, ys [*B, T, O])``."""
  xs = np.asarray(xs, np.float64)
  bshape, T = xs.shape[:-2], xs.shape[-2]
  nb = int(np.prod(bshape))
  xf = xs.reshape((nb, T, xs.shape[-1]))
  L = (np.full(nb, T) if lengths is None else np.asarray(lengths).reshape(-1))
  template = jax.eval_shape(lambda: cell.initial_carry(()))
  if nb == 0:
    return ([np.zeros(bshape + l.shape) for l in jax.tree_util.tree_leaves(template)],
            np.zeros(bshape + (T, cell.output_size)))
  finals, ys = [], []
  for b in range(xf.shape[0]):
    carry = jax.tree_util.tree_map(lambda z: np.zeros(z.shape, np.float64),
                                   jax.eval_shape(lambda: cell.initial_carry(())))
    if isinstance(cell, rj.LSTM):
      carry = tuple(carry)
    y_b = None
    order = range(L[b] - 1, -1, -1) if reverse else range(L[b])
    out = {}
    for t in order:
      carry, y = _np_step(cell, params, carry, xf[b, t])
      out[t] = y
    O = cell.output_size
    y_b = np.stack([out.get(t, np.zeros(O)) for t in range(T)]) if T else np.zeros((0, O))
    finals.append([np.asarray(l) for l in jax.tree_util.tree_leaves(carry)])
    ys.append(y_b)
  final = [np.stack([f[j] for f in finals]).reshape(bshape + (-1,))
           for j in range(len(finals[0]))]
  return final, np.stack(ys).reshape(bshape + (T, cell.output_size))


# ---------------------------------------------------------------------------------------
# Strategies

def _params(cell, input_size, seed, scale):
  p = cell.init(jax.random.key(seed), input_size)
  keys = jax.random.split(jax.random.key(seed + 1), len(p))
  # Non-zero biases; weights scaled to probe saturation (large) and linearity (small).
  return {k: (scale * v + 0.3 * jax.random.normal(kk, v.shape)).astype(v.dtype)
          for (k, v), kk in zip(sorted(p.items()), keys)}


@st.composite
def scan_cases(draw, shapes=True):
  name = draw(st.sampled_from(sorted(CELLS)))
  cell = CELLS[name]
  bshape = draw(st.sampled_from([(), (2,), (1, 2)])) if shapes else (2,)
  T = draw(st.sampled_from([1, 3]))
  I = draw(st.sampled_from([1, 2])) if shapes else 2
  mag = draw(st.sampled_from([0.1, 1.0, 10.0, 1e3]))
  if name in ("SimpleRNN-relu", "IRNN"):
    mag = min(mag, 10.0)  # an unbounded cell: 1e3 inputs would overflow float32 honestly
  seed = draw(st.integers(0, 2 ** 16))
  xs = mag * np.asarray(jax.random.normal(jax.random.key(seed), bshape + (T, I)), np.float32)
  lengths = None
  if draw(st.booleans()):
    lengths = np.asarray(draw(st.lists(st.integers(0, T), min_size=int(np.prod(bshape)),
                                       max_size=int(np.prod(bshape)))), np.int32).reshape(bshape)
  return dict(name=name, cell=cell, xs=xs, lengths=lengths,
              params=_params(cell, I, seed % 97, draw(st.sampled_from([0.5, 1.0, 3.0]))),
              reverse=draw(st.booleans()), time_major=draw(st.booleans()))


@functools.partial(jax.jit, static_argnames=("cell", "reverse", "impl", "time_major"))
def _scan(cell, params, xs, lengths, *, reverse, impl, time_major):
  if time_major:
    xs = jnp.moveaxis(xs, -2, 0)
  c, ys = rj.scan(cell, params, xs, lengths=lengths, reverse=reverse, impl=impl,
                  time_major=time_major)
  if time_major:
    ys = jnp.moveaxis(ys, 0, -2)
  return jax.tree_util.tree_leaves(c), ys


def _tol(cell):
  return 3e-2 if cell.dtype == jnp.bfloat16 else 2e-4


# ---------------------------------------------------------------------------------------
# scan: values

@fuzz(16)
@given(case=scan_cases(), impl=st.sampled_from(["auto", "reference"]))
def test_scan_matches_numpy(case, impl):
  cell, xs, L = case["cell"], case["xs"], case["lengths"]
  final, ys = _scan(cell, case["params"], xs, L, reverse=case["reverse"], impl=impl,
                    time_major=case["time_major"])
  ref_final, ref_ys = np_scan(cell, case["params"], xs, L, case["reverse"])
  assert np.all(np.isfinite(np.asarray(ys, np.float32))), "NaN/Inf from finite inputs"
  tol = _tol(cell)
  np.testing.assert_allclose(np.asarray(ys, np.float64), ref_ys, rtol=tol, atol=tol)
  for a, b in zip(final, ref_final):
    np.testing.assert_allclose(np.asarray(a, np.float64), b, rtol=tol, atol=tol)


# scan: gradients, reference path vs the default (fused where supported)

@functools.partial(jax.jit, static_argnames=("cell", "reverse", "impl"))
def _grads(cell, params, xs, lengths, w, *, reverse, impl):
  def loss(p, x):
    c, ys = rj.scan(cell, p, x, lengths=lengths, reverse=reverse, impl=impl)
    return jnp.sum(jnp.tanh(ys) * w) + sum(jnp.sum(l * l) for l in jax.tree_util.tree_leaves(c))
  return jax.value_and_grad(loss, argnums=(0, 1))(params, xs)


@fuzz(8)
@given(case=scan_cases(shapes=False))
def test_scan_gradients_reference_vs_auto(case):
  cell, xs, L = case["cell"], case["xs"], case["lengths"]
  w = np.cos(np.arange(np.prod(xs.shape[:-1]) * cell.output_size)).reshape(
      xs.shape[:-1] + (cell.output_size,)).astype(np.float32)
  got = _grads(cell, case["params"], xs, L, w, reverse=case["reverse"], impl="auto")
  ref = _grads(cell, case["params"], xs, L, w, reverse=case["reverse"], impl="reference")
  tol = _tol(cell) * 5
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree_util.tree_leaves(ref)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.isfinite(a)), f"non-finite gradient {jax.tree_util.keystr(path)}"
    scale = max(1.0, np.max(np.abs(b), initial=0.0))
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale,
                               err_msg=jax.tree_util.keystr(path))
  if L is not None:  # padding gets no gradient
    gx = np.asarray(got[1][1])
    pad = np.arange(xs.shape[-2]) >= L[..., None]
    np.testing.assert_array_equal(gx[pad], 0.0)


# ---------------------------------------------------------------------------------------
# scan: bad inputs get a ValueError/TypeError naming the argument, from rnnjax

def _assert_clear_error(fn, argname):
  with pytest.raises((ValueError, TypeError)) as ei:
    fn()
  msg = str(ei.value)
  assert argname in msg, f"the error does not name {argname!r}: {msg}"
  path = str(ei.traceback[-1].path)
  assert "rnnjax" in path and "site-packages/jax" not in path, f"raised from {path}: {msg}"


def _bad_scan_inputs():
  cell = rj.LSTM(H)
  p = _params(cell, 2, 0, 1.0)
  xs = np.ones((2, 3, 2), np.float32)
  return {
      "xs rank 1": (lambda: rj.scan(cell, p, xs[0, 0]), "xs"),
      "xs int": (lambda: rj.scan(cell, p, xs.astype(np.int32)), "xs"),
      "xs list": (lambda: rj.scan(cell, p, xs.tolist()), "xs"),
      "xs feature size": (lambda: rj.scan(cell, p, np.ones((2, 3, 5), np.float32)), "xs"),
      "lengths float": (lambda: rj.scan(cell, p, xs, lengths=np.array([1.5, 2.0])), "lengths"),
      "lengths > T": (lambda: rj.scan(cell, p, xs, lengths=np.array([4, 1])), "lengths"),
      "lengths < 0": (lambda: rj.scan(cell, p, xs, lengths=np.array([-1, 1])), "lengths"),
      "lengths shape": (lambda: rj.scan(cell, p, xs, lengths=np.array([1, 1, 1])), "lengths"),
      "carry array for LSTM": (lambda: rj.scan(cell, p, xs, np.zeros((2, H), np.float32)),
                               "carry"),
      "carry batch": (lambda: rj.scan(cell, p, xs, cell.initial_carry((3,))), "carry"),
      "impl": (lambda: rj.scan(cell, p, xs, impl="cuda"), "impl"),
      "fused Stack": (lambda: rj.scan(rj.Stack([cell]), (p,), xs, impl="fused"), "impl"),
      "input_projection": (lambda: rj.scan(cell, p, xs, input_projection="loop"),
                           "input_projection"),
      "unroll 0": (lambda: rj.scan(cell, p, xs, unroll=0), "unroll"),
      "unroll float": (lambda: rj.scan(cell, p, xs, unroll=1.5), "unroll"),
      "params tuple": (lambda: rj.scan(cell, tuple(p.values()), xs), "params"),
      "last_valid lengths > T": (lambda: rj.last_valid(xs, np.array([4, 0])), "lengths"),
      "last_valid float lengths": (lambda: rj.last_valid(xs, np.array([1.0, 0.0])), "lengths"),
      "Stack dropout": (lambda: rj.Stack([cell], dropout="0.1"), "dropout"),
      "Stack of strings": (lambda: rj.Stack(["lstm"]), "cells[0]"),
      "Stack fewer params": (lambda: rj.Stack([cell, cell]).apply((p,), xs), "params"),
      "Bidirectional no backward": (
          lambda: rj.Bidirectional(cell).apply({"forward": p}, xs), "backward"),
      "SequenceModel dropout": (lambda: rj.SequenceModel([cell], dropout=1.5), "dropout"),
      "Dense params": (lambda: rj.Dense(1).logits((1, 2), xs), "params"),
  }


_BAD = _bad_scan_inputs()


@fuzz(30)
@given(which=st.sampled_from(sorted(_BAD)))
def test_bad_inputs_clear_errors(which):
  fn, argname = _BAD[which]
  _assert_clear_error(fn, argname)


def _core_bad_inputs():
  p = _params(rj.SimpleRNN(H), 2, 0, 1.0)
  xs = np.ones((2, 3, 2), np.float32)
  jp = _params(rj.JordanRNN(H, 3), 2, 0, 1.0)
  return {
      "batch_shape negative": (lambda: rj.GRU(H).initial_carry((-1,)), "batch_shape"),
      "batch_shape float": (lambda: rj.GRU(H).initial_carry((2.5,)), "batch_shape"),
      "param_dtype int": (lambda: rj.LSTM(H, param_dtype=jnp.int32), "param_dtype"),
      "identity_scale str": (lambda: rj.IRNN(H, identity_scale="1"), "identity_scale"),
      "scan(None)": (lambda: rj.scan(None, p, xs), "cell"),
      "scalar bias": (lambda: rj.scan(rj.SimpleRNN(H), {**p, "b": np.float32(0)}, xs), "b"),
      "JordanRNN params to SimpleRNN": (lambda: rj.scan(rj.SimpleRNN(H), jp, xs), "w_h"),
      "GRU reset_after params to reset_before": (
          lambda: rj.scan(rj.GRU(H, reset_after=False), _params(rj.GRU(H), 2, 0, 1.0), xs),
          "b_hn"),
  }


_CORE_BAD = _core_bad_inputs()


@fuzz(10)
@given(which=st.sampled_from(sorted(_CORE_BAD)))
def test_core_bad_inputs(which):
  fn, argname = _CORE_BAD[which]
  _assert_clear_error(fn, argname)


# ---------------------------------------------------------------------------------------
# layers: SequenceModel([cell, Bidirectional(cell2)], Dense) vs the NumPy composition

_LAYER_CELLS = ["SimpleRNN-tanh", "LSTM", "GRU", "JordanRNN", "GRU-reset_before"]


@functools.partial(jax.jit, static_argnums=0)
def _model_apply(model, params, xs, lengths):
  return model.apply(params, xs, lengths=lengths)


@fuzz(6)
@given(a=st.sampled_from(_LAYER_CELLS), b=st.sampled_from(_LAYER_CELLS),
       merge=st.sampled_from(["concat", "sum", "mean"]), seqs=st.booleans(),
       act=st.sampled_from(["identity", "sigmoid", "softmax"]),
       lengths=st.lists(st.integers(0, 3), min_size=2, max_size=2), seed=st.integers(0, 99))
def test_sequence_model_matches_numpy(a, b, merge, seqs, act, lengths, seed):
  ca, cb = CELLS[a], CELLS[b]
  if merge != "concat" and cb.output_size != cb.output_size:
    return
  model = rj.SequenceModel([ca, rj.Bidirectional(cb, merge=merge)], rj.Dense(2, act),
                           return_sequences=seqs)
  params = model.init(jax.random.key(seed), 2)
  xs = np.asarray(jax.random.normal(jax.random.key(seed + 1), (2, 3, 2)), np.float32)
  L = np.asarray(lengths, np.int32)
  got = np.asarray(_model_apply(model, params, xs, L), np.float64)
  _, h1 = np_scan(ca, params["layers"][0], xs, L)
  pb = params["layers"][1]
  _, yf = np_scan(cb, pb["forward"], h1, L)
  _, yb = np_scan(cb, pb["backward"], h1, L, reverse=True)
  h2 = {"concat": np.concatenate([yf, yb], -1), "sum": yf + yb, "mean": 0.5 * (yf + yb)}[merge]
  if not seqs:
    h2 = np.stack([h2[i, L[i] - 1] if L[i] > 0 else np.zeros(h2.shape[-1])
                   for i in range(2)])
  z = h2 @ np.asarray(params["readout"]["w"], np.float64) + np.asarray(params["readout"]["b"])
  if act == "sigmoid":
    z = 1 / (1 + np.exp(-z))
  elif act == "softmax":
    z = np.exp(z - z.max(-1, keepdims=True))
    z = z / z.sum(-1, keepdims=True)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, z, rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------------------------
# losses vs float64 NumPy, stable for huge logits

def _np_masked_mean(v, L):
  if L is None:
    return v.mean()
  m = (np.arange(v.shape[1]) < L[:, None]).reshape(v.shape[:2] + (1,) * (v.ndim - 2))
  m = np.broadcast_to(m, v.shape)
  return v[m].sum() / max(m.sum(), 1)


_LOSS_FNS = {k: jax.jit(getattr(train, k))
             for k in ("mse", "cross_entropy", "binary_cross_entropy")}


@fuzz(25)
@given(kind=st.sampled_from(["mse", "cross_entropy", "binary_cross_entropy"]),
       B=st.just(3), T=st.sampled_from([1, 4]), C=st.sampled_from([1, 3]),
       mag=st.sampled_from([1.0, 30.0, 1e4]), use_len=st.booleans(), seed=st.integers(0, 999))
def test_losses_match_numpy(kind, B, T, C, mag, use_len, seed):
  rng = np.random.default_rng(seed)
  z = (mag * rng.standard_normal((B, T, C))).astype(np.float32)
  L = rng.integers(0, T + 1, B).astype(np.int32) if use_len else None
  z64 = z.astype(np.float64)
  if kind == "mse":
    y = rng.standard_normal((B, T, C)).astype(np.float32)
    got = _LOSS_FNS["mse"](z, y, L)
    ref = _np_masked_mean((z64 - y) ** 2, L)
  elif kind == "cross_entropy":
    y = rng.integers(0, C, (B, T)).astype(np.int32)
    got = _LOSS_FNS["cross_entropy"](z, y, L)
    mx = z64.max(-1, keepdims=True)
    logp = z64 - mx - np.log(np.exp(z64 - mx).sum(-1, keepdims=True))
    ref = _np_masked_mean(-np.take_along_axis(logp, y[..., None], -1)[..., 0], L)
  else:
    y = rng.uniform(0, 1, (B, T, C)).astype(np.float32)
    got = _LOSS_FNS["binary_cross_entropy"](z, y, L)
    ref = _np_masked_mean(np.maximum(z64, 0) - z64 * y + np.log1p(np.exp(-np.abs(z64))), L)
  got = float(got)
  assert np.isfinite(got), "NaN/Inf loss from finite inputs"
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, abs(ref)))


_BAD_LOSS = {
    "logits int": (lambda: train.mse(np.ones((2, 3), np.int32), np.ones((2, 3))), "pred"),
    "target shape": (lambda: train.mse(np.ones((2, 3), np.float32), np.ones((2, 4))), "target"),
    "labels float": (lambda: train.cross_entropy(np.ones((2, 3), np.float32),
                                                 np.zeros(2, np.float32)), "labels"),
    "labels shape": (lambda: train.cross_entropy(np.ones((2, 3), np.float32),
                                                 np.zeros((2, 3), np.int32)), "labels"),
    "bce targets shape": (lambda: train.binary_cross_entropy(np.ones((2, 3), np.float32),
                                                             np.ones(2)), "targets"),
    "lengths float": (lambda: train.mse(np.ones((2, 3, 1), np.float32), np.ones((2, 3, 1)),
                                        np.array([1.0, 2.0])), "lengths"),
    "lengths > T": (lambda: train.mse(np.ones((2, 3, 1), np.float32), np.ones((2, 3, 1)),
                                      np.array([4, 2])), "lengths"),
}


@fuzz(14)
@given(which=st.sampled_from(sorted(_BAD_LOSS)))
def test_bad_loss_inputs_clear_errors(which):
  fn, argname = _BAD_LOSS[which]
  _assert_clear_error(fn, argname)


# ---------------------------------------------------------------------------------------
# diagnostics: exact Jacobian-product norms vs NumPy, verdict contract, degenerate input

def _np_log_jacobian_norms(cell, params, xs, L):
  """``log||dh_{L-1}/dh_i||_2`` for a SimpleRNN, float64: J_t = diag(f'(a_t)) W_h^T."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  fprime = {"tanh": lambda a: 1 - np.tanh(a) ** 2, "relu": lambda a: (a > 0).astype(float)}[
      cell.activation.name]
  out = np.full(xs.shape[:2], np.nan)
  for b in range(xs.shape[0]):
    h = np.zeros(H)
    Js = []
    for t in range(L[b]):
      a = xs[b, t] @ p["w_i"] + h @ p["w_h"] + p["b"]
      Js.append(np.diag(fprime(a)) @ p["w_h"].T)
      h = _ACT[cell.activation.name](a)
    for i in range(L[b]):
      M = np.eye(H)
      for t in range(i + 1, L[b]):
        M = Js[t] @ M
      n = np.linalg.norm(M, 2)
      out[b, i] = np.log(n) if n > 0 else -np.inf
  return out


@fuzz(6)
@given(name=st.sampled_from(["SimpleRNN-tanh", "SimpleRNN-relu"]), T=st.sampled_from([1, 3]),
       lengths=st.lists(st.integers(0, 3), min_size=2, max_size=2),
       scale=st.sampled_from([0.3, 1.0, 4.0]), seed=st.integers(0, 99), nan=st.booleans())
def test_diagnose_contract(name, T, lengths, scale, seed, nan):
  cell = CELLS[name]
  params = _params(cell, 2, seed, scale)
  xs = np.array(jax.random.normal(jax.random.key(seed), (2, T, 2)), np.float32)
  L = np.minimum(np.asarray(lengths, np.int32), T)
  if nan:
    xs[1, T - 1, 0] = np.nan
    _assert_clear_error(lambda: rd.diagnose(cell, params, xs, lengths=L,
                                            with_saturation=False), "xs")
    return
  rep = rd.diagnose(cell, params, xs, lengths=L, with_saturation=False)
  assert rep.verdict in ("vanishing", "exploding", "stable", "undetermined")
  if L.max() < 2:
    assert rep.verdict == "undetermined" and np.isnan(rep.decay_rate)
  else:
    assert rep.verdict != "undetermined", rep.reason
  ref = _np_log_jacobian_norms(cell, params, np.asarray(xs, np.float64), L)
  got = np.asarray(rep.log_jacobian_norms)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
  ok = np.isfinite(ref)
  np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
  np.testing.assert_allclose(got[ok], ref[ok], rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------
# scan with generated arguments, good or bad: the documented result or a clear error

_ARG_CELLS = {"SimpleRNN-tanh": CELLS["SimpleRNN-tanh"], "LSTM": CELLS["LSTM"]}
_ARG_PARAMS = {k: _params(c, 2, 3, 1.0) for k, c in _ARG_CELLS.items()}


@st.composite
def scan_arguments(draw):
  name = draw(st.sampled_from(sorted(_ARG_CELLS)))
  rank = draw(st.sampled_from([0, 1, 2, 3, 3, 3, 4]))
  shape = tuple(draw(st.sampled_from([0, 1, 2, 3])) for _ in range(max(rank - 1, 0)))
  feat = draw(st.sampled_from([2, 2, 2, 1, 3]))
  shape = shape + (feat,) if rank else ()
  dtype = draw(st.sampled_from(["float32", "float32", "float16", "bfloat16", "int32", "bool"]))
  xs = np.asarray(draw(st.integers(0, 99)) % 7 - 3.0 + np.zeros(shape) +
                  np.cos(np.arange(int(np.prod(shape))).reshape(shape)), np.float32)
  xs = jnp.asarray(xs).astype(dtype)
  bshape = shape[:-2] if rank >= 2 else ()
  T = shape[-2] if rank >= 2 else 0
  lengths = None
  kind = draw(st.sampled_from(["none", "none", "good", "range", "float", "shape"]))
  if kind != "none":
    lshape = bshape if kind != "shape" else bshape + (1,)
    lo, hi = (0, T) if kind != "range" else (-2, T + 2)
    vals = np.asarray(draw(st.lists(st.integers(lo, hi), min_size=int(np.prod(lshape)),
                                    max_size=int(np.prod(lshape)))), np.int32).reshape(lshape)
    lengths = vals.astype(np.float32) if kind == "float" else vals
  carry_kind = draw(st.sampled_from(["none", "none", "good", "bad"]))
  return dict(name=name, xs=xs, lengths=lengths, carry_kind=carry_kind, T=T, bshape=bshape,
              reverse=draw(st.booleans()))


def _problems(a):
  """The arguments that are wrong, by the documented contract."""
  xs, L = a["xs"], a["lengths"]
  bad = []
  if xs.ndim < 2 or not jnp.issubdtype(xs.dtype, jnp.floating) or xs.shape[-1] != 2:
    bad.append("xs")
    return bad
  if L is not None and (L.dtype.kind != "i" or L.shape != a["bshape"] or
                        (L.size and (L.min() < 0 or L.max() > a["T"]))):
    bad.append("lengths")
  if a["carry_kind"] == "bad":
    bad.append("carry")
  return bad


@fuzz(30)
@given(a=scan_arguments())
def test_scan_generated_arguments(a):
  cell, params = _ARG_CELLS[a["name"]], _ARG_PARAMS[a["name"]]
  bad = _problems(a)
  carry = None
  if a["carry_kind"] != "none":
    extra = (1,) if a["carry_kind"] == "bad" else ()
    carry = cell.initial_carry(a["bshape"] + extra)
  call = lambda: rj.scan(cell, params, a["xs"], carry, lengths=a["lengths"],
                         reverse=a["reverse"])
  if bad:
    with pytest.raises((ValueError, TypeError)) as ei:
      call()
    msg = str(ei.value)
    assert any(b in msg for b in bad), f"the error names none of {bad}: {msg}"
    assert "rnnjax" in str(ei.traceback[-1].path), f"raised from {ei.traceback[-1].path}"
    return
  final, ys = call()
  xs64 = np.asarray(a["xs"].astype(jnp.float32), np.float64)
  ref_final, ref_ys = np_scan(cell, params, xs64, a["lengths"], a["reverse"])
  assert ys.shape == ref_ys.shape
  assert np.all(np.isfinite(np.asarray(ys, np.float32)))
  np.testing.assert_allclose(np.asarray(ys, np.float64), ref_ys, rtol=1e-4, atol=1e-4)
  for x, r in zip(jax.tree_util.tree_leaves(final), ref_final):
    np.testing.assert_allclose(np.asarray(x, np.float64), r.reshape(np.shape(x)),
                               rtol=1e-4, atol=1e-4)
