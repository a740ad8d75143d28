"""Weights from and to PyTorch and Flax linen.

* :func:`from_torch` / :func:`to_torch`: ``nn.RNN`` (SimpleRNN, IRNN),
  ``nn.LSTM`` (LSTM) and ``nn.GRU`` (GRU with ``reset_after=True``) state
  dicts, with PyTorch's names (``weight_ih_l0`` ``[G*H, I]``, ``weight_hh_l0``
  ``[G*H, H]``, ``bias_ih_l0``, ``bias_hh_l0``; ``_l{k}`` per layer,
  ``_reverse`` for a backward direction) and gate orders (i, f, g, o and
  r, z, n). Arrays in, arrays out: torch is never imported.
* :func:`from_flax` / :func:`to_flax`: Flax linen ``LSTMCell``,
  ``OptimizedLSTMCell``, ``GRUCell`` and ``SimpleCell`` parameter trees.

Cells without an equivalent (``JordanRNN``; ``GRU(reset_after=False)``) raise
a TypeError / ValueError that says so. Layouts and bias bookkeeping are in the
docstrings of ``rnnjax.interop._torch`` and ``rnnjax.interop._flax``.

Example::

  import torch, rnnjax as rj
  tl = torch.nn.LSTM(8, 16, batch_first=True)
  cell = rj.LSTM(16)
  params = rj.interop.from_torch(cell, tl.state_dict())
  carry, ys = rj.scan(cell, params, xs)      # == tl(torch.from_numpy(xs))
"""

from rnnjax.interop._flax import from_flax as from_flax
from rnnjax.interop._flax import to_flax as to_flax
from rnnjax.interop._torch import from_torch as from_torch
from rnnjax.interop._torch import to_torch as to_torch

__all__ = ["from_flax", "from_torch", "to_flax", "to_torch"]
