"""Shared machinery of the diagnostics: validation, the flattened state map, batching.

Every diagnostic is written for one sequence (``xs [T, I]``, an unbatched
carry, an optional scalar length) in terms of the *flattened state map*

.. math::  s_t = F_t(s_{t-1}) = \\begin{cases} \\mathrm{vec}(\\mathrm{cell}(p, h_{t-1}, x_t)_0) & t < L \\\\
           s_{t-1} & t \\ge L \\end{cases}

where ``s`` concatenates the carry's leaves (``jax.flatten_util.ravel_pytree``
order: for an LSTM ``[h, c]``, for a :class:`rnnjax.Stack` layer by layer), and
is then mapped over the (flattened) batch with ``jax.vmap``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnnjax import _checks
from rnnjax import _layout
from rnnjax._layout import mask_past_length as mask_past_length  # noqa: F401  (NaN past a length)
from rnnjax._scan import _split_sequence_shapes


def jit(**kw):
  """``functools.partial(jax.jit, **kw)``: how the diagnostics compile their programs.

  (XLA's ``xla_backend_optimization_level=0`` was measured: it cuts compile
  time by ~20-50% but makes the power method 3-7x slower to run, so the
  defaults are kept.)
  """
  return functools.partial(jax.jit, **kw)


def serialize(*values):
  """``jax.lax.optimization_barrier``: everything after it waits for all of ``values``.

  Placed before each LAPACK call (SVD, QR) inside the diagnostics' loops so
  that no two batched LAPACK custom calls run at the same time: on XLA:CPU
  each blocks an intra-op pool thread while it waits for its own sub-tasks,
  and two of them on a 2-thread pool deadlock (observed with jax 0.10.2:
  a batched SVD and a batched QR of the power method, both waiting in
  ``ParallelBatchMap``).
  """
  return jax.lax.optimization_barrier(values)


@contextlib.contextmanager
def single_threaded_blas():
  """Limits OpenBLAS/MKL to one thread inside the block (if threadpoolctl is installed).

  The exact method runs one small LAPACK SVD / QR per step; threads do not
  speed those up, and on a busy CPU OpenBLAS's spinning threads make them up
  to 45x slower (measured: a 128x128 SVD, 2.1 ms single-threaded vs 95 ms
  with 2 threads on a loaded 2-core machine). Used by :func:`diagnose`,
  which blocks on its results inside the block. Without threadpoolctl this
  does nothing.
  """
  try:
    import scipy.linalg.cython_lapack  # noqa: F401  (load the LAPACK that jaxlib calls)
    from threadpoolctl import threadpool_limits
  except ImportError:
    yield
    return
  with threadpool_limits(limits=1, user_api="blas"):
    yield


class LeafRange(NamedTuple):
  """Where the selected carry leaf (or all of them) lies in the flat state.

  ``index``: the leaf's position in ``jax.tree_util.tree_leaves(carry)``, or
  None for all leaves; ``start:stop``: its slice of the flat state; ``size``:
  the flat state size D.
  """
  index: Optional[int]
  start: int
  stop: int
  size: int


def leaf_names(template: Any) -> list:
  """Names of the carry's leaves, e.g. ``['.h', '.c']`` for an LSTM, ``['']`` for an array."""
  paths, _ = jax.tree_util.tree_flatten_with_path(template)
  return [jax.tree_util.keystr(p) for p, _ in paths]


def resolve_leaf(template, leaf, argname: str = "leaf") -> LeafRange:
  """Turns ``leaf`` (None, an int index or a name) into a :class:`LeafRange`.

  ``template`` is an *unbatched* carry (leaves ``[S_j]``). Names are the
  ``jax.tree_util.keystr`` of the leaf's path with or without the leading dot:
  ``"h"``/``"c"`` for an LSTM, ``"[1].c"`` for the second layer of a Stack.
  """
  leaves = jax.tree_util.tree_leaves(template)
  sizes = [int(np.prod(jnp.shape(l))) for l in leaves]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
  total = int(offsets[-1])
  if leaf is None:
    return LeafRange(None, 0, total, total)
  names = leaf_names(template)
  if isinstance(leaf, (bool, np.bool_)):
    raise TypeError(f"{argname} must be None, an int leaf index or a leaf name, got {leaf!r}.")
  if isinstance(leaf, (int, np.integer)):
    j = int(leaf)
    if not -len(leaves) <= j < len(leaves):
      raise ValueError(f"{argname}={leaf} is out of range: the carry has {len(leaves)} "
                       f"leaves {names}.")
    j %= len(leaves)
  elif isinstance(leaf, str):
    cands = [j for j, n in enumerate(names) if n == leaf or n.lstrip(".") == leaf.lstrip(".")]
    if len(cands) != 1:
      raise ValueError(f"{argname}={leaf!r} does not name a carry leaf; the carry's leaves "
                       f"are {[n.lstrip('.') for n in names]} (or pass an int index).")
    j = cands[0]
  else:
    raise TypeError(f"{argname} must be None, an int leaf index or a leaf name, got "
                    f"{type(leaf).__name__}: {leaf!r}.")
  return LeafRange(j, int(offsets[j]), int(offsets[j + 1]), total)


class Prepared(NamedTuple):
  batch_shape: tuple
  T: int
  carry: object          # batched carry, leaves [*B, S]
  lengths: object        # int [*B] or None
  template: object       # unbatched carry (shape structs)
  leaf: LeafRange


