"""The copy (memory) task: LSTM and GRU against a tanh RNN and the 10 ln 8 / (T + 20) baseline.

Task (Hochreiter & Schmidhuber 1997; Arjovsky, Shah & Bengio 2016):
``rnnjax.train.copy_task``. The input shows 10 random symbols from an alphabet
of 8, then T - 1 blanks, a delimiter, and 10 more blanks; the network must
output blanks until the delimiter and then reproduce the 10 symbols in order.
Sequences have T + 20 steps; the loss is the cross-entropy at every step.
A network that has learnt only "blanks first, then some symbol" scores
``10 ln 8 / (T + 20)`` (blanks right, a uniform guess over 8 symbols for the
last 10 steps) -- the baseline; getting below it needs memory across T steps.

Models: ``rj.SequenceModel([cell], rj.Dense(9), return_sequences=True)`` with
an LSTM, a GRU and a tanh SimpleRNN (hidden 64), trained by
``rnnjax.train.fit`` (cross-entropy over all steps, Adam 1e-2 with clip_norm
1, fresh batches of 64) for 2,000 steps at T = 20 by default. The literature
runs T = 100-1000 for 10^4-10^5 steps; this is the CPU-minutes version.

Output: test cross-entropy relative to the baseline, accuracy on the 10
copied symbols (chance 1/8), and one PNG of the learning curves.

Run: ``python examples/copy_task.py`` (``--help`` for options).
"""

from __future__ import annotations

import math
import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import train

NUM_SYMBOLS, NUM_COPY = 8, 10
CELLS = ("lstm", "gru", "tanh")
LABELS = {"lstm": "LSTM", "gru": "GRU", "tanh": "tanh RNN"}


def baseline(delay, num_copy=NUM_COPY):
  """``n ln k / (T + 2n)``: blanks right, a uniform guess over the k symbols for the last n steps."""
  return num_copy * math.log(NUM_SYMBOLS) / (delay + 2 * num_copy)


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--delay", type=int, default=None, help="T, the blanks to wait (default 20; quick 5)")
  p.add_argument("--steps", type=int, default=None, help="updates per model (default 2000; quick 250)")
  p.add_argument("--hidden", type=int, default=None, help="hidden size (default 64; quick 32)")
  p.add_argument("--num-copy", type=int, default=None,
                 help="symbols to copy, n (default 10; quick 3)")
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--cells", nargs="+", default=None, choices=CELLS,
                 help="default: lstm gru tanh (quick: gru tanh)")
  args = p.parse_args(argv)
  T = _common.pick(args, "delay", 20, 5)
  steps = _common.pick(args, "steps", 2000, 250)
  hidden = _common.pick(args, "hidden", 64, 32)
  cells = _common.pick(args, "cells", list(CELLS), ["gru", "tanh"])
  n = _common.pick(args, "num_copy", NUM_COPY, 3)
  base = baseline(T, n)
  test = train.copy_task(1000, delay=T, num_copy=n, seed=(args.seed, 10**6))
  print(f"Copy task: {n} symbols, T = {T} (sequences of {T + 2 * n} steps), hidden {hidden}, "
        f"{steps} Adam steps; baseline {n} ln 8 / (T + {2 * n}) = {base:.4f}")

  results = {}
  for name in cells:
    model = rj.SequenceModel([_common.make_cell(name, hidden)], rj.Dense(NUM_SYMBOLS + 1),
                             return_sequences=True)
    params = model.init(jax.random.key(args.seed), input_size=NUM_SYMBOLS + 2)
    res = train.fit(model, params, lambda i: train.copy_task(args.batch_size, delay=T, num_copy=n,
                                                             seed=(args.seed, i)),
                    loss="cross_entropy", optimizer=train.optimizer("adam", args.lr, clip_norm=1.0),
                    steps=steps, eval_data=test, eval_every=max(1, steps // 20), progress=False)
    logits = np.asarray(jax.jit(model.logits)(res.params, test.x))
    copied = (logits[:, -n:].argmax(-1) == test.y[:, -n:]).mean()
    ev = [(h["step"], h["eval_loss"]) for h in res.history if "eval_loss" in h]
    results[name] = {"test_loss": ev[-1][1], "ratio": ev[-1][1] / base,
                     "copy_accuracy": float(copied), "seconds": res.seconds, "curve": ev,
                     "train_curve": res.metric("loss")}
    print(f"  {LABELS[name]:9s} test CE {ev[-1][1]:.4f} = {ev[-1][1] / base:.2f} x baseline, "
          f"copied symbols right {100 * copied:.1f}% (chance 12.5%), {res.seconds:.1f} s", flush=True)

  print("\n" + _common.table(
      [(LABELS[c], f"{r['test_loss']:.4f}", f"{r['ratio']:.2f}", f"{100 * r['copy_accuracy']:.1f}%",
        f"{r['seconds']:.0f}") for c, r in results.items()],
      ["cell", "test CE", "/ baseline", "copy acc", "seconds"]))

  if not args.no_plot:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for c, r in results.items():
      s, l = zip(*r["curve"])
      ax.plot(s, l, "o-", ms=3, label=LABELS[c])
    ax.axhline(base, color="k", ls="--", lw=1, label=f"baseline {n} ln 8 / (T + {2 * n})")
    ax.set(xlabel="step", ylabel="test cross-entropy per step", yscale="log",
           title=f"copy task, {n} symbols, T = {T}")
    ax.legend(fontsize=8)
    _common.savefig(fig, args, "copy_task.png")

  return {"baseline": base, "T": T, "num_copy": n,
          **{c: {k: v for k, v in r.items() if k not in ("curve", "train_curve")}
             for c, r in results.items()}}


if __name__ == "__main__":
  main()
  sys.exit(0)
