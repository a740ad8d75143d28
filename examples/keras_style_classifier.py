"""Seed 002's Keras model in rnnjax: SimpleRNN(64, relu) -> Dense(1, sigmoid), then an LSTM.

Seed 002 writes, in Keras::

  model = Sequential()
  model.add(SimpleRNN(units=64, input_shape=(None, 1), activation='relu'))
  model.add(Dense(units=1, activation='sigmoid'))
  model.compile(optimizer='adam', loss='binary_crossentropy', metrics=['accuracy'])
  model.fit(x_train, y_train, epochs=10, batch_size=32)

and then the same with ``LSTM(units=64, activation='relu')``. In rnnjax::

  model = rj.SequenceModel([rj.SimpleRNN(64, "relu")], rj.Dense(1, "sigmoid"))
  params = model.init(jax.random.key(0), input_size=1)
  res = rj.train.fit(model, params, data, loss="binary_cross_entropy",
                     optimizer=rj.train.optimizer("adam", 1e-3), steps=...)

(``rj.LSTM(64, activation="relu")`` is Keras' ``LSTM(64, activation='relu')``:
relu replaces tanh for the candidate and the cell output; the gates stay
sigmoid.) ``loss="binary_cross_entropy"`` trains on the readout's logits, which
is Keras' BCE on the sigmoid output computed stably.

Data: ``rnnjax.train.sequence_classification`` with one feature, as the seed's
``input_shape=(None, 1)``: sequences of 10 to 20 steps (padded to 20; the
``lengths`` go to the model, which reads each sequence's last valid step -- what
Keras' masking does), ``x_t = (2y - 1) * 0.5 + N(0, 1)``. A fixed training set
of 2,000 sequences, 10 epochs of shuffled batches of 32 (620 steps), as in
``model.fit(..., epochs=10, batch_size=32)``; 2,000 test sequences.

Reference: the Bayes-optimal classifier for this data is ``sign(sum_t x_t)``
(its accuracy on the same test set is printed); no model can beat it.

Run: ``python examples/keras_style_classifier.py`` (``--help`` for options).
"""

from __future__ import annotations

import sys

import _common
import jax
import numpy as np

import rnnjax as rj
from rnnjax import train

LENGTH = 20
SEPARATION = 0.5


def make_model(kind, units):
  if kind == "SimpleRNN":
    layer = rj.SimpleRNN(units, "relu")
  else:
    layer = rj.LSTM(units, activation="relu")
  return rj.SequenceModel([layer], rj.Dense(1, "sigmoid"))


def epoch_batches(data, batch_size, seed):
  """``i -> batch i`` of Keras-style epochs: each epoch a fresh shuffle of ``data``."""
  n = len(data.y)
  per_epoch = n // batch_size

  def batch_at(i):
    epoch, j = divmod(i, per_epoch)
    order = np.random.default_rng((seed, epoch)).permutation(n)
    idx = order[j * batch_size:(j + 1) * batch_size]
    return train.Batch(data.x[idx], data.y[idx], data.lengths[idx])

  return batch_at, per_epoch


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--epochs", type=int, default=None, help="epochs (default 10; quick 2)")
  p.add_argument("--train-size", type=int, default=None, help="training sequences (default 2000)")
  p.add_argument("--units", type=int, default=64)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (Keras default 1e-3)")
  p.add_argument("--models", nargs="+", default=None, choices=["SimpleRNN", "LSTM"],
                 help="which models (default both)")
  args = p.parse_args(argv)
  epochs = _common.pick(args, "epochs", 10, 2)
  n_train = _common.pick(args, "train_size", 2000, 640)
  kinds = _common.pick(args, "models", ["SimpleRNN", "LSTM"], ["SimpleRNN", "LSTM"])
  data = train.sequence_classification(n_train, length=LENGTH, features=1,
                                       separation=SEPARATION, seed=(args.seed, 0))
  test = train.sequence_classification(2000, length=LENGTH, features=1,
                                       separation=SEPARATION, seed=(args.seed, 1))
  bayes = float(np.mean((test.x.sum(axis=(1, 2)) > 0) == (test.y[:, 0] > 0.5)))
  batch_at, per_epoch = epoch_batches(data, args.batch_size, args.seed)
  steps = epochs * per_epoch
  print(f"Sequence classification: {n_train} training / 2000 test sequences, lengths 10-{LENGTH}, "
        f"1 feature; Bayes-optimal test accuracy {100 * bayes:.1f}%")
  print(f"Adam lr {args.lr}, batch {args.batch_size}, {epochs} epochs = {steps} steps")

  results = {}
  for kind in kinds:
    model = make_model(kind, args.units)
    params = model.init(jax.random.key(args.seed), input_size=1)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    res = train.fit(model, params, batch_at, loss="binary_cross_entropy",
                    optimizer=train.optimizer("adam", args.lr), steps=steps,
                    eval_data=test, eval_every=per_epoch, progress=False)
    evals = [h for h in res.history if "eval_loss" in h]
    print(f"\n{kind}({args.units}, relu) -> Dense(1, sigmoid): {n_params} parameters, "
          f"{res.seconds:.1f} s")
    for e, h in enumerate(evals, 1):
      epoch = res.history[h["step"] - per_epoch:h["step"]]   # Keras prints epoch means
      tr = {k: np.mean([x[k] for x in epoch]) for k in ("loss", "accuracy")}
      print(f"  epoch {e:2d}  loss {tr['loss']:.4f}  accuracy {tr['accuracy']:.3f}  "
            f"test loss {h['eval_loss']:.4f}  test accuracy {h['eval_accuracy']:.3f}")
    results[kind] = {"test_accuracy": evals[-1]["eval_accuracy"],
                     "test_loss": evals[-1]["eval_loss"], "seconds": res.seconds,
                     "epoch_accuracy": [h["eval_accuracy"] for h in evals],
                     "parameters": int(n_params)}

  print("\n" + _common.table(
      [(k, f"{100 * r['test_accuracy']:.1f}%", f"{r['test_loss']:.4f}", r["parameters"],
        f"{r['seconds']:.1f}") for k, r in results.items()] + [("Bayes optimal", f"{100 * bayes:.1f}%", "", "", "")],
      ["model", "test acc", "test BCE", "params", "seconds"]))

  if not args.no_plot:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for k, r in results.items():
      ax.plot(range(1, epochs + 1), r["epoch_accuracy"], "o-", label=k)
    ax.axhline(bayes, color="k", ls="--", lw=1, label="Bayes optimal")
    ax.set(xlabel="epoch", ylabel="test accuracy", title="Keras-style classifier (seed 002)")
    ax.legend()
    _common.savefig(fig, args, "keras_style_classifier.png")

  return {"bayes_accuracy": bayes, **{k: {kk: vv for kk, vv in r.items()}
                                      for k, r in results.items()}}


if __name__ == "__main__":
  main()
  sys.exit(0)
