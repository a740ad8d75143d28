"""The copy (memory) task over seeds: LSTM, GRU, tanh RNN and IRNN against 10 ln 8 / (T + 20).

Task (Hochreiter & Schmidhuber 1997; Arjovsky, Shah & Bengio 2016, "Unitary
evolution recurrent neural networks"; Henaff, Szlam & LeCun 2016): the input
shows 10 random symbols from an alphabet of 8, then T - 1 blanks, a
delimiter, and 10 more blanks; the network must output blanks until the
delimiter and then reproduce the 10 symbols in order (``rnnjax.train.copy_task``
has the same law). Sequences have T + 20 steps; the loss is the cross-entropy
at every step. A network that has learnt only "blanks first, then some
symbol" scores ``10 ln 8 / (T + 20)`` (blanks right, a uniform guess over 8
symbols for the last 10 steps): the baseline. Getting below it needs memory
across T steps.

What the papers found: Arjovsky et al. (T = 100, 200, 300, 500; RMSProp
1e-3, batch 20; hidden sizes chosen for equal parameter counts: LSTM 40,
tanh RNN 80, IRNN 80, uRNN 128) report that the LSTM beats the baseline only
at T = 100 and that the tanh RNN and the IRNN stay at the baseline, while
their unitary RNN solves every T. Henaff et al. explain the plateau: the
baseline is a strong local optimum that gated and simple RNNs find first.

Our setting (``--paper``): T = 100, 200, 500; LSTM 40, tanh RNN 80, IRNN 80,
a GRU 48 (about the LSTM's parameter count), and three cells the papers did
not have: IndRNN 128 (Li et al. 2018's width; ``indrnn`` with unconstrained
``u``, ``indrnn-clip`` with their ``|u| <= 2^(1/L)`` over the L = T + 20 steps),
minGRU 128 (Feng et al. 2024;
its gates read only the input, 22 x 128 weights) and LRU 56 (Orvieto et al.
2023; 8,120 weights, the LSTM's 8,160), each one layer with a linear
read-out; RMSProp 1e-3 (decay 0.9) with
global-norm clipping 1 (``rnnjax.train.optimizer("rmsprop", 1e-3,
decay=0.9, clip_norm=1.0)``), fresh batches of 20, 10,000 steps, 3 seeds.

What we measured (``--paper --lengths 100``, one core of a 2-core AMD EPYC,
2,188 s wall; 10,000 steps, 3 seeds): cross-entropy / baseline over the last
500 steps, median [min, max], and copy accuracy: LSTM 0.960 [0.930, 0.989],
17.4%; GRU 0.887 [0.859, 1.000], 23.8%; tanh RNN 1.001 [1.001, 1.001], 12.3%
(chance); IRNN 0.957 [0.954, 1.219], 20.8%; IndRNN 18.4 [0.85, 246], 30.2%
(unstable: unconstrained ``u`` under RMSProp, one seed diverged); minGRU
1.002, 12.5% (chance); LRU 0.392 [0.329, 0.445], 67.8%, below half the
baseline from step 4,800-7,400 in every seed. So Arjovsky et al.'s T = 100
finding holds in kind (the LSTM only just below the baseline, the tanh RNN on
it), and the LRU, the diagonal complex recurrence closest to their unitary
RNN, is the only cell that gets well below it. One minGRU layer stays on the
baseline in every seed: its gates read only the input, so after the delimiter
each unit only decays geometrically towards a fixed point, which gives a
linear read-out little to tell the 10 output positions apart (a structural
hint, not a proof; stacks of minGRU, as Feng et al. use, were not run).
At T = 200 (``--time-limit 3300``: 8,000 of the
10,000 steps, 3,324 s) the LSTM sits on the baseline (1.000 [1.000, 1.001],
12.6%), as the paper found; so do the tanh RNN, the minGRU and two GRU seeds;
the IRNN loses one seed and the IndRNN all three to divergence; only the LRU
is below it (0.858 [0.749, 0.864], 29.4%). The IndRNN with Li et al.'s
constraint (``--cells indrnn-clip``, separate runs of 168 s and 348 s, all
10,000 steps) is stable and below the baseline at both lengths: 0.838 [0.829,
0.843], 30.0% at T = 100 and 0.850 [0.849, 0.854], 30.3% at T = 200 (level
with the LRU there). ``examples/README.md`` has the table and the figure.

Each cell/T is one ``_common.Members`` program (its seeds trained together in
one jitted program). The "final CE" is the mean training
cross-entropy over the last min(500, steps/4) steps (fresh batches: an unbiased test
estimate); the crossing step is the end of the first 100-step window whose
mean CE is below half the baseline. The copy accuracy (the 10 recalled
symbols, chance 1/8) is measured on 1,000 fresh sequences at the end.

Run: ``python examples/copy_task.py`` (a few minutes), ``--paper``,
``--time-limit S``, ``--from-results FILE ...`` (as in ``adding_problem.py``),
``--stop-solved RATIO`` (stop a cell/T once every seed's last-500-step mean
CE is below RATIO x baseline; default in ``--paper``: 0.01).
"""

