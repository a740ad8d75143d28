r"""Gradient flossing and edge-of-chaos scaling: act on the Lyapunov exponents.

Gradient flossing (Engelken, "Gradient Flossing: Improving Gradient Descent
through Dynamic Control of Jacobians", NeurIPS 2023, arXiv:2312.17306) adds
to the training loss the penalty

.. math::  L_\mathrm{floss}(\theta) = \sum_{i=1}^{k} \lambda_i(\theta)^2,

where ``lambda_1 >= ... >= lambda_k`` are the ``k`` largest Lyapunov
exponents of the network driven by inputs ``xs``
(:func:`rnnjax.diagnostics.lyapunov_exponents`: ``J_t Q_{t-1} = Q_t R_t``,
``lambda_j = mean_t log R_t[j, j]``), differentiated through the QR steps.
Exponents near zero mean that products of the step Jacobians
``J_T ... J_{t+1}`` neither shrink nor grow along ``k`` directions, so that
backpropagation through time carries error signals over long lags, and
keeps the long-term Jacobian well conditioned in a ``k``-dimensional
subspace (its singular values are ``~exp(T lambda_i)``).

Cost of one evaluation on a trajectory of ``T`` steps: the forward step, ``k``
JVPs of the step (``J_t Q``, matrix-free) and one ``[D, k]`` QR per step; its
gradient doubles that (one reverse sweep, one ``k x k`` triangular solve per
step). Memory ``O(T D k)`` for the reverse sweep. Measured overheads are in
``benchmarks/RESULTS.md``.

Three ways to use it:

* :func:`flossing_loss` -- the penalty as a function of ``(cell, params, xs)``,
  to add to any loss.
* :func:`floss` -- "flossing before training": ``steps`` optimizer updates on
  the penalty alone, returning the new params (pure; ``jit``/``vmap``-able).
* :func:`flossing` -- "flossing during training": an
  ``optax.GradientTransformation`` that adds ``weight * grad L_floss`` to the
  gradient every ``every`` updates (``lax.cond``: the other updates do not pay
  for it). Chain it *before* the optimizer, so that clipping sees the sum::

    opt = optax.chain(train.flossing(model.layers[0], xs_floss, every=100, k=4),
                      train.optimizer("adam", 1e-3, clip_norm=1.0))
    train.fit(model, params, data, loss="binary_cross_entropy", optimizer=opt, steps=...)

  This is the same as adding ``weight * L_floss`` to the loss on those
  updates (gradients add); the ``loss`` and ``grad_norm`` metrics of
  :func:`rnnjax.train.fit` stay those of the data loss.

:func:`scale_to_edge_of_chaos` rescales a cell's recurrent weights by a
scalar gain, found by bisection, so that the largest exponent on given inputs
equals a target (default 0, the edge of chaos).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax import _checks
from rnnjax.diagnostics import lyapunov_exponents


def _check_int(value, argname, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{argname} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def _truncate(xs, length):
  if length is None:
    return xs
  length = _check_int(length, "length", 1)
  if length > xs.shape[-2]:
    raise ValueError(f"length={length} exceeds the number of time steps of xs "
                     f"({xs.shape[-2]}).")
  return xs[..., :length, :]


def flossing_loss(cell, params, xs, *, k: int = 1, warmup: int = 0,
                  length: Optional[int] = None, carry=None, lengths=None, key=None):
  r"""The gradient-flossing penalty ``sum_{i<=k} lambda_i^2`` (mean over sequences).

  .. math::  L_\mathrm{floss} = \frac{1}{B} \sum_{b=1}^{B} \sum_{i=1}^{k} \lambda_i(x_b)^2

  with ``lambda_i(x_b)`` the ``i``-th largest Lyapunov exponent (natural log
  per step) of ``cell`` driven by sequence ``x_b``, from
  :func:`rnnjax.diagnostics.lyapunov_exponents` -- differentiable with respect
  to ``params`` and ``xs`` (Engelken 2023, arXiv:2312.17306).

  Args:
    cell: an rnnjax cell (for a :class:`rnnjax.SequenceModel` pass
      ``model.layers[0]`` and ``params["layers"][0]``).
    params: the cell's params.
    xs: ``[T, I]`` or ``[*B, T, I]`` inputs driving the trajectory.
    k: how many exponents are pushed towards zero (``1 <= k <= D``).
    warmup: leading steps not averaged (the QR basis aligns during them).
    length: use only the first ``length`` steps of ``xs`` (default all).
    carry, lengths, key: as :func:`rnnjax.diagnostics.lyapunov_exponents`
      (``key`` draws the initial tangent basis).

  Returns:
    A scalar.
  """
  _check_int(k, "k", 1)
  xs = _truncate(xs, length)
  lam = lyapunov_exponents(cell, params, xs, carry, k=k, warmup=warmup, lengths=lengths,
                           key=key)
  return jnp.mean(jnp.sum(jnp.square(lam), axis=-1))


def _inputs_at(inputs, key):
  return inputs(key) if callable(inputs) else inputs


def floss(cell, params, xs, *, steps: int, k: int = 1, warmup: int = 0,
          length: Optional[int] = None, optimizer: Optional[optax.GradientTransformation] = None,
          key=None):
  """Flossing before training: ``steps`` updates of ``params`` on :func:`flossing_loss` alone.

  Update ``i`` uses the tangent-basis key ``fold_in(key, i)`` and the inputs
  ``xs`` (an array, the same every update) or ``xs(fold_in(key, i))`` (a
  traceable function of a key, for fresh inputs every update). Pure and
  traceable: ``jax.jit`` / ``jax.vmap`` it (e.g. over several networks).

  Args:
    cell, params, k, warmup, length: as :func:`flossing_loss`.
    xs: ``[*B, T, I]`` inputs or a function ``key -> xs``.
    steps: number of updates (``>= 1``).
    optimizer: an optax transformation (default ``optax.adam(1e-3)``).
    key: PRNG key (default ``jax.random.key(0)``).

  Returns:
    ``(params, losses)``: the flossed params and ``[steps]`` penalties, the
    ``i``-th measured before update ``i``.
  """
  steps = _check_int(steps, "steps", 1)
  _check_int(k, "k", 1)
  if optimizer is None:
    optimizer = optax.adam(1e-3)
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation, got "
                    f"{type(optimizer).__name__}.")
  if key is None:
    key = jax.random.key(0)
  else:
    _checks.check_key(key)

  def loss(p, kk):
    return flossing_loss(cell, p, _inputs_at(xs, kk), k=k, warmup=warmup, length=length, key=kk)
  grad = jax.value_and_grad(loss)

  def body(c, i):
    p, s = c
    kk = jax.random.fold_in(key, i)
    value, g = grad(p, kk)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes floats and int32 counters
      u, s = optimizer.update(g, s, p)
    return (optax.apply_updates(p, u), s), value
  with jax.numpy_dtype_promotion("standard"):
    state0 = optimizer.init(params)
  (params, _), losses = jax.lax.scan(body, (params, state0), jnp.arange(steps))
  return params, losses


class FlossingState(NamedTuple):
  """State of :func:`flossing`: ``count`` int32 (updates seen), ``key``, and
  ``exponents`` ``[k]``: the batch-mean exponents at the last flossing update."""
  count: Any
  key: Any
  exponents: Any


def _default_select(params):
  if isinstance(params, dict) and "layers" in params:
    return params["layers"][0]
  return params


def flossing(cell, inputs, *, every: int = 1, k: int = 1, weight: float = 1.0,
             warmup: int = 0, length: Optional[int] = None,
             select: Optional[Callable[[Any], Any]] = None,
             key=None) -> optax.GradientTransformation:
  r"""Flossing during training, as an optax transformation: adds ``weight * grad L_floss``.

  On updates ``n`` with ``n % every == 0`` (``n`` = updates seen, from 0) the
  incoming gradient ``g`` becomes ``g + weight * d L_floss / d params`` with
  :func:`flossing_loss` evaluated on ``select(params)`` driven by ``inputs``;
  other updates pass ``g`` through (``jax.lax.cond``: they do not compute the
  penalty). Place it first in an ``optax.chain`` (before clipping and the
  optimizer) so that it acts like a loss term::

    opt = optax.chain(rj.train.flossing(cell, xs, every=100, k=4), rj.train.optimizer("adam", 1e-3))

  Args:
    cell: the rnnjax cell whose exponents are flossed.
    inputs: ``[*B, T, I]`` inputs, or a traceable function ``key -> xs``
      (called with ``fold_in(key, n)``: fresh inputs each flossing update).
    every: floss on every ``every``-th update (1: all of them).
    k, warmup, length: as :func:`flossing_loss`.
    weight: factor of the penalty.
    select: ``params -> cell params``; default ``params["layers"][0]`` for a
      :class:`rnnjax.SequenceModel`'s params dict, else the params themselves.
    key: PRNG key for the tangent bases (and ``inputs``).

  Returns:
    An ``optax.GradientTransformation`` with :class:`FlossingState`; its
    ``update`` needs ``params``.
  """
  every = _check_int(every, "every", 1)
  k = _check_int(k, "k", 1)
  weight = float(weight)
  select = _default_select if select is None else select
  if not callable(select):
    raise TypeError(f"select must be a function params -> cell params, got {select!r}.")
  base_key = jax.random.key(0) if key is None else key
  if key is not None:
    _checks.check_key(key)

  def init(params):
    del params
    return FlossingState(jnp.zeros((), jnp.int32), base_key, jnp.zeros((k,), jnp.float32))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("flossing needs params: call update(updates, state, params).")
    kk = jax.random.fold_in(state.key, state.count)

    def penalty(p):
      cp = select(p)
      lam = lyapunov_exponents(cell, cp, _truncate(_inputs_at(inputs, kk), length), k=k,
                               warmup=warmup, key=kk)
      lam = lam.reshape(-1, k)
      return jnp.mean(jnp.sum(jnp.square(lam), axis=-1)), jnp.mean(lam, axis=0)

    def with_floss(u):
      g, lam = jax.grad(penalty, has_aux=True)(params)
      u = jax.tree_util.tree_map(lambda a, b: a + jnp.asarray(weight, a.dtype) * b.astype(a.dtype),
                                 u, g)
      return u, lam.astype(jnp.float32)

    def without(u):
      return u, state.exponents

    updates, lam = jax.lax.cond(state.count % every == 0, with_floss, without, updates)
    return updates, FlossingState(state.count + 1, state.key, lam)

  return optax.GradientTransformation(init, update)


def _scale_recurrent(params, gain):
  """``params`` with every ``"w_h"`` leaf (of a cell, or of each layer of a Stack) times ``gain``."""
  if isinstance(params, dict):
    if "w_h" not in params:
      raise ValueError("scale_to_edge_of_chaos scales the recurrent weights params['w_h']; "
                       f"these params have keys {sorted(params)} (pass the params of an rnnjax "
                       "cell or Stack).")
    return dict(params, w_h=params["w_h"] * jnp.asarray(gain, params["w_h"].dtype))
  if isinstance(params, (list, tuple)) and params:
    return type(params)(_scale_recurrent(p, gain) for p in params)
  raise ValueError("scale_to_edge_of_chaos needs the params of an rnnjax cell (a dict with "
                   f"'w_h') or of a Stack (a sequence of them), got {type(params).__name__}.")


def scale_to_edge_of_chaos(cell, params, xs, carry=None, *, target: float = 0.0,
                           warmup: int = 0, lengths=None, key=None, tol: float = 1e-3,
                           bracket=(0.5, 2.0), max_gain: float = 1e3):
  r"""Rescales the recurrent weights so that the largest Lyapunov exponent equals ``target``.

  Finds the gain ``g`` with

  .. math::  \bar\lambda_1(g) = \frac{1}{B} \sum_b \lambda_1\big(\mathrm{cell}(W_h \to g W_h); x_b\big) = \mathrm{target}

  by bisection on ``log g`` (assuming ``lambda_1`` increases with ``g``, as
  for a linear RNN, ``lambda_1 = log(g rho(W))``, and for random tanh
  networks, which become chaotic above ``g = 1`` for ``W_ij ~ N(0, 1/N)``,
  Sompolinsky, Crisanti & Sommers 1988). ``bracket`` is widened by factors
  of 2 until it contains the target (up to ``[1/max_gain, max_gain]``). The
  same key, inputs and initial basis are used for every ``g``.

  Every rnnjax cell's recurrent weights are ``params["w_h"]`` (for gated cells
  all gates' recurrent blocks are scaled together; for a
  :class:`rnnjax.Stack` every layer's ``w_h``).

  Args:
    cell, params, xs, carry, warmup, lengths, key: as
      :func:`rnnjax.diagnostics.lyapunov_exponents` (``k = 1``).
    target: the wanted largest exponent (natural log per step; 0 = edge of chaos).
    tol: stop when the bracket's ratio ``hi / lo`` is below ``1 + tol``.
    bracket: the initial ``(lo, hi)`` gains.
    max_gain: the widest bracket tried, ``[1/max_gain, max_gain]``.

  Returns:
    ``(params, gain)``: the rescaled params and the gain (a float).

  Raises:
    ValueError: no ``"w_h"`` in params, or the target not reached within
      ``[1/max_gain, max_gain]`` (the message gives the exponents at the ends).
  """
  _scale_recurrent(params, 1.0)   # validates
  lo, hi = (float(b) for b in bracket)
  if not 0 < lo < hi:
    raise ValueError(f"bracket must be (lo, hi) with 0 < lo < hi, got {bracket!r}.")
  if not tol > 0:
    raise ValueError(f"tol must be > 0, got {tol!r}.")
  target = float(target)

  @jax.jit
  def lam1(log_gain):
    p = _scale_recurrent(params, jnp.exp(log_gain))
    lam = lyapunov_exponents(cell, p, xs, carry, k=1, warmup=warmup, lengths=lengths, key=key)
    return jnp.mean(lam[..., 0])

  f = lambda g: float(lam1(np.log(g))) - target  # noqa: E731
  flo, fhi = f(lo), f(hi)
  while flo > 0 and lo > 1.0 / max_gain:
    lo, hi, fhi = lo / 2, lo, flo
    flo = f(lo)
  while fhi < 0 and hi < max_gain:
    lo, flo, hi = hi, fhi, hi * 2
    fhi = f(hi)
  if not (flo <= 0 <= fhi):
    raise ValueError(f"the largest exponent does not cross target={target} for gains in "
                     f"[{lo:.3g}, {hi:.3g}] (lambda_1 - target = {flo:.3g} and {fhi:.3g}); "
                     "the cell may not reach it by scaling w_h alone.")
  while hi / lo > 1 + tol:
    mid = float(np.sqrt(lo * hi))
    fm = f(mid)
    if fm < 0:
      lo = mid
    else:
      hi = mid
  gain = float(np.sqrt(lo * hi))
  return _scale_recurrent(params, gain), gain
