"""The examples in their --quick mode, each asserting its headline claim at that size.

Each example is imported from ``examples/`` and its ``main(argv)`` run with
``--quick``; ``main`` returns the numbers it printed. Plots go to ``tmp_path``.
"""

import importlib
import math
import os
import sys

import jax
import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load(name):
  if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
  return importlib.import_module(name)


def run(name, tmp_path, *extra):
  return load(name).main(["--quick", "--out", str(tmp_path), *extra])


def test_binary_addition_bptt_matches_finite_differences():
  # The hand-written NumPy BPTT against central differences: independent of JAX.
  ex = load("binary_addition")
  rng = np.random.default_rng(3)
  p = ex.seed_init(rng, hidden=5)
  p["b"] = 0.1 * rng.standard_normal(5)
  xs, ds = ex.encode(np.array([3, 100, 57]), np.array([90, 27, 57]))
  _, g = ex.numpy_loss_and_grads(p, xs, ds)
  eps = 1e-6
  for k in p:
    fd = np.zeros_like(p[k])
    for idx in np.ndindex(p[k].shape):
      plus = {kk: vv.copy() for kk, vv in p.items()}
      minus = {kk: vv.copy() for kk, vv in p.items()}
      plus[k][idx] += eps
      minus[k][idx] -= eps
      fd[idx] = (ex.numpy_loss_and_grads(plus, xs, ds)[0]
                 - ex.numpy_loss_and_grads(minus, xs, ds)[0]) / (2 * eps)
    np.testing.assert_allclose(g[k], fd, rtol=1e-6, atol=1e-9, err_msg=k)


def test_binary_addition(tmp_path):
  r = run("binary_addition", tmp_path)
  # NumPy BPTT == jax.grad through rj.scan, float64.
  assert r["max_grad_rel_diff"] < 1e-12
  assert r["loss_rel_diff"] < 1e-12
  # The seed's SGD run, hand-written vs rnnjax.train.fit: the same trajectory.
  assert r["seed_max_param_diff"] < 1e-10
  # Adam + BCE solves the task: every bit of every held-out sum right.
  assert r["adam_accuracy"] == 1.0
  assert os.path.exists(tmp_path / "binary_addition.png")


@pytest.mark.slow
def test_adding_problem(tmp_path):
  # Quick size (T = 20, hidden 32, 300 Adam steps of 32, 2 seeds): the gated GRU leaves
  # the 1/6 plateau and solves the task in every seed; the tanh RNN stays on it.
  r = run("adding_problem", tmp_path)
  gru, tanh = r["summary"]["gru@20"], r["summary"]["tanh@20"]
  assert max(gru["final_mse"]) < r["baseline"] / 10
  assert all(s is not None for s in gru["crossing"])
  assert min(tanh["final_mse"]) > r["baseline"] / 2
  assert os.path.exists(tmp_path / "adding_problem.png")


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_vanishing_gradients(tmp_path):
  r = run("vanishing_gradients", tmp_path)
  sig, lstm = r["init"]["sigmoid"], r["init"]["lstm"]
  # Seed 000: sigmoid' <= 1/4, so the per-step decay is below log(||W||_2 / 4).
  assert sig["verdict"] == "vanishing"
  assert sig["decay_rate"] <= sig["bound"] + 1e-6 < 0
  assert sig["saturation"]["h"][1] <= 0.25
  assert r["trained"]["sigmoid"]["decay_rate"] <= r["trained"]["sigmoid"]["bound"] + 1e-6
  # The LSTM keeps its gradient over the whole sequence (horizon None: never below 1%).
  assert lstm["horizon"] is None or lstm["horizon"] > 3 * sig["horizon"]
  assert lstm["decay_rate"] > sig["decay_rate"] / 5
  assert os.path.exists(tmp_path / "vanishing_gradients_init.png")


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_exploding_gradients(tmp_path):
  r = run("exploding_gradients", tmp_path)
  none, clip = r["no help"], r["clip_norm"]
  # Without help the run diverges: exploded loss, skipped non-finite steps, chance accuracy.
  assert none["max_loss"] > 1e3 and none["skipped"] > 0 and none["test_accuracy"] < 0.6
  # Global-norm clipping prevents it and solves the task.
  assert clip["skipped"] == 0 and clip["max_loss"] < 10 and clip["test_accuracy"] > 0.95


