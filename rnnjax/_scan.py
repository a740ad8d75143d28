"""The scan engine: run a cell over a sequence with ``jax.lax.scan``.

Shapes (``*B`` is any number of leading batch dims, possibly none)::

  xs      [*B, T, I]   (time_major=True: [T, *B, I])
  ys      [*B, T, O]   (time_major=True: [T, *B, O])
  carry   cell.initial_carry(B) structure, leaves [*B, S]
  lengths int [*B]

Input projection. Every cell splits its step into an input projection
``x -> x W_i + b`` (all gates in one matmul) and a recurrent update (one fused
recurrent matmul per step). ``input_projection`` picks where the first runs:

* ``"hoisted"``: once for all T steps, as one ``[T*B, I] x [I, G*H]`` matmul
  before the loop (what cuDNN does; the default on GPU and TPU);
* ``"inloop"``: inside the loop, one ``[B, I] x [I, G*H]`` matmul per step
  (measured as fast or faster on XLA:CPU, the default there);
* ``"auto"``: by the backend of the default device, as above.

Both give the same values and gradients (tested).

Implementation (``impl``):

* ``"fused"`` (rnnjax/_fused.py): every cell of the protocol (rnnjax/_cells.py).
  A custom VJP whose backward loop does per step only the gate derivative and
  one ``[B, K*H] x [K*H, S]`` dot, emits the per-step gate gradients, and
  computes the weight, bias and input gradients as single large matmuls after
  the loop. With ``input_projection="auto"`` the projection is
  :func:`rnnjax._fused.choose_projection`'s (on CPU in-loop where every
  pre-activation block has both sides, e.g. SimpleRNN and LSTM; hoisted for
  the GRU and on GPU/TPU).
* ``"reference"``: a plain ``lax.scan`` of ``cell(params, carry, x)``
  (``input_projection`` as above), differentiated by JAX. Any cell.
* ``"auto"`` (default): ``"fused"`` when the cell supports it and
  ``cell.prefers_fused(backend)`` (every cell but the Jordan network, the
  reset-before GRU and a GRU with ``hidden_size > GRU_FUSED_MAX_HIDDEN``,
  which measured faster on the reference path on XLA:CPU), else
  ``"reference"``. :func:`auto_plan` tells which, and
  :func:`default_input_projection` the projection it uses.

Padding (steps ``t >= lengths[b]``) influences nothing, values or gradients:
the inputs there are replaced by zeros before any arithmetic
(``rnnjax/_layout.py``), so a NaN or Inf in padding stays harmless.

The fused path is a ``jax.custom_vjp``: reverse mode (``grad``, ``vjp``,
``jacrev``, grad of grad) works; forward mode (``jvp``, ``jacfwd``,
``jacfwd(jacrev)`` Hessians) is not defined for it, so pass
``impl="reference"`` for those.

Both implementations give the same values and gradients (tests/test_fastpath.py).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import _autotune
from rnnjax import _checks
from rnnjax import _fused
from rnnjax import _layout
from rnnjax import _remat

_PROJECTIONS = ("auto", "hoisted", "inloop")
_IMPLS = ("auto", "fused", "reference", "autotune", "associative", "deer", "quasi_deer", "elk",
          "quasi_elk")
_PARALLEL_IMPLS = ("associative", "deer", "quasi_deer", "elk", "quasi_elk")


def auto_plan(cell, backend: Optional[str] = None) -> tuple:
  """``(impl, input_projection)`` that ``impl="auto"`` and ``input_projection="auto"`` run.

  ``("fused", _fused.choose_projection(cell))`` when the fused path supports
  the cell and ``cell.prefers_fused(backend)``; else ``("reference", p)``
  with ``p`` ``"inloop"`` on CPU and ``"hoisted"`` elsewhere.
  """
  backend = backend or jax.default_backend()
  if _fused.supports(cell) and cell.prefers_fused(backend):
    return "fused", _fused.choose_projection(cell, backend)
  return "reference", "inloop" if backend == "cpu" else "hoisted"


def default_input_projection(backend: Optional[str] = None, cell=None) -> str:
  """The input-projection placement ``"auto"`` resolves to on ``backend``.

  With ``cell``: the placement :func:`rnnjax.scan` uses for it with
  ``impl="auto"`` (:func:`auto_plan`). Without: the reference path's
  placement, ``"inloop"`` on CPU and ``"hoisted"`` elsewhere.
  """
  backend = backend or jax.default_backend()
  if cell is not None:
    return auto_plan(cell, backend)[1]
  return "inloop" if backend == "cpu" else "hoisted"


def _params_dtype(params):
  """The promoted dtype of the floating leaves of ``params`` (None if there are none)."""
  leaves = [l for l in jax.tree_util.tree_leaves(params)
            if hasattr(l, "dtype") and jnp.issubdtype(l.dtype, jnp.floating)]
  return jnp.result_type(*leaves) if leaves else None


def resolve_carry_and_lengths(cell, params, batch_shape, T, carry, lengths):
  """The initial carry (default zeros in the params' dtype, so float64 params run a
  float64 recurrence) and the validated ``lengths``; shared by every scan engine."""
  if carry is None:
    carry = cell.initial_carry(batch_shape, dtype=_params_dtype(params))
  else:
    _checks.check_carry(carry, jax.eval_shape(lambda: cell.initial_carry(batch_shape)))
  if lengths is not None:
    lengths = _checks.check_lengths(lengths, batch_shape, T)
  return carry, lengths


def _split_sequence_shapes(cell, params, xs, time_major):
  """Validates cell, params and xs and returns (batch_shape, T)."""
  _checks.check_cell(cell)
  if not hasattr(xs, "ndim"):
    raise TypeError(f"xs must be an array, got {type(xs).__name__}.")
  if xs.ndim < 2:
    raise ValueError(
        f"xs must have rank >= 2 ([T, I] or [*batch, T, I]{' time-major [T, *batch, I]' if time_major else ''}), "
        f"got shape {xs.shape}.")
  if not jnp.issubdtype(xs.dtype, jnp.floating):
    raise TypeError(f"xs must be a floating array, got dtype {xs.dtype}.")
  if hasattr(cell, "check_input"):
    cell.check_input(params, xs, argname="xs")
  if time_major:
    return tuple(xs.shape[1:-1]), xs.shape[0]
  return tuple(xs.shape[:-2]), xs.shape[-2]


def scan(cell, params, xs, carry=None, *, lengths=None, reverse: bool = False,
         unroll: int = 1, time_major: bool = False,
         input_projection: str = "auto", impl: str = "auto", remat=None):
  """Runs ``cell`` over the time axis of ``xs``.

  Args:
    cell: an rnnjax cell (anything with ``initial_carry`` and
      ``__call__(params, carry, x)``; ``input_projection``/``recurrent_step``
      are used when present).
    params: the cell's parameters (checked against ``cell.init``'s structure
      and shapes when the cell has ``check_params``).
    xs: ``[*B, T, I]`` (or ``[T, *B, I]`` with ``time_major=True``).
    carry: initial carry; default ``cell.initial_carry(B)`` (zeros).
    lengths: optional int ``[*B]``. Steps ``t >= lengths[b]`` leave sequence
      b's carry unchanged and write zeros to its outputs; the final carry is
      the carry after its last valid step; inputs there influence nothing
      (values or gradients, even NaN). With ``reverse=True`` each sequence
      is read backwards *within its own length* (steps ``L-1, ..., 0``) and
      padding stays at the end. Range is checked when concrete; under ``jit``
      values outside [0, T] act as if clipped.
    reverse: scan from the last step to the first; ``ys`` stay aligned with
      ``xs`` (``ys[t]`` is the output after reading ``xs[t]``).
    unroll: passed to ``lax.scan``.
    time_major: whether the time axis is first.
    input_projection: ``"auto"``, ``"hoisted"`` or ``"inloop"`` (see module
      doc; both paths honour an explicit choice).
    impl: ``"auto"``, ``"fused"`` or ``"reference"`` (see module doc;
      forward-mode autodiff needs ``"reference"``); or a parallel-in-time
      method of :mod:`rnnjax.parallel`: ``"associative"`` (cells with a
      linear recurrence: MinGRU, MinLSTM, LRU), ``"deer"``, ``"quasi_deer"``,
      ``"elk"``, ``"quasi_elk"`` (Newton solves for any cell, falling back to
      the sequential scan with a warning when they do not converge). ``"auto"`` first
      consults the autotune cache (:func:`rnnjax.autotune`; timing on a miss
      only with ``impl="autotune"`` or ``RNNJAX_AUTOTUNE=1``), then the rules.
    remat: ``None`` (store every step for the backward pass), ``True``
      (rematerialise in chunks of ``ceil(sqrt(T))`` steps) or a positive int
      chunk length: the backward pass recomputes each chunk's forward from
      its saved initial carry, so memory grows like ``T/k + k`` instead of
      ``T`` (rnnjax/_remat.py); values and gradients are unchanged.

  Returns:
    ``(final_carry, ys)``.
  """
  if impl not in _IMPLS:
    raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}.")
  if impl in _PARALLEL_IMPLS:
    # Parallel in time (rnnjax.parallel); unroll and input_projection do not apply.
    from rnnjax.parallel import scan_dispatch  # lazy: rnnjax.parallel imports this module
    return scan_dispatch(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                         time_major=time_major, impl=impl)
  if impl == "fused" and not _fused.supports(cell):
    raise ValueError(
        f"impl='fused' does not support {type(cell).__name__} (it runs the rnnjax cells built "
        "on the cell protocol, not Stack or custom steps); use impl='auto' or 'reference'.")
  if input_projection not in _PROJECTIONS:
    raise ValueError(f"input_projection must be one of {_PROJECTIONS}, got {input_projection!r}.")
  if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1:
    raise ValueError(f"unroll must be a positive int, got {unroll!r}.")
  batch_shape, T = _split_sequence_shapes(cell, params, xs, time_major)
  xs = _checks.cast_inputs(xs, params, getattr(cell, "dtype", None))
  carry, lengths = resolve_carry_and_lengths(cell, params, batch_shape, T, carry, lengths)
  chunk = _remat.check_remat(remat, T)
  if impl in ("auto", "autotune") and input_projection == "auto":
    # The autotune cache first (timing on a miss only when asked), the rules second.
    hit = _autotune.resolve(cell, batch_shape, T, xs.shape[-1], xs.dtype, "fwd+bwd",
                            lengths is not None,
                            tune=(impl == "autotune" or _autotune.env_enabled()))
    if hit is not None:
      impl, input_projection = hit
  if impl == "autotune":
    impl = "auto"

  nb = len(batch_shape)
  xs_tm = _layout.to_flat_time_major(xs, batch_shape, T, time_major)
  flat_carry = _layout.flatten_batch(carry, batch_shape)
  flat_len = None if lengths is None else jnp.reshape(lengths, (-1,) if nb else ())
  # Padding influences nothing: zero the inputs there before any arithmetic.
  xs_tm = _layout.mask_padding(xs_tm, flat_len)
  if chunk is not None:
    inner = functools.partial(scan, time_major=True, unroll=unroll,
                              input_projection=input_projection, impl=impl)
    final, ys = _remat.remat_scan(inner, cell, params, xs_tm, flat_carry, flat_len,
                                  reverse=reverse, chunk=chunk)
    return _layout.restore_layout(final, ys, batch_shape, T, time_major)

  plan_impl, plan_proj = auto_plan(cell)
  # T = 0: the reference scan (an empty lax.scan) has well-defined gradients.
  use_fused = (impl == "fused" or (impl == "auto" and plan_impl == "fused")) and T > 0
  if use_fused:
    if not nb:  # a single unbatched sequence: a batch of one
      xs_tm = xs_tm[:, None]
      flat_carry = jax.tree_util.tree_map(lambda c: c[None], flat_carry)
      flat_len = None if flat_len is None else flat_len[None]
    final, ys = _fused.fused_scan(
        cell, params, xs_tm, flat_carry, flat_len, reverse=reverse, unroll=unroll,
        projection=None if input_projection == "auto" else input_projection)
    if not nb:
      ys = ys[:, 0]
      final = jax.tree_util.tree_map(lambda c: c[0], final)
    return _layout.restore_layout(final, ys, batch_shape, T, time_major)

  split = hasattr(cell, "input_projection") and hasattr(cell, "recurrent_step")
  mode = input_projection
  if mode == "auto":
    mode = "inloop" if jax.default_backend() == "cpu" else "hoisted"
  if not split:
    mode = "none"

  if mode == "hoisted":
    seq = cell.input_projection(params, xs_tm)
    step = lambda c, s: cell.recurrent_step(params, c, s)
  elif mode == "inloop":
    seq = xs_tm
    step = lambda c, s: cell.recurrent_step(params, c, cell.input_projection(params, s))
  else:
    seq = xs_tm
    step = lambda c, s: cell(params, c, s)

  if flat_len is None:
    final, ys = jax.lax.scan(step, flat_carry, seq, reverse=reverse, unroll=unroll)
  else:
    masks = _layout.step_masks(flat_len, T)

    def body(c, inp):
      s, m = inp
      new_c, y = step(c, s)
      return _layout.tree_where(m, new_c, c), jnp.where(_layout.broadcast_mask(m, y), y,
                                                        jnp.zeros_like(y))
    final, ys = jax.lax.scan(body, flat_carry, (seq, masks), reverse=reverse, unroll=unroll)

  return _layout.restore_layout(final, ys, batch_shape, T, time_major)
