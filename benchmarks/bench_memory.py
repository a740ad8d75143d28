"""Memory and time of forward+backward against T: plain scan vs rematerialised scan.

Usage::

  python -m benchmarks.bench_memory                       # LSTM H=256, B=8, I=32
  python -m benchmarks.bench_memory --T 256,1024,4096,16384,65536 --time-T 256,1024,4096
  python -m benchmarks.bench_memory --quick               # tiny (smoke test)

For every T: the gradient of ``sum(ys)`` w.r.t. the parameters and the inputs
of an LSTM scan (``impl`` fused by default), jitted, lowered and compiled
once for the plain scan and once for :func:`rnnjax._remat.remat_scan` with
chunk ``ceil(sqrt(T))``. Memory is XLA's memory analysis of the compiled
executable (``temp_size_in_bytes``: the buffers live inside the call, i.e.
the stored residuals; and temp + arguments + outputs), which needs only a
compile, so it is cheap at every T. Time (median of ``--repeats`` calls
after one warm-up, the two variants interleaved) is measured at the
``--time-T`` points only, as wall-clock time and as the process's CPU time
(all threads; less sensitive to other load on a shared host). Writes ``memory.json``, ``memory.md`` and
``memory.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(variant, cell, params, xs, impl, chunk):
  import jax
  import jax.numpy as jnp
  import rnnjax as rj
  from rnnjax import _remat
  sf = functools.partial(rj.scan, time_major=True, impl=impl)
  c0 = cell.initial_carry((xs.shape[1],))
  if variant == "plain":
    f = lambda p, x: sf(cell, p, x, c0)[1]
  else:
    f = lambda p, x: _remat.remat_scan(sf, cell, p, x, c0, None, chunk=chunk)[1]
  g = jax.grad(lambda p, x: jnp.sum(f(p, x)), argnums=(0, 1))
  t0 = time.perf_counter()
  compiled = jax.jit(g).lower(params, xs).compile()
  compile_s = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  mem = {"temp_bytes": int(ma.temp_size_in_bytes),
         "total_bytes": int(ma.temp_size_in_bytes + ma.argument_size_in_bytes
                            + ma.output_size_in_bytes - ma.alias_size_in_bytes)}
  return compiled, compile_s, mem


def run(args):
  import jax
  import jax.numpy as jnp
  import rnnjax as rj
  from rnnjax import _autotune
  from rnnjax import _remat
  Ts = [int(t) for t in args.T.split(",") if t.strip()]
  time_Ts = [int(t) for t in args.time_T.split(",") if t.strip()]
  cell = rj.LSTM(args.H)
  params = cell.init(jax.random.key(0), args.I)
  rows = []
  for T in Ts:
    xs = jax.random.normal(jax.random.key(1), (T, args.B, args.I), jnp.float32)
    chunk = _remat.default_chunk(T)
    row = {"T": T, "chunk": chunk}
    built = {}
    for v in ("plain", "remat"):
      compiled, cs, mem = _build(v, cell, params, xs, args.impl, chunk)
      row[v] = {"compile_s": cs, **mem, "times": []}
      built[v] = compiled
    if T in time_Ts:
      for v in built:
        jax.block_until_ready(built[v](params, xs))  # warm-up
      for _ in range(args.repeats):
        for v in built:  # interleaved
          t0, c0 = time.perf_counter(), time.process_time()
          jax.block_until_ready(built[v](params, xs))
          row[v]["times"].append(time.perf_counter() - t0)
          row[v].setdefault("cpu_times", []).append(time.process_time() - c0)
      for v in built:
        row[v]["median_s"] = statistics.median(row[v]["times"])
        row[v]["cpu_median_s"] = statistics.median(row[v]["cpu_times"])
    del built
    rows.append(row)
    p, r = row["plain"], row["remat"]
    print(f"T={T} chunk={chunk}: temp plain {p['temp_bytes'] / 2**20:.1f} MiB, remat "
          f"{r['temp_bytes'] / 2**20:.1f} MiB ({p['temp_bytes'] / max(r['temp_bytes'], 1):.1f}x)"
          + (f"; time plain {p['median_s']:.3f} s, remat {r['median_s']:.3f} s "
             f"({r['median_s'] / p['median_s']:.2f}x)" if "median_s" in p else ""),
          file=sys.stderr, flush=True)
  dev = jax.devices()[0]
  meta = {"cell": f"LSTM(H={args.H})", "B": args.B, "I": args.I, "impl": args.impl,
          "repeats": args.repeats, "device": {"platform": dev.platform, "kind": dev.device_kind},
          "cpu": _autotune.cpu_info(), "jax": jax.__version__,
          "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "command": " ".join(["python -m benchmarks.bench_memory"] + sys.argv[1:])}
  return {"meta": meta, "rows": rows}


def format_table(data) -> str:
  m = data["meta"]
  cpu = m["cpu"]
  out = [f"{m['cell']}, B={m['B']}, I={m['I']}, impl={m['impl']}, forward+backward (grad of sum(ys) "
         f"w.r.t. params and inputs); remat chunk = ceil(sqrt(T)). Device {m['device']['platform']} "
         f"({cpu['model']}, {cpu['vector']}, {cpu['cpu_count']} CPUs), jax {m['jax']}, {m['date']}. "
         f"Memory: XLA memory analysis of the compiled call; time: median of {m['repeats']} "
         "interleaved calls (wall clock; the CPU-time ratio uses the process's CPU time, "
         "steadier on a shared host).", "",
         "| T | chunk | plain temp MiB | remat temp MiB | temp ratio | plain total MiB | remat total MiB "
         "| plain s | remat s | time ratio | CPU-time ratio |", "|" + "---|" * 11]
  for r in data["rows"]:
    p, q = r["plain"], r["remat"]
    t = ("-", "-", "-", "-")
    if "median_s" in p:
      t = (f"{p['median_s']:.3f}", f"{q['median_s']:.3f}", f"{q['median_s'] / p['median_s']:.2f}",
           f"{q['cpu_median_s'] / p['cpu_median_s']:.2f}" if p.get("cpu_median_s") else "-")
    out.append(f"| {r['T']} | {r['chunk']} | {p['temp_bytes'] / 2**20:.1f} | {q['temp_bytes'] / 2**20:.2f} | "
               f"{p['temp_bytes'] / max(q['temp_bytes'], 1):.1f} | {p['total_bytes'] / 2**20:.1f} | "
               f"{q['total_bytes'] / 2**20:.1f} | {t[0]} | {t[1]} | {t[2]} | {t[3]} |")
  return "\n".join(out)


def plot(data, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = data["rows"]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
  Ts = [r["T"] for r in rows]
  for v, mk in (("plain", "o-"), ("remat", "s-")):
    a1.plot(Ts, [r[v]["temp_bytes"] / 2**20 for r in rows], mk, label=f"{v} (XLA temp)")
    tt = [(r["T"], r[v]["median_s"]) for r in rows if "median_s" in r[v]]
    if tt:
      a2.plot([t for t, _ in tt], [s for _, s in tt], mk, label=v)
  for a in (a1, a2):
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("sequence length T")
    a.grid(True, which="both", alpha=0.3)
    a.legend()
  m = data["meta"]
  a1.set_ylabel("MiB")
  a1.set_title(f"{m['cell']} B={m['B']} fwd+bwd memory")
  a2.set_ylabel("seconds per call")
  a2.set_title(f"time ({m['cpu']['model'] if m['device']['platform'] == 'cpu' else m['device']['kind']})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory", description=__doc__.split("\n\n")[0])
  ap.add_argument("--T", default="256,1024,4096,16384,65536")
  ap.add_argument("--time-T", default="256,1024,4096")
  ap.add_argument("--B", type=int, default=8)
  ap.add_argument("--I", type=int, default=32)
  ap.add_argument("--H", type=int, default=256)
  ap.add_argument("--impl", default="fused", choices=("fused", "reference"))
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
  ap.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "memory"))
  args = ap.parse_args(argv)
  if args.quick:
    args.T, args.time_T, args.B, args.I, args.H, args.repeats = "16,64", "16,64", 2, 3, 8, 1
  data = run(args)
  os.makedirs(args.out, exist_ok=True)
  text = format_table(data)
  print(text)
  with open(os.path.join(args.out, "memory.json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(args.out, "memory.md"), "w") as f:
    f.write(text + "\n")
  plot(data, os.path.join(args.out, "memory.png"))
  return data


if __name__ == "__main__":
  main()
