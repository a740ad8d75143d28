"""Worker of tests/test_distributed.py: one role per run, results to OUTDIR as .npz / .json.

  python tests/_dist_worker.py ROLE OUTDIR            (single process)
  python -m rnnjax.launch -n 2 -d 2 tests/_dist_worker.py ROLE OUTDIR

Roles (the test runs them in this order; later ones read earlier ones' folders):
  kill  -- fit for very many steps with a checkpoint every step (the test
           SIGKILLs process 1 once a few checkpoints are committed);
  one4  -- 1 process x 4 devices: fit N steps (checkpoints in OUTDIR/ckpt1),
           then the time-sharded scans against unsharded ones;
  two   -- 2 processes x 2 devices: fit N (checkpoints in OUTDIR/ckptA), resume
           to N+2, an uninterrupted N+2, restore the 1-process checkpoint and
           continue, resume the killed run;
  one1  -- 1 process x 1 device: fit N, restore the 2-process checkpoint and continue.
"""
import json
import os
import shutil
import sys
import time

import rnnjax.launch

rnnjax.launch.initialize(heartbeat_timeout=3)

import jax  # noqa: E402
import numpy as np  # noqa: E402

import rnnjax as rj  # noqa: E402
from rnnjax import train  # noqa: E402
from rnnjax.train import process_slice  # noqa: E402
from rnnjax.train._distributed import is_primary  # noqa: E402

N = 4           # steps of the compared runs
BATCH = 16      # global batch (divisible by 4 devices)
MODEL = rj.SequenceModel([rj.SimpleRNN(8)], rj.Dense(1))
TX = train.optimizer("adam", 1e-2, clip_norm=1.0)


def data(i):
  return process_slice(train.adding_problem(BATCH, length=10, seed=(3, i)))


def run(steps, **kw):
  params = MODEL.init(jax.random.key(0), input_size=2)
  return train.fit(MODEL, params, data, loss="mse", optimizer=TX, steps=steps, progress=False, **kw)


