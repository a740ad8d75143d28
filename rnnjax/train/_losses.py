"""Masked sequence losses: MSE, cross-entropy, binary cross-entropy from logits.

Shapes (``*B`` batch dims, ``T`` time, ``O`` outputs, ``C`` classes)::

  mse(pred, target, lengths)                      pred, target [*B, T, O]  (or [*B, O])
  cross_entropy(logits, labels, lengths)          logits [*B, T, C], labels int [*B, T]
                                                  (or [*B, C] and [*B])
  binary_cross_entropy(logits, targets, lengths)  logits, targets [*B, T, O] (or [*B, O])

With ``lengths`` (int ``[*B]``) only the steps ``t < lengths[b]`` count, and
every loss is the mean over the counted elements (sum / count; 0 when nothing
counts), so padding never changes the value. Without ``lengths`` it is the
plain mean over all elements.

Equations (mean over counted elements); the elementwise values come from
``optax.losses``, the masking and the mean from here:

* MSE: ``(pred - target)**2`` (``optax.losses.squared_error``, i.e. twice
  ``optax.losses.l2_loss``).
* Cross-entropy: ``-log_softmax(z)[label]``
  (``optax.losses.softmax_cross_entropy_with_integer_labels``, stable).
* Binary cross-entropy from logits ``z`` and targets ``y`` in [0, 1]:
  ``-y log(sigmoid(z)) - (1-y) log(1 - sigmoid(z))``
  (``optax.losses.sigmoid_binary_cross_entropy``, stable for large ``|z|``).

Labels and targets are range-checked when they are concrete (not traced):
a class label outside ``[0, C)`` or a binary target outside ``[0, 1]`` is a
``ValueError`` rather than a silently wrong loss. Under ``jit`` the check
cannot run; :func:`rnnjax.train.fit` checks its batches on the host instead.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import _checks


def _concrete(x):
  return not isinstance(x, jax.core.Tracer)


def check_labels(labels, num_classes: int, argname: str = "labels") -> None:
  """ValueError unless every (concrete) integer label is in ``[0, num_classes)``."""
  if not _concrete(labels):
    return
  a = np.asarray(labels)
  if a.size == 0:
    return
  lo, hi = int(a.min()), int(a.max())
  if lo < 0 or hi >= num_classes:
    bad = lo if lo < 0 else hi
    raise ValueError(f"{argname} must be class indices in [0, {num_classes}) (the logits have "
                     f"{num_classes} classes), got {bad} (min {lo}, max {hi}).")


def check_targets01(targets, argname: str = "targets") -> None:
  """ValueError unless every (concrete) binary target is in ``[0, 1]`` (NaN is let through:
  it gives a NaN loss, which the training loop reports and skips)."""
  if not _concrete(targets):
    return
  a = np.asarray(targets)
  if a.size == 0:
    return
  out = (a < 0) | (a > 1)
  if np.any(out):
    bad = a[out].ravel()[0]
    raise ValueError(f"{argname} of binary_cross_entropy must be in [0, 1] (probabilities of "
                     f"the positive class), got {float(bad)!r} (min {float(np.nanmin(a))}, "
                     f"max {float(np.nanmax(a))}).")


def _time_mask(lengths, batch_shape, num_steps, argname="lengths"):
  lengths = _checks.check_lengths(lengths, batch_shape, num_steps, argname)
  return jnp.arange(num_steps) < jnp.asarray(lengths)[..., None]  # [*B, T]


def _masked_mean(values, mask):
  """Mean of ``values`` [*B, T, ...] over the entries where ``mask`` [*B, T] is True."""
  extra = values.ndim - mask.ndim
  m = mask.reshape(mask.shape + (1,) * extra).astype(values.dtype)
  count = jnp.sum(m) * (values.size // max(m.size, 1))
  total = jnp.sum(jnp.where(m > 0, values, jnp.zeros_like(values)))
  return total / jnp.maximum(count, 1).astype(values.dtype)


def _check_float(x, argname):
  if not hasattr(x, "dtype") or not hasattr(x, "shape"):
    raise TypeError(f"{argname} must be an array, got {type(x).__name__}.")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{argname} must be a floating array, got dtype {x.dtype}.")


def _elementwise_loss(values, lengths, what):
  """Reduces an elementwise loss [*B, T, O] (or [*B, O]) with the time mask."""
  if lengths is None:
    return jnp.mean(values)
  if values.ndim < 2:
    raise ValueError(f"{what} with lengths needs [*B, T, O] arrays, got shape {values.shape}.")
  mask = _time_mask(lengths, values.shape[:-2], values.shape[-2])
  return _masked_mean(values, mask)


def mse(pred: jax.Array, target: jax.Array, lengths: Optional[jax.Array] = None) -> jax.Array:
  """Mean squared error over valid steps: ``mean((pred - target)**2)``.

  Args:
    pred, target: float ``[*B, T, O]`` (or ``[*B, O]`` without ``lengths``),
      same shape.
    lengths: optional int ``[*B]``; only steps ``t < lengths`` count.
  """
  _check_float(pred, "pred")
  target = jnp.asarray(target)
  if tuple(pred.shape) != tuple(target.shape):
    raise ValueError(f"target must have the shape of pred {tuple(pred.shape)}, "
                     f"got {tuple(target.shape)}.")
  values = optax.losses.squared_error(pred, target.astype(pred.dtype))
  return _elementwise_loss(values, lengths, "mse")


def binary_cross_entropy(logits: jax.Array, targets: jax.Array,
                         lengths: Optional[jax.Array] = None) -> jax.Array:
  """Binary cross-entropy from logits: ``max(z,0) - z*y + log1p(exp(-|z|))``.

  Args:
    logits: float ``[*B, T, O]`` (or ``[*B, O]``), pre-sigmoid.
    targets: same shape, values in [0, 1] (checked when concrete).
    lengths: optional int ``[*B]``; only steps ``t < lengths`` count.

  Raises:
    ValueError: a concrete target outside ``[0, 1]``.
  """
  _check_float(logits, "logits")
  targets = jnp.asarray(targets)
  if tuple(logits.shape) != tuple(targets.shape):
    raise ValueError(f"targets must have the shape of logits {tuple(logits.shape)}, "
                     f"got {tuple(targets.shape)}.")
  check_targets01(targets)
  values = optax.losses.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype))
  return _elementwise_loss(values, lengths, "binary_cross_entropy")


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  lengths: Optional[jax.Array] = None) -> jax.Array:
  """Softmax cross-entropy with integer labels, stable log-softmax.

  Args:
    logits: float ``[*B, T, C]`` (or ``[*B, C]`` without ``lengths``).
    labels: int ``[*B, T]`` (or ``[*B]``) in ``[0, C)`` (checked when concrete).
    lengths: optional int ``[*B]``; only steps ``t < lengths`` count.

  Raises:
    ValueError: a concrete label outside ``[0, C)``.
  """
  _check_float(logits, "logits")
  labels = jnp.asarray(labels)
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be an integer array (class indices), got dtype {labels.dtype}.")
  if tuple(labels.shape) != tuple(logits.shape[:-1]):
    raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])} (logits shape without "
                     f"the class axis), got {tuple(labels.shape)}.")
  check_labels(labels, logits.shape[-1])
  nll = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
  if lengths is None:
    return jnp.mean(nll)
  if nll.ndim < 1:
    raise ValueError(f"cross_entropy with lengths needs [*B, T, C] logits, got {logits.shape}.")
  mask = _time_mask(lengths, nll.shape[:-1], nll.shape[-1])
  return _masked_mean(nll, mask)


def accuracy(logits: jax.Array, labels: jax.Array,
             lengths: Optional[jax.Array] = None) -> jax.Array:
  """Fraction of correct predictions over valid steps.

  Integer ``labels`` ``[*B(, T)]``: ``argmax(logits) == labels`` (multi-class).
  Float ``labels`` of the shape of ``logits``: ``(logits > 0) == (labels > 0.5)``
  (binary, from logits), counted per element.
  """
  _check_float(logits, "logits")
  labels = jnp.asarray(labels)
  if jnp.issubdtype(labels.dtype, jnp.integer):
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
      raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}.")
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    if lengths is None:
      return jnp.mean(hit)
    return _masked_mean(hit, _time_mask(lengths, hit.shape[:-1], hit.shape[-1]))
  if tuple(labels.shape) != tuple(logits.shape):
    raise ValueError(f"labels must have the shape of logits {tuple(logits.shape)}, "
                     f"got {tuple(labels.shape)}.")
  hit = ((logits > 0) == (labels > 0.5)).astype(jnp.float32)
  return _elementwise_loss(hit, lengths, "accuracy")


LOSSES = {"mse": mse, "cross_entropy": cross_entropy,
          "binary_cross_entropy": binary_cross_entropy}


def unpack_batch(batch, argname="batch"):
  """``(x, y, lengths)`` from a :class:`~rnnjax.train.Batch`, a tuple ``(x, y[, lengths])``
  or a dict with keys ``"x"``, ``"y"`` (and optionally ``"lengths"``)."""
  if isinstance(batch, dict):
    missing = [k for k in ("x", "y") if k not in batch]
    if missing:
      raise TypeError(f"{argname} dict needs keys 'x' and 'y' (and optionally 'lengths'), "
                      f"missing {missing}; got keys {sorted(batch)}.")
    return batch["x"], batch["y"], batch.get("lengths")
  if isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
    x, y = batch[0], batch[1]
    return x, y, (batch[2] if len(batch) == 3 else None)
  raise TypeError(f"{argname} must be a Batch(x, y, lengths), a tuple (x, y) or (x, y, lengths), "
                  f"or a dict with 'x' and 'y'; got {type(batch).__name__}.")


_MODEL_LOSS_CACHE = {}


def model_loss(model: Any, loss: str = "mse") -> Callable[..., Tuple[jax.Array, dict]]:
  """``loss_fn(params, batch, key=None) -> (loss, aux)`` for an rnnjax model.

  ``model`` is anything with ``apply(params, xs, lengths=, key=)`` (and
  ``logits(...)`` for the losses from logits), e.g. :class:`rnnjax.SequenceModel`.
  ``batch`` is ``(x [B, T, I], y, lengths)`` (see :func:`unpack_batch`).

  * ``"mse"``: :func:`mse` of ``model.apply`` (after the readout activation);
  * ``"cross_entropy"``: :func:`cross_entropy` of ``model.logits``, integer
    ``y``; aux ``{"accuracy"}`` (argmax);
  * ``"binary_cross_entropy"``: :func:`binary_cross_entropy` of
    ``model.logits`` (so a ``Dense(1, "sigmoid")`` readout trains on its
    pre-activation, exactly Keras' BCE on the sigmoid output but stable); aux
    ``{"accuracy"}`` (logit > 0).

  ``lengths`` masks the loss when the model returns sequences (``return_sequences=True``);
  otherwise the model already reads each sequence's last valid step. ``key``
  drives dropout (None: no dropout, as in evaluation). The returned function is
  cached per ``(model, loss)`` so that repeated :func:`fit` calls reuse their
  compiled step.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {loss!r}.")
  if not hasattr(model, "apply"):
    raise TypeError(f"model must have an apply(params, xs, ...) method (e.g. rnnjax.SequenceModel), "
                    f"got {type(model).__name__}.")
  try:
    cache_key = (model, loss)
    hash(cache_key)
  except TypeError:
    cache_key = None
  if cache_key is not None and cache_key in _MODEL_LOSS_CACHE:
    return _MODEL_LOSS_CACHE[cache_key]
  use_logits = loss != "mse" and hasattr(model, "logits")
  forward = model.logits if use_logits else model.apply

  def loss_fn(params, batch, key=None):
    x, y, lengths = unpack_batch(batch)
    out = forward(params, x, lengths=lengths, key=key)
    seq_lengths = lengths if (lengths is not None and jnp.ndim(out) == jnp.ndim(x)) else None
    value = LOSSES[loss](out, y, seq_lengths)
    aux = {}
    if loss != "mse":
      aux["accuracy"] = accuracy(out, y, seq_lengths)
    return value, aux

  loss_fn.__name__ = f"model_loss_{loss}"
  loss_fn.__qualname__ = loss_fn.__name__
  if cache_key is not None:
    _MODEL_LOSS_CACHE[cache_key] = loss_fn
  return loss_fn
