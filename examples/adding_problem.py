"""The adding problem over seeds: IRNN, LSTM, tanh RNN and GRU (Le, Jaitly & Hinton 2015).

Task (Hochreiter & Schmidhuber 1997; the setting of Le, Jaitly & Hinton 2015,
"A simple way to initialize recurrent networks of rectified linear units"):
each step reads ``[value, marker]``, value ~ U[0, 1], and the marker is 1 at
exactly two steps, one in each half of the sequence. The target is the sum of
the two marked values; the loss is MSE. Predicting the mean sum 1 whatever the
input gives MSE = Var(U1 + U2) = 1/6, the baseline; a run counts as having
solved the task once its MSE falls below baseline / 10 = 1/60.

What the paper found: with hidden size 100 and T = 150, 200, 300 and 400, the
IRNN (ReLU, recurrent matrix started at the identity) and the LSTM both
leave the 1/6 plateau and go on to near-zero MSE, while the tanh RNN stays at
the baseline at every T. They trained with plain SGD (learning rate and
gradient-clipping threshold tuned per model) for up to about 10^6 steps (the
x-axis of their Figure 2).

Our setting (``--paper``): the same task, cells and hidden size 100, plus
our GRU; Adam 1e-3 with global-norm clipping 1 (``rnnjax.train.optimizer(
"adam", 1e-3, clip_norm=1.0)``), fresh batches of 32 every step, 20,000
steps, 3 seeds per cell and T (a cell/T stops early once every seed has
solved it, ``--stop-solved``). Single-seed runs of this setting reported by a
user (another machine) had the IRNN at MSE 0.0009 at T = 150 (after 12k-20k
steps) and 0.0032 at T = 400 after 20k steps (leaving the plateau near step
17k), and the LSTM at 0.0033 at T = 200 by step 6k. On our 2-core EPYC a
3-seed update at T = 200 costs 0.062 s (IRNN), 0.065 s (tanh), 0.25 s (LSTM)
and 0.26 s (GRU) on one core, linear in T.

What we measured over seeds (``--paper --lengths 150``, ``--lengths 200``, and
T = 300 as ``--cells irnn tanh`` and ``--cells lstm gru``; one core each of a
2-core AMD EPYC, 6,196 s, 5,386 s, 3,870 s and 5,641 s wall): at T = 150 and
at T = 200 the IRNN and the LSTM solve the task in all 3 seeds (first 100-step
mean below 1/60 after 4,100-6,800 steps at T = 150 and 5,400-7,800 at T = 200;
final MSE IRNN 0.0014 [0.0012, 0.0016] / 0.0013 [0.0008, 0.0020], LSTM 0.0006
[0.0006, 0.0013] / 0.0011 [0.0010, 0.0015]), the tanh RNN stays on the plateau
for all 20,000 steps (0.1703 [0.1682, 0.1718] / 0.1694 [0.1678, 0.1694]), and
the GRU solves it after 1,100-1,600 steps: the paper's finding, at T = 150 and
200. At T = 300 the LSTM solves it in every seed (crossing after 6,700-9,100
steps, 0.0009 [0.0006, 0.0016]) and the GRU after 1,800-1,900, but the IRNN
does not: all three seeds are on the plateau after 20,000 steps (0.1671
[0.1666, 0.1675]), like the tanh RNN (0.1700). Its escape moved from 4,500
(T = 150) to 7,500 steps (T = 200), faster than linearly in T, and a run
given 50,000 steps (``--cells irnn --steps 50000``, 4,480 s; its first 20,000
steps bit-identical to the grid's) is still on the plateau (0.1668 [0.1651,
0.1683]). Why, measured by ``irnn_plateau.py``: Adam's first ten updates lift
the spectral radius of ``W_h`` from 1 to 1.01-1.02 and switch off 94-95% of
the ReLUs at T = 300 (87-90% at T = 150 and 200); after 2,000 updates 97-98%
are off at every T, a state the IRNN leaves at T = 150 and 200 but not at
T = 300 within 50,000 Adam steps. The paper's IRNN had plain SGD with a tuned
learning rate and up to ~10^6 steps, which we did not run. T = 400 (about 4 core-hours more) is not measured yet;
``examples/README.md`` has the tables and the figure.

Each cell/T is one ``_common.Members`` program: its seeds are trained together
in one jitted program (independent initialisations and data). The
"final MSE" of a run is its mean training MSE over the last min(500, steps/4)
steps (each step sees a fresh batch, so this is an unbiased test estimate: on
16,000 sequences for the last 500 steps); the crossing step is the end of the first 100-step window whose
mean MSE is below 1/60.

Run: ``python examples/adding_problem.py`` (a few minutes), ``--paper`` for
the paper's grid, ``--time-limit S`` to stop all runs at the same step after S
seconds, ``--stop-solved MSE`` to stop a cell/T once every seed's last-500-step
mean MSE is below MSE (default in ``--paper``: 1/600; its curve then ends
early), ``--from-results FILE [FILE ...]`` to redraw the table and figure
from saved runs (e.g. one per ``--lengths``, merged).
"""

