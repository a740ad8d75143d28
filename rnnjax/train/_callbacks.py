"""Callbacks of :func:`rnnjax.train.fit`: the hook protocol, early stopping, plateaus.

Every part of :func:`fit` around the pure step -- evaluation, adjoint norms,
metric writers, the progress bar, checkpoints -- is a :class:`Callback`, and
so are the user's. The loop calls, in this order::

  on_fit_start(loop)                       once, after a resume restored the state
  for each update i (0-based), n = i + 1:
    on_batch(loop, i, batch)               before the step (host batch; e.g. checks)
    metrics = on_step(loop, n, batch, metrics)   after the step, device metrics (add entries)
    ...metrics are fetched to the host in batches (the device keeps running ahead)...
    on_eval_end(loop, n, entry)            for an update that was evaluated ("eval_loss" in entry)
    on_step_end(loop, n, entry)            every update, in order, with its history entry
    on_flush(loop)                         after each batch of entries
  on_fit_end(loop, history)                once, after the last update (not after an error)
  teardown(loop)                           always (close files)

``entry`` is the history dict of the update (``step``, ``loss``,
``grad_norm``, ``clipped``, ``skipped``, ``eval_*``, ...) with Python numbers.
When a user callback is given, entries are fetched after every update, so
``loop.state`` in ``on_step_end`` / ``on_eval_end`` is the state after that
update (``loop.state.params``). A callback may set ``loop.stop_training =
True`` (the loop stops after the current update), ``loop.lr_scale`` (a factor
on the updates from the next one on) and ``loop.result_params`` (what ``fit``
returns as params). Callbacks with a state implement ``state_dict()`` /
``load_state_dict(d)`` (JSON-ready); it is saved in every checkpoint and
restored on resume.

Example, a user callback::

  class PrintEval(rj.train.Callback):
    def on_eval_end(self, loop, step, metrics):
      print(step, metrics["eval_loss"])

  rj.train.fit(..., callbacks=[PrintEval(), rj.train.EarlyStopping(patience=3)])
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import numpy as np
import optax


class Callback:
  """Base class of the hooks of :func:`rnnjax.train.fit` (override any method)."""

  def on_fit_start(self, loop) -> None:
    """Once before the first update (after a resume restored the state)."""

  def on_batch(self, loop, i: int, batch) -> None:
    """Before update ``i`` (0-based) with its host batch."""

  def on_step(self, loop, n: int, batch, metrics: dict) -> dict:
    """Right after update ``n`` (1-based count) with device metrics; returns them (maybe extended)."""
    return metrics

  def wants_flush(self, loop, n: int) -> bool:
    """True to fetch the metrics right after update ``n`` (e.g. before a save)."""
    return False

  def on_eval_end(self, loop, step: int, metrics: dict) -> None:
    """After an update that was evaluated; ``metrics`` holds ``eval_loss`` and ``eval_<aux>``."""

  def on_step_end(self, loop, step: int, metrics: dict) -> None:
    """After every update, in order, with its history entry."""

  def on_flush(self, loop) -> None:
    """After each batch of ``on_step_end`` calls."""

  def on_fit_end(self, loop, history: list) -> None:
    """Once after the last update."""

  def teardown(self, loop) -> None:
    """Always at the end, also after an error."""

  def state_dict(self) -> Optional[dict]:
    """JSON-ready state saved in checkpoints (None: nothing to save)."""
    return None

  def load_state_dict(self, state: dict) -> None:
    """Restores what :meth:`state_dict` returned."""


def _check_monitor(loop, monitor, who):
  if monitor.startswith("eval_") and not loop.has_eval:
    raise ValueError(f"{who}(monitor={monitor!r}) needs evaluation: pass validation_data=, "
                     "validation_split= or eval_data= to fit.")


class _Monitor(Callback):
  """Shared: watch ``monitor`` at each evaluation (``eval_*``) or each update."""

  def __init__(self, monitor):
    if not isinstance(monitor, str) or not monitor:
      raise TypeError(f"monitor must be a metric name (e.g. 'eval_loss'), got {monitor!r}.")
    self.monitor = monitor

  def on_fit_start(self, loop):
    _check_monitor(loop, self.monitor, type(self).__name__)

  def _value(self, step, metrics):
    if self.monitor not in metrics:
      raise ValueError(f"{type(self).__name__}: the metric {self.monitor!r} is not in the "
                       f"history of step {step} (it has {sorted(metrics)}).")
    return float(metrics[self.monitor])

  def on_eval_end(self, loop, step, metrics):
    if self.monitor.startswith("eval_"):
      self.observe(loop, step, self._value(step, metrics))

  def on_step_end(self, loop, step, metrics):
    if not self.monitor.startswith("eval_"):
      self.observe(loop, step, self._value(step, metrics))

  def observe(self, loop, step, value):
    raise NotImplementedError


class EarlyStopping(_Monitor):
  """Stops training when ``monitor`` has not improved for ``patience`` observations.

  Keras' ``EarlyStopping``: ``monitor`` is observed at every evaluation (an
  ``eval_*`` metric; with ``epochs=``, once per epoch) or at every update
  (a training metric such as ``"loss"``). An observation improves when
  ``value < best - min_delta`` (``mode="min"``) or ``value > best + min_delta``
  (``mode="max"``); NaN never improves. After ``patience`` observations
  without improvement ``fit`` stops after the current update.

  With ``restore_best=True`` ``fit`` returns the params of the best
  observation (of this call) as ``FitResult.params``; the optimizer state,
  the history and the checkpoints stay those of the last update, so a resume
  continues the run exactly. ``best``, ``best_step`` and ``stopped_step``
  are available after ``fit``.
  """

  def __init__(self, monitor: str = "eval_loss", *, patience: int = 5, min_delta: float = 0.0,
               mode: str = "min", restore_best: bool = True):
    super().__init__(monitor)
    if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
      raise ValueError(f"patience must be an int >= 1, got {patience!r}.")
    if mode not in ("min", "max"):
      raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
    if not float(min_delta) >= 0:
      raise ValueError(f"min_delta must be >= 0, got {min_delta!r}.")
    self.patience, self.min_delta, self.mode = int(patience), float(min_delta), mode
    self.restore_best = bool(restore_best)
    self.best, self.best_step, self.wait, self.stopped_step = math.nan, None, 0, None
    self._best_params = None

  def observe(self, loop, step, value):
    sign = 1.0 if self.mode == "min" else -1.0
    improved = (not math.isnan(value) and
                (self.best_step is None or sign * value < sign * self.best - self.min_delta))
    if improved:
      self.best, self.best_step, self.wait = value, step, 0
      if self.restore_best:
        self._best_params = loop.state.params  # immutable arrays: a reference is a snapshot
    else:
      self.wait += 1
      if self.wait >= self.patience:
        loop.stop_training = True
        self.stopped_step = step

  def on_fit_end(self, loop, history):
    if self.restore_best and self._best_params is not None:
      loop.result_params = self._best_params

  def state_dict(self):
    return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

  def load_state_dict(self, state):
    self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]


class ReduceLROnPlateau(_Monitor):
  """Scales the learning rate by ``factor`` when ``monitor`` stops improving.

  The plateau logic is ``optax.contrib.reduce_on_plateau`` (same arguments:
  ``factor``, ``patience``, ``rtol``, ``atol``, ``cooldown``,
  ``accumulation_size``, ``min_scale``), fed with ``monitor`` at every
  evaluation (``eval_*``) or every update (e.g. ``"loss"``; with
  ``accumulation_size`` the mean over that many updates). Its ``scale``
  multiplies every update of the train step from the next one on (for
  SGD / Adam / RMSProp / ... that is the learning rate times ``scale``) and is
  recorded as the metric ``lr_scale``; it is saved in checkpoints.
  """

  def __init__(self, monitor: str = "eval_loss", *, factor: float = 0.1, patience: int = 10,
               rtol: float = 1e-4, atol: float = 0.0, cooldown: int = 0,
               accumulation_size: int = 1, min_scale: float = 0.0):
    super().__init__(monitor)
    if not 0 < float(factor) < 1:
      raise ValueError(f"factor must be in (0, 1), got {factor!r}.")
    self._tx = optax.contrib.reduce_on_plateau(
        factor=float(factor), patience=int(patience), rtol=float(rtol), atol=float(atol),
        cooldown=int(cooldown), accumulation_size=int(accumulation_size),
        min_scale=float(min_scale))
    with jax.numpy_dtype_promotion("standard"):
      self._state = self._tx.init({})

  @property
  def scale(self) -> float:
    return float(self._state.scale)

  def on_fit_start(self, loop):
    super().on_fit_start(loop)
    loop.record_lr_scale = True
    loop.lr_scale = self.scale

  def observe(self, loop, step, value):
    with jax.numpy_dtype_promotion("standard"):  # optax mixes floats and int32 counters
      _, self._state = self._tx.update({}, self._state, value=np.float32(value))
    loop.lr_scale = self.scale

  def state_dict(self):
    return {k: np.asarray(v).item() for k, v in self._state._asdict().items()}

  def load_state_dict(self, state):
    self._state = type(self._state)(**{k: np.asarray(state[k], np.asarray(v).dtype)
                                       for k, v in self._state._asdict().items()})
