"""Training checkpoints: orbax arrays, checksums, atomic commits, a lock.

A checkpoint of step ``s`` is the folder ``<directory>/<s>`` with:

* ``state/``: the train state pytree -- params, optimizer state, step, the RNG
  key (as raw ``jax.random.key_data``) and the skipped-step count -- written by
  orbax-checkpoint (``StandardCheckpointHandler``, tensorstore/OCDBT);
* ``meta/metadata``: JSON -- a format tag, the step, a description of every
  state leaf (path, shape, dtype), the SHA-256 of every state array, the
  metric history up to ``s``, anything else the loop stores (learning-rate
  scale, callback states), and the SHA-256 of this JSON itself;
* ``rnnjax_checkpoint``: a marker naming the format (what makes a numbered
  folder one of ours).

Atomicity. A checkpoint is written into ``<directory>/.rnnjax-tmp-<s>-<pid>``
and renamed to ``<s>`` only once every file is written and synced; an old
checkpoint is deleted by first renaming it to
``<directory>/.rnnjax-deleting-<s>-<pid>`` and then removing that folder. So a
process killed at any moment (SIGKILL included, mid-save or mid-deletion)
leaves complete checkpoints plus at most one temporary or half-deleted
*hidden* folder, which is garbage: it is never read as a checkpoint and is
removed when the folder is next opened (under the lock).

Integrity. Restoring recomputes the SHA-256 of every restored array and of
the metadata and compares them with the stored ones. A truncated file, flipped
bytes, random bytes in an array file, or emptied / garbled metadata raise
:class:`CorruptCheckpointError` (a ``ValueError``) naming the path, never
silently wrong params. :meth:`Checkpointer.restore_latest_intact` (what
``fit(..., resume=True)`` uses) then falls back to the newest intact
checkpoint with a warning naming the corrupt ones (which are moved aside to
``.rnnjax-corrupt-<s>-<time>``, kept for inspection, not deleted), or raises
if none is intact.

Ownership. Opening a folder takes the lock file ``<directory>/.rnnjax-lock``
(JSON: pid, host). A second run on the same folder fails at once with a
``ValueError`` naming the owner; a lock whose process is gone (same host) is
stale and is taken over with a warning. Only files this module writes are
ever deleted: numbered folders without the marker (not ours) are ignored and
never removed, and ``keep`` only rotates our own checkpoints.

Multi-process (``jax.distributed``): orbax writes the arrays collectively;
the lock, the commit rename and the deletions are done by process 0 only,
every process writing into process 0's temporary folder, with barriers
between the steps (tested with 2 processes in ``tests/test_distributed.py``).

Before restoring, the leaf description in the metadata is compared with the
current run's state; a difference (another model, another optimizer) raises a
``ValueError`` naming the checkpoint path and the first leaves that differ
(not a fallback: the checkpoint is fine, the run is another).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from typing import Optional

import jax
import numpy as np

from rnnjax.train import _distributed

FORMAT = "rnnjax.train.checkpoint/2"
_LEGACY_FORMATS = ("rnnjax.train.checkpoint/1",)  # written by orbax's CheckpointManager, no checksums
MARKER = "rnnjax_checkpoint"
LOCK = ".rnnjax-lock"
_TMP, _DELETING, _CORRUPT = ".rnnjax-tmp-", ".rnnjax-deleting-", ".rnnjax-corrupt-"


class CorruptCheckpointError(ValueError):
  """A checkpoint whose files are unreadable or fail their checksums."""


def describe(tree) -> list:
  """``[[path, shape, dtype], ...]`` for every leaf of ``tree`` (JSON-ready)."""
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out.append([jax.tree_util.keystr(path), list(np.shape(leaf)), str(np.dtype(leaf.dtype))])
  return out


def checksums(tree) -> dict:
  """``{path: sha256 hex}`` of every leaf's bytes (with its shape and dtype)."""
  out = {}
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  host = jax.device_get([leaf for _, leaf in leaves])
  for (path, _), a in zip(leaves, host):
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    out[jax.tree_util.keystr(path)] = h.hexdigest()
  return out


def _json_sha(meta: dict) -> str:
  body = {k: v for k, v in meta.items() if k != "sha256"}
  return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=True).encode()).hexdigest()


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


