"""Benchmark rnnjax against peer RNN implementations in one interleaved run.

Usage::

  python -m benchmarks.run                                  # everything, default backend
  python -m benchmarks.run --cells lstm --presets small,long --impls rnnjax,torch
  python -m benchmarks.run --quick                          # tiny shapes, 1 round (smoke test)
  python -m benchmarks.run --backend gpu --sweep-T 64,128,256,512,1024
  python -m benchmarks.run --presets none --sweep-T 64,256,1024 --modes fwdbwd   # only the T sweep
  python -m benchmarks.run --host-malloc retain             # workers keep freed memory (fewer page faults)

What it does:

* Every implementation runs in its own worker process (``benchmarks._worker``),
  started once; the driver sends it one configuration at a time. Rounds are
  interleaved: in round r every configuration is measured for every
  implementation (in an order rotated by r) before round r+1 starts, so drift
  in machine load hits all implementations alike.
* Per configuration (cell, shape, mode): compile time (JAX: ``lower().compile()``,
  once), then after ``--warmup`` calls up to ``--repeats`` timed calls, each
  synchronised (``block_until_ready`` / ``cuda.synchronize``). Reported: median
  and min over all timed calls of all rounds.
* ``fwd``: the output sequence. ``fwdbwd``: gradients of ``sum(ys)`` with
  respect to the parameters and the inputs.
* Achieved GFLOP/s counts the matmul FLOPs (:func:`benchmarks._common.matmul_flops`)
  and is compared with the GFLOP/s of an n x n x n float32 matmul measured on
  the same device in every round of the same run (the best round is the
  roofline).
* Memory: XLA's memory analysis of the compiled executable (temp and output
  bytes) for JAX implementations; the device's peak where the backend reports
  it (GPU), ``torch.cuda.max_memory_allocated`` for PyTorch on CUDA.
* Host page faults: minor page faults per call of the last round (``getrusage``).
  On Linux glibc ``malloc`` serves buffers of more than a few MB with ``mmap``
  and unmaps them on ``free``, so a jitted call whose temporaries are large
  pays their page faults on every call; ``--host-malloc retain`` starts every
  worker (all implementations alike) with glibc settings that keep freed memory
  in the heap (see ``HOST_MALLOC``).
* Implementations that are not installed or do not support a configuration on
  this device (e.g. cuDNN on CPU) are skipped with a note.

Outputs (``--out``, default ``benchmarks/results``): ``results.json`` (device,
versions, date, command, all timings), ``results.md`` (the tables printed to
stdout) and ``results.png`` (time vs sequence length with ``--sweep-T``, else
time per preset).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional

from benchmarks import _common
from benchmarks import _impls
from benchmarks._common import PRESETS, QUICK_PRESETS, Shape

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
  """One implementation's worker process."""

  def __init__(self, impl: str, backend: Optional[str], log_dir: str, timeout_s: float,
               extra_env: Optional[Dict[str, str]] = None):
    self.impl = impl
    self.timeout_s = timeout_s
    self.dead: Optional[str] = None
    cmd = [sys.executable, "-m", "benchmarks._worker", "--impl", impl]
    if backend:
      cmd += ["--backend", backend]
    self.log_path = os.path.join(log_dir, f"worker_{impl}.log")
    self._log = open(self.log_path, "w")
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env or {})
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=self._log, text=True, cwd=REPO, env=env, bufsize=1)

  def ask(self, cmd: dict) -> dict:
    if self.dead:
      return {"error": self.dead}
    try:
      self.proc.stdin.write(json.dumps(cmd) + "\n")
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError) as e:
      self.dead = f"worker exited ({e}); see {self.log_path}"
      return {"error": self.dead}
    deadline = time.monotonic() + self.timeout_s
    while True:
      left = deadline - time.monotonic()
      if left <= 0:
        self.proc.kill()
        self.dead = f"timed out after {self.timeout_s:.0f} s"
        return {"error": self.dead}
      ready, _, _ = select.select([self.proc.stdout], [], [], left)
      if not ready:
        continue
      line = self.proc.stdout.readline()
      if not line:
        self.proc.wait()
        self.dead = f"worker exited with code {self.proc.returncode}; see {self.log_path}"
        return {"error": self.dead}
      if line.startswith("@@"):
        return json.loads(line[2:])
      self._log.write(line)  # a library printed to stdout

  def close(self):
    if not self.dead and self.proc.poll() is None:
      try:
        self.ask({"op": "quit"})
      except Exception:
        pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
    self._log.close()


