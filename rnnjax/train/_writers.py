"""Metric writers: one interface, three formats (JSON lines, CSV, TensorBoard).

A writer receives every history entry of :func:`rnnjax.train.fit` -- a dict
``{"step": n, "loss": ..., "grad_norm": ..., ...}`` of Python numbers (and
lists, e.g. ``adjoint_norms``) -- in step order::

  class MetricWriter:
    def open(self, history): ...   # once, with the history restored from a checkpoint
    def write(self, entry): ...    # one call per update, in order
    def flush(self): ...           # the loop flushes about twice a second
    def close(self): ...

Pass writers to ``fit(..., writers=[...])``; a path is also accepted
(``"log.jsonl"``, ``"log.csv"``, or a folder for TensorBoard with
``TensorBoardWriter``). On resume each writer is opened with the restored
history, so a file never repeats a step.

Non-finite numbers: JSON has no NaN or infinity, so :class:`JsonLinesWriter`
writes NaN as ``null`` and +-inf as the strings ``"Infinity"`` /
``"-Infinity"``, and every line is valid JSON (``json.loads`` in any
language); :func:`read_jsonl` reads them back as floats. CSV writes ``nan``,
``inf``, ``-inf`` (what ``float()`` and pandas read).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Iterable, List


class MetricWriter:
  """Base class of the metric writers (all methods optional)."""

  def open(self, history: List[dict]) -> None:
    """Called once before training with the history restored from a checkpoint (or [])."""

  def write(self, entry: dict) -> None:
    """Called for every update, in order."""

  def flush(self) -> None:
    """Called about twice a second and at checkpoints."""

  def close(self) -> None:
    """Called once at the end (also after an error)."""


def _json_safe(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
  if isinstance(v, list):
    return [_json_safe(x) for x in v]
  return v


def _from_json(v):
  if v is None:
    return math.nan
  if v == "Infinity":
    return math.inf
  if v == "-Infinity":
    return -math.inf
  if isinstance(v, list):
    return [_from_json(x) for x in v]
  return v


def dumps_entry(entry: dict) -> str:
  """One history entry as strict JSON (NaN -> null, +-inf -> "Infinity" / "-Infinity")."""
  return json.dumps({k: _json_safe(v) for k, v in entry.items()}, allow_nan=False)


def read_jsonl(path) -> List[dict]:
  """Reads a :class:`JsonLinesWriter` file back (null -> NaN, "Infinity" -> inf)."""
  with open(os.fspath(path)) as f:
    return [{k: (v if k == "step" else _from_json(v)) for k, v in json.loads(line).items()}
            for line in f if line.strip()]


class _FileWriter(MetricWriter):
  """A writer backed by one open text file ``self._f`` (None while closed)."""

  _f = None

  def flush(self):
    """Flushes the file."""
    if self._f is not None:
      self._f.flush()

  def close(self):
    """Closes the file."""
    if self._f is not None:
      self._f.close()
      self._f = None


class JsonLinesWriter(_FileWriter):
  """One strict-JSON object per update in ``path`` (rewritten from the history on open)."""

  def __init__(self, path):
    self.path = os.fspath(path)
    self._f = None

  def open(self, history):
    self._f = open(self.path, "w")
    for h in history:
      self.write(h)
    self.flush()

  def write(self, entry):
    self._f.write(dumps_entry(entry) + "\n")



class CsvWriter(_FileWriter):
  """A CSV table, one row per update, one column per scalar metric.

  Columns are the metrics seen so far (step first); when a new one appears
  (e.g. ``eval_loss`` at the first evaluation) the file is rewritten with the
  wider header, earlier rows getting empty cells. List-valued metrics
  (``adjoint_norms``) are left out.
  """

  def __init__(self, path):
    self.path = os.fspath(path)
    self._rows: List[dict] = []
    self._cols: List[str] = []
    self._f = None
    self._writer = None

  def _scalar_items(self, entry):
    return {k: v for k, v in entry.items() if not isinstance(v, (list, tuple, dict))}

  def _rewrite(self):
    if self._f is not None:
      self._f.close()
    self._f = open(self.path, "w", newline="")
    self._writer = csv.DictWriter(self._f, fieldnames=self._cols, restval="")
    self._writer.writeheader()
    for r in self._rows:
      self._writer.writerow(r)

  def open(self, history):
    self._rows, self._cols = [], ["step"]
    for h in history:
      row = self._scalar_items(h)
      self._cols += [k for k in row if k not in self._cols]
      self._rows.append(row)
    self._rewrite()
    self.flush()

  def write(self, entry):
    row = self._scalar_items(entry)
    self._rows.append(row)
    new = [k for k in row if k not in self._cols]
    if new:
      self._cols += new
      self._rewrite()
    else:
      self._writer.writerow(row)



class TensorBoardWriter(MetricWriter):
  """TensorBoard event files in ``logdir`` through ``tensorboardX`` (optional dependency).

  Every scalar metric becomes a scalar series (tag = metric name, x = step);
  list-valued metrics (``adjoint_norms``) a histogram. On resume the events
  after the restored step are purged (``purge_step``), so the curves never
  fold back. Install with ``pip install rnnjax[tensorboard]`` (or
  ``pip install tensorboardX``).
  """

  def __init__(self, logdir):
    try:
      import tensorboardX  # noqa: F401
    except ImportError as e:
      raise ImportError("TensorBoardWriter needs the optional dependency tensorboardX: "
                        "pip install tensorboardX (or rnnjax[tensorboard]).") from e
    self.logdir = os.fspath(logdir)
    self._w = None

  def open(self, history):
    from tensorboardX import SummaryWriter
    start = history[-1]["step"] + 1 if history else None
    self._w = SummaryWriter(self.logdir, purge_step=start)

  def write(self, entry):
    import numpy as np
    step = entry["step"]
    for k, v in entry.items():
      if k == "step":
        continue
      if isinstance(v, (list, tuple)):
        a = np.asarray(v, dtype=float)
        if a.size and np.all(np.isfinite(a)):
          self._w.add_histogram(k, a, step)
      else:
        self._w.add_scalar(k, float(v), step)

  def flush(self):
    if self._w is not None:
      self._w.flush()

  def close(self):
    if self._w is not None:
      self._w.close()
      self._w = None


def as_writers(writers, jsonl=None) -> List[MetricWriter]:
  """``fit``'s ``writers=`` (writers or paths) and ``jsonl=`` as a list of writers."""
  out: List[MetricWriter] = []
  if jsonl is not None:
    out.append(JsonLinesWriter(jsonl))
  if writers is None:
    return out
  if isinstance(writers, (MetricWriter, str, os.PathLike)) or not isinstance(writers, Iterable):
    writers = [writers]
  for w in writers:
    if isinstance(w, MetricWriter):
      out.append(w)
    elif isinstance(w, (str, os.PathLike)):
      p = os.fspath(w)
      if p.endswith(".jsonl") or p.endswith(".json"):
        out.append(JsonLinesWriter(p))
      elif p.endswith(".csv"):
        out.append(CsvWriter(p))
      else:
        raise ValueError(f"writers: cannot tell the format of {p!r}; use a path ending in "
                         ".jsonl or .csv, or a writer (JsonLinesWriter, CsvWriter, "
                         "TensorBoardWriter(logdir)).")
    elif all(hasattr(w, m) for m in ("write",)):
      out.append(w)  # duck-typed writer
    else:
      raise TypeError("writers must be MetricWriter instances or paths (.jsonl / .csv), got "
                      f"{type(w).__name__}.")
  return out
