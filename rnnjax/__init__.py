"""rnnjax: pure-function recurrent networks for JAX.

Cells (``SimpleRNN``, ``IRNN``, ``IndRNN``, ``JordanRNN``, ``LSTM``, ``GRU``) are pure
``step(params, carry, x) -> (carry, y)`` functions with static, hashable
config; :func:`scan` runs them over time with ``jax.lax.scan``. Layers
(:class:`Stack`, :class:`Bidirectional`, :class:`Dense`,
:class:`SequenceModel`) compose them. Submodules: ``rnnjax.diagnostics``
(vanishing/exploding-gradient measurements), ``rnnjax.train`` (optax training
loop, losses, tasks, checkpoints), ``rnnjax.interop`` (PyTorch / Flax
weights), ``rnnjax.nnx`` (a Flax NNX wrapper).
"""

from rnnjax._activations import ACTIVATIONS as ACTIVATIONS
from rnnjax._activations import Activation as Activation
from rnnjax._activations import get_activation as get_activation
from rnnjax._autotune import autotune as autotune
from rnnjax._cells import GRU as GRU
from rnnjax._cells import IRNN as IRNN
from rnnjax._cells import IndRNN as IndRNN
from rnnjax._cells import FusedParams as FusedParams
from rnnjax._cells import GatesVJP as GatesVJP
from rnnjax._cells import NamedGate as NamedGate
from rnnjax._cells import JordanRNN as JordanRNN
from rnnjax._cells import LSTM as LSTM
from rnnjax._cells import LSTMCarry as LSTMCarry
from rnnjax._cells import RNNCell as RNNCell
from rnnjax._cells import SimpleRNN as SimpleRNN
from rnnjax._linear_cells import LRU as LRU
from rnnjax._linear_cells import MinGRU as MinGRU
from rnnjax._linear_cells import MinLSTM as MinLSTM
from rnnjax._initializers import INITIALIZERS as INITIALIZERS
from rnnjax._initializers import Initializer as Initializer
from rnnjax._layers import Bidirectional as Bidirectional
from rnnjax._layers import Dense as Dense
from rnnjax._layers import SequenceModel as SequenceModel
from rnnjax._layers import Stack as Stack
from rnnjax._layers import last_valid as last_valid
from rnnjax._scan import auto_plan as auto_plan
from rnnjax._scan import default_input_projection as default_input_projection
from rnnjax._scan import scan as scan
from rnnjax._stream import stream as stream
from rnnjax._stream import stream_chunks as stream_chunks

__version__ = "0.2.0"

__all__ = [
    "ACTIVATIONS", "Activation", "Bidirectional", "Dense", "FusedParams", "GRU", "GatesVJP",
    "INITIALIZERS", "IRNN", "IndRNN", "Initializer", "JordanRNN", "LRU", "LSTM", "LSTMCarry",
    "MinGRU", "MinLSTM", "NamedGate", "RNNCell", "SequenceModel", "SimpleRNN", "Stack",
    "auto_plan", "autotune",
    "default_input_projection",
    "get_activation", "last_valid", "scan", "stream", "stream_chunks",
]


def __getattr__(name):
  # Submodules load lazily so `import rnnjax` stays light.
  import importlib
  if name in ("diagnostics", "train", "interop", "nnx", "parallel"):
    return importlib.import_module(f"rnnjax.{name}")
  raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")