# glibc malloc environment of the workers (--host-malloc). "retain": no mmap for
# allocations below 1 GiB and no trimming of the heap below 1 GiB free, so the
# large temporaries of a jitted call (scan buffers of several MB) are reused
# from the heap instead of being mmapped, page-faulted in and unmapped again on
# every call. The same for every implementation, so ratios stay fair.
HOST_MALLOC = {
    "default": {},
    "retain": {"MALLOC_MMAP_THRESHOLD_": str(2 ** 30), "MALLOC_TRIM_THRESHOLD_": str(2 ** 30)},
}


def _parse_list(s: str, allowed, what: str) -> List[str]:
  items = [x.strip() for x in s.split(",") if x.strip()]
  bad = [x for x in items if x not in allowed]
  if bad or not items:
    raise SystemExit(f"--{what}: unknown {bad or s!r}; choose from {', '.join(allowed)}")
  return items


def add_arguments(ap, default_out=os.path.join(REPO, "benchmarks", "results")):
  """The suite's options (shared by ``python -m benchmarks.run`` and ``rnnjax bench``)."""
  ap.add_argument("--cells", default=",".join(_common.CELLS),
                  help=f"comma list of {', '.join(_common.CELLS)}")
  ap.add_argument("--presets", default=None,
                  help=f"comma list of {', '.join(PRESETS)} (default all but very_long; --quick: tiny presets; "
                       "'none' with --sweep-T: only the sweep)")
  ap.add_argument("--impls", default=",".join(_impls.DEFAULT_IMPLS),
                  help=f"comma list of {', '.join(_impls.ADAPTERS)}, or 'all'")
  ap.add_argument("--modes", default="fwd,fwdbwd", help="comma list of fwd, fwdbwd")
  ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
  ap.add_argument("--repeats", type=int, default=10, help="max timed calls per round")
  ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
  ap.add_argument("--target-s", type=float, default=0.5,
                  help="aim for about this many seconds of timed calls per round and config")
  ap.add_argument("--roofline-n", type=int, default=2048,
                  help="n of the n x n x n float32 matmul that measures the roofline")
  ap.add_argument("--backend", default=None,
                  help="JAX backend (cpu, gpu, tpu); default: JAX's default")
  ap.add_argument("--sweep-T", default="",
                  help="extra shapes: the --sweep-base preset at these T (for the plot)")
  ap.add_argument("--sweep-base", default="small", help="the preset the T sweep starts from")
  ap.add_argument("--quick", action="store_true",
                  help="tiny shapes, 1 round, few repeats (smoke test)")
  ap.add_argument("--out", default=default_out, help="folder for the results")
  ap.add_argument("--no-plot", action="store_true", help="do not write results.png")
  ap.add_argument("--baseline-src", default=None,
                  help="a checkout of another rnnjax version: adds impl rnnjax_baseline "
                       "(its rnnjax/ is imported by that worker) for an interleaved A/B "
                       "(default: none)")
  ap.add_argument("--timeout-s", type=float, default=1800.0, help="per-command worker timeout")
  ap.add_argument("--host-malloc", default="default", choices=sorted(HOST_MALLOC),
                  help="glibc malloc settings of every worker: 'default', or 'retain' (freed "
                       "memory stays in the heap, so large temporaries cost no page faults per call)")
  return ap


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  def _get_help_string(self, action):  # a None default is explained in the help itself
    if action.default is None and "default" in (action.help or ""):
      return action.help
    return super()._get_help_string(action)


def build_parser():
  ap = argparse.ArgumentParser(prog="python -m benchmarks.run",
                               description=__doc__.split("\n\n")[0],
                               formatter_class=_HelpFormatter)
  return add_arguments(ap)


