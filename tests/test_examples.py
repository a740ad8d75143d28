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


def test_adding_problem(tmp_path):
  r = run("adding_problem", tmp_path, "--cells", "gru")
  assert r["test_mse"]["gru@10"] < 0.3 * r["baseline"]
  assert os.path.exists(tmp_path / "adding_problem.png")


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


def test_exploding_gradients(tmp_path):
  r = run("exploding_gradients", tmp_path)
  none, clip = r["no help"], r["clip_norm"]
  # Without help the run diverges: exploded loss, skipped non-finite steps, chance accuracy.
  assert none["max_loss"] > 1e3 and none["skipped"] > 0 and none["test_accuracy"] < 0.6
  # Global-norm clipping prevents it and solves the task.
  assert clip["skipped"] == 0 and clip["max_loss"] < 10 and clip["test_accuracy"] > 0.95


def test_copy_task(tmp_path):
  r = run("copy_task", tmp_path, "--cells", "gru")
  assert math.isclose(r["baseline"], 3 * math.log(8) / (5 + 6))
  assert r["gru"]["ratio"] < 0.9
  assert r["gru"]["copy_accuracy"] > 0.25     # chance 1/8


def test_keras_style_classifier(tmp_path):
  r = run("keras_style_classifier", tmp_path)
  assert 0.9 < r["bayes_accuracy"] < 1.0
  for kind in ("SimpleRNN", "LSTM"):
    assert r[kind]["test_accuracy"] > r["bayes_accuracy"] - 0.05, kind


def test_digits_rows(tmp_path):
  pytest.importorskip("sklearn")
  r = run("digits_rows", tmp_path)
  assert r["logreg_accuracy"] > 0.9
  assert r["GRU"]["test_accuracy"] > 0.85


def test_sunspots(tmp_path):
  pytest.importorskip("statsmodels")
  r = run("sunspots", tmp_path)
  assert r["AR(9)"]["rmse"] < r["persistence"]["rmse"]
  assert r["GRU"]["rmse"] < r["persistence"]["rmse"]


@pytest.mark.parametrize("name", ["binary_addition", "adding_problem", "vanishing_gradients",
                                  "exploding_gradients", "copy_task", "keras_style_classifier",
                                  "digits_rows", "sunspots"])
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
