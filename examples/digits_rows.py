"""Real data, no download: scikit-learn's 8x8 digits read row by row by an LSTM and a GRU.

scikit-learn ships the UCI optical-recognition digits (1,797 images of 8 x 8
pixels, values 0-16) inside the package (``sklearn.datasets.load_digits``),
so nothing is fetched at run time. Each image becomes a sequence of T = 8 rows
of 8 pixels (scaled to [0, 1]): the network sees the digit one row at a time,
top to bottom, and classifies it after the last row,

    model = rj.SequenceModel([rj.LSTM(64)], rj.Dense(10))        # logits [B, 10]

trained with ``rnnjax.train.fit`` (cross-entropy, Adam 1e-2 with clip_norm 1,
batches of 64 drawn from a fixed, stratified 75% / 25% train / test split).

Reference: scikit-learn's ``LogisticRegression`` on the 64 flattened pixels of
the same split -- a model that sees the whole image at once.

Needs ``pip install scikit-learn`` (the ``examples`` extra of rnnjax).

Run: ``python examples/digits_rows.py`` (``--help`` for options).
"""

from __future__ import annotations

import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import train


def load(seed):
  """Returns (x_train [N, 8, 8], y_train [N], x_test, y_test) with pixels in [0, 1]."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)        # [1797, 8 rows, 8 pixels]
  y = d.target.astype(np.int32)
  return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def make_model(kind, hidden):
  cell = {"LSTM": rj.LSTM, "GRU": rj.GRU}[kind](hidden)
  return rj.SequenceModel([cell], rj.Dense(10))


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--steps", type=int, default=None, help="updates per model (default 800; quick 100)")
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--lr", type=float, default=1e-2)
  p.add_argument("--models", nargs="+", default=None, choices=["LSTM", "GRU"],
                 help="default: LSTM GRU (quick: GRU)")
  args = p.parse_args(argv)
  steps = _common.pick(args, "steps", 800, 100)
  kinds = _common.pick(args, "models", ["LSTM", "GRU"], ["GRU"])
  x_tr, x_te, y_tr, y_te = load(args.seed)
  print(f"sklearn digits: {len(x_tr)} train / {len(x_te)} test images, read as 8 rows x 8 pixels")

  from sklearn.linear_model import LogisticRegression
  from threadpoolctl import threadpool_limits   # installed with scikit-learn
  with threadpool_limits(1):   # one BLAS thread: 0.3 s instead of ~10 s on a busy 2-core CPU
    logreg = LogisticRegression(max_iter=2000).fit(x_tr.reshape(len(x_tr), -1), y_tr)
  ref = float(logreg.score(x_te.reshape(len(x_te), -1), y_te))
  print(f"reference: LogisticRegression on the 64 flattened pixels, test accuracy {100 * ref:.1f}%")

  def data(i):
    idx = np.random.default_rng((args.seed, i)).integers(0, len(x_tr), args.batch_size)
    return train.Batch(x_tr[idx], y_tr[idx])

  results = {}
  for kind in kinds:
    model = make_model(kind, args.hidden)
    params = model.init(jax.random.key(args.seed), input_size=8)
    res = train.fit(model, params, data, loss="cross_entropy",
                    optimizer=train.optimizer("adam", args.lr, clip_norm=1.0), steps=steps,
                    eval_data=train.Batch(x_te, y_te), eval_every=max(1, steps // 8),
                    progress=False)
    last = res.history[-1]
    pred = np.asarray(jax.jit(model.logits)(res.params, x_te)).argmax(-1)
    results[kind] = {"test_accuracy": float(last["eval_accuracy"]),
                     "test_loss": float(last["eval_loss"]), "seconds": res.seconds,
                     "curve": [(h["step"], h["eval_accuracy"]) for h in res.history
                               if "eval_accuracy" in h],
                     "pred": pred}
    print(f"  {kind}({args.hidden}) rows -> Dense(10): test accuracy "
          f"{100 * last['eval_accuracy']:.1f}%, test cross-entropy {last['eval_loss']:.3f} "
          f"({steps} steps, {res.seconds:.1f} s)")
    assert np.isclose(np.mean(pred == y_te), last["eval_accuracy"], atol=1e-6)

  if not args.no_plot:
    plt = _common.pyplot()
    fig = plt.figure(figsize=(11, 3.8))
    ax = fig.add_subplot(1, 2, 1)
    for kind, r in results.items():
      s, a = zip(*r["curve"])
      ax.plot(s, a, "o-", label=kind)
    ax.axhline(ref, color="k", ls="--", lw=1, label="LogisticRegression (64 pixels)")
    ax.set(xlabel="step", ylabel="test accuracy", title="digits read row by row", ylim=(0.5, 1.0))
    ax.legend(fontsize=8)
    kind = kinds[-1]
    pred = results[kind]["pred"]
    wrong = np.flatnonzero(pred != y_te)[:4]
    show = list(wrong) + list(np.flatnonzero(pred == y_te)[:8 - len(wrong)])
    for j, k in enumerate(show):
      a = fig.add_subplot(2, 8, 8 * (j // 4) + 5 + j % 4)
      a.imshow(x_te[k], cmap="gray_r")
      a.set_title(f"{kind}: {pred[k]} (true {y_te[k]})", fontsize=7,
                  color="red" if pred[k] != y_te[k] else "black")
      a.axis("off")
    _common.savefig(fig, args, "digits_rows.png")

  return {"logreg_accuracy": ref,
          **{k: {kk: vv for kk, vv in r.items() if kk not in ("pred", "curve")}
             for k, r in results.items()}}


if __name__ == "__main__":
  main()
  sys.exit(0)