def _configs(args) -> List[tuple]:
  cells = _parse_list(args.cells, _common.CELLS, "cells")
  modes = _parse_list(args.modes, _common.MODES, "modes")
  table = QUICK_PRESETS if args.quick else PRESETS
  if args.presets is None:
    names = [n for n in table if n != "very_long"]  # very_long only when named
  elif args.presets == "none" and args.sweep_T:  # only the sweep shapes
    names = []
  else:
    names = _parse_list(args.presets, list(table), "presets")
  shapes = [table[n] for n in names]
  if args.sweep_T:
    base = {**PRESETS, **QUICK_PRESETS}[args.sweep_base]
    for T in [int(t) for t in args.sweep_T.split(",") if t.strip()]:
      shapes.append(Shape(f"{base.name}@T={T}", base.B, T, base.I, base.H))
  return [(c, s, m) for s in shapes for c in cells for m in modes]


def _fmt_ms(t):
  return "-" if t is None else (f"{t * 1e3:.3g}" if t * 1e3 < 100 else f"{t * 1e3:.0f}")


def check_args(args) -> None:
  """Raises SystemExit with one line for an option out of range."""
  for flag, v, lo in (("--rounds", args.rounds, 1), ("--repeats", args.repeats, 1),
                      ("--warmup", args.warmup, 0), ("--roofline-n", args.roofline_n, 1)):
    if v < lo:
      raise SystemExit(f"{flag} must be >= {lo}, got {v}.")
  for flag, v in (("--target-s", args.target_s), ("--timeout-s", args.timeout_s)):
    if not v > 0:
      raise SystemExit(f"{flag} must be > 0, got {v}.")
  _parse_list(args.cells, _common.CELLS, "cells")
  _parse_list(args.modes, _common.MODES, "modes")
  if args.impls != "all":
    _parse_list(args.impls, list(_impls.ADAPTERS), "impls")
  if args.backend is not None:
    import jax
    try:
      jax.devices(args.backend)
    except RuntimeError as e:
      raise SystemExit(f"--backend {args.backend!r} is not available here "
                       f"({str(e).splitlines()[0]}).") from None


