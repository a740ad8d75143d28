"""Flax NNX integration: rnnjax cells and layers as NNX modules.

Each module stores the parameters of an rnnjax cell or layer (the pytree
``layer.init(key, input_size)`` returns) leaf by leaf as ``nnx.Param``, so
it drops into an NNX model and trains with
``nnx.Optimizer(model, tx, wrt=nnx.Param)``; the rnnjax config stays a
static, hashable attribute and the forward pass is rnnjax's pure function.

============================  ======================================  ==========================
module                        wraps                                   forward pass
============================  ======================================  ==========================
:class:`RNN`                  a cell, or an :class:`rnnjax.Stack`     :func:`rnnjax.scan`
:class:`Stack`                :class:`rnnjax.Stack` (or its cells)    :meth:`rnnjax.Stack.apply`
:class:`Bidirectional`        :class:`rnnjax.Bidirectional`           its ``apply``
:class:`SequenceModel`        :class:`rnnjax.SequenceModel`           its ``apply``
============================  ======================================  ==========================

Dropout follows NNX's conventions, as :class:`flax.nnx.Dropout` does: a
layer with a dropout rate (``Stack(..., dropout=0.5)``,
``SequenceModel(..., dropout=0.2)``) forks a stream from ``rngs["dropout"]``
(or the default stream) at construction, and drops in training mode only:
``model.train()`` / ``model.eval()`` (or ``nnx.view(model,
deterministic=...)``) switch every rnnjax module of a model, and
``deterministic=`` / ``rngs=`` at call time take precedence. Training mode
is the default, as for ``nnx.Dropout``. Sequence lengths are accepted as
``lengths=`` (rnnjax) or ``seq_lengths=`` (Flax).

Example::

  from flax import nnx
  import optax, rnnjax as rj

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.rnn = rj.nnx.Stack([rj.GRU(16), rj.GRU(16)], input_size=3, dropout=0.25,
                              rngs=rngs)
      self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, xs, seq_lengths=None):
      return self.out(self.rnn(xs, seq_lengths=seq_lengths))

  model = Model(nnx.Rngs(params=0, dropout=1))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  model.eval()                               # no dropout; model.train() turns it back on
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from flax import nnx

from rnnjax import _checks
from rnnjax import _layers
from rnnjax._scan import scan


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _dropout_rate(layer) -> float:
  """The largest dropout rate anywhere in an rnnjax layer (0 if none)."""
  if isinstance(layer, _layers.Stack):
    return float(layer.dropout)
  if isinstance(layer, _layers.SequenceModel):
    return max([float(layer.dropout)] + [_dropout_rate(l) for l in layer.layers])
  return 0.0


def _pick_lengths(lengths, seq_lengths):
  if lengths is not None and seq_lengths is not None:
    raise TypeError("pass the sequence lengths as lengths= or seq_lengths=, not both.")
  return seq_lengths if seq_lengths is not None else lengths


class _Module(nnx.Module):
  """Shared machinery: parameters as ``nnx.Param``, the dropout stream and mode."""

  def _setup(self, layer, input_size, rngs, params, deterministic):
    if not isinstance(rngs, nnx.Rngs):
      raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}.")
    input_size = _checks.check_positive_int(input_size, "input_size")
    if not isinstance(deterministic, bool):
      raise TypeError(f"deterministic must be a bool, got {deterministic!r}.")
    key = rngs.params()
    if params is None:
      params = layer.init(key, input_size)
    else:
      expected = jax.eval_shape(lambda: layer.init(key, input_size))
      if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(expected):
        raise TypeError(
            f"params has structure {jax.tree_util.tree_structure(params)}, expected "
            f"{jax.tree_util.tree_structure(expected)} (that of {type(layer).__name__}.init).")
      for p, e in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        if tuple(p.shape) != tuple(e.shape):
          raise ValueError(f"params has a leaf of shape {tuple(p.shape)} where "
                           f"{type(layer).__name__}.init gives {tuple(e.shape)} "
                           f"(input_size={input_size}).")
    self.input_size = input_size
    self.params = nnx.data(jax.tree_util.tree_map(nnx.Param, params))
    self.dropout_rate = _dropout_rate(layer)
    self.deterministic = deterministic
    # Like nnx.Dropout: the stream is forked from rngs["dropout"] (falling back
    # to the default stream) only when there is something to drop.
    self.rngs = (rngs["dropout"].fork() if self.dropout_rate > 0 else nnx.data(None))

  def get_params(self):
    """The parameters as a plain pytree of arrays (the structure of ``init``)."""
    return jax.tree_util.tree_map(lambda v: v[...], self.params, is_leaf=_is_variable)

  def set_view(self, deterministic: Optional[bool] = None):
    """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _dropout_key(self, deterministic, rngs):
    """The key for this call's dropout masks, or None (no dropout)."""
    deterministic = self.deterministic if deterministic is None else deterministic
    if deterministic or self.dropout_rate == 0:
      return None
    if rngs is None:
      rngs = self.rngs
    if isinstance(rngs, nnx.Rngs):
      return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    if isinstance(rngs, jax.Array):
      _checks.check_key(rngs, "rngs")
      return rngs
    raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or a jax.random key, got "
                    f"{type(rngs).__name__}.")


