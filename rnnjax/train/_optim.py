"""The optimizer builder: one readable call -> an ``optax.GradientTransformation``.

Everything here is optax: the optimizers are optax's own, and the remedies of
seeds 002/003 (gradient clipping, Pascanu et al. 2013; weight clipping; L1/L2
weight penalties) are small ``GradientTransformation`` s chained around them.
:func:`optimizer` chains, in this order (each stage only when asked for)::

  g  = dL/dw                                   (the loss gradient)
  g += l1 * sign(w) + 2 * l2 * w               (penalties, :func:`l1_penalty`, :func:`l2_penalty`)
  g  = AGC(g, w)                               (adaptive clipping, optax.adaptive_grad_clip)
  g  = clip(g, -clip_value, clip_value)        (elementwise, optax.clip)
  g  = g * min(1, clip_norm / ||g||_2)         (global norm, :func:`clip_by_global_norm`)
  u  = OPT(g)                                  (sgd | nesterov | rmsprop | adagrad | adam | adamw)
  u  = clip(w + u, -c, c) - w                  (weight clipping, :func:`weight_clip`)
  w' = w + u                                   (optax.apply_updates)

The whole chain is wrapped in ``optax.apply_if_finite`` (``skip_nonfinite``):
a step whose updates contain a NaN or an infinity leaves params and optimizer
state untouched, and ``state.notfinite_count`` / ``state.total_notfinite``
count the skipped steps.

Penalties are gradient transformations, not loss terms: adding ``2 * l2 * w``
to the gradient is exactly the gradient of ``loss + l2 * ||w||^2`` (and
``l1 * sign(w)`` that of ``l1 * ||w||_1``, with sign(0) = 0), so the clipping
and the optimizer see the penalised gradient, as in Keras' ``kernel_regularizer``
+ ``clipnorm``. The reported training loss is the data loss, without the penalty.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from rnnjax.diagnostics._gradstats import global_norm as global_norm

OPTIMIZERS = ("sgd", "nesterov", "rmsprop", "adagrad", "adam", "adamw")


class ClipByGlobalNormState(NamedTuple):
  """State of :func:`clip_by_global_norm`: what the last step saw.

  ``norm``: the global L2 norm of the incoming gradient (before clipping);
  ``clipped``: whether it exceeded ``max_norm`` (so the gradient was rescaled).
  The norm is :func:`global_norm` (overflow-safe).
  """
  norm: jax.Array
  clipped: jax.Array


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  r"""Global-norm clipping that records its norm and whether it fired.

  ``g <- g * min(1, max_norm / ||g||)``, ``||g|| = sqrt(sum over all leaves of
  sum(g**2))``: the clipped gradient has norm ``min(||g||, max_norm)`` and the
  direction of ``g``. Same values as ``optax.clip_by_global_norm``; the state
  (:class:`ClipByGlobalNormState`) keeps the pre-clipping norm and the flag so
  the training loop can report them.
  """
  max_norm = _check_positive(max_norm, "clip_norm")

  def init_fn(params):
    del params
    return ClipByGlobalNormState(norm=jnp.zeros((), jnp.float32),
                                 clipped=jnp.zeros((), jnp.bool_))

  def update_fn(updates, state, params=None):
    del params, state
    norm = global_norm(updates)
    clipped = norm > max_norm
    # Divide by max(norm, max_norm): exactly 1 when not clipping.
    scale = max_norm / jnp.maximum(norm, max_norm)
    updates = jax.tree_util.tree_map(lambda g: (g * scale).astype(g.dtype), updates)
    return updates, ClipByGlobalNormState(norm=norm.astype(jnp.float32), clipped=clipped)

  return optax.GradientTransformation(init_fn, update_fn)


def weight_clip(c: float) -> optax.GradientTransformation:
  r"""Projects the weights into ``[-c, c]`` after each update (seed 002).

  A ``GradientTransformation`` sees updates and params, not the new params, so
  it returns ``u' = clip(w + u, -c, c) - w``; after ``optax.apply_updates``
  the weights are ``clip(w + u, -c, c)``. It must be the *last* stage of a
  chain (after the optimizer) and needs ``params`` passed to ``update``.
  A non-finite update is passed through unclipped, so that it is detected and
  the step skipped rather than hidden by the projection.
  """
  c = _check_positive(c, "weight_clip")

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight_clip needs the params: call opt.update(grads, state, params).")
    # A non-finite update stays non-finite (so the loop's finiteness check
    # skips the step) instead of being clipped to +-c.
    updates = jax.tree_util.tree_map(
        lambda u, w: jnp.where(jnp.isfinite(u), jnp.clip(w + u, -c, c) - w, u).astype(u.dtype),
        updates, params)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


_weight_clip = weight_clip  # the builder's keyword argument shadows the name


def l2_penalty(strength: float) -> optax.GradientTransformation:
  r"""Adds the gradient of ``strength * sum(w**2)``: ``g <- g + 2 * strength * w``."""
  strength = _check_nonnegative(strength, "l2")
  return _add_penalty(lambda w: 2.0 * strength * w)


def l1_penalty(strength: float) -> optax.GradientTransformation:
  r"""Adds the (sub)gradient of ``strength * sum(|w|)``: ``g <- g + strength * sign(w)``."""
  strength = _check_nonnegative(strength, "l1")
  return _add_penalty(lambda w: strength * jnp.sign(w))


def _add_penalty(grad_of_penalty):
  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight penalties need the params: call opt.update(grads, state, params).")
    updates = jax.tree_util.tree_map(
        lambda g, w: (g + grad_of_penalty(w)).astype(g.dtype), updates, params)
    return updates, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class Optimizer(optax.GradientTransformation):
  """The ``optax.GradientTransformation`` returned by :func:`optimizer`,
  equal to (and hashing like) any other built from the same arguments.

  It is an ``optax.GradientTransformation`` (a ``(init, update)`` named tuple)
  in every respect; equality by configuration is what lets :func:`fit` reuse
  its compiled step when called again with a fresh but equal
  ``optimizer(...)``. ``config`` holds the arguments; an optimizer built with
  an unhashable argument (e.g. a ``penalty_mask`` pytree) compares by identity.
  """
  config: Any

  def __new__(cls, tx, config):
    init, update = tx.init, tx.update

    # optax's optimizers mix Python floats and int32 step counts (e.g. Adam's
    # bias correction); they run under standard dtype promotion even where the
    # caller enables jax_numpy_dtype_promotion="strict".
    def init_fn(params):
      with jax.numpy_dtype_promotion("standard"):
        return init(params)

    def update_fn(updates, state, params=None):
      with jax.numpy_dtype_promotion("standard"):
        return update(updates, state, params)

    self = super().__new__(cls, init_fn, update_fn)
    object.__setattr__(self, "config", config)
    return self

  def __eq__(self, other):
    if self is other:
      return True
    if isinstance(other, Optimizer) and self.config is not None and other.config is not None:
      return self.config == other.config
    return False

  def __ne__(self, other):
    return not self == other

  def __hash__(self):
    return hash(self.config) if self.config is not None else id(self)

  def __repr__(self):
    return f"rnnjax.train.Optimizer{self.config!r}" if self.config is not None else "rnnjax.train.Optimizer(...)"


def _config_key(*args, kwargs):
  key = args + (tuple(sorted(kwargs.items())),)
  try:
    hash(key)
  except TypeError:
    return None
  return key


def optimizer(name: str = "adam", learning_rate: Union[float, Callable] = 1e-3, *,
              clip_norm: Optional[float] = None,
              clip_value: Optional[float] = None,
              adaptive_clip: Optional[float] = None,
              weight_clip: Optional[float] = None,
              l1: float = 0.0,
              l2: float = 0.0,
              penalty_mask: Any = None,
              skip_nonfinite: bool = True,
              **optimizer_kwargs) -> optax.GradientTransformation:
  r"""Builds an ``optax.GradientTransformation`` from readable options.

  Example::

    opt = rj.train.optimizer("sgd", 0.1, momentum=0.9, clip_norm=1.0, l2=1e-4)

  Args:
    name: one of ``"sgd"``, ``"nesterov"`` (SGD with Nesterov momentum,
      ``momentum`` default 0.9), ``"rmsprop"``, ``"adagrad"``, ``"adam"``,
      ``"adamw"`` (decoupled ``weight_decay``, optax default 1e-4).
    learning_rate: a float or an optax schedule ``step -> lr``.
    clip_norm: global-norm clipping threshold tau, applied to the gradient
      *before* the optimizer: ``g <- g * min(1, tau / ||g||)``.
    clip_value: elementwise clipping ``g <- clip(g, -v, v)`` (before clip_norm).
    adaptive_clip: adaptive gradient clipping (Brock et al. 2021) with this
      clipping ratio (``optax.adaptive_grad_clip``): each unit's gradient is
      limited to ``ratio * max(||w_unit||, 1e-3)``.
    weight_clip: after each update project every weight into ``[-c, c]``.
    l1, l2: penalty strengths; the gradient gets ``l1 * sign(w) + 2 * l2 * w``
      (the gradient of ``l1 ||w||_1 + l2 ||w||_2^2``), before any clipping.
    penalty_mask: optional pytree of bools (or a callable ``params -> mask``)
      selecting the parameters the penalties apply to (default: all), as in
      ``optax.masked``; e.g. only weight matrices, not biases.
    skip_nonfinite: wrap the chain in ``optax.apply_if_finite``: steps with
      non-finite updates are skipped (params and state untouched) and counted
      in ``state.total_notfinite``.
    **optimizer_kwargs: passed to the optax optimizer (e.g. ``momentum``,
      ``b1``, ``b2``, ``eps``, ``decay``, ``weight_decay``).

  Returns:
    an ``optax.GradientTransformation`` (an :class:`Optimizer`: two calls with
    equal arguments give equal, equally hashed optimizers, so :func:`fit`
    compiles its step once for both). With ``clip_norm`` its state contains
    a :class:`ClipByGlobalNormState` (pre-clipping norm, clipped flag).
  """
  config = _config_key(name, learning_rate, clip_norm, clip_value, adaptive_clip, weight_clip,
                       l1, l2, penalty_mask, skip_nonfinite, kwargs=optimizer_kwargs)
  if not isinstance(name, str) or name not in OPTIMIZERS:
    raise ValueError(f"name must be one of {OPTIMIZERS}, got {name!r}.")
  if not callable(learning_rate):
    learning_rate = _check_positive(learning_rate, "learning_rate")
  stages = []
  if l1 or l2:
    pen = []
    if l1:
      pen.append(l1_penalty(l1))
    if l2:
      pen.append(l2_penalty(l2))
    pen = optax.chain(*pen)
    stages.append(pen if penalty_mask is None else optax.masked(pen, penalty_mask))
  elif penalty_mask is not None:
    raise ValueError("penalty_mask was given but neither l1 nor l2 is set.")
  if adaptive_clip is not None:
    stages.append(optax.adaptive_grad_clip(_check_positive(adaptive_clip, "adaptive_clip")))
  if clip_value is not None:
    stages.append(optax.clip(_check_positive(clip_value, "clip_value")))
  if clip_norm is not None:
    stages.append(clip_by_global_norm(clip_norm))
  stages.append(_base_optimizer(name, learning_rate, optimizer_kwargs))
  if weight_clip is not None:
    stages.append(_weight_clip(weight_clip))
  tx = optax.chain(*stages) if len(stages) > 1 else stages[0]
  if skip_nonfinite:
    # Never give up skipping: a NaN must never be written into params.
    tx = optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)
  return Optimizer(tx, config)


def _base_optimizer(name, lr, kwargs):
  kwargs = dict(kwargs)
  if name == "nesterov":
    kwargs.setdefault("momentum", 0.9)
    kwargs["nesterov"] = True
    factory = optax.sgd
  else:
    factory = getattr(optax, name)
  try:
    return factory(lr, **kwargs)
  except TypeError as e:
    raise TypeError(f"optimizer {name!r} (optax.{factory.__name__}) does not accept the "
                    f"options {sorted(kwargs)}: {e}") from None


def _check_positive(value, argname):
  if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
    raise TypeError(f"{argname} must be a positive number, got {type(value).__name__}: {value!r}.")
  v = float(value)
  if not v > 0 or v == float("inf"):
    raise ValueError(f"{argname} must be a positive finite number, got {value!r}.")
  return v


def _check_nonnegative(value, argname):
  if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
    raise TypeError(f"{argname} must be a number >= 0, got {type(value).__name__}: {value!r}.")
  v = float(value)
  if not v >= 0 or v == float("inf"):
    raise ValueError(f"{argname} must be a finite number >= 0, got {value!r}.")
  return v


def find_state(opt_state, cls):
  """All sub-states of type ``cls`` inside an optax state (depth-first order)."""
  found = []

  def visit(x):
    if isinstance(x, cls):
      found.append(x)
      return
    if isinstance(x, (tuple, list)):
      for y in x:
        visit(y)
    elif isinstance(x, dict):
      for y in x.values():
        visit(y)
    elif hasattr(x, "inner_state"):  # optax.masked / apply_if_finite states
      visit(x.inner_state)

  visit(opt_state)
  return found
