"""rnnjax.train.fit's hooks: array data, callbacks, writers, compile cache, bad input.

One tiny model and one optimizer configuration are shared by most tests, so
the jitted step compiles once for the file (the cache compares optimizers by
value). Closed-form checks use a plain least-squares loss_fn.
"""
import csv
import json
import math
import os
import struct
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax as rj
from rnnjax import train

_MODEL = rj.SequenceModel([rj.SimpleRNN(8)], rj.Dense(1, "sigmoid"))


def _opt():
  return train.optimizer("adam", 1e-2)  # a fresh but equal optimizer every time


def _arrays(n=96, seed=0):
  b = train.sequence_classification(n, length=8, features=3, seed=seed)
  return b.x, b.y, b.lengths


# ----------------------------------------------------------------------------- compile cache


def test_equal_optimizers_compile_the_step_once():
  assert _opt() == _opt() and hash(_opt()) == hash(_opt())
  assert _opt() != train.optimizer("adam", 2e-2) and _opt() != train.optimizer("sgd", 1e-2)
  traces = []

  def loss_fn(p, batch, key):
    traces.append(isinstance(p, jax.core.Tracer))
    return jnp.mean((batch[0] @ p - batch[1]) ** 2)

  A = np.ones((4, 2), np.float32)
  data = lambda i: (A, np.ones(4, np.float32))  # noqa: E731
  train.fit(loss_fn, jnp.zeros(2), data, optimizer=_opt(), steps=2)
  n1 = len(traces)  # one abstract check of the first batch + one jit trace
  train.fit(loss_fn, jnp.zeros(2), data, optimizer=_opt(), steps=2)
  assert len(traces) - n1 == 1  # only the abstract batch check: the step is not traced again
  train.fit(loss_fn, jnp.zeros(2), data, optimizer=train.optimizer("adam", 2e-2), steps=2)
  assert len(traces) - n1 == 3  # another configuration: traced (and compiled) again
  from rnnjax.train._sharding import DataParallel
  from rnnjax.train._step import compiled
  step, _ = compiled(loss_fn, _opt(), DataParallel(None))
  assert step._cache_size() == 1


# ----------------------------------------------------------------------------- array data


@pytest.mark.slow
def test_array_data_epochs_shuffle_validation_split_keras_style():
  X, Y, L = _arrays()
  params = _MODEL.init(jax.random.key(0), input_size=3)
  kw = dict(loss="binary_cross_entropy", optimizer=_opt(), epochs=3, batch_size=16,
            validation_split=0.25)
  res = train.fit(_MODEL, params, (X, Y, L), **kw)
  # 72 training samples -> 4 batches of 16 per epoch (8 left over), 3 epochs.
  assert res.step == 12 and len(res.history) == 12
  assert [h["step"] for h in res.history if "eval_loss" in h] == [4, 8, 12]
  # The held-out samples are the last 24, before shuffling (Keras).
  ev = train.evaluate(_MODEL, res.params, (X[72:], Y[72:], L[72:]), loss="binary_cross_entropy")
  assert ev["loss"] == pytest.approx(res.history[-1]["eval_loss"], rel=1e-5)
  assert ev["accuracy"] == pytest.approx(res.history[-1]["eval_accuracy"], abs=1e-6)
  # Batch 5 (epoch 1, second batch) is rows perm[16:32] of the first 72, perm from the seed.
  perm = np.random.default_rng([0, 1]).permutation(72)
  ad = train.ArrayData((X, Y, L), batch_size=16, seed=0, validation_split=0.25)
  b = ad(5)
  np.testing.assert_array_equal(b.x, X[perm[16:32]])
  np.testing.assert_array_equal(b.lengths, L[perm[16:32]])
  # The first update's loss is the loss of params on batch 0 (independent evaluate).
  b0 = ad(0)
  e0 = train.evaluate(_MODEL, params, b0, loss="binary_cross_entropy")
  assert res.history[0]["loss"] == pytest.approx(e0["loss"], rel=1e-5)
  # Reproducible: same seed, same run; another seed shuffles differently.
  again = train.fit(_MODEL, params, (X, Y, L), **kw)
  assert again.history == res.history
  other = train.fit(_MODEL, params, (X, Y, L), seed=1, **kw)
  assert other.history[1]["loss"] != res.history[1]["loss"]
  # Unshuffled: 96 samples, 6 batches per epoch; batch 4 is rows 64..79, batch 6 rows 0..15.
  unshuffled = train.ArrayData((X, Y), batch_size=16, shuffle=False)
  np.testing.assert_array_equal(unshuffled(4).x, X[64:80])
  np.testing.assert_array_equal(unshuffled(6).y, Y[0:16])


