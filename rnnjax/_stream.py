"""Streaming inference: feed a sequence in chunks, carrying the state across them.

An RNN's state after ``t`` steps summarises everything it has read, so a long
(or still arriving) sequence can be processed a chunk at a time: scan the
chunk from the carry left by the previous one. The outputs are the same as
one :func:`rnnjax.scan` over the whole sequence (tested), while memory holds
one chunk. Only the forward direction streams (a reverse scan needs the end
of the sequence first).
"""

from __future__ import annotations

import functools
from typing import Iterable, Iterator, Optional

import jax
import jax.numpy as jnp


@functools.partial(jax.jit, static_argnames=("cell", "impl", "input_projection", "time_major"))
def _chunk_step(cell, params, xs, carry, lengths, start, *, impl, input_projection, time_major):
  from rnnjax._scan import scan
  k = xs.shape[0] if time_major else xs.shape[-2]
  lc = None if lengths is None else jnp.clip(lengths - start.astype(lengths.dtype), 0, k)
  return scan(cell, params, xs, carry, lengths=lc, time_major=time_major, impl=impl,
              input_projection=input_projection)


def stream_chunks(cell, params, chunks: Iterable, carry=None, *, lengths=None,
                  impl: str = "auto", input_projection: str = "auto",
                  time_major: bool = False) -> Iterator:
  """Scans each chunk of ``chunks`` from the carry the previous one left.

  Args:
    cell, params: the cell and its parameters.
    chunks: an iterable of input chunks ``[*B, k_i, I]`` (``[k_i, *B, I]``
      with ``time_major=True``); chunk lengths ``k_i`` may differ (each
      distinct length compiles once).
    carry: the initial carry (default zeros).
    lengths: optional int ``[*B]`` valid lengths of the whole sequence; a
      sequence's steps at or past its length keep its carry and output zeros,
      as in :func:`rnnjax.scan`.
    impl, input_projection, time_major: as in :func:`rnnjax.scan`.

  Yields:
    ``(carry, ys_chunk)`` after each chunk.
  """
  from rnnjax._scan import _params_dtype
  start = 0
  for xs in chunks:
    if carry is None:
      batch_shape = tuple(xs.shape[1:-1] if time_major else xs.shape[:-2])
      carry = cell.initial_carry(batch_shape, dtype=_params_dtype(params))
    carry, ys = _chunk_step(cell, params, xs, carry, None if lengths is None else jnp.asarray(lengths),
                            jnp.int32(start), impl=impl, input_projection=input_projection,
                            time_major=time_major)
    start += xs.shape[0] if time_major else xs.shape[-2]
    yield carry, ys


def stream(cell, params, xs, *, chunk: int, carry=None, lengths=None, impl: str = "auto",
           input_projection: str = "auto", time_major: bool = False):
  """Runs ``cell`` over ``xs`` in chunks of ``chunk`` steps (streaming inference).

  Equal to ``rnnjax.scan(cell, params, xs, carry, lengths=lengths)`` (the
  forward direction), computed chunk by chunk with the carry passed on, so
  device memory holds one chunk's activations at a time. The chunks are
  run by one jitted function (compiled once for ``chunk`` and once for the
  remainder ``T mod chunk``).

  Args:
    cell, params, carry, lengths, impl, input_projection, time_major: as in
      :func:`rnnjax.scan`.
    xs: ``[*B, T, I]`` (``[T, *B, I]`` with ``time_major=True``); may be a
      NumPy array on the host: each chunk is moved to the device when used.
    chunk: steps per chunk (a positive int).

  Returns:
    ``(final_carry, ys)`` with ``ys`` ``[*B, T, O]`` (``[T, *B, O]``).
  """
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f"chunk must be a positive int, got {chunk!r}.")
  if not hasattr(xs, "ndim") or xs.ndim < 2:
    raise ValueError(f"xs must be an array of rank >= 2 ([*B, T, I]), got {getattr(xs, 'shape', xs)!r}.")
  axis = 0 if time_major else xs.ndim - 2
  T = xs.shape[axis]
  idx = lambda s: (slice(None),) * axis + (slice(s, min(s + chunk, T)),)
  chunks = (xs[idx(s)] for s in range(0, T, chunk))
  outs = []
  for carry, ys in stream_chunks(cell, params, chunks, carry, lengths=lengths, impl=impl,
                                 input_projection=input_projection, time_major=time_major):
    outs.append(ys)
  return carry, jnp.concatenate(outs, axis=axis)
