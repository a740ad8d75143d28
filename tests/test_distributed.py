"""Multi-process training with JAX's own runtime, tested with real processes.

Every multi-process check runs real processes on 127.0.0.1 (a free port, the
CPU collectives through gloo, fake CPU devices) started by
``python -m rnnjax.launch`` or as plain subprocesses, each bounded by a
timeout and killed (process group, SIGKILL) on failure. The processes are
shared: one fixture runs the roles of ``tests/_dist_worker.py`` --

* ``kill`` (2 processes x 2 devices, a checkpoint every step; process 1 is
  SIGKILLed once some checkpoints are committed) and, at the same time,
  ``one4`` (1 process x 4 devices: N steps with checkpoints, then the
  time-sharded scans);
* ``two`` (2 x 2: N steps with checkpoints and JSON lines, resume, an
  uninterrupted run, restore the 1-process checkpoint, resume the killed run);
* ``one1`` (1 x 1: N steps, restore the 2-process checkpoint);

and the tests below compare their outputs.
"""
# None of these is marked slow: the multi-process tests run in CI (the file takes ~1-2 min quiet).
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_dist_worker.py")
N = 4  # tests/_dist_worker.py N


def _env(devices=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  for k in ("RNNJAX_COORDINATOR", "RNNJAX_NUM_PROCESSES", "RNNJAX_PROCESS_ID"):
    env.pop(k, None)
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  if devices is not None:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  env["XLA_FLAGS"] = " ".join(flags)
  return env


class Procs:
  """Started subprocesses (each its own process group), all SIGKILLed on close."""

  def __init__(self):
    self.procs = []

  def start(self, argv, log, devices=None):
    f = open(log, "wb")
    p = subprocess.Popen(argv, env=_env(devices), stdout=f, stderr=subprocess.STDOUT,
                         start_new_session=True, cwd=ROOT)
    f.close()
    self.procs.append(p)
    return p

  def wait(self, p, timeout, log):
    try:
      return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self._kill(p)
      raise AssertionError(f"{p.args} ran past {timeout} s:\n{_tail(log)}") from None

  def _kill(self, p):
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()

  def close(self):
    for p in self.procs:
      self._kill(p)


def _tail(log, n=3000):
  with open(log, errors="replace") as f:
    return f.read()[-n:]


def _launch(n, d, role, *args, timeout=None):
  argv = [sys.executable, "-m", "rnnjax.launch", "-n", str(n), "-d", str(d),
          "--heartbeat-timeout", "3", "--grace", "15"]
  if timeout:
    argv += ["--timeout", str(timeout)]
  return argv + [WORKER, role] + list(args)


def _committed(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("dist"))
  killed = os.path.join(out, "k")
  os.makedirs(killed)
  procs = Procs()
  t = {}
  try:
    t0 = time.perf_counter()
    log_k, log_4 = os.path.join(out, "kill.log"), os.path.join(out, "one4.log")
    pk = procs.start(_launch(2, 2, "kill", killed, timeout=240), log_k)
    p4 = procs.start([sys.executable, WORKER, "one4", out], log_4, devices=4)
    ckpt_k = os.path.join(killed, "ckptK")
    deadline = time.monotonic() + 200
    while len(_committed(ckpt_k)) < 2:
      assert pk.poll() is None, f"the kill run stopped early:\n{_tail(log_k)}"
      assert time.monotonic() < deadline, f"no checkpoints after 200 s:\n{_tail(log_k)}"
      time.sleep(0.2)
    with open(os.path.join(killed, "pid1")) as f:
      os.kill(int(f.read()), signal.SIGKILL)
    t_kill = time.monotonic()
    rc_kill = procs.wait(pk, 60, log_k)
    t["kill_to_exit_s"] = time.monotonic() - t_kill
    t["kill_rc"] = rc_kill
    t["kill_log"] = _tail(log_k, 20000)
    t["committed_after_kill"] = _committed(ckpt_k)
    rc = procs.wait(p4, 240, log_4)
    assert rc == 0, _tail(log_4)
    log_2 = os.path.join(out, "two.log")
    rc = procs.wait(procs.start(_launch(2, 2, "two", out, killed, timeout=230), log_2), 240, log_2)
    assert rc == 0, _tail(log_2)
    log_1 = os.path.join(out, "one1.log")
    rc = procs.wait(procs.start([sys.executable, WORKER, "one1", out], log_1, devices=1), 200, log_1)
    assert rc == 0, _tail(log_1)
    t["total_s"] = time.perf_counter() - t0
  finally:
    procs.close()
  t["out"] = out
  return t


def _load(runs, name):
  out = runs["out"]
  params = dict(np.load(os.path.join(out, name + ".npz")))
  with open(os.path.join(out, name + ".json")) as f:
    return params, json.load(f)


def _assert_params(a, b, exact):
  assert sorted(a) == sorted(b)
  for k in a:
    if exact:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    else:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=2e-6, err_msg=k)


