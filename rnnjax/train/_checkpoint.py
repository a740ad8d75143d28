"""Training checkpoints with orbax-checkpoint.

A checkpoint of step ``s`` is the folder ``<directory>/<s>`` with two items:

* ``state``: the train state pytree -- params, optimizer state, step, the RNG
  key (as raw ``jax.random.key_data``) and the skipped-step count -- written by
  ``orbax.checkpoint.args.StandardSave`` (tensorstore/OCDBT);
* ``meta``: JSON -- a format tag, the step, a description of every state leaf
  (path, shape, dtype) and the metric history up to ``s``.

Atomicity: orbax writes a checkpoint into a temporary folder and renames it to
``<s>`` only once every file is written and synced, so a process killed at any
moment (even by SIGKILL, mid-write) leaves either a complete checkpoint or a
temporary folder that :class:`Checkpointer` ignores (and removes on the next
save). Resuming therefore always finds a readable checkpoint, losing at most
the steps since it. ``keep`` is orbax's ``max_to_keep``.

Before restoring, the leaf description in ``meta`` is compared with the
current run's state; a difference (another model, another optimizer) raises a
``ValueError`` naming the checkpoint path and the first leaves that differ,
instead of an orbax shape error or, worse, silently wrong params.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import numpy as np

FORMAT = "rnnjax.train.checkpoint/1"


def describe(tree) -> list:
  """``[[path, shape, dtype], ...]`` for every leaf of ``tree`` (JSON-ready)."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out.append([jax.tree_util.keystr(path), list(np.shape(leaf)), str(np.dtype(leaf.dtype))])
  return out


def _diff(saved, current, limit=4):
  lines = []
  saved_map = {p: (s, d) for p, s, d in saved}
  cur_map = {p: (s, d) for p, s, d in current}
  for p, (s, d) in cur_map.items():
    if p not in saved_map:
      lines.append(f"{p} is missing from the checkpoint (current run: shape {tuple(s)} {d})")
    elif saved_map[p] != (s, d):
      ss, sd = saved_map[p]
      lines.append(f"{p} has shape {tuple(ss)} {sd} in the checkpoint, "
                   f"shape {tuple(s)} {d} in the current run")
  for p, (s, d) in saved_map.items():
    if p not in cur_map:
      lines.append(f"{p} (shape {tuple(s)} {d}) is in the checkpoint but not in the current run")
  # Params first: they say what changed (the optimizer state mirrors them).
  lines.sort(key=lambda line: not line.startswith("['params']"))
  more = len(lines) - limit
  return lines[:limit] + ([f"... and {more} more"] if more > 0 else [])


class Checkpointer:
  """Saves / restores train states in ``directory`` with an orbax CheckpointManager.

  Args:
    directory: the checkpoint folder (created if needed).
    keep: how many most recent checkpoints to keep.
    async_save: write in a background thread (orbax async checkpointing);
      training continues while the files are written.
  """

  def __init__(self, directory, *, keep: int = 3, async_save: bool = True):
    import orbax.checkpoint as ocp  # heavy import, only when checkpointing
    self._ocp = ocp
    self.directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise ValueError(f"checkpoint_dir {self.directory!r} exists and is not a folder.")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    try:
      self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                        item_names=("state", "meta"))
    except Exception as e:  # noqa: BLE001 - re-raised with the path
      raise ValueError(f"cannot open the checkpoint folder {self.directory!r}: "
                       f"{type(e).__name__}: {e}") from e

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self):
    return list(self._mgr.all_steps())

  def path(self, step) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, meta: dict) -> None:
    ocp = self._ocp
    meta = dict(meta, format=FORMAT, step=int(step), tree=describe(state))
    self._mgr.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def read_meta(self, step: int) -> dict:
    ocp = self._ocp
    path = self.path(step)
    try:
      meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"checkpoint {path!r} is unreadable (its 'meta' item could not be "
                       f"read: {type(e).__name__}: {e}).") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
      raise ValueError(f"checkpoint {path!r} is not an rnnjax.train checkpoint "
                       f"(format {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                       f"expected {FORMAT!r}).")
    return meta

  def restore(self, state_like, step: Optional[int] = None):
    """Returns ``(state, meta)`` of ``step`` (default: the latest).

    ``state_like`` is a state of the current run (arrays or
    ``jax.ShapeDtypeStruct`` s, with shardings) that fixes structure, shapes,
    dtypes and placement of the result.
    """
    ocp = self._ocp
    if step is None:
      step = self.latest_step()
      if step is None:
        raise ValueError(f"no checkpoint in {self.directory!r}.")
    path = self.path(step)
    meta = self.read_meta(step)
    diff = _diff(meta.get("tree", []), describe(state_like))
    if diff:
      raise ValueError(f"checkpoint {path!r} does not match the current run (another model, "
                       f"optimizer or dtype?): " + "; ".join(diff) + ".")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, state_like)
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:  # noqa: BLE001
      raise ValueError(f"checkpoint {path!r} is unreadable (its 'state' item could not be "
                       f"restored: {type(e).__name__}: {e}).") from e
    return out, meta

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()
