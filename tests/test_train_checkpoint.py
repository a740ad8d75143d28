"""Checkpoints: corruption detected and skipped, garbage never read, the folder locked,
kills during a save and during the deletion of an old checkpoint (real subprocesses).

One reference run (checkpoints at 2 and 4) is made once and copied for each
corruption; every resume is compared with it bit for bit.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import train
from rnnjax.train._checkpoint import Checkpointer, CorruptCheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))

# Shared by the parent and the children (same objects -> one compiled step).
MODEL = rj.SequenceModel([rj.SimpleRNN(8)], rj.Dense(1))


def data(i):
  return train.adding_problem(8, length=6, seed=(4, i))


def run(directory, steps, **kw):
  params = MODEL.init(jax.random.key(0), input_size=2)
  if directory is not None:
    kw.setdefault("checkpoint_every", 2)
    kw.update(checkpoint_dir=directory)
  return train.fit(MODEL, params, data, loss="mse", optimizer=train.optimizer("adam", 1e-2),
                   steps=steps, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  d = tmp_path_factory.mktemp("ref")
  res = run(d / "ckpt", 4)
  return d / "ckpt", res


def _same(a, b):
  assert a.history == b.history
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _largest_array_file(step_dir):
  """The largest data file of the OCDBT store (the arrays, zstd-compressed chunks): after a
  save orbax merges the per-process stores into ``state/d``, the files that are read."""
  d = os.path.join(step_dir, "state", "d")
  return max((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize)


def _read(path, mode="rb"):
  with open(path, mode) as f:
    return f.read()


def _write(path, data, mode="wb"):
  with open(path, mode) as f:
    f.write(data)


def _truncate(step_dir):
  f = _largest_array_file(step_dir)
  with open(f, "r+b") as fh:
    fh.truncate(os.path.getsize(f) // 2)


def _flip(step_dir):
  f = _largest_array_file(step_dir)
  raw = bytearray(_read(f))
  for k in range(len(raw) // 3, len(raw) // 3 + 4):
    raw[k] ^= 0xFF
  _write(f, bytes(raw))


def _random_bytes(step_dir):
  f = _largest_array_file(step_dir)
  _write(f, np.random.default_rng(0).bytes(os.path.getsize(f)))


def _empty_metadata(step_dir):
  _write(os.path.join(step_dir, "meta", "metadata"), b"")


def _edit_metadata(step_dir):
  # Valid JSON, one number changed: only the metadata's own checksum sees it.
  p = os.path.join(step_dir, "meta", "metadata")
  meta = json.loads(_read(p, "r"))
  meta["history"][0]["loss"] += 1.0
  _write(p, json.dumps(meta), "w")


def _bad_array_checksum(step_dir):
  # Arrays readable but not what was saved (simulated by a stored checksum that
  # disagrees, with the metadata checksum recomputed): the array check sees it.
  from rnnjax.train._checkpoint import _json_sha
  p = os.path.join(step_dir, "meta", "metadata")
  meta = json.loads(_read(p, "r"))
  k = next(iter(meta["checksums"]))
  meta["checksums"][k] = "0" * 64
  meta["sha256"] = _json_sha(meta)
  _write(p, json.dumps(meta), "w")


CORRUPTIONS = {"truncated array file": _truncate, "flipped bytes": _flip,
               "random bytes in an array file": _random_bytes, "emptied metadata": _empty_metadata,
               "edited metadata": _edit_metadata, "array checksum mismatch": _bad_array_checksum}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_latest_checkpoint_is_detected_and_resume_falls_back(reference, tmp_path, kind):
  ref_dir, ref = reference
  d = tmp_path / "ckpt"
  shutil.copytree(ref_dir, d)
  CORRUPTIONS[kind](str(d / "4"))
  with pytest.warns(RuntimeWarning, match=r"ckpt/4' is (unreadable|corrupt).*Resuming from the "
                                          r"intact checkpoint '.*ckpt/2'"):
    resumed = run(d, 4, resume=True)
  _same(resumed, ref)  # steps 3, 4 recomputed from the checkpoint of 2
  names = os.listdir(d)
  assert sorted(n for n in names if n.isdigit()) == ["2", "4"]  # 4 rewritten, intact
  assert [n for n in names if n.startswith(".rnnjax-corrupt-4-")]  # the bad one kept aside


def test_no_intact_checkpoint_is_a_clear_error(reference, tmp_path):
  ref_dir, _ = reference
  d = tmp_path / "ckpt"
  shutil.copytree(ref_dir, d)
  _random_bytes(str(d / "4"))
  _empty_metadata(str(d / "2"))
  with pytest.raises(CorruptCheckpointError, match=r"no intact checkpoint in '.*ckpt': "
                                                   r"checkpoint '.*ckpt/4' is .*ckpt/2' is unreadable"):
    run(d, 6, resume=True)
  assert sorted(n for n in os.listdir(d) if n.isdigit()) == ["2", "4"]  # nothing moved or deleted


def test_garbage_is_removed_and_foreign_files_are_never_touched(reference, tmp_path):
  ref_dir, ref = reference
  d = tmp_path / "ckpt"
  shutil.copytree(ref_dir, d)
  (d / ".rnnjax-tmp-6-123" / "state").mkdir(parents=True)  # a killed save
  (d / ".rnnjax-deleting-0-123" / "meta").mkdir(parents=True)  # a killed deletion
  (d / "7").mkdir()  # not ours: a numbered folder without our marker
  (d / "7" / "notes.txt").write_text("mine")
  (d / "README").write_text("mine too")
  res = run(d, 10, resume=True, keep=1)
  assert res.history[:4] == ref.history
  names = sorted(os.listdir(d))
  assert names == ["10", "7", "README"]  # 2, 4, 6, 8 rotated out (keep=1); garbage gone
  assert (d / "7" / "notes.txt").read_text() == "mine"
  ck = Checkpointer(d)
  try:
    assert ck.all_steps() == [10]
  finally:
    ck.close()


def test_lock_names_the_live_owner_and_stale_locks_are_taken_over(tmp_path):
  d = tmp_path / "ckpt"
  d.mkdir()
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (d / ".rnnjax-lock").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
    with pytest.raises(ValueError, match=rf"'.*ckpt' is in use by another run \(process {live.pid}"):
      Checkpointer(d)
  finally:
    live.kill()
    live.wait()
  with pytest.warns(RuntimeWarning, match=rf"removing the stale lock of process {live.pid}"):
    ck = Checkpointer(d)
  assert json.loads((d / ".rnnjax-lock").read_text())["pid"] == os.getpid()
  ck.close()
  assert not (d / ".rnnjax-lock").exists()


# ----------------------------------------------------------------------------- kills

_CHILD = """
import os, sys, time, shutil
sys.path.insert(0, {here!r})
import test_train_checkpoint as t
from rnnjax.train import _checkpoint as C
mode, directory, marker = sys.argv[1], sys.argv[2], sys.argv[3]

