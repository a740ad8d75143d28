"""Vanishing gradients, measured: every cell's Jacobian products at init and after training.

Backpropagation through time multiplies one Jacobian per step,
``dh_T/dh_i = J_T J_{T-1} ... J_{i+1}``. For a simple RNN
``J_t = diag(f'(a_t)) W^T``, so ``||dh_T/dh_{T-k}|| <= (max f' * ||W||_2)^k``.
Seed 000's point: the sigmoid's derivative is at most 1/4, so unless
``||W||_2 > 4`` a sigmoid RNN forgets geometrically fast; tanh (f' <= 1) decays
more slowly; a ReLU RNN started at ``W = I`` (IRNN, seed 001) neither decays
nor grows; LSTM and GRU carry the state through gates instead.

This script measures that story with ``rnnjax.diagnostics.diagnose`` on the
adding problem (T = 100 by default) for a sigmoid RNN, a tanh RNN, an IRNN, an
LSTM and a GRU (hidden 32):

* ``||dh_T/dh_i||`` by lag (exact Jacobian products) and its decay rate per
  step, the *memory horizon* (first lag where it falls below 1%),
* ``||dL/dh_i||`` for the loss (adjoint norms),
* the largest Lyapunov exponent (Benettin's QR method),
* gate saturation: fraction of saturated units and mean derivative per gate,

first at initialisation, then after training each model on the adding problem
(``rnnjax.train.fit``, Adam 3e-3, clip_norm 1, 400 steps by default). For the
simple RNNs (sigmoid, tanh, and the IRNN's ReLU: max f' = 1/4, 1, 1) it also
prints the bound ``log(max f' * ||W||_2)`` next to the measured decay rate.

Output: two tables, two PNGs (``rnnjax.diagnostics.plot_gradient_norms``).

Run: ``python examples/vanishing_gradients.py`` (``--help`` for options).
"""

from __future__ import annotations

import os
import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import diagnostics as rd
from rnnjax import train

CELL_NAMES = ("sigmoid", "tanh", "irnn", "lstm", "gru")
LABELS = {"sigmoid": "sigmoid RNN", "tanh": "tanh RNN", "irnn": "IRNN", "lstm": "LSTM",
          "gru": "GRU"}
MAX_DERIVATIVE = {"sigmoid": 0.25, "tanh": 1.0, "irnn": 1.0}   # max f': sigmoid, tanh, relu


def bound(name, cell_params):
  """``log(max f' * ||W||_2)``: the per-step decay bound of a simple RNN (None otherwise)."""
  if name not in MAX_DERIVATIVE:
    return None
  w = np.asarray(cell_params["w_h"], np.float64)
  return float(np.log(MAX_DERIVATIVE[name] * np.linalg.norm(w, 2)))


def saturation_str(report):
  return ", ".join(f"{g} {100 * f:.0f}%/{d:.2f}" for g, (f, d) in report.saturation.items())


def summarise(reports, bounds):
  rows = []
  for name, r in reports.items():
    b = bounds[name]
    rows.append((LABELS[name], f"{r.decay_rate:+.3f}", "" if b is None else f"{b:+.3f}",
                 r.horizon_str(), f"{r.largest_lyapunov:+.3f}",
                 f"{np.exp(r.jacobian_by_lag()[-1]):.2e}", r.verdict, saturation_str(r)))
  return _common.table(rows, ["cell", "decay/step", "bound", "horizon", "lambda_1",
                              "||dh_T/dh_0||", "verdict",
                              "saturation: gate saturated%/mean f'"])


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--length", type=int, default=None, help="T (default 100; quick 20)")
  p.add_argument("--hidden", type=int, default=None, help="hidden size (default 32; quick 8)")
  p.add_argument("--steps", type=int, default=None, help="training steps (default 400; quick 20)")
  p.add_argument("--cells", nargs="+", default=None, choices=CELL_NAMES,
                 help="cells (default all five; quick: sigmoid lstm)")
  p.add_argument("--lr", type=float, default=3e-3)
  args = p.parse_args(argv)
  T = _common.pick(args, "length", 100, 20)
  hidden = _common.pick(args, "hidden", 32, 8)
  steps = _common.pick(args, "steps", 400, 20)
  cells = _common.pick(args, "cells", list(CELL_NAMES), ["sigmoid", "lstm"])
  xs = train.adding_problem(8, length=T, seed=(args.seed, 10**6)).x   # the diagnosis batch
  test = train.adding_problem(1000, length=T, seed=(args.seed, 10**6 + 1))
  print(f"Diagnostics on adding-problem inputs: T = {T}, hidden {hidden}, batch 8")

  init, trained, b_init, b_trained, mse = {}, {}, {}, {}, {}
  with _common.Timer() as total:
    for name in cells:
      cell = _common.make_cell(name, hidden)
      model = rj.SequenceModel([cell], rj.Dense(1))
      params = model.init(jax.random.key(args.seed), input_size=2)
      init[name] = rd.diagnose(cell, params["layers"][0], xs, name=LABELS[name])
      b_init[name] = bound(name, params["layers"][0])
      res = train.fit(model, params,
                      lambda i: train.adding_problem(64, length=T, seed=(args.seed, i)),
                      loss="mse", optimizer=train.optimizer("adam", args.lr, clip_norm=1.0),
                      steps=steps, eval_data=test, progress=False)
      mse[name] = res.history[-1]["eval_loss"]
      trained[name] = rd.diagnose(cell, res.params["layers"][0], xs, name=LABELS[name])
      b_trained[name] = bound(name, res.params["layers"][0])
      print(f"  {LABELS[name]:12s} done: adding-problem test MSE after {steps} steps "
            f"{mse[name]:.4f} (baseline 0.1667)", flush=True)

  print("\nAt initialisation (decay and bound: natural log per step; horizon: first lag < 1%):")
  print(summarise(init, b_init))
  print(f"\nAfter {steps} training steps on the adding problem:")
  print(summarise(trained, b_trained))
  print(f"total {total.seconds:.0f} s")

  if not args.no_plot:
    for tag, reps in (("init", init), ("trained", trained)):
      path = os.path.join(args.out, f"vanishing_gradients_{tag}.png")
      rd.plot_gradient_norms(list(reps.values()), path,
                             title=f"||dh_T/dh_i|| by lag, T={T}, "
                                   f"{'at init' if tag == 'init' else f'after {steps} steps'}")
      print(f"  wrote {path}")

  def numbers(reps, bounds):
    return {n: {"decay_rate": r.decay_rate, "bound": bounds[n], "horizon": r.memory_horizon,
                "lyapunov": r.largest_lyapunov, "verdict": r.verdict,
                "saturation": r.saturation} for n, r in reps.items()}

  return {"init": numbers(init, b_init), "trained": numbers(trained, b_trained),
          "test_mse": mse, "T": T, "seconds": total.seconds}


if __name__ == "__main__":
  main()
  sys.exit(0)
