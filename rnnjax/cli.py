"""The ``rnnjax`` console command.

``rnnjax demo``      -- the main job: seed 003's 8-bit binary addition trained
                        with a sigmoid SimpleRNN, then the vanishing-gradient
                        study of the diagnostics (see README).
``rnnjax diagnose``  -- gradient diagnostics for a chosen cell and sizes.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="rnnjax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p_demo = sub.add_parser("demo", help="train binary addition, then study vanishing gradients")
  from rnnjax import _demo
  _demo.add_arguments(p_demo)
  p_diag = sub.add_parser("diagnose", help="gradient diagnostics for one cell")
  from rnnjax.diagnostics import _cli as _diagnose_cli
  _diagnose_cli.add_arguments(p_diag)
  args = parser.parse_args(argv)
  if args.command == "demo":
    return _demo.run(args)
  return _diagnose_cli.run(args)


if __name__ == "__main__":
  sys.exit(main())
