"""Small helpers shared by the example scripts (argument parsing, output, timing).

Not part of the library: each example imports it as ``_common`` from its own
folder (``python examples/NAME.py`` puts ``examples/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import time


def parser(description: str, *, out_default: str = "examples_out") -> argparse.ArgumentParser:
  """An ``ArgumentParser`` with the flags every example shares.

  ``--quick`` (a seconds-long smoke run), ``--out`` (PNG folder), ``--seed``,
  ``--no-plot``.
  """
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="small sizes for a smoke run (seconds, not minutes; the tests use it)")
  p.add_argument("--out", default=out_default,
                 help=f"folder for the PNG plots (default {out_default}/)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.add_argument("--no-plot", action="store_true", help="skip writing PNG files")
  return p


def pick(args, name, default, quick):
  """``args.name`` if the user set it, else ``quick`` under ``--quick``, else ``default``."""
  value = getattr(args, name, None)
  if value is not None:
    return value
  return quick if args.quick else default


def pyplot():
  """matplotlib.pyplot with the non-interactive Agg backend."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def savefig(fig, args, name: str) -> str:
  """Saves ``fig`` as ``{args.out}/{name}`` and returns the path."""
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, name)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  import matplotlib.pyplot as plt
  plt.close(fig)
  print(f"  wrote {path}")
  return path


class Timer:
  """``with Timer() as t: ...`` then ``t.seconds``."""

  def __enter__(self):
    self.t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.t0
    return False


def table(rows, headers) -> str:
  """Formats a list of row tuples as a plain-text table."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def make_cell(name: str, hidden: int):
  """The examples' cells by name: tanh / sigmoid SimpleRNN, IRNN, LSTM, GRU."""
  import rnnjax as rj
  return {"tanh": lambda: rj.SimpleRNN(hidden, "tanh"),
          "sigmoid": lambda: rj.SimpleRNN(hidden, "sigmoid"),
          "irnn": lambda: rj.IRNN(hidden),
          "lstm": lambda: rj.LSTM(hidden),
          "gru": lambda: rj.GRU(hidden)}[name]()
