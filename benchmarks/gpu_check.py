"""One-command GPU check: rnnjax vs Flax, PyTorch (cuDNN) and jax.experimental.rnn (cuDNN).

Usage (from the repository root, nothing to install; no network needed)::

  PYTHONPATH=. python -m benchmarks.gpu_check OUTDIR            # on a GPU machine, <= 8 minutes
  PYTHONPATH=. python -m benchmarks.gpu_check OUTDIR --dry-run  # tiny sizes on the CPU (CI)

What it measures, on the default JAX GPU (PyTorch on ``cuda``):

* the four presets of the suite (``small``, ``medium``, ``large``, ``long``,
  :data:`benchmarks._common.PRESETS`) for the LSTM and the GRU, forward and
  forward+backward, for ``rnnjax`` (``impl="auto"``), ``rnnjax_reference``,
  ``flax_linen`` (``nn.RNN``), ``torch`` (``nn.LSTM`` / ``nn.GRU``, cuDNN)
  and ``cudnn`` (``jax.experimental.rnn.lstm``, LSTM only);
* the parallel-in-time methods of ``rnnjax.parallel`` (``newton_scan`` with
  ``deer``, ``quasi_deer``, ``elk``; skipped with a note when the module is
  absent) at the ``long`` preset, with the sequential rows of that preset as
  the comparison;
* the device name, driver, CUDA / cuDNN versions and the library versions.

Time budget. The whole command stays under ``--max-s`` (default 480 s = 8
minutes): rows run in priority order (presets, then the parallel methods,
then extra interleaved rounds for steadier medians while time is left); a
row is started only while at least ``--reserve-s`` seconds are left, every
worker call is given at most the remaining time (a worker that overruns is
killed), and rows not run are listed with the note "time budget". Each
implementation runs in its own worker process (``benchmarks._worker``), with
``XLA_PYTHON_CLIENT_PREALLOCATE=false`` so that the JAX workers and PyTorch
share the GPU memory; rnnjax's own variants share one worker.

``--dry-run``: the same code paths on the CPU with the tiny presets, one
round and short timings (cuDNN rows report "needs a GPU"); finishes in well
under a minute; CI runs it (tests/test_benchmarks.py).

Outputs in OUTDIR: ``gpu_check.json`` (meta: device, driver, versions, date,
command; all rows) and ``gpu_check.md`` (the tables of
:func:`benchmarks.run.format_tables` under a GPU header).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PEER_IMPLS = ("flax_linen", "torch", "cudnn")
OUR_IMPLS = ("rnnjax", "rnnjax_reference")
CELLS = ("lstm", "gru")
MODES = ("fwd", "fwdbwd")


class Budget:
  """Wall-clock budget of the whole command: ``left()`` seconds, ``allows()`` a new row."""

  def __init__(self, max_s: float, reserve_s: float, clock=time.monotonic):
    self.clock = clock
    self.t0 = clock()
    self.max_s = float(max_s)
    self.reserve_s = float(reserve_s)

  def elapsed(self) -> float:
    return self.clock() - self.t0

  def left(self) -> float:
    return self.max_s - self.elapsed()

  def allows(self) -> bool:
    return self.left() > self.reserve_s


def plan(dry_run: bool, parallel_methods) -> List[tuple]:
  """The rows ``(cell, shape, mode, impl)`` of the first round, in priority order."""
  from benchmarks._common import PRESETS, QUICK_PRESETS
  table = QUICK_PRESETS if dry_run else PRESETS
  order = ["tiny"] if dry_run else ["small", "medium", "long", "large"]
  rows = []
  for name in order:
    for cell in CELLS:
      for mode in MODES:
        for impl in OUR_IMPLS + PEER_IMPLS:
          rows.append((cell, table[name], mode, impl))
  long_shape = table["tiny_long" if dry_run else "long"]
  for m in parallel_methods:
    for cell in CELLS[:1] if dry_run else CELLS:
      for mode in MODES:
        rows.append((cell, long_shape, mode, f"parallel_{m}"))
  return rows


def _run_cmd(cmd: List[str], timeout: float = 20.0, env=None) -> Optional[str]:
  try:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
  except (OSError, subprocess.SubprocessError):
    return None
  return out.stdout.strip() if out.returncode == 0 else None


def gpu_info(timeout: float = 20.0) -> Dict[str, object]:
  """nvidia-smi's name, driver, memory and compute capability of each GPU (empty if none)."""
  out = _run_cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                  "--format=csv,noheader"], timeout)
  gpus = []
  for line in (out or "").splitlines():
    parts = [p.strip() for p in line.split(",")]
    if len(parts) >= 4:
      gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]})
  cuda = None
  smi = _run_cmd(["nvidia-smi"], timeout) or ""
  for tok in smi.split("|"):
    if "CUDA Version" in tok:
      cuda = tok.split("CUDA Version:")[-1].strip()
  return {"gpus": gpus, "driver_cuda": cuda}


