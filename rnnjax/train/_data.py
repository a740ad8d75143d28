"""Data sources of :func:`rnnjax.train.fit`, and :func:`evaluate` / :func:`predict`.

``fit`` reads update ``i``'s batch as ``batch_at(i)``, a deterministic
function of ``i`` (what makes a resumed run equal an uninterrupted one). It
is built from one of:

* a function ``i -> batch``;
* an iterable of batches (read forward; fast-forwarded on resume);
* in-memory arrays, Keras style: a tuple ``(X, Y)`` / ``(X, Y, lengths)``,
  a :class:`~rnnjax.train.Batch` or a dict ``{"x", "y"[, "lengths"]}`` of
  arrays with the samples on axis 0 (:class:`ArrayData`).
"""

from __future__ import annotations

from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.train._losses import unpack_batch
from rnnjax.train._step import with_aux
from rnnjax.train._tasks import Batch


def _array_like(a):
  return hasattr(a, "shape") and hasattr(a, "dtype") and np.ndim(a) >= 1


def is_array_data(data) -> bool:
  """True for in-memory arrays ``(X, Y[, lengths])`` / ``Batch`` / ``{"x", "y"}`` (not a list)."""
  if isinstance(data, dict):
    parts = [data.get(k) for k in ("x", "y", "lengths") if data.get(k) is not None]
  elif isinstance(data, tuple) and len(data) in (2, 3):
    parts = [p for p in data if p is not None]
  else:
    return False
  return len(parts) >= 2 and all(_array_like(p) for p in parts)


def _seed_ints(seed):
  if isinstance(seed, (int, np.integer)):
    return [int(seed)]
  return [int(v) for v in np.asarray(jax.random.key_data(seed)).ravel()]


