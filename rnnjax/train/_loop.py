"""The training loop: :func:`fit`, a short loop over hooks around the pure step.

The update itself is the pure, jitted :func:`rnnjax.train.make_train_step`
(``rnnjax.train._step``; its module docstring gives the update equation and
every metric). Everything else -- batch checks, evaluation, adjoint norms,
user callbacks, metric writers, the progress bar, checkpoints -- is a
:class:`~rnnjax.train.Callback` (``rnnjax.train._hooks``), called by
:meth:`Loop.run` at fixed points; a new loop feature is one more hook.

Update ``i`` (0-based) reads the batch ``data(i)`` and the key
``fold_in(key, i)``; both are deterministic in ``i``, and the train state,
the history, ``lr_scale`` and the callbacks' states are in every checkpoint,
so a run resumed from the checkpoint of step ``n`` computes exactly the
updates ``n, n+1, ...`` of the uninterrupted run, and the same metrics, bit
for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import _checks
from rnnjax.train import _distributed
from rnnjax.train import _hooks
from rnnjax.train._callbacks import Callback
from rnnjax.train._data import ArrayData, data_source, is_array_data
from rnnjax.train._losses import model_loss, unpack_batch
from rnnjax.train._sharding import DataParallel
from rnnjax.train._step import _RESERVED, TrainState, compiled, make_train_step  # noqa: F401
from rnnjax.train._writers import as_writers


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    params: the trained params (the best ones with
      ``EarlyStopping(restore_best=True)``).
    opt_state: the final optimizer state.
    history: one dict per update (see ``rnnjax.train._step``), including the
      updates restored from a checkpoint when resuming.
    step: updates done in total.
    skipped: updates skipped in total.
    seconds: wall time of this call's loop (compile included).
    step_seconds: mean wall time per update of this call after the first
      (compiling) one, data loading and metric fetching included; evaluation,
      adjoint norms and checkpoint saves excluded; NaN with fewer than 2 updates.
    stopped_early: True when a callback stopped the run before ``steps``.
  """
  params: Any
  opt_state: Any
  history: list
  step: int
  skipped: int
  seconds: float
  step_seconds: float
  stopped_early: bool = False

  def metric(self, name: str) -> np.ndarray:
    """``history`` column ``name`` as a float array (NaN where absent)."""
    return np.array([float(h[name]) if name in h else np.nan for h in self.history])


def _to_python(x):
  x = np.asarray(x)
  if x.dtype == np.bool_:
    return bool(x)
  if np.issubdtype(x.dtype, np.integer):
    return int(x)
  if x.ndim == 0:
    return float(x)
  return x.astype(float).tolist()