@pytest.mark.slow
def test_copy_task(tmp_path):
  # Quick size (3 symbols, T = 5, hidden 32, 250 Adam steps): the GRU gets below the
  # n ln 8 / (T + 2n) baseline and recalls symbols above chance (1/8).
  r = run("copy_task", tmp_path, "--cells", "gru")
  assert math.isclose(r["baseline"][5], 3 * math.log(8) / (5 + 6))
  gru = r["summary"]["gru@5"]
  assert np.median(gru["ratio"]) < 0.9
  assert np.median(gru["copy_accuracy"]) > 0.25


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_keras_style_classifier(tmp_path):
  r = run("keras_style_classifier", tmp_path)
  assert 0.9 < r["bayes_accuracy"] < 1.0
  for kind in ("SimpleRNN", "LSTM"):
    assert r[kind]["test_accuracy"] > r["bayes_accuracy"] - 0.05, kind


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_digits_rows(tmp_path):
  pytest.importorskip("sklearn")
  r = run("digits_rows", tmp_path)
  assert r["logreg_accuracy"] > 0.9
  assert r["GRU"]["test_accuracy"] > 0.85


@pytest.mark.slow
def test_pixel_digits(tmp_path):
  # Quick size (4x4 pooled digits, one pixel per step, T = 16, hidden 32, 300 Adam
  # steps, 2 seeds): the GRU learns well above chance (10%).
  pytest.importorskip("sklearn")
  r = run("pixel_digits", tmp_path)
  assert r["logreg_accuracy"] > 0.8
  assert min(r["summary"]["gru"]["test_accuracy"]) > 0.5
  assert os.path.exists(tmp_path / "pixel_digits.png")


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_sunspots(tmp_path):
  pytest.importorskip("statsmodels")
  r = run("sunspots", tmp_path)
  assert r["AR(9)"]["rmse"] < r["persistence"]["rmse"]
  assert r["GRU"]["rmse"] < r["persistence"]["rmse"]


@pytest.mark.parametrize("name", ["binary_addition", "adding_problem", "vanishing_gradients",
                                  "exploding_gradients", "copy_task", "keras_style_classifier",
                                  "digits_rows", "sunspots", "pixel_digits", "irnn_plateau"])
def test_help(name, capsys):
  ex = load(name)
  with pytest.raises(SystemExit) as e:
    ex.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "--quick" in out and "--out" in out
  assert ex.__doc__.splitlines()[0][:40] in out


@pytest.mark.slow
def test_nnx_model_trains_with_nnx_optimizer_and_is_diagnosed(tmp_path):
  with jax.numpy_dtype_promotion("standard"):  # optax's Adam: float ** int32 count
    r = run("nnx_model", tmp_path, "--steps", "30", "--length", "10")
  losses = r["losses"]
  assert len(losses) == 30 and all(math.isfinite(l) for l in losses)
  # nnx.Optimizer + nnx.jit reduce the loss from its first value.
  assert np.mean(losses[-10:]) < 0.5 * losses[0], (losses[0], losses[-10:])
  rep = r["report"]
  assert rep.name == "trained GRU stack" and rep.T == 10
  assert rep.verdict in ("vanishing", "stable", "exploding")
  assert set(rep.saturation) >= {"layer0.r", "layer1.n"}
  assert os.path.exists(tmp_path / "nnx_model.png")


