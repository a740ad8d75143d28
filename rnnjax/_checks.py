"""Input validation shared by cells, the scan engine and layers.

Every check raises a ``ValueError`` or ``TypeError`` that names the argument
and what was expected, before any tracing happens, so that bad input never
surfaces as a deep XLA error or, worse, a silently wrong answer.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp


def check_key(key, argname: str = "key") -> None:
  """Raises TypeError unless ``key`` is a JAX PRNG key (typed or legacy uint32[2])."""
  if isinstance(key, jax.Array) or isinstance(key, np.ndarray):
    dtype = key.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return
    if dtype == np.uint32 and key.shape[-1:] == (2,):
      return
  raise TypeError(
      f"{argname} must be a JAX PRNG key (from jax.random.key or "
      f"jax.random.PRNGKey), got {type(key).__name__}"
      + (f" with dtype {key.dtype} and shape {key.shape}" if hasattr(key, "dtype") else "")
      + ".")


def check_positive_int(value, argname: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{argname} must be a positive int, got {type(value).__name__}: {value!r}.")
  if value <= 0:
    raise ValueError(f"{argname} must be a positive int, got {value}.")
  return int(value)


def check_carry(carry, template, argname: str = "carry") -> None:
  """Checks that ``carry`` has the structure, shapes and dtypes of ``template``."""
  try:
    s1 = jax.tree_util.tree_structure(carry)
  except Exception as e:  # pragma: no cover - defensive
    raise TypeError(f"{argname} is not a pytree: {e}") from None
  s2 = jax.tree_util.tree_structure(template)
  if s1 != s2:
    raise TypeError(
        f"{argname} has structure {s1}, expected {s2} (the structure of "
        "cell.initial_carry(...)).")
  for i, (a, b) in enumerate(zip(jax.tree_util.tree_leaves(carry),
                                 jax.tree_util.tree_leaves(template))):
    shape = jnp.shape(a)
    if tuple(shape) != tuple(b.shape):
      raise ValueError(
          f"{argname} leaf {i} has shape {tuple(shape)}, expected {tuple(b.shape)} "
          "(batch shape + state size).")
    dt = jnp.result_type(a)
    if not jnp.issubdtype(dt, jnp.floating):
      raise TypeError(f"{argname} leaf {i} has dtype {dt}, expected a floating dtype.")


def check_step_carry(carry, template, argname: str = "carry") -> None:
  """One step's carry: the leaf count, state size and dtype of ``template``.

  Looser than :func:`check_carry` (batch dims may broadcast, a plain tuple
  may stand for a NamedTuple), but it stops an array passed where an LSTM
  expects ``(h, c)`` from being silently unpacked along its batch axis.
  """
  leaves = jax.tree_util.tree_leaves(carry)
  t_leaves = jax.tree_util.tree_leaves(template)
  if len(leaves) != len(t_leaves) or (
      isinstance(template, tuple) != isinstance(carry, tuple)):
    raise TypeError(
        f"{argname} has structure {jax.tree_util.tree_structure(carry)}, expected "
        f"{jax.tree_util.tree_structure(template)} (that of cell.initial_carry(...)).")
  for i, (a, b) in enumerate(zip(leaves, t_leaves)):
    if jnp.ndim(a) < 1 or jnp.shape(a)[-1] != b.shape[-1]:
      raise ValueError(
          f"{argname} leaf {i} has shape {tuple(jnp.shape(a))}, expected [*batch, "
          f"{b.shape[-1]}] (batch shape + state size).")
    if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
      raise TypeError(f"{argname} leaf {i} has dtype {jnp.result_type(a)}, expected a "
                      "floating dtype.")


def check_lengths(lengths, batch_shape, num_steps: int, argname: str = "lengths"):
  """Validates ``lengths``: integer, shape ``batch_shape``, 0 <= lengths <= T.

  The range is checked when ``lengths`` is concrete; under ``jit`` (a tracer)
  only dtype and shape can be checked, and out-of-range values behave as if
  clipped to [0, T].
  """
  if not hasattr(lengths, "dtype"):
    lengths = np.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"{argname} must be an integer array, got dtype {lengths.dtype}.")
  if tuple(lengths.shape) != tuple(batch_shape):
    raise ValueError(
        f"{argname} must have shape {tuple(batch_shape)} (the batch shape of xs), "
        f"got {tuple(lengths.shape)}.")
  if not isinstance(lengths, jax.core.Tracer):
    arr = np.asarray(lengths)
    if arr.size and arr.min() < 0:
      raise ValueError(f"{argname} must be >= 0, got a minimum of {arr.min()}.")
    if arr.size and arr.max() > num_steps:
      raise ValueError(
          f"{argname} must be <= the number of time steps T={num_steps}, "
          f"got a maximum of {arr.max()}.")
  return lengths


def check_batch_shape(batch_shape, argname: str = "batch_shape") -> tuple:
  """A tuple of non-negative ints (one int is read as a 1-tuple)."""
  if isinstance(batch_shape, (int, np.integer)) and not isinstance(batch_shape, bool):
    batch_shape = (int(batch_shape),)
  try:
    dims = tuple(batch_shape)
  except TypeError:
    raise TypeError(f"{argname} must be a tuple of non-negative ints, got "
                    f"{type(batch_shape).__name__}: {batch_shape!r}.") from None
  for d in dims:
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
      raise TypeError(f"{argname} must be a tuple of non-negative ints, got {batch_shape!r}.")
    if d < 0:
      raise ValueError(f"{argname} must be a tuple of non-negative ints, got {batch_shape!r}.")
  return tuple(int(d) for d in dims)


def check_real_number(value, argname: str) -> float:
  """A real (int or float, not bool) Python or NumPy scalar; returns it as a float."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{argname} must be a real number, got {type(value).__name__}: {value!r}.")
  return float(value)