def test_evaluate_and_predict_match_the_model():
  X, Y, L = _arrays(40, seed=3)
  params = _MODEL.init(jax.random.key(1), input_size=3)
  probs = np.asarray(_MODEL.apply(params, jnp.asarray(X), lengths=jnp.asarray(L)), np.float64)
  pred = train.predict(_MODEL, params, X, lengths=L, batch_size=16)  # chunks of 16, 16, 8
  np.testing.assert_allclose(pred, probs, rtol=1e-5, atol=1e-6)
  p = np.clip(probs, 1e-12, 1 - 1e-12)
  bce = np.mean(-(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
  ev = train.evaluate(_MODEL, params, (X, Y, L), loss="binary_cross_entropy", batch_size=20)
  assert ev["loss"] == pytest.approx(bce, rel=1e-4)
  assert ev["accuracy"] == pytest.approx(np.mean((probs > 0.5) == (Y > 0.5)), abs=1e-6)


# ----------------------------------------------------------------------------- callbacks

# Least squares in one parameter: train data pulls w to 2, the eval loss
# (w - 1)^2 is lowest at w = 1. SGD: w_k = 2 (1 - (1 - 2 lr)^k).
_LR = 0.1


def _ls_loss(p, batch, key):
  del key
  return jnp.mean((p - batch) ** 2)


def _ls_w(k, scale=None):
  w = 0.0
  for j in range(k):
    w -= _LR * (1.0 if scale is None else scale[j]) * 2 * (w - 2.0)
  return w


def test_early_stopping_stops_after_patience_and_restores_the_best_params():
  es = train.EarlyStopping("eval_loss", patience=2, restore_best=True)
  res = train.fit(_ls_loss, jnp.float32(0.0), lambda i: jnp.full((2,), 2.0),
                  optimizer=optax.sgd(_LR), steps=50, eval_data=jnp.ones((2,)), eval_every=1,
                  callbacks=[es])
  ws = [_ls_w(k) for k in range(1, 51)]
  evals = [(w - 1) ** 2 for w in ws]
  best = int(np.argmin(evals))  # 0-based update index; w crosses 1 there
  assert es.best_step == best + 1 and es.stopped_step == best + 3
  assert res.step == best + 3 and res.stopped_early and len(res.history) == best + 3
  assert float(res.params) == pytest.approx(ws[best], rel=1e-5)
  assert es.best == pytest.approx(evals[best], rel=1e-4)
  with pytest.raises(ValueError, match=r"EarlyStopping\(monitor='eval_loss'\) needs evaluation"):
    train.fit(_ls_loss, jnp.float32(0.0), lambda i: jnp.full((2,), 2.0),
              optimizer=optax.sgd(_LR), steps=2, callbacks=[train.EarlyStopping()])


@pytest.mark.slow
def test_reduce_lr_on_plateau_follows_optax_contrib_and_scales_the_updates():
  # The monitored aux metric is constant: a plateau from the start.
  def loss_fn(p, batch, key):
    return _ls_loss(p, batch, key), {"flat": jnp.float32(1.0)}

  cb = train.ReduceLROnPlateau("flat", factor=0.5, patience=2, cooldown=0)
  res = train.fit(loss_fn, jnp.float32(0.0), lambda i: jnp.full((2,), 2.0),
                  optimizer=optax.sgd(_LR), steps=12, callbacks=[cb])
  # Reference: the same optax transformation fed the same values.
  tx = optax.contrib.reduce_on_plateau(factor=0.5, patience=2, cooldown=0)
  with jax.numpy_dtype_promotion("standard"):  # optax mixes floats and int32 counters
    st, scales = tx.init({}), []
    for _ in range(12):
      scales.append(float(st.scale))  # the scale update k used
      _, st = tx.update({}, st, value=jnp.float32(1.0))
  assert min(scales) < 0.2  # it did reduce, several times
  assert res.metric("lr_scale").tolist() == pytest.approx(scales)
  assert float(res.params) == pytest.approx(_ls_w(12, scales), rel=1e-5)
  assert cb.scale == pytest.approx(float(st.scale))


def test_user_callback_protocol_sees_every_step_eval_and_end():
  calls = []

  class Recorder(train.Callback):
    def on_step_end(self, loop, step, metrics):
      calls.append(("step", step, dict(metrics), float(loop.state.params)))

    def on_eval_end(self, loop, step, metrics):
      calls.append(("eval", step, metrics["eval_loss"]))
      if step == 4:
        loop.stop_training = True

    def on_fit_end(self, loop, history):
      calls.append(("end", len(history)))

  res = train.fit(_ls_loss, jnp.float32(0.0), lambda i: jnp.full((2,), 2.0),
                  optimizer=optax.sgd(_LR), steps=10, eval_data=jnp.ones((2,)), eval_every=2,
                  callbacks=[Recorder()])
  steps = [c for c in calls if c[0] == "step"]
  assert [c[1] for c in steps] == [1, 2, 3, 4] and res.step == 4
  assert [c[2] for c in steps] == res.history
  for c in steps:  # loop.state is the state right after that update
    assert c[3] == pytest.approx(_ls_w(c[1]), rel=1e-6)
  evals = [c for c in calls if c[0] == "eval"]
  assert [c[1] for c in evals] == [2, 4]
  assert evals[1][2] == pytest.approx((_ls_w(4) - 1) ** 2, rel=1e-5)
  assert calls[-1] == ("end", 4)
  with pytest.raises(TypeError, match="callbacks must be rnnjax.train.Callback"):
    train.fit(_ls_loss, jnp.float32(0.0), lambda i: jnp.ones(2), optimizer=optax.sgd(_LR),
              steps=1, callbacks=[lambda *a: None])


# ----------------------------------------------------------------------------- writers, NaN


def _tb_scalars(logdir):
  """Scalars of tensorboardX event files, read with the TFRecord framing by hand."""
  from tensorboardX.proto import event_pb2
  out = {}
  for name in sorted(os.listdir(logdir)):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      for v in ev.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, {})[ev.step] = v.simple_value
  return out


def test_nan_gradients_are_reported_and_every_writer_is_valid(tmp_path):
  # Update 1 sees a NaN in its batch: loss and grad_norm NaN (never 0), step skipped.
  # Update 2 sees an inf: loss inf, gradient 2/3 (p - y) has one -inf entry: norm inf.
  def loss_fn(p, batch, key):
    return jnp.mean((p - batch) ** 2)

  def data(i):
    y = np.ones(3, np.float32)
    if i == 1:
      y[0] = np.nan
    if i == 2:
      y[0] = np.inf
    return y

  res = train.fit(loss_fn, jnp.zeros(3), data, optimizer=optax.sgd(0.1), steps=4,
                  jsonl=tmp_path / "m.jsonl",
                  writers=[tmp_path / "m.csv", train.TensorBoardWriter(tmp_path / "tb")])
  h = res.history
  assert math.isnan(h[1]["grad_norm"]) and math.isnan(h[1]["loss"])
  assert h[2]["grad_norm"] == math.inf and h[2]["loss"] == math.inf
  assert [e["skipped"] for e in h] == [0, 1, 2, 2]
  lines = (tmp_path / "m.jsonl").read_text().splitlines()

  def no_constants(c):
    raise AssertionError(f"invalid JSON constant {c}")
  parsed = [json.loads(line, parse_constant=no_constants) for line in lines]  # strict JSON
  assert parsed[1]["grad_norm"] is None and parsed[2]["grad_norm"] == "Infinity"
  back = train.read_jsonl(tmp_path / "m.jsonl")
  assert math.isnan(back[1]["loss"]) and back[2]["loss"] == math.inf
  assert back[0] == h[0] and back[3] == h[3]
  with open(tmp_path / "m.csv") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
  assert math.isnan(float(rows[1]["grad_norm"])) and float(rows[2]["loss"]) == math.inf
  assert float(rows[3]["loss"]) == pytest.approx(h[3]["loss"], rel=1e-6)
  tb = _tb_scalars(tmp_path / "tb")
  assert sorted(tb["loss"]) == [1, 2, 3, 4]
  assert tb["grad_norm"][1] == pytest.approx(h[0]["grad_norm"], rel=1e-6)
  assert math.isnan(tb["grad_norm"][2])
  # gradient_stats and global_norm report the same NaN / inf, per leaf too.
  g = {"a": jnp.array([1.0, jnp.nan]), "b": jnp.array([3.0, 4.0]), "c": jnp.array([jnp.inf])}
  st = train.gradient_stats(g, clip_norm=1.0)
  assert math.isnan(st["global_norm"]) and math.isnan(st["norms"]["a"])
  assert float(st["norms"]["b"]) == 5.0 and float(st["norms"]["c"]) == math.inf
  assert float(train.global_norm({"b": g["b"], "c": g["c"]})) == math.inf
  assert float(train.global_norm(jnp.zeros(3))) == 0.0


# ----------------------------------------------------------------------------- bad input


def test_out_of_range_labels_and_targets_are_clear_errors():
  logits = jnp.zeros((2, 3))
  for bad in (3, -1):
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\)"):
      train.cross_entropy(logits, jnp.array([0, bad]))
  for bad in (1.5, -0.1):
    with pytest.raises(ValueError, match=r"targets of binary_cross_entropy must be in \[0, 1\]"):
      train.binary_cross_entropy(jnp.zeros((2, 1)), jnp.array([[0.0], [bad]]))
  # The values come from optax.losses; compare with the closed forms.
  z = jnp.array([[2.0, -1.0, 0.5]])
  ref = -(2.0 - np.log(np.exp(2.0) + np.exp(-1.0) + np.exp(0.5)))
  assert float(train.cross_entropy(z, jnp.array([0]))) == pytest.approx(ref, rel=1e-6)
  # Under fit: the first batch with a bad label fails before its update, naming the data.
  model = rj.SequenceModel([rj.SimpleRNN(8)], rj.Dense(3))
  params = model.init(jax.random.key(0), input_size=3)
  X = np.zeros((4, 5, 3), np.float32)
  with pytest.raises(ValueError, match=r"labels \(y\) of the batch data\(0\).*\[0, 3\).*got 3"):
    train.fit(model, params, lambda i: (X, np.array([0, 1, 2, 3])), loss="cross_entropy",
              optimizer=_opt(), steps=1)
  with pytest.raises(ValueError, match=r"targets \(y\) of the batch data\(0\)"):
    train.fit(_MODEL, _MODEL.init(jax.random.key(0), input_size=3),
              lambda i: (X, np.array([[0.0], [1.0], [2.0], [0.0]], np.float32)),
              loss="binary_cross_entropy", optimizer=_opt(), steps=1)