from __future__ import annotations

import sys

import _common
import jax
import jax.numpy as jnp

import rnnjax as rj
from rnnjax import train

BASELINE = 1.0 / 6.0
SOLVED = BASELINE / 10.0
CELL_NAMES = ("irnn", "lstm", "tanh", "gru")
LABELS = {"tanh": "tanh RNN", "irnn": "IRNN", "lstm": "LSTM", "gru": "GRU"}
WINDOW, FINAL = 100, 500


def sample(key, batch_size, length):
  """One batch of the adding problem in JAX (same law as ``rnnjax.train.adding_problem``)."""
  k1, k2, k3 = jax.random.split(key, 3)
  values = jax.random.uniform(k1, (batch_size, length))
  half = length // 2
  i = jax.random.randint(k2, (batch_size,), 0, half)
  j = jax.random.randint(k3, (batch_size,), half, length)
  markers = jax.nn.one_hot(i, length) + jax.nn.one_hot(j, length)
  x = jnp.stack([values, markers], axis=-1)
  y = jnp.sum(values * markers, axis=-1, keepdims=True)
  return x, y


def loss_fn(model, params, batch):
  x, y = batch
  return train.mse(model.apply(params, x), y)


def summarise(curves, cells, lengths):
  """Per (cell, T): final MSEs and crossing steps over seeds."""
  out = {}
  for name in cells:
    for T in lengths:
      c = curves.get(f"{name}@{T}")
      if c is None or c.shape[1] == 0:
        continue
      final = c[:, -_common.final_window(c.shape[1]):].mean(axis=1)
      out[f"{name}@{T}"] = {"final_mse": [float(v) for v in final],
                            "crossing": _common.first_crossing(c, SOLVED, WINDOW),
                            "steps": int(c.shape[1])}
  return out


