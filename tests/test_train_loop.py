"""rnnjax.train.fit: it learns the tasks, exploding gradients, resume, bad input.

Each learning test asserts a held-out number against the task's documented
baseline (ln 2, 1/6, 1/2); the exploding test compares SGD with and without
clip_norm on the same ReLU network.
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax as rj
from rnnjax import train


def test_demo_binary_addition_reaches_100_percent_on_held_out_sums():
  from rnnjax import _demo
  res = _demo.binary_addition(steps=500, verbose=False)
  assert res["accuracy"] == 1.0  # every bit of 1,000 fresh sums (chance: 2^-8)
  h = res["history"]
  assert len(h) == 500 and h[0]["loss"] > 0.6 and h[-1]["loss"] < 0.02  # from ~ln 2
  assert h[-1]["skipped"] == 0 and not any(e["clipped"] for e in h)


def test_lstm_beats_the_adding_problem_baseline_tenfold():
  T = 50
  model = rj.SequenceModel([rj.LSTM(32)], rj.Dense(1))
  params = model.init(jax.random.key(0), input_size=2)
  test = train.adding_problem(1000, length=T, seed=10**6)
  res = train.fit(model, params, lambda i: train.adding_problem(64, length=T, seed=(0, i)),
                  loss="mse", optimizer=train.optimizer("adam", 1e-2, clip_norm=1.0),
                  steps=600, eval_data=test, eval_every=200)
  evals = [h["eval_loss"] for h in res.history if "eval_loss" in h]
  assert len(evals) == 3
  assert evals[0] > 0.05  # still near the 1/6 plateau after 200 steps
  assert res.history[-1]["eval_loss"] < (1 / 6) / 10  # MSE < 0.0167 on 1,000 fresh sequences
  pred = model.apply(res.params, jnp.asarray(test.x))
  assert float(np.mean((np.asarray(pred) - test.y) ** 2)) == pytest.approx(evals[-1], rel=1e-4)


def test_seed_002_keras_model_trains_on_separable_classification():
  # Keras: SimpleRNN(16, activation="relu") -> Dense(1, activation="sigmoid"),
  # optimizer="adam", loss="binary_crossentropy"; variable lengths, masked.
  model = rj.SequenceModel([rj.SimpleRNN(16, "relu")], rj.Dense(1, "sigmoid"))
  params = model.init(jax.random.key(1), input_size=4)
  test = train.sequence_classification(1000, length=20, features=4, seed=10**6)
  res = train.fit(model, params,
                  lambda i: train.sequence_classification(32, length=20, features=4, seed=(1, i)),
                  loss="binary_cross_entropy", optimizer=train.optimizer("adam", 1e-2),
                  steps=150, eval_data=test)
  last = res.history[-1]
  assert last["eval_loss"] < 0.1 * np.log(2)  # baseline: ln 2
  assert last["eval_accuracy"] > 0.97  # baseline 1/2; Bayes > 0.999
  probs = np.asarray(model.apply(res.params, jnp.asarray(test.x), lengths=jnp.asarray(test.lengths)))
  assert np.mean((probs > 0.5) == (test.y > 0.5)) == pytest.approx(last["eval_accuracy"], abs=1e-6)


def test_exploding_relu_rnn_diverges_with_sgd_and_clip_norm_tames_it():
  # h_t = relu(x_t W + h_{t-1} (1.2 I) + b): over T = 40 steps the backward
  # pass multiplies by up to 1.2^40 ~ 1.5e3 per direction; the first gradient
  # norm is ~4e4: huge but finite.
  model = rj.SequenceModel([rj.IRNN(16, identity_scale=1.2)], rj.Dense(1))
  params = model.init(jax.random.key(0), input_size=2)
  data = lambda i: train.adding_problem(32, length=40, seed=(1, i))  # noqa: E731
  plain = train.fit(model, params, data, loss="mse", optimizer=train.optimizer("sgd", 1e-2),
                    steps=60)
  clipped = train.fit(model, params, data, loss="mse",
                      optimizer=train.optimizer("sgd", 1e-2, clip_norm=1.0), steps=60)
  l0 = plain.history[0]["loss"]
  assert clipped.history[0]["loss"] == l0 and 1 < l0 < 100
  g0 = plain.history[0]["grad_norm"]
  assert 1e3 < g0 < 1e8
  # Without clipping: one step of size lr * ||g|| ~ 400 throws the weights out;
  # the loss jumps by many orders of magnitude and never comes back.
  lp = plain.metric("loss")
  assert np.nanmax(lp) > 1e6 * l0 or plain.skipped > 0
  assert not np.all(np.isfinite(lp)) or np.mean(lp[-10:]) > 1e3 * l0
  assert not any(h["clipped"] for h in plain.history)
  # With clip_norm = 1: every step is at most lr long, all finite, loss decreasing.
  lc = clipped.metric("loss")
  assert np.all(np.isfinite(lc)) and clipped.skipped == 0
  assert np.all(np.isfinite(jax.flatten_util.ravel_pytree(clipped.params)[0]))
  assert np.mean(lc[-10:]) < 0.1 * l0
  assert np.mean(lc[-10:]) < np.mean(lc[:10]) / 10
  assert clipped.history[0]["clipped"] and sum(h["clipped"] for h in clipped.history) > 30


# ----------------------------------------------------------------------------- resume


_SMALL = rj.SequenceModel([rj.SimpleRNN(8), rj.SimpleRNN(8)], rj.Dense(1), dropout=0.25)
_SMALL_TX = train.optimizer("adam", 1e-2, clip_norm=0.5)


def _small_data(i):
  return train.adding_problem(16, length=10, seed=(5, i))


def _small_fit(**kw):
  # An "rbg" key: dropout's random bits compile much faster than with threefry,
  # and the checkpoint must restore a non-default key implementation.
  params = _SMALL.init(jax.random.key(2), input_size=2)
  return train.fit(_SMALL, params, _small_data, loss="mse", optimizer=_SMALL_TX,
                   seed=jax.random.key(3, impl="rbg"), **kw)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_resume_equals_uninterrupted_and_keeps_last_k(tmp_path):
  full = _small_fit(steps=12, checkpoint_dir=tmp_path / "a", checkpoint_every=4, keep=2,
                    jsonl=tmp_path / "a.jsonl")
  assert sorted(int(p) for p in os.listdir(tmp_path / "a") if p.isdigit()) == [8, 12]
  assert [json.loads(l) for l in pathlib.Path(tmp_path / "a.jsonl").read_text().splitlines()] == full.history
  part = _small_fit(steps=6, checkpoint_dir=tmp_path / "b", checkpoint_every=4,
                    jsonl=tmp_path / "b.jsonl")
  assert part.history == full.history[:6]
  resumed = _small_fit(steps=12, checkpoint_dir=tmp_path / "b", checkpoint_every=4, resume=True,
                       jsonl=tmp_path / "b.jsonl")
  assert resumed.history == full.history  # bit for bit, dropout keys included
  assert [json.loads(l) for l in pathlib.Path(tmp_path / "b.jsonl").read_text().splitlines()] == full.history
  for a, b in zip(_leaves((resumed.params, resumed.opt_state)), _leaves((full.params, full.opt_state))):
    np.testing.assert_array_equal(a, b)
  # The dropout key matters (so the test above could fail): another seed differs.
  other = train.fit(_SMALL, _SMALL.init(jax.random.key(2), input_size=2), _small_data, loss="mse",
                    optimizer=_SMALL_TX, seed=jax.random.key(4, impl="rbg"), steps=2)
  assert other.history[1]["loss"] != full.history[1]["loss"]
  # Resuming a finished run trains nothing and returns the checkpoint.
  again = _small_fit(steps=12, checkpoint_dir=tmp_path / "b", resume=True)
  assert again.history == full.history and again.step == 12


def test_bad_checkpoints_raise_clear_errors(tmp_path):
  _small_fit(steps=2, checkpoint_dir=tmp_path / "c")
  with pytest.raises(ValueError, match=r"already holds checkpoints \(latest step 2\).*resume=True"):
    _small_fit(steps=4, checkpoint_dir=tmp_path / "c")
  # Mismatched: another hidden size.
  other = rj.SequenceModel([rj.SimpleRNN(8), rj.SimpleRNN(6)], rj.Dense(1))
  with pytest.raises(ValueError, match=r"checkpoint '.*c/2' does not match the current run.*"
                                       r"\['params'\]\['layers'\]\[1\]\['w_h'\] has shape \(8, 8\)"):
    train.fit(other, other.init(jax.random.key(0), input_size=2), _small_data, loss="mse",
              optimizer=_SMALL_TX, steps=4, checkpoint_dir=tmp_path / "c", resume=True)
  # Mismatched: another optimizer (state structure differs).
  with pytest.raises(ValueError, match=r"c/2' does not match.*opt_state"):
    train.fit(_SMALL, _SMALL.init(jax.random.key(2), input_size=2), _small_data, loss="mse",
              optimizer=train.optimizer("sgd", 0.1), steps=4, checkpoint_dir=tmp_path / "c",
              resume=True)
  # Unreadable: the array files of the state are gone / garbage.
  state_dir = tmp_path / "c" / "2" / "state"
  for root, _, files in os.walk(state_dir):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  with pytest.raises(ValueError, match=r"checkpoint '.*c/2' is unreadable"):
    _small_fit(steps=4, checkpoint_dir=tmp_path / "c", resume=True)
  (tmp_path / "c" / "2" / "meta" / "metadata").write_text("{not json")
  with pytest.raises(ValueError, match=r"checkpoint '.*c/2' is unreadable"):
    _small_fit(steps=4, checkpoint_dir=tmp_path / "c", resume=True)


# ----------------------------------------------------------------------------- bad input

# One small model and optimizer for the tests below: one compiled step for all.
_RNN8 = rj.SequenceModel([rj.SimpleRNN(8)], rj.Dense(1))
_TX8 = train.optimizer("adam", 1e-2)


def _data8(i):
  return train.adding_problem(8, length=6, seed=(0, i))


def test_nonfinite_loss_is_skipped_and_counted_without_touching_params():
  model, tx = _RNN8, _TX8
  params = model.init(jax.random.key(0), input_size=2)

  def data(i):
    b = _data8(i)
    if i == 1:  # a corrupt batch: NaN in the inputs -> non-finite loss and gradient
      b = b._replace(x=b.x.copy())
      b.x[0, 0, 0] = np.nan
    return b

  one = train.fit(model, params, data, loss="mse", optimizer=tx, steps=1)
  two = train.fit(model, params, data, loss="mse", optimizer=tx, steps=2)
  three = train.fit(model, params, data, loss="mse", optimizer=tx, steps=3)
  assert not np.isfinite(two.history[1]["loss"])
  assert [h["skipped"] for h in three.history] == [0, 1, 1]
  for a, b in zip(_leaves((one.params, one.opt_state)), _leaves((two.params, two.opt_state))):
    np.testing.assert_array_equal(a, b)  # the bad step changed nothing
  assert np.isfinite(three.history[2]["loss"])
  # A plain optax optimizer (no apply_if_finite) is guarded by the loop too.
  raw_tx = optax.adam(1e-2)
  raw1 = train.fit(model, params, data, loss="mse", optimizer=raw_tx, steps=1)
  raw = train.fit(model, params, data, loss="mse", optimizer=raw_tx, steps=2)
  assert raw.skipped == 1 and raw1.skipped == 0
  for a, b in zip(_leaves(raw.params), _leaves(raw1.params)):
    np.testing.assert_array_equal(a, b)


def test_fit_rejects_bad_input_with_clear_errors():
  model, tx, data = _RNN8, _TX8, _data8  # 2 input features
  params = model.init(jax.random.key(0), input_size=3)
  with pytest.raises(ValueError, match=r"batch data\(0\) does not fit.*feature size 2.*input_size=3"):
    train.fit(model, params, data, loss="mse", optimizer=tx, steps=1)
  with pytest.raises(ValueError, match="needs loss="):
    train.fit(model, params, data, optimizer=tx, steps=1)
  with pytest.raises(TypeError, match="optimizer must be an optax.GradientTransformation"):
    train.fit(model, params, data, loss="mse", optimizer="adam", steps=1)
  with pytest.raises(ValueError, match="loss must be one of"):
    train.fit(model, params, data, loss="hinge", optimizer=tx, steps=1)
  with pytest.raises(ValueError, match="steps must be a positive int"):
    train.fit(model, params, data, loss="mse", optimizer=tx, steps=0)
  with pytest.raises(TypeError, match="data must be a function"):
    train.fit(model, params, 3, loss="mse", optimizer=tx, steps=1)
  good = model.init(jax.random.key(0), input_size=2)
  bad_y = lambda i: train.Batch(data(i).x, data(i).y[:, 0])  # noqa: E731
  with pytest.raises(ValueError, match=r"target must have the shape of pred \(8, 1\), got \(8,\)"):
    train.fit(model, good, bad_y, loss="mse", optimizer=tx, steps=1)


def test_fit_with_a_plain_loss_fn_and_iterable_data(capsys):
  # Any pure loss_fn(params, batch, key) -> (loss, aux): least squares, whose
  # gradient descent iterates are known in closed form.
  rng = np.random.default_rng(0)
  A = rng.standard_normal((16, 3)).astype(np.float32)
  b = rng.standard_normal((16,)).astype(np.float32)

  def loss_fn(p, batch, key):
    del key
    r = batch[0] @ p - batch[1]
    return jnp.mean(r ** 2), {"max_residual": jnp.max(jnp.abs(r))}

  lr = 0.05
  res = train.fit(loss_fn, jnp.zeros(3), iter([(A, b)] * 5), optimizer=optax.sgd(lr), steps=5)
  w = np.zeros(3)
  for h in res.history:
    r = A.astype(np.float64) @ w - b
    assert h["loss"] == pytest.approx(np.mean(r ** 2), rel=1e-5)
    assert h["max_residual"] == pytest.approx(np.max(np.abs(r)), rel=1e-5)
    g = 2 * A.T @ r / len(b)
    assert h["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-5)
    w = w - lr * g
  np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-5)
  # Not attached to a terminal: the progress bar stays quiet. Asked for: it shows
  # the live loss and gradient norm.
  assert capsys.readouterr() == ("", "")
  train.fit(loss_fn, jnp.zeros(3), lambda i: (A, b), optimizer=optax.sgd(lr), steps=3,
            progress=True)
  err = capsys.readouterr().err
  assert "3/3" in err and "loss=" in err and "grad_norm=" in err


def test_adjoint_norms_are_recorded_every_n_steps():
  # For MSE on a Dense readout of the last step, dL/dh_{T-1} = (2/B) (pred - y) w^T
  # per sequence (closed form); the loop records its batch mean after the update.
  model, data = _RNN8, _data8
  params = model.init(jax.random.key(0), input_size=2)
  res = train.fit(model, params, data, loss="mse", optimizer=_TX8, steps=4, adjoint_every=2)
  assert ["adjoint_norms" in h for h in res.history] == [False, True, False, True]
  adj = np.asarray(res.history[-1]["adjoint_norms"])
  assert adj.shape == (6,) and np.all(np.isfinite(adj)) and np.all(adj > 0)
  b = data(3)
  pred = np.asarray(model.apply(res.params, jnp.asarray(b.x)), np.float64)
  g = 2 / 8 * (pred - b.y) @ np.asarray(res.params["readout"]["w"], np.float64).T
  assert adj[-1] == pytest.approx(np.linalg.norm(g, axis=1).mean(), rel=1e-5)
  with pytest.raises(ValueError, match="adjoint_every needs fit\\(model"):
    train.fit(lambda p, b, k: 0.0, params, data, optimizer=optax.sgd(0.1), steps=1, adjoint_every=1)