_TORCH_INFO = """
import json, torch
d = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
  d["cudnn"] = torch.backends.cudnn.version()
except Exception:
  d["cudnn"] = None
if torch.cuda.is_available():
  d["device"] = torch.cuda.get_device_name(0)
print(json.dumps(d))
"""


def torch_info(timeout: float = 60.0, env=None) -> Dict[str, object]:
  out = _run_cmd([sys.executable, "-c", _TORCH_INFO], timeout, env)
  try:
    return json.loads(out.splitlines()[-1]) if out else {"error": "torch not importable"}
  except ValueError:
    return {"error": "unreadable torch info"}


def _plugin_versions() -> Dict[str, str]:
  from importlib import metadata
  out = {}
  for dist in ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt", "jax-cuda13-pjrt",
               "nvidia-cudnn-cu12", "nvidia-cudnn-cu13", "optax"):
    try:
      out[dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
      pass
  return out


def build_parser():
  ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("outdir", help="folder for gpu_check.json and gpu_check.md")
  ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (every code path, < 60 s)")
  ap.add_argument("--max-s", type=float, default=None,
                  help="wall-clock bound of the whole command (default 480; dry run 240)")
  ap.add_argument("--reserve-s", type=float, default=None,
                  help="no new row starts with less than this left (default 25; dry run 5)")
  ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds at most (dry run: 1)")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--target-s", type=float, default=0.3)
  ap.add_argument("--parallel-methods", default="deer,quasi_deer,elk",
                  help="rnnjax.parallel methods to time at the long preset ('' for none)")
  return ap