from __future__ import annotations

import math
import os
import sys

import _common
import jax
import jax.numpy as jnp
import numpy as np

import rnnjax as rj
from rnnjax import train

NUM_SYMBOLS, NUM_COPY = 8, 10
CELLS = ("lstm", "gru", "tanh", "irnn", "indrnn", "indrnn-clip", "mingru", "lru")
LABELS = {"lstm": "LSTM", "gru": "GRU", "tanh": "tanh RNN", "irnn": "IRNN", "indrnn": "IndRNN",
          "indrnn-clip": "IndRNN |u|<=2^(1/L)", "mingru": "minGRU", "lru": "LRU"}
# The papers' sizes (about equal parameter counts with the LSTM's 40 units: 8,160
# recurrent-layer weights), IndRNN at Li et al.'s 128, minGRU at 128 (its 22 H weights
# read only the input), LRU at 56 (3 I H + 5 H + 2 H^2 = 8,120).
PAPER_HIDDEN = {"lstm": 40, "gru": 48, "tanh": 80, "irnn": 80, "indrnn": 128,
                "indrnn-clip": 128, "mingru": 128, "lru": 56}
WINDOW, FINAL, THRESHOLD = 100, 500, 0.5
STOP_RATIO = 0.01   # --paper stops a cell/T once every seed is below 1% of the baseline


def baseline(delay, num_copy=NUM_COPY):
  """``n ln k / (T + 2n)``: blanks right, a uniform guess over the k symbols for the last n steps."""
  return num_copy * math.log(NUM_SYMBOLS) / (delay + 2 * num_copy)


def sample(key, batch_size, delay, num_copy):
  """One batch of the copy task in JAX (same law as ``rnnjax.train.copy_task``)."""
  k, n = NUM_SYMBOLS, num_copy
  symbols = jax.random.randint(key, (batch_size, n), 0, k)
  blank = jnp.full((batch_size, delay + n), k)
  inp = jnp.concatenate([symbols, blank], axis=1).at[:, delay + n - 1].set(k + 1)
  labels = jnp.concatenate([jnp.full((batch_size, delay + n), k), symbols], axis=1)
  return jax.nn.one_hot(inp, k + 2), labels.astype(jnp.int32)


def make_cell(name, hidden, delay, num_copy):
  """The cell ``name`` (``_common.make_cell``), and ``"indrnn-clip"``: the IndRNN with
  Li et al.'s constraint on the recurrent weights, ``|u| <= 2^(1/L)`` over the
  ``L = T + 2n`` steps of a sequence (applied in the step: ``recurrent_clip``), so
  that no unit's ``|u|^L`` exceeds 2."""
  if name == "indrnn-clip":
    return rj.IndRNN(hidden, recurrent_clip=2.0 ** (1.0 / (delay + 2 * num_copy)))
  return _common.make_cell(name, hidden)


def loss_fn(model, params, batch):
  x, y = batch
  return train.cross_entropy(model.logits(params, x), y)


