"""Newton iterations to converge against the largest Lyapunov exponent.

For a set of cells spanning contracting to chaotic dynamics (tanh RNNs with
recurrent gain 0.5-2.0, IRNNs with identity scale 0.8-1.1, an LSTM and a GRU
at init, driven by Gaussian inputs; and an LSTM and a GRU after training on
the adding problem (T = 50, ``--train-steps`` Adam updates), driven by
adding-problem inputs):

* the largest Lyapunov exponent ``lambda_1`` by QR re-orthonormalisation
  (``rnnjax.diagnostics.lyapunov_exponents``) and the solver's own cheap
  estimate (``info.lyapunov``),
* the Newton iterations DEER, quasi-DEER, ELK (dense, Levenberg-Marquardt)
  and quasi-ELK take to reach the default tolerance at each T (capped at
  ``--max-iters``; ``>cap`` means not converged), with the Lyapunov guard
  switched off so the iterations are measured rather than cut short,
* whether the answer equals the sequential scan (max abs error).

Theory (Gonzalez et al. 2025): for a contracting system (``lambda_1 < 0``)
DEER converges in ``O((log T)^2)`` iterations -- few and growing slowly
with T -- while for ``lambda_1 > 0`` it needs ``O(T)``. The table and the
plot show which side each configuration falls on.

Run: ``python examples/parallel_study.py [--quick]``.
"""

from __future__ import annotations

import math
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

import _common
import rnnjax as rj
import rnnjax.train  # noqa: F401  (imported before rnnjax.diagnostics: see the report on the import cycle)
from rnnjax import parallel
from rnnjax.parallel import _newton


def gaussian_inputs(T):
  return jax.random.normal(jax.random.PRNGKey(T), (T, 1))


def adding_inputs(T):
  """One adding-problem sequence ``[T, 2]`` (value, marker)."""
  from rnnjax import train
  b = train.adding_problem(1, length=T, seed=np.random.default_rng(T))
  return jnp.asarray(b.x[0], jnp.float32)


def trained(cell, steps, T=50, batch=32, seed=0):
  """``cell``'s params after ``steps`` Adam updates (lr 1e-2, clip 1) on the adding problem."""
  import optax
  from rnnjax import train
  model = rj.SequenceModel([cell], rj.Dense(1))
  params = model.init(jax.random.PRNGKey(seed), 2)
  opt = train.optimizer("adam", 1e-2, clip_norm=1.0)
  state = opt.init(params)
  rng = np.random.default_rng(seed)

  @jax.jit
  def step(params, state, x, y):
    loss, g = jax.value_and_grad(lambda q: train.mse(model.apply(q, x), y))(params)
    u, state = opt.update(g, state, params)
    return optax.apply_updates(params, u), state, loss
  loss = float("nan")
  for _ in range(steps):
    b = train.adding_problem(batch, length=T, seed=rng)
    params, state, loss = step(params, state, jnp.asarray(b.x), jnp.asarray(b.y))
  return params["layers"][0], float(loss)


def configs(H, train_steps=0):
  """(name, cell, params, inputs) for every configuration; ``inputs(T) -> xs [T, I]``."""
  key = jax.random.PRNGKey(0)
  out = []
  for gain in (0.5, 1.0, 1.5, 2.0):
    cell = rj.SimpleRNN(H)
    p = cell.init(key, 1)
    p["w_h"] = gain * p["w_h"]
    p["w_i"] = 0.5 * p["w_i"]
    out.append((f"tanh gain {gain}", cell, p, gaussian_inputs))
  for scale in (0.8, 1.1):
    # IRNN (Le et al. 2015): a ReLU RNN from W = scale * I; one ReLU SimpleRNN
    # class for both scales, so the two share their compiled solves.
    cell = rj.SimpleRNN(H, activation="relu")
    p = rj.IRNN(H, identity_scale=scale).init(key, 1)
    p["w_i"] = 0.1 * jax.random.normal(key, p["w_i"].shape)
    out.append((f"IRNN scale {scale}", cell, p, gaussian_inputs))
  for name, cell in (("LSTM init", rj.LSTM(H)), ("GRU init", rj.GRU(H))):
    out.append((name, cell, cell.init(key, 1), gaussian_inputs))
  if train_steps:
    for name, cell in (("LSTM trained", rj.LSTM(H)), ("GRU trained", rj.GRU(H))):
      p, loss = trained(cell, train_steps)
      print(f"  {name}: adding problem T=50, {train_steps} Adam steps, last batch MSE {loss:.4f} "
            "(baseline 1/6)", flush=True)
      out.append((name, cell, p, adding_inputs))
  return out


