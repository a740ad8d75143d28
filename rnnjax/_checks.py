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