def report(curves, seconds, meta, args):
  cells, lengths, n = meta["cells"], meta["lengths"], meta["num_copy"]
  summary = {}
  for name in cells:
    for T in lengths:
      if f"{name}@{T}" not in curves:
        continue
      c, base = curves[f"{name}@{T}"], baseline(T, n)
      final = c[:, -_common.final_window(c.shape[1], FINAL):].mean(axis=1)
      summary[f"{name}@{T}"] = {
          "final_ce": [float(v) for v in final], "ratio": [float(v / base) for v in final],
          "crossing": _common.first_crossing(c, THRESHOLD * base, WINDOW),
          "copy_accuracy": meta.get("copy_accuracy", {}).get(f"{name}@{T}"),
          "steps": int(c.shape[1])}
  steps = max(v["steps"] for v in summary.values())
  print(f"\nFinal cross-entropy / baseline (mean of the last {_common.final_window(steps, FINAL)} "
        "training steps), median "
        f"[min, max] over {len(meta['seeds'])} seeds, {steps} steps (@N: stopped at step N, "
        f"every seed below {meta.get('stop_solved')} x baseline); copy accuracy "
        "(median over seeds, chance 12.5%):")
  rows = []
  for name in cells:
    row = [LABELS[name]]
    for T in lengths:
      s = summary.get(f"{name}@{T}")
      if s is None:
        row.append(_common.NOT_RUN)
        continue
      acc = s["copy_accuracy"]
      row.append(_common.spread(s["ratio"], "{:.3f}")
                 + (f", {100 * np.median(acc):.1f}%" if acc is not None else "")
                 + _common.stop_tag(s["steps"], steps, s["ratio"], meta.get("stop_solved")))
    rows.append(row)
  print(_common.table(rows, ["cell"] + [f"T={T} (baseline {baseline(T, n):.4f})"
                                        for T in lengths]))
  print(f"\nFirst step whose {WINDOW}-step mean CE < {THRESHOLD} x baseline:")
  rows = [[LABELS[c]] + [_common.crossing_summary(summary[f"{c}@{T}"]["crossing"])
                         if f"{c}@{T}" in summary else _common.NOT_RUN
                         for T in lengths] for c in cells]
  print(_common.table(rows, ["cell"] + [f"T={T}" for T in lengths]))
  print("\nTraining time per cell and T (all seeds together): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))

  if not args.no_plot:
    plt = _common.pyplot()
    pw = _common.plot_window(steps, WINDOW)
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.4 * len(lengths), 3.6),
                             squeeze=False)
    drawn = []
    for ax, T in zip(axes[0], lengths):
      drawn.append(_common.plot_runs(ax, curves, {f"{c}@{T}": LABELS[c] for c in cells}, pw))
      ax.axhline(baseline(T, n), color="k", ls="--", lw=1, label=f"{n} ln 8 / (T + {2 * n})")
      ax.set(title=f"T = {T}", xlabel="step", yscale="log")
      ax.set_ylim(top=10 * baseline(T, n))   # diverged runs would hide the rest
    axes[0][0].set_ylabel(f"cross-entropy ({pw}-step means; median, min-max;\n"
                          "axis cut at 10x baseline)")
    axes[0][drawn.index(max(drawn))].legend(fontsize=8)   # the panel with every cell
    _common.savefig(fig, args, "copy_task.png")
  return summary


