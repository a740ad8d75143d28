"""Smoke test of the benchmark suite (``python -m benchmarks.run --quick``)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from benchmarks import _common
from benchmarks import run as bench_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_matmul_flops_closed_form():
  s = _common.PRESETS["small"]  # B=16, T=256, I=32, H=64
  # LSTM forward: per step x W_i (2*16*32*256) + h W_h (2*16*64*256), 256 steps.
  assert _common.matmul_flops("lstm", s, "fwd") == 256 * (2 * 16 * 32 * 256 + 2 * 16 * 64 * 256)
  assert _common.matmul_flops("gru", s, "fwdbwd") == 3 * 256 * 2 * 16 * 96 * 192
  assert _common.matmul_flops("simple", _common.PRESETS["long"], "fwd") == 2048 * 2 * 8 * 80 * 64
  assert (_common.PRESETS["large"].B, _common.PRESETS["large"].T, _common.PRESETS["large"].I,
          _common.PRESETS["large"].H) == (256, 64, 256, 512)


def test_time_calls_counts_and_sync():
  calls, synced = [], []
  times = _common.time_calls(lambda: calls.append(1) or len(calls), synced.append, warmup=2,
                             repeats=5, target_s=10.0)
  assert len(times) == 5 and len(calls) == 7 and synced == list(range(1, 8))
  assert _common.summarize([3.0, 1.0, 2.0]) == {"median_s": 2.0, "min_s": 1.0, "n": 3}


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_quick_run_end_to_end(tmp_path):
  out = tmp_path / "res"
  cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--cells", "lstm", "--presets", "tiny",
         "--impls", "rnnjax,torch,equinox,haiku,cudnn", "--host-malloc", "retain", "--out", str(out)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads((out / "results.json").read_text())
  meta = data["meta"]
  assert meta["backend"] == "cpu" and meta["device"]["platform"] == "cpu"
  assert meta["versions"]["jax"] and meta["date"] and meta["roofline"]["gflops"] > 0
  assert meta["host_malloc"] == {"mode": "retain", "env": bench_run.HOST_MALLOC["retain"]}
  # The CPU model and its vector features are recorded and printed in the header.
  assert meta["cpu"]["model"] and meta["cpu"]["vector"] in ("AVX-512", "AVX2", "AVX", "NEON", "SVE", "unknown")
  assert isinstance(meta["cpu"]["features"], list) and meta["cpu"]["cpu_count"] == os.cpu_count()
  rows = {(r["impl"], r["mode"]): r for r in data["results"]}
  shape = _common.QUICK_PRESETS["tiny"]
  for mode in ("fwd", "fwdbwd"):
    r = rows[("rnnjax", mode)]
    assert r["n"] >= 3 and 0 < r["min_s"] <= r["median_s"]
    assert r["compile_s"] > 0 and r["minor_faults_per_call"] >= 0
    # GFLOP/s is the closed-form FLOP count over the median time.
    assert r["gflops"] == pytest.approx(_common.matmul_flops("lstm", shape, mode) / r["median_s"] / 1e9)
    assert r["roofline_frac"] == pytest.approx(r["gflops"] / meta["roofline"]["gflops"])
    t = rows[("torch", mode)]
    assert t["median_s"] > 0 and t["compile_s"] is None
    # x_fastest is against every implementation that ran (skipped ones have no median).
    fastest = min(x["median_s"] for (i, m), x in rows.items()
                  if m == mode and x.get("median_s") is not None)
    assert r["x_fastest"] == pytest.approx(r["median_s"] / fastest)
    for peer, module in (("equinox", "equinox"), ("haiku", "haiku")):
      p = rows[(peer, mode)]
      if importlib.util.find_spec(module) is None:
        assert "not installed" in p["skip"]
      else:  # installed (the test extra has both): it must have run
        assert p["n"] >= 3 and 0 < p["min_s"] <= p["median_s"] and p["compile_s"] > 0, p
    assert "GPU" in rows[("cudnn", mode)]["skip"]
  table = (out / "results.md").read_text()
  assert "rnnjax/torch" in table and "cudnn: cuDNN RNN needs a GPU" in table
  assert f"vector units: {meta['cpu']['vector']}" in table and f"CPU: {meta['cpu']['model']}" in table
  assert "Workers' malloc: retain (MALLOC_MMAP_THRESHOLD_=" in table and "page faults/call" in table
  assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_flags_are_reported():
  with pytest.raises(SystemExit, match="--cells: unknown"):
    bench_run.run(bench_run.build_parser().parse_args(["--cells", "lstm,rnn"]))


def test_summary_against_fastest_peer():
  """rnnjax / fastest peer, by medians and by minima, and compile time vs Flax."""
  def row(impl, med, mn, comp, cell="lstm", shape="small"):
    return {"cell": cell, "mode": "fwdbwd", "shape": {"name": shape}, "impl": impl,
            "median_s": med, "min_s": mn, "compile_s": comp, "roofline_frac": 0.1}
  data = {"meta": {"impls": ["rnnjax", "rnnjax_reference", "flax_linen", "flax_nnx", "torch"]},
          "results": [row("rnnjax", 2.0, 1.5, 0.6), row("rnnjax_reference", 0.5, 0.4, 0.1),
                      row("flax_linen", 4.0, 1.0, 0.3), row("flax_nnx", 3.0, 2.5, 0.4),
                      row("torch", 2.5, 2.0, None),
                      {"cell": "gru", "mode": "fwdbwd", "shape": {"name": "small"}, "impl": "rnnjax",
                       "skip": "no peer ran"}]}
  (r,) = bench_run.summary_rows(data)
  # rnnjax_reference is ours, not a peer; the fastest peer by median is torch.
  assert r["best_peer"] == "torch" and r["median_ratio"] == pytest.approx(2.0 / 2.5)
  assert r["min_ratio"] == pytest.approx(1.5 / 1.0)          # linen has the smallest minimum
  assert r["compile_ratio"] == pytest.approx(0.6 / 0.3)      # vs the faster-compiling Flax
  lines = bench_run.format_summary(data)
  assert "| lstm | fwdbwd | 0.80 (1.50) torch | 2.00-2.00x |" in lines


def test_presets_none_runs_only_the_sweep():
  args = bench_run.build_parser().parse_args(["--presets", "none", "--sweep-T", "8,16", "--quick",
                                             "--cells", "gru", "--modes", "fwd"])
  names = [s.name for _, s, _ in bench_run._configs(args)]
  assert names == ["small@T=8", "small@T=16"]
  with pytest.raises(SystemExit, match="--presets"):
    bench_run._configs(bench_run.build_parser().parse_args(["--presets", "none"]))


_FAULTS = """
import resource, numpy as np
def faults():
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def work():  # three 16 MiB temporaries, freed again
  a, b = np.ones(4 * 2 ** 20, np.float32), np.ones(4 * 2 ** 20, np.float32)
  return (a + b).sum()
