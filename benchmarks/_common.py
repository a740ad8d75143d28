"""Shapes, FLOP counts and timing helpers shared by the benchmark driver and workers."""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Dict, List, Optional

CELLS = ("simple", "lstm", "gru")
GATES = {"simple": 1, "lstm": 4, "gru": 3}
MODES = ("fwd", "fwdbwd")


@dataclasses.dataclass(frozen=True)
class Shape:
  """One benchmark shape: batch B, sequence length T, input size I, hidden size H."""
  name: str
  B: int
  T: int
  I: int
  H: int

  def to_dict(self):
    return dataclasses.asdict(self)


PRESETS: Dict[str, Shape] = {
    "small": Shape("small", 16, 256, 32, 64),
    "medium": Shape("medium", 64, 128, 128, 256),
    "large": Shape("large", 256, 64, 256, 512),
    "long": Shape("long", 8, 2048, 16, 64),
    # for the parallel-in-time variants (rnnjax_deer, ...); not in the default preset list
    "very_long": Shape("very_long", 4, 16384, 16, 32),
}
# --quick: tiny shapes for the smoke test.
QUICK_PRESETS: Dict[str, Shape] = {
    "tiny": Shape("tiny", 4, 16, 8, 16),
    "tiny_long": Shape("tiny_long", 2, 64, 4, 8),
}


def matmul_flops(cell: str, s: Shape, mode: str) -> float:
  """Matmul FLOPs of one run (elementwise gate math not counted).

  Forward: per step ``x W_i`` (2*B*I*G*H) and ``h W_h`` (2*B*H*G*H).
  Forward+backward: 3x forward (each matmul has two gradient matmuls of the
  same size: one for its input, one for its weight).
  """
  fwd = 2.0 * s.T * s.B * (s.I + s.H) * GATES[cell] * s.H
  return fwd if mode == "fwd" else 3.0 * fwd


def time_calls(fn: Callable[[], object], sync: Callable[[object], None], *,
               warmup: int, repeats: int, target_s: float) -> List[float]:
  """Wall-clock seconds of ``repeats`` synchronised calls after ``warmup`` calls.

  The number of timed calls is ``repeats`` at most, at least 3, and fewer than
  ``repeats`` when one call is long compared to ``target_s``.
  """
  for _ in range(warmup):
    sync(fn())
  t0 = time.perf_counter()
  sync(fn())
  first = time.perf_counter() - t0
  n = max(3, min(repeats, int(target_s / max(first, 1e-9))))
  times = [first]
  for _ in range(n - 1):
    t0 = time.perf_counter()
    sync(fn())
    times.append(time.perf_counter() - t0)
  return times


def cpu_meta() -> Dict[str, object]:
  """The host CPU: model, vector features (AVX2 / AVX-512 ...) and count, from /proc/cpuinfo."""
  from rnnjax._autotune import cpu_info
  return cpu_info()


def format_cpu(cpu: Dict[str, object]) -> str:
  """One markdown line naming the CPU and its vector features."""
  feats = " ".join(cpu.get("features") or []) or "none reported"
  return (f"CPU: {cpu.get('model')} ({cpu.get('machine', '')}, {cpu.get('cpu_count')} CPUs), "
          f"vector units: {cpu.get('vector')} (flags: {feats}).")


def summarize(times: List[float]) -> Dict[str, float]:
  return {"median_s": statistics.median(times), "min_s": min(times), "n": len(times)}


def finish_rows(records, roof: float) -> list:
  """Timing records -> table rows: the summary, GFLOP/s and roofline fraction of each
  record with times, and ``x_fastest`` (median over the fastest median) within each
  (cell, shape, mode) group. Shared by ``run.py`` and ``gpu_check.py``."""
  rows = []
  for rec in records:
    if rec["times"]:
      summ = summarize(rec["times"])
      gf = matmul_flops(rec["cell"], Shape(**rec["shape"]), rec["mode"]) / summ["median_s"] / 1e9
      rec.update(summ, gflops=gf, roofline_frac=(gf / roof if roof else None))
    rows.append(rec)
  groups: Dict[tuple, List[dict]] = {}
  for rec in rows:
    groups.setdefault((rec["cell"], rec["shape"]["name"], rec["mode"]), []).append(rec)
  for g in groups.values():
    best = min((x["median_s"] for x in g if "median_s" in x), default=None)
    for x in g:
      if "median_s" in x:
        x["x_fastest"] = x["median_s"] / best
  return rows