def run(args) -> dict:
  check_args(args)
  if args.quick:
    args.rounds = 1 if args.rounds == 3 else args.rounds
    args.repeats = min(args.repeats, 3)
    args.warmup = 1
    args.target_s = min(args.target_s, 0.05)
    args.roofline_n = min(args.roofline_n, 256)
  impls = list(_impls.ADAPTERS) if args.impls == "all" else _parse_list(args.impls, list(_impls.ADAPTERS), "impls")
  configs = _configs(args)
  os.makedirs(args.out, exist_ok=True)

  import jax
  backend = args.backend or jax.default_backend()
  jax_device = jax.devices(backend)[0]

  if args.baseline_src:
    os.environ["RNNJAX_BASELINE_SRC"] = os.path.abspath(args.baseline_src)
    if "rnnjax_baseline" not in impls:
      impls.append("rnnjax_baseline")
  menv = HOST_MALLOC[args.host_malloc]
  workers = {i: Worker(i, backend, args.out, args.timeout_s, menv) for i in impls}
  roof_worker = Worker("rnnjax", backend, args.out, args.timeout_s, menv)
  results: Dict[tuple, dict] = {}
  notes: Dict[str, str] = {}
  roofline: List[dict] = []
  try:
    info = {i: w.ask({"op": "info"}) for i, w in workers.items()}
    t_start = time.time()
    for r in range(args.rounds):
      roofline.append(roof_worker.ask({"op": "roofline", "n": args.roofline_n, "repeats": 5}))
      for ci, (cell, shape, mode) in enumerate(configs):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
          key = (cell, shape.name, mode, impl)
          rec = results.setdefault(key, {"cell": cell, "shape": shape.to_dict(), "mode": mode,
                                         "impl": impl, "times": [], "compile_s": None,
                                         "memory": {}, "skip": None, "error": None})
          if rec["skip"] or rec["error"]:
            continue
          ans = workers[impl].ask({"op": "bench", "cell": cell, "shape": shape.to_dict(),
                                   "mode": mode, "warmup": args.warmup, "repeats": args.repeats,
                                   "target_s": args.target_s})
          if "skip" in ans:
            rec["skip"] = ans["skip"]
            notes.setdefault(impl, ans["skip"])
          elif "error" in ans:
            rec["error"] = ans["error"]
            print(f"[{impl}] {cell} {shape.name} {mode}: ERROR {ans['error']}", file=sys.stderr)
          else:
            rec["times"] += ans["times"]
            if ans.get("compile_s") is not None:
              rec["compile_s"] = ans["compile_s"]
            rec["memory"].update(ans.get("memory") or {})
            rec["note"] = ans.get("note", "")
            if ans.get("minor_faults_per_call") is not None:  # the last round's (steady state)
              rec["minor_faults_per_call"] = ans["minor_faults_per_call"]
        print(f"round {r + 1}/{args.rounds} config {ci + 1}/{len(configs)} "
              f"({cell} {shape.name} {mode}) {time.time() - t_start:.0f}s", file=sys.stderr)
  finally:
    for w in list(workers.values()) + [roof_worker]:
      w.close()

  roof = max((x.get("gflops_best", 0.0) for x in roofline), default=0.0)
  rows = _common.finish_rows(list(results.values()), roof)
  first = next(iter(info.values()), {}) if info else {}
  versions = {}
  for i, inf in info.items():
    versions.update(inf.get("versions", {}) if isinstance(inf, dict) else {})
  meta = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
      "backend": backend,
      "device": {"platform": jax_device.platform, "kind": jax_device.device_kind,
                 "count": len(jax.devices(backend)), "host": platform.node(),
                 "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
      "cpu": _common.cpu_meta(),
      "versions": versions,
      "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup,
      "host_malloc": {"mode": args.host_malloc, "env": menv},
      "roofline": {"n": args.roofline_n, "gflops": roof, "per_round": roofline},
      "skipped": notes,
      "impls": impls,
  }
  return {"meta": meta, "results": rows}


def _table_rows(data, cell, mode):
  impls = data["meta"]["impls"]
  rows = [r for r in data["results"] if r["cell"] == cell and r["mode"] == mode]
  names = []
  for r in rows:
    if r["shape"]["name"] not in names:
      names.append(r["shape"]["name"])
  by = {(r["shape"]["name"], r["impl"]): r for r in rows}
  shown = [i for i in impls if any("median_s" in by.get((n, i), {}) for n in names)]
  return names, by, shown


def summary_rows(data) -> List[dict]:
  """rnnjax against the fastest peer per (cell, mode, shape).

  ``median_ratio`` = rnnjax's median / the smallest peer median; ``min_ratio``
  the same with minima (interference on a shared machine only slows a call
  down, so the minima are the steadier estimate); ``compile_ratio`` = rnnjax's
  compile time / the fastest-compiling Flax implementation's.
  """
  peers_all = [i for i in data["meta"]["impls"] if i not in _impls.OURS]
  by = {}
  for r in data["results"]:
    if "median_s" in r:
      by.setdefault((r["cell"], r["mode"], r["shape"]["name"]), {})[r["impl"]] = r
  out = []
  for (cell, mode, shape), rs in by.items():
    ours = rs.get("rnnjax")
    peers = {i: r for i, r in rs.items() if i in peers_all}
    if ours is None or not peers:
      continue
    best = min(peers, key=lambda i: peers[i]["median_s"])
    best_min = min(r["min_s"] for r in peers.values())
    flax_c = [r["compile_s"] for i, r in peers.items() if i.startswith("flax") and r["compile_s"]]
    out.append({"cell": cell, "mode": mode, "shape": shape, "best_peer": best,
                "median_ratio": ours["median_s"] / peers[best]["median_s"],
                "min_ratio": ours["min_s"] / best_min,
                "compile_ratio": ours["compile_s"] / min(flax_c) if flax_c and ours["compile_s"] else None,
                "roofline_frac": ours.get("roofline_frac")})
  return out