def test_fit_rejects_none_params_duplicate_devices_and_mixed_data_options():
  X, Y, L = _arrays(32)
  with pytest.raises(TypeError, match="params must be a non-empty pytree"):
    train.fit(_MODEL, None, (X, Y), loss="binary_cross_entropy", optimizer=_opt())
  d = jax.devices()[0]
  params = _MODEL.init(jax.random.key(0), input_size=3)
  with pytest.raises(ValueError, match="devices lists the same device more than once"):
    train.fit(_MODEL, params, (X, Y), loss="binary_cross_entropy", optimizer=_opt(),
              devices=[d, d])
  with pytest.raises(ValueError, match="either epochs= or steps="):
    train.fit(_MODEL, params, (X, Y), loss="binary_cross_entropy", optimizer=_opt(),
              epochs=1, steps=3)
  with pytest.raises(ValueError, match="epochs= needs in-memory array data"):
    train.fit(_MODEL, params, lambda i: (X, Y), loss="binary_cross_entropy", optimizer=_opt(),
              epochs=1)
  with pytest.raises(ValueError, match=r"validation_split must be in \(0, 1\)"):
    train.fit(_MODEL, params, (X, Y), loss="binary_cross_entropy", optimizer=_opt(),
              validation_split=1.5)
  with pytest.raises(ValueError, match="same number of samples"):
    train.fit(_MODEL, params, (X, Y[:5]), loss="binary_cross_entropy", optimizer=_opt())


def test_resuming_past_the_requested_steps_warns(tmp_path):
  data = lambda i: jnp.full((2,), 2.0)  # noqa: E731
  train.fit(_ls_loss, jnp.float32(0.0), data, optimizer=optax.sgd(_LR), steps=3,
            checkpoint_dir=tmp_path / "c")
  with pytest.warns(RuntimeWarning, match=r"at step 3, past steps=2: nothing is trained"):
    res = train.fit(_ls_loss, jnp.float32(0.0), data, optimizer=optax.sgd(_LR), steps=2,
                    checkpoint_dir=tmp_path / "c", resume=True)
  assert res.step == 3 and len(res.history) == 3
  assert float(res.params) == pytest.approx(_ls_w(3), rel=1e-6)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # equal: quiet
    train.fit(_ls_loss, jnp.float32(0.0), data, optimizer=optax.sgd(_LR), steps=3,
              checkpoint_dir=tmp_path / "c", resume=True)
