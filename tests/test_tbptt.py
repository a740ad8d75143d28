"""Truncated BPTT: fit(..., tbptt=K) and rnnjax.train._tbptt against hand-written references.

The reference runs the Elman recurrence h_t = tanh(x_t U + h_{t-1} W + b) step by step in
float64 NumPy (lengths freeze h past a sequence's end), backpropagates each chunk's masked
MSE by hand with the incoming carry as a constant (the stop_gradient of truncation), and
applies SGD-with-momentum updates one chunk at a time. No JAX autodiff, no optax.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax as rj
from rnnjax import train
from rnnjax.train import _tbptt

# One model and one optimizer object for the fit tests: fits with equal (loss, optimizer,
# tbptt) reuse one compiled step.
_M = rj.SequenceModel([rj.SimpleRNN(4)], rj.Dense(1), return_sequences=True)
_TX = optax.sgd(0.1, momentum=0.9)
_LENGTHS = {0: [7, 5, 2], 1: [5, 2, 4], 2: [7, 7, 1], 3: [3, 6, 7]}


def _data(i):
  """x [3, 7, 2], y [3, 7, 1], lengths; at i = 1 no sequence reaches the third chunk of K=3."""
  rng = np.random.default_rng(100 + i)
  x = rng.standard_normal((3, 7, 2)).astype(np.float32)
  y = np.sin(np.cumsum(x[..., :1], axis=1)).astype(np.float32)
  return train.Batch(x, y, np.array(_LENGTHS[i], np.int32))


def _elman_chunk(p, h0, x, y, lc):
  """Float64 NumPy: masked MSE of one chunk from the carry h0 (a constant), its gradient by
  hand-written backpropagation within the chunk, and the carry at the chunk end."""
  U, W, b = p["w_i"], p["w_h"], p["b"]
  wo, bo = p["w_o"], p["b_o"]
  L = x.shape[1]
  m = np.arange(L)[None, :] < lc[:, None]  # [B, L]
  count = max(int(m.sum()), 1)
  h, tape, loss = h0, [], 0.0
  for t in range(L):
    hn = np.tanh(x[:, t] @ U + h @ W + b)
    h_prev, h = h, np.where(m[:, t, None], hn, h)  # past its length a sequence's h is frozen
    r = (h @ wo + bo) - y[:, t]
    loss += float(np.sum(m[:, t, None] * r ** 2)) / count
    tape.append((h_prev, hn, h, 2 * m[:, t, None] * r / count))
  g = {k: np.zeros_like(v) for k, v in p.items()}
  dh = np.zeros_like(h0)
  for t in reversed(range(L)):
    h_prev, hn, h_t, dpred = tape[t]
    g["w_o"] += h_t.T @ dpred
    g["b_o"] += dpred.sum(0)
    dh = dh + dpred @ wo.T
    da = np.where(m[:, t, None], dh, 0.0) * (1 - hn ** 2)
    g["w_i"] += x[:, t].T @ da
    g["w_h"] += h_prev.T @ da
    g["b"] += da.sum(0)
    dh = np.where(m[:, t, None], da @ W.T, dh)  # d h_{t-1}; dropped at the chunk start
  return loss, g, h


def _reference_fit(params, steps, K, lr, momentum, data=None):
  """Hand-written TBPTT(K, K) with SGD + momentum (optax.sgd's trace: v = g + mu v,
  p -= lr v) in float64: the history losses, update counts and the final params."""
  p = {"w_i": params["layers"][0]["w_i"], "w_h": params["layers"][0]["w_h"],
       "b": params["layers"][0]["b"], "w_o": params["readout"]["w"], "b_o": params["readout"]["b"]}
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  v = {k: np.zeros_like(a) for k, a in p.items()}
  losses, counts = [], []
  for i in range(steps):
    bt = (data or _data)(i)
    x, y, lengths = (np.asarray(a, np.float64) for a in (bt.x, bt.y, bt.lengths))
    h = np.zeros((x.shape[0], p["w_h"].shape[0]))
    chunk_losses = []
    for s in range(0, x.shape[1], K):
      lc = np.clip(lengths - s, 0, K)
      loss, g, h = _elman_chunk(p, h, x[:, s:s + K], y[:, s:s + K], lc)
      if lc.sum() > 0:  # a chunk without a valid step makes no update
        for k in p:
          v[k] = g[k] + momentum * v[k]
          p[k] = p[k] - lr * v[k]
        chunk_losses.append(loss)
    losses.append(np.mean(chunk_losses))
    counts.append(len(chunk_losses))
  return losses, counts, p


def _as_ref(params):
  return {"w_i": params["layers"][0]["w_i"], "w_h": params["layers"][0]["w_h"],
          "b": params["layers"][0]["b"], "w_o": params["readout"]["w"], "b_o": params["readout"]["b"]}


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_fit_tbptt_equals_hand_written_chunked_updates():
  params = _M.init(jax.random.key(0), 2)
  res = train.fit(_M, params, _data, loss="mse", optimizer=_TX, steps=2, tbptt=3)
  losses, counts, ref = _reference_fit(params, 2, 3, 0.1, 0.9)
  # T = 7, K = 3: chunks of 3, 3 and 1 steps; at step 2 the last chunk has no valid step.
  assert [h["updates"] for h in res.history] == counts == [3, 2]
  assert res.step == 2 and res.skipped == 0
  np.testing.assert_allclose(res.metric("loss"), losses, rtol=1e-5)
  for k, a in _as_ref(res.params).items():
    np.testing.assert_allclose(a, ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # Truncation matters (so the comparison above could fail): full BPTT (K = 7) differs.
  _, _, full = _reference_fit(params, 2, 7, 0.1, 0.9)
  assert max(np.max(np.abs(full[k] - ref[k])) for k in ref) > 1e-2


@pytest.mark.slow
def test_fit_tbptt_with_K_at_least_T_equals_full_bptt_fit():
  # Two layers with dropout and cross-entropy: the chunk loss, the dropout keys and the
  # update are those of ordinary fit.
  model = rj.SequenceModel([rj.SimpleRNN(4), rj.GRU(3)], rj.Dense(3), return_sequences=True,
                           dropout=0.3)
  params = model.init(jax.random.key(1), 2)
  tx = train.optimizer("adam", 0.05, clip_norm=0.5)

  def data(i):
    b = _data(i)
    return train.Batch(b.x, (np.abs(b.y[..., 0]) * 3).astype(np.int32) % 3, b.lengths)

  kw = dict(loss="cross_entropy", optimizer=tx, steps=2, seed=jax.random.key(5, impl="rbg"),
            eval_data=data(3), eval_every=1)
  full = train.fit(model, params, data, **kw)
  trunc = train.fit(model, params, data, tbptt=8, **kw)
  assert [h.pop("updates") for h in trunc.history] == [1, 1]
  assert trunc.history == full.history and "eval_accuracy" in trunc.history[0]
  for a, b in zip(_leaves((trunc.params, trunc.opt_state)), _leaves((full.params, full.opt_state))):
    np.testing.assert_array_equal(a, b)


def test_fit_tbptt_resume_equals_uninterrupted(tmp_path):
  params = _M.init(jax.random.key(0), 2)
  # A callback with a state (saved in the checkpoints) watching the chunk-mean loss.
  stop = lambda: [train.EarlyStopping("loss", patience=10)]  # noqa: E731
  kw = dict(loss="mse", optimizer=_TX, tbptt=3, checkpoint_every=2)
  full = train.fit(_M, params, _data, steps=4, checkpoint_dir=tmp_path / "a", callbacks=stop(), **kw)
  part = train.fit(_M, params, _data, steps=2, checkpoint_dir=tmp_path / "b", callbacks=stop(), **kw)
  assert part.history == full.history[:2]
  resumed = train.fit(_M, params, _data, steps=4, checkpoint_dir=tmp_path / "b", resume=True,
                      callbacks=stop(), **kw)
  assert resumed.history == full.history
  assert [h["updates"] for h in full.history] == [3, 2, 3, 3]
  for a, b in zip(_leaves((resumed.params, resumed.opt_state)), _leaves((full.params, full.opt_state))):
    np.testing.assert_array_equal(a, b)


def _shapes(model):  # params as shapes: every error below comes before any computation
  return jax.eval_shape(lambda k: model.init(k, 2), jax.random.key(0))


def test_fit_tbptt_rejects_bad_arguments():
  params = _shapes(_M)
  kw = dict(loss="mse", optimizer=_TX, steps=1)
  for bad in (0, -3):
    with pytest.raises(ValueError, match="tbptt must be a positive int"):
      train.fit(_M, params, _data, tbptt=bad, **kw)
  for bad in (2.5, True, "3"):
    with pytest.raises(TypeError, match="tbptt must be a positive int"):
      train.fit(_M, params, _data, tbptt=bad, **kw)
  with pytest.raises(ValueError, match="tbptt needs fit\\(model"):
    train.fit(lambda p, b, k: jnp.sum(p), jnp.zeros(2), _data, optimizer=_TX, steps=1, tbptt=2)
  last = rj.SequenceModel([rj.SimpleRNN(4)], rj.Dense(1))
  with pytest.raises(ValueError, match="return_sequences=True"):
    train.fit(last, _shapes(last), _data, tbptt=2, **kw)
  bi = rj.SequenceModel([rj.Bidirectional(rj.GRU(2), rj.GRU(2))], rj.Dense(1), return_sequences=True)
  with pytest.raises(ValueError, match="Bidirectional"):
    train.fit(bi, _shapes(bi), _data, tbptt=2, **kw)
  with pytest.raises(ValueError, match="recurrent rnnjax.SequenceModel"):
    _tbptt.chunk_model_loss(rj.Stack([rj.GRU(2)]))
  with pytest.raises(ValueError, match="tbptt"):
    _tbptt.make_tbptt_step(_tbptt.chunk_model_loss(_M), optax.sgd(0.1), 0, None)


@pytest.mark.slow
def test_make_tbptt_step_matches_chunked_reference_with_ragged_last_chunk():
  params = _M.init(jax.random.key(0), 2)
  opt = optax.sgd(0.1)
  loss_fn = _tbptt.chunk_model_loss(_M, "mse")
  step = _tbptt.make_tbptt_step(loss_fn, opt, 3, loss_fn.initial_carry)
  new, _, m = step(params, opt.init(params), _data(0), None)
  losses, counts, ref = _reference_fit(params, 1, 3, 0.1, 0.0)
  assert m["chunk_loss"].shape == (3,) and int(m["updates"]) == counts[0] == 3
  assert float(m["loss"]) == pytest.approx(losses[0], rel=1e-5)
  for k, a in _as_ref(new).items():
    np.testing.assert_allclose(a, ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # Without lengths: the ragged last chunk (1 of 7 steps) is padded and masked all the same.
  b = _data(2)
  new, _, m = step(params, opt.init(params), (b.x, b.y), None)
  full = lambda i: train.Batch(b.x, b.y, np.full(3, 7, np.int32))  # noqa: E731
  losses, _, ref = _reference_fit(params, 1, 3, 0.1, 0.0, data=full)
  assert int(m["updates"]) == 3 and float(m["loss"]) == pytest.approx(losses[0], rel=1e-5)
  for k, a in _as_ref(new).items():
    np.testing.assert_allclose(a, ref[k], rtol=1e-4, atol=1e-6, err_msg=k)


@pytest.mark.slow
def test_fit_tbptt_learns_a_delayed_copy():
  """y_t = x_{t-1}: within reach of K=4, so TBPTT training must drive the loss down."""
  model = rj.SequenceModel([rj.GRU(8)], rj.Dense(1), return_sequences=True)
  params = model.init(jax.random.key(0), 1)
  x = jax.random.normal(jax.random.key(1), (16, 24, 1))
  y = jnp.concatenate([jnp.zeros((16, 1, 1)), x[:, :-1]], axis=1)
  params, hist = _tbptt.fit_tbptt(model, params, (x, y), optimizer=train.optimizer("adam", 0.03),
                                  steps=30, tbptt=4)
  assert hist[0]["updates"] == 6
  assert hist[-1]["loss"] < 0.2 * hist[0]["loss"], (hist[0], hist[-1])


_SHARDED = textwrap.dedent("""
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, numpy as np
    import rnnjax as rj
    from rnnjax import train
    assert jax.device_count() == 2, jax.devices()
    model = rj.SequenceModel([rj.GRU(4)], rj.Dense(1), return_sequences=True)
    params = model.init(jax.random.key(0), input_size=1)
    tx = train.optimizer("adam", 1e-2)
    def data(i):
      x = np.random.default_rng(i).standard_normal((4, 10, 1)).astype(np.float32)
      return x, np.roll(x, 1, axis=1), np.array([10, 7, 4, 9], np.int32)
    out = {}
    for name, devices in (("two", None), ("one", jax.devices()[:1])):
      res = train.fit(model, params, data, loss="mse", optimizer=tx, steps=3, tbptt=4,
                      devices=devices)
      out[name] = {"loss": res.metric("loss").tolist(), "updates": res.metric("updates").tolist(),
                   "w_h": np.asarray(res.params["layers"][0]["w_h"]).tolist()}
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_fit_tbptt_data_parallel_equals_single_device():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert out["two"]["updates"] == out["one"]["updates"] == [3.0, 3.0, 3.0]
  np.testing.assert_allclose(out["two"]["loss"], out["one"]["loss"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(out["two"]["w_h"], out["one"]["w_h"], rtol=1e-4, atol=1e-6)