def report(curves, seconds, meta, args):
  cells, lengths = meta["cells"], meta["lengths"]
  summary = summarise(curves, cells, lengths)
  steps = max(v["steps"] for v in summary.values())
  print(f"\nFinal MSE (mean of the last {_common.final_window(steps)} training steps, fresh batches), median "
        f"[min, max] over {len(meta['seeds'])} seeds; baseline {BASELINE:.4f}, "
        f"solved < {SOLVED:.4f}; {steps} steps (@N: the run stopped at step N, every seed "
        f"below {meta.get('stop_solved')}):")
  def final(key):
    v = summary.get(key)
    if v is None:
      return _common.NOT_RUN
    return _common.spread(v["final_mse"]) + _common.stop_tag(
        v["steps"], steps, v["final_mse"], meta.get("stop_solved"))
  rows = [[LABELS[n]] + [final(f"{n}@{T}") for T in lengths] for n in cells]
  print(_common.table(rows, ["cell"] + [f"T={T}" for T in lengths]))
  print(f"\nFirst step whose {WINDOW}-step mean MSE < 1/60 (median over the seeds "
        "that crossed; crossed/seeds; range):")
  rows = [[LABELS[n]] + [_common.crossing_summary(summary[f"{n}@{T}"]["crossing"])
                         if f"{n}@{T}" in summary else _common.NOT_RUN
                         for T in lengths] for n in cells]
  print(_common.table(rows, ["cell"] + [f"T={T}" for T in lengths]))
  print("\nTraining time per cell and T (all seeds together): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))

  if not args.no_plot:
    plt = _common.pyplot()
    pw = _common.plot_window(steps, WINDOW)
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.4 * len(lengths), 3.6),
                             squeeze=False, sharey=True)
    drawn = []
    for ax, T in zip(axes[0], lengths):
      drawn.append(_common.plot_runs(ax, curves, {f"{n}@{T}": LABELS[n] for n in cells}, pw))
      ax.axhline(BASELINE, color="k", ls="--", lw=1, label="baseline 1/6")
      ax.axhline(SOLVED, color="k", ls=":", lw=1, label="1/60")
      ax.set(title=f"T = {T}", xlabel="step", yscale="log", ylim=(1e-4, 2.0))
    axes[0][0].set_ylabel(f"MSE ({pw}-step means; median, min-max over seeds)")
    axes[0][drawn.index(max(drawn))].legend(fontsize=8)   # the panel with every cell
    _common.savefig(fig, args, "adding_problem.png")
  return summary


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--paper", action="store_true",
                 help="Le et al.'s grid: hidden 100, T 150 200 300 400, 3 seeds, 20,000 steps")
  p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths T")
  p.add_argument("--cells", nargs="+", default=None, choices=CELL_NAMES)
  p.add_argument("--steps", type=int, default=None, help="updates per run")
  p.add_argument("--hidden", type=int, default=None, help="hidden size")
  p.add_argument("--seeds", type=int, default=None, help="seeds per cell and T")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=None,
                 help="Adam learning rate (default 1e-3; quick 1e-2)")
  p.add_argument("--clip-norm", type=float, default=1.0)
  _common.add_run_args(p)
  p.add_argument("--stop-solved", type=float, default=None, metavar="MSE",
                 help="stop a cell/T once every seed's last-500-step mean MSE is below MSE "
                      "(default in --paper: 1/600, a tenth of the solved threshold)")
  args = p.parse_args(argv)

  if args.from_results:
    curves, seconds, meta = _common.load_curves(*args.from_results)
    summary = report(curves, seconds, meta, args)
    return {"summary": summary, "baseline": BASELINE, "meta": meta}

  paper = args.paper
  lengths = args.lengths or ([150, 200, 300, 400] if paper else [20] if args.quick else [100])
  cells = args.cells or (["gru", "tanh"] if args.quick else list(CELL_NAMES))
  steps = args.steps or (20000 if paper else 300 if args.quick else 3000)
  hidden = args.hidden or (100 if paper or not args.quick else 32)
  nseeds = args.seeds or (3 if paper or not args.quick else 2)
  args.lr = args.lr or (1e-2 if args.quick else 1e-3)
  chunk = 100 if steps % 100 == 0 else steps
  seeds = [args.seed + k for k in range(nseeds)]
  print(f"Adding problem: hidden {hidden}, T {lengths}, {nseeds} seeds, batch "
        f"{args.batch_size}, {steps} Adam steps (lr {args.lr}, clip_norm {args.clip_norm}); "
        f"baseline 1/6 = {BASELINE:.4f}", flush=True)

  runs = {}
  for T in lengths:
    for name in cells:
      model = rj.SequenceModel([_common.make_cell(name, hidden)], rj.Dense(1))
      runs[f"{name}@{T}"] = _common.Members(
          model, 2, loss_fn, lambda k, T=T: sample(k, args.batch_size, T), seeds=seeds,
          lr=args.lr, clip_norm=args.clip_norm, optimizer="adam", chunk=chunk)
  meta = {"cells": cells, "lengths": lengths, "seeds": seeds, "hidden": hidden,
          "batch_size": args.batch_size, "lr": args.lr, "clip_norm": args.clip_norm,
          "steps": steps, "optimizer": "adam"}
  results = args.results
  if results is None and not args.quick:
    import os
    results = os.path.join(args.out, "adding_problem.npz")
  on_round = _common.curve_saver(results, runs, meta)

  stop_mse = args.stop_solved if args.stop_solved is not None else (SOLVED / 10 if paper else None)
  meta["stop_solved"] = stop_mse

  finished = None if stop_mse is None else _common.all_seeds_below(stop_mse, FINAL)

  with _common.Timer() as total:
    done = _common.train_round_robin(runs, steps=steps, time_limit=args.time_limit,
                                     on_round=on_round, log=print, finished=finished)
  print(f"trained {done} steps per run in {total.seconds:.0f} s wall", flush=True)
  summary = report({k: r.curve for k, r in runs.items()}, {k: r.seconds for k, r in runs.items()},
                   meta, args)
  return {"summary": summary, "baseline": BASELINE, "seconds": total.seconds,
          "steps": done, "meta": meta}


if __name__ == "__main__":
  main()
  sys.exit(0)
