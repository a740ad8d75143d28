"""The pure train step of :func:`rnnjax.train.fit` and its compile cache.

One update ``i`` (0-based) is::

  key_i          = fold_in(key, i)
  (loss, aux), g = value_and_grad(loss_fn)(params, data(i), key_i)
  updates, s'    = optimizer.update(g, s, params)
  params'        = params + updates
  ok             = loss, ||g|| and params' all finite
  params, s      = (params', s') if ok else (params, s)      # skipped and counted otherwise

where ``updates`` are multiplied by ``lr_scale`` (1 unless a
:class:`~rnnjax.train.ReduceLROnPlateau` callback lowered it).

With ``fit(..., tbptt=K)`` the step is
``rnnjax.train._tbptt.make_tbptt_train_step`` instead: the same guarded
update (:func:`apply_gradients`) once per chunk of ``K`` steps, ``ceil(T/K)``
updates per batch, and the metric ``updates`` (chunk updates applied).

Everything the update depends on -- params, optimizer state, ``i``, the
base key -- lives in :class:`TrainState` and in the checkpoint, and the batch
is ``data(i)``, a deterministic function of ``i``; so a run resumed from the
checkpoint of step ``n`` computes exactly the updates ``n, n+1, ...`` of the
uninterrupted run, and the same metrics, bit for bit.

Metrics of every update (the history, one dict per update, ``"step"`` = the
number of updates done):

* ``loss``: the data loss (``aux`` entries of the loss function are added);
* ``grad_norm``: the global L2 norm of the loss gradient, before clipping
  (NaN if the gradient holds a NaN, inf if it overflows: never 0 for a
  non-finite gradient);
* ``clipped``: whether a :func:`rnnjax.train.clip_by_global_norm` stage of the
  optimizer (``optimizer(clip_norm=...)``) rescaled the gradient;
* ``skipped``: cumulative number of skipped updates (non-finite loss, gradient
  or params here, or non-finite updates caught by ``optax.apply_if_finite``);
* ``eval_loss``, ``eval_<aux>`` every ``eval_every`` updates;
* ``adjoint_norms`` every ``adjoint_every`` updates: the batch-mean
  ``||dL/dh_t||`` for t = 0..T-1 from :func:`rnnjax.diagnostics.adjoint_norms`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rnnjax.train._optim import ClipByGlobalNormState, find_state, global_norm


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


def with_aux(loss_fn):
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


def apply_gradients(optimizer: optax.GradientTransformation, params, opt_state, grads, loss,
                    lr_scale=1.0):
  """One guarded optimizer update: ``(params, opt_state, ok, grad_norm)``.

  ``updates, s' = optimizer.update(grads, s, params)``; ``params' = params +
  lr_scale * updates``; ``ok`` = loss, ``||grads||`` and ``params'`` all
  finite; when not ok the old ``(params, opt_state)`` are returned. The one
  update rule of :func:`make_train_step` and of the truncated-BPTT step
  (``rnnjax.train._tbptt``, once per chunk).
  """
  grad_norm = global_norm(grads)
  # optax's optimizers mix Python floats with int32 step counts (Adam's bias
  # correction): they run under standard promotion even when the user's code
  # runs under jax_numpy_dtype_promotion="strict".
  with jax.numpy_dtype_promotion("standard"):
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
  updates = jax.tree_util.tree_map(lambda u: u * jnp.asarray(lr_scale).astype(u.dtype), updates)
  new_params = optax.apply_updates(params, updates)
  ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_params)
  return (_select(ok, new_params, params), _select(ok, new_opt_state, opt_state), ok, grad_norm)


def clip_fired(opt_state):
  """Whether a ``clip_by_global_norm`` stage of ``opt_state`` clipped its last update."""
  clips = find_state(opt_state, ClipByGlobalNormState)
  return jnp.any(jnp.stack([c.clipped for c in clips])) if clips else jnp.bool_(False)


def update_metrics(opt_state, ok, skipped):
  """``clipped`` (a clip_by_global_norm stage fired in an ok update) and ``skipped``
  (the loop's count plus the non-finite updates caught by ``optax.apply_if_finite``)."""
  clipped = ok & clip_fired(opt_state)
  opt_skips = sum((s.total_notfinite.astype(jnp.int32)
                   for s in find_state(opt_state, optax.ApplyIfFiniteState)), jnp.int32(0))
  return {"clipped": clipped, "skipped": skipped + opt_skips}


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """The pure update ``(TrainState, batch, lr_scale=1.0) -> (TrainState, metrics)`` (not jitted).

  ``loss_fn(params, batch, key) -> loss`` or ``(loss, aux)`` with ``aux`` a
  dict of scalars; ``lr_scale`` a scalar multiplying the updates. See the
  module docstring for the update and the metrics. :func:`rnnjax.train.fit`
  jits it once per ``(loss_fn, optimizer, devices)``, compared by value.
  """
  loss_and_aux = with_aux(loss_fn)
  grad_fn = jax.value_and_grad(loss_and_aux, has_aux=True)

  def train_step(state: TrainState, batch, lr_scale=1.0):
    key = jax.random.fold_in(state.key, state.step)
    (loss, aux), grads = grad_fn(state.params, batch, key)
    params, opt_state, ok, grad_norm = apply_gradients(optimizer, state.params, state.opt_state,
                                                       grads, loss, lr_scale)
    skipped = state.skipped + (~ok).astype(jnp.int32)
    metrics = dict(update_metrics(opt_state, ok, skipped), loss=loss, grad_norm=grad_norm)
    for k, v in aux.items():
      metrics[k if k not in _RESERVED else f"aux_{k}"] = v
    return TrainState(params, opt_state, state.step + 1, state.key, skipped), metrics

  return train_step


_STEP_CACHE = {}


def compiled(loss_fn, optimizer, dp, tbptt=None):
  """``(step, evaluate)`` jitted once per ``(loss_fn, optimizer, devices, tbptt)``.

  The key compares by value: :func:`rnnjax.train.optimizer` results are equal
  when built from equal arguments and :func:`rnnjax.train.model_loss` caches
  per ``(model, loss)``, so repeated fits reuse one executable. ``tbptt`` is
  None (the step of :func:`make_train_step`) or ``(K, chunk_loss_fn)`` with a
  :func:`rnnjax.train.chunk_model_loss` function: the truncated-BPTT step of
  ``rnnjax.train._tbptt`` (``evaluate`` still runs ``loss_fn`` on whole
  sequences).
  """
  k = (loss_fn, optimizer, tuple(d.id for d in dp.devices), tbptt)
  try:
    hit = _STEP_CACHE.get(k)
  except TypeError:  # an unhashable loss_fn or optimizer: no caching
    k, hit = None, None
  if hit is not None:
    return hit
  if tbptt is None:
    train_step = make_train_step(loss_fn, optimizer)
  else:
    from rnnjax.train._tbptt import make_tbptt_train_step
    K, chunk_loss = tbptt
    train_step = make_tbptt_train_step(chunk_loss, optimizer, K, chunk_loss.initial_carry)
  step = jax.jit(train_step,
                 in_shardings=(dp.replicated, dp.batch_sharding, dp.replicated),
                 out_shardings=(dp.replicated, dp.replicated))
  evaluate = jax.jit(lambda p, b: with_aux(loss_fn)(p, b, None),
                     in_shardings=(dp.replicated, dp.batch_sharding),
                     out_shardings=dp.replicated)
  if k is not None:
    if len(_STEP_CACHE) > 32:
      _STEP_CACHE.clear()
    _STEP_CACHE[k] = (step, evaluate)
  return step, evaluate
