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

from rnnjax._nnx import RNN as RNN

__all__ = ["RNN"]