def _assert_history(ha, hb, exact):
  assert len(ha) == len(hb)
  for x, y in zip(ha, hb):
    assert x["step"] == y["step"] and x["skipped"] == y["skipped"] and x["clipped"] == y["clipped"]
    for k in ("loss", "grad_norm"):
      if exact:
        assert x[k] == y[k], (x, y)
      else:
        np.testing.assert_allclose(x[k], y[k], rtol=2e-5, err_msg=f"step {x['step']} {k}")


def test_same_params_and_metrics_on_2x2_4x1_and_1_device(runs):
  p4, r4 = _load(runs, "one4")
  p22, r22 = _load(runs, "two")
  p1, r1 = _load(runs, "one1")
  assert r4["step"] == r22["step"] == r1["step"] == N
  _assert_params(p22, p4, exact=False)
  _assert_params(p1, p4, exact=False)
  _assert_history(r22["history"], r4["history"], exact=False)
  _assert_history(r1["history"], r4["history"], exact=False)
  assert len(r4["history"]) == N and r4["history"][0]["loss"] != r4["history"][-1]["loss"]


def test_only_process_0_writes_the_json_lines(runs):
  out = runs["out"]
  assert not os.path.exists(os.path.join(out, "two_p1.jsonl"))
  with open(os.path.join(out, "two_p0.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  _, r22 = _load(runs, "two")
  assert lines == r22["history"]


def test_resume_on_the_same_layout_is_bitwise(runs):
  pa, ra = _load(runs, "two_resumed")
  pb, rb = _load(runs, "two_straight")
  assert ra["step"] == rb["step"] == N + 2
  _assert_params(pa, pb, exact=True)
  _assert_history(ra["history"], rb["history"], exact=True)


def test_checkpoints_move_between_process_counts(runs):
  # Restoring gives back the saved values bit for bit, whatever the layout...
  _assert_params(_load(runs, "two_from_one_restored")[0], _load(runs, "one4")[0], exact=True)
  _assert_params(_load(runs, "one1_from_two_restored")[0], _load(runs, "two")[0], exact=True)
  # ...and the continued runs match the uninterrupted 2-process run to round-off.
  ps, rs = _load(runs, "two_straight")
  for name in ("two_from_one", "one1_from_two"):
    p, r = _load(runs, name)
    assert r["step"] == N + 2
    _assert_params(p, ps, exact=False)
    _assert_history(r["history"], rs["history"], exact=False)


def test_killing_one_process_stops_the_other_with_an_error_and_a_restart_resumes(runs):
  assert runs["kill_rc"] == 128 + signal.SIGKILL, runs["kill_log"][-3000:]
  # heartbeat timeout 3 s, grace 15 s: bounded, whatever the load
  assert runs["kill_to_exit_s"] < 45, runs["kill_to_exit_s"]
  survivor = "\n".join(line for line in runs["kill_log"].splitlines() if line.startswith("[0]"))
  # JAX words it "heartbeat timeout" or "stopped sending heartbeats" depending on which side notices first
  assert "heartbeat" in survivor or "rnnjax.launch: terminating" in runs["kill_log"], \
      runs["kill_log"][-3000:]
  assert "process 1 exited with status -9 (killed by SIGKILL)" in runs["kill_log"]
  assert len(runs["committed_after_kill"]) >= 2
  with open(os.path.join(runs["out"], "killed_latest.json")) as f:
    latest = json.load(f)["latest"]
  assert latest >= runs["committed_after_kill"][-1]
  pr, rr = _load(runs, "killed_resumed")
  ps, rs = _load(runs, "killed_straight")
  assert rr["step"] == latest + 2 and len(rr["history"]) == latest + 2
  _assert_params(pr, ps, exact=True)
  _assert_history(rr["history"], rs["history"], exact=True)


def test_time_sharded_scans_equal_unsharded_ones(runs):
  z = np.load(os.path.join(runs["out"], "scan.npz"))
  assert z["shards"].tolist() == [4, 64 // 4]
  a, A, b, h0 = (z[k].astype(np.float64) for k in ("a", "A", "b", "h0"))
  h_d, h_a = h0.copy(), h0.copy()
  ref_d, ref_a = np.zeros_like(b), np.zeros_like(b)
  for t in range(b.shape[0]):
    h_d = a[t] * h_d + b[t]
    h_a = np.einsum("bij,bj->bi", A[t], h_a) + b[t]
    ref_d[t], ref_a[t] = h_d, h_a
  scale_d, scale_a = 1 + np.abs(ref_d).max(), 1 + np.abs(ref_a).max()
  np.testing.assert_allclose(z["diag"], ref_d, atol=2e-5 * scale_d)
  np.testing.assert_allclose(z["aff"], ref_a, atol=2e-5 * scale_a)
  np.testing.assert_allclose(z["diag"], z["diag_unsharded"], atol=2e-6 * scale_d)
  np.testing.assert_allclose(z["aff"], z["aff_unsharded"], atol=2e-6 * scale_a)


def test_newton_solve_with_the_time_axis_sharded_equals_the_sequential_recurrence(runs):
  z = np.load(os.path.join(runs["out"], "newton.npz"))
  W, U, xs, h = (z[k].astype(np.float64) for k in ("W", "U", "xs", "h0"))
  ref = []
  for x in xs:
    h = np.tanh(W @ h + U @ x)
    ref.append(h)
  np.testing.assert_allclose(z["h"], np.array(ref), atol=1e-5)


def test_report_timings(runs):
  """Not a check: prints the per-step times for the closing note (-s to see)."""
  steps = {name: _load(runs, name)[1]["step_seconds"]
           for name in ("two_timing", "timing_4dev", "timing_1dev")}
  print(f"\nmulti-process suite {runs['total_s']:.1f} s; kill -> exit "
        f"{runs['kill_to_exit_s']:.1f} s; per-step seconds {steps}")
  assert all(np.isfinite(v) and v > 0 for v in steps.values())


# --- cheap checks in this process --------------------------------------------

def test_launcher_stops_the_others_when_one_fails(tmp_path):
  """Process 1 exits with 3; process 0 ignores SIGTERM (as JAX's preemption
  handler may) and sleeps: the launcher kills it after the grace period and
  returns 3, in bounded time."""
  script = tmp_path / "s.py"
  script.write_text(
      "import os, signal, sys, time\n"
      "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
      "print('hello from', os.environ['RNNJAX_PROCESS_ID'], os.environ['RNNJAX_NUM_PROCESSES'],"
      " os.environ['RNNJAX_COORDINATOR'].split(':')[0], flush=True)\n"
      "if os.environ['RNNJAX_PROCESS_ID'] == '1': sys.exit(3)\n"
      "time.sleep(120)\n")
  t0 = time.monotonic()
  r = subprocess.run([sys.executable, "-m", "rnnjax.launch", "-n", "2", "--grace", "1",
                      str(script)], env=_env(), capture_output=True, text=True, timeout=60,
                     cwd=ROOT)
  assert r.returncode == 3, r.stderr
  assert time.monotonic() - t0 < 30
  assert "[0] hello from 0 2 127.0.0.1" in r.stdout and "[1] hello from 1 2 127.0.0.1" in r.stdout
  assert "process 1 exited with status 3" in r.stderr


def test_launcher_timeout_and_arguments(tmp_path):
  from rnnjax import launch
  script = tmp_path / "s.py"
  script.write_text("import time\ntime.sleep(120)\n")
  t0 = time.monotonic()
  assert launch.launch([sys.executable, str(script)], processes=2, timeout=1, env=_env()) == 124
  assert time.monotonic() - t0 < 30
  with pytest.raises(ValueError, match="processes"):
    launch.launch([sys.executable, str(script)], processes=0)
  with pytest.raises(ValueError, match="devices_per_process"):
    launch.launch([sys.executable, str(script)], processes=1, devices_per_process=0)
  assert launch.initialize() is False  # not started by the launcher: a no-op


def test_process_slice_partitions_the_global_batch():
  from rnnjax.train._distributed import process_slice
  x = {"x": np.arange(24).reshape(12, 2), "y": np.arange(12)}
  parts = [process_slice(x, process_index=p, process_count=3) for p in range(3)]
  np.testing.assert_array_equal(np.concatenate([q["x"] for q in parts]), x["x"])
  np.testing.assert_array_equal(parts[1]["y"], [4, 5, 6, 7])
  with pytest.raises(ValueError, match="divisible by the process count 5"):
    process_slice(x, process_index=0, process_count=5)


def test_linear_scans_on_one_device_match_a_loop():
  import jax
  from jax.sharding import Mesh
  from rnnjax._time_sharding import linear_scan, sharded_linear_scan
  rng = np.random.default_rng(1)
  T, D = 12, 3
  a = rng.uniform(0.5, 1.0, (T, D)).astype(np.float32)
  A = (rng.normal(size=(T, D, D)) * 0.5).astype(np.float32)
  b = rng.normal(size=(T, D)).astype(np.float32)
  h0 = rng.normal(size=D).astype(np.float32)
  hd, ha = h0.astype(np.float64), h0.astype(np.float64)
  for t in range(T):
    hd, ha = a[t] * hd + b[t], A[t] @ ha + b[t]
  mesh = Mesh(np.array(jax.devices()[:1]), ("time",))
  unsharded = jax.jit(linear_scan)
  np.testing.assert_allclose(np.asarray(unsharded(a, b, h0))[-1], hd, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(unsharded(A, b, h0))[-1], ha, rtol=1e-5, atol=1e-5)
  sharded = jax.jit(lambda a, b, h0: sharded_linear_scan(a, b, h0, mesh, "time"))
  np.testing.assert_allclose(np.asarray(sharded(a, b, h0))[-1], hd, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="axis_name 'x'"):
    sharded_linear_scan(a, b, h0, mesh, "x")
  with pytest.raises(ValueError, match="h0 must have shape"):
    linear_scan(a, b, h0[:2])
  with pytest.raises(ValueError, match="affine"):
    linear_scan(A[..., :2], b, h0)


def test_launcher_command_line(monkeypatch):
  from rnnjax import launch
  calls = []
  monkeypatch.setattr(launch, "launch", lambda cmd, **kw: calls.append((cmd[1:], kw)) or 0)
  assert launch.main(["-n", "2", "-d", "3", "train.py", "--steps", "100", "-m", "x"]) == 0
  assert launch.main(["--processes=3", "--timeout", "9", "-m", "pkg.mod", "-n", "1"]) == 0
  (c1, k1), (c2, k2) = calls
  assert c1 == ["train.py", "--steps", "100", "-m", "x"]
  assert (k1["processes"], k1["devices_per_process"]) == (2, 3)
  assert c2 == ["-m", "pkg.mod", "-n", "1"] and k2["processes"] == 3 and k2["timeout"] == 9
  with pytest.raises(SystemExit):
    launch.main(["-n", "0", "train.py"])