def prepare(cell, params, xs, carry, lengths, leaf) -> Prepared:
  """Validates the common arguments (naming them in errors) and fills the defaults."""
  if not callable(cell) or not hasattr(cell, "initial_carry"):
    raise TypeError(f"cell must be an rnnjax cell (callable as cell(params, carry, x), with "
                    f"initial_carry), got {type(cell).__name__}.")
  batch_shape, T = _split_sequence_shapes(cell, params, xs, time_major=False)
  if T < 1:
    raise ValueError(f"xs must have at least one time step, got shape {xs.shape}.")
  ref = jax.eval_shape(lambda: cell.initial_carry(batch_shape))
  if carry is None:
    carry = cell.initial_carry(batch_shape)
  else:
    _checks.check_carry(carry, ref)
  if lengths is not None:
    lengths = _checks.check_lengths(lengths, batch_shape, T)
  template = jax.eval_shape(lambda: cell.initial_carry(()))
  return Prepared(batch_shape, T, carry, lengths, template, resolve_leaf(template, leaf))


def check_choice(value, choices, argname):
  if value not in choices:
    raise ValueError(f"{argname} must be one of {choices}, got {value!r}.")
  return value


def unraveler(template):
  """The inverse of :func:`flatten` for carries shaped like ``template``."""
  return ravel_pytree(jax.tree_util.tree_map(lambda l: jnp.zeros(l.shape, l.dtype), template))[1]


def make_flat_step(cell, params, template):
  """Returns ``F(s, x, t, length) -> s'``, the masked flattened step (module docstring)."""
  unravel = unraveler(template)

  def f(s, x, t, length):
    new, _ = cell(params, unravel(s), x)
    s_new = ravel_pytree(new)[0].astype(s.dtype)
    if length is None:
      return s_new
    return jnp.where(t < length, s_new, s)
  return f


def flatten(carry):
  """Unbatched carry -> flat state ``[D]``."""
  return ravel_pytree(carry)[0]


def forward_states(step, s0, xs, length):
  """Runs the flat map; returns ``S_in [T, D]`` with ``S_in[t] = s_{t-1}`` (the step's input)."""
  T = xs.shape[0]
  ts = jnp.arange(T)

  def body(s, inp):
    x, t = inp
    return step(s, x, t, length), s
  _, s_in = jax.lax.scan(body, s0, (xs, ts))
  return s_in


def safe_log(x):
  """``log(x)`` with ``log(0) = -inf`` and no NaN gradient concerns (values only)."""
  return jnp.log(jnp.where(x > 0, x, 0.0))


def renormalise(block, logscale, axis_rows=None):
  """Divides ``block`` by its max-abs and adds the log of it to ``logscale``.

  ``block`` ``[..., *rest]`` with one scale per leading index when
  ``axis_rows`` gives the number of leading (per-scale) axes; zero blocks
  stay zero with ``logscale = -inf``.
  """
  nlead = 0 if axis_rows is None else axis_rows
  red = tuple(range(nlead, block.ndim))
  n = jnp.max(jnp.abs(block), axis=red)
  safe = jnp.where(n > 0, n, 1.0)
  block = block / safe.reshape(safe.shape + (1,) * (block.ndim - nlead))
  return block, logscale + safe_log(n)


def per_sequence(fn, prep: Prepared, xs, *extra_batched):
  """Maps ``fn(xs_seq, carry_seq, length_seq, *extra_seq)`` over the batch.

  Returns its output with leading ``batch_shape`` restored (or unbatched).
  ``extra_batched`` are arrays with a leading flat-batch axis (e.g. keys).
  """
  nb = len(prep.batch_shape)
  if nb == 0:
    return fn(xs, prep.carry, prep.lengths, *[e[0] for e in extra_batched])
  bsize = math.prod(prep.batch_shape)
  xs_f = xs.reshape((bsize,) + xs.shape[-2:])
  carry_f = _layout.flatten_batch(prep.carry, prep.batch_shape)
  len_f = None if prep.lengths is None else jnp.reshape(prep.lengths, (bsize,))
  out = jax.vmap(fn)(xs_f, carry_f, len_f, *extra_batched)
  return jax.tree_util.tree_map(lambda o: o.reshape(prep.batch_shape + o.shape[1:]), out)


def check_key(key):
  """Validates ``key`` (default ``jax.random.key(0)``)."""
  if key is None:
    return jax.random.key(0)
  _checks.check_key(key)
  return key


def _rbg_key(key):
  """An ``rbg`` key seeded with ``key``'s bits.

  Random draws use XLA's RngBitGenerator: drawing from a threefry key costs
  about two seconds of XLA:CPU compile time per program, rbg a tenth of that.
  Works on traced keys, so everything stays jit-able.
  """
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    data = jax.random.key_data(key)
  else:
    data = key
  data = jnp.ravel(data).astype(jnp.uint32)
  data = jnp.concatenate([data, data[::-1] ^ jnp.uint32(0x9E3779B9)])
  data = jnp.concatenate([data] * 4)[:4]
  return jax.random.wrap_key_data(data, impl="rbg")


def random_normal(key, shape, dtype):
  return jax.random.normal(_rbg_key(key), shape, dtype)


def random_rademacher(key, shape, dtype):
  return jax.random.rademacher(_rbg_key(key), shape, dtype)


def state_dtype(carry):
  """The dtype of the flat state (``ravel_pytree`` promotes the leaves to it)."""
  return jnp.result_type(*jax.tree_util.tree_leaves(carry))


def num_sequences(xs) -> int:
  """Size of the flat batch of ``xs [*B, T, I]`` (1 when unbatched)."""
  return math.prod(xs.shape[:-2]) if xs.ndim > 2 else 1


def check_positive(value, argname):
  return _checks.check_positive_int(value, argname)
