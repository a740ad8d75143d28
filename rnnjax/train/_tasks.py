"""Deterministic synthetic sequence tasks (NumPy, seeded, any size).

Every generator is ``task(batch_size, *, ..., seed=0) -> Batch`` and is a pure
function of its arguments: ``seed`` is anything ``numpy.random.default_rng``
accepts (an int, or a tuple of ints such as ``(run_seed, step)``, which gives
independent streams per step). A training data function is therefore simply::

  data = lambda step: adding_problem(64, length=50, seed=(0, step))

which is what makes :func:`rnnjax.train.fit` resumable bit for bit.

A :class:`Batch` is ``(x, y, lengths)``; ``lengths`` is None when every
sequence has the full length. Arrays are NumPy (float32 inputs; float32
targets or int32 labels).

Tasks and the loss of the best *input-independent* predictor (the baseline a
model must beat to have learnt anything):

==========================  =========================  =============================================
task                        loss                       baseline
==========================  =========================  =============================================
binary_addition (seed 003)  BCE per bit                ln 2 = 0.693 (predict 1/2); sum accuracy 2^-8
adding_problem              MSE                        1/6 (predict the mean sum 1: Var(U1+U2) = 2/12)
copy_task                   cross-entropy per step     n ln(k) / (T + 2n) = 10 ln 8 / (T + 20)
sequence_classification     BCE                        ln 2 (balanced classes); accuracy 1/2
==========================  =========================  =============================================
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import numpy as np

from rnnjax import _checks


class Batch(NamedTuple):
  """A batch of sequences: ``x`` ``[B, T, I]``, ``y`` targets, ``lengths`` int ``[B]`` or None."""
  x: Any
  y: Any
  lengths: Any = None


def _rng(seed):
  try:
    return np.random.default_rng(seed)
  except (TypeError, ValueError) as e:
    raise TypeError(f"seed must be an int >= 0 or a sequence of such ints, got {seed!r} ({e}).") from None


def binary_addition_arrays(rng: np.random.Generator, batch_size: int, bits: int = 8):
  """``(xs [B, bits, 2] float32, ys [B, bits, 1] float32, a, b)``, bits LSB first.

  ``a, b`` are uniform in ``[0, 2**(bits-1))`` so that ``a + b`` fits in
  ``bits`` bits; ``xs[:, t] = (bit t of a, bit t of b)``, ``ys[:, t, 0] =
  bit t of a + b``.
  """
  half = 2 ** (bits - 1)
  a = rng.integers(0, half, size=batch_size)
  b = rng.integers(0, half, size=batch_size)
  s = a + b
  shifts = np.arange(bits)
  xa = (a[:, None] >> shifts) & 1
  xb = (b[:, None] >> shifts) & 1
  ys = ((s[:, None] >> shifts) & 1)[..., None]
  xs = np.stack([xa, xb], axis=-1)
  return xs.astype(np.float32), ys.astype(np.float32), a, b


def binary_addition(batch_size: int, *, bits: int = 8, seed: Any = 0) -> Batch:
  """Seed 003's binary addition: ``x [B, bits, 2]``, ``y [B, bits, 1]``.

  Step t reads bit t (least significant first) of two numbers a, b uniform in
  ``[0, 2**(bits-1))`` and must output bit t of ``a + b``: the network has to
  carry. Loss: binary cross-entropy per bit. Baseline: ``ln 2`` (always 1/2);
  a sum is right only if all its bits are, so chance accuracy is ``2**-bits``.
  """
  _checks.check_positive_int(batch_size, "batch_size")
  _checks.check_positive_int(bits, "bits")
  if bits > 62:
    raise ValueError(f"bits must be <= 62, got {bits}.")
  xs, ys, _, _ = binary_addition_arrays(_rng(seed), batch_size, bits)
  return Batch(xs, ys)


def adding_problem(batch_size: int, *, length: int = 50, seed: Any = 0) -> Batch:
  """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

  ``x [B, T, 2]``: channel 0 values uniform in [0, 1], channel 1 a marker
  that is 1 at exactly two steps, one in the first half ``[0, T//2)`` and one
  in the second half ``[T//2, T)``. Target ``y [B, 1]``: the sum of the two
  marked values. Loss: MSE. Baseline: predicting the mean 1 gives
  ``E[(U1 + U2 - 1)^2] = Var(U1 + U2) = 2/12 = 1/6 ~ 0.167``; "solved" is
  usually MSE < 1/60 (10x better).
  """
  _checks.check_positive_int(batch_size, "batch_size")
  _checks.check_positive_int(length, "length")
  if length < 2:
    raise ValueError(f"length must be >= 2 (one marker in each half), got {length}.")
  rng = _rng(seed)
  values = rng.uniform(0.0, 1.0, size=(batch_size, length))
  half = length // 2
  i = rng.integers(0, half, size=batch_size)
  j = rng.integers(half, length, size=batch_size)
  markers = np.zeros((batch_size, length))
  rows = np.arange(batch_size)
  markers[rows, i] = 1.0
  markers[rows, j] = 1.0
  x = np.stack([values, markers], axis=-1).astype(np.float32)
  y = (values[rows, i] + values[rows, j])[:, None].astype(np.float32)
  return Batch(x, y)


def copy_task(batch_size: int, *, delay: int = 100, num_symbols: int = 8,
              num_copy: int = 10, seed: Any = 0) -> Batch:
  """The copy (memory) task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

  Symbols ``0..k-1`` (``k = num_symbols``), blank ``k``, delimiter ``k+1``.
  Input (length ``T + 2n``, ``T = delay``, ``n = num_copy``): n random
  symbols, ``T - 1`` blanks, the delimiter, n blanks; one-hot
  ``x [B, T + 2n, k + 2]``. Labels ``y`` int ``[B, T + 2n]``: blank for the
  first ``T + n`` steps, then the n symbols. Output classes: ``k + 1``.
  Loss: cross-entropy per step. Baseline: blanks everywhere and a uniform guess
  over the k symbols for the last n steps, ``n ln k / (T + 2n)`` =
  ``10 ln 8 / (T + 20)`` for the defaults.
  """
  _checks.check_positive_int(batch_size, "batch_size")
  _checks.check_positive_int(delay, "delay")
  _checks.check_positive_int(num_symbols, "num_symbols")
  _checks.check_positive_int(num_copy, "num_copy")
  k, n, t = num_symbols, num_copy, delay
  rng = _rng(seed)
  symbols = rng.integers(0, k, size=(batch_size, n))
  total = t + 2 * n
  inp = np.full((batch_size, total), k, dtype=np.int64)
  inp[:, :n] = symbols
  inp[:, t + n - 1] = k + 1
  labels = np.full((batch_size, total), k, dtype=np.int32)
  labels[:, t + n:] = symbols
  x = np.eye(k + 2, dtype=np.float32)[inp]
  return Batch(x, labels)


def sequence_classification(batch_size: int, *, length: int = 20, features: int = 4,
                            min_length: Optional[int] = None, separation: float = 1.0,
                            seed: Any = 0) -> Batch:
  r"""A separable variable-length binary sequence classification task.

  Label ``y`` uniform in {0, 1}; length ``L`` uniform in
  ``[min_length, length]`` (default ``min_length = length // 2``); for
  ``t < L``: ``x_t = (2y - 1) * separation * w + eps_t``, ``eps_t ~ N(0, I)``,
  ``w = (1, ..., 1) / sqrt(features)``; padding steps ``t >= L`` are 0.
  Returns ``Batch(x [B, length, features], y float [B, 1], lengths int [B])``.

  The Bayes classifier ``sign(w . sum_{t<L} x_t)`` is linear in the summed
  input (separable by a ReLU RNN that accumulates); its error is
  ``Phi(-separation * sqrt(L))`` (< 0.1% for the defaults). Loss: binary
  cross-entropy. Baseline: ``ln 2`` and accuracy 1/2 (balanced classes).
  """
  _checks.check_positive_int(batch_size, "batch_size")
  _checks.check_positive_int(length, "length")
  _checks.check_positive_int(features, "features")
  min_length = max(1, length // 2) if min_length is None else _checks.check_positive_int(
      min_length, "min_length")
  if min_length > length:
    raise ValueError(f"min_length must be <= length={length}, got {min_length}.")
  rng = _rng(seed)
  y = rng.integers(0, 2, size=batch_size)
  lengths = rng.integers(min_length, length + 1, size=batch_size)
  w = np.full((features,), 1.0 / math.sqrt(features))
  x = rng.standard_normal((batch_size, length, features))
  x += ((2 * y - 1) * float(separation))[:, None, None] * w
  x *= (np.arange(length)[None, :] < lengths[:, None])[..., None]
  return Batch(x.astype(np.float32), y[:, None].astype(np.float32), lengths.astype(np.int32))
