"""Multi-process helpers for :func:`rnnjax.train.fit` (JAX's multi-controller runtime).

In a multi-process job (``jax.distributed.initialize`` in every process, see
:mod:`rnnjax.launch`) every process runs the same ``fit`` call on its own
slice of the global batch; the train step is one SPMD program over the global
mesh, so params, optimizer state, the step counter, the skipped-step count and
every metric come out replicated -- identical on all processes by
construction. What is per process is the host side: only the primary process
(``jax.process_index() == 0``) prints, draws the progress bar and writes the
JSON lines; orbax writes the checkpoints collectively.
"""

from __future__ import annotations

import jax
import numpy as np

from rnnjax.train._callbacks import Callback


def is_primary() -> bool:
  """Whether this is process 0 (the one that prints and writes logs)."""
  return jax.process_index() == 0


def process_slice(batch, *, process_index=None, process_count=None):
  """This process's rows of a *global* batch (contiguous blocks on axis 0).

  For data functions that can produce the global batch cheaply (seeded
  generators): ``data=lambda i: process_slice(global_data(i))`` gives every
  process its share, and the job trains on exactly the batches a single
  process would. Process ``p`` of ``n`` gets rows ``[p*B/n, (p+1)*B/n)``,
  the rows that :func:`jax.make_array_from_process_local_data` puts on its
  devices for the mesh over ``jax.devices()``.

  Raises:
    ValueError: a leaf whose batch size is not divisible by the process count.
  """
  p = jax.process_index() if process_index is None else int(process_index)
  n = jax.process_count() if process_count is None else int(process_count)
  if n == 1:
    return batch

  def take(a):
    a = np.asarray(a)
    if a.ndim == 0 or a.shape[0] % n:
      raise ValueError(f"batch leaves need a batch axis divisible by the process count {n}, "
                       f"got shape {a.shape}.")
    k = a.shape[0] // n
    return a[p * k:(p + 1) * k]

  return jax.tree_util.tree_map(take, batch)


def process_rows_contiguous(mesh_devices) -> bool:
  """Whether each process's devices form one contiguous block of ``mesh_devices``
  in process order (then :func:`process_slice` matches the global layout)."""
  procs = [d.process_index for d in mesh_devices]
  return procs == sorted(procs)


def agree(value, name: str) -> None:
  """Raises RuntimeError unless every process holds the same host ``value``
  (an int or a small array), e.g. the step a resumed run starts from."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  mine = np.asarray(value)
  every = np.asarray(multihost_utils.process_allgather(mine))
  if not all(np.array_equal(every[i], mine) for i in range(every.shape[0])):
    raise RuntimeError(f"the processes disagree on {name}: {every.tolist()} "
                       f"(process {jax.process_index()} has {mine.tolist()}).")


def global_mean(x) -> np.ndarray:
  """Mean over processes of a per-process host value (e.g. a wall time)."""
  x = np.asarray(x, dtype=np.float64)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x)).mean(axis=0)


def max_in_flight() -> int:
  """How many train steps may be dispatched before waiting for the oldest.

  Unbounded (0) except in multi-process CPU runs, where the gloo collectives
  of many programs in flight at once were seen to deadlock; there each step
  completes before the next is dispatched (1).
  """
  if jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
    return 1
  return 0


def barrier(name: str) -> None:
  """Waits until every process reached the barrier ``name`` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def from_primary(value):
  """Process 0's host ``value`` (a scalar or array), on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(value)))


class MultiProcess(Callback):
  """The loop hook of a multi-process run (added by ``fit`` when ``jax.process_count() > 1``).

  At the start, checks that every process starts from the same step (the
  same checkpoint); after each update, waits for it when
  :func:`max_in_flight` says so.
  """

  def __init__(self):
    self.in_flight = max_in_flight()

  def on_fit_start(self, loop):
    agree(int(loop.start), "the step to start from (did every process see the same checkpoint?)")

  def on_step(self, loop, n, batch, metrics):
    if self.in_flight:
      jax.block_until_ready(metrics)
    return metrics
