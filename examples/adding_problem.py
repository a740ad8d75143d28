"""The adding problem: tanh RNN, sigmoid RNN, IRNN, LSTM and GRU at T = 50, 100, 200.

Task (Hochreiter & Schmidhuber 1997; the setting of Le, Jaitly & Hinton 2015,
"A simple way to initialize recurrent networks of rectified linear units"):
each step reads ``[value, marker]``, value ~ U[0, 1], and the marker is 1 at
exactly two steps, one in each half of the sequence. The target is the sum of
the two marked values; the loss is MSE. Predicting the mean sum 1 whatever the
input gives MSE = Var(U1 + U2) = 1/6 -- the baseline a model must beat to have
learnt anything; "solved" is usually MSE < 1/60.

Every model is ``rj.SequenceModel([cell], rj.Dense(1))`` (hidden size 32 by
default) trained by ``rnnjax.train.fit`` with Adam and global-norm gradient
clipping (``rnnjax.train.optimizer("adam", lr, clip_norm=1.0)``) on fresh
batches from ``rnnjax.train.adding_problem``. The papers train for 10^5-10^6
steps; this script trains each model for 1,000 steps of batch 64 by default
(minutes on a laptop CPU), so it shows what is learnt *early*: which cells
leave the 1/6 plateau at all within that budget, and how that depends on T.

Output: a table of the final test MSE (2,000 fresh sequences per T) and one
PNG of the learning curves against the 1/6 baseline.

Run: ``python examples/adding_problem.py`` (``--help`` for options).
"""

from __future__ import annotations

import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import train

BASELINE = 1.0 / 6.0
CELL_NAMES = ("tanh", "sigmoid", "irnn", "lstm", "gru")
LABELS = {"tanh": "tanh RNN", "sigmoid": "sigmoid RNN", "irnn": "IRNN", "lstm": "LSTM",
          "gru": "GRU"}


def run_one(name, T, *, hidden, steps, batch_size, lr, seed, test_size=2000):
  """Trains one cell at one length; returns the loss curve and the test MSE."""
  model = rj.SequenceModel([_common.make_cell(name, hidden)], rj.Dense(1))
  params = model.init(jax.random.key(seed), input_size=2)
  test = train.adding_problem(test_size, length=T, seed=(seed, 10**6))
  res = train.fit(model, params, lambda i: train.adding_problem(batch_size, length=T,
                                                                seed=(seed, T, i)),
                  loss="mse", optimizer=train.optimizer("adam", lr, clip_norm=1.0),
                  steps=steps, eval_data=test, progress=False)
  return {"curve": res.metric("loss"), "test_mse": res.history[-1]["eval_loss"],
          "seconds": res.seconds, "skipped": res.skipped}


def smooth(v, w):
  w = max(1, min(w, len(v)))
  return np.convolve(v, np.ones(w) / w, mode="valid")


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--lengths", type=int, nargs="+", default=None,
                 help="sequence lengths T (default 50 100 200; quick 10)")
  p.add_argument("--cells", nargs="+", default=list(CELL_NAMES), choices=CELL_NAMES)
  p.add_argument("--steps", type=int, default=None, help="updates per model (default 1000)")
  p.add_argument("--hidden", type=int, default=None, help="hidden size (default 32)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
  args = p.parse_args(argv)
  lengths = _common.pick(args, "lengths", [50, 100, 200], [10])
  steps = _common.pick(args, "steps", 1000, 150)
  hidden = _common.pick(args, "hidden", 32, 16)
  print(f"Adding problem: hidden {hidden}, batch {args.batch_size}, {steps} Adam steps "
        f"(lr {args.lr}, clip_norm 1.0); baseline MSE 1/6 = {BASELINE:.4f}")

  results = {}
  with _common.Timer() as total:
    for T in lengths:
      for name in args.cells:
        r = run_one(name, T, hidden=hidden, steps=steps, batch_size=args.batch_size,
                    lr=args.lr, seed=args.seed)
        results[(name, T)] = r
        print(f"  T={T:4d}  {LABELS[name]:12s} test MSE {r['test_mse']:.4f}  "
              f"({r['test_mse'] / BASELINE:5.1%} of baseline, {r['seconds']:.1f} s)", flush=True)

  rows = []
  for name in args.cells:
    rows.append([LABELS[name]] + [f"{results[(name, T)]['test_mse']:.4f}" for T in lengths])
  print("\nFinal test MSE (baseline 0.1667; solved < 0.0167):")
  print(_common.table(rows, ["cell"] + [f"T={T}" for T in lengths]))
  print(f"total {total.seconds:.0f} s")

  if not args.no_plot:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.6 * len(lengths), 3.8), squeeze=False)
    for ax, T in zip(axes[0], lengths):
      for name in args.cells:
        ax.plot(smooth(results[(name, T)]["curve"], max(1, steps // 50)), label=LABELS[name])
      ax.axhline(BASELINE, color="k", ls="--", lw=1, label="baseline 1/6")
      ax.set(title=f"T = {T}", xlabel="step", ylabel="train MSE (smoothed)", yscale="log",
             ylim=(1e-3, 1.0))
    axes[0][0].legend(fontsize=8)
    _common.savefig(fig, args, "adding_problem.png")

  return {"test_mse": {f"{name}@{T}": r["test_mse"] for (name, T), r in results.items()},
          "baseline": BASELINE, "seconds": total.seconds, "lengths": lengths}


if __name__ == "__main__":
  main()
  sys.exit(0)
