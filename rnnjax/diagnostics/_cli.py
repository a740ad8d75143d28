"""``rnnjax diagnose``: gradient diagnostics for chosen cells and sizes.

For each cell it computes, at init, exactly what this Python does (the
README's diagnostics example, with ``--batch 4``)::

  params = cell.init(jax.random.key(seed), 2)
  xs = rd.adding_inputs(jax.random.key(seed + 1), batch, T)   # [batch, T, 2]
  print(rd.diagnose(cell, params, xs, method=..., leaf=..., fraction=...,
                    warmup=..., key=jax.random.key(seed)))

then prints a summary table of all cells and writes one PNG of the gradient
norms by lag (skipped with a note when matplotlib is missing).

Example::

  rnnjax diagnose --cell lstm --hidden 64 --T 200
  rnnjax diagnose --cell sigmoid,tanh,gru --T 500 --method hutchinson
"""

from __future__ import annotations

import os
import time

from rnnjax.diagnostics._study import CELL_NAMES

DESCRIPTION = f"""\
Gradient diagnostics at init for one or more cells on adding-problem inputs
([batch, T, 2]: values in [0, 1) and a two-hot marker): the norms of the
Jacobian products dh_T/dh_i by lag, the adjoint norms dL/dh_i, the Lyapunov
exponents, gate saturation, the decay rate per step, the memory horizon and a
verdict (vanishing, exploding or stable). Prints one report per cell and a
summary table, and writes a PNG of the norms by lag to --out.

The weights are cell.init(jax.random.key(seed), 2) and the inputs
adding_inputs(jax.random.key(seed + 1), batch, T), so that
  rnnjax diagnose --cell lstm --hidden 64 --T 200 --batch 4
prints the report of the README's diagnostics example.

cells: {', '.join(CELL_NAMES)}
"""


def add_arguments(parser):
  parser.add_argument("--cell", default="lstm",
                      help="cell(s), comma-separated, from " + ", ".join(CELL_NAMES))
  parser.add_argument("--hidden", type=int, default=64, help="hidden size H")
  parser.add_argument("--T", type=int, default=200, help="sequence length")
  parser.add_argument("--batch", type=int, default=8, help="number of sequences")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the weights, the inputs and the random probes")
  parser.add_argument("--method", default="exact", choices=("exact", "power", "hutchinson"),
                      help="how ||dh_T/dh_i|| is computed")
  parser.add_argument("--forget-bias", type=float, default=1.0,
                      help="LSTM forget-gate bias at init")
  parser.add_argument("--leaf", default=None,
                      help="restrict the state to one carry leaf, e.g. h or c for an LSTM "
                           "(default: the whole carry)")
  parser.add_argument("--fraction", type=float, default=0.01,
                      help="memory-horizon threshold on the norm")
  parser.add_argument("--warmup", type=int, default=0,
                      help="warm-up steps of the Lyapunov exponents")
  parser.add_argument("--out", default="rnnjax_out", help="folder for the PNG")
  parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")


def _check(args):
  from rnnjax.cli import fail
  prog = "rnnjax diagnose"
  names = [c.strip() for c in args.cell.split(",") if c.strip()]
  bad = [c for c in names if c not in CELL_NAMES]
  if not names or bad:
    raise fail(prog, f"--cell must be one or more of {', '.join(CELL_NAMES)}; "
                     f"got {args.cell!r}.")
  for flag, v, lo in (("--hidden", args.hidden, 1), ("--T", args.T, 2), ("--batch", args.batch, 1),
                      ("--warmup", args.warmup, 0)):
    if v < lo:
      raise fail(prog, f"{flag} must be >= {lo}, got {v}.")
  if args.warmup >= args.T:
    raise fail(prog, f"--warmup must be < --T ({args.T}), got {args.warmup}.")
  if not 0.0 < args.fraction < 1.0:
    raise fail(prog, f"--fraction must be in (0, 1), got {args.fraction}.")
  return names


def run(args) -> int:
  names = _check(args)
  import jax

  from rnnjax.diagnostics import _study as study
  from rnnjax.diagnostics._report import diagnose, summary_table

  kp = kd = jax.random.key(args.seed)
  xs = study.adding_inputs(jax.random.key(args.seed + 1), args.batch, args.T)
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
                     warmup=args.warmup, key=kd,
                     name=study._LABELS.get(name, name))
    except (ValueError, TypeError) as e:
      from rnnjax.cli import fail
      raise fail("rnnjax diagnose", str(e).splitlines()[0]) from None
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