def copy_accuracy(num_copy, test):
  def fn(model, params):
    logits = model.logits(params, test[0])
    return jnp.mean(jnp.argmax(logits[:, -num_copy:], -1) == test[1][:, -num_copy:])
  return fn


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--paper", action="store_true",
                 help="Arjovsky et al.'s grid: T 100 200 500, paper hidden sizes, RMSProp 1e-3, "
                      "batch 20, 3 seeds, 10,000 steps")
  p.add_argument("--lengths", type=int, nargs="+", default=None, help="delays T")
  p.add_argument("--cells", nargs="+", default=None, choices=CELLS,
                 help="default: all (quick: gru tanh)")
  p.add_argument("--steps", type=int, default=None, help="updates per run")
  p.add_argument("--hidden", type=int, default=None,
                 help="one hidden size for every cell (default: LSTM 40, GRU 48, tanh 80, IRNN 80, "
                      "IndRNN 128, minGRU 128, LRU 56)")
  p.add_argument("--num-copy", type=int, default=None, help="symbols to copy, n (default 10)")
  p.add_argument("--seeds", type=int, default=None, help="seeds per cell and T")
  p.add_argument("--batch-size", type=int, default=None, help="default 20 (quick 64)")
  p.add_argument("--optimizer", default=None, choices=["rmsprop", "adam"],
                 help="default rmsprop (decay 0.9); quick adam")
  p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3; quick 1e-2)")
  p.add_argument("--clip-norm", type=float, default=1.0)
  _common.add_run_args(p)
  p.add_argument("--stop-solved", type=float, default=None, metavar="RATIO",
                 help="stop a cell/T once every seed's last-500-step mean CE is below RATIO x "
                      f"baseline (default in --paper: {STOP_RATIO})")
  args = p.parse_args(argv)

  if args.from_results:
    curves, seconds, meta = _common.load_curves(*args.from_results)
    return {"summary": report(curves, seconds, meta, args), "meta": meta}

  paper, quick = args.paper, args.quick
  lengths = args.lengths or ([100, 200, 500] if paper else [5] if quick else [50])
  cells = args.cells or (["gru", "tanh"] if quick else list(CELLS))
  steps = args.steps or (10000 if paper else 250 if quick else 2000)
  n = args.num_copy or (3 if quick else NUM_COPY)
  nseeds = args.seeds or (2 if quick else 3)
  lr = args.lr or (1e-2 if quick else 1e-3)
  opt = args.optimizer or ("adam" if quick else "rmsprop")
  batch_size = args.batch_size or (64 if quick else 20)
  opt_kwargs = {"decay": 0.9} if opt == "rmsprop" else {}
  chunk = 100 if steps % 100 == 0 else steps
  seeds = [args.seed + k for k in range(nseeds)]
  hidden = {c: args.hidden or (32 if quick else PAPER_HIDDEN[c]) for c in cells}
  print(f"Copy task: {n} symbols, T {lengths}, hidden {hidden}, {nseeds} seeds, batch "
        f"{batch_size}, {steps} {opt} {opt_kwargs} steps (lr {lr}, clip_norm "
        f"{args.clip_norm})", flush=True)

  runs = {}
  for T in lengths:
    for name in cells:
      model = rj.SequenceModel([make_cell(name, hidden[name], T, n)],
                               rj.Dense(NUM_SYMBOLS + 1), return_sequences=True)
      runs[f"{name}@{T}"] = _common.Members(
          model, NUM_SYMBOLS + 2, loss_fn,
          lambda k, T=T: sample(k, batch_size, T, n), seeds=seeds, lr=lr,
          clip_norm=args.clip_norm, optimizer=opt, chunk=chunk, **opt_kwargs)
  meta = {"cells": cells, "lengths": lengths, "seeds": seeds, "hidden": hidden,
          "num_copy": n, "batch_size": batch_size, "lr": lr, "clip_norm": args.clip_norm,
          "steps": steps, "optimizer": f"{opt}{opt_kwargs or ''}"}
  results = args.results or (None if quick else os.path.join(args.out, "copy_task.npz"))
  on_round = _common.curve_saver(results, runs, meta)

  stop = args.stop_solved if args.stop_solved is not None else (STOP_RATIO if paper else None)
  meta["stop_solved"] = stop
  finished = None
  if stop is not None:
    limits = {id(runs[f"{c}@{T}"]): stop * baseline(T, n) for c in cells for T in lengths}
    finished = _common.all_seeds_below(lambda r: limits[id(r)], FINAL)

  with _common.Timer() as total:
    done = _common.train_round_robin(runs, steps=steps, time_limit=args.time_limit,
                                     on_round=on_round, finished=finished)
  acc = {}
  for T in lengths:
    test = sample(jax.random.key(10**7 + args.seed), 1000, T, n)
    for name in cells:
      acc[f"{name}@{T}"] = [float(v) for v in runs[f"{name}@{T}"].evaluate(copy_accuracy(n, test))]
  meta = {**meta, "steps_done": done, "copy_accuracy": acc, "wall_seconds": total.seconds}
  if results:
    _common.save_curves(results, runs, meta)
  print(f"trained {done} steps per run in {total.seconds:.0f} s wall", flush=True)
  summary = report({k: r.curve for k, r in runs.items()},
                   {k: r.seconds for k, r in runs.items()}, meta, args)
  return {"summary": summary, "baseline": {T: baseline(T, n) for T in lengths},
          "seconds": total.seconds, "steps": done, "meta": meta}


if __name__ == "__main__":
  main()
  sys.exit(0)
