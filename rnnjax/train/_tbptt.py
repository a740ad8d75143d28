"""Truncated backpropagation through time (TBPTT): ``fit(..., tbptt=K)``.

A batch of sequences ``x [*B, T, I]`` with per-step targets is cut into
``ceil(T / K)`` chunks of ``K`` steps. For chunk ``c`` (steps ``[cK, (c+1)K)``)::

  (loss_c, carry_{c+1}), g_c = value_and_grad(chunk_loss)(params, stop_gradient(carry_c), chunk_c)
  params, opt_state         = optimizer update with g_c           # one update per chunk
  carry_{c+1}               = stop_gradient(carry_{c+1})          # carried on, not differentiated

starting from the zero carry at ``t = 0``, so the forward state flows across
the whole sequence while gradients flow back at most ``K`` steps, and memory
holds one chunk's activations. This is TBPTT(K, K) of Williams & Peng, "An
efficient gradient-based algorithm for on-line training of recurrent network
trajectories" (Neural Computation 2(4), 1990). Each chunk's update is the
guarded update of :func:`rnnjax.train.fit` (``rnnjax.train._step.apply_gradients``:
``lr_scale``, non-finite updates skipped), and chunk ``c`` of fit step ``i``
uses the dropout key ``fold_in(fold_in(key, i), c)`` (``fold_in(key, i)``
itself when there is a single chunk, as in full BPTT).

When ``K`` does not divide ``T`` the last chunk has ``T mod K`` steps: it is
padded to ``K`` steps and masked by ``lengths`` (the padded steps neither
move the carry nor count in the loss), so every chunk runs the one compiled
chunk body. ``lengths`` of the batch are cut with it: chunk ``c`` sees
``clip(lengths - cK, 0, K)``; a chunk in which no sequence has a valid step
makes no update (params and optimizer state are kept).

Bias. ``g_c`` is not the gradient of the full-sequence loss: (1) every term
``d loss_t / d h_s`` with ``s`` before the chunk start is dropped, so
dependencies longer than ``K`` steps get no gradient signal (they can still
be used, through the carried state, if they were learnt otherwise) and the
estimate is biased towards short-term dependencies (Tallec & Ollivier,
"Unbiasing Truncated Backpropagation Through Time", 2017, arXiv:1705.08209);
(2) the carried state was computed with the parameters of earlier updates,
not the current ones; (3) each chunk's loss is the mean over its own valid
steps, so a chunk with few valid steps (a short last chunk) weighs as much as
a full one. With ``K >= T`` one fit step is exactly one full-BPTT update.

Cost. The same forward and backward FLOPs as full BPTT per batch, but
``ceil(T / K)`` optimizer updates instead of one, and activation memory for
``K`` steps instead of ``T``.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from rnnjax import _checks
from rnnjax.train._losses import LOSSES, accuracy, unpack_batch
from rnnjax.train._step import _RESERVED, TrainState, apply_gradients, clip_fired, update_metrics


def check_tbptt(K) -> int:
  """``K`` as an int; TypeError unless an int, ValueError unless ``>= 1``."""
  return _checks.check_positive_int(K, "tbptt")


_CHUNK_LOSS_CACHE = {}


def chunk_model_loss(model, loss: str = "mse"):
  """``loss_fn(params, carry, batch, key=None) -> (loss, (new_carry, aux))`` for TBPTT.

  ``model`` is a :class:`rnnjax.SequenceModel` with ``return_sequences=True``
  (per-step targets) whose layers are cells or :class:`rnnjax.Stack` (a
  :class:`rnnjax.Bidirectional` layer reads the future and cannot be
  truncated in time). ``carry`` is a tuple with one entry per layer (each
  layer's ``initial_carry``); ``batch`` is ``(x [*B, K, I], y, lengths)`` of
  one chunk, ``lengths`` already relative to the chunk. Losses: those of
  :data:`rnnjax.train.LOSSES` (``"mse"``, ``"cross_entropy"``,
  ``"binary_cross_entropy"``), computed as in :func:`rnnjax.train.model_loss`
  (aux ``{"accuracy"}`` for the losses from logits). The function is cached
  per ``(model, loss)`` and has an attribute ``initial_carry(batch_shape,
  dtype)`` (the zero carry of every layer).

  Raises:
    ValueError: an unknown loss, or a model that is not a recurrent
      ``SequenceModel`` with ``return_sequences=True`` and no
      ``Bidirectional`` layer.
  """
  from rnnjax._layers import Bidirectional, SequenceModel, Stack, _dropout
  from rnnjax._scan import scan
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}.")
  if not isinstance(model, SequenceModel):
    raise ValueError("tbptt needs a recurrent rnnjax.SequenceModel (its carry is passed from chunk "
                     f"to chunk), got {type(model).__name__}.")
  if not model.return_sequences:
    raise ValueError("tbptt needs a SequenceModel with return_sequences=True (a target at every "
                     f"step, so that every chunk has a loss), got {model!r}.")
  if any(isinstance(l, Bidirectional) for l in model.layers):
    raise ValueError("tbptt cannot truncate a Bidirectional layer (its backward direction reads "
                     "the end of the sequence first).")
  try:
    cache_key = (model, loss)
    hit = _CHUNK_LOSS_CACHE.get(cache_key)
  except TypeError:
    cache_key, hit = None, None
  if hit is not None:
    return hit
  use_logits = loss != "mse"

  def loss_fn(params, carry, batch, key=None):
    x, y, lengths = unpack_batch(batch)
    keys = None if key is None else jax.random.split(key, 2 * len(model.layers))
    new = []
    xs = x
    for l, (layer, p) in enumerate(zip(model.layers, params["layers"])):
      if isinstance(layer, Stack):
        c, xs = layer.apply(p, xs, carry[l], lengths=lengths,
                            key=None if keys is None else keys[2 * l])
      else:
        c, xs = scan(layer, p, xs, carry[l], lengths=lengths)
      new.append(c)
      if keys is not None and model.dropout > 0 and l < len(model.layers) - 1:
        xs = _dropout(keys[2 * l + 1], xs, model.dropout)
    out = xs
    if model.readout is not None:
      out = model.readout.logits(params["readout"], out)
      if not use_logits:
        out = model.readout.activation(out)
    value = LOSSES[loss](out, y, lengths)
    aux = {} if loss == "mse" else {"accuracy": accuracy(out, y, lengths)}
    return value, (tuple(new), aux)

  def initial_carry(batch_shape, dtype=None):
    return model_initial_carry(model, batch_shape, dtype)

  loss_fn.initial_carry = initial_carry
  loss_fn.__name__ = loss_fn.__qualname__ = f"chunk_model_loss_{loss}"
  if cache_key is not None:
    _CHUNK_LOSS_CACHE[cache_key] = loss_fn
  return loss_fn


def model_initial_carry(model, batch_shape, dtype=None):
  """The zero carry of every layer of ``model`` (a tuple, one entry per layer)."""
  return tuple(l.initial_carry(tuple(batch_shape), dtype) for l in model.layers)


def _run_chunks(loss_fn, optimizer, K, initial_carry, params, opt_state, batch, key, lr_scale):
  """The chunk loop (see the module doc): ``(params, opt_state, per_chunk)``.

  ``per_chunk`` holds ``[n_chunks]`` arrays: ``loss``, ``grad_norm``,
  ``valid`` (some step of the chunk is valid), ``applied`` (valid and the
  update was finite), ``clipped`` and ``aux`` (a dict).
  """
  x, y, lengths = unpack_batch(batch)
  nb = x.ndim - 2
  if nb < 0:
    raise ValueError(f"tbptt needs inputs x [*B, T, I], got shape {x.shape}.")
  batch_shape, T = tuple(x.shape[:nb]), x.shape[nb]
  if tuple(y.shape[:nb + 1]) != tuple(x.shape[:nb + 1]):
    raise ValueError(f"tbptt needs per-step targets y [*B, T, ...] aligned with x {tuple(x.shape)}, "
                     f"got y {tuple(y.shape)}.")
  leaves = [l for l in jax.tree_util.tree_leaves(params) if jnp.issubdtype(l.dtype, jnp.floating)]
  carry = initial_carry(batch_shape, jnp.result_type(*leaves) if leaves else None)
  n = -(-T // K)
  if n > 1 and T % K:  # a ragged last chunk: pad to n*K steps, masked by lengths
    if lengths is None:
      lengths = jnp.full(batch_shape, T, jnp.int32)
    pad = lambda a: jnp.pad(a, [(0, 0)] * nb + [(0, n * K - T)] + [(0, 0)] * (a.ndim - nb - 1))  # noqa: E731
    x, y = pad(x), pad(y)
  L = min(K, T)

  def split(a):  # [*B, n*L, ...] -> [n, *B, L, ...]
    a = a.reshape(a.shape[:nb] + (n, L) + a.shape[nb + 1:])
    return jnp.moveaxis(a, nb, 0)

  def one(state, inp):
    params, opt_state, carry = state
    xc, yc, c = inp
    lc = None if lengths is None else jnp.clip(lengths - (c * L).astype(lengths.dtype), 0, L)
    kc = key if (key is None or n == 1) else jax.random.fold_in(key, c)
    (loss, (new_carry, aux)), g = jax.value_and_grad(loss_fn, has_aux=True)(
        params, jax.lax.stop_gradient(carry), (xc, yc, lc), kc)
    new_params, new_opt, ok, gnorm = apply_gradients(optimizer, params, opt_state, g, loss, lr_scale)
    valid = jnp.bool_(True) if lc is None else jnp.any(lc > 0)
    sel = lambda a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(valid, u, v), a, b)  # noqa: E731
    params, opt_state = sel(new_params, params), sel(new_opt, opt_state)
    applied = valid & ok
    out = {"loss": loss, "grad_norm": gnorm, "valid": valid, "applied": applied,
           "clipped": applied & clip_fired(opt_state), "aux": dict(aux)}
    return (params, opt_state, jax.lax.stop_gradient(new_carry)), out

  (params, opt_state, _), per_chunk = jax.lax.scan(
      one, (params, opt_state, carry), (split(x), split(y), jnp.arange(n, dtype=jnp.int32)))
  return params, opt_state, per_chunk


def _mean_over(values, mask):
  n_ok = jnp.maximum(jnp.sum(mask), 1).astype(values.dtype)
  return jnp.sum(jnp.where(mask, values, jnp.zeros_like(values))) / n_ok


def make_tbptt_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, tbptt: int,
                          initial_carry: Callable) -> Callable:
  """The TBPTT step of ``fit(..., tbptt=K)``: ``(TrainState, batch, lr_scale=1.0) -> (TrainState, metrics)``.

  The counterpart of :func:`rnnjax.train.make_train_step` (not jitted): one
  call is one fit step on one batch, ``ceil(T / K)`` optimizer updates (see
  the module doc). ``loss_fn(params, carry, chunk_batch, key) -> (loss,
  (new_carry, aux))`` (e.g. :func:`chunk_model_loss`); ``initial_carry(batch_shape,
  dtype)``. Metrics: ``loss`` (mean of the chunk losses over the chunks with
  a valid step), ``grad_norm`` (the largest chunk gradient norm, NaN if one
  is NaN), ``clipped`` (some chunk update was clipped), ``skipped``
  (cumulative skipped chunk updates), ``updates`` (chunk updates applied in
  this step) and the chunk means of the ``aux`` entries.
  """
  K = check_tbptt(tbptt)

  def train_step(state: TrainState, batch, lr_scale=1.0):
    key = jax.random.fold_in(state.key, state.step)
    params, opt_state, pc = _run_chunks(loss_fn, optimizer, K, initial_carry, state.params,
                                        state.opt_state, batch, key, lr_scale)
    valid = pc["valid"]
    skipped = state.skipped + jnp.sum(valid & ~pc["applied"]).astype(jnp.int32)
    gn = pc["grad_norm"]
    metrics = dict(update_metrics(opt_state, jnp.any(pc["applied"]), skipped),
                   loss=_mean_over(pc["loss"], valid),
                   grad_norm=jnp.max(jnp.where(valid, gn, jnp.zeros_like(gn))),
                   clipped=jnp.any(pc["clipped"]),
                   updates=jnp.sum(pc["applied"]).astype(jnp.int32))
    for k, v in pc["aux"].items():
      metrics[k if k not in _RESERVED + ("updates",) else f"aux_{k}"] = _mean_over(v, valid)
    return TrainState(params, opt_state, state.step + 1, state.key, skipped), metrics

  return train_step


def make_tbptt_step(loss_fn: Callable, optimizer: optax.GradientTransformation, tbptt: int,
                    initial_carry: Callable) -> Callable:
  """A jitted TBPTT step: ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

  The chunk loop of ``fit(..., tbptt=K)`` (module doc) without the
  :class:`~rnnjax.train.TrainState`, for a loop of your own.

  Args:
    loss_fn: ``loss_fn(params, carry, chunk_batch, key) -> (loss, (new_carry, aux))``
      (e.g. :func:`chunk_model_loss`).
    optimizer: an optax transformation; it is applied once per chunk.
    tbptt: the chunk length ``K`` (steps between truncations).
    initial_carry: ``initial_carry(batch_shape, dtype) -> carry`` (e.g.
      ``functools.partial(model_initial_carry, model)``).

  ``batch`` is ``(x [*B, T, I], y [*B, T, ...], lengths)`` (see
  :func:`rnnjax.train._losses.unpack_batch`); when ``K`` does not divide
  ``T`` the last chunk is padded and masked (module doc). ``key`` (or None: no dropout) is folded with
  the chunk index. ``metrics``: ``loss`` (mean of the chunk losses over the
  chunks with a valid step), ``chunk_loss [n_chunks]``, ``grad_norm
  [n_chunks]``, ``updates`` (chunk updates applied) and ``skipped``
  (non-finite chunk updates, not applied).
  """
  K = check_tbptt(tbptt)

  def step(params, opt_state, batch, key=None):
    params, opt_state, pc = _run_chunks(loss_fn, optimizer, K, initial_carry, params, opt_state,
                                        batch, key, 1.0)
    metrics = {"loss": _mean_over(pc["loss"], pc["valid"]), "chunk_loss": pc["loss"],
               "grad_norm": pc["grad_norm"], "updates": jnp.sum(pc["applied"]).astype(jnp.int32),
               "skipped": jnp.sum(pc["valid"] & ~pc["applied"]).astype(jnp.int32)}
    return params, opt_state, metrics

  return jax.jit(step)


def fit_tbptt(model, params, data, *, optimizer: optax.GradientTransformation, steps: int,
              tbptt: int, loss: str = "mse", key=None):
  """``fit(model, ..., tbptt=K)`` for a fixed batch or a data function: ``(params, history)``.

  A thin wrapper over :func:`rnnjax.train.fit` (see its ``tbptt`` argument
  and this module's doc for the bias of truncation).

  Args:
    model: a :class:`rnnjax.SequenceModel` with ``return_sequences=True``.
    params: its parameters.
    data: a batch ``(x, y[, lengths])`` used at every step, or a callable
      ``data(i) -> batch``.
    optimizer: optax transformation (one update per chunk).
    steps: number of batches (fit steps).
    tbptt: chunk length ``K``.
    loss: a name from :data:`rnnjax.train.LOSSES`.
    key: optional PRNG key (or int seed) for dropout; None: no dropout.

  Returns:
    ``(params, history)``: ``history`` is :attr:`FitResult.history`, one dict
    per batch (``step``, ``loss``, ``grad_norm`` (largest over the chunks),
    ``updates``, ...).
  """
  import dataclasses

  from rnnjax.train._loop import fit
  if key is None and getattr(model, "dropout", 0.0):
    model = dataclasses.replace(model, dropout=0.0)
  batch_at = data if callable(data) else (lambda i: data)
  res = fit(model, params, batch_at, optimizer=optimizer, steps=steps, loss=loss, tbptt=tbptt,
            seed=0 if key is None else key, progress=False)
  return res.params, res.history

