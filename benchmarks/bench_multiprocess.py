"""Per-step time of ``rnnjax.train.fit`` across process layouts on this machine.

  python -m benchmarks.bench_multiprocess [--steps 60] [--batch 32] [--hidden 32]

Runs the same fit (LSTM(H) + Dense(1), adding problem, global batch B, T=20)
as 1 process x 1 device, 1 x 2, 1 x 4, 2 processes x 1 device and 2 x 2
(through ``python -m rnnjax.launch``, gloo CPU collectives over loopback), and
for 2 x 2 also with unbounded asynchronous dispatch (``--no-block``: the
default multi-process CPU loop waits for each step, see
``rnnjax.train._distributed.max_in_flight``). Prints one JSON line per layout:
``step_seconds`` is ``FitResult.step_seconds`` (after the compiling step), the
median over ``--repeats`` fits in the same process. Results: RESULTS.md,
"Multi-process overhead".
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys
import rnnjax.launch
rnnjax.launch.initialize()
import jax, numpy as np
import rnnjax as rj
from rnnjax import train
from rnnjax.train import _distributed
steps, batch, hidden, repeats, block = (int(a) for a in sys.argv[1:6])
if not block:
  _distributed.max_in_flight = lambda: 0
model = rj.SequenceModel([rj.LSTM(hidden)], rj.Dense(1))
tx = train.optimizer("adam", 1e-3)
data = lambda i: train.process_slice(train.adding_problem(batch, length=20, seed=(0, i)))
times = []
for r in range(repeats):
  params = model.init(jax.random.key(0), input_size=2)
  res = train.fit(model, params, data, loss="mse", optimizer=tx, steps=steps, progress=False)
  times.append(res.step_seconds)
if jax.process_index() == 0:
  print("RESULT " + json.dumps({"processes": jax.process_count(),
        "devices": jax.device_count(), "block": bool(block),
        "step_seconds": float(np.median(times)), "all": times}), flush=True)
"""


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--hidden", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args(argv)
  layouts = [(1, 1, 1), (1, 2, 1), (1, 4, 1), (2, 1, 1), (2, 2, 1), (2, 2, 0)]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  with tempfile.TemporaryDirectory() as tmp:
    child = os.path.join(tmp, "child.py")
    with open(child, "w") as f:
      f.write(CHILD)
    args = [str(v) for v in (a.steps, a.batch, a.hidden, a.repeats)]
    for n, d, block in layouts:
      cmd = [sys.executable, "-m", "rnnjax.launch", "-n", str(n), "-d", str(d),
             "--timeout", "600", child] + args + [str(block)]
      r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=660)
      lines = [line.split("RESULT ", 1)[1] for line in r.stdout.splitlines() if "RESULT " in line]
      if r.returncode or not lines:
        print(json.dumps({"processes": n, "devices": n * d, "error": r.stdout[-2000:]}))
        continue
      out = json.loads(lines[0])
      out.update(batch=a.batch, hidden=a.hidden, steps=a.steps)
      print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
