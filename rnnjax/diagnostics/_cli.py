"""``rnnjax diagnose``: gradient diagnostics for chosen cells and sizes.

Builds each cell at init (``cell.init(jax.random.key(seed), 2)``), feeds it
one batch of adding-problem inputs (``[batch, T, 2]``: values U[0,1] and a
two-hot marker), prints the full :class:`rnnjax.diagnostics.Report` of each
cell and a summary table, and writes one PNG of the gradient norms by lag
(skipped with a note when matplotlib is missing).

Example::

  rnnjax diagnose --cell lstm --hidden 64 --T 200
  rnnjax diagnose --cell sigmoid,tanh,gru --T 500 --method hutchinson
"""

from __future__ import annotations

import os
import time

from rnnjax.diagnostics._study import CELL_NAMES


def add_arguments(parser):
  parser.add_argument("--cell", default="lstm",
                      help=f"cell(s), comma-separated, from {', '.join(CELL_NAMES)} "
                           "(default lstm)")
  parser.add_argument("--hidden", type=int, default=64, help="hidden size H (default 64)")
  parser.add_argument("--T", type=int, default=200, help="sequence length (default 200)")
  parser.add_argument("--batch", type=int, default=8, help="number of sequences (default 8)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--method", default="exact", choices=("exact", "power", "hutchinson"),
                      help="how ||dh_T/dh_i|| is computed (default exact)")
  parser.add_argument("--forget-bias", type=float, default=1.0,
                      help="LSTM forget-gate bias at init (default 1)")
  parser.add_argument("--leaf", default=None,
                      help="restrict the state to one carry leaf, e.g. h or c for an LSTM")
  parser.add_argument("--fraction", type=float, default=0.01,
                      help="memory-horizon threshold on the norm (default 0.01)")
  parser.add_argument("--out", default="rnnjax_out", help="folder for the PNG")
  parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def _check(args):
  names = [c.strip() for c in args.cell.split(",") if c.strip()]
  bad = [c for c in names if c not in CELL_NAMES]
  if not names or bad:
    raise SystemExit(f"rnnjax diagnose: --cell must be one or more of {', '.join(CELL_NAMES)}; "
                     f"got {args.cell!r}.")
  for flag, v, lo in (("--hidden", args.hidden, 1), ("--T", args.T, 2), ("--batch", args.batch, 1)):
    if v < lo:
      raise SystemExit(f"rnnjax diagnose: {flag} must be >= {lo}, got {v}.")
  if not 0.0 < args.fraction < 1.0:
    raise SystemExit(f"rnnjax diagnose: --fraction must be in (0, 1), got {args.fraction}.")
  return names


def run(args) -> int:
  names = _check(args)
  import jax

  from rnnjax.diagnostics import _study as study
  from rnnjax.diagnostics._report import diagnose, summary_table

  key = jax.random.key(args.seed)
  kx, kp, kd = jax.random.split(key, 3)
  xs = study.adding_inputs(kx, args.batch, args.T)
  print(f"rnnjax diagnose: adding-problem inputs [{args.batch}, {args.T}, 2], H={args.hidden}, "
        f"at init (seed {args.seed}), method={args.method!r}")
  reports = []
  for name in names:
    cell = study.make_cell(name, args.hidden, forget_bias=args.forget_bias)
    params = cell.init(kp, 2)
    leaf = args.leaf
    if leaf is not None and leaf.lstrip("-").isdigit():
      leaf = int(leaf)
    t0 = time.perf_counter()
    try:
      rep = diagnose(cell, params, xs, method=args.method, leaf=leaf, fraction=args.fraction,
                     warmup=min(10, args.T // 10), key=kd,
                     name=study._LABELS.get(name, name))
    except (ValueError, TypeError) as e:
      raise SystemExit(f"rnnjax diagnose: {e}") from None
    print()
    print(rep)
    print(f"  ({time.perf_counter() - t0:.1f} s)")
    reports.append(rep)
  print()
  print(summary_table(reports))
  if not args.no_plot:
    from rnnjax.diagnostics._plot import plot_gradient_norms
    path = os.path.join(args.out, "diagnose_" + "_".join(names) + ".png")
    try:
      plot_gradient_norms(reports, path, title=f"Gradient norms by lag at init (T={args.T}, "
                                               f"H={args.hidden})")
    except ImportError as e:
      print(f"note: no PNG written ({e})")
    else:
      print(f"wrote {path}")
  return 0
