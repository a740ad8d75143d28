"""Truncated backpropagation through time (TBPTT).

A batch of sequences ``x [*B, T, I]`` with per-step targets is cut into
chunks of ``K`` steps. For chunk ``c`` (steps ``[cK, (c+1)K)``)::

  (loss_c, carry_{c+1}), g_c = value_and_grad(chunk_loss)(params, stop_gradient(carry_c), chunk_c)
  params, opt_state         = optimizer update with g_c           # one update per chunk
  carry_{c+1}               = stop_gradient(carry_{c+1})          # carried on, not differentiated

so the forward state flows across the whole sequence while gradients flow
back at most ``K`` steps, and memory holds one chunk's activations. This is
TBPTT(K, K) of Williams & Peng, "An efficient gradient-based algorithm for
on-line training of recurrent network trajectories" (Neural Computation,
1990).

Bias. ``g_c`` is not the gradient of the full-sequence loss: (1) every term
``d loss_t / d h_s`` with ``s`` before the chunk start is dropped, so
dependencies longer than ``K`` steps get no gradient signal (they can still
be used, through the carried state, if they were learnt otherwise); the
estimate is biased towards short-term dependencies (Tallec & Ollivier,
"Unbiasing Truncated Backpropagation Through Time", 2017,
arXiv:1705.08209); (2) the carried state was computed with the parameters of
earlier updates, not the current ones; (3) each chunk's loss is the mean
over its own valid steps, so chunks with few valid steps weigh as much as
full ones. With ``K >= T`` one step is exactly one full-BPTT update.

A chunk in which no sequence has a valid step (all past their ``lengths``)
makes no update (params and optimizer state are kept).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from rnnjax import _checks
from rnnjax.train._losses import LOSSES, accuracy, unpack_batch


def _check_chunk(K):
  if isinstance(K, bool) or not isinstance(K, int) or K < 1:
    raise ValueError(f"tbptt must be a positive int number of steps, got {K!r}.")
  return K


def chunk_model_loss(model, loss: str = "mse"):
  """``loss_fn(params, carry, batch, key=None) -> (loss, (new_carry, aux))`` for TBPTT.

  ``model`` is a :class:`rnnjax.SequenceModel` with ``return_sequences=True``
  (per-step targets) whose layers are cells or :class:`rnnjax.Stack` (a
  :class:`rnnjax.Bidirectional` layer reads the future and cannot be
  truncated in time). ``carry`` is a tuple with one entry per layer (each
  layer's ``initial_carry``); ``batch`` is ``(x [*B, K, I], y, lengths)`` of
  one chunk, ``lengths`` already relative to the chunk. Losses: those of
  :data:`rnnjax.train.LOSSES` (``"mse"``, ``"cross_entropy"``,
  ``"binary_cross_entropy"``), as in :func:`rnnjax.train.model_loss`.
  """
  from rnnjax._layers import Bidirectional, Stack, _dropout
  from rnnjax._scan import scan
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}.")
  if not getattr(model, "return_sequences", False) or not hasattr(model, "layers"):
    raise ValueError("tbptt needs a SequenceModel with return_sequences=True (a target at every "
                     f"step), got {model!r}.")
  if any(isinstance(l, Bidirectional) for l in model.layers):
    raise ValueError("tbptt cannot truncate a Bidirectional layer (its backward direction reads "
                     "the end of the sequence first).")
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

  return loss_fn


def model_initial_carry(model, batch_shape, dtype=None):
  """The zero carry of every layer of ``model`` (a tuple, one entry per layer)."""
  return tuple(l.initial_carry(tuple(batch_shape), dtype) for l in model.layers)


def make_tbptt_step(loss_fn: Callable, optimizer: optax.GradientTransformation, tbptt: int,
                    initial_carry: Callable) -> Callable:
  """A jitted TBPTT step: ``step(params, opt_state, batch, key) -> (params, opt_state, metrics)``.

  Args:
    loss_fn: ``loss_fn(params, carry, chunk_batch, key) -> (loss, (new_carry, aux))``
      (e.g. :func:`chunk_model_loss`).
    optimizer: an optax transformation; it is applied once per chunk.
    tbptt: the chunk length ``K`` (steps between truncations).
    initial_carry: ``initial_carry(batch_shape, dtype) -> carry`` (e.g.
      ``functools.partial(model_initial_carry, model)``).

  ``batch`` is ``(x [*B, T, I], y [*B, T, ...], lengths)`` (see
  :func:`rnnjax.train._losses.unpack_batch`); the last chunk is shorter when
  ``K`` does not divide ``T``. ``key`` (or None) is folded with the chunk
  index for dropout. ``metrics``: ``loss`` (mean of the chunk losses),
  ``chunk_loss [n_chunks]``, ``grad_norm [n_chunks]`` and ``updates`` (the
  number of chunks that updated).
  """
  K = _check_chunk(tbptt)

  def step(params, opt_state, batch, key=None):
    x, y, lengths = unpack_batch(batch)
    nb = x.ndim - 2
    batch_shape, T = tuple(x.shape[:nb]), x.shape[nb]
    if y.shape[:nb + 1] != x.shape[:nb + 1]:
      raise ValueError(f"tbptt needs per-step targets y [*B, T, ...] aligned with x {x.shape}, "
                       f"got y {y.shape}.")
    leaves = [l for l in jax.tree_util.tree_leaves(params) if jnp.issubdtype(l.dtype, jnp.floating)]
    carry = initial_carry(batch_shape, jnp.result_type(*leaves) if leaves else None)
    n, r = divmod(T, K)

    def one(state, inp):
      params, opt_state, carry = state
      xc, yc, start, c = inp
      lc = None if lengths is None else jnp.clip(lengths - start.astype(lengths.dtype), 0, xc.shape[nb])
      kc = None if key is None else jax.random.fold_in(key, c)
      (loss, (new_carry, _)), g = jax.value_and_grad(loss_fn, has_aux=True)(
          params, jax.lax.stop_gradient(carry), (xc, yc, lc), kc)
      upd, new_opt = optimizer.update(g, opt_state, params)
      new_params = optax.apply_updates(params, upd)
      ok = jnp.bool_(True) if lc is None else jnp.any(lc > 0)
      sel = lambda a, b: jax.tree_util.tree_map(lambda u, v: jnp.where(ok, u, v), a, b)
      state = (sel(new_params, params), sel(new_opt, opt_state), jax.lax.stop_gradient(new_carry))
      return state, (loss, optax.tree.norm(g), ok)

    def split(a):  # [*B, n*K, ...] -> [n, *B, K, ...]
      a = a[(slice(None),) * nb + (slice(0, n * K),)]
      a = a.reshape(a.shape[:nb] + (n, K) + a.shape[nb + 1:])
      return jnp.moveaxis(a, nb, 0)

    state = (params, opt_state, carry)
    outs = []
    if n:
      state, o = jax.lax.scan(one, state, (split(x), split(y), jnp.arange(n, dtype=jnp.int32) * K,
                                           jnp.arange(n, dtype=jnp.int32)))
      outs.append(o)
    if r:
      tail = (slice(None),) * nb + (slice(n * K, T),)
      state, o = one(state, (x[tail], y[tail], jnp.int32(n * K), jnp.int32(n)))
      outs.append(jax.tree_util.tree_map(lambda v: v[None], o))
    losses, gnorms, oks = (jnp.concatenate(v) for v in zip(*outs))
    params, opt_state, _ = state
    n_ok = jnp.maximum(jnp.sum(oks), 1).astype(losses.dtype)
    metrics = {"loss": jnp.sum(jnp.where(oks, losses, jnp.zeros_like(losses))) / n_ok,
               "chunk_loss": losses, "grad_norm": gnorms, "updates": jnp.sum(oks)}
    return params, opt_state, metrics

  return jax.jit(step)


def fit_tbptt(model, params, data, *, optimizer: optax.GradientTransformation, steps: int,
              tbptt: int, loss: str = "mse", key=None):
  """A minimal training loop with truncated BPTT (see the module doc for its bias).

  Args:
    model: a :class:`rnnjax.SequenceModel` with ``return_sequences=True``.
    params: its parameters.
    data: a batch ``(x, y[, lengths])`` used at every step, or a callable
      ``data(i) -> batch``.
    optimizer: optax transformation (one update per chunk).
    steps: number of batches.
    tbptt: chunk length ``K``.
    loss: a name from :data:`rnnjax.train.LOSSES`.
    key: optional PRNG key for dropout.

  Returns:
    ``(params, history)`` with one dict of float metrics per batch.
  """
  import functools
  _checks.check_positive_int(steps, "steps")
  step = make_tbptt_step(chunk_model_loss(model, loss), optimizer, tbptt,
                         functools.partial(model_initial_carry, model))
  opt_state = optimizer.init(params)
  history = []
  for i in range(steps):
    batch = data(i) if callable(data) else data
    k = None if key is None else jax.random.fold_in(key, i)
    params, opt_state, m = step(params, opt_state, batch, k)
    history.append({"step": i + 1, "loss": float(m["loss"]), "updates": int(m["updates"]),
                    "grad_norm": float(jnp.max(m["grad_norm"]))})
  return params, history