class ArrayData:
  """In-memory arrays cut into shuffled batches: ``batch_at(i)`` for update ``i``.

  Epoch ``e`` visits the training samples in the order
  ``np.random.default_rng([*seed, e]).permutation(N)`` (``shuffle=True``) or
  ``0..N-1``, in ``N // batch_size`` batches of ``batch_size``; the
  ``N mod batch_size`` samples left over by an epoch's permutation are not
  used in that epoch (every batch has one shape: one compile), and with
  shuffling they differ from epoch to epoch. ``validation_split=f`` holds out
  the *last* ``round(f * N)`` samples (before shuffling, as Keras does).
  """

  def __init__(self, data, *, batch_size: Optional[int] = None, shuffle: bool = True,
               seed=0, validation_split: Optional[float] = None):
    x, y, lengths = unpack_batch(data, "data")
    arrays = {"x": np.asarray(x), "y": np.asarray(y)}
    if lengths is not None:
      arrays["lengths"] = np.asarray(lengths)
    n = {k: len(a) for k, a in arrays.items()}
    if len(set(n.values())) != 1:
      raise ValueError(f"data arrays must have the same number of samples on axis 0, got {n}.")
    total = n["x"]
    self.validation = None
    if validation_split is not None:
      f = float(validation_split)
      if not 0 < f < 1:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split!r}.")
      n_val = int(round(f * total))
      if n_val < 1 or n_val >= total:
        raise ValueError(f"validation_split={validation_split!r} of {total} samples leaves "
                         f"{n_val} for validation and {total - n_val} for training; both must "
                         "be >= 1.")
      self.validation = Batch(*(arrays[k][total - n_val:] if k in arrays else None
                                for k in ("x", "y", "lengths")))
      arrays = {k: a[:total - n_val] for k, a in arrays.items()}
      total -= n_val
    if batch_size is None:
      batch_size = 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    self.arrays, self.n = arrays, total
    self.batch_size = min(int(batch_size), total)
    self.steps_per_epoch = total // self.batch_size
    self.shuffle = bool(shuffle)
    self._seed = _seed_ints(seed)
    self._perm_epoch, self._perm = None, None

  def permutation(self, epoch: int) -> np.ndarray:
    if self._perm_epoch != epoch:
      self._perm = (np.random.default_rng(self._seed + [int(epoch)]).permutation(self.n)
                    if self.shuffle else np.arange(self.n))
      self._perm_epoch = epoch
    return self._perm

  def __call__(self, i: int) -> Batch:
    epoch, j = divmod(int(i), self.steps_per_epoch)
    idx = self.permutation(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
    return Batch(*(self.arrays[k][idx] if k in self.arrays else None
                   for k in ("x", "y", "lengths")))


def data_source(data):
  """Returns ``batch_at(i)``; iterables are read in order (fast-forwarded on resume)."""
  if callable(data):
    return data
  if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
    raise TypeError("data must be a function step -> batch, an iterable of batches or in-memory "
                    f"arrays (X, Y), got {type(data).__name__}.")
  it = iter(data)
  pos = [0]

  def batch_at(i):
    if i < pos[0]:
      raise ValueError("an iterable data source can only be read forward; pass a function "
                       "step -> batch for resumable training.")
    try:
      while pos[0] < i:  # fast-forward (resuming)
        next(it)
        pos[0] += 1
      batch = next(it)
    except StopIteration:
      raise ValueError(f"data ran out of batches at step {pos[0]} (needed {i + 1}).") from None
    pos[0] += 1
    return batch

  return batch_at


def _chunks(data, batch_size):
  """Splits a batch ``(x, y[, lengths])`` into chunks of ``batch_size`` along axis 0."""
  x, y, lengths = unpack_batch(data, "data")
  n = len(x)
  bs = n if batch_size is None else int(batch_size)
  if bs < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
  for s in range(0, n, bs):
    yield min(bs, n - s), Batch(x[s:s + bs], y[s:s + bs],
                                None if lengths is None else lengths[s:s + bs])


_EVAL_CACHE = {}


def evaluate(model_or_loss, params, data, *, loss: Optional[str] = None,
             batch_size: Optional[int] = None) -> dict:
  """The loss (and aux metrics) of ``params`` on ``data``, without dropout.

  Args:
    model_or_loss: a model with ``loss=`` (as in :func:`fit`) or a
      ``loss_fn(params, batch, key)``.
    params: the params.
    data: a batch ``(X, Y[, lengths])`` / :class:`Batch` / dict of arrays.
    loss: the loss name, with a model.
    batch_size: evaluate in chunks of this many samples (default: all at
      once); the result is the mean of the chunks' values weighted by their
      sizes (exact for per-sample means; with ``lengths``-masked sequence
      losses, Keras' convention).

  Returns:
    ``{"loss": float, **aux}``, e.g. ``{"loss": 0.12, "accuracy": 0.97}``.
  """
  from rnnjax.train._loop import resolve_loss
  loss_fn, _ = resolve_loss(model_or_loss, loss)
  fn = _EVAL_CACHE.get(loss_fn)
  if fn is None:
    fn = jax.jit(lambda p, b: with_aux(loss_fn)(p, b, None))
    _EVAL_CACHE[loss_fn] = fn
  total, sums = 0, {}
  for n, chunk in _chunks(data, batch_size):
    value, aux = jax.device_get(fn(params, chunk))
    for k, v in dict(aux, loss=value).items():
      sums[k] = sums.get(k, 0.0) + n * float(v)
    total += n
  return {k: sums[k] / total for k in ["loss"] + sorted(k for k in sums if k != "loss")}


_PREDICT_CACHE = {}


def predict(model, params, x, *, lengths=None, batch_size: Optional[int] = None) -> np.ndarray:
  """``model.apply(params, x, lengths=lengths)`` in chunks of ``batch_size`` (jitted, no dropout).

  Returns a NumPy array, the chunks' outputs concatenated along axis 0.
  """
  if not hasattr(model, "apply"):
    raise TypeError(f"model must have an apply(params, xs, ...) method, got {type(model).__name__}.")
  try:
    fn = _PREDICT_CACHE.get(model)
  except TypeError:
    fn = None
  if fn is None:
    fn = jax.jit(lambda p, xs, ln: model.apply(p, xs, lengths=ln))
    try:
      _PREDICT_CACHE[model] = fn
    except TypeError:
      pass
  x = np.asarray(x)
  y_dummy = np.zeros((len(x),), np.float32)
  outs = [np.asarray(fn(params, jnp.asarray(c.x), None if c.lengths is None else jnp.asarray(c.lengths)))
          for _, c in _chunks((x, y_dummy) if lengths is None else (x, y_dummy, lengths), batch_size)]
  return np.concatenate(outs, axis=0)

