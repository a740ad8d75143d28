"""Training a minGRU on the adding problem with the associative scan vs the sequential scan.

The same model (two stacked ``rj.MinGRU`` layers and a linear readout of the
last step), the same initial parameters and the same batches, trained twice
with Adam: once through ``rnnjax.parallel.linear_scan``
(``impl="associative"``: the log-space associative scan, ``O(log T)``
depth) and once through ``rnnjax.scan(impl="reference")`` (one step after
the other). The two loss curves coincide up to float32 round-off; the plot
shows both.

Run: ``python examples/parallel_training.py [--quick]``.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import _common
import rnnjax as rj
from rnnjax import parallel


def main(argv=None):
  ap = _common.parser(__doc__.splitlines()[0])
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--length", type=int, default=None)
  args = ap.parse_args(argv)
  steps = _common.pick(args, "steps", 300, 40)
  T = _common.pick(args, "length", 200, 64)
  H, B = 32, 64
  model = rj.Stack([rj.MinGRU(H), rj.MinGRU(H)])
  head = rj.Dense(1)
  k1, k2 = jax.random.split(jax.random.PRNGKey(args.seed))
  params0 = {"rnn": model.init(k1, 2), "head": head.init(k2, H)}
  batches = [rj.train.adding_problem(B, length=T, seed=args.seed * 100000 + i) for i in range(steps)]
  opt = optax.adam(3e-3)

  def make_step(impl):
    def run(p, x):
      if impl == "associative":
        return parallel.linear_scan(model, p, x)[1]
      return rj.scan(model, p, x, impl="reference")[1]

    def loss(params, x, y):
      ys = run(params["rnn"], x)
      return jnp.mean((head(params["head"], ys[:, -1]) - y) ** 2)

    @jax.jit
    def step(params, state, x, y):
      l, g = jax.value_and_grad(loss)(params, x, y)
      upd, state = opt.update(g, state, params)
      return optax.apply_updates(params, upd), state, l
    return step

  curves, times = {}, {}
  for impl in ("associative", "reference"):
    step = make_step(impl)
    params, state = params0, opt.init(params0)
    losses = []
    with _common.Timer() as t:
      for b in batches:
        params, state, l = step(params, state, jnp.asarray(b.x), jnp.asarray(b.y))
        losses.append(float(l))
    curves[impl], times[impl] = np.array(losses), t.seconds
    print(f"  {impl:12s} first loss {losses[0]:.4f}  last-20 mean {np.mean(losses[-20:]):.4f}  "
          f"{t.seconds:.1f}s (incl. compile)")
  diff = float(np.max(np.abs(curves["associative"] - curves["reference"])))
  rel = diff / float(np.max(np.abs(curves["reference"])))
  print(f"  max |loss_associative - loss_reference| = {diff:.2e} (relative {rel:.2e}); "
        f"baseline MSE 1/6 = {1/6:.4f}")
  if not args.no_plot:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(curves["reference"], lw=2.5, alpha=0.5, label="sequential (impl='reference')")
    ax.plot(curves["associative"], lw=1, ls="--", label="associative scan (log space)")
    ax.axhline(1 / 6, color="gray", ls=":", lw=0.8, label="baseline 1/6")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.set_title(f"minGRU x2 (H={H}), adding problem T={T}")
    ax.legend(fontsize=8)
    _common.savefig(fig, args, "parallel_training.png")
  return {"curves": curves, "max_diff": diff, "rel_diff": rel, "seconds": times,
          "final": float(np.mean(curves["associative"][-20:]))}


if __name__ == "__main__":
  main(sys.argv[1:])