class Loop:
  """The running fit, as hooks see it.

  Attributes: ``state`` (:class:`TrainState`), ``history`` (list of entries),
  ``start`` / ``steps`` (first update of this call, total), ``stop_training``,
  ``lr_scale``, ``result_params``, ``callbacks`` (the user's), ``has_eval``,
  ``side_seconds`` (time in saves etc., left out of ``step_seconds``).
  """

  def __init__(self, *, state, step_fn, batch_at, dp, steps, hooks, callbacks, has_eval,
               flush_every_step):
    self.state, self.step_fn, self.batch_at, self.dp = state, step_fn, batch_at, dp
    self.steps, self.start, self.history = steps, 0, []
    self.hooks, self.callbacks, self.has_eval = hooks, callbacks, has_eval
    self.flush_every_step = flush_every_step
    self.stop_training, self.lr_scale, self.record_lr_scale = False, 1.0, False
    self.result_params = None
    self.pending, self.last_flush = [], time.perf_counter()
    self.t_first, self.side_seconds = None, 0.0

  @staticmethod
  def order(entry):
    """step, loss, grad_norm, clipped, skipped, then the other metrics by name."""
    rank = lambda k: (_RESERVED.index(k) if k in _RESERVED else len(_RESERVED), k)  # noqa: E731
    return {k: entry[k] for k in sorted(entry, key=rank)}

  def run(self):
    try:
      for h in self.hooks:
        h.on_fit_start(self)
      for i in range(self.start, self.steps):
        batch = self.batch_at(i)
        for h in self.hooks:
          h.on_batch(self, i, batch)
        self.state, metrics = self.step_fn(self.state, self.dp.shard_batch(batch),
                                           np.float32(self.lr_scale))
        n = i + 1
        t = time.perf_counter()
        for h in self.hooks:
          metrics = h.on_step(self, n, batch, metrics)
        if self.record_lr_scale:
          metrics = dict(metrics, lr_scale=np.float32(self.lr_scale))
        self.side_seconds += time.perf_counter() - t
        self.pending.append((n, metrics))
        self._first_step_done(metrics)
        if (self.flush_every_step or n == self.steps or time.perf_counter() - self.last_flush > 0.5
            or any(h.wants_flush(self, n) for h in self.hooks)):
          self.flush()
        if self.stop_training:
          break
      self.flush()
      jax.block_until_ready(self.state)
      for h in self.hooks:
        h.on_fit_end(self, self.history)
    finally:
      for h in self.hooks:
        h.teardown(self)

  def flush(self):
    """Fetches the pending metrics; calls on_eval_end / on_step_end / on_flush in step order."""
    if not self.pending:
      return
    fetched = jax.device_get([m for _, m in self.pending])
    steps = [s for s, _ in self.pending]
    self.pending = []
    t = time.perf_counter()
    for s, m in zip(steps, fetched):
      entry = self.order(dict({k: _to_python(v) for k, v in m.items()}, step=s))
      self.history.append(entry)
      if "eval_loss" in entry:
        for h in self.hooks:
          h.on_eval_end(self, s, entry)
      for h in self.hooks:
        h.on_step_end(self, s, entry)
    for h in self.hooks:
      h.on_flush(self)
    self.last_flush = time.perf_counter()
    self.side_seconds += self.last_flush - t

  def _first_step_done(self, metrics):
    if self.t_first is None:  # the first update compiles: timed apart
      jax.block_until_ready(metrics)
      self.t_first, self.side_seconds = time.perf_counter(), 0.0


def resolve_loss(model_or_loss, loss):
  """``(loss_fn, model)`` from ``fit``'s first argument and ``loss=``."""
  if hasattr(model_or_loss, "init") and hasattr(model_or_loss, "apply"):
    if loss is None:
      raise ValueError("fit(model, ...) needs loss= one of 'mse', 'cross_entropy', "
                       "'binary_cross_entropy' (or pass a loss_fn(params, batch, key) instead).")
    return model_loss(model_or_loss, loss), model_or_loss
  if not callable(model_or_loss):
    raise TypeError("the first argument of fit must be an rnnjax model (with init/apply) or a "
                    f"loss_fn(params, batch, key), got {type(model_or_loss).__name__}.")
  if loss is not None:
    raise ValueError("loss= applies to fit(model, ...); a loss_fn already defines the loss.")
  return model_or_loss, None


def _check_params(params):
  leaves = jax.tree_util.tree_leaves(params)
  if params is None or not leaves:
    raise TypeError("params must be a non-empty pytree of arrays (e.g. model.init(key, "
                    f"input_size=...)), got {type(params).__name__}: {params!r:.80}.")
  bad = [type(x).__name__ for x in leaves if not hasattr(x, "dtype") and not isinstance(x, (int, float))]
  if bad:
    raise TypeError(f"params must be a pytree of arrays, got leaves of type {sorted(set(bad))}.")


def _check_devices(devices):
  if devices is None:
    return
  devices = list(devices)
  ids = [getattr(d, "id", None) for d in devices]
  if any(i is None for i in ids):
    raise TypeError(f"devices must be jax devices (e.g. jax.devices()[:2]), got {devices!r}.")
  dup = sorted({d for d in ids if ids.count(d) > 1})
  if dup:
    raise ValueError(f"devices lists the same device more than once (ids {dup}); pass distinct "
                     "devices, e.g. jax.devices()[:2].")


