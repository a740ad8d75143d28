"""Seed 003's 8-bit binary adder: hand-written BPTT in NumPy == jax.grad through rj.scan.

The task (seed 003): add two 7-bit numbers a, b (so a + b fits in 8 bits), fed
one bit pair per time step, least significant bit first; the target at step t
is bit t of the sum. The carry bit has to be remembered from one step to the
next, which is what the recurrent state is for.

The network is the seed's: a sigmoid Elman RNN with 16 hidden units and a
sigmoid readout at every step,

    h_t = sigmoid(x_t U + h_{t-1} W + b)          x_t [B, 2], h_t [B, 16], h_0 = 0
    y_t = sigmoid(h_t V + c)                      y_t [B, 1]
    L   = mean_batch sum_t 1/2 (y_t - d_t)^2      (the seed's squared error)

Back-propagation through time, written afresh from these equations (not copied
from the seed), with delta_t = dL/d(pre-activation):

    dz_t = (y_t - d_t) * y_t (1 - y_t)                     output delta   [B, 1]
    dh_t = dz_t V^T + da_{t+1} W^T                          (da_{T+1} = 0)  [B, H]
    da_t = dh_t * h_t (1 - h_t)                             hidden delta   [B, H]
    dV = sum_t h_t^T dz_t    dc = sum_t dz_t
    dU = sum_t x_t^T da_t    dW = sum_t h_{t-1}^T da_t    db = sum_t da_t

The script
  1. checks this NumPy BPTT against ``jax.grad`` of the same loss computed
     with ``rj.scan(rj.SimpleRNN(16, "sigmoid"), ...)`` and
     ``rj.Dense(1, "sigmoid")``, in float64, for both implementations of
     ``rj.scan`` (the fused custom-VJP one and the plain ``lax.scan`` one);
  2. reproduces the seed's training run (SGD, learning rate 0.1, one sum per
     step, 10,000 steps, weights uniform in [-1, 1]) twice -- with the NumPy
     BPTT and with ``rnnjax.train.fit`` + ``rnnjax.train.optimizer("sgd", 0.1)``
     in float64 -- and shows the two runs stay equal;
  3. trains the same model the library way (``rnnjax.train.fit``, Adam,
     binary cross-entropy, batches of 64) from the default initialisation.

Accuracy is measured on *held-out* sums: 20% of the 128 x 128 pairs (a, b) are
never shown during training; a sum counts as right only if all 8 bits are.

Run: ``python examples/binary_addition.py`` (``--help`` for options).
"""

from __future__ import annotations

import sys

import _common
import jax
import jax.numpy as jnp
import numpy as np

import rnnjax as rj
from rnnjax import train

BITS = 8
HIDDEN = 16


# ---------------------------------------------------------------------------
# Data: all pairs (a, b) with a, b in [0, 128), split into train / held-out.
# ---------------------------------------------------------------------------
def bits_of(n, bits=BITS):
  """``n [...] -> [..., bits]`` (least significant bit first)."""
  return (np.asarray(n)[..., None] >> np.arange(bits)) & 1


def encode(a, b):
  """Returns ``xs [B, 8, 2]`` (bits of a and b, LSB first) and ``ds [B, 8, 1]`` (bits of a+b)."""
  xs = np.stack([bits_of(a), bits_of(b)], axis=-1).astype(np.float64)
  ds = bits_of(np.asarray(a) + np.asarray(b))[..., None].astype(np.float64)
  return xs, ds


def split_pairs(seed, held_out=0.2):
  """All 16,384 pairs, shuffled; returns (train_pairs [N, 2], test_pairs [M, 2])."""
  half = 2 ** (BITS - 1)
  a, b = np.meshgrid(np.arange(half), np.arange(half), indexing="ij")
  pairs = np.stack([a.ravel(), b.ravel()], axis=1)
  pairs = np.random.default_rng(seed).permutation(pairs)
  n_test = int(round(held_out * len(pairs)))
  return pairs[n_test:], pairs[:n_test]


def accuracy_of(predict, pairs):
  """Fraction of pairs whose 8 predicted bits all equal the bits of a + b."""
  xs, ds = encode(pairs[:, 0], pairs[:, 1])
  y = np.asarray(predict(xs))
  return float(np.mean(np.all((y > 0.5) == (ds > 0.5), axis=(1, 2))))