def format_summary(data) -> List[str]:
  rows = summary_rows(data)
  if not rows:
    return []
  shapes = []
  for r in rows:
    if r["shape"] not in shapes:
      shapes.append(r["shape"])
  out = ["", "### rnnjax / fastest peer (median ratio, min ratio in parentheses, that peer; "
         "< 1 means rnnjax is faster)", ""]
  out.append("| cell | mode | " + " | ".join(shapes) + " | compile vs Flax |")
  out.append("|" + "---|" * (len(shapes) + 3))
  by = {(r["cell"], r["mode"], r["shape"]): r for r in rows}
  keys = []
  for r in rows:
    if (r["cell"], r["mode"]) not in keys:
      keys.append((r["cell"], r["mode"]))
  for cell, mode in keys:
    cells_ = [cell, mode]
    comp = []
    for sh in shapes:
      r = by.get((cell, mode, sh))
      if r is None:
        cells_.append("-")
        continue
      cells_.append(f"{r['median_ratio']:.2f} ({r['min_ratio']:.2f}) {r['best_peer']}")
      if r["compile_ratio"] is not None:
        comp.append(r["compile_ratio"])
    cells_.append(f"{min(comp):.2f}-{max(comp):.2f}x" if comp else "-")
    out.append("| " + " | ".join(cells_) + " |")
  return out


def format_tables(data) -> str:
  """Markdown tables: median ms per implementation, rnnjax's ratio to each peer, details."""
  meta = data["meta"]
  out = []
  dev = meta["device"]
  out.append(f"Device: {dev['platform']} ({dev['kind']}, {dev['cpu_count']} CPUs), backend {meta['backend']}; "
             f"date {meta['date']}; " + ", ".join(f"{k} {v}" for k, v in sorted(meta["versions"].items())))
  if meta.get("cpu"):
    out.append(_common.format_cpu(meta["cpu"]))
  out.append(f"Roofline: {meta['roofline']['n']}^3 float32 matmul = {meta['roofline']['gflops']:.1f} GFLOP/s. "
             f"{meta['rounds']} interleaved rounds; median (min) ms of all timed calls."
             + (f" Workers' malloc: {meta['host_malloc']['mode']} ({' '.join(f'{k}={v}' for k, v in meta['host_malloc']['env'].items())})."
                if meta.get("host_malloc", {}).get("env") else ""))
  out.extend(format_summary(data))
  cells = []
  for r in data["results"]:
    if r["cell"] not in cells:
      cells.append(r["cell"])
  modes = [m for m in _common.MODES if any(r["mode"] == m for r in data["results"])]
  peers_all = [i for i in meta["impls"] if i not in _impls.OURS]
  for cell in cells:
    for mode in modes:
      names, by, shown = _table_rows(data, cell, mode)
      if not shown:
        continue
      peers = [p for p in shown if p in peers_all]
      out.append("")
      out.append(f"### {cell} {mode} (median (min) ms; ratio = rnnjax / peer, < 1 means rnnjax is faster)")
      out.append("")
      hdr = ["preset"] + shown + ["fastest"] + [f"rnnjax/{p}" for p in peers if "rnnjax" in shown]
      out.append("| " + " | ".join(hdr) + " |")
      out.append("|" + "---|" * len(hdr))
      for n in names:
        cells_ = [n]
        ok = [(by[(n, i)]["median_s"], i) for i in shown if "median_s" in by.get((n, i), {})]
        for i in shown:
          r = by.get((n, i), {})
          cells_.append(f"{_fmt_ms(r['median_s'])} ({_fmt_ms(r['min_s'])})" if "median_s" in r else "-")
        cells_.append(min(ok)[1] if ok else "-")
        if "rnnjax" in shown:
          ours = by.get((n, "rnnjax"), {}).get("median_s")
          for p in peers:
            t = by.get((n, p), {}).get("median_s")
            cells_.append(f"{ours / t:.2f}" if ours and t else "-")
        out.append("| " + " | ".join(cells_) + " |")
  out.append("")
  out.append("### details")
  out.append("")
  hdr = ["cell", "preset", "mode", "impl", "median ms", "min ms", "n", "compile s", "GFLOP/s",
         "% roofline", "x fastest", "XLA temp MiB", "page faults/call"]
  out.append("| " + " | ".join(hdr) + " |")
  out.append("|" + "---|" * len(hdr))
  for r in data["results"]:
    if "median_s" not in r:
      continue
    mem = r["memory"].get("xla_temp_bytes")
    out.append("| " + " | ".join([
        r["cell"], r["shape"]["name"], r["mode"], r["impl"], _fmt_ms(r["median_s"]),
        _fmt_ms(r["min_s"]), str(r["n"]),
        "-" if r["compile_s"] is None else f"{r['compile_s']:.2f}",
        f"{r['gflops']:.2f}", "-" if r["roofline_frac"] is None else f"{100 * r['roofline_frac']:.1f}",
        f"{r['x_fastest']:.2f}", "-" if mem is None else f"{mem / 2 ** 20:.1f}",
        "-" if r.get("minor_faults_per_call") is None else f"{r['minor_faults_per_call']:.0f}"]) + " |")
  skipped = {}
  for r in data["results"]:
    if r["skip"]:
      skipped.setdefault(r["impl"], set()).add(r["skip"])
    if r["error"]:
      skipped.setdefault(r["impl"], set()).add("ERROR: " + r["error"])
  if skipped:
    out.append("")
    out.append("Skipped / failed:")
    for i, reasons in skipped.items():
      for why in sorted(reasons):
        out.append(f"- {i}: {why}")
  return "\n".join(out)