def _key(seed):
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return jax.random.key(int(seed))
  _checks.check_key(seed, "seed")
  return seed if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(seed)


def fit(model_or_loss, params, data, *, optimizer: optax.GradientTransformation,
        steps: Optional[int] = None, loss: Optional[str] = None, seed: Union[int, jax.Array] = 0,
        epochs: Optional[int] = None, batch_size: Optional[int] = None, shuffle: bool = True,
        validation_data=None, validation_split: Optional[float] = None,
        eval_data=None, eval_every: Optional[int] = None,
        callbacks: Sequence[Callback] = (), writers=None,
        checkpoint_dir=None, checkpoint_every: Optional[int] = None, keep: int = 3,
        resume: bool = False, jsonl=None, progress: Optional[bool] = None,
        devices=None, adjoint_every: Optional[int] = None,
        tbptt: Optional[int] = None) -> FitResult:
  r"""Trains ``params``; returns a :class:`FitResult`.

  Two ways to feed it. A function ``i -> batch`` (or an iterable) and
  ``steps=``::

    model = rj.SequenceModel([rj.LSTM(32)], rj.Dense(1))
    params = model.init(jax.random.key(0), input_size=2)
    res = rj.train.fit(model, params, lambda i: rj.train.adding_problem(64, seed=(0, i)),
                       loss="mse", optimizer=rj.train.optimizer("adam", 1e-2, clip_norm=1.0),
                       steps=2000, checkpoint_dir="ckpt", checkpoint_every=500, resume=True)

  Or in-memory arrays, Keras style (shuffled each epoch, seeded)::

    res = rj.train.fit(model, params, (X, Y), loss="binary_cross_entropy",
                       optimizer=rj.train.optimizer("adam", 1e-2), epochs=20, batch_size=32,
                       validation_split=0.2,
                       callbacks=[rj.train.EarlyStopping("eval_loss", patience=3)])

  Args:
    model_or_loss: an rnnjax model (``init``/``apply``/``logits``, e.g.
      :class:`rnnjax.SequenceModel`) together with ``loss=``, or any pure
      ``loss_fn(params, batch, key) -> loss | (loss, aux)`` (aux: dict of
      scalar metrics; key: a fresh PRNG key per update, for dropout, and
      None during evaluation).
    params: the initial params (ignored when resuming from a checkpoint).
    data: a function ``i -> batch`` for update ``i`` (0-based), deterministic
      in ``i`` for exact resuming (e.g. ``lambda i: adding_problem(64,
      seed=(0, i))``); an iterable of batches; or in-memory arrays ``(X, Y)``
      / ``(X, Y, lengths)`` / :class:`~rnnjax.train.Batch` / ``{"x", "y"}``
      with the samples on axis 0 (then ``epochs``, ``batch_size``,
      ``shuffle``, ``validation_split`` apply; see
      :class:`rnnjax.train.ArrayData`). A batch is a ``Batch`` / tuple
      ``(x, y[, lengths])`` / dict for models, or any pytree a loss_fn
      understands; its leaves have the batch on axis 0. With a model and
      ``cross_entropy`` / ``binary_cross_entropy``, labels outside ``[0, C)``
      / targets outside ``[0, 1]`` raise a ``ValueError`` naming the batch
      before its update.
    optimizer: an ``optax.GradientTransformation``, e.g. from
      :func:`rnnjax.train.optimizer` (whose clipping state feeds the
      ``clipped`` metric, and which compares by value: an equal optimizer
      reuses the compiled step).
    steps: total number of updates (including those restored on resume).
      With array data, instead ``epochs`` (default 1): ``steps = epochs *
      (N // batch_size)``.
    loss: with a model: ``"mse"``, ``"cross_entropy"`` or
      ``"binary_cross_entropy"`` (see :func:`rnnjax.train.model_loss`).
    seed: int or PRNG key; update i gets ``fold_in(key, i)``; also seeds
      the shuffling of array data.
    epochs, batch_size, shuffle: for array data (``batch_size`` default 32).
    validation_data: evaluated (without dropout) at the end of every epoch
      (array data) or every ``eval_every`` updates: a batch ``(X, Y[,
      lengths])`` or a function ``step -> batch``. Same as ``eval_data``.
    validation_split: for array data: hold out the last fraction of the
      samples (before shuffling) as validation data.
    eval_data: alias of ``validation_data`` (metrics ``eval_loss``,
      ``eval_<aux>``).
    eval_every: evaluation period in updates (default: every epoch with
      ``epochs``, else only at the end).
    callbacks: :class:`~rnnjax.train.Callback` s, e.g.
      :class:`~rnnjax.train.EarlyStopping`,
      :class:`~rnnjax.train.ReduceLROnPlateau` or your own (``on_step_end``,
      ``on_eval_end``, ``on_fit_end`` receive the metrics). With any
      callback the metrics are fetched after every update.
    writers: metric writers (:class:`~rnnjax.train.JsonLinesWriter`,
      :class:`~rnnjax.train.CsvWriter`, :class:`~rnnjax.train.TensorBoardWriter`)
      or paths ending in ``.jsonl`` / ``.csv``.
    checkpoint_dir: folder for checkpoints (params, optimizer state, step,
      key, skipped count, history, callback states; arrays by orbax, with
      SHA-256 checksums), written every ``checkpoint_every`` updates and
      after the last; the ``keep`` most recent are kept. The folder is locked
      while ``fit`` runs: a second run on it fails at once.
    resume: continue from the latest intact checkpoint in ``checkpoint_dir``
      if there is one (else start fresh); a corrupt newer one is reported
      (``RuntimeWarning``) and skipped. Without it, a folder that already
      holds checkpoints is an error (nothing is overwritten). A checkpoint
      past ``steps`` trains nothing: a ``RuntimeWarning``, and the
      checkpoint's state is returned.
    jsonl: path of a JSON-lines file receiving every history entry (strict
      JSON: NaN as ``null``, +-inf as ``"Infinity"`` / ``"-Infinity"``;
      rewritten from the checkpoint's history on resume).
    progress: show a tqdm bar with live loss and gradient norm; default: only
      when stderr is a terminal.
    devices: distinct devices for data parallelism (default
      ``jax.devices()``): params replicated, batch split on axis 0; the batch
      size must be divisible by the number of (local) devices.
    adjoint_every: every this many updates record ``adjoint_norms``, the
      batch-mean ``||dL/dh_t||`` of the first recurrent layer (models only).
    tbptt: None (default: full backpropagation through time, one update per
      batch) or ``K``, a positive int: truncated BPTT (Williams & Peng 1990).
      Needs a model: an :class:`rnnjax.SequenceModel` with
      ``return_sequences=True`` (a target at every step) and no
      ``Bidirectional`` layer. Every batch ``x [B, T, I]`` is cut along time
      into ``ceil(T / K)`` chunks of ``K`` steps (a shorter last chunk is
      padded and masked; ``lengths`` are cut with the chunks); the recurrent
      carry starts at zero at ``t = 0`` and is passed from chunk to chunk
      under ``stop_gradient``, and the optimizer updates once per chunk
      (chunks without a valid step are not updated). So one fit step (one
      batch, one ``steps`` unit, one history entry, one ``data(i)``) is
      ``ceil(T / K)`` optimizer updates: optimizer schedules and counters
      (Adam's bias correction, ``optax`` learning-rate schedules) advance per
      chunk, ``lr_scale`` applies to every chunk, and the history entry
      holds ``loss`` (the mean of the chunk losses), ``grad_norm`` (the
      largest chunk gradient norm), ``clipped`` (any chunk clipped),
      ``skipped`` (non-finite chunk updates, cumulative) and ``updates``
      (chunk updates applied in this step). ``eval_every``,
      ``checkpoint_every``, ``adjoint_every`` and the callbacks count fit
      steps; evaluation and ``adjoint_norms`` use whole sequences. The carry
      does not outlive its batch (it restarts at zero at every batch), so
      checkpoints hold no carry and a resumed run equals the uninterrupted
      one exactly; with ``devices`` each device runs its share of the batch
      and the chunk gradients are averaged over all of them, as in full
      BPTT. Bias: the gradient of a chunk ignores every dependency longer
      than ``K`` steps (terms ``d loss_t / d h_s`` with ``s`` before the
      chunk start), so long-range dependencies get no gradient signal and
      the estimate is biased towards short-term ones (Tallec & Ollivier,
      "Unbiasing Truncated Backpropagation Through Time", 2017); the carried
      state comes from parameters of earlier updates; each chunk's loss is
      averaged over its own valid steps. With ``K >= T`` it is full BPTT,
      the same updates as ``tbptt=None`` (dropout included). Cost: the same
      forward/backward FLOPs per batch, activation memory for ``K`` steps
      instead of ``T``, ``ceil(T / K)`` optimizer updates. See
      ``rnnjax.train._tbptt``.

  Raises:
    ValueError / TypeError: bad arguments (named; ``tbptt`` not a positive
      int, or a loss_fn / a model that cannot be truncated), a batch that does not fit
      the model, labels out of range, a locked or mismatched checkpoint
      folder, no intact checkpoint to resume from.
  """
  t_start = time.perf_counter()
  loss_fn, model = resolve_loss(model_or_loss, loss)
  _check_params(params)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError("optimizer must be an optax.GradientTransformation (e.g. "
                    f"rnnjax.train.optimizer('adam', 1e-3)), got {type(optimizer).__name__}.")
  _check_devices(devices)
  array_data = (ArrayData(data, batch_size=batch_size, shuffle=shuffle, seed=seed,
                          validation_split=validation_split) if is_array_data(data) else None)
  if array_data is None and (batch_size is not None or validation_split is not None):
    raise ValueError("batch_size= and validation_split= apply to in-memory array data "
                     "(X, Y); a data function or iterable makes its own batches.")
  steps = _checks.check_positive_int(_hooks.steps_from_epochs(array_data, epochs, steps), "steps")
  for name, v in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every),
                  ("adjoint_every", adjoint_every)):
    if v is not None:
      _checks.check_positive_int(v, name)
  keep = _checks.check_positive_int(keep, "keep")
  if checkpoint_every is not None and checkpoint_dir is None:
    raise ValueError("checkpoint_every needs checkpoint_dir.")
  if resume and checkpoint_dir is None:
    raise ValueError("resume=True needs checkpoint_dir.")
  if adjoint_every is not None and model is None:
    raise ValueError("adjoint_every needs fit(model, ..., loss=...) (a model whose first "
                     "layer is a cell), not a bare loss_fn.")
  tbptt_spec = None
  if tbptt is not None:
    from rnnjax.train._tbptt import check_tbptt, chunk_model_loss
    K = check_tbptt(tbptt)
    if model is None:
      raise ValueError("tbptt needs fit(model, ..., loss=...) with a recurrent rnnjax.SequenceModel "
                       "(its carry is passed from chunk to chunk), not a bare loss_fn.")
    tbptt_spec = (K, chunk_model_loss(model, loss))
  if eval_data is not None and validation_data is not None:
    raise ValueError("pass validation_data= or eval_data= (the same thing), not both.")
  eval_data = validation_data if validation_data is not None else eval_data
  if array_data is not None and array_data.validation is not None:
    if eval_data is not None:
      raise ValueError("pass validation_split= or validation_data=, not both.")
    eval_data = array_data.validation
  if eval_every is None and epochs is not None:
    eval_every = array_data.steps_per_epoch
  callbacks = list(callbacks)
  bad = [type(c).__name__ for c in callbacks if not isinstance(c, Callback)]
  if bad:
    raise TypeError(f"callbacks must be rnnjax.train.Callback instances, got {bad}.")

  dp = DataParallel(devices)
  step_fn, eval_fn = compiled(loss_fn, optimizer, dp, tbptt_spec)
  params = dp.replicate(params)
  state = TrainState(params, dp.replicate(optimizer.init(params)), dp.replicate(jnp.int32(0)),
                     dp.replicate(_key(seed)), dp.replicate(jnp.int32(0)))
  targets = _hooks.TargetCheck(model, loss)
  hooks = [_hooks.BatchChecks(loss_fn, dp, targets)]
  if eval_data is not None:
    hooks.append(_hooks.Evaluation(eval_fn, loss_fn, eval_data, eval_every, dp, targets))
  if adjoint_every:
    hooks.append(_hooks.AdjointNorms(_adjoint_fn(model, loss), adjoint_every))
  hooks += callbacks
  writer_list = as_writers(writers, jsonl)
  if _distributed.is_primary():  # multi-process: only process 0 writes and prints
    hooks += [_hooks.Writers(writer_list), _hooks.Progress(progress)]
  if jax.process_count() > 1:
    hooks.append(_distributed.MultiProcess())
  loop = Loop(state=state, step_fn=step_fn, batch_at=array_data or data_source(data), dp=dp,
              steps=steps, hooks=hooks, callbacks=callbacks, has_eval=eval_data is not None,
              flush_every_step=bool(callbacks))
  if checkpoint_dir is not None:
    ckpt = _hooks.Checkpointing(checkpoint_dir, checkpoint_every, keep, resume)
    hooks.append(ckpt)  # last: saves after the callbacks updated their state
    try:
      ckpt.restore(loop)
    except BaseException:
      ckpt.teardown(loop)
      raise
  loop.run()

  t_end = time.perf_counter()
  done = int(loop.state.step) - loop.start
  step_seconds = ((t_end - loop.t_first - loop.side_seconds) / (done - 1)
                  if loop.t_first is not None and done > 1 else math.nan)
  return FitResult(params=loop.result_params if loop.result_params is not None else loop.state.params,
                   opt_state=loop.state.opt_state, history=loop.history, step=int(loop.state.step),
                   skipped=loop.history[-1]["skipped"] if loop.history else 0,
                   seconds=t_end - t_start, step_seconds=step_seconds,
                   stopped_early=int(loop.state.step) < steps)


