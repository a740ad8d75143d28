"""``rnnjax diagnose``: placeholder wiring, filled by the diagnostics module."""


def add_arguments(parser):
  parser.add_argument("--cell", default="lstm")


def run(args) -> int:
  raise SystemExit("rnnjax diagnose is not built yet")
