"""Gradient flossing (Engelken, NeurIPS 2023) on the delayed XOR task: does it extend the delay?

Task (delayed XOR). Two input channels and ``T = max_delay + 2`` steps. Channel
0 carries two random bits ``a, b`` in {-1, +1} at steps ``T-2-d`` and ``T-1-d``
and zeros elsewhere; channel 1 is Gaussian noise (std 1) at every step (a
distractor). After the last step the network outputs ``XOR(a, b)`` (binary
cross-entropy on the readout of the last state): the bit ``b`` must be kept
for ``d`` steps and ``a`` for ``d + 1``, through the noise. Chance is 50%.

Model: ``SequenceModel([cell], Dense(1))`` with a tanh ``SimpleRNN`` and an
``LSTM`` (hidden 32), Adam with ``clip_norm=1``. For every delay ``d`` and
seed, three conditions start from the same initial params:

* ``none``   -- plain training;
* ``before`` -- :func:`rnnjax.train.floss` first (``pre_steps`` Adam updates on
  ``sum_{i<=k} lambda_i^2`` with fresh task inputs), then plain training;
* ``during`` -- training with :func:`rnnjax.train.flossing` chained before the
  optimizer: the flossing gradient is added every ``every`` updates.

A run succeeds when its test accuracy (1,024 fresh sequences) is at least
``0.95``. For the trained networks the first ``k`` Lyapunov exponents on
test inputs are reported: their spread ``lambda_1 - lambda_k`` sets the
condition number of the long-term Jacobian over ``d`` steps,
``~exp(d (lambda_1 - lambda_k))``.

All seeds and delays of one (cell, condition) are trained together in one
``jax.vmap``-ed, ``jax.lax.scan``-ed program (the delay is a traced
argument, the length fixed at ``max_delay + 2``), so there are six
compilations in all.

Reference: R. Engelken, "Gradient Flossing: Improving Gradient Descent
through Dynamic Control of Jacobians", NeurIPS 2023, arXiv:2312.17306.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import rnnjax as rj  # noqa: E402
from rnnjax import diagnostics as rd  # noqa: E402
from rnnjax import train  # noqa: E402

CONDITIONS = ("none", "before", "during")


def delayed_xor(key, batch, T, delay):
  """``(x [batch, T, 2], y [batch, 1])`` of the delayed XOR task (module docstring); ``delay`` may be traced."""
  ka, kn = jax.random.split(key)
  bits = jax.random.rademacher(ka, (batch, 2), jnp.float32)
  t = jnp.arange(T)
  ta, tb = T - 2 - delay, T - 1 - delay
  ch0 = (bits[:, :1] * (t == ta).astype(jnp.float32)[None, :]
         + bits[:, 1:] * (t == tb).astype(jnp.float32)[None, :])
  noise = jax.random.normal(kn, (batch, T), jnp.float32)
  x = jnp.stack([ch0, noise], axis=-1)
  y = (bits[:, 0] != bits[:, 1]).astype(jnp.float32)[:, None]
  return x, y


def make_cell(name, hidden):
  return {"tanh": lambda: rj.SimpleRNN(hidden, "tanh"), "lstm": lambda: rj.LSTM(hidden),
          "gru": lambda: rj.GRU(hidden)}[name]()


def build_runner(cell_name, condition, cfg):
  """jitted ``(seeds [n], delays [n]) -> dict of [n] results`` for one cell and condition."""
  cell = make_cell(cell_name, cfg["hidden"])
  model = rj.SequenceModel([cell], rj.Dense(1))
  T, B, k = cfg["max_delay"] + 2, cfg["batch"], cfg["k"]
  adam = train.optimizer("adam", cfg["lr"], clip_norm=1.0)

  def loss_fn(params, x, y):
    logits = model.logits(params, x)
    return train.binary_cross_entropy(logits, y), train.accuracy(logits, y)

  def run(seed, delay):
    key = jax.random.key(seed)
    k_init, k_data, k_floss, k_test = jax.random.split(key, 4)
    params = model.init(k_init, input_size=2)
    floss_inputs = lambda kk: delayed_xor(kk, cfg["floss_batch"], T, delay)[0]  # noqa: E731
    if condition == "before":
      cp, _ = train.floss(cell, params["layers"][0], floss_inputs, steps=cfg["pre_steps"], k=k,
                          warmup=cfg["warmup"], optimizer=optax.adam(cfg["floss_lr"]), key=k_floss)
      params = dict(params, layers=[cp])
    if condition == "during":
      opt = optax.chain(train.flossing(cell, floss_inputs, every=cfg["every"], k=k,
                                       weight=cfg["weight"], warmup=cfg["warmup"], key=k_floss),
                        adam)
    else:
      opt = adam
    grad = jax.value_and_grad(loss_fn, has_aux=True)

    def step(c, i):
      p, s = c
      x, y = delayed_xor(jax.random.fold_in(k_data, i), B, T, delay)
      (loss, acc), g = grad(p, x, y)
      u, s = opt.update(g, s, p)
      return (optax.apply_updates(p, u), s), (loss, acc)
    (params, _), (losses, accs) = jax.lax.scan(step, (params, opt.init(params)),
                                               jnp.arange(cfg["steps"]))
    xt, yt = delayed_xor(k_test, cfg["test_batch"], T, delay)
    _, test_acc = loss_fn(params, xt, yt)
    lam = rd.lyapunov_exponents(cell, params["layers"][0], xt[:cfg["floss_batch"]], k=k,
                                warmup=cfg["warmup"], key=k_test)
    return {"test_acc": test_acc, "lyap": jnp.mean(lam, axis=0), "loss_curve": losses,
            "acc_curve": accs}

  return jax.jit(jax.vmap(run))


def config(args):
  quick = args.quick
  return {
      "hidden": _common.pick(args, "hidden", 32, 16),
      "delays": [int(d) for d in (args.delays or ("5,15,30,45,60" if not quick else "3,20"))
                 .split(",")],
      "seeds": _common.pick(args, "seeds", 5, 2),
      "steps": _common.pick(args, "steps", 1000, 150),
      "batch": 32, "test_batch": 1024 if not quick else 256,
      "lr": 3e-3, "k": _common.pick(args, "k", 4, 2), "warmup": 10,
      "pre_steps": _common.pick(args, "pre_steps", 100, 60), "floss_lr": 1e-2,
      "floss_batch": _common.pick(args, "floss_batch", 4, 4),
      "conditions": (args.conditions or ",".join(CONDITIONS)).split(","),
      "every": _common.pick(args, "every", 25, 5), "weight": 1.0,
      "cells": (args.cells or ("tanh,lstm" if not quick else "tanh")).split(","),
      "threshold": 0.95,
  }


def main(argv=None):
  p = _common.parser(__doc__.split("\n")[0])
  p.add_argument("--delays", default=None, help="comma-separated delays (default 5,15,30,45,60)")
  p.add_argument("--cells", default=None, help="comma-separated: tanh, lstm, gru (default tanh,lstm)")
  p.add_argument("--seeds", type=int, default=None, help="seeds per delay (default 5)")
  p.add_argument("--steps", type=int, default=None, help="training updates (default 1000)")
  p.add_argument("--hidden", type=int, default=None, help="hidden size (default 32)")
  p.add_argument("--k", type=int, default=None, help="exponents flossed (default 4)")
  p.add_argument("--pre-steps", dest="pre_steps", type=int, default=None,
                 help="flossing updates before training (default 100)")
  p.add_argument("--every", type=int, default=None, help="flossing period during training (default 25)")
  p.add_argument("--floss-batch", dest="floss_batch", type=int, default=None,
                 help="sequences in each flossing trajectory batch (default 4)")
  p.add_argument("--conditions", default=None, help="comma-separated subset of none,before,during")
  p.add_argument("--json", default=None, help="write the results to this JSON file (and one "
                 "line per cell and condition, as they finish, to JSON.partial)")
  p.add_argument("--from-partial", dest="from_partial", default=None,
                 help="comma-separated .partial files of earlier runs: no training, only the "
                 "table and the plot")
  args = p.parse_args(argv)
  cfg = config(args)
  cfg["max_delay"] = max(cfg["delays"])
  delays = np.repeat(np.array(cfg["delays"]), cfg["seeds"])
  seeds = np.tile(np.arange(cfg["seeds"]) + 1000 * args.seed, len(cfg["delays"]))
  print(f"delayed XOR, T = {cfg['max_delay'] + 2}, hidden {cfg['hidden']}, {cfg['steps']} Adam "
        f"updates of {cfg['batch']}, k = {cfg['k']}, {cfg['seeds']} seeds per delay; success: "
        f"test accuracy >= {cfg['threshold']}")
  results, timings = {}, {}
  if args.from_partial:   # tables and plot from the partial files of earlier runs
    for path in args.from_partial.split(","):
      with open(path) as f:
        for line in f:
          for key, v in json.loads(line).items():
            c, d, cond = key.split("/")
            results[(c, int(d), cond)] = v
    cfg["cells"] = list(dict.fromkeys(c for c, _, _ in results))
  for cell_name in ([] if args.from_partial else cfg["cells"]):
    for cond in cfg["conditions"]:
      with _common.Timer() as t:
        out = build_runner(cell_name, cond, cfg)(jnp.asarray(seeds), jnp.asarray(delays))
        out = jax.device_get(out)
      timings[f"{cell_name}/{cond}"] = t.seconds
      for d in cfg["delays"]:
        m = delays == d
        acc = np.asarray(out["test_acc"])[m]
        lam = np.asarray(out["lyap"])[m]
        results[(cell_name, d, cond)] = {
            "success": float(np.mean(acc >= cfg["threshold"])), "acc": acc.tolist(),
            "lambda1": float(np.mean(lam[:, 0])), "lambdak": float(np.mean(lam[:, -1])),
            "spread": float(np.mean(lam[:, 0] - lam[:, -1])),
            "acc_curve": np.asarray(out["acc_curve"])[m].mean(0).tolist()}
      print(f"  {cell_name}/{cond}: {t.seconds:.0f} s; success by delay: " + ", ".join(
          f"{d}: {results[(cell_name, d, cond)]['success']:.0%}" for d in cfg["delays"]),
          flush=True)
      if args.json:   # partial results, one line per (cell, condition), as they come
        with open(args.json + ".partial", "a") as f:
          f.write(json.dumps({f"{cell_name}/{d}/{cond}": {
              kk: vv for kk, vv in results[(cell_name, d, cond)].items() if kk != "acc_curve"}
              for d in cfg["delays"]}) + "\n")
  rows = []
  for cell_name in cfg["cells"]:
    for d in cfg["delays"]:
      r = [results.get((cell_name, d, c)) for c in CONDITIONS]
      rows.append([cell_name, d]
                  + [f"{x['success'] * 100:.0f}% ({np.mean(x['acc']):.2f})" if x else "-" for x in r]
                  + [f"{x['lambda1']:+.3f}/{x['spread']:.3f}" if x else "-" for x in r])
  headers = ["cell", "delay"] + [f"success {c} (mean acc)" for c in CONDITIONS] + \
      [f"lam1/spread {c}" for c in CONDITIONS]
  print(_common.table(rows, headers))
  summary = {"config": {k: v for k, v in cfg.items()}, "timings": timings,
             "results": {f"{c}/{d}/{cond}": {kk: vv for kk, vv in v.items() if kk != "acc_curve"}
                         for (c, d, cond), v in results.items()}}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)
  if not args.no_plot:
    plt = _common.pyplot()
    fig, axes = plt.subplots(2, len(cfg["cells"]), figsize=(5.5 * len(cfg["cells"]), 7.5),
                             squeeze=False)
    for j, cell_name in enumerate(cfg["cells"]):
      ax = axes[0, j]
      for cond, mk in zip(CONDITIONS, "osd"):
        ds = [d for d in cfg["delays"] if (cell_name, d, cond) in results]
        if ds:
          ax.plot(ds, [results[(cell_name, d, cond)]["success"] for d in ds], marker=mk, label=cond)
      ax.set(title=f"{cell_name}: success rate ({cfg['seeds']} seeds)", xlabel="delay d",
             ylabel=f"P(test acc >= {cfg['threshold']})", ylim=(-0.05, 1.05))
      ax.legend(title="flossing")
      ax = axes[1, j]
      for cond, mk in zip(CONDITIONS, "osd"):
        ds = [d for d in cfg["delays"] if (cell_name, d, cond) in results]
        if not ds:
          continue
        ax.plot(ds, [results[(cell_name, d, cond)]["spread"] for d in ds],
                marker=mk, label=f"{cond}: lambda_1 - lambda_k")
        ax.plot(ds, [results[(cell_name, d, cond)]["lambda1"] for d in ds],
                marker=mk, ls=":", label=f"{cond}: lambda_1")
      ax.axhline(0, color="k", lw=0.5)
      ax.set(title=f"{cell_name}: exponents after training (k = {cfg['k']})", xlabel="delay d",
             ylabel="per step")
      ax.legend(fontsize=7)
    fig.suptitle("Gradient flossing on the delayed XOR task")
    fig.subplots_adjust(hspace=0.35)
    summary["png"] = _common.savefig(fig, args, "gradient_flossing.png")
  summary["table"] = _common.table(rows, headers)
  summary["success"] = {f"{c}/{d}/{cond}": v["success"] for (c, d, cond), v in results.items()}
  summary["mean_acc"] = {f"{c}/{d}/{cond}": float(np.mean(v["acc"]))
                         for (c, d, cond), v in results.items()}
  return summary


if __name__ == "__main__":
  main()