def hang():
  open(marker, "w").close()
  time.sleep(120)

if mode == "save":  # hang after half of the metadata of step 3 is written
  real = C._write_file
  def write_file(path, data):
    if os.path.basename(os.path.dirname(os.path.dirname(path))).startswith(".rnnjax-tmp-3-"):
      with open(path, "wb") as f:
        f.write(data[:len(data) // 2]); f.flush(); os.fsync(f.fileno())
      hang()
    return real(path, data)
  C._write_file = write_file
else:  # hang after deleting part of an old checkpoint
  real = shutil.rmtree
  def rmtree(path, *a, **k):
    if ".rnnjax-deleting-" in os.fspath(path):
      state = os.path.join(path, "state")
      for root, _, files in os.walk(state):
        for f in files[: max(1, len(files) // 2)]:
          os.remove(os.path.join(root, f))
      hang()
    return real(path, *a, **k)
  C.shutil.rmtree = rmtree
t.run(directory, 100, checkpoint_every=1, keep=2, resume=True)
"""


# Not marked slow: CI kills a save and a deletion for real.
@pytest.mark.parametrize("mode", ["save", "delete"])
def test_sigkill_during_a_save_or_a_deletion_then_resume(tmp_path, mode):
  d, marker = str(tmp_path / "ckpt"), str(tmp_path / "hanging")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  child = subprocess.Popen([sys.executable, "-c", _CHILD.format(here=HERE), mode, d, marker],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 180
    while not os.path.exists(marker):
      assert child.poll() is None, child.stderr.read().decode()[-3000:]
      assert time.time() < deadline, "the child never reached the save / deletion"
      time.sleep(0.05)
    # A second run on the folder fails at once, naming the live owner.
    t0 = time.time()
    with pytest.raises(ValueError, match=rf"is in use by another run \(process {child.pid}"):
      run(d, 5, resume=True)
    assert time.time() - t0 < 30
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
    child.stderr.close()
  assert child.returncode == -signal.SIGKILL
  names = os.listdir(d)
  if mode == "save":  # killed while committing step 3: 1, 2 complete, a temporary folder
    assert sorted(n for n in names if n.isdigit()) == ["1", "2"]
    assert [n for n in names if n.startswith(".rnnjax-tmp-3-")]
  else:  # killed while deleting step 1 (after committing 3): a half-deleted hidden folder
    assert sorted(n for n in names if n.isdigit()) == ["2", "3"]
    assert [n for n in names if n.startswith(".rnnjax-deleting-1-")]
  with pytest.warns(RuntimeWarning, match="stale lock"):
    resumed = run(d, 5, checkpoint_every=1, keep=2, resume=True)
  _same(resumed, run(None, 5))
  assert sorted(os.listdir(d)) == ["4", "5"]  # garbage and lock gone
