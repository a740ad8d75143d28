"""Cost of the gradient diagnostics against ``jax.jacrev`` of the whole unroll.

For a tanh ``SimpleRNN(H)`` and an ``LSTM(H)`` (H = 16 by default) on one
sequence of T steps (T in {100, 1000}), times

* ``jacobian_norms`` with ``method="exact"``, ``"power"`` (k=4, 20
  iterations) and ``"hutchinson"`` (64 probes), all ``log=True``;
* ``adjoint_norms`` (loss: sum of the last output);
* the reference: ``jax.jacrev`` of the whole unroll with respect to additive
  perturbations of every state, ``[D, T, D]``, then the spectral norm of each
  ``[D, D]`` block (memory ``O(T D^2)``) -- the same quantity as ``"exact"``.

Compile time is measured separately (``jit(...).lower(...).compile()``);
run time is the median of repeated calls after one warm-up call, each
synchronised with ``block_until_ready`` (when the warm-up call takes over
5 s, it is the one timed call). BLAS runs single-threaded (see
``rnnjax.diagnostics._core.single_threaded_blas``). The ``max|dlog|`` column is
``max_i |log||A_i|| - log||A_i||_exact|`` over the entries finite in both
(Frobenius reference for Hutchinson); ``non-finite`` counts the entries a
method returned as ``-inf``/``inf``/NaN (the jacrev reference underflows to 0
at long lags, the log-space methods do not).

Usage::

  python -m benchmarks.bench_diagnostics [--quick] [--json PATH] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import rnnjax as rj
from rnnjax import diagnostics as rd
from rnnjax.diagnostics._core import single_threaded_blas


def _jacrev_norms(cell, params, xs, ord=2):
  """``||dh_{T-1}/dh_i||`` from ``jax.jacrev`` of the full unroll (the dense reference)."""
  from jax.flatten_util import ravel_pytree
  c0 = cell.initial_carry(())
  s0, unravel = ravel_pytree(c0)
  T, D = xs.shape[0], s0.shape[0]

  def unroll(eps):                                   # eps [T, D] -> h_{T-1} [D]
    def body(s, inp):
      x, e = inp
      new, _ = cell(params, unravel(s), x)
      return ravel_pytree(new)[0] + e, None
    sT, _ = jax.lax.scan(body, s0, (xs, eps))
    return sT
  jac = jax.jacrev(unroll)(jnp.zeros((T, D), s0.dtype))     # [D, T, D]
  blocks = jnp.moveaxis(jac, 1, 0)                          # [T, D, D]
  return jnp.log(jnp.linalg.norm(blocks, ord=ord, axis=(1, 2)))


def _methods(cell, params, xs):
  last = lambda ys, final: jnp.sum(ys[-1])
  key = jax.random.key(0)
  return {
      "exact": lambda p, x: rd.jacobian_norms(cell, p, x, log=True),
      "power": lambda p, x: rd.jacobian_norms(cell, p, x, method="power", log=True, key=key),
      "hutchinson": lambda p, x: rd.jacobian_norms(cell, p, x, method="hutchinson", ord="fro",
                                                   log=True, key=key),
      "adjoint_norms": lambda p, x: rd.adjoint_norms(last, cell, p, x),
      "jacrev": lambda p, x: _jacrev_norms(cell, p, x),
  }


def _time(fn, args, repeats, slow_s=5.0):
  """(output, compile seconds, median run seconds, number of timed runs).

  A first call (the warm-up) slower than ``slow_s`` is reported as the only
  timed run: warm-up effects are negligible against it, and the program is
  already compiled ahead of time.
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))              # warm-up
  first = time.perf_counter() - t0
  if first > slow_s:
    return out, compile_s, first, 1
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return out, compile_s, statistics.median(times), repeats


def run(Ts, hidden, repeats, cells=("tanh", "lstm")):
  rows = []
  for cname in cells:
    cell = rj.SimpleRNN(hidden) if cname == "tanh" else rj.LSTM(hidden)
    D = hidden * (2 if cname == "lstm" else 1)
    params = cell.init(jax.random.key(0), 4)
    for T in Ts:
      xs = jax.random.normal(jax.random.key(1), (T, 4))
      refs = {}
      for method, fn in _methods(cell, params, xs).items():
        out, c_s, m_s, reps = _time(fn, (params, xs), repeats)
        out = np.asarray(out, np.float64)
        if method == "exact":
          refs["exact"] = out
          refs["fro"] = np.asarray(rd.jacobian_norms(cell, params, xs, ord="fro", log=True))
        err, bad = None, int(np.sum(~np.isfinite(out)))
        if method in ("power", "jacrev", "hutchinson"):
          ref = refs["fro" if method == "hutchinson" else "exact"]
          ok = np.isfinite(out) & np.isfinite(ref)
          err = float(np.max(np.abs(out[ok] - ref[ok]))) if ok.any() else None
        rows.append({"cell": cname, "T": T, "H": hidden, "D": D, "method": method,
                     "compile_s": c_s, "median_s": m_s, "repeats": reps,
                     "max_abs_log_err": err, "nonfinite": bad})
        print(_fmt_row(rows[-1]), flush=True)
  return rows


_HEAD = (f"{'cell':<6s} {'T':>5s} {'D':>4s} {'method':<14s} {'compile s':>10s} {'run s':>10s} "
         f"{'max|dlog|':>10s} {'non-finite':>10s}")


def _fmt_row(r):
  err = "" if r["max_abs_log_err"] is None else f"{r['max_abs_log_err']:.1e}"
  return (f"{r['cell']:<6s} {r['T']:>5d} {r['D']:>4d} {r['method']:<14s} {r['compile_s']:>10.3f} "
          f"{r['median_s']:>10.4f} {err:>10s} {r['nonfinite']:>10d}")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--quick", action="store_true", help="tiny sizes, tanh only (smoke test)")
  ap.add_argument("--json", default=None, help="also write the rows as JSON to this path")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--hidden", type=int, default=16, help="H (default 16: D=16 tanh, 32 LSTM)")
  args = ap.parse_args(argv)
  if args.quick:
    Ts, hidden, repeats, cells = (12,), 3, 2, ("tanh",)
  else:
    Ts, hidden, repeats, cells = (100, 1000), args.hidden, args.repeats, ("tanh", "lstm")
  from benchmarks._common import cpu_meta, format_cpu
  cpu = cpu_meta()
  print(f"rnnjax diagnostics benchmark: backend {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}. {format_cpu(cpu)}")
  print(_HEAD)
  with single_threaded_blas():
    rows = run(Ts, hidden, repeats, cells)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"backend": jax.default_backend(), "jax": jax.__version__, "cpu": cpu, "rows": rows}, f,
                indent=1)
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
