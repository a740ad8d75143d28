"""The training loop: :func:`fit` and its pure, jitted train step.

One update ``i`` (0-based) is::

  key_i          = fold_in(key, i)
  (loss, aux), g = value_and_grad(loss_fn)(params, data(i), key_i)
  updates, s'    = optimizer.update(g, s, params)
  params'        = params + updates
  ok             = loss, ||g|| and params' all finite
  params, s      = (params', s') if ok else (params, s)      # skipped and counted otherwise

Everything the update depends on -- params, optimizer state, ``i``, the
base key -- lives in :class:`TrainState` and in the checkpoint, and the batch
is ``data(i)``, a deterministic function of ``i``; so a run resumed from the
checkpoint of step ``n`` computes exactly the updates ``n, n+1, ...`` of the
uninterrupted run, and the same metrics, bit for bit.

Metrics of every update (the history, one dict per update, ``"step"`` = the
number of updates done):

* ``loss``: the data loss (``aux`` entries of the loss function are added);
* ``grad_norm``: the global L2 norm of the loss gradient, before clipping;
* ``clipped``: whether a :func:`rnnjax.train.clip_by_global_norm` stage of the
  optimizer (``optimizer(clip_norm=...)``) rescaled the gradient;
* ``skipped``: cumulative number of skipped updates (non-finite loss, gradient
  or params here, or non-finite updates caught by ``optax.apply_if_finite``);
* ``eval_loss``, ``eval_<aux>`` every ``eval_every`` updates;
* ``adjoint_norms`` every ``adjoint_every`` updates: the batch-mean
  ``||dL/dh_t||`` for t = 0..T-1 from :func:`rnnjax.diagnostics.adjoint_norms`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import _checks
from rnnjax.train._losses import model_loss, unpack_batch
from rnnjax.train._optim import ClipByGlobalNormState, find_state, global_norm
from rnnjax.train._sharding import DataParallel


class TrainState(NamedTuple):
  """Everything an update depends on besides the batch.

  ``params``; ``opt_state`` (optax); ``step`` int32 (updates done); ``key``
  (typed PRNG key; update i uses ``fold_in(key, i)``); ``skipped`` int32
  (updates skipped by the loop's finiteness guard).
  """
  params: Any
  opt_state: Any
  step: Any
  key: Any
  skipped: Any


def _with_aux(loss_fn):
  def wrapped(params, batch, key):
    out = loss_fn(params, batch, key)
    if isinstance(out, tuple):
      if len(out) != 2:
        raise TypeError(f"loss_fn must return loss or (loss, aux), got a tuple of {len(out)}.")
      loss, aux = out
    else:
      loss, aux = out, {}
    aux = {} if aux is None else aux
    if not isinstance(aux, dict):
      raise TypeError(f"loss_fn's aux must be a dict of scalar metrics, got {type(aux).__name__}.")
    if jnp.ndim(loss) != 0:
      raise ValueError(f"loss_fn must return a scalar loss, got shape {jnp.shape(loss)}.")
    for k, v in aux.items():
      if jnp.ndim(v) != 0:
        raise ValueError(f"loss_fn's aux[{k!r}] must be a scalar, got shape {jnp.shape(v)}.")
    return loss, aux
  return wrapped


def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _select(ok, new, old):
  return jax.tree_util.tree_map(lambda n, o: jnp.where(ok, n, o), new, old)


_RESERVED = ("step", "loss", "grad_norm", "clipped", "skipped")


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """The pure update ``(TrainState, batch) -> (TrainState, metrics)`` (not jitted).

  ``loss_fn(params, batch, key) -> loss`` or ``(loss, aux)`` with ``aux`` a
  dict of scalars. See the module docstring for the update and the metrics.
  """
  loss_and_aux = _with_aux(loss_fn)
  grad_fn = jax.value_and_grad(loss_and_aux, has_aux=True)

  def train_step(state: TrainState, batch):
    key = jax.random.fold_in(state.key, state.step)
    (loss, aux), grads = grad_fn(state.params, batch, key)
    grad_norm = global_norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(params)
    params = _select(ok, params, state.params)
    opt_state = _select(ok, opt_state, state.opt_state)
    skipped = state.skipped + (~ok).astype(jnp.int32)
    clips = find_state(opt_state, ClipByGlobalNormState)
    clipped = ok & (jnp.any(jnp.stack([c.clipped for c in clips])) if clips else False)
    opt_skips = sum((s.total_notfinite.astype(jnp.int32)
                     for s in find_state(opt_state, optax.ApplyIfFiniteState)), jnp.int32(0))
    metrics = {"loss": loss, "grad_norm": grad_norm, "clipped": clipped,
               "skipped": skipped + opt_skips}
    for k, v in aux.items():
      metrics[k if k not in _RESERVED else f"aux_{k}"] = v
    return TrainState(params, opt_state, state.step + 1, state.key, skipped), metrics

  return train_step


@dataclasses.dataclass
class FitResult:
  """What :func:`fit` returns.

  Attributes:
    params: the trained params.
    opt_state: the final optimizer state.
    history: one dict per update (see the module docstring), including the
      updates restored from a checkpoint when resuming.
    step: updates done in total.
    skipped: updates skipped in total.
    seconds: wall time of this call's loop (compile included).
    step_seconds: mean wall time per update of this call after the first
      (compiling) one, data loading and metric fetching included, evaluation,
      adjoint norms and checkpoint saves excluded; NaN with fewer than 2 updates.
  """
  params: Any
  opt_state: Any
  history: list
  step: int
  skipped: int
  seconds: float
  step_seconds: float

  def metric(self, name: str) -> np.ndarray:
    """``history`` column ``name`` as a float array (NaN where absent)."""
    return np.array([float(h[name]) if name in h else np.nan for h in self.history])


_STEP_CACHE = {}


def _compiled(loss_fn, optimizer, dp):
  """One jitted step per (loss_fn, optimizer, devices): repeated fits reuse the executable."""
  k = (loss_fn, optimizer, tuple(d.id for d in dp.devices))
  if k not in _STEP_CACHE:
    step = jax.jit(make_train_step(loss_fn, optimizer),
                   in_shardings=(dp.replicated, dp.batch_sharding),
                   out_shardings=(dp.replicated, dp.replicated))
    evaluate = jax.jit(lambda p, b: _with_aux(loss_fn)(p, b, None),
                       in_shardings=(dp.replicated, dp.batch_sharding),
                       out_shardings=dp.replicated)
    if len(_STEP_CACHE) > 32:
      _STEP_CACHE.clear()
    _STEP_CACHE[k] = (step, evaluate)
  return _STEP_CACHE[k]


def _ordered(entry):
  """step, loss, grad_norm, clipped, skipped, then the other metrics by name."""
  rank = lambda k: (_RESERVED.index(k) if k in _RESERVED else len(_RESERVED), k)  # noqa: E731
  return {k: entry[k] for k in sorted(entry, key=rank)}


def _to_python(x):
  x = np.asarray(x)
  if x.dtype == np.bool_:
    return bool(x)
  if np.issubdtype(x.dtype, np.integer):
    return int(x)
  if x.ndim == 0:
    return float(x)
  return x.astype(float).tolist()


def _resolve_loss(model_or_loss, loss):
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


def _data_source(data):
  """Returns ``batch_at(i)``; iterables are read in order (fast-forwarded on resume)."""
  if callable(data):
    return data
  if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
    raise TypeError("data must be a function step -> batch or an iterable of batches, "
                    f"got {type(data).__name__}.")
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


def _check_batch_fits(loss_fn, params, batch, key, i, what="data"):
  try:
    jax.eval_shape(lambda p, b, k: _with_aux(loss_fn)(p, b, k), params, batch, key)
  except (ValueError, TypeError) as e:
    cls = TypeError if isinstance(e, TypeError) else ValueError
    raise cls(f"the batch {what}({i}) does not fit the model/loss: {e}") from e


def _progress_bar(progress, total, initial):
  if progress is None:
    progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
  if not progress:
    return None
  from tqdm.auto import tqdm
  return tqdm(total=total, initial=initial, desc="fit", dynamic_ncols=True, file=sys.stderr)


def fit(model_or_loss, params, data, *, optimizer: optax.GradientTransformation, steps: int,
        loss: Optional[str] = None, seed: Union[int, jax.Array] = 0,
        eval_data=None, eval_every: Optional[int] = None,
        checkpoint_dir=None, checkpoint_every: Optional[int] = None, keep: int = 3,
        resume: bool = False, jsonl=None, progress: Optional[bool] = None,
        devices=None, adjoint_every: Optional[int] = None) -> FitResult:
  r"""Trains ``params`` for ``steps`` updates; returns a :class:`FitResult`.

  Example::

    model = rj.SequenceModel([rj.LSTM(32)], rj.Dense(1))
    params = model.init(jax.random.key(0), input_size=2)
    res = rj.train.fit(model, params, lambda i: rj.train.adding_problem(64, seed=(0, i)),
                       loss="mse", optimizer=rj.train.optimizer("adam", 1e-2, clip_norm=1.0),
                       steps=2000, checkpoint_dir="ckpt", checkpoint_every=500, resume=True)

  Args:
    model_or_loss: an rnnjax model (``init``/``apply``/``logits``, e.g.
      :class:`rnnjax.SequenceModel`) together with ``loss=``, or any pure
      ``loss_fn(params, batch, key) -> loss | (loss, aux)`` (aux: dict of
      scalar metrics; key: a fresh PRNG key per update, for dropout, and
      None during evaluation).
    params: the initial params (ignored when resuming from a checkpoint).
    data: a function ``i -> batch`` for update ``i`` (0-based), deterministic
      in ``i`` for exact resuming (e.g. ``lambda i: adding_problem(64,
      seed=(0, i))``), or an iterable of batches. A batch is a
      :class:`~rnnjax.train.Batch` / tuple ``(x, y[, lengths])`` / dict for
      models, or any pytree a loss_fn understands; its leaves have the batch
      on axis 0.
    optimizer: an ``optax.GradientTransformation``, e.g. from
      :func:`rnnjax.train.optimizer` (whose clipping state feeds the
      ``clipped`` metric).
    steps: total number of updates (including those restored on resume).
    loss: with a model: ``"mse"``, ``"cross_entropy"`` or
      ``"binary_cross_entropy"`` (see :func:`rnnjax.train.model_loss`).
    seed: int or PRNG key; update i gets ``fold_in(key, i)``.
    eval_data: a batch, or a function ``step -> batch``, evaluated (without
      dropout) every ``eval_every`` updates and after the last.
    eval_every: evaluation period in updates (default: only at the end).
    checkpoint_dir: folder for orbax checkpoints (params, optimizer state,
      step, key, skipped count, history), written every ``checkpoint_every``
      updates and after the last; the ``keep`` most recent are kept.
    resume: continue from the latest checkpoint in ``checkpoint_dir`` if there
      is one (else start fresh). Without it, a folder that already holds
      checkpoints is an error (nothing is overwritten).
    jsonl: path of a JSON-lines file receiving every history entry (rewritten
      from the checkpoint's history on resume, so it never repeats a step).
    progress: show a tqdm bar with live loss and gradient norm; default: only
      when stderr is a terminal.
    devices: devices for data parallelism (default ``jax.devices()``, all of
      them): params replicated, batch split on axis 0 (see
      ``rnnjax.train._sharding``); the batch size must be divisible by the number
      of (local) devices.
    adjoint_every: every this many updates record ``adjoint_norms``, the
      batch-mean ``||dL/dh_t||`` of the first recurrent layer (models only).

  Raises:
    ValueError / TypeError: a batch that does not fit the model (e.g. feature
      size), a batch size not divisible by the device count, an unreadable or
      mismatched checkpoint (naming the path and the leaves that differ).
  """
  t_start = time.perf_counter()
  loss_fn, model = _resolve_loss(model_or_loss, loss)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError("optimizer must be an optax.GradientTransformation (e.g. "
                    f"rnnjax.train.optimizer('adam', 1e-3)), got {type(optimizer).__name__}.")
  steps = _checks.check_positive_int(steps, "steps")
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
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    key = jax.random.key(int(seed))
  else:
    _checks.check_key(seed, "seed")
    key = seed if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key) else jax.random.wrap_key_data(seed)

  dp = DataParallel(devices)
  batch_at = _data_source(data)
  step_fn, eval_fn = _compiled(loss_fn, optimizer, dp)
  adjoint_fn = _adjoint_fn(model, loss) if adjoint_every else None

  params = dp.replicate(params)
  state = TrainState(params, dp.replicate(optimizer.init(params)), dp.replicate(jnp.int32(0)),
                     dp.replicate(key), dp.replicate(jnp.int32(0)))
  history: list = []
  ckpt = jf = bar = None
  pending = []  # (step, device metrics) not yet fetched
  last_flush = time.perf_counter()

  def flush():
    nonlocal last_flush
    if not pending:
      return
    fetched = jax.device_get([m for _, m in pending])
    for (s, _), m in zip(pending, fetched):
      entry = _ordered(dict({k: _to_python(v) for k, v in m.items()}, step=s))
      history.append(entry)
      if jf is not None:
        jf.write(json.dumps(entry) + "\n")
    if jf is not None:
      jf.flush()
    if bar is not None:
      h = history[-1]
      bar.set_postfix(loss=f"{h['loss']:.4g}", grad_norm=f"{h['grad_norm']:.3g}",
                      skipped=h["skipped"], refresh=False)
    pending.clear()
    last_flush = time.perf_counter()

  t_first, side_seconds = None, 0.0
  try:
    if checkpoint_dir is not None:
      from rnnjax.train._checkpoint import Checkpointer
      ckpt = Checkpointer(checkpoint_dir, keep=keep)
      latest = ckpt.latest_step()
      if latest is not None and not resume:
        raise ValueError(f"checkpoint_dir {ckpt.directory!r} already holds checkpoints (latest "
                         f"step {latest}); pass resume=True to continue, or use an empty folder.")
      if latest is not None:
        state, history = _restore(ckpt, state, latest)
    start = int(state.step)
    if jsonl is not None:
      jf = open(os.fspath(jsonl), "w")
      for h in history:
        jf.write(json.dumps(h) + "\n")
      jf.flush()
    if eval_data is not None and not callable(eval_data):
      fixed_eval = dp.shard_batch(eval_data)
      eval_batch_at = lambda i: fixed_eval  # noqa: E731
    elif eval_data is not None:
      eval_batch_at = lambda i: dp.shard_batch(eval_data(i))  # noqa: E731
    else:
      eval_batch_at = None
    eval_checked = False
    bar = _progress_bar(progress, steps, start)

    for i in range(start, steps):
      batch = batch_at(i)
      if i == start:
        dp.check_batch(batch, argname=f"data({i})")
        _check_batch_fits(loss_fn, state.params, batch, state.key, i)
      state, metrics = step_fn(state, dp.shard_batch(batch))
      n = i + 1
      t_side = time.perf_counter()  # evaluation, adjoints, saves: not in step_seconds
      if eval_batch_at is not None and (n == steps or (eval_every and n % eval_every == 0)):
        eb = eval_batch_at(n)
        if not eval_checked:
          _check_batch_fits(loss_fn, state.params, eb, state.key, n, "eval_data")
          eval_checked = True
        eloss, eaux = eval_fn(state.params, eb)
        metrics = dict(metrics, eval_loss=eloss, **{f"eval_{k}": v for k, v in eaux.items()})
      if adjoint_fn is not None and (n % adjoint_every == 0 or n == steps):
        metrics = dict(metrics, adjoint_norms=adjoint_fn(state.params, batch))
      side_seconds += time.perf_counter() - t_side
      pending.append((n, metrics))
      if t_first is None:
        jax.block_until_ready(metrics)
        t_first = time.perf_counter()
        side_seconds = 0.0
      if bar is not None:
        bar.update(1)
      save_now = ckpt is not None and (n == steps or (checkpoint_every and n % checkpoint_every == 0))
      if save_now or n == steps or time.perf_counter() - last_flush > 0.5:
        flush()
      if save_now:
        t_side = time.perf_counter()
        _save(ckpt, state, history, n)
        side_seconds += time.perf_counter() - t_side
    flush()
    jax.block_until_ready(state)
  finally:
    if bar is not None:
      bar.close()
    if jf is not None:
      jf.close()
    if ckpt is not None:
      ckpt.close()
  t_end = time.perf_counter()
  done = steps - start
  step_seconds = ((t_end - t_first - side_seconds) / (done - 1)
                  if t_first is not None and done > 1 else math.nan)
  return FitResult(params=state.params, opt_state=state.opt_state, history=history,
                   step=int(state.step), skipped=history[-1]["skipped"] if history else 0,
                   seconds=t_end - t_start, step_seconds=step_seconds)


def _checkpoint_tree(state: TrainState):
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "key": jax.random.key_data(state.key), "skipped": state.skipped}


def _save(ckpt, state, history, n):
  # Snapshot the history: the save may run in a background thread while the
  # loop keeps appending to the live list.
  ckpt.save(n, _checkpoint_tree(state), {"history": [dict(h) for h in history[:n]]})


def _restore(ckpt, state, step):
  tree, meta = ckpt.restore(_checkpoint_tree(state), step)
  key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(state.key))
  restored = TrainState(tree["params"], tree["opt_state"], tree["step"], key, tree["skipped"])
  history = [_ordered(h) for h in meta.get("history", [])]
  if int(restored.step) != step or len(history) != step:
    raise ValueError(f"checkpoint {ckpt.path(step)!r} is inconsistent: step {int(restored.step)}, "
                     f"{len(history)} history entries, folder name {step}.")
  return restored, history


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
