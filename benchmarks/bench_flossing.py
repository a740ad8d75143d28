"""Overhead of gradient flossing per training step.

A tanh ``SimpleRNN(H)`` -> ``Dense(1)`` model, one Adam step (``value_and_grad``
of a mean-squared loss on a batch of 32 sequences of ``T`` steps + the
update), against the same step with :func:`rnnjax.train.flossing` chained
before Adam, flossing on every step (``every=1``) with ``k`` in {1, 4, 16}
on ``B_f = 8`` sequences of ``T`` steps (the penalty's trajectory: ``k``
JVPs and one ``[H, k]`` QR per step forward, a reverse sweep with one
``k x k`` triangular solve per step).

Compile time is measured apart (the first call); run time is the median
over repeated calls, each synchronised with ``block_until_ready``. BLAS/LAPACK
run single-threaded (``single_threaded_blas``: on a loaded host OpenBLAS's
spinning threads slow the small QRs down by large factors). The
overhead of flossing every ``n`` steps is ``(t_floss - t_plain) / n``.

Usage::

  python -m benchmarks.bench_flossing [--hidden 32,64] [--T 100] [--repeats 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import rnnjax as rj
from rnnjax import train
from rnnjax.diagnostics._core import single_threaded_blas


def _timed(fn, *args, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t0
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return first, min(ts)


def run(hidden, T, ks, repeats, batch=32, floss_batch=8):
  cell = rj.SimpleRNN(hidden, "tanh")
  model = rj.SequenceModel([cell], rj.Dense(1))
  params = model.init(jax.random.key(0), input_size=2)
  x = jax.random.normal(jax.random.key(1), (batch, T, 2))
  y = jax.random.normal(jax.random.key(2), (batch, 1))
  xf = jax.random.normal(jax.random.key(3), (floss_batch, T, 2))
  loss = lambda p: jnp.mean((model.apply(p, x) - y) ** 2)  # noqa: E731
  rows = []
  for k in [None] + list(ks):
    opt = optax.adam(1e-3)
    if k is not None:
      opt = optax.chain(train.flossing(cell, xf, every=1, k=k, warmup=10), opt)

    @jax.jit
    def step(p, s):
      g = jax.grad(loss)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    compile_s, run_s = _timed(step, params, opt.init(params), repeats=repeats)
    rows.append({"hidden": hidden, "T": T, "k": k, "compile_s": compile_s, "step_ms": 1e3 * run_s})
  base = rows[0]["step_ms"]
  for r in rows:
    r["ratio"] = r["step_ms"] / base
  return rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--hidden", default="32,64")
  p.add_argument("--T", type=int, default=100)
  p.add_argument("--ks", default="1,4,16")
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--json", default=None)
  args = p.parse_args(argv)
  ks = [int(k) for k in args.ks.split(",")]
  rows = []
  with single_threaded_blas():
    for h in (int(h) for h in args.hidden.split(",")):
      rows += run(h, args.T, ks, args.repeats)
  print(f"device: {jax.devices()[0].device_kind} ({platform.processor() or platform.machine()})")
  print(f"{'H':>4} {'T':>5} {'k':>5} {'step ms':>9} {'x plain':>8} {'compile s':>10}")
  for r in rows:
    print(f"{r['hidden']:>4} {r['T']:>5} {str(r['k'] or '-'):>5} {r['step_ms']:>9.2f} "
          f"{r['ratio']:>8.2f} {r['compile_s']:>10.1f}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
