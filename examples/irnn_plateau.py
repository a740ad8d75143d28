"""Why the IRNN stays on the adding problem's plateau: its recurrence and its ReLUs, measured.

``adding_problem.py --paper`` finds the IRNN (hidden 100, Adam 1e-3, clip 1,
batch 32) solving the adding problem at T = 150 and 200 but not at T = 300,
even given 50,000 steps. This script replays the first updates of that run
(the same seeds, initialisations and batches: ``_common.Members``) and
measures at a few steps, per seed:

* ``rho``: the spectral radius of the recurrent matrix ``W_h`` (the IRNN
  starts at ``W_h = I``, ``rho = 1``): a unit kept active for T steps is
  multiplied by up to ``rho^T``;
* ``relu_off``: the fraction of (test sequence, step, unit) triples whose
  ReLU is off (``h = 0``; ``rnnjax.diagnostics.saturation``) on 256 fresh
  sequences: off units carry nothing forward and pass no gradient;
* ``test_mse`` on those sequences (baseline 1/6).

What we measured (``--lengths 150 200 300 --steps 0 10 100 2000``, the
``--paper`` seeds 0, 1, 2, one core): at init ``rho = 1`` and 44-55% of the
ReLUs are off at every T. Adam's first ten updates (each moves every weight
by about the learning rate, 1e-3) raise ``rho`` to 1.01-1.02 and switch off
87-90% of the ReLUs at T = 150 and 200, 94-95% at T = 300; after 2,000
updates 97-98% are off at every T (96.6-98.3%; ``rho`` 1.003-1.023) and the
MSE is on the plateau. From this nearly dead state the IRNN escapes after 4,100-7,800
updates at T = 150 and 200, and not within 50,000 at T = 300. The numbers are
in examples/README.md ("Adding problem over seeds").

Run: ``python examples/irnn_plateau.py`` (about 8 minutes on one core),
``--quick`` (seconds), ``--lengths``, ``--steps``.
"""

from __future__ import annotations

import sys

import _common
import adding_problem
import jax
import numpy as np

import rnnjax as rj
from rnnjax import diagnostics


def relu_off_and_mse(test):
  """``fn(model, params)`` for ``Members.evaluate``: the IRNN's ReLU-off fraction and MSE."""
  def fn(model, params):
    off = diagnostics.saturation(model.layers[0], params["layers"][0], test[0])["h"].fraction
    return {"relu_off": off, "test_mse": adding_problem.loss_fn(model, params, test)}
  return fn


def main(argv=None) -> dict:
  p = _common.parser(__doc__)
  p.add_argument("--lengths", type=int, nargs="+", default=None,
                 help="sequence lengths T (default 150 200 300; quick 20)")
  p.add_argument("--steps", type=int, nargs="+", default=None,
                 help="measure after these many updates (default 0 10 100 2000; quick 0 10)")
  p.add_argument("--hidden", type=int, default=None, help="default 100 (quick 16)")
  p.add_argument("--seeds", type=int, default=3)
  args = p.parse_args(argv)
  lengths = args.lengths or ([20] if args.quick else [150, 200, 300])
  checkpoints = sorted(args.steps or ([0, 10] if args.quick else [0, 10, 100, 2000]))
  if checkpoints[0] < 0:
    raise ValueError(f"--steps: expected numbers of updates >= 0, got {checkpoints}")
  if min(lengths) < 2:
    raise ValueError(f"--lengths: expected sequence lengths >= 2 (a marker in each half), "
                     f"got {lengths}")
  if args.seeds < 1:
    raise ValueError(f"--seeds: expected at least 1, got {args.seeds}")
  hidden = args.hidden or (16 if args.quick else 100)
  seeds = [args.seed + k for k in range(args.seeds)]
  out = {}
  for T in lengths:
    model = rj.SequenceModel([rj.IRNN(hidden)], rj.Dense(1))
    run = _common.Members(model, 2, adding_problem.loss_fn,
                          lambda k, T=T: adding_problem.sample(k, 32, T), seeds=seeds,
                          lr=1e-3, clip_norm=1.0, optimizer="adam", chunk=10)
    test = adding_problem.sample(jax.random.key(123), 256, T)
    rows = []
    for c in checkpoints:
      while run.steps_done < c:   # chunks of 10 updates, as --paper's 100 (same batches)
        run.advance()
      w = np.asarray(run.params["layers"][0]["w_h"], np.float64)
      ev = run.evaluate(relu_off_and_mse(test))
      rows.append({"step": run.steps_done,
                   "rho": [float(np.abs(np.linalg.eigvals(m)).max()) for m in w],
                   "relu_off": ev["relu_off"].tolist(), "test_mse": ev["test_mse"].tolist()})
    out[T] = rows
  table = [[T, r["step"], _common.spread(r["rho"], "{:.3f}"),
            _common.spread([100 * v for v in r["relu_off"]], "{:.0f}") + "%",
            _common.spread(r["test_mse"], "{:.3f}")] for T, rows in out.items() for r in rows]
  print(f"IRNN({hidden}) on the adding problem, Adam 1e-3, clip 1, batch 32, seeds {seeds}; "
        "median [min, max] over seeds:")
  print(_common.table(table, ["T", "step", "spectral radius of W_h", "ReLUs off",
                              "test MSE"]))
  return out


if __name__ == "__main__":
  main()
  sys.exit(0)
