"""Activation functions by name, hashable by value.

Cells store their activations as :class:`Activation` objects so that a cell's
config stays static and hashable: two cells built with the same activation
name (or the same Python function, or two structurally identical lambdas)
compare and hash equal, so ``jax.jit`` never recompiles for them.

Names and definitions (all elementwise):

================  ==========================================================
name              definition
================  ==========================================================
``sigmoid``       1 / (1 + exp(-x)); derivative <= 1/4
``tanh``          tanh(x); derivative <= 1
``relu``          max(x, 0)
``leaky_relu``    x if x >= 0 else 0.01 x
``elu``           x if x > 0 else exp(x) - 1
``hard_sigmoid``  clip(x / 6 + 1/2, 0, 1)  (``jax.nn.hard_sigmoid``; Keras 3)
``identity``      x
``softmax``       exp(x) / sum(exp(x)) over the last axis (readouts only)
================  ==========================================================
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Union

import jax
import jax.numpy as jnp


def _identity(x):
  return x


def _leaky_relu(x):
  return jax.nn.leaky_relu(x, negative_slope=0.01)


def _softmax(x):
  return jax.nn.softmax(x, axis=-1)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": _leaky_relu,
    "elu": jax.nn.elu,
    "hard_sigmoid": jax.nn.hard_sigmoid,
    "identity": _identity,
    "linear": _identity,
    "softmax": _softmax,
}


def _value_key(fn: Callable) -> Any:
  """A hashable key that identifies a plain Python function by its value.

  Two functions with the same bytecode, constants, defaults, closure values
  and values of the globals they read get the same key, so
  ``lambda x: x * 2`` written twice does not trigger a recompile. Other
  callables (or unhashable captured values) fall back to identity.
  """
  code = getattr(fn, "__code__", None)
  if code is None:
    return ("id", id(fn), fn)
  try:
    closure = tuple(c.cell_contents for c in (fn.__closure__ or ()))
    defaults = (fn.__defaults__ or (), tuple(sorted((fn.__kwdefaults__ or {}).items())))
    fn_globals = getattr(fn, "__globals__", {})
    read_globals = tuple((n, fn_globals[n]) for n in code.co_names if n in fn_globals)
    key = ("code", code.co_code, code.co_consts, code.co_names,
           code.co_varnames, defaults, closure, read_globals)
    hash(key)
    return key
  except (TypeError, ValueError):
    return ("id", id(fn), fn)


@dataclasses.dataclass(frozen=True, eq=False)
class NamedFn:
  """A named function, hashable and comparable by value (base of Activation, Initializer).

  Attributes:
    name: the registered name or the callable's ``__name__``.
    fn: the function.

  A function registered under ``name`` is keyed by that name; any other is
  keyed by its value (bytecode, constants, defaults, closure and the globals it
  reads), frozen at construction, so a jit cache entry made for it can never
  start to match a later, different function.
  """
  name: str
  fn: Callable

  _registry: ClassVar[dict] = {}

  def __post_init__(self):
    if self._registry.get(self.name) is self.fn:
      key = ("name", self.name)
    else:
      key = ("fn", _value_key(self.fn))
    object.__setattr__(self, "_frozen_key", key)

  def _key(self):
    return self._frozen_key

  def __eq__(self, other):
    return type(other) is type(self) and self._key() == other._key()

  def __hash__(self):
    return hash((type(self).__name__, self._key()))

  def __repr__(self):
    return repr(self.name)


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Activation(NamedFn):
  """An elementwise activation ``jax.Array -> jax.Array``, hashable by value.

  ``name`` is a name from the module docstring or the callable's ``__name__``.
  """
  _registry: ClassVar[dict] = ACTIVATIONS

  def __call__(self, x):
    """``fn(x)``, elementwise."""
    return self.fn(x)


ActivationLike = Union[str, Callable[[jax.Array], jax.Array], Activation]


def get_activation(act: ActivationLike, *, argname: str = "activation") -> Activation:
  """Returns the :class:`Activation` for a name, a callable or an Activation.

  Raises:
    ValueError: for an unknown name, naming the argument and the known names.
    TypeError: for something that is neither a string nor a callable.
  """
  if isinstance(act, Activation):
    return act
  if isinstance(act, str):
    if act not in ACTIVATIONS:
      raise ValueError(
          f"{argname}={act!r} is not a known activation; expected one of "
          f"{sorted(ACTIVATIONS)} or a callable.")
    return Activation(act, ACTIVATIONS[act])
  if callable(act):
    return Activation(getattr(act, "__name__", type(act).__name__), act)
  raise TypeError(
      f"{argname} must be an activation name (one of {sorted(ACTIVATIONS)}) "
      f"or a callable, got {type(act).__name__}: {act!r}.")