# ---------------------------------------------------------------------------
# The hand-written NumPy model (float64).
# ---------------------------------------------------------------------------
def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def numpy_forward(p, xs):
  """Returns (hs [B, T+1, H] with hs[:, 0] = h_0 = 0, ys [B, T, 1])."""
  B, T, _ = xs.shape
  H = p["W"].shape[0]
  hs = np.zeros((B, T + 1, H))
  for t in range(T):
    hs[:, t + 1] = sigmoid(xs[:, t] @ p["U"] + hs[:, t] @ p["W"] + p["b"])
  ys = sigmoid(hs[:, 1:] @ p["V"] + p["c"])
  return hs, ys


def numpy_loss_and_grads(p, xs, ds):
  """The loss ``mean_b sum_t (y - d)^2 / 2`` and its gradients by hand-written BPTT."""
  B, T, _ = xs.shape
  hs, ys = numpy_forward(p, xs)
  loss = 0.5 * np.sum((ys - ds) ** 2) / B
  dz = (ys - ds) * ys * (1.0 - ys) / B                     # [B, T, 1]
  g = {k: np.zeros_like(v) for k, v in p.items()}
  da_next = np.zeros((B, p["W"].shape[0]))
  for t in reversed(range(T)):
    h, h_prev = hs[:, t + 1], hs[:, t]
    dh = dz[:, t] @ p["V"].T + da_next @ p["W"].T
    da = dh * h * (1.0 - h)
    g["V"] += h.T @ dz[:, t]
    g["c"] += dz[:, t].sum(0)
    g["U"] += xs[:, t].T @ da
    g["W"] += h_prev.T @ da
    g["b"] += da.sum(0)
    da_next = da
  return loss, g


def seed_init(rng, hidden=HIDDEN):
  """Seed 003's initialisation: U, W, V uniform in [-1, 1]; biases zero (the seed has none)."""
  u = lambda *s: 2.0 * rng.random(s) - 1.0
  return {"U": u(2, hidden), "W": u(hidden, hidden), "b": np.zeros(hidden),
          "V": u(hidden, 1), "c": np.zeros(1)}


# ---------------------------------------------------------------------------
# The same model in rnnjax, and the mapping between the two parameter sets.
# ---------------------------------------------------------------------------
def make_model(hidden=HIDDEN, dtype=jnp.float32):
  """``SimpleRNN(hidden, sigmoid) -> Dense(1, sigmoid)`` at every step.

  ``dtype`` is the cells' ``param_dtype``, which is also the dtype of the zero
  initial carry: float64 runs need ``dtype=jnp.float64`` (under
  ``jax.enable_x64``), or the carry would silently stay float32.
  """
  return rj.SequenceModel([rj.SimpleRNN(hidden, "sigmoid", param_dtype=dtype)],
                          rj.Dense(1, "sigmoid", param_dtype=dtype), return_sequences=True)


def to_rnnjax(p, dtype):
  """NumPy dict -> the params pytree of :func:`make_model`."""
  a = lambda v: jnp.asarray(v, dtype)
  return {"layers": ({"w_i": a(p["U"]), "w_h": a(p["W"]), "b": a(p["b"])},),
          "readout": {"w": a(p["V"]), "b": a(p["c"])}}


def from_rnnjax(params):
  layer, ro = params["layers"][0], params["readout"]
  n = lambda v: np.asarray(v, np.float64)
  return {"U": n(layer["w_i"]), "W": n(layer["w_h"]), "b": n(layer["b"]),
          "V": n(ro["w"]), "c": n(ro["b"])}


def squared_loss(model, params, xs, ds):
  ys = model.apply(params, xs)
  return 0.5 * jnp.sum((ys - ds) ** 2) / xs.shape[0]


