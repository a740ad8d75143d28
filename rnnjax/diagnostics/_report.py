"""``diagnose``: every measurement of one cell on one batch, summarised in a :class:`Report`.

Summary statistics (computed on the host from the jitted measurements):

* the *curve by lag*: for lag ``l = L_b - 1 - i``, the mean over sequences of
  ``log||dh_{L_b-1}/dh_i||`` (a geometric mean of the norms; sequences shorter
  than ``l + 1`` are left out);
* ``decay_rate``: the least-squares slope of that curve against the lag
  (natural log per step; ``log a`` for a linear RNN with ``W = aQ``);
* ``memory_horizon``: the smallest lag at which the curve falls below
  ``log(fraction)`` (default ``fraction = 0.01``), None if it never does;
* ``verdict``: ``"exploding"`` if the curve, or any one sequence's
  ``log||dh_{L_b-1}/dh_i||``, rises above ``log(1/fraction)`` (a mean with a
  ``-inf`` of a dead sequence would hide it), else ``"vanishing"`` if it falls below ``log(fraction)`` within
  the sequence (a horizon exists), else ``"stable"``; ``"undetermined"`` when
  the measurement cannot support a verdict: fewer than two lags measured
  (``T = 1``, or every length <= 1; the decay rate is then NaN too) or a
  NaN norm at a valid step (an overflow inside the cell). The verdict is about
  the window measured: run with the ``T`` you care about.

Non-finite ``xs``, ``params`` or ``carry`` make :func:`diagnose` raise a
``ValueError`` naming the argument and the first bad entry (the norms would
be NaN, and a NaN compared with a threshold is no verdict). The lower-level
functions (:func:`jacobian_norms`, ...) stay jit-able and return NaN there. The thresholds apply to
  the norm itself, which is 1 at lag 0 for ``ord=2`` (``sqrt(d)`` for the
  Frobenius norm of ``method="hutchinson"``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax import _checks
from rnnjax.diagnostics import _core as core
from rnnjax.diagnostics import _saturation as sat_mod
from rnnjax.diagnostics._jacobians import (_find_output_leaf, adjoint_norms, check_method_ord,
                                    exact_backward, jacobian_norms)
from rnnjax.diagnostics._lyapunov import forward_pass, lyapunov_exponents
from rnnjax.diagnostics._saturation import saturation
from rnnjax._layers import Stack, last_valid


def by_lag(values, lengths=None) -> np.ndarray:
  """Re-indexes per-step values ``[*B, T]`` by lag and averages over sequences.

  ``out[l]`` is the mean over sequences ``b`` with ``L_b > l`` of
  ``values[b, L_b - 1 - l]`` (``L_b = T`` without lengths); NaN where no
  sequence is that long. NaN entries are ignored; ``-inf`` propagates.
  """
  v = np.asarray(values, np.float64)
  T = v.shape[-1]
  v = v.reshape((-1, T))
  if lengths is None:
    L = np.full((v.shape[0],), T)
  else:
    L = np.asarray(lengths).reshape(-1)
  lag = np.arange(T)
  idx = L[:, None] - 1 - lag[None, :]
  ok = idx >= 0
  g = np.take_along_axis(v, np.clip(idx, 0, T - 1), axis=1)
  g = np.where(ok, g, np.nan)
  with np.errstate(invalid="ignore"):
    cnt = np.sum(~np.isnan(g), axis=0)
    tot = np.nansum(g, axis=0)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def decay_rate(curve) -> float:
  """Least-squares slope of a log-norm curve against the lag (finite entries only)."""
  curve = np.asarray(curve, np.float64)
  lag = np.arange(curve.shape[0], dtype=np.float64)
  ok = np.isfinite(curve)
  if ok.sum() < 2:
    return float("nan")
  return float(np.polyfit(lag[ok], curve[ok], 1)[0])


def memory_horizon(curve, fraction) -> Optional[int]:
  """The smallest lag whose log norm is below ``log(fraction)``; None if none."""
  below = np.asarray(curve) < np.log(fraction)
  return int(np.argmax(below)) if below.any() else None


def undetermined_reason(curve, log_norms=None, lengths=None) -> Optional[str]:
  """Why no verdict can be drawn from ``curve`` (None when one can).

  ``curve`` is the by-lag curve; ``log_norms`` ``[*B, T]`` the per-step
  values, NaN past ``lengths`` by design and nowhere else.
  """
  curve = np.asarray(curve, np.float64)
  if np.sum(~np.isnan(curve)) < 2:
    return (f"fewer than two lags measured (T={curve.shape[0]}"
            + ("" if lengths is None else f", longest length {int(np.max(lengths, initial=0))}")
            + "): no decay can be measured")
  if log_norms is not None:
    v = np.asarray(log_norms, np.float64)
    T = v.shape[-1]
    v = v.reshape((-1, T))
    L = (np.full((v.shape[0],), T) if lengths is None
         else np.asarray(lengths).reshape(-1))
    valid = np.arange(T)[None, :] < L[:, None]
    bad = np.isnan(v) & valid
    if bad.any():
      b, t = (int(i) for i in np.argwhere(bad)[0])
      return (f"{int(bad.sum())} Jacobian norm(s) are NaN at valid steps (first: sequence "
              f"{b}, step {t}): the cell overflowed")
  return None


def verdict(curve, fraction, log_norms=None, lengths=None) -> str:
  """``"exploding"``, ``"vanishing"``, ``"stable"`` or ``"undetermined"`` (module docstring)."""
  if undetermined_reason(curve, log_norms, lengths) is not None:
    return "undetermined"
  curve = np.asarray(curve, np.float64)
  vals = curve[~np.isnan(curve)]
  if log_norms is not None:  # one exploding sequence is enough (the mean may hide it)
    per_seq = np.asarray(log_norms, np.float64)
    vals = np.concatenate([vals, per_seq[~np.isnan(per_seq)]])
  if vals.size and vals.max() > -np.log(fraction):
    return "exploding"
  return "vanishing" if memory_horizon(curve, fraction) is not None else "stable"


def cell_label(cell) -> str:
  """A short human-readable name: ``SimpleRNN(tanh)``, ``LSTM``, ``Stack[GRU, LSTM]``."""
  if isinstance(cell, Stack):
    return "Stack[" + ", ".join(cell_label(c) for c in cell.cells) + "]"
  name = type(cell).__name__
  act = getattr(cell, "activation", None)
  if name == "SimpleRNN" and act is not None:
    return f"SimpleRNN({act.name})"
  return name


@dataclasses.dataclass(frozen=True)
class Report:
  """The diagnostics of one cell on one batch (see :func:`diagnose`).

  Attributes:
    name: label of the cell.
    T: number of time steps.
    method: the :func:`jacobian_norms` method used; ``ord`` its norm.
    log_jacobian_norms: ``[*B, T]``, ``log||dh_{L-1}/dh_i||`` (NaN past lengths).
    log_adjoint_norms: ``[*B, T]``, ``log||dL/dh_i||`` (NaN past lengths).
    lengths: the lengths used, or None.
    lyapunov: ``[k]`` largest Lyapunov exponents, averaged over the batch.
    saturation: ``{gate: (saturated fraction, mean derivative)}``.
    decay_rate: slope of the by-lag log Jacobian norm per step (natural log).
    memory_horizon: first lag with norm below ``fraction`` (None: never).
    largest_lyapunov: ``lyapunov[0]``.
    verdict: ``"vanishing"``, ``"exploding"``, ``"stable"`` or
      ``"undetermined"`` (see the module docstring).
    fraction: the horizon / verdict threshold.
    reason: why the verdict is ``"undetermined"`` (None otherwise).
  """
  name: str
  T: int
  method: str
  ord: Any
  log_jacobian_norms: np.ndarray
  log_adjoint_norms: np.ndarray
  lengths: Optional[np.ndarray]
  lyapunov: np.ndarray
  saturation: dict
  decay_rate: float
  memory_horizon: Optional[int]
  largest_lyapunov: float
  verdict: str
  fraction: float
  reason: Optional[str] = None

  def jacobian_by_lag(self) -> np.ndarray:
    """``[T]``: mean over sequences of ``log||dh_{L-1}/dh_{L-1-l}||`` at lag ``l``."""
    return by_lag(self.log_jacobian_norms, self.lengths)

  def adjoint_by_lag(self) -> np.ndarray:
    """``[T]``: mean over sequences of ``log||dL/dh_{L-1-l}||`` at lag ``l``."""
    return by_lag(self.log_adjoint_norms, self.lengths)

  def horizon_str(self) -> str:
    """The memory horizon as printed in the table (``">T-1"`` when never reached)."""
    if self.memory_horizon is None:
      return f">{self.T - 1}"
    return str(self.memory_horizon)

  def __str__(self) -> str:
    curve = self.jacobian_by_lag()
    adj = self.adjoint_by_lag()
    lines = [
        f"Report: {self.name}  (T={self.T}, ||dh_T/dh_i|| by method={self.method!r}, "
        f"ord={self.ord!r})",
        f"  verdict              {self.verdict}"
        + (f"  ({self.reason})" if self.reason else ""),
        f"  decay rate / step    {self.decay_rate:+.4f}  (natural log; "
        f"x{np.exp(self.decay_rate):.4g} per step)",
        f"  memory horizon       {self.horizon_str()}  (first lag with norm < {self.fraction:g})",
        f"  Lyapunov exponents   " + " ".join(f"{v:+.4f}" for v in self.lyapunov),
    ]
    lags = [l for l in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
            if l < self.T]
    lines.append("  lag                  " + "".join(f"{l:>10d}" for l in lags))
    lines.append("  ||dh_T/dh_i||        " + "".join(f"{np.exp(curve[l]):>10.3g}" for l in lags))
    lines.append("  ||dL/dh_i||          " + "".join(f"{np.exp(adj[l]):>10.3g}" for l in lags))
    if self.saturation:
      lines.append("  saturation           gate: saturated fraction / mean derivative")
      for g, (f, d) in self.saturation.items():
        lines.append(f"    {g:<18s} {100 * f:6.1f}%  / {d:.3f}")
    return "\n".join(lines)


def summary_table(reports: Sequence[Report]) -> str:
  """One line per report: cell, decay rate, memory horizon, largest exponent, verdict."""
  head = (f"{'cell':<22s} {'decay/step':>11s} {'horizon':>9s} {'lambda_max':>11s} "
          f"{'||dh_T/dh_0||':>14s}  verdict")
  rows = [head, "-" * len(head)]
  for r in reports:
    c = r.jacobian_by_lag()
    last = c[np.isfinite(c) | np.isneginf(c)]
    end = np.exp(last[-1]) if last.size else float("nan")
    rows.append(f"{r.name:<22s} {r.decay_rate:>+11.4f} {r.horizon_str():>9s} "
                f"{r.largest_lyapunov:>+11.4f} {end:>14.3e}  {r.verdict}")
  return "\n".join(rows)


def _sum_last_output(ys, final_carry):
  del final_carry
  return jnp.sum(ys[..., -1, :])


def default_loss_fn(lengths=None):
  """``L = sum_b sum_j ys[b, L_b - 1, j]``: an all-ones readout of the last valid output."""
  if lengths is None:
    return _sum_last_output
  return lambda ys, final_carry: jnp.sum(last_valid(ys, lengths))


def output_leaf(cell, params, xs, template):
  """Index of the carry leaf that the step returns as its output (None if none)."""
  found = []

  def probe(p, c, x):
    new, y = cell(p, c, x)
    found.append(_find_output_leaf(new, y))
    return y
  x0 = jax.ShapeDtypeStruct(xs.shape[-1:], xs.dtype)
  jax.eval_shape(probe, params, template, x0)
  return found[0]


@core.jit(static_argnames=("cell", "leaf", "ord", "k", "warmup", "out",
                                             "with_sat"))
def _diagnose_impl(cell, params, xs, carry, lengths, key, *, leaf, ord, k, warmup, out,
                   with_sat):
  """All of diagnose's measurements in one program (one forward, one backward sweep).

  Forward: states, Lyapunov QR and gate statistics; backward: the exact
  Jacobian-product rows and, as one extra cotangent row, the adjoint of the
  default loss ``L = sum(y_{L-1})`` (``dL/dh_{L-1}`` = ones on the output leaf
  ``out``). Equal to the separate functions (tested).
  """
  template = jax.eval_shape(lambda: cell.initial_carry(()))
  prep = core.Prepared(xs.shape[:-2], xs.shape[-2], carry, lengths, template, leaf)
  step = core.make_flat_step(cell, params, template)
  unravel = core.unraveler(template)
  D = leaf.size
  dtype = core.state_dtype(carry)
  noise = core.random_normal(key, (core.num_sequences(xs), D, k), dtype)
  g = jnp.zeros((1, D), dtype).at[:, out.start:out.stop].set(1.0)
  observe = None
  if with_sat:
    observe = lambda s, x, t: sat_mod.gate_stats(cell, params, unravel(s), x)[1]

  def seq(xs1, c0, length, noise1):
    s_in, lyap, obs = forward_pass(step, core.flatten(c0), xs1, length, noise1, k=k,
                                   warmup=warmup, observe=observe)
    logn, logg = exact_backward(step, s_in, xs1, length, leaf=leaf, ord=ord, extra=g)
    mask = lambda v: core.mask_past_length(v, length)
    return mask(logn), mask(logg[:, 0]), lyap, jax.tree_util.tree_map(mask, obs)
  return core.per_sequence(seq, prep, xs, noise)


def diagnose(cell: Any, params: Any, xs: jax.Array, carry: Any = None, *,
             lengths: Optional[jax.Array] = None,
             loss_fn: Optional[Callable[[jax.Array, Any], jax.Array]] = None,
             method: str = "exact", ord: Union[None, int, str] = None,
             leaf: Union[None, int, str] = None, k: Optional[int] = None, warmup: int = 0,
             fraction: float = 0.01, key: Optional[jax.Array] = None,
             name: Optional[str] = None, with_saturation: bool = True) -> Report:
  """Runs every diagnostic on ``(cell, params, xs)`` and summarises them.

  Measures ``||dh_{L-1}/dh_i||`` (:func:`jacobian_norms`), ``||dL/dh_i||``
  (:func:`adjoint_norms`), the Lyapunov exponents and the gate saturation,
  then derives the decay rate, memory horizon and verdict described in the
  module docstring. The measurements are jitted (with ``method="exact"`` and
  the default loss, all in one program: one forward and one backward sweep);
  the summary is computed on the host.

  Args:
    cell, params, xs, carry, lengths, leaf: as :func:`jacobian_norms`.
    loss_fn: ``loss_fn(ys, final_carry) -> scalar`` for the adjoint norms;
      default :func:`default_loss_fn` (sum of the last valid outputs).
    method: the :func:`jacobian_norms` method.
    ord: its norm; default 2 (``"fro"`` for ``method="hutchinson"``).
    k: number of Lyapunov exponents (default ``min(D, 4)``).
    warmup: Lyapunov warm-up steps.
    fraction: horizon / verdict threshold in (0, 1).
    key: PRNG key for the random probes and bases.
    name: label (default: the cell's type and activation).
    with_saturation: also measure gate saturation (rnnjax cells only).

  Returns:
    a :class:`Report`; ``print(report)`` shows a readable table.
  """
  if ord is None:
    ord = "fro" if method == "hutchinson" else 2
  check_method_ord(method, ord)
  fraction = _checks.check_real(fraction, "fraction")
  if not 0.0 < fraction < 1.0:
    raise ValueError(f"fraction must be in (0, 1), got {fraction!r}.")
  prep = core.prepare(cell, params, xs, carry, lengths, leaf)
  _checks.check_finite(xs, "xs")
  _checks.check_finite(params, "params")
  if carry is not None:
    _checks.check_finite(carry, "carry")
  key = core.check_key(key)
  D = prep.leaf.size
  if k is None:
    k = min(D, 4)
  core.check_positive(k, "k")
  if k > D:
    raise ValueError(f"k must be <= the state size D={D}, got k={k}.")
  if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0 \
      or warmup >= prep.T:
    raise ValueError(f"warmup must be an int in [0, T={prep.T}), got {warmup!r}.")
  with core.single_threaded_blas():
    return _diagnose(cell, params, xs, prep, loss_fn=loss_fn, method=method, ord=ord,
                     leaf=leaf, k=int(k), warmup=int(warmup), fraction=float(fraction),
                     key=key, name=name, with_saturation=with_saturation)


def _diagnose(cell, params, xs, prep, *, loss_fn, method, ord, leaf, k, warmup, fraction,
              key, name, with_saturation):
  k1, k2 = jax.random.split(key)
  with_sat = bool(with_saturation) and sat_mod.supported(cell)
  out = output_leaf(cell, params, xs, prep.template) if loss_fn is None else None
  sat = {}
  if method == "exact" and loss_fn is None and out is not None:
    out_range = core.resolve_leaf(prep.template, out)
    logj, logadj, lyap, stats = _diagnose_impl(
        cell, params, xs, prep.carry, prep.lengths, k2, leaf=prep.leaf, ord=ord, k=int(k),
        warmup=int(warmup), out=out_range, with_sat=with_sat)
    if with_sat:
      sat = sat_mod.aggregate(stats, sat_mod.gate_names(cell))
  else:
    if loss_fn is None:
      loss_fn = default_loss_fn(prep.lengths)
    logj = jacobian_norms(cell, params, xs, prep.carry, ord=ord, method=method, log=True,
                          lengths=prep.lengths, leaf=leaf, key=k1)
    with np.errstate(divide="ignore"):
      logadj = jnp.log(adjoint_norms(loss_fn, cell, params, xs, prep.carry,
                                     lengths=prep.lengths, leaf=leaf))
    lyap = lyapunov_exponents(cell, params, xs, prep.carry, k=k, warmup=warmup,
                              lengths=prep.lengths, key=k2)
    if with_sat:
      sat = saturation(cell, params, xs, prep.carry, lengths=prep.lengths)
  sat = {g: (float(s.fraction), float(s.mean_derivative)) for g, s in sat.items()}
  logj = np.asarray(logj, np.float64)
  lens = None if prep.lengths is None else np.asarray(prep.lengths)
  lyap = np.asarray(lyap, np.float64).reshape((-1, k))
  with np.errstate(invalid="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: lengths <= warmup
    lyap = np.nanmean(lyap, axis=0) if lyap.shape[0] > 1 else lyap[0]
  curve = by_lag(logj, lens)
  reason = undetermined_reason(curve, logj, lens)
  return Report(
      name=name or cell_label(cell), T=prep.T, method=method, ord=ord,
      log_jacobian_norms=logj, log_adjoint_norms=np.asarray(logadj, np.float64),
      lengths=lens, lyapunov=lyap, saturation=sat, decay_rate=decay_rate(curve),
      memory_horizon=memory_horizon(curve, fraction), largest_lyapunov=float(lyap[0]),
      verdict=verdict(curve, fraction, logj, lens), fraction=float(fraction), reason=reason)