def plot(data, path: str) -> bool:
  """Fwd+bwd (else fwd) median time vs T (sweep shapes) or per preset, one panel per cell."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except Exception as e:  # pragma: no cover
    print(f"no plot: matplotlib unavailable ({e})", file=sys.stderr)
    return False
  res = [r for r in data["results"] if "median_s" in r]
  if not res:
    return False
  mode = "fwdbwd" if any(r["mode"] == "fwdbwd" for r in res) else "fwd"
  res = [r for r in res if r["mode"] == mode]
  sweep = [r for r in res if "@T=" in r["shape"]["name"]]
  cells = sorted({r["cell"] for r in res})
  fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 4), squeeze=False)
  for ax, cell in zip(axes[0], cells):
    rs = [r for r in (sweep or res) if r["cell"] == cell]
    for impl in data["meta"]["impls"]:
      pts = [r for r in rs if r["impl"] == impl]
      if not pts:
        continue
      if sweep:
        pts.sort(key=lambda r: r["shape"]["T"])
        ax.plot([r["shape"]["T"] for r in pts], [r["median_s"] * 1e3 for r in pts], "o-", label=impl)
      else:
        ax.plot([r["shape"]["name"] for r in pts], [r["median_s"] * 1e3 for r in pts], "o-", label=impl)
    if sweep:
      ax.set_xscale("log", base=2)
      s = sweep[0]["shape"]
      ax.set_xlabel(f"sequence length T (B={s['B']}, I={s['I']}, H={s['H']})")
    else:
      ax.set_xlabel("preset")
    ax.set_yscale("log")
    ax.set_ylabel(f"{mode} median time (ms)")
    ax.set_title(f"{cell} on {data['meta']['device']['platform']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def main_with_args(args, prog="python -m benchmarks.run"):
  """Runs the suite for parsed ``args``; writes and returns the results."""
  try:
    data = run(args)
  except SystemExit as e:  # the option checks: one line, named after the command
    if isinstance(e.code, str) and not e.code.startswith(prog):
      raise SystemExit(f"{prog}: error: {e.code}") from None
    raise
  text = format_tables(data)
  print(text)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write(text + "\n")
  if not args.no_plot:
    plot(data, os.path.join(args.out, "results.png"))
  print(f"\nwrote {args.out}/results.json, results.md" + ("" if args.no_plot else ", results.png"),
        file=sys.stderr)
  return data


def main(argv=None):
  return main_with_args(build_parser().parse_args(argv))


if __name__ == "__main__":
  main()