# ---------------------------------------------------------------------------
# 1. The gradient check.
# ---------------------------------------------------------------------------
def gradient_check(seed=0, batch=32, hidden=HIDDEN):
  """NumPy BPTT vs ``jax.grad`` through ``rj.scan``, both in float64.

  ``rj.scan`` has two implementations (``impl="fused"``, a custom VJP with a
  hand-optimised backward loop, the default for this cell; and
  ``impl="reference"``, a plain ``lax.scan`` differentiated by JAX); both are
  checked. Returns the max relative differences per parameter.
  """
  rng = np.random.default_rng(seed)
  p = seed_init(rng, hidden)
  p["b"] = 0.1 * rng.standard_normal(hidden)  # non-zero biases so their gradient is tested
  p["c"] = 0.1 * rng.standard_normal(1)
  pairs = rng.integers(0, 2 ** (BITS - 1), size=(batch, 2))
  xs, ds = encode(pairs[:, 0], pairs[:, 1])
  loss_np, g_np = numpy_loss_and_grads(p, xs, ds)
  out = {"loss_numpy": float(loss_np)}
  with jax.enable_x64(True):
    cell = rj.SimpleRNN(hidden, "sigmoid", param_dtype=jnp.float64)
    readout = rj.Dense(1, "sigmoid", param_dtype=jnp.float64)

    def loss(params, impl):   # the same squared error, written on rj.scan directly
      _, hs = rj.scan(cell, params["layers"][0], xs, impl=impl)      # [B, T, H]
      ys = readout(params["readout"], hs)                             # [B, T, 1]
      return 0.5 * jnp.sum((ys - ds) ** 2) / xs.shape[0]

    for impl in ("auto", "reference"):
      loss_j, g_j = jax.value_and_grad(loss)(to_rnnjax(p, jnp.float64), impl)
      g_j = from_rnnjax(g_j)
      assert g_j["U"].dtype == np.float64
      rel = {k: float(np.max(np.abs(g_np[k] - g_j[k])) / np.max(np.abs(g_np[k]))) for k in g_np}
      out[impl] = {"loss": float(loss_j), "grad_rel_diff": rel,
                   "loss_rel_diff": abs(float(loss_np) - float(loss_j)) / abs(float(loss_np))}
  out["max_grad_rel_diff"] = max(max(out[i]["grad_rel_diff"].values()) for i in ("auto", "reference"))
  out["loss_rel_diff"] = max(out[i]["loss_rel_diff"] for i in ("auto", "reference"))
  return out


# ---------------------------------------------------------------------------
# 2. The seed's training run, in NumPy and in rnnjax (float64, same stream).
# ---------------------------------------------------------------------------
def seed_run(train_pairs, test_pairs, steps, lr=0.1, seed=0, hidden=HIDDEN):
  rng = np.random.default_rng(seed + 1)
  p0 = seed_init(rng, hidden)
  stream = train_pairs[rng.integers(0, len(train_pairs), size=steps)]

  # (a) NumPy: the hand-written BPTT + plain SGD, one sum per step.
  p = {k: v.copy() for k, v in p0.items()}
  losses_np = []
  with _common.Timer() as t_np:
    for i in range(steps):
      xs, ds = encode(stream[i:i + 1, 0], stream[i:i + 1, 1])
      loss, g = numpy_loss_and_grads(p, xs, ds)
      for k in p:
        p[k] -= lr * g[k]
      losses_np.append(loss)
  acc_np = accuracy_of(lambda xs: numpy_forward(p, xs)[1], test_pairs)

  # (b) rnnjax: the same model trained by the library's loop, rnnjax.train.fit,
  #     with SGD(lr) from rnnjax.train.optimizer, the same init and the same sums.
  with jax.enable_x64(True):
    model = make_model(hidden, jnp.float64)
    xs_all, ds_all = encode(stream[:, 0], stream[:, 1])
    res = train.fit(lambda params, batch, key: squared_loss(model, params, *batch),
                    to_rnnjax(p0, jnp.float64),
                    lambda i: (xs_all[i:i + 1], ds_all[i:i + 1]),
                    optimizer=train.optimizer("sgd", lr), steps=steps, progress=False)
    acc_j = accuracy_of(lambda xs: model.apply(res.params, jnp.asarray(xs)), test_pairs)
    pj = from_rnnjax(res.params)
  param_diff = max(float(np.max(np.abs(p[k] - pj[k]))) for k in p)
  return {"numpy_test_accuracy": acc_np, "rnnjax_test_accuracy": acc_j,
          "max_param_diff": param_diff, "numpy_seconds": t_np.seconds,
          "rnnjax_seconds": res.seconds,
          "losses_numpy": np.asarray(losses_np), "losses_rnnjax": res.metric("loss")}


