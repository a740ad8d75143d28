"""``rnnjax demo``: the classic 8-bit binary-addition task, trained end to end.

Task: a + b with a, b uniform in [0, 128) (so the sum fits 8 bits), fed one
bit pair per step, least significant bit first; the target at step t is bit t
of the sum. Model: ``SimpleRNN(16, "sigmoid")`` -> ``Dense(1, "sigmoid")``
at every step, binary cross-entropy, optax Adam, trained by ``rnnjax.train.fit``.
The demo prints the accuracy (every bit of the sum right) on 1,000 fresh
random sums.
"""

from __future__ import annotations


import jax
import numpy as np

import rnnjax as rj
from rnnjax.train import _tasks


DESCRIPTION = """\
The main job. Trains seed 003's 8-bit binary adder: a + b with a, b in
[0, 128), one bit pair per step, least significant bit first; a
SimpleRNN(16, sigmoid) -> Dense(1, sigmoid) at every step, binary
cross-entropy, Adam. Prints the accuracy (every bit of the sum right) on
1,000 fresh sums, then runs the vanishing-gradient study at init (sigmoid and
tanh RNNs, IRNN, LSTM, GRU on the adding problem) and writes a PNG to --out.
"""


def add_arguments(parser):
  parser.add_argument("--steps", type=int, default=2000, help="training steps")
  parser.add_argument("--batch-size", type=int, default=64, help="sums per training batch")
  parser.add_argument("--hidden", type=int, default=16, help="hidden size of the SimpleRNN")
  parser.add_argument("--lr", type=float, default=0.03, help="Adam learning rate")
  parser.add_argument("--seed", type=int, default=0, help="seed of the data and the weights")
  parser.add_argument("--T", type=int, default=100,
                      help="sequence length of the vanishing-gradient study")
  parser.add_argument("--out", default="rnnjax_out", help="folder for the PNG")


def _check(args):
  from rnnjax.cli import fail
  for flag, v, lo in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                      ("--hidden", args.hidden, 1), ("--T", args.T, 2)):
    if v < lo:
      raise fail("rnnjax demo", f"{flag} must be >= {lo}, got {v}.")
  if not args.lr > 0:
    raise fail("rnnjax demo", f"--lr must be > 0, got {args.lr}.")


# The generator lives in rnnjax.train._tasks (rnnjax.train.binary_addition); same signature as before.
binary_addition_batch = _tasks.binary_addition_arrays


def binary_addition(steps=2000, batch_size=64, hidden=16, lr=0.03, seed=0, verbose=True):
  """Trains the 8-bit adder with :func:`rnnjax.train.fit`.

  Batch ``i`` is ``rnnjax.train.binary_addition(batch_size, seed=(seed, i))``;
  loss: binary cross-entropy from the readout's logits; optimizer: Adam.
  Returns a dict with the accuracy on 1,000 fresh sums (every bit right), the
  training time, the final loss, the params, the model and the fit history.
  """
  from rnnjax import train
  model = rj.SequenceModel([rj.SimpleRNN(hidden, "sigmoid")], rj.Dense(1, "sigmoid"),
                           return_sequences=True)
  params = model.init(jax.random.key(seed), input_size=2)
  res = train.fit(model, params, lambda i: train.binary_addition(batch_size, seed=(seed, i)),
                  loss="binary_cross_entropy", optimizer=train.optimizer("adam", lr),
                  steps=steps, seed=seed, progress=False)
  if verbose:
    for h in res.history:
      if (h["step"] - 1) % 500 == 0 or h["step"] == steps:
        print(f"  step {h['step']:5d}  loss {h['loss']:.4f}  grad norm {h['grad_norm']:.3f}")
  xs, ys, a, b = binary_addition_batch(np.random.default_rng(seed + 10_000), 1000)
  pred = np.asarray(jax.jit(model.apply)(res.params, xs)) > 0.5
  correct = np.all(pred == (ys > 0.5), axis=(1, 2))
  return {"accuracy": float(correct.mean()), "train_seconds": res.seconds,
          "final_loss": res.history[-1]["loss"], "params": res.params, "model": model,
          "history": res.history}


def run(args) -> int:
  _check(args)
  print("rnnjax demo 1/2: 8-bit binary addition (seed 003), SimpleRNN(16, sigmoid), Adam")
  res = binary_addition(args.steps, args.batch_size, args.hidden, args.lr, args.seed)
  print(f"  accuracy on 1,000 fresh sums: {100 * res['accuracy']:.1f}%  "
        f"(trained in {res['train_seconds']:.1f} s, final loss {res['final_loss']:.4f})")
  print()
  print(f"rnnjax demo 2/2: vanishing-gradient study at init on the adding problem (T = {args.T})")
  from rnnjax import diagnostics
  diagnostics.vanishing_study(T=args.T, seed=args.seed, out_dir=args.out)
  return 0
