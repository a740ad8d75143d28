"""Exploding gradients: a ReLU RNN with a large recurrent scale, trained with SGD.

Seed 002 lists the remedies for exploding gradients: gradient clipping, weight
clipping ("keep weights in a bounded range") and L1/L2 regularisation. This
script puts each to the test on the same problem.

The model is ``rj.IRNN(32, identity_scale=1.15)`` -> ``rj.Dense(1)``: a ReLU
RNN whose recurrent matrix starts at ``1.15 * I``, so in the ReLU's linear
regime the state and the back-propagated gradient grow like ``1.15^T``
(``1.15^50 ~ 1,000``). The task is ``rnnjax.train.sequence_classification``
(T = 50 steps of 4 noisy features whose mean sign is the label; a network that
sums its input solves it), with binary cross-entropy, plain SGD, learning rate
0.01, batch 64, via ``rnnjax.train.fit``. Only the optimizer differs:

==============  ======================================================  =========================
row             ``rnnjax.train.optimizer("sgd", 0.01, ...)``             what it does
==============  ======================================================  =========================
no help         (nothing)                                               w <- w - lr g
clip_norm       ``clip_norm=1.0``                                       g <- g min(1, 1/||g||)
clip_value      ``clip_value=0.1``                                      g <- clip(g, -0.1, 0.1)
weight_clip     ``weight_clip=1.0``                                     w <- clip(w - lr g, -1, 1)
L2              ``l2=0.01``                                             g <- g + 2 * 0.01 * w
==============  ======================================================  =========================

``fit`` never writes a NaN into the params: a step with a non-finite loss,
gradient or update is skipped and counted, so "diverged" shows up as an
exploded loss, skipped steps and chance accuracy.

Output: a table (largest loss, largest gradient norm, skipped steps, final
spectral radius of W, held-out accuracy) and one PNG with the loss and
gradient-norm curves.

Run: ``python examples/exploding_gradients.py`` (``--help`` for options).
"""

from __future__ import annotations

import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import train

REMEDIES = {
    "no help": {},
    "clip_norm": {"clip_norm": 1.0},
    "clip_value": {"clip_value": 0.1},
    "weight_clip": {"weight_clip": 1.0},
    "L2": {"l2": 0.01},
}


def run_one(options, *, T, scale, hidden, steps, lr, batch_size, seed, test):
  model = rj.SequenceModel([rj.IRNN(hidden, identity_scale=scale)], rj.Dense(1))
  params = model.init(jax.random.key(seed), input_size=4)
  res = train.fit(model, params,
                  lambda i: train.sequence_classification(batch_size, length=T, seed=(seed, i)),
                  loss="binary_cross_entropy", optimizer=train.optimizer("sgd", lr, **options),
                  steps=steps, eval_data=test, progress=False)
  w_h = np.asarray(res.params["layers"][0]["w_h"], np.float64)
  last = res.history[-1]
  return {"loss": res.metric("loss"), "grad_norm": res.metric("grad_norm"),
          "clipped": res.metric("clipped"), "skipped_curve": res.metric("skipped"),
          "max_loss": float(np.nanmax(res.metric("loss"))),
          "max_grad_norm": float(np.nanmax(res.metric("grad_norm"))),
          "skipped": int(res.skipped), "spectral_radius": float(np.max(np.abs(np.linalg.eigvals(w_h)))),
          "test_loss": float(last["eval_loss"]), "test_accuracy": float(last["eval_accuracy"]),
          "seconds": res.seconds}


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--steps", type=int, default=None, help="SGD steps per run (default 300)")
  p.add_argument("--length", type=int, default=50, help="sequence length T (default 50)")
  p.add_argument("--scale", type=float, default=1.15,
                 help="initial recurrent matrix = scale * I (default 1.15)")
  p.add_argument("--hidden", type=int, default=32)
  p.add_argument("--lr", type=float, default=0.01)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--remedies", nargs="+", default=None, choices=list(REMEDIES),
                 help="rows to run (default: all; quick: 'no help' and clip_norm)")
  args = p.parse_args(argv)
  steps = _common.pick(args, "steps", 300, 120)
  remedies = _common.pick(args, "remedies", list(REMEDIES), ["no help", "clip_norm"])
  test = train.sequence_classification(2000, length=args.length, seed=(args.seed, 10**6))
  print(f"ReLU RNN, W_0 = {args.scale} I, T = {args.length} ({args.scale}^{args.length} = "
        f"{args.scale ** args.length:.3g}), SGD lr {args.lr}, {steps} steps, batch {args.batch_size}")

  results = {}
  with _common.Timer() as total:
    for name in remedies:
      results[name] = run_one(REMEDIES[name], T=args.length, scale=args.scale, hidden=args.hidden,
                              steps=steps, lr=args.lr, batch_size=args.batch_size,
                              seed=args.seed, test=test)
  rows = [(name, f"{r['max_loss']:.3g}", f"{r['max_grad_norm']:.3g}", r["skipped"],
           f"{r['spectral_radius']:.3g}", f"{r['test_loss']:.3g}",
           f"{100 * r['test_accuracy']:.1f}%") for name, r in results.items()]
  print(_common.table(rows, ["optimizer", "max loss", "max ||g||", "skipped",
                             "rho(W) end", "test BCE", "test acc"]))
  print(f"total {total.seconds:.0f} s")

  if not args.no_plot:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for j, (name, r) in enumerate(results.items()):
      color = f"C{j}"
      axes[0].plot(r["loss"], color=color, label=name)
      bad = np.flatnonzero(~np.isfinite(r["loss"]))
      if bad.size:   # where the loss first became NaN/inf
        axes[0].plot(bad[0], np.nanmax(r["loss"][:bad[0]]) if bad[0] else 1.0, "x",
                     color=color, ms=10, mew=2)
      axes[1].plot(r["grad_norm"], color=color, label=name)
      axes[2].plot(r["skipped_curve"], color=color, label=name)
    axes[0].set(title="training loss (x: first NaN/inf)", xlabel="step", ylabel="BCE",
                yscale="log")
    axes[1].set(title="gradient norm before clipping", xlabel="step", ylabel="||g||",
                yscale="log")
    axes[2].set(title="non-finite steps skipped by fit (cumulative)", xlabel="step",
                ylabel="skipped")
    axes[0].legend(fontsize=8)
    _common.savefig(fig, args, "exploding_gradients.png")

  return {name: {k: v for k, v in r.items() if k not in ("loss", "grad_norm", "clipped", "skipped_curve")}
          for name, r in results.items()} | {"seconds": total.seconds}


if __name__ == "__main__":
  main()
  sys.exit(0)