# --- the seeds-in-one-program trainer and the summaries the paper examples print ---


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["map", "vmap"])
def test_members_equal_separate_runs(batching):
  # Seeds trained together (lax.map or vmap, lr scaled after a rate-1 optimizer) against
  # a plain loop of rnnjax.train.optimizer updates per seed, with the same keys and batches.
  import jax
  import jax.numpy as jnp
  import optax
  import rnnjax as rj
  from rnnjax import train
  common, ap = load("_common"), load("adding_problem")
  model = rj.SequenceModel([rj.GRU(4)], rj.Dense(1))
  sample = lambda k: ap.sample(k, 3, 6)
  m = common.Members(model, 2, ap.loss_fn, sample, seeds=[3, 5], lr=[1e-2, 3e-3], chunk=4,
                     batching=batching)
  assert m.batching == batching
  losses = m.advance()
  assert losses.shape == (2, 4) and m.curve.shape == (2, 4) and m.steps_done == 4
  for i, (seed, lr) in enumerate([(3, 1e-2), (5, 3e-3)]):
    tx = train.optimizer("adam", lr, clip_norm=1.0)

    @jax.jit
    def step_fn(p, o, step):
      batch = sample(jax.random.fold_in(jax.random.key(seed + 10**6), step))
      loss, g = jax.value_and_grad(lambda q: ap.loss_fn(model, q, batch))(p)
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o, loss

    p = model.init(jax.random.key(seed), 2)
    o = tx.init(p)
    for step in range(4):
      p, o, loss = step_fn(p, o, step)
      np.testing.assert_allclose(losses[i, step], loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(common.member(m.params, i)),
                    jax.tree_util.tree_leaves(p)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_crossing_and_spread():
  common = load("_common")
  curve = np.array([[5.0] * 4 + [1.0] * 4 + [0.1] * 4,      # window means 5, 1, 0.1
                    [5.0] * 12])
  np.testing.assert_allclose(common.window_means(curve, 4), [[5, 1, 0.1], [5, 5, 5]])
  assert common.first_crossing(curve, 0.5, 4) == [12, None]
  assert common.first_crossing(curve, 2.0, 4) == [8, None]
  assert common.crossing_summary([12, None, 8]) == "10 (2/3; 8-12)"
  assert common.crossing_summary([None]) == "never (0/1)"
  assert common.spread([3.0, 1.0, 2.0], "{:.1f}") == "2.0 [1.0, 3.0]"


def test_curves_round_trip(tmp_path):
  common = load("_common")

  class Run:
    curve, seconds = np.arange(6.0).reshape(2, 3), 1.5

  path = str(tmp_path / "r.npz")
  common.save_curves(path, {"a@5": Run()}, {"cells": ["a"], "x": 1})
  curves, seconds, meta = common.load_curves(path)
  np.testing.assert_array_equal(curves["a@5"], Run.curve)
  assert seconds == {"a@5": 1.5} and meta == {"cells": ["a"], "x": 1}


def test_results_of_two_runs_merge(tmp_path):
  # One --lengths per run (e.g. on two machines), redrawn together.
  common, ap = load("_common"), load("adding_problem")

  class Run:
    def __init__(self, level, steps):
      self.curve, self.seconds = np.full((3, steps), level), 2.0

  meta = {"cells": ["irnn", "tanh"], "seeds": [0, 1, 2], "hidden": 100, "lr": 1e-3}
  a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
  common.save_curves(a, {"irnn@150": Run(0.001, 800), "tanh@150": Run(0.17, 1000)},
                     {**meta, "lengths": [150], "steps_done": 1000})
  common.save_curves(b, {"irnn@200": Run(0.17, 1200), "tanh@200": Run(0.17, 1200)},
                     {**meta, "lengths": [200], "steps_done": 1200})
  curves, seconds, merged = common.load_curves(b, a)
  assert sorted(curves) == ["irnn@150", "irnn@200", "tanh@150", "tanh@200"]
  assert merged["lengths"] == [150, 200] and merged["steps_done"] == 1200
  r = ap.main(["--from-results", a, b, "--no-plot", "--out", str(tmp_path)])
  s = r["summary"]
  assert s["irnn@150"]["steps"] == 800 and s["irnn@150"]["crossing"] == [100] * 3
  assert s["tanh@200"]["crossing"] == [None] * 3
  np.testing.assert_allclose(s["tanh@200"]["final_mse"], 0.17)
  # Overlapping runs or other settings are refused, naming the file.
  with pytest.raises(ValueError, match="repeats runs"):
    common.load_curves(a, a)
  c = str(tmp_path / "c.npz")
  common.save_curves(c, {"irnn@300": Run(0.1, 10)}, {**meta, "hidden": 50, "lengths": [300]})
  with pytest.raises(ValueError, match="hidden 100 vs 50"):
    common.load_curves(a, c)
  # Per-run results in meta (the copy task's accuracies) are united; wall times add up.
  d, e = str(tmp_path / "d.npz"), str(tmp_path / "e.npz")
  common.save_curves(d, {"lstm@100": Run(0.1, 10)}, {"lengths": [100], "hidden": {"lstm": 40},
                     "copy_accuracy": {"lstm@100": [0.5]}, "wall_seconds": 3.0})
  common.save_curves(e, {"lstm@200": Run(0.1, 10)}, {"lengths": [200], "hidden": {"lstm": 40},
                     "copy_accuracy": {"lstm@200": [0.2]}, "wall_seconds": 4.0})
  merged = common.load_curves(d, e)[2]
  assert merged["copy_accuracy"] == {"lstm@100": [0.5], "lstm@200": [0.2]}
  assert merged["wall_seconds"] == 7.0 and merged["hidden"] == {"lstm": 40}


def test_partial_grid_reports_not_run(tmp_path, capsys):
  # A grid merged from runs that cover different cells (GRU alone at T = 400):
  # the missing (cell, T) show "not run", the figure still draws, and a cell keeps
  # its colour in every panel.
  import matplotlib
  matplotlib.use("Agg")
  common, ap, ct = load("_common"), load("adding_problem"), load("copy_task")

  class Run:
    def __init__(self, level, steps=400):
      self.curve, self.seconds = np.full((3, steps), level), 2.0

  meta = {"cells": ["irnn", "gru"], "seeds": [0, 1, 2], "hidden": 100, "lr": 1e-3}
  a, b = str(tmp_path / "a.npz"), str(tmp_path / "b.npz")
  common.save_curves(a, {"irnn@150": Run(0.17), "gru@150": Run(0.001)},
                     {**meta, "lengths": [150]})
  common.save_curves(b, {"gru@400": Run(0.002)}, {**meta, "cells": ["gru"], "lengths": [400]})
  capsys.readouterr()
  r = ap.main(["--from-results", a, b, "--out", str(tmp_path)])
  out = capsys.readouterr().out
  assert sorted(r["summary"]) == ["gru@150", "gru@400", "irnn@150"]
  irnn_rows = [line for line in out.splitlines() if line.lstrip("| ").startswith("IRNN")]
  assert len(irnn_rows) == 2 and all(line.count(common.NOT_RUN) == 1 for line in irnn_rows)
  assert (tmp_path / "adding_problem.png").stat().st_size > 0

  fig, (p0, p1) = matplotlib.pyplot.subplots(1, 2)
  labels = {"irnn@{}": "IRNN", "gru@{}": "GRU"}
  curves = {"irnn@150": Run(0.1).curve, "gru@150": Run(0.1).curve, "gru@400": Run(0.1).curve}
  assert common.plot_runs(p0, curves, {k.format(150): v for k, v in labels.items()}, 10) == 2
  assert common.plot_runs(p1, curves, {k.format(400): v for k, v in labels.items()}, 10) == 1
  assert p0.lines[1].get_color() == p1.lines[0].get_color() == "C1"

  cmeta = {"cells": ["lstm", "gru"], "seeds": [0], "num_copy": 10, "hidden": {"lstm": 8, "gru": 8}}
  c = str(tmp_path / "c.npz")
  common.save_curves(c, {"gru@100": Run(0.5, 40)}, {**cmeta, "lengths": [100]})
  r = ct.main(["--from-results", c, "--no-plot", "--out", str(tmp_path)])
  assert sorted(r["summary"]) == ["gru@100"]
  assert capsys.readouterr().out.count(common.NOT_RUN) == 2   # LSTM: final CE and crossing


def test_adding_sample_law():
  import jax
  ap = load("adding_problem")
  x, y = map(np.asarray, ap.sample(jax.random.key(0), 500, 9))
  assert x.shape == (500, 9, 2) and y.shape == (500, 1)
  marks = x[..., 1]
  # One marker in each half [0, 4) and [4, 9), as rnnjax.train.adding_problem.
  np.testing.assert_array_equal(marks[:, :4].sum(1), 1)
  np.testing.assert_array_equal(marks[:, 4:].sum(1), 1)
  np.testing.assert_allclose(y[:, 0], (x[..., 0] * marks).sum(1), rtol=1e-6)
  assert 0 <= x[..., 0].min() and x[..., 0].max() < 1
  # The baseline: predicting 1 scores Var(U1 + U2) = 1/6.
  assert abs(np.mean((y - 1) ** 2) - 1 / 6) < 0.03


def test_copy_sample_matches_library_layout():
  import jax
  from rnnjax import train
  ct = load("copy_task")
  x, y = map(np.asarray, ct.sample(jax.random.key(1), 4, 7, 3))
  ref = train.copy_task(4, delay=7, num_copy=3)
  assert x.shape == ref.x.shape and y.shape == ref.y.shape
  # Same layout as the library's generator once the symbols are swapped in.
  symbols = y[:, -3:]
  ref_x, ref_y = ref.x.argmax(-1).copy(), ref.y.copy()
  ref_x[:, :3], ref_y[:, -3:] = symbols, symbols
  np.testing.assert_array_equal(x.argmax(-1), ref_x)
  np.testing.assert_array_equal(y, ref_y)
  assert math.isclose(ct.baseline(100), 10 * math.log(8) / 120)


def test_copy_indrnn_clip_bounds_the_recurrent_gain():
  # Li et al.'s constraint over the L = T + 2n steps of a copy sequence: |u|^L <= 2,
  # applied in the step, so a unit with u beyond the bound multiplies by the bound.
  import jax.numpy as jnp
  ct = load("copy_task")
  cell = ct.make_cell("indrnn-clip", 4, 100, 10)
  assert cell.recurrent_clip ** 120 == pytest.approx(2.0)
  assert ct.make_cell("indrnn", 4, 100, 10).recurrent_clip is None
  params = {"w_i": jnp.zeros((1, 4)), "u": jnp.array([0.5, 1.5, -3.0, 1.0]), "b": jnp.zeros(4)}
  h, _ = cell(params, jnp.ones((1, 4)), jnp.zeros((1, 1)))
  np.testing.assert_allclose(h[0], [0.5, 2 ** (1 / 120), 0.0, 1.0], rtol=1e-6)


@pytest.mark.slow
def test_gradient_flossing(tmp_path):
  # Quick mode: tanh RNN (hidden 16, 150 updates), delayed XOR at d = 3 and 20, 2 seeds,
  # no flossing / flossing before / during training. At d = 3 plain training succeeds;
  # at d = 20 both flossing conditions do at least as well as plain training.
  r = run("gradient_flossing", tmp_path)
  s, acc = r["success"], r["mean_acc"]
  assert set(s) == {f"tanh/{d}/{c}" for d in (3, 20) for c in ("none", "before", "during")}
  assert all(0.0 <= v <= 1.0 for v in s.values())
  assert s["tanh/3/none"] >= 0.5
  for c in ("before", "during"):
    assert s[f"tanh/20/{c}"] >= s["tanh/20/none"], s
  assert acc["tanh/20/during"] > 0.9, acc
  assert os.path.exists(tmp_path / "gradient_flossing.png")


def test_irnn_plateau_probe_against_numpy():
  # Step 0: W_h = I (spectral radius exactly 1) and the ReLU-off fraction equals a NumPy
  # forward pass of the same initial parameters; after 10 Adam updates W_h has moved.
  import jax
  import rnnjax as rj
  ip, ap = load("irnn_plateau"), load("adding_problem")
  out = ip.main(["--quick", "--no-plot"])
  first, later = out[20]
  assert first["step"] == 0 and later["step"] == 10
  assert first["rho"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
  assert all(abs(r - 1.0) > 1e-4 for r in later["rho"])
  model = rj.SequenceModel([rj.IRNN(16)], rj.Dense(1))
  p = jax.tree_util.tree_map(np.asarray, model.init(jax.random.key(0), 2)["layers"][0])
  x = np.asarray(ap.sample(jax.random.key(123), 256, 20)[0], np.float64)
  h, off = np.zeros((256, 16)), []
  for t in range(20):
    h = np.maximum(x[:, t] @ p["w_i"] + h @ p["w_h"] + p["b"], 0.0)
    off.append(h == 0)
  assert first["relu_off"][0] == pytest.approx(np.mean(off), abs=1e-6)
  assert 0.0 <= min(later["relu_off"]) and max(later["relu_off"]) <= 1.0
  for bad, name in ((["--lengths", "1"], "--lengths"), (["--steps", "-10"], "--steps"),
                    (["--seeds", "0"], "--seeds")):
    with pytest.raises(ValueError, match=name):
      ip.main(["--quick", *bad])
