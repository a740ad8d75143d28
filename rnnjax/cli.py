"""The ``rnnjax`` console command: ``demo``, ``diagnose``, ``bench``.

Every subcommand shows its options with their defaults in ``--help``; a bad
option prints one line (``rnnjax <command>: error: ...``) and exits with
status 2 (argument parsing) or 1 (a value out of range), without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

_DESCRIPTION = """\
rnnjax: pure-function recurrent networks for JAX.

commands:
  demo      the main job: seed 003's 8-bit binary addition trained with a
            sigmoid SimpleRNN, then the vanishing-gradient study at init
  diagnose  gradient diagnostics (Jacobian norms by lag, Lyapunov exponents,
            gate saturation, a verdict) for chosen cells and sizes
  bench     the benchmark suite: rnnjax against Flax, PyTorch, Equinox and
            Haiku, interleaved in rounds (peers not installed are skipped)
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
  """Defaults shown for every option; descriptions kept as written.

  An option whose default is None says in its own help what happens then.
  """

  def _get_help_string(self, action):
    if action.default is None and "default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors: ``prog: error: message (see prog --help)``."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(prog: str, message: str) -> "SystemExit":
  """The SystemExit for a bad option value: one line on stderr, exit status 1."""
  return SystemExit(f"{prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
  from rnnjax import __version__
  from rnnjax import _demo
  from rnnjax.diagnostics import _cli as _diagnose_cli

  parser = _Parser(prog="rnnjax", description=_DESCRIPTION, formatter_class=HelpFormatter)
  parser.add_argument("--version", action="version", version=f"rnnjax {__version__}")
  sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,diagnose,bench}")
  p = sub.add_parser("demo", help="train binary addition, then study vanishing gradients",
                     description=_demo.DESCRIPTION, formatter_class=HelpFormatter)
  _demo.add_arguments(p)
  p = sub.add_parser("diagnose", help="gradient diagnostics for chosen cells",
                     description=_diagnose_cli.DESCRIPTION, formatter_class=HelpFormatter)
  _diagnose_cli.add_arguments(p)
  p = sub.add_parser("bench", help="run the benchmark suite",
                     description=_BENCH_DESCRIPTION, formatter_class=HelpFormatter)
  try:
    from benchmarks import run as bench_run
  except ImportError:  # pragma: no cover - an install without the benchmarks package
    bench_run = None
  if bench_run is not None:
    bench_run.add_arguments(p, default_out="rnnjax_bench")
  return parser


_BENCH_DESCRIPTION = """\
The benchmark suite (also `python -m benchmarks.run` in a clone): every
implementation in its own worker process, rounds interleaved, forward and
forward+backward timed after warm-up with compile time apart, GFLOP/s against
a matmul roofline measured in the same run. Writes results.json, results.md
and results.png to --out. Peers: pip install "rnnjax[bench]".

examples:
  rnnjax bench --quick                         a smoke test (tiny shapes, 1 round)
  rnnjax bench --cells lstm --presets small --impls rnnjax,flax_linen,torch
  rnnjax bench --backend gpu --sweep-T 64,128,256,512,1024
"""


def main(argv: Optional[List[str]] = None) -> int:
  """Runs the ``rnnjax`` command; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  prog = f"rnnjax {args.command}"
  try:
    if args.command == "demo":
      from rnnjax import _demo
      return _demo.run(args)
    if args.command == "diagnose":
      from rnnjax.diagnostics import _cli as _diagnose_cli
      return _diagnose_cli.run(args)
    from benchmarks import run as bench_run
    bench_run.main_with_args(args, prog=prog)
    return 0
  except (ValueError, TypeError) as e:  # bad values the checks below the CLI caught
    raise fail(prog, str(e).splitlines()[0]) from None


if __name__ == "__main__":
  sys.exit(main())
