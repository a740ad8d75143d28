"""rnnjax.train.fit across processes: SIGKILL + resume, and 4 fake CPU devices.

Both tests start a fresh Python (a JAX import and a compile each), so there
are only two of them.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import train

HERE = os.path.dirname(os.path.abspath(__file__))

# The run the child starts and the parent finishes (same objects -> same compiled step).
KILL_MODEL = rj.SequenceModel([rj.SimpleRNN(8)], rj.Dense(1))
KILL_TX = train.optimizer("adam", 1e-2, clip_norm=1.0)


def kill_data(i):
  return train.adding_problem(16, length=12, seed=(9, i))


def kill_fit(directory, steps, **kw):
  params = KILL_MODEL.init(jax.random.key(0), input_size=2)
  if directory is not None:
    kw.update(checkpoint_dir=directory, checkpoint_every=1, keep=3, resume=True)
  return train.fit(KILL_MODEL, params, kill_data, loss="mse", optimizer=KILL_TX, steps=steps, **kw)


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.update(extra)
  return env


def _committed_steps(directory):
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def test_sigkill_mid_run_loses_only_the_steps_since_the_last_checkpoint(tmp_path):
  ckpt, jsonl = str(tmp_path / "ckpt"), str(tmp_path / "log.jsonl")
  # A checkpoint after every step: the child spends most of its time inside orbax
  # saves, so the kill very likely lands in the middle of one.
  child = subprocess.Popen(
      [sys.executable, "-c", "import test_train_subprocess as t, sys; "
       f"t.kill_fit({ckpt!r}, 100000, jsonl={jsonl!r})"],
      env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and (not _committed_steps(ckpt) or _committed_steps(ckpt)[-1] < 3):
      assert child.poll() is None, child.stderr.read().decode()[-3000:]
      time.sleep(0.05)
    assert _committed_steps(ckpt), "the child never wrote a checkpoint"
    time.sleep(0.137)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
  finally:
    if child.poll() is None:
      child.kill()
    child.stderr.close()
  assert child.returncode == -signal.SIGKILL
  last = _committed_steps(ckpt)[-1]
  assert last >= 3
  n = last + 5
  with pytest.warns(RuntimeWarning, match="removing the stale lock"):  # the killed child's lock
    resumed = kill_fit(ckpt, n, jsonl=jsonl)
  # The restored part is exactly the child's history up to its last checkpoint,
  # and the whole run equals an uninterrupted one, bit for bit.
  fresh = kill_fit(None, n)
  assert len(resumed.history) == n
  assert resumed.history == fresh.history
  for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(fresh.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = [json.loads(l) for l in pathlib.Path(jsonl).read_text().splitlines()]
  assert [h["step"] for h in lines] == list(range(1, n + 1))  # no step written twice
  assert _committed_steps(ckpt) == [n - 2, n - 1, n]  # keep=3
  assert not [d for d in os.listdir(ckpt) if "tmp" in d]  # leftovers of the kill are gone
  assert not os.path.exists(os.path.join(ckpt, ".rnnjax-lock"))  # released at the end


_SHARDED = textwrap.dedent("""
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, numpy as np
    import rnnjax as rj
    from rnnjax import train
    assert jax.device_count() == 4, jax.devices()
    model = rj.SequenceModel([rj.SimpleRNN(16, "relu")], rj.Dense(1, "sigmoid"))
    params = model.init(jax.random.key(0), input_size=4)
    tx = train.optimizer("adam", 1e-2, clip_norm=1.0)
    data = lambda i: train.sequence_classification(16, length=12, features=4, seed=(2, i))
    test = train.sequence_classification(64, length=12, features=4, seed=99)
    out = {}
    for name, devices in (("four", None), ("one", jax.devices()[:1])):
      res = train.fit(model, params, data, loss="binary_cross_entropy", optimizer=tx, steps=12,
                      eval_data=test, eval_every=4, devices=devices)
      w = res.params["layers"][0]["w_h"]
      out[name] = {"loss": res.metric("loss").tolist(), "grad_norm": res.metric("grad_norm").tolist(),
                   "eval_loss": [h["eval_loss"] for h in res.history if "eval_loss" in h],
                   "devices": len(w.sharding.device_set), "replicated": w.sharding.is_fully_replicated,
                   "w_h": np.asarray(w).tolist()}
    try:
      train.fit(model, params, lambda i: train.sequence_classification(6, seed=i),
                loss="binary_cross_entropy", optimizer=tx, steps=1)
    except ValueError as e:
      out["error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def test_four_device_data_parallel_run_equals_single_device():
  env = _env()
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  four, one = out["four"], out["one"]
  assert four["devices"] == 4 and four["replicated"] and one["devices"] == 1
  np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(four["grad_norm"], one["grad_norm"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(four["eval_loss"], one["eval_loss"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(four["w_h"], one["w_h"], rtol=1e-4, atol=1e-5)
  assert one["loss"][-1] < 0.7 * one["loss"][0]  # it trains (from ~ln 2)
  assert "batch size 6" in out["error"] and "not divisible by the number of devices (4)" in out["error"]