def plot(results, Ts, methods, args):
  """Iterations against lambda_1, one panel per method; hollow markers: not converged."""
  plt = _common.pyplot()
  fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.6), sharey=True)
  for ax, m in zip(np.atleast_1d(axes), methods):
    for k, (T, mk) in enumerate(zip(Ts, "os^")):
      col = f"C{k}"
      pts = [r for r in results if r["method"] == m and r["T"] == T]
      ok = [r for r in pts if r["converged"]]
      bad = [r for r in pts if not r["converged"]]
      ax.scatter([r["lyapunov"] for r in ok], [r["iterations"] for r in ok], marker=mk,
                 color=col, label=f"T={T}")
      ax.scatter([r["lyapunov"] for r in bad], [r["iterations"] for r in bad], marker=mk,
                 facecolors="none", edgecolors=col)
      ax.axhline(math.log2(T) ** 2, ls=":", lw=0.8, color=col)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_yscale("log")
    ax.set_title(m)
    ax.set_xlabel("largest Lyapunov exponent")
  np.atleast_1d(axes)[0].set_ylabel("Newton iterations\n(hollow: not converged; dotted: (log2 T)^2)")
  np.atleast_1d(axes)[0].legend(fontsize=8)
  _common.savefig(fig, args, "parallel_study.png")


def main(argv=None):
  ap = _common.parser(__doc__.splitlines()[0])
  ap.add_argument("--hidden", type=int, default=None)
  ap.add_argument("--lengths", type=str, default=None, help="comma-separated T values")
  ap.add_argument("--max-iters", type=int, default=None)
  ap.add_argument("--train-steps", type=int, default=None,
                  help="adding-problem updates for the trained LSTM/GRU (default 1000; quick 0: none)")
  ap.add_argument("--methods", type=str, default=None, help="comma-separated subset of the methods")
  ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
  args = ap.parse_args(argv)
  H = _common.pick(args, "hidden", 8, 4)
  Ts = [int(t) for t in (args.lengths or ("64,128" if args.quick else "256,1024,4096")).split(",")]
  cap = _common.pick(args, "max_iters", 300, 64)
  methods = tuple(args.methods.split(",")) if args.methods else (
      ("deer", "quasi_deer") if args.quick else parallel.METHODS)
  cfgs = configs(H, _common.pick(args, "train_steps", 1000, 0))
  if args.quick:
    cfgs = [cfgs[i] for i in (0, 3, 6)]
  # Measure iterations instead of letting the guard stop the solve.
  saved = _newton.LYAPUNOV_THRESHOLD
  _newton.LYAPUNOV_THRESHOLD = math.inf
  rows, results = [], []
  try:
    for name, cell, p, inputs in cfgs:
      for T in Ts:
        xs = inputs(T)
        lam = float(rj.diagnostics.lyapunov_exponents(cell, p, xs, k=1, warmup=min(64, T // 4))[0])
        c_ref, y_ref = rj.scan(cell, p, xs, impl="reference")
        for m in methods:
          t0 = time.perf_counter()
          with warnings.catch_warnings():  # unconverged runs fall back (and warn): recorded below
            warnings.simplefilter("ignore", RuntimeWarning)
            c, y, info = parallel.newton_scan(cell, p, xs, method=m, max_iters=min(cap, T))
          jax.block_until_ready(y)
          sec = time.perf_counter() - t0
          it = int(info.iterations)
          conv = bool(info.converged)
          err = float(jnp.max(jnp.abs(y - y_ref)))
          r = dict(config=name, T=T, method=m, lyapunov=lam, estimate=float(info.lyapunov),
                   iterations=it, converged=conv, residual=float(info.residual), err=err,
                   seconds=sec)
          results.append(r)
          rows.append((name, T, m, f"{lam:+.3f}", f"{float(info.lyapunov):+.3f}",
                       it if conv else f">{it}", f"{float(info.residual):.1e}", f"{err:.1e}",
                       f"{sec:.2f}"))
          print(f"  {name:16s} T={T:5d} {m:10s} lambda={lam:+.3f} iters={it:4d} "
                f"conv={conv} err={err:.1e} {sec:.2f}s", flush=True)
  finally:
    _newton.LYAPUNOV_THRESHOLD = saved
  print(_common.table(rows, ("config", "T", "method", "lambda_1", "estimate", "iterations",
                             "residual", "max|y-y_seq|", "s (incl. compile)")))
  if args.json:
    import json
    import os
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if not args.no_plot:
    plot(results, Ts, methods, args)
  return {"results": results}


if __name__ == "__main__":
  main(sys.argv[1:])