def _fsync_dir(path):
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_file(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  try:  # a zombie (killed, not yet reaped) is dead for our purposes
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (OSError, IndexError):
    return True


class Checkpointer:
  """Saves / restores train states in ``directory`` (see the module docstring).

  Args:
    directory: the checkpoint folder (created if needed). Opening it takes
      its lock; :meth:`close` releases it.
    keep: how many most recent checkpoints to keep.
    async_save: accepted for compatibility; saves are synchronous (the
      commit rename must follow the last write).

  Raises:
    ValueError: ``directory`` is a file, or is locked by a live process.
  """

  def __init__(self, directory, *, keep: int = 3, async_save: bool = False):
    del async_save
    import orbax.checkpoint as ocp  # heavy import, only when checkpointing
    self._ocp = ocp
    self.keep = int(keep)
    self.directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise ValueError(f"checkpoint_dir {self.directory!r} exists and is not a folder.")
    try:
      os.makedirs(self.directory, exist_ok=True)
    except OSError as e:
      raise ValueError(f"cannot create the checkpoint folder {self.directory!r}: {e}") from e
    self._primary = jax.process_index() == 0
    self._locked = False
    if self._primary:
      self._lock()
      self._remove_garbage()
    # Every process writes into the same temporary folder, named after process 0's pid.
    self._tag = int(_distributed.from_primary(np.int64(os.getpid())))
    _distributed.barrier("rnnjax checkpoint open")
    self._ckptr = ocp.Checkpointer(ocp.StandardCheckpointHandler())

  # ------------------------------------------------------------------ lock

  @property
  def lock_path(self) -> str:
    return os.path.join(self.directory, LOCK)

  def _lock(self):
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    for _ in range(2):
      try:
        fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._read_lock()
        pid, host = owner.get("pid"), owner.get("host")
        same_host = host == me["host"]
        if isinstance(pid, int) and same_host and pid != me["pid"] and not _pid_alive(pid):
          warnings.warn(f"checkpoint_dir {self.directory!r}: removing the stale lock of process "
                        f"{pid} (no longer running).", RuntimeWarning, stacklevel=3)
          try:
            os.remove(self.lock_path)
          except FileNotFoundError:
            pass
          continue
        if owner.get("unreadable"):
          raise ValueError(f"checkpoint_dir {self.directory!r} has an unreadable lock file "
                           f"{self.lock_path!r}; if no other run uses this folder, delete it.")
        where = f"process {pid} on {host}" if not same_host else f"process {pid}"
        hint = ("" if same_host else
                f"; if that run is dead, delete {self.lock_path!r}")
        raise ValueError(f"checkpoint_dir {self.directory!r} is in use by another run ({where}, "
                         f"lock file {self.lock_path!r}); two runs cannot share a checkpoint "
                         f"folder{hint}.") from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
        f.flush()
        os.fsync(f.fileno())
      self._locked = True
      return
    raise ValueError(f"checkpoint_dir {self.directory!r}: could not take the lock "
                     f"{self.lock_path!r} (another run took it first).")

  def _read_lock(self) -> dict:
    try:
      with open(self.lock_path) as f:
        owner = json.load(f)
      return owner if isinstance(owner, dict) else {"unreadable": True}
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      # Maybe being written right now by its owner: read once more.
      time.sleep(0.05)
      try:
        with open(self.lock_path) as f:
          owner = json.load(f)
        return owner if isinstance(owner, dict) else {"unreadable": True}
      except (OSError, ValueError):
        return {"unreadable": True}

  def _unlock(self):
    if self._locked:
      self._locked = False
      try:
        if self._read_lock().get("pid") == os.getpid():
          os.remove(self.lock_path)
      except OSError:
        pass

  def _remove_garbage(self):
    """Removes our own temporary and half-deleted folders (held lock: no live writer)."""
    for name in os.listdir(self.directory):
      if name.startswith((_TMP, _DELETING)):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  # ------------------------------------------------------------------ listing

  def _is_ours(self, name) -> bool:
    p = os.path.join(self.directory, name)
    return (name.isdigit() and os.path.isdir(p) and
            (os.path.exists(os.path.join(p, MARKER)) or os.path.isdir(os.path.join(p, "meta"))))

  def all_steps(self):
    """Steps of the checkpoints in the folder (ours only), ascending."""
    return sorted(int(n) for n in os.listdir(self.directory) if self._is_ours(n))

  def latest_step(self) -> Optional[int]:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def path(self, step) -> str:
    return os.path.join(self.directory, str(int(step)))

  # ------------------------------------------------------------------ save

  def save(self, step: int, state, meta: dict) -> None:
    """Writes the checkpoint of ``step`` atomically, then drops the oldest beyond ``keep``."""
    step = int(step)
    final = self.path(step)
    if os.path.exists(final):
      if not self._is_ours(str(step)):
        raise ValueError(f"cannot save checkpoint {final!r}: a folder of that name exists and "
                         "is not an rnnjax checkpoint (it is left untouched).")
      if self._primary:
        self._delete(step)
    meta = dict(meta, format=FORMAT, step=step, tree=describe(state), checksums=checksums(state))
    meta["sha256"] = _json_sha(meta)
    tmp = os.path.join(self.directory, f"{_TMP}{step}-{self._tag}")
    if self._primary:
      shutil.rmtree(tmp, ignore_errors=True)
      os.makedirs(os.path.join(tmp, "meta"))
    _distributed.barrier("rnnjax checkpoint prepared")
    self._ckptr.save(os.path.join(tmp, "state"), args=self._ocp.args.StandardSave(state))
    if self._primary:
      _write_file(os.path.join(tmp, "meta", "metadata"),
                  json.dumps(meta, allow_nan=True).encode())
      _write_file(os.path.join(tmp, MARKER), FORMAT.encode())
      _fsync_dir(os.path.join(tmp, "meta"))
      _fsync_dir(tmp)
      os.rename(tmp, final)  # the commit
      _fsync_dir(self.directory)
      for old in self.all_steps()[:-self.keep]:
        self._delete(old)
    _distributed.barrier("rnnjax checkpoint committed")

  def _delete(self, step: int) -> None:
    """Rename-then-remove: a kill mid-way leaves a hidden garbage folder, never a half checkpoint."""
    trash = os.path.join(self.directory, f"{_DELETING}{int(step)}-{os.getpid()}")
    os.rename(self.path(step), trash)
    _fsync_dir(self.directory)
    shutil.rmtree(trash, ignore_errors=True)

  # ------------------------------------------------------------------ restore

  def read_meta(self, step: int) -> dict:
    path = self.path(step)
    file = os.path.join(path, "meta", "metadata")
    try:
      with open(file, "rb") as f:
        raw = f.read()
      meta = json.loads(raw.decode())
    except (OSError, ValueError) as e:
      raise CorruptCheckpointError(
          f"checkpoint {path!r} is unreadable (its metadata {file!r} could not be read: "
          f"{type(e).__name__}: {e}).") from e
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT,) + _LEGACY_FORMATS:
      raise CorruptCheckpointError(
          f"checkpoint {path!r} is unreadable: not an rnnjax.train checkpoint (format "
          f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}, "
          f"expected {FORMAT!r}).")
    if meta["format"] == FORMAT and meta.get("sha256") != _json_sha(meta):
      raise CorruptCheckpointError(f"checkpoint {path!r} is corrupt: its metadata fails its "
                                   "SHA-256 checksum.")
    return meta

  def restore(self, state_like, step: Optional[int] = None):
    """Returns ``(state, meta)`` of ``step`` (default: the latest), verified.

    ``state_like`` is a state of the current run (arrays or
    ``jax.ShapeDtypeStruct`` s, with shardings) that fixes structure, shapes,
    dtypes and placement of the result.

    Raises:
      CorruptCheckpointError: unreadable files or a checksum mismatch.
      ValueError: no checkpoint, or one that does not match ``state_like``.
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
      out = self._ckptr.restore(os.path.join(path, "state"), args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # noqa: BLE001 - re-raised with the path
      raise CorruptCheckpointError(
          f"checkpoint {path!r} is unreadable (its 'state' item could not be restored: "
          f"{type(e).__name__}: {str(e)[:300]}).") from e
    if "checksums" in meta:
      got = checksums(out)
      bad = [p for p, h in meta["checksums"].items() if got.get(p) != h]
      if bad or set(got) != set(meta["checksums"]):
        raise CorruptCheckpointError(
            f"checkpoint {path!r} is corrupt: {len(bad)} array(s) fail their SHA-256 checksum "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}).")
    return out, meta

  def restore_latest_intact(self, state_like):
    """``(step, state, meta)`` of the newest intact checkpoint, or ``None`` if there is none.

    Corrupt newer checkpoints are reported with a ``RuntimeWarning`` naming
    each and moved aside (``.rnnjax-corrupt-<step>-<time>``, not deleted).

    Raises:
      CorruptCheckpointError: checkpoints exist but none is intact.
      ValueError: a readable checkpoint that does not match ``state_like``.
    """
    bad = []
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(state_like, step)
      except CorruptCheckpointError as e:
        bad.append((step, e))
        continue
      for s, e in bad:
        aside = os.path.join(self.directory, f"{_CORRUPT}{s}-{int(time.time())}")
        if self._primary:
          os.rename(self.path(s), aside)
        warnings.warn(f"{e} Resuming from the intact checkpoint {self.path(step)!r} instead; "
                      f"the corrupt one was moved to {aside!r}.", RuntimeWarning, stacklevel=3)
      return step, state, meta
    if bad:
      raise CorruptCheckpointError(
          f"no intact checkpoint in {self.directory!r}: " + " ".join(str(e) for _, e in bad)
          + " Move the folder away (or fix it) to start afresh.")
    return None

  def wait(self) -> None:
    pass

  def close(self) -> None:
    try:
      self._ckptr.close()
    finally:
      self._unlock()

  def __del__(self):
    if getattr(self, "_locked", False):
      self._unlock()