class RNN(_Module):
  """An rnnjax cell run over sequences by :func:`rnnjax.scan`, as an NNX module.

  The cell's parameters (the pytree ``cell.init(key, input_size)`` returns)
  are stored leaf by leaf as :class:`flax.nnx.Param`; the cell itself stays a
  static, hashable config. The forward pass is exactly
  ``rj.scan(cell, module.get_params(), xs, ...)``; for a
  :class:`rnnjax.Stack` with ``dropout > 0`` in training mode it is
  ``stack.apply(params, xs, key=...)`` (dropout between the layers).

  Example::

    rnn = rj.nnx.RNN(rj.LSTM(32), input_size=8, rngs=nnx.Rngs(0))
    ys = rnn(xs)                                   # [B, T, 8] -> [B, T, 32]
    carry, ys = rnn(xs, seq_lengths=lengths, return_carry=True)

  Args:
    cell: an rnnjax cell or :class:`~rnnjax.Stack` (anything ``rj.scan``
      runs). For :class:`~rnnjax.Bidirectional` and
      :class:`~rnnjax.SequenceModel` use :class:`Bidirectional` and
      :class:`SequenceModel`.
    input_size: I, the feature size of the inputs.
    rngs: an ``nnx.Rngs``; its ``params`` stream initialises the weights, its
      ``dropout`` stream (or the default one) drives dropout.
    params: optional initial parameters (e.g. from
      ``rj.interop.from_torch``) instead of ``cell.init``; they must have the
      structure and shapes ``cell.init`` returns.
    unroll, time_major, input_projection: passed to :func:`rnnjax.scan`.
    deterministic: start in evaluation mode (no dropout); default False,
      training mode, as ``nnx.Dropout``.
  """

  def __init__(self, cell, input_size: int, *, rngs: nnx.Rngs, params: Any = None,
               unroll: int = 1, time_major: bool = False, input_projection: str = "auto",
               deterministic: bool = False):
    if isinstance(cell, (_layers.Bidirectional, _layers.SequenceModel)):
      raise TypeError(f"cell is a {type(cell).__name__}: wrap it with "
                      f"rnnjax.nnx.{type(cell).__name__}, not rnnjax.nnx.RNN.")
    if not (hasattr(cell, "init") and hasattr(cell, "initial_carry") and callable(cell)):
      raise TypeError(
          "cell must be an rnnjax cell or Stack (with init, initial_carry and a step "
          f"__call__), got {type(cell).__name__}.")
    self.cell = cell
    self.unroll = unroll
    self.time_major = time_major
    self.input_projection = input_projection
    self._setup(cell, input_size, rngs, params, deterministic)

  def initial_carry(self, batch_shape=(), dtype=None):
    """``cell.initial_carry(batch_shape, dtype)``: zeros."""
    return self.cell.initial_carry(batch_shape, dtype)

  def __call__(self, xs, *, lengths=None, seq_lengths=None, carry=None, initial_carry=None,
               reverse: bool = False, return_carry: bool = False,
               deterministic: Optional[bool] = None, rngs=None):
    """Runs the cell over ``xs`` ``[*B, T, I]`` (``[T, *B, I]`` if time-major).

    Args:
      xs: the inputs.
      lengths: optional int ``[*B]``; see :func:`rnnjax.scan`.
      seq_lengths: the same, under Flax's name (pass one of the two).
      carry: initial carry (default zeros); ``initial_carry`` is Flax's name.
      reverse: read the sequences backwards (within their lengths).
      return_carry: also return the final carry.
      deterministic: overrides the module's mode for this call.
      rngs: overrides the dropout stream for this call (an ``nnx.Rngs``,
        an ``nnx.RngStream`` or a key).

    Returns:
      ``ys`` ``[*B, T, O]``, or ``(final_carry, ys)`` with ``return_carry``.
    """
    lengths = _pick_lengths(lengths, seq_lengths)
    if carry is not None and initial_carry is not None:
      raise TypeError("pass the initial carry as carry= or initial_carry=, not both.")
    carry = initial_carry if carry is None else carry
    key = self._dropout_key(deterministic, rngs)
    if key is not None:  # a Stack with dropout, in training mode
      final, ys = self.cell.apply(self.get_params(), xs, carry, lengths=lengths,
                                  reverse=reverse, key=key, time_major=self.time_major,
                                  input_projection=self.input_projection)
    else:
      final, ys = scan(self.cell, self.get_params(), xs, carry, lengths=lengths,
                       reverse=reverse, unroll=self.unroll, time_major=self.time_major,
                       input_projection=self.input_projection)
    return (final, ys) if return_carry else ys