# ---------------------------------------------------------------------------
# 3. The library way: rnnjax.train.fit, Adam, binary cross-entropy, batches.
# ---------------------------------------------------------------------------
def library_run(train_pairs, test_pairs, steps, batch_size=64, lr=0.03, seed=0, hidden=HIDDEN):
  """``rnnjax.train.fit`` with Adam and binary cross-entropy on the model's logits."""
  model = make_model(hidden)
  params = model.init(jax.random.key(seed), input_size=2)

  def data(i):  # batch i: random training pairs, a pure function of (seed, i)
    rng = np.random.default_rng((seed, 2, i))
    batch = train_pairs[rng.integers(0, len(train_pairs), size=batch_size)]
    xs, ds = encode(batch[:, 0], batch[:, 1])
    return train.Batch(xs.astype(np.float32), ds.astype(np.float32))

  res = train.fit(model, params, data, loss="binary_cross_entropy",
                  optimizer=train.optimizer("adam", lr), steps=steps, progress=False)
  predict = jax.jit(model.apply)
  acc = accuracy_of(lambda xs: predict(res.params, xs.astype(np.float32)), test_pairs)
  return {"test_accuracy": acc, "seconds": res.seconds, "losses": res.metric("loss"),
          "params": res.params, "model": model}


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--seed-steps", type=int, default=None,
                 help="SGD steps of the seed reproduction (default 10000, quick 100)")
  p.add_argument("--steps", type=int, default=None,
                 help="Adam steps of the library run (default 1500, quick 400)")
  p.add_argument("--batch-size", type=int, default=64)
  args = p.parse_args(argv)
  seed_steps = _common.pick(args, "seed_steps", 10_000, 100)
  steps = _common.pick(args, "steps", 1_500, 400)
  train_pairs, test_pairs = split_pairs(args.seed)
  print(f"8-bit binary addition (seed 003): {len(train_pairs)} training pairs, "
        f"{len(test_pairs)} held-out pairs")

  print("\n1. Hand-written NumPy BPTT vs jax.grad through rj.scan (float64, batch 32)")
  gc = gradient_check(args.seed)
  print(f"   loss  numpy {gc['loss_numpy']:.15f}  rnnjax {gc['auto']['loss']:.15f}")
  print("   max |numpy - jax| / max |numpy|    rj.scan (default)   rj.scan(impl='reference')")
  for k in gc["auto"]["grad_rel_diff"]:
    print(f"   d{k:2s}                              {gc['auto']['grad_rel_diff'][k]:.2e}"
          f"            {gc['reference']['grad_rel_diff'][k]:.2e}")

  print(f"\n2. The seed's run: SGD lr 0.1, one sum per step, {seed_steps} steps, squared error")
  sr = seed_run(train_pairs, test_pairs, seed_steps, seed=args.seed)
  print(f"   NumPy BPTT : held-out accuracy {100 * sr['numpy_test_accuracy']:.1f}%  "
        f"({sr['numpy_seconds']:.1f} s)")
  print(f"   rnnjax fit : held-out accuracy {100 * sr['rnnjax_test_accuracy']:.1f}%  "
        f"({sr['rnnjax_seconds']:.1f} s)")
  print(f"   max |param difference| after {seed_steps} steps: {sr['max_param_diff']:.2e}")

  print(f"\n3. rnnjax, Adam lr 0.03, batch {args.batch_size}, BCE, {steps} steps")
  lr_ = library_run(train_pairs, test_pairs, steps, args.batch_size, seed=args.seed)
  print(f"   held-out accuracy {100 * lr_['test_accuracy']:.1f}%  ({lr_['seconds']:.1f} s)")

  if not args.no_plot:
    plt = _common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    w = max(1, seed_steps // 100)
    smooth = lambda v: np.convolve(v, np.ones(w) / w, mode="valid")
    axes[0].plot(smooth(sr["losses_numpy"]), label="NumPy hand-written BPTT")
    axes[0].plot(smooth(sr["losses_rnnjax"]), "--", label="rnnjax.train.fit, SGD")
    axes[0].set(title=f"Seed 003 run (SGD 0.1, batch 1), moving avg {w}",
                xlabel="step", ylabel="squared error per sum")
    axes[0].legend()
    axes[1].plot(lr_["losses"])
    axes[1].set(title=f"rnnjax, Adam, batch {args.batch_size}", xlabel="step",
                ylabel="binary cross-entropy", yscale="log")
    _common.savefig(fig, args, "binary_addition.png")

  return {"max_grad_rel_diff": gc["max_grad_rel_diff"], "loss_rel_diff": gc["loss_rel_diff"],
          "seed_numpy_accuracy": sr["numpy_test_accuracy"],
          "seed_rnnjax_accuracy": sr["rnnjax_test_accuracy"],
          "seed_max_param_diff": sr["max_param_diff"],
          "adam_accuracy": lr_["test_accuracy"], "adam_seconds": lr_["seconds"]}


if __name__ == "__main__":
  main()
  sys.exit(0)
