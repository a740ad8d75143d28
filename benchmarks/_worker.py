"""A benchmark worker: one implementation, one process, commands on stdin.

The driver (:mod:`benchmarks.run`) starts one worker per implementation and
sends it JSON lines; each answer is one JSON line on stdout prefixed with
``@@`` (libraries may print to stdout too). Built callables are cached, so the
compile happens once, in the first round, and later rounds only time runs.

Commands::

  {"op": "bench", "cell": .., "shape": {..}, "mode": "fwd"|"fwdbwd",
   "warmup": n, "repeats": n, "target_s": s}
  {"op": "roofline", "n": 2048, "repeats": n}
  {"op": "info"}
  {"op": "quit"}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from benchmarks import _common
from benchmarks import _impls


def _minor_faults():
  """This process's minor page faults so far (None where ``resource`` is missing)."""
  try:
    import resource
  except ImportError:  # not a Unix
    return None
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _reply(obj):
  sys.stdout.write("@@" + json.dumps(obj) + "\n")
  sys.stdout.flush()


def _roofline(n: int, repeats: int, backend):
  """Time of an n x n x n float32 matmul on the JAX device; returns GFLOP/s (best)."""
  import jax
  import jax.numpy as jnp
  dev = _impls._jax_device(backend)
  a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), jnp.float32), dev)
  b = jax.device_put(jax.random.normal(jax.random.key(1), (n, n), jnp.float32), dev)
  f = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
  times = _common.time_calls(lambda: f(a, b), _impls._jax_sync, warmup=1, repeats=repeats,
                             target_s=1e9)
  return {"n": n, "gflops_best": 2.0 * n ** 3 / min(times) / 1e9,
          "gflops_median": 2.0 * n ** 3 / sorted(times)[len(times) // 2] / 1e9}


_LIBS = {"torch": ("torch",), "equinox": ("jax", "equinox"), "haiku": ("jax", "haiku"),
         "flax_linen": ("jax", "flax"), "flax_nnx": ("jax", "flax")}


def _versions(impl):
  import importlib
  for mod in _LIBS.get(impl, ("jax", "rnnjax")):
    try:
      importlib.import_module(mod)
    except Exception:  # reported as missing by the adapter
      pass
  out = {"python": sys.version.split()[0]}
  for mod in ("jax", "jaxlib", "flax", "torch", "equinox", "haiku", "numpy"):
    m = sys.modules.get(mod)
    if m is not None and hasattr(m, "__version__"):
      out[mod] = m.__version__
  if "rnnjax" in sys.modules:
    out["rnnjax"] = sys.modules["rnnjax"].__version__
    out["rnnjax_path"] = os.path.dirname(sys.modules["rnnjax"].__file__)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument("--impl", required=True)
  ap.add_argument("--backend", default=None)
  args = ap.parse_args(argv)
  if args.impl == "rnnjax_baseline":
    src = os.environ.get("RNNJAX_BASELINE_SRC")
    if not src:
      raise SystemExit("rnnjax_baseline needs run.py --baseline-src PATH (RNNJAX_BASELINE_SRC)")
    sys.path.insert(0, os.path.abspath(src))
    sys.modules.pop("rnnjax", None)
  cache = {}
  for line in sys.stdin:
    line = line.strip()
    if not line:
      continue
    cmd = json.loads(line)
    op = cmd.get("op")
    try:
      if op == "quit":
        _reply({"ok": True})
        return
      if op == "info":
        info = {"versions": _versions(args.impl), "pid": os.getpid()}
        if "jax" in sys.modules and args.impl != "torch":
          import jax
          d = _impls._jax_device(args.backend)
          info["device"] = {"platform": d.platform, "kind": d.device_kind, "str": str(d)}
        _reply(info)
        continue
      if op == "roofline":
        _reply(_roofline(int(cmd["n"]), int(cmd.get("repeats", 5)), args.backend))
        continue
      if op != "bench":
        _reply({"error": f"unknown op {op!r}"})
        continue
      shape = _common.Shape(**cmd["shape"])
      # "impl" in the command: another adapter in this process (benchmarks.gpu_check runs
      # rnnjax's own variants in one worker).
      impl = cmd.get("impl", args.impl)
      key = (impl, cmd["cell"], shape, cmd["mode"])
      fresh = key not in cache
      if fresh:
        try:
          cache[key] = _impls.ADAPTERS[impl](cmd["cell"], shape, cmd["mode"], args.backend)
        except _impls.Unavailable as e:
          cache[key] = e
      built = cache[key]
      if isinstance(built, _impls.Unavailable):
        _reply({"skip": str(built)})
        continue
      warmup = int(cmd.get("warmup", 2))
      faults0 = _minor_faults()
      times = _common.time_calls(built.call, built.sync, warmup=warmup,
                                 repeats=int(cmd.get("repeats", 10)),
                                 target_s=float(cmd.get("target_s", 1.0)))
      faults1 = _minor_faults()
      memory = dict(built.memory)
      if impl == "torch":
        peak = _impls.torch_peak(args.backend)
        if peak is not None:
          memory["peak_bytes"] = peak
      elif "jax" in sys.modules:
        peak = _impls._jax_peak(_impls._jax_device(args.backend))
        if peak is not None:
          memory["process_peak_bytes"] = peak
      faults = None if faults0 is None else (faults1 - faults0) / (warmup + len(times))
      _reply({"times": times, "compile_s": built.compile_s if fresh else None,
              "memory": memory, "note": built.note, "minor_faults_per_call": faults})
    except Exception as e:  # report, keep serving
      _reply({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]})


if __name__ == "__main__":
  main()