class Stack(RNN):
  """An :class:`rnnjax.Stack` as an NNX module, with dropout between layers.

  Example::

    stack = rj.nnx.Stack([rj.GRU(64), rj.GRU(64)], input_size=8, dropout=0.5,
                         rngs=nnx.Rngs(params=0, dropout=1))
    ys = stack(xs)          # training mode: a fresh dropout mask per call
    stack.eval()
    ys = stack(xs)          # evaluation mode: == rj.scan(stack.cell, stack.get_params(), xs)

  Args:
    cells: an :class:`rnnjax.Stack`, or its cells (bottom first).
    input_size: I.
    rngs: an ``nnx.Rngs`` (``params`` and ``dropout`` streams).
    dropout: the rate of inverted dropout on the outputs of every layer but
      the last (training mode only); default: the Stack's own, else 0.
    params, time_major, input_projection, deterministic: as :class:`RNN`.
  """

  def __init__(self, cells, input_size: int, *, rngs: nnx.Rngs,
               dropout: Optional[float] = None, params: Any = None,
               time_major: bool = False, input_projection: str = "auto",
               deterministic: bool = False):
    if isinstance(cells, _layers.Stack):
      stack = cells if dropout is None else _layers.Stack(cells.cells, dropout)
    else:
      stack = _layers.Stack(tuple(cells), 0.0 if dropout is None else dropout)
    super().__init__(stack, input_size, rngs=rngs, params=params, time_major=time_major,
                     input_projection=input_projection, deterministic=deterministic)


class Bidirectional(_Module):
  """An :class:`rnnjax.Bidirectional` as an NNX module.

  Example::

    bi = rj.nnx.Bidirectional(rj.LSTM(32), input_size=8, rngs=nnx.Rngs(0))
    ys = bi(xs, seq_lengths=lengths)               # [B, T, 64]

  Args:
    layer: an :class:`rnnjax.Bidirectional`, or the forward cell.
    input_size: I.
    rngs: an ``nnx.Rngs``.
    backward, merge: as :class:`rnnjax.Bidirectional` (when ``layer`` is a cell).
    params, time_major, input_projection: as :class:`RNN`.
  """

  def __init__(self, layer, input_size: int, *, rngs: nnx.Rngs, backward=None,
               merge: str = "concat", params: Any = None, time_major: bool = False,
               input_projection: str = "auto"):
    if not isinstance(layer, _layers.Bidirectional):
      layer = _layers.Bidirectional(layer, backward, merge)
    self.layer = layer
    self.time_major = time_major
    self.input_projection = input_projection
    self._setup(layer, input_size, rngs, params, False)

  def __call__(self, xs, *, lengths=None, seq_lengths=None, carry=None,
               return_carry: bool = False):
    """``xs [*B, T, I] -> ys [*B, T, O]`` (or ``((carry_f, carry_b), ys)``)."""
    lengths = _pick_lengths(lengths, seq_lengths)
    final, ys = self.layer.apply(self.get_params(), xs, carry, lengths=lengths,
                                 time_major=self.time_major,
                                 input_projection=self.input_projection)
    return (final, ys) if return_carry else ys


class SequenceModel(_Module):
  """An :class:`rnnjax.SequenceModel` (recurrent layers + readout) as an NNX module.

  Example::

    model = rj.nnx.SequenceModel(
        rj.SequenceModel([rj.LSTM(64), rj.LSTM(64)], rj.Dense(10, "softmax"), dropout=0.3),
        input_size=8, rngs=nnx.Rngs(params=0, dropout=1))
    probs = model(xs, seq_lengths=lengths)          # [B, 10]; dropout in training mode
    logits = model(xs, seq_lengths=lengths, logits=True, deterministic=True)

  Args:
    model: an :class:`rnnjax.SequenceModel`.
    input_size: I.
    rngs: an ``nnx.Rngs`` (``params`` and ``dropout`` streams).
    params, deterministic: as :class:`RNN`.
  """

  def __init__(self, model, input_size: int, *, rngs: nnx.Rngs, params: Any = None,
               input_projection: str = "auto", deterministic: bool = False):
    if not isinstance(model, _layers.SequenceModel):
      raise TypeError(f"model must be an rnnjax.SequenceModel, got {type(model).__name__}.")
    self.model = model
    self.input_projection = input_projection
    self._setup(model, input_size, rngs, params, deterministic)

  def __call__(self, xs, *, lengths=None, seq_lengths=None, logits: bool = False,
               deterministic: Optional[bool] = None, rngs=None):
    """``xs [*B, T, I]`` -> ``[*B, O]`` (``[*B, T, O]`` with ``return_sequences``).

    ``logits=True`` returns the readout's pre-activation (for losses from
    logits); ``deterministic`` and ``rngs`` as :meth:`RNN.__call__`.
    """
    lengths = _pick_lengths(lengths, seq_lengths)
    key = self._dropout_key(deterministic, rngs)
    fn = self.model.logits if logits else self.model.apply
    return fn(self.get_params(), xs, lengths=lengths, key=key,
              input_projection=self.input_projection)


__all__ = ["Bidirectional", "RNN", "SequenceModel", "Stack"]