def run(args) -> dict:
  from benchmarks import _common, _impls
  from benchmarks import run as bench_run
  methods = [m.strip() for m in args.parallel_methods.split(",") if m.strip()]
  bad = [m for m in methods if m not in _impls.PARALLEL_METHODS]
  if bad:
    raise SystemExit(f"--parallel-methods: unknown {bad}; choose from {', '.join(_impls.PARALLEL_METHODS)}")
  if args.dry_run:
    args.rounds, args.repeats, args.target_s = 1, min(args.repeats, 3), min(args.target_s, 0.02)
  max_s = args.max_s if args.max_s is not None else (240.0 if args.dry_run else 480.0)
  reserve = args.reserve_s if args.reserve_s is not None else (5.0 if args.dry_run else 25.0)
  budget = Budget(max_s, reserve)
  env = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "2"}
  if args.dry_run:
    env["JAX_PLATFORMS"] = "cpu"
    env["CUDA_VISIBLE_DEVICES"] = ""
  os.environ.update(env)  # this process imports jax too (device name)
  os.makedirs(args.outdir, exist_ok=True)
  import jax
  backend = "cpu" if args.dry_run else jax.default_backend()
  dev = jax.devices(backend)[0]
  rows = plan(args.dry_run, methods)
  timeout = max(budget.left() - 5, 5)
  workers = {i: bench_run.Worker(i, backend, args.outdir, timeout, env)
             for i in ("rnnjax",) + PEER_IMPLS}
  worker_of = lambda impl: workers["rnnjax" if impl in OUR_IMPLS or impl.startswith("parallel_") else impl]
  results: Dict[tuple, dict] = {}
  roofline = []
  info = {}
  notes = []
  try:
    for i, w in workers.items():
      w.timeout_s = max(min(60.0, budget.left() - 5), 1)
      info[i] = w.ask({"op": "info"})
    w = workers["rnnjax"]
    w.timeout_s = max(min(60.0, budget.left() - 5), 1)
    roofline.append(w.ask({"op": "roofline", "n": 256 if args.dry_run else 4096, "repeats": 5}))
    for r in range(args.rounds):
      round_rows = rows if r == 0 else [x for x in rows if not x[3].startswith("parallel_")]
      for k, (cell, shape, mode, impl) in enumerate(round_rows):
        key = (cell, shape.name, mode, impl)
        rec = results.setdefault(key, {"cell": cell, "shape": shape.to_dict(), "mode": mode,
                                       "impl": impl, "times": [], "compile_s": None, "memory": {},
                                       "skip": None, "error": None, "round": 0})
        if rec["skip"] or rec["error"]:
          continue
        if not budget.allows():
          if r == 0:
            rec["skip"] = "time budget"
          continue
        wk = worker_of(impl)
        wk.timeout_s = max(budget.left() - 5, 1)
        ans = wk.ask({"op": "bench", "impl": impl, "cell": cell, "shape": shape.to_dict(),
                      "mode": mode, "warmup": 1 if args.dry_run else 2, "repeats": args.repeats,
                      "target_s": args.target_s})
        if "skip" in ans:
          rec["skip"] = ans["skip"]
        elif "error" in ans:
          rec["error"] = ans["error"]
          print(f"[{impl}] {cell} {shape.name} {mode}: ERROR {ans['error']}", file=sys.stderr)
        else:
          rec["times"] += ans["times"]
          rec["round"] = r + 1
          if ans.get("compile_s") is not None:
            rec["compile_s"] = ans["compile_s"]
          rec["memory"].update(ans.get("memory") or {})
          rec["note"] = ans.get("note", "")
        print(f"round {r + 1} row {k + 1}/{len(round_rows)} ({impl} {cell} {shape.name} {mode}) "
              f"{budget.elapsed():.0f}s", file=sys.stderr, flush=True)
      if not budget.allows():
        notes.append(f"stopped after round {r + 1}: time budget ({max_s:.0f} s) nearly spent")
        break
  finally:
    for w in workers.values():
      if budget.left() > 15:
        w.close()
      else:  # no time for a polite shutdown
        try:
          w.proc.kill()
        except Exception:
          pass
        w._log.close()

  roof = max((x.get("gflops_best", 0.0) for x in roofline if isinstance(x, dict)), default=0.0)
  out_rows = _common.finish_rows(list(results.values()), roof)
  versions = {}
  for inf in info.values():
    if isinstance(inf, dict):
      versions.update(inf.get("versions", {}))
  versions.update(_plugin_versions())
  tinfo = torch_info(timeout=max(min(60.0, budget.left() - 5), 1), env=dict(os.environ))
  impls = list(OUR_IMPLS) + [f"parallel_{m}" for m in methods] + list(PEER_IMPLS)
  meta = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": "python -m benchmarks.gpu_check " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
      "dry_run": bool(args.dry_run), "backend": backend,
      "device": {"platform": dev.platform, "kind": dev.device_kind, "count": len(jax.devices(backend)),
                 "host": platform.node(), "cpu": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count()},
      "cpu": _common.cpu_meta(), "gpu": gpu_info(), "torch": tinfo, "versions": versions,
      "rounds": args.rounds, "repeats": args.repeats, "warmup": 1 if args.dry_run else 2,
      "roofline": {"n": 256 if args.dry_run else 4096, "gflops": roof, "per_round": roofline},
      "budget": {"max_s": max_s, "reserve_s": reserve, "elapsed_s": budget.elapsed()},
      "notes": notes, "impls": impls,
  }
  return {"meta": meta, "results": out_rows}


def format_header(data) -> str:
  m = data["meta"]
  g = m["gpu"]
  lines = ["## GPU check" + (" (dry run on the CPU: tiny sizes, not a measurement)" if m["dry_run"] else ""), ""]
  if g["gpus"]:
    for x in g["gpus"]:
      lines.append(f"GPU: {x['name']}, driver {x['driver']} (CUDA {g.get('driver_cuda')}), "
                   f"{x['memory']}, compute capability {x['compute_capability']}.")
  else:
    lines.append("GPU: none found by nvidia-smi.")
  t = m["torch"]
  lines.append(f"JAX device: {m['device']['kind']} ({m['backend']}); torch {t.get('torch')} "
               f"(CUDA {t.get('cuda')}, cuDNN {t.get('cudnn')}, device {t.get('device', '-')}).")
  lines.append(f"Time budget {m['budget']['max_s']:.0f} s, used {m['budget']['elapsed_s']:.0f} s."
               + (" " + " ".join(m["notes"]) if m["notes"] else ""))
  budget_skipped = [r for r in data["results"] if r.get("skip") == "time budget"]
  if budget_skipped:
    lines.append(f"{len(budget_skipped)} rows not run (time budget).")
  lines.append("")
  return "\n".join(lines)


def main(argv=None):
  from benchmarks import run as bench_run
  args = build_parser().parse_args(argv)
  data = run(args)
  text = format_header(data) + bench_run.format_tables(data)
  with open(os.path.join(args.outdir, "gpu_check.json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(args.outdir, "gpu_check.md"), "w") as f:
    f.write(text + "\n")
  print(text)
  print(f"\nwrote {args.outdir}/gpu_check.json, gpu_check.md", file=sys.stderr)
  return data


if __name__ == "__main__":
  main()
