"""Flax NNX integration: :class:`RNN` holds an rnnjax cell's parameters as
``nnx.Param`` so rnnjax cells drop into NNX models and train with
``nnx.Optimizer(model, tx, wrt=nnx.Param)``.

Example::

  from flax import nnx
  import optax, rnnjax as rj

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.rnn = rj.nnx.RNN(rj.GRU(16), input_size=3, rngs=rngs)
      self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, xs, lengths=None):
      return self.out(self.rnn(xs, lengths=lengths))

  model = Model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rnnjax import _checks
from rnnjax._scan import scan


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


class RNN(nnx.Module):
  """An rnnjax cell run over sequences by :func:`rnnjax.scan`, as an NNX module.

  The cell's parameters (the pytree ``cell.init(key, input_size)`` returns)
  are stored leaf by leaf as :class:`flax.nnx.Param`, so the module drops into
  an NNX model and trains with ``nnx.Optimizer(model, tx, wrt=nnx.Param)``;
  the cell itself stays a static, hashable config. The forward pass is exactly
  ``rj.scan(cell, module.get_params(), xs, ...)``.

  Example::

    rnn = rj.nnx.RNN(rj.LSTM(32), input_size=8, rngs=nnx.Rngs(0))
    ys = rnn(xs)                                   # [B, T, 8] -> [B, T, 32]
    carry, ys = rnn(xs, lengths=lengths, return_carry=True)

  Args:
    cell: an rnnjax cell or :class:`~rnnjax.Stack` (anything ``rj.scan`` runs).
    input_size: I, the feature size of the inputs.
    rngs: an ``nnx.Rngs``; its ``params`` stream initialises the weights.
    params: optional initial parameters (e.g. from
      ``rj.interop.from_torch``) instead of ``cell.init``; they must have the
      structure and shapes ``cell.init`` returns.
    unroll, time_major, input_projection: passed to :func:`rnnjax.scan`.
  """

  def __init__(self, cell, input_size: int, *, rngs: nnx.Rngs, params: Any = None,
               unroll: int = 1, time_major: bool = False, input_projection: str = "auto"):
    if not (hasattr(cell, "init") and hasattr(cell, "initial_carry") and callable(cell)):
      raise TypeError(
          "cell must be an rnnjax cell or Stack (with init, initial_carry and a step "
          f"__call__), got {type(cell).__name__}.")
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}.")
    input_size = _checks.check_positive_int(input_size, "input_size")
    key = rngs.params()
    if params is None:
      params = cell.init(key, input_size)
    else:
      expected = jax.eval_shape(lambda: cell.init(key, input_size))
      if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(expected):
        raise TypeError(
            f"params has structure {jax.tree_util.tree_structure(params)}, expected "
            f"{jax.tree_util.tree_structure(expected)} (that of cell.init).")
      for p, e in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        if tuple(p.shape) != tuple(e.shape):
          raise ValueError(f"params has a leaf of shape {tuple(p.shape)} where cell.init "
                           f"gives {tuple(e.shape)} (input_size={input_size}).")
    self.cell = cell
    self.input_size = input_size
    self.unroll = unroll
    self.time_major = time_major
    self.input_projection = input_projection
    self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, params))

  def get_params(self):
    """The parameters as a plain pytree of arrays (the structure of ``cell.init``)."""
    return jax.tree_util.tree_map(lambda v: v[...], self.params, is_leaf=_is_variable)

  def initial_carry(self, batch_shape=(), dtype=None):
    """``cell.initial_carry(batch_shape, dtype)``: zeros."""
    return self.cell.initial_carry(batch_shape, dtype)

  def __call__(self, xs, *, lengths=None, carry=None, reverse: bool = False,
               return_carry: bool = False):
    """Runs the cell over ``xs`` ``[*B, T, I]`` (``[T, *B, I]`` if time-major).

    Args:
      xs: the inputs.
      lengths: optional int ``[*B]``; see :func:`rnnjax.scan`.
      carry: initial carry (default zeros).
      reverse: read the sequences backwards (within their lengths).
      return_carry: also return the final carry.

    Returns:
      ``ys`` ``[*B, T, O]``, or ``(final_carry, ys)`` with ``return_carry``.
    """
    final, ys = scan(self.cell, self.get_params(), xs, carry, lengths=lengths,
                     reverse=reverse, unroll=self.unroll, time_major=self.time_major,
                     input_projection=self.input_projection)
    return (final, ys) if return_carry else ys


__all__ = ["RNN"]