def host(tree):
  """Params as a flat dict of NumPy arrays (replicated arrays are readable on every process)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def dump(outdir, name, res):
  if not is_primary():
    return
  np.savez(os.path.join(outdir, name + ".npz"), **host(res.params))
  with open(os.path.join(outdir, name + ".json"), "w") as f:
    json.dump({"history": res.history, "step": res.step, "step_seconds": res.step_seconds}, f)


def copy_ckpt(src, dst):
  """Copies a finished checkpoint folder (primary copies; everybody waits)."""
  if is_primary():
    shutil.copytree(src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("copy " + dst)


def role_kill(out):
  with open(os.path.join(out, f"pid{jax.process_index()}"), "w") as f:
    f.write(str(os.getpid()))
  run(100000, checkpoint_dir=os.path.join(out, "ckptK"), checkpoint_every=1, keep=3,
      resume=True)


def role_one4(out):
  assert jax.process_count() == 1 and jax.device_count() == 4, jax.devices()
  dump(out, "one4", run(N, checkpoint_dir=os.path.join(out, "ckpt1"), checkpoint_every=2,
                        keep=5))
  # Time-sharded scans on the 4 devices against the unsharded scan.
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  from rnnjax._time_sharding import linear_scan, sharded_linear_scan
  mesh = Mesh(np.array(jax.devices()), ("time",))
  sh = NamedSharding(mesh, P("time"))
  rng = np.random.default_rng(0)
  T, B, D = 64, 2, 3
  a = rng.uniform(0.6, 1.0, (T, B, D)).astype(np.float32)
  A = (rng.normal(size=(T, B, D, D)) * 0.45).astype(np.float32)
  b = rng.normal(size=(T, B, D)).astype(np.float32)
  h0 = rng.normal(size=(B, D)).astype(np.float32)
  f = jax.jit(lambda a, b, h0: sharded_linear_scan(a, b, h0, mesh, "time"))
  out_diag = f(jax.device_put(a, sh), jax.device_put(b, sh), h0)
  out_aff = f(jax.device_put(A, sh), jax.device_put(b, sh), h0)
  from rnnjax._time_sharding import sharded_newton_scan
  W = (rng.normal(size=(D, D)) * 0.5 / np.sqrt(D)).astype(np.float32)
  U = rng.normal(size=(D, 2)).astype(np.float32)
  xs = rng.normal(size=(T, 2)).astype(np.float32)
  newton = jax.jit(lambda xs, h: sharded_newton_scan(
      lambda h, x: jax.numpy.tanh(W @ h + U @ x), h, xs, mesh, "time", iters=8))(
          jax.device_put(xs, sh), h0[0])
  np.savez(os.path.join(out, "newton.npz"), W=W, U=U, xs=xs, h0=h0[0], h=np.asarray(newton))
  dump(out, "timing_4dev", run(40))
  np.savez(os.path.join(out, "scan.npz"), a=a, A=A, b=b, h0=h0,
           diag=np.asarray(out_diag), aff=np.asarray(out_aff),
           diag_unsharded=np.asarray(linear_scan(a, b, h0)),
           aff_unsharded=np.asarray(linear_scan(A, b, h0)),
           shards=np.array([len(out_diag.sharding.device_set),
                            len(out_diag.addressable_shards[0].data)]))


def role_two(out, killed):
  assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
  jsonl = os.path.join(out, f"two_p{jax.process_index()}.jsonl")
  ck = os.path.join(out, "ckptA")
  dump(out, "two", run(N, checkpoint_dir=ck, checkpoint_every=2, keep=5, jsonl=jsonl))
  copy_ckpt(ck, os.path.join(out, "ckptA_for_one1"))
  dump(out, "two_resumed", run(N + 2, checkpoint_dir=ck, resume=True))
  dump(out, "two_straight", run(N + 2))
  # The checkpoint written by 1 process x 4 devices, restored here.
  c1 = os.path.join(out, "ckpt1_for_two")
  copy_ckpt(os.path.join(out, "ckpt1"), c1)
  dump(out, "two_from_one_restored", run(N, checkpoint_dir=c1, resume=True))
  dump(out, "two_from_one", run(N + 2, checkpoint_dir=c1, resume=True))
  # The killed run: resume from its latest complete checkpoint.
  k = os.path.join(killed, "ckptK")
  latest = max(int(d) for d in os.listdir(k) if d.isdigit())
  res = run(latest + 2, checkpoint_dir=k, resume=True)
  dump(out, "killed_resumed", res)
  dump(out, "killed_straight", run(latest + 2))
  if is_primary():
    with open(os.path.join(out, "killed_latest.json"), "w") as f:
      json.dump({"latest": latest}, f)
  # Per-step time of a longer run (no checkpoints), for the overhead comparison.
  dump(out, "two_timing", run(40))


def role_one1(out):
  assert jax.process_count() == 1 and jax.device_count() == 1, jax.devices()
  dump(out, "one1", run(N))
  c = os.path.join(out, "ckptA_for_one1")
  dump(out, "one1_from_two_restored", run(N, checkpoint_dir=c, resume=True))
  dump(out, "one1_from_two", run(N + 2, checkpoint_dir=c, resume=True))
  dump(out, "timing_1dev", run(40))


def role_timing1(out):
  dump(out, f"timing_{jax.device_count()}dev", run(40))


if __name__ == "__main__":
  role, outdir = sys.argv[1], sys.argv[2]
  t0 = time.perf_counter()
  if role == "kill":
    role_kill(outdir)
  elif role == "one4":
    role_one4(outdir)
  elif role == "two":
    role_two(outdir, sys.argv[3])
  elif role == "one1":
    role_one1(outdir)
  elif role == "timing1":
    role_timing1(outdir)
  else:
    raise SystemExit(f"unknown role {role!r}")
  print(f"role {role} process {jax.process_index()} done in {time.perf_counter() - t0:.1f} s",
        flush=True)
