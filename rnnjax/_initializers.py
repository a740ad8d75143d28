"""Weight initialisers by name, hashable by value.

Every initialiser here has the signature ``init(key, shape, dtype) -> array``
(the ``jax.nn.initializers`` convention). Fused weights ``[fan_in, G*H]`` are
initialised one ``[fan_in, H]`` gate block at a time, so an orthogonal
recurrent matrix is orthogonal per gate and a Glorot input matrix uses the
fan-out of one gate, as PyTorch, Keras and Flax do for their per-gate
matrices.

================  ============================================================
name              distribution of each gate block ``[fan_in, H]``
================  ============================================================
``orthogonal``    a random orthogonal matrix (QR of a Gaussian, sign-fixed)
``glorot_uniform``  U(-a, a), a = sqrt(6 / (fan_in + H))  (Glorot & Bengio 2010)
``glorot_normal``   N(0, 2 / (fan_in + H))
``lecun_normal``    truncated N(0, 1 / fan_in)  (Flax's default input kernel)
``lecun_uniform``   U(-a, a), a = sqrt(3 / fan_in)
``he_normal``       truncated N(0, 2 / fan_in)
``torch``           U(-1/sqrt(H), 1/sqrt(H))  (PyTorch's nn.RNN/LSTM/GRU)
``identity``        the identity (IRNN; needs fan_in == H)
``small_normal``    N(0, 0.001^2)  (Le et al. 2015's IRNN input weights)
``zeros``           0
================  ============================================================
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, ClassVar, Union

import jax
import jax.numpy as jnp

from rnnjax._activations import NamedFn


def _orthogonal(key, shape, dtype):
  # LAPACK's QR has no bf16/f16 kernel: draw in float32, then cast.
  dtype = jnp.dtype(dtype)
  compute = dtype if dtype in (jnp.float32, jnp.float64) else jnp.float32
  return jax.nn.initializers.orthogonal()(key, shape, compute).astype(dtype)


def _identity(key, shape, dtype):
  del key
  if shape[0] != shape[1]:
    raise ValueError(
        f"the identity initialiser needs a square block, got shape {shape}; "
        "use it for recurrent weights only.")
  return jnp.eye(shape[0], dtype=dtype)


def _torch(key, shape, dtype):
  bound = 1.0 / math.sqrt(shape[1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def _small_normal(key, shape, dtype):
  return 0.001 * jax.random.normal(key, shape, dtype)


def _zeros(key, shape, dtype):
  del key
  return jnp.zeros(shape, dtype)


INITIALIZERS: dict[str, Callable] = {
    "orthogonal": _orthogonal,
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
    "glorot_normal": jax.nn.initializers.glorot_normal(),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
    "he_normal": jax.nn.initializers.he_normal(),
    "torch": _torch,
    "identity": _identity,
    "small_normal": _small_normal,
    "zeros": _zeros,
}


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Initializer(NamedFn):
  """A weight initialiser ``init(key, shape, dtype)``, hashable and comparable by value."""
  _registry: ClassVar[dict] = INITIALIZERS

  def __call__(self, key, shape, dtype=jnp.float32):
    """An array of ``shape`` and ``dtype`` drawn with ``key``."""
    return self.fn(key, shape, dtype)


InitializerLike = Union[str, Callable, Initializer]


def get_initializer(init: InitializerLike, *, argname: str) -> Initializer:
  """Returns the :class:`Initializer` for a name or a callable."""
  if isinstance(init, Initializer):
    return init
  if isinstance(init, str):
    if init not in INITIALIZERS:
      raise ValueError(
          f"{argname}={init!r} is not a known initialiser; expected one of "
          f"{sorted(INITIALIZERS)} or a callable init(key, shape, dtype).")
    return Initializer(init, INITIALIZERS[init])
  if callable(init):
    return Initializer(getattr(init, "__name__", type(init).__name__), init)
  raise TypeError(
      f"{argname} must be an initialiser name (one of {sorted(INITIALIZERS)}) "
      f"or a callable init(key, shape, dtype), got {type(init).__name__}.")


def init_gates(init: Initializer, key, fan_in: int, hidden: int, num_gates: int,
               dtype) -> jax.Array:
  """Initialises a fused ``[fan_in, num_gates * hidden]`` matrix gate by gate."""
  keys = jax.random.split(key, num_gates)
  blocks = [init(k, (fan_in, hidden), dtype) for k in keys]
  return jnp.concatenate(blocks, axis=1)
