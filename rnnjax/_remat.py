"""Rematerialised scans: a backward pass whose memory grows like sqrt(T).

Under ``jax.grad`` a scan of ``T`` steps keeps every step's residuals (the
gate activations, the carry) until the backward loop reads them, so its
memory grows like ``T``. :func:`remat_scan` splits the time axis into chunks
of ``k`` steps and runs an outer ``jax.lax.scan`` over the chunks whose body
is ``jax.checkpoint`` of the inner scan of one chunk: the forward pass keeps
only the carry at each chunk boundary (``T / k`` carries); the backward pass
re-runs one chunk's forward at a time, keeping its ``k`` steps of residuals,
and back-propagates through it. Memory ~ ``T/k + k`` carries/steps, minimal
at ``k ~ sqrt(T)`` (the default); time ~ one extra forward pass, ``(2F + B) / (F + B)``
of the plain forward+backward (about 1.33x when the forward F is a third of
it, as for the fused LSTM; measured in benchmarks/RESULTS.md). This is the "checkpoint every k steps" scheme of
Chen et al., "Training Deep Nets with Sublinear Memory Cost" (2016),
arXiv:1604.06174, and Gruslys et al., "Memory-Efficient Backpropagation
Through Time" (NeurIPS 2016).

Lengths and reverse. Chunk ``c`` covers steps ``[c k, (c+1) k)``; its
per-chunk lengths are ``clip(lengths - c k, 0, k)``. Forward, the chunks run
first to last. With ``reverse=True`` they run last to first and each chunk is
itself scanned in reverse within its own (per-chunk) length, so a sequence of
length ``L`` is read ``L-1, ..., 0`` with its padding untouched — the same
"reverse within each sequence's own length" semantics as :func:`rnnjax.scan`.
When ``k`` does not divide ``T`` the last ``T mod k`` steps form one extra,
shorter chunk run outside the outer loop (also checkpointed).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp


def default_chunk(T: int) -> int:
  """``ceil(sqrt(T))``: the chunk length that minimises ``T/k + k``."""
  return max(1, math.isqrt(max(T - 1, 0)) + 1) if T > 1 else 1


def check_remat(remat, T: Optional[int] = None):
  """Validates ``remat`` (None | False | True | positive int) and returns the chunk or None."""
  if remat is None or remat is False:
    return None
  if remat is True:
    return default_chunk(T) if T is not None else True
  if isinstance(remat, bool) or not isinstance(remat, int) or remat < 1:
    raise ValueError(f"remat must be None, True or a positive int chunk length, got {remat!r}.")
  return remat


def remat_scan(scan_fn: Callable, cell, params, xs_tm, carry, lengths=None, *,
               reverse: bool = False, chunk: Optional[int] = None):
  """Scans ``cell`` over ``xs_tm`` in checkpointed chunks of ``chunk`` steps.

  Args:
    scan_fn: ``scan_fn(cell, params, xs_chunk, carry, lengths=l, reverse=r)
      -> (final_carry, ys_chunk)`` on time-major input, e.g.
      ``functools.partial(rnnjax.scan, time_major=True, impl="fused")``. It
      must honour ``lengths`` (steps ``t >= l`` keep the carry and output
      zeros) and ``reverse`` (read backwards within each length) as
      :func:`rnnjax.scan` does.
    cell, params: the cell and its parameters.
    xs_tm: ``[T, *B, I]`` time-major inputs.
    carry: the initial carry (leaves ``[*B, S]``).
    lengths: ``None`` or int ``[*B]`` valid lengths.
    reverse: scan from the last valid step to the first.
    chunk: steps per checkpointed chunk ``k``; default ``ceil(sqrt(T))``.

  Returns:
    ``(final_carry, ys [T, *B, O])``, equal (values and gradients) to
    ``scan_fn`` over the whole sequence.
  """
  T = xs_tm.shape[0]
  k = default_chunk(T) if chunk is None or chunk is True else chunk
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"chunk must be a positive int, got {chunk!r}.")
  k = min(k, T) if T > 0 else 1
  n, r = divmod(T, k)
  if lengths is not None:
    lengths = jnp.asarray(lengths)

  def run_chunk(params, xs_c, c, start):
    lc = None if lengths is None else jnp.clip(lengths - start.astype(lengths.dtype), 0, xs_c.shape[0])
    return scan_fn(cell, params, xs_c, c, lengths=lc, reverse=reverse)

  run_chunk_ckpt = jax.checkpoint(run_chunk, prevent_cse=False)

  xs_main = xs_tm[:n * k].reshape((n, k) + xs_tm.shape[1:])
  starts = jnp.arange(n, dtype=jnp.int32) * k

  def body(c, inp):
    xs_c, start = inp
    return run_chunk_ckpt(params, xs_c, c, start)

  def tail(c):
    return run_chunk_ckpt(params, xs_tm[n * k:], c, jnp.int32(n * k))

  if not reverse:
    c, ys_main = jax.lax.scan(body, carry, (xs_main, starts))
    ys_main = ys_main.reshape((n * k,) + ys_main.shape[2:])
    if r:
      c, ys_tail = tail(c)
      ys_main = jnp.concatenate([ys_main, ys_tail], axis=0)
    return c, ys_main
  c = carry
  ys_tail = None
  if r:
    c, ys_tail = tail(c)
  c, ys_main = jax.lax.scan(body, c, (xs_main, starts), reverse=True)
  ys_main = ys_main.reshape((n * k,) + ys_main.shape[2:])
  if ys_tail is not None:
    ys_main = jnp.concatenate([ys_main, ys_tail], axis=0)
  return c, ys_main