def _adjoint_fn(model, loss_name):
  """jitted ``(params, batch) -> [T]``: batch-mean ``||dL/dh_t||`` of the first recurrent layer.

  The loss seen from the first layer's outputs ``ys`` runs the remaining
  layers and the readout, so ``dL/dh_t`` is the full adjoint of the training
  loss; :func:`rnnjax.diagnostics.adjoint_norms` runs inside this function's
  ``jit`` (one compile, whatever the batch).
  """
  try:
    from rnnjax.diagnostics import adjoint_norms
  except ImportError as e:
    raise ValueError("adjoint_every needs rnnjax.diagnostics.adjoint_norms, which is not "
                     f"available: {e}") from e
  from rnnjax._layers import Bidirectional, SequenceModel, last_valid
  from rnnjax.train._losses import LOSSES
  if not isinstance(model, SequenceModel) or isinstance(model.layers[0], Bidirectional):
    raise ValueError("adjoint_every needs an rnnjax.SequenceModel whose first layer is a cell "
                     f"or a Stack, got {type(model).__name__}.")
  cell = model.layers[0]
  rest = dataclasses.replace(model, layers=model.layers[1:]) if len(model.layers) > 1 else None

  def fn(params, batch):
    x, y, lengths = unpack_batch(batch)

    def tail_loss(ys, carry):
      del carry
      h = ys
      if rest is not None:
        h = rest.features({"layers": params["layers"][1:]}, h, lengths=lengths)
      seq = model.return_sequences
      if not seq:
        h = last_valid(h, lengths)
      out = h
      if model.readout is not None:
        out = model.readout.logits(params["readout"], h)
        if loss_name == "mse":
          out = model.readout.activation(out)
      return LOSSES[loss_name](out, y, lengths if (seq and lengths is not None) else None)

    norms = adjoint_norms(tail_loss, cell, params["layers"][0], x, lengths=lengths)
    return jnp.nanmean(norms.reshape(-1, norms.shape[-1]), axis=0)

  return jax.jit(fn)
