"""The vanishing-gradient study: five cells at init on the adding problem.

Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): each step
reads ``[value, marker]`` with ``value ~ U[0, 1]`` and a marker that is 1 at
exactly two steps, one in the first half and one in the second half of the
sequence (0 elsewhere); the target would be the sum of the two marked values.
The study only needs the inputs: it diagnoses each cell at initialisation.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import os
import time

import jax
import jax.numpy as jnp

from rnnjax._cells import GRU, IRNN, LSTM, JordanRNN, SimpleRNN
from rnnjax.diagnostics._report import Report, diagnose, summary_table

STUDY_CELLS = ("sigmoid", "tanh", "irnn", "lstm", "gru")
"""The cells of :func:`vanishing_study` by default."""

_LABELS = {"sigmoid": "SimpleRNN(sigmoid)", "tanh": "SimpleRNN(tanh)", "relu": "SimpleRNN(relu)",
           "irnn": "IRNN", "lstm": "LSTM", "gru": "GRU", "jordan": "JordanRNN"}
CELL_NAMES = tuple(_LABELS)


def make_cell(name: str, hidden: int, *, forget_bias: float = 1.0):
  """A cell by its study name: sigmoid, tanh, relu, irnn, lstm, gru, jordan."""
  if name == "sigmoid":
    return SimpleRNN(hidden, activation="sigmoid")
  if name == "tanh":
    return SimpleRNN(hidden, activation="tanh")
  if name == "relu":
    return SimpleRNN(hidden, activation="relu")
  if name == "irnn":
    return IRNN(hidden)
  if name == "lstm":
    return LSTM(hidden, forget_bias=forget_bias)
  if name == "gru":
    return GRU(hidden)
  if name == "jordan":
    return JordanRNN(hidden, output_size=hidden)
  raise ValueError(f"cell must be one of {CELL_NAMES}, got {name!r}.")


def adding_inputs(key: jax.Array, batch: int, T: int, dtype: Any = jnp.float32) -> jax.Array:
  """Adding-problem inputs ``[batch, T, 2]``: values U[0,1] and a two-hot marker."""
  if T < 2:
    raise ValueError(f"T must be >= 2 for the adding problem, got {T}.")
  kv, k1, k2 = jax.random.split(key, 3)
  values = jax.random.uniform(kv, (batch, T), dtype)
  half = T // 2
  first = jax.random.randint(k1, (batch,), 0, half)
  second = jax.random.randint(k2, (batch,), half, T)
  t = jnp.arange(T)
  marker = ((t == first[:, None]) | (t == second[:, None])).astype(dtype)
  return jnp.stack([values, marker], axis=-1)


def _resolve_cells(cells, hidden):
  if cells is None:
    cells = STUDY_CELLS
  out = []
  for c in cells:
    if isinstance(c, str):
      out.append((_LABELS.get(c, c), make_cell(c, hidden)))
    elif isinstance(c, tuple) and len(c) == 2 and isinstance(c[0], str):
      out.append(c)
    elif callable(c) and hasattr(c, "init"):
      from rnnjax.diagnostics._report import cell_label
      out.append((cell_label(c), c))
    else:
      raise TypeError(f"cells entries must be names {CELL_NAMES}, (label, cell) pairs or "
                      f"cells, got {c!r}.")
  return out


def vanishing_study(*, T: int = 100, hidden: int = 32, batch: int = 8, seed: int = 0,
                    out_dir: Optional[str] = "rnnjax_out", cells: Optional[Sequence[Any]] = None,
                    method: str = "exact", verbose: bool = True) -> Tuple[List[Report], Optional[str]]:
  """Diagnoses several cells at init on adding-problem inputs and compares them.

  For each cell (default: sigmoid SimpleRNN, tanh SimpleRNN, IRNN, LSTM, GRU)
  with ``params = cell.init(jax.random.key(seed), 2)`` on one batch of
  adding-problem inputs, runs :func:`diagnose` (loss: the sum of the last
  outputs), prints a table (decay rate, memory horizon, largest Lyapunov
  exponent, verdict) and writes one PNG of the gradient norms by lag.

  Args:
    T: sequence length. hidden: hidden size H. batch: number of sequences.
    seed: seeds the parameters and the inputs.
    out_dir: folder for ``vanishing_gradients.png`` (None: no PNG).
    cells: names (``sigmoid``, ``tanh``, ``relu``, ``irnn``, ``lstm``, ``gru``,
      ``jordan``), ``(label, cell)`` pairs or cells.
    method: the :func:`jacobian_norms` method.
    verbose: print the table (and where the PNG went).

  Returns:
    ``(reports, png_path)``; ``png_path`` is None without ``out_dir`` or
    without matplotlib (a note is printed).
  """
  key = jax.random.key(seed)
  kx, kp, kd = jax.random.split(key, 3)
  xs = adding_inputs(kx, batch, T)
  reports = []
  t0 = time.perf_counter()
  for label, cell in _resolve_cells(cells, hidden):
    params = cell.init(kp, 2)
    reports.append(diagnose(cell, params, xs, method=method, warmup=min(10, T // 10), k=1,
                            key=kd, name=label, with_saturation=False))
  elapsed = time.perf_counter() - t0
  if verbose:
    print(f"vanishing-gradient study: adding-problem inputs, B={batch}, T={T}, H={hidden}, "
          f"at init (seed {seed}); ||dh_T/dh_i|| by method={method!r}")
    print(summary_table(reports))
    print(f"(decay/step: slope of log||dh_T/dh_i|| per step of lag; horizon: first lag with "
          f"norm < {reports[0].fraction:g}; {elapsed:.1f} s)")
  path = None
  if out_dir is not None:
    from rnnjax.diagnostics._plot import plot_gradient_norms
    try:
      path = plot_gradient_norms(
          reports, os.path.join(out_dir, "vanishing_gradients.png"),
          title=f"Gradient norms by lag at init (adding problem, T={T}, H={hidden})")
    except ImportError as e:
      if verbose:
        print(f"note: no PNG written ({e})")
    else:
      if verbose:
        print(f"wrote {path}")
  return reports, path