for _ in range(3):
  work()
f0 = faults()
for _ in range(10):
  work()
print((faults() - f0) / 10)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_host_malloc_retain_removes_per_call_page_faults():
  """--host-malloc retain: freed 16 MiB buffers are reused instead of mmapped and faulted again."""
  def faults(mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(bench_run.HOST_MALLOC[mode])
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return float(out.stdout.strip())
  default, retain = faults("default"), faults("retain")
  assert default > 500  # 16 MiB = 4096 pages; glibc mmaps and unmaps some of them every call
  assert retain < 100, (default, retain)
  with pytest.raises(SystemExit):
    bench_run.build_parser().parse_args(["--host-malloc", "keep"])


# Not marked slow: CI runs the GPU check in its dry-run mode so it never rots.
def test_gpu_check_dry_run(tmp_path):
  """python -m benchmarks.gpu_check OUT --dry-run: every code path on the CPU, tiny sizes."""
  out = tmp_path / "gpu"
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", str(out), "--dry-run",
                         "--parallel-methods", "deer"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = json.loads((out / "gpu_check.json").read_text())
  meta = data["meta"]
  assert meta["dry_run"] and meta["backend"] == "cpu" and meta["versions"]["jax"]
  assert meta["budget"]["elapsed_s"] < meta["budget"]["max_s"]
  assert "gpus" in meta["gpu"] and meta["torch"]["torch"] and meta["cpu"]["vector"]
  rows = {(r["impl"], r["cell"], r["mode"]): r for r in data["results"]}
  for cell in ("lstm", "gru"):
    for mode in ("fwd", "fwdbwd"):
      for impl in ("rnnjax", "rnnjax_reference", "flax_linen", "torch"):
        r = rows[(impl, cell, mode)]
        assert r["shape"]["name"] == "tiny" and r["n"] >= 3 and 0 < r["min_s"] <= r["median_s"], r
      assert "GPU" in rows[("cudnn", cell, mode)]["skip"]
  par = rows[("parallel_deer", "lstm", "fwd")]
  assert par["shape"]["name"] == "tiny_long"
  try:
    import rnnjax.parallel  # noqa: F401
    assert par["n"] >= 1, par
  except ImportError:
    assert "rnnjax.parallel not available" in par["skip"]
  md = (out / "gpu_check.md").read_text()
  assert md.startswith("## GPU check (dry run") and "vector units:" in md and "rnnjax/torch" in md


def test_gpu_check_budget_and_plan():
  from benchmarks import gpu_check
  now = [0.0]
  b = gpu_check.Budget(480, 25, clock=lambda: now[0])
  assert b.allows() and b.left() == 480
  now[0] = 455.0
  assert not b.allows() and b.left() == 25 and b.elapsed() == 455
  rows = gpu_check.plan(False, ["deer", "elk"])
  presets = [s.name for _, s, _, i in rows if not i.startswith("parallel_")]
  # Main rows first, in priority order: small, medium, long, large; 2 cells x 2 modes x 5 impls each.
  assert presets == [p for p in ("small", "medium", "long", "large") for _ in range(20)]
  par = [(c, s.name, m, i) for c, s, m, i in rows if i.startswith("parallel_")]
  assert par[0] == ("lstm", "long", "fwd", "parallel_deer") and len(par) == 8
  assert {i for *_, i in rows} == {"rnnjax", "rnnjax_reference", "flax_linen", "torch", "cudnn",
                                   "parallel_deer", "parallel_elk"}
  with pytest.raises(SystemExit, match="parallel-methods"):
    gpu_check.run(gpu_check.build_parser().parse_args(["/tmp/x", "--dry-run", "--parallel-methods", "newton"]))


def test_bench_memory_quick(tmp_path):
  """benchmarks.bench_memory --quick: XLA temp memory of remat below the plain scan's, table, plot."""
  from benchmarks import bench_memory
  data = bench_memory.main(["--quick", "--out", str(tmp_path)])
  (r16, r64) = data["rows"]
  assert (r16["T"], r16["chunk"], r64["T"], r64["chunk"]) == (16, 4, 64, 8)
  # Plain stores T steps of residuals: its temp grows ~4x from T=16 to 64; remat's much less.
  assert r64["plain"]["temp_bytes"] > 3 * r16["plain"]["temp_bytes"]
  assert r64["remat"]["temp_bytes"] * 2 < r64["plain"]["temp_bytes"]
  assert r64["plain"]["median_s"] > 0 and r64["remat"]["cpu_median_s"] >= 0
  assert data["meta"]["cpu"]["vector"] in (tmp_path / "memory.md").read_text()
  assert (tmp_path / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
