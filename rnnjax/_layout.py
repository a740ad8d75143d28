"""Sequence layout and masking, shared by the scan engines and the diagnostics.

Shapes (``*B`` is any number of leading batch dims, possibly none)::

  xs      [*B, T, I]   (time_major=True: [T, *B, I])
  flat    [T, B, I]    one flattened batch dim (none when *B is empty)
  lengths int [*B]     step t of sequence b is valid when t < lengths[b]

Padding (steps ``t >= lengths[b]``) must influence nothing, values or
gradients: :func:`mask_padding` replaces padded inputs by zeros before any
arithmetic (a NaN or Inf there would otherwise reach the gradients through
``jnp.where``'s unselected branch, whose cotangent is ``0 * NaN``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def to_flat_time_major(xs, batch_shape, T, time_major):
  """``[*B, T, I]`` (or ``[T, *B, I]``) -> ``[T, B, I]`` (``[T, I]`` when unbatched)."""
  nb = len(batch_shape)
  bsize = math.prod(batch_shape) if nb else None
  if time_major:
    return xs.reshape((T,) + ((bsize,) if nb else ()) + xs.shape[-1:])
  xs = xs.reshape(((bsize,) if nb else ()) + (T,) + xs.shape[-1:])
  return jnp.swapaxes(xs, 0, 1) if nb else xs


def flatten_batch(tree, batch_shape):
  """Leaves ``[*B, S]`` -> ``[B, S]`` (unchanged when unbatched)."""
  nb = len(batch_shape)
  if not nb:
    return tree
  bsize = math.prod(batch_shape)
  return jax.tree_util.tree_map(lambda c: c.reshape((bsize,) + c.shape[nb:]), tree)


def restore_layout(final, ys, batch_shape, T, time_major):
  """Time-major flat-batch results back to the caller's layout."""
  nb = len(batch_shape)
  if nb:
    if not time_major:
      ys = jnp.swapaxes(ys, 0, 1)
      ys = ys.reshape(batch_shape + (T,) + ys.shape[-1:])
    else:
      ys = ys.reshape((T,) + batch_shape + ys.shape[-1:])
  final = jax.tree_util.tree_map(lambda c: c.reshape(batch_shape + c.shape[-1:]), final)
  return final, ys


def step_masks(lengths, T):
  """``[T, *lengths.shape]`` bool: step t of sequence b is valid (``t < lengths[b]``)."""
  t = jnp.arange(T, dtype=lengths.dtype).reshape((T,) + (1,) * lengths.ndim)
  return t < lengths[None]


def broadcast_mask(mask, x):
  """``mask`` ``[*lead]`` reshaped to broadcast against ``x`` ``[*lead, ...]``."""
  return mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def tree_where(mask, new, old):
  """``where(mask, new, old)`` leaf by leaf, ``mask`` over the leading dims."""
  return jax.tree_util.tree_map(lambda n, o: jnp.where(broadcast_mask(mask, n), n, o), new, old)


def mask_padding(xs_tm, lengths):
  """Zeros at padded steps of flat time-major ``xs_tm`` ``[T, (B,) I]``; ``lengths`` ``[(B)]``."""
  if lengths is None:
    return xs_tm
  masks = step_masks(lengths, xs_tm.shape[0])
  return jnp.where(broadcast_mask(masks, xs_tm), xs_tm, jnp.zeros((), xs_tm.dtype))


def mask_past_length(values, length, axis_T: int = 0, fill=jnp.nan):
  """Sets entries with time index ``>= length`` to ``fill`` (time on ``axis_T``)."""
  if length is None:
    return values
  T = values.shape[axis_T]
  valid = jnp.arange(T) < length
  shape = [1] * values.ndim
  shape[axis_T] = T
  return jnp.where(valid.reshape(shape), values, fill)
