"""Linear-recurrence cells on ``jax.lax.associative_scan``, and ``rnnjax.scan``'s dispatch.

:func:`linear_scan` runs a cell that declares ``linear_recurrence(params, xp)
-> (a, b)`` (``h_t = a_t * h_{t-1} + b_t``, see ``rnnjax._linear_cells``)
over the whole sequence at once: the input projection for all steps as one
matmul, the coefficients for all steps, then one associative scan in
``O(log T)`` depth, then the outputs for all steps. Cells with a log form
(minGRU, minLSTM) are scanned in log space,
``log h_t = logaddexp(log a_t + log h_{t-1}, log b_t)``, with the initial
carry's contribution ``(prod a) h_0`` added from a cumulative sum of
``log a`` (so any real ``h_0``, not only positive ones, is exact). Masking:
past a sequence's length ``a = 1`` and ``b = 0`` (the state is kept) and the
output is zero, as in ``rnnjax.scan``; ``reverse`` reads each sequence
backwards within its length. A :class:`rnnjax.Stack` of linear cells runs
layer by layer. Gradients are JAX's (the scan is differentiable).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rnnjax.parallel import _linear_scan as ls
from rnnjax._scan import resolve_carry_and_lengths
from rnnjax.parallel._newton import METHODS, newton_scan

IMPLS = ("associative",) + METHODS


def _is_stack(cell):
  # Duck-typed (an engine does not import the layers): rnnjax.Stack has a tuple of cells.
  return isinstance(getattr(cell, "cells", None), tuple)


def is_linear(cell) -> bool:
  """Whether ``cell`` (or every layer of a Stack) declares a linear recurrence."""
  if _is_stack(cell):
    return all(is_linear(c) for c in cell.cells)
  return hasattr(cell, "linear_recurrence") and hasattr(cell, "carry_to_state")


def _check_linear(cell):
  if not is_linear(cell):
    raise ValueError(
        f"impl='associative' needs a cell whose recurrence is linear in its state "
        f"(MinGRU, MinLSTM, LRU, or a Stack of them); {type(cell).__name__} is not: use "
        "impl='deer', 'quasi_deer', 'elk' or 'quasi_elk' (rnnjax.parallel.newton_scan) or "
        "'reference'.")


def _one(cell, params, xs, carry, valid, reverse):
  """One sequence: ``xs [T, I]``, ``carry [S]``, ``valid [T]``."""
  xp = cell.input_projection(params, xs)                 # [T, G]
  h0 = cell.carry_to_state(carry)
  if reverse:
    xp, valid = xp[::-1], valid[::-1]
  logs = cell.log_recurrence(params, xp)
  v = valid[:, None]
  if logs is not None:
    log_a, log_b = logs
    big_neg = jnp.asarray(jnp.finfo(log_b.dtype).min / 8, log_b.dtype)
    log_a = jnp.where(v, log_a, 0.0)
    log_b = jnp.where(v, log_b, big_neg)
    # h_t = exp(log-space scan of b from zero) + exp(cumsum log a) * h0.
    zero_start = jnp.full(h0.shape, big_neg, log_b.dtype)
    log_h = ls.log_space_scan(log_a, log_b, zero_start)
    h = jnp.exp(log_h) + jnp.exp(jnp.cumsum(log_a, axis=0)) * h0
  else:
    a, b = cell.linear_recurrence(params, xp)
    a = jnp.where(v, a, jnp.ones_like(a))
    b = jnp.where(v, b, jnp.zeros_like(b))
    h = ls.diagonal_scan(a, b, h0)
  ys = cell.linear_output(params, h, xp).astype(carry.dtype)
  ys = jnp.where(v, ys, jnp.zeros_like(ys))
  final = cell.state_to_carry(h[-1], carry.dtype)
  if reverse:
    ys = ys[::-1]
  return final, ys


def linear_scan(cell, params, xs, carry=None, *, lengths=None, reverse=False):
  """``rnnjax.scan`` for linear-recurrence cells on an associative scan.

  Args and returns as ``rnnjax.scan`` (batch-major ``xs`` ``[*B, T, I]``):
  ``(final_carry, ys)``. Raises ``ValueError`` for a cell without a linear
  recurrence, naming the methods to use instead.
  """
  _check_linear(cell)
  if not hasattr(xs, "ndim") or xs.ndim < 2:
    raise ValueError(f"xs must be an array of rank >= 2 ([T, I] or [*batch, T, I]), got "
                     f"{getattr(xs, 'shape', type(xs).__name__)}.")
  if not jnp.issubdtype(xs.dtype, jnp.floating):
    raise TypeError(f"xs must be a floating array, got dtype {xs.dtype}.")
  batch_shape, T = tuple(xs.shape[:-2]), xs.shape[-2]
  cell.check_input(params, xs, argname="xs")
  carry, lengths = resolve_carry_and_lengths(cell, params, batch_shape, T, carry, lengths)
  if _is_stack(cell):
    finals = []
    for l, (c, p) in enumerate(zip(cell.cells, params)):
      f, xs = linear_scan(c, p, xs, carry[l], lengths=lengths, reverse=reverse)
      finals.append(f)
    return tuple(finals), xs
  N = math.prod(batch_shape)
  xs_f = xs.reshape((N, T, xs.shape[-1]))
  c_f = carry.reshape((N, carry.shape[-1]))
  if lengths is None:
    valid = jnp.ones((N, T), bool)
  else:
    valid = jnp.arange(T)[None, :] < jnp.reshape(jnp.asarray(lengths), (N, 1))
    xs_f = jnp.where(valid[..., None], xs_f, jnp.zeros_like(xs_f))  # padding: zeros, as rnnjax.scan
  final, ys = jax.vmap(lambda x, c, v: _one(cell, params, x, c, v, reverse))(xs_f, c_f, valid)
  return final.reshape(batch_shape + final.shape[-1:]), ys.reshape(batch_shape + (T,) + ys.shape[-1:])


def scan_dispatch(cell, params, xs, carry=None, *, lengths=None, reverse=False,
                  time_major=False, impl="associative"):
  """``rnnjax.scan``'s semantics for the parallel implementations.

  ``impl="associative"``: :func:`linear_scan`; ``"deer"``, ``"quasi_deer"``,
  ``"elk"``, ``"quasi_elk"``: :func:`rnnjax.parallel.newton_scan` with its defaults (its
  ``info`` is dropped; a solve that does not converge falls back to the
  sequential scan with a ``RuntimeWarning``). Returns ``(final_carry, ys)``.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")
  if time_major:
    if not hasattr(xs, "ndim") or xs.ndim < 2:
      raise ValueError(f"xs must have rank >= 2 ([T, *batch, I] with time_major=True), got "
                       f"{getattr(xs, 'shape', type(xs).__name__)}.")
    xs = jnp.moveaxis(xs, 0, -2)
  if impl == "associative":
    final, ys = linear_scan(cell, params, xs, carry, lengths=lengths, reverse=reverse)
  else:
    final, ys, _ = newton_scan(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                               method=impl)
  if time_major:
    ys = jnp.moveaxis(ys, -2, 0)
  return final, ys