def check_float_dtype(dtype, argname: str = "param_dtype", *, allow_none: bool = False):
  """``dtype`` as a ``jnp.dtype``; TypeError unless it is a floating dtype.

  Parameters are drawn by random initialisers and trained by gradients, so
  they must be floating (float16, bfloat16, float32, float64).
  """
  if dtype is None:
    if allow_none:
      return None
    raise TypeError(f"{argname} must be a floating dtype (e.g. jnp.float32), got None.")
  try:
    dt = jnp.dtype(dtype)
  except TypeError:
    raise TypeError(f"{argname} must be a dtype (a floating one, e.g. jnp.float32), "
                    f"got {dtype!r}.") from None
  if not jnp.issubdtype(dt, jnp.floating):
    raise TypeError(f"{argname} must be a floating dtype (e.g. jnp.float32), got {dt}.")
  return dt


def check_real(value, argname: str, *, finite: bool = True) -> float:
  """``value`` as a Python float; TypeError unless it is a real number (not a bool or str)."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                   np.floating)):
    if not (isinstance(value, (np.ndarray, jax.Array)) and jnp.ndim(value) == 0
            and jnp.issubdtype(jnp.result_type(value), jnp.number)
            and not isinstance(value, jax.core.Tracer)):
      raise TypeError(f"{argname} must be a real number, got {type(value).__name__}: "
                      f"{value!r}.")
  value = float(value)
  if finite and not np.isfinite(value):
    raise ValueError(f"{argname} must be finite, got {value}.")
  return value


def check_rate(value, argname: str = "dropout") -> float:
  """A dropout rate: a real number in ``[0, 1)``."""
  value = check_real(value, argname)
  if not 0.0 <= value < 1.0:
    raise ValueError(f"{argname} must be in [0, 1), got {value}.")
  return value


def is_cell(obj) -> bool:
  """Whether ``obj`` follows the cell protocol: ``initial_carry`` and ``cell(params, carry, x)``."""
  return callable(obj) and hasattr(obj, "initial_carry") and not isinstance(obj, type)


def check_cell(cell, argname: str = "cell") -> None:
  """TypeError unless ``cell`` is a cell instance (a class, None or a string are not)."""
  if is_cell(cell):
    return
  hint = ""
  if isinstance(cell, type) and hasattr(cell, "initial_carry"):
    hint = f" (the class {cell.__name__} itself; instantiate it, e.g. {cell.__name__}(64))"
  raise TypeError(
      f"{argname} must be an rnnjax cell (SimpleRNN, IRNN, JordanRNN, LSTM, GRU, a Stack, or "
      f"anything with initial_carry(batch_shape) and __call__(params, carry, x)), got "
      f"{type(cell).__name__}: {cell!r}{hint}.")


def check_layer_params(params, n: int, owner: str, argname: str = "params") -> None:
  """``params`` of a layer with ``n`` sublayers: a tuple or list of length ``n``."""
  if not isinstance(params, (tuple, list)):
    raise TypeError(f"{argname} of {owner} must be a tuple of {n} per-layer params (from "
                    f"{owner}.init), got {type(params).__name__}.")
  if len(params) != n:
    raise ValueError(f"{argname} of {owner} has {len(params)} layer params, but it has {n} "
                     f"layers (use the params returned by its init); got "
                     f"{type(params).__name__} of length {len(params)}.")


def check_param_keys(params, keys, owner: str, argname: str = "params") -> None:
  """``params`` must be a mapping holding every key in ``keys``."""
  from collections.abc import Mapping
  if not isinstance(params, Mapping):
    raise TypeError(f"{argname} of {owner} must be a dict with keys {list(keys)} (from "
                    f"{owner}.init), got {type(params).__name__}.")
  missing = [k for k in keys if k not in params]
  if missing:
    raise ValueError(f"{argname} of {owner} lacks {missing}: expected the keys {list(keys)} "
                     f"(from {owner}.init), got {sorted(params)}.")


def is_concrete(x) -> bool:
  """Whether ``x`` holds values on the host (not a tracer under jit/grad/vmap)."""
  return not isinstance(x, jax.core.Tracer)


def check_finite(x, argname: str) -> None:
  """ValueError naming ``argname`` and the first non-finite entry, when ``x`` is concrete.

  Under ``jit`` (a tracer) nothing can be checked and nothing is raised.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
    if not is_concrete(leaf) or not hasattr(leaf, "dtype"):
      continue
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
      continue
    arr = np.asarray(leaf)
    bad = ~np.isfinite(arr)
    if bad.any():
      idx = tuple(int(i) for i in np.argwhere(bad)[0])
      where = f"{argname}{jax.tree_util.keystr(path)}"
      raise ValueError(
          f"{where} has {int(bad.sum())} non-finite value(s) (first {arr[idx]} at index "
          f"{idx}); the result would be NaN, not a measurement.")


def check_fan_in(kernels, argname: str = "flax_params") -> None:
  """All input-side kernels ``{name: [fan_in, H]}`` must share one fan-in (the input size)."""
  fans = {name: np.shape(k)[0] for name, k in kernels.items() if np.ndim(k) == 2}
  if len(set(fans.values())) > 1:
    raise ValueError(f"{argname}: the input-side kernels disagree on the input size "
                     f"(fan-in, first axis): {fans}; every gate must read the same input.")


def cast_inputs(xs, params, compute_dtype=None):
  """``xs`` cast to the dtype the step computes in: the cell's compute ``dtype``, else
  the params' (promoted) floating dtype. Explicit, so that float16/bfloat16 inputs with
  float32 params never rely on implicit promotion (an error under
  ``jax_numpy_dtype_promotion="strict"``).
  """
  if compute_dtype is not None:
    target = jnp.dtype(compute_dtype)
  else:
    leaves = [l for l in jax.tree_util.tree_leaves(params)
              if hasattr(l, "dtype") and jnp.issubdtype(l.dtype, jnp.floating)]
    if not leaves:
      return xs
    target = jnp.result_type(*leaves)
  return xs if xs.dtype == target else xs.astype(target)
