"""Start N local JAX processes that form one multi-process job (testing and development).

Usage::

  python -m rnnjax.launch --processes 2 --devices-per-process 2 train.py --steps 100

starts ``train.py --steps 100`` twice, as processes 0 and 1 of one JAX job
whose coordinator listens on a free port of the loopback address
(``127.0.0.1``), each process with ``--devices-per-process`` CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=K``) -- so the job sees
``jax.device_count() == N * K`` devices, ``jax.process_count() == N``, and
the cross-process collectives run on the CPU through gloo. This is JAX's own
multi-controller runtime (one Python process per host, a global device mesh),
exactly as on a cluster, only with every "host" on this machine.

The script calls :func:`initialize` before any other JAX call::

  import rnnjax.launch
  rnnjax.launch.initialize()      # no-op when not started by the launcher

which reads the environment the launcher sets (``RNNJAX_COORDINATOR``,
``RNNJAX_NUM_PROCESSES``, ``RNNJAX_PROCESS_ID`` and the timeouts), selects
the gloo CPU collectives and calls ``jax.distributed.initialize``. A script
may instead call ``jax.distributed.initialize`` itself with those values.

Failures propagate: when a process exits with a non-zero status (or is
killed), the launcher waits ``--grace`` seconds for the others to notice on
their own (the JAX coordination service stops every process once a peer stops
sending heartbeats, after ``--heartbeat-timeout`` seconds), then terminates
them (SIGTERM, and SIGKILL after 5 s more -- JAX's preemption handler may
swallow SIGTERM), and exits with the first failing status. A ``--timeout``
bounds the whole job. Each line a process prints is prefixed with ``[i]``
unless ``--no-prefix``.

On a real cluster no launcher is needed: see the README section "More than one
machine" (SLURM, Kubernetes, Cloud TPU, where ``jax.distributed.initialize()``
discovers the cluster itself).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

ENV_COORDINATOR = "RNNJAX_COORDINATOR"
ENV_NUM_PROCESSES = "RNNJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "RNNJAX_PROCESS_ID"
ENV_HEARTBEAT = "RNNJAX_HEARTBEAT_TIMEOUT"
ENV_INIT_TIMEOUT = "RNNJAX_INIT_TIMEOUT"


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port that is free on ``host`` now (the OS picks it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def initialize(*, heartbeat_timeout: Optional[int] = None,
               initialization_timeout: Optional[int] = None) -> bool:
  """Joins the job the launcher started; returns whether this is a multi-process run.

  Reads ``RNNJAX_COORDINATOR`` / ``RNNJAX_NUM_PROCESSES`` / ``RNNJAX_PROCESS_ID``
  (set by ``python -m rnnjax.launch``); without them it does nothing and
  returns False, so the same script also runs as a single process. With them
  it selects the gloo CPU collectives (when the CPU is the platform) and calls
  ``jax.distributed.initialize(coordinator, num_processes, process_id, ...)``.
  Call it before any other JAX computation.

  Args:
    heartbeat_timeout: seconds without heartbeats after which the job is
      stopped (default: ``RNNJAX_HEARTBEAT_TIMEOUT`` or 10).
    initialization_timeout: seconds to wait for all processes to join
      (default: ``RNNJAX_INIT_TIMEOUT`` or 120).
  """
  coordinator = os.environ.get(ENV_COORDINATOR)
  if not coordinator:
    return False
  import jax
  try:
    num_processes = int(os.environ[ENV_NUM_PROCESSES])
    process_id = int(os.environ[ENV_PROCESS_ID])
  except (KeyError, ValueError) as e:
    raise ValueError(f"{ENV_COORDINATOR} is set but {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID} are "
                     f"missing or not integers: {e}") from e
  if heartbeat_timeout is None:
    heartbeat_timeout = int(os.environ.get(ENV_HEARTBEAT, "10"))
  if initialization_timeout is None:
    initialization_timeout = int(os.environ.get(ENV_INIT_TIMEOUT, "120"))
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms in ("", "cpu") or platforms.startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout,
                             shutdown_timeout_seconds=max(5, heartbeat_timeout))
  return True


def _pump(stream, out, prefix):
  for line in iter(stream.readline, b""):
    out.write(prefix + line.decode(errors="replace") if prefix else line.decode(errors="replace"))
    out.flush()
  stream.close()


def _stop(procs, grace_kill=5.0):
  alive = [p for p in procs if p.poll() is None]
  if alive:
    sys.stderr.write(f"rnnjax.launch: terminating {len(alive)} process(es) still running.\n")
  for p in alive:
    try:
      os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
      pass
  deadline = time.monotonic() + grace_kill
  for p in alive:
    try:
      p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      pass
  for p in alive:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def launch(command: Sequence[str], *, processes: int, devices_per_process: Optional[int] = 1,
           timeout: Optional[float] = None, grace: float = 15.0, heartbeat_timeout: int = 10,
           prefix: bool = True, env: Optional[dict] = None, port: Optional[int] = None) -> int:
  """Runs ``command`` as ``processes`` processes of one JAX job; returns the exit status.

  0 when every process exits with 0; otherwise the first non-zero status
  (a process killed by signal s counts as 128 + s; a job past ``timeout``
  as 124). See the module docstring for the environment and the failure
  handling.

  Args:
    command: argv of one process, e.g. ``[sys.executable, "train.py"]``.
    processes: number of processes (>= 1).
    devices_per_process: CPU devices per process (sets ``XLA_FLAGS``); None
      leaves ``XLA_FLAGS`` and ``JAX_PLATFORMS`` as they are (e.g. one GPU
      per process, chosen by the script).
    timeout: seconds after which the whole job is stopped (None: no limit).
    grace: seconds the surviving processes get to stop on their own after
      one failed, before they are terminated.
    heartbeat_timeout: passed to ``jax.distributed.initialize`` by
      :func:`initialize`.
    prefix: prefix every output line with ``[process id]``.
    env: base environment (default ``os.environ``).
    port: coordinator port (default: a free one).
  """
  if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
    raise ValueError(f"processes must be a positive int, got {processes!r}.")
  if devices_per_process is not None and (
      not isinstance(devices_per_process, int) or devices_per_process < 1):
    raise ValueError(f"devices_per_process must be a positive int or None, got "
                     f"{devices_per_process!r}.")
  if not command:
    raise ValueError("command must be a non-empty argv list.")
  base = dict(os.environ if env is None else env)
  coordinator = f"127.0.0.1:{free_port() if port is None else int(port)}"
  procs, pumps = [], []
  try:
    for i in range(processes):
      e = dict(base)
      e.update({ENV_COORDINATOR: coordinator, ENV_NUM_PROCESSES: str(processes),
                ENV_PROCESS_ID: str(i), ENV_HEARTBEAT: str(int(heartbeat_timeout)),
                "PYTHONUNBUFFERED": "1"})
      if devices_per_process is not None:
        flags = [f for f in e.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        e["XLA_FLAGS"] = " ".join(flags + [
            f"--xla_force_host_platform_device_count={devices_per_process}"])
        e["JAX_PLATFORMS"] = "cpu"
      p = subprocess.Popen(list(command), env=e, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, start_new_session=True)
      procs.append(p)
      t = threading.Thread(target=_pump, args=(p.stdout, sys.stdout, f"[{i}] " if prefix else ""),
                           daemon=True)
      t.start()
      pumps.append(t)
    t0 = time.monotonic()
    first_fail, fail_time = None, None
    while True:
      codes = [p.poll() for p in procs]
      if all(c is not None for c in codes):
        break
      for i, c in enumerate(codes):
        if c not in (None, 0) and first_fail is None:
          first_fail, fail_time = (i, c), time.monotonic()
          sys.stderr.write(f"rnnjax.launch: process {i} exited with status {_describe(c)}; "
                           f"stopping the others within {grace:g} s.\n")
      now = time.monotonic()
      if first_fail is not None and now - fail_time > grace:
        _stop(procs)
        break
      if timeout is not None and now - t0 > timeout:
        sys.stderr.write(f"rnnjax.launch: the job ran past --timeout {timeout:g} s; stopping it.\n")
        _stop(procs)
        for t in pumps:
          t.join(timeout=2)
        return 124
      time.sleep(0.05)
  except BaseException:
    _stop(procs)
    raise
  for t in pumps:
    t.join(timeout=2)
  if first_fail is None:
    for i, p in enumerate(procs):
      if p.returncode != 0:
        first_fail = (i, p.returncode)
        break
  if first_fail is None:
    return 0
  c = first_fail[1]
  return 128 - c if c < 0 else c


def _describe(code):
  if code < 0:
    try:
      return f"{code} (killed by {signal.Signals(-code).name})"
    except ValueError:
      return str(code)
  return str(code)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rnnjax.launch",
      description="Run a script as N local processes of one JAX job (loopback coordinator, "
                  "K CPU devices each). The script calls rnnjax.launch.initialize() first.")
  parser.add_argument("--processes", "-n", type=int, required=True, help="number of processes")
  parser.add_argument("--devices-per-process", "-d", type=int, default=1,
                      help="CPU devices per process (XLA_FLAGS); 0 leaves XLA_FLAGS alone")
  parser.add_argument("--timeout", type=float, default=None, help="stop the job after this many s")
  parser.add_argument("--grace", type=float, default=15.0,
                      help="s the others get to stop on their own after a process fails")
  parser.add_argument("--heartbeat-timeout", type=int, default=10,
                      help="jax.distributed heartbeat timeout in s")
  parser.add_argument("--no-prefix", action="store_true", help="do not prefix output lines")
  parser.add_argument("-m", dest="module", default=None,
                      help="run a module (python -m MODULE) instead of a script")
  parser.add_argument("script", nargs="?", help="the Python script to run")
  parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")
  argv = list(sys.argv[1:] if argv is None else argv)
  module_args = []
  k, with_value = 0, {"-n", "--processes", "-d", "--devices-per-process", "--timeout", "--grace",
                      "--heartbeat-timeout"}
  while k < len(argv) and argv[k].startswith("-"):  # the launcher's own options
    if argv[k] == "-m":  # everything after "-m MODULE" belongs to the module
      argv, module_args = argv[:k + 2], argv[k + 2:]
      break
    k += 2 if argv[k] in with_value else 1
  a = parser.parse_args(argv)
  if a.module is not None:
    a.args = module_args
  if a.processes < 1:
    parser.error("--processes must be >= 1")
  if a.devices_per_process < 0:
    parser.error("--devices-per-process must be >= 0")
  if a.module is not None:
    command = [sys.executable, "-m", a.module] + ([a.script] if a.script else []) + a.args
  elif a.script:
    command = [sys.executable, a.script] + a.args
  else:
    parser.error("give a script (or -m MODULE)")
  return launch(command, processes=a.processes,
                devices_per_process=a.devices_per_process or None, timeout=a.timeout,
                grace=a.grace, heartbeat_timeout=a.heartbeat_timeout, prefix=not a.no_prefix)


if __name__ == "__main__":
  sys.exit(main())
