"""Training: optax optimizers with clipping and penalties, losses, tasks, a loop.

Train any rnnjax model (or any pure ``loss_fn(params, batch, key)``) with one
call, with remedies for exploding and vanishing gradients as options, and
watch the gradients live::

  import jax, rnnjax as rj
  from rnnjax import train

  model = rj.SequenceModel([rj.LSTM(32)], rj.Dense(1))
  params = model.init(jax.random.key(0), input_size=2)
  result = train.fit(
      model, params, lambda i: train.adding_problem(64, length=50, seed=(0, i)),
      loss="mse", optimizer=train.optimizer("adam", 1e-2, clip_norm=1.0),
      steps=1000, checkpoint_dir="ckpt", checkpoint_every=250, resume=True)
  print(result.history[-1])   # {'step': 1000, 'loss': ..., 'grad_norm': ..., 'clipped': ..., 'skipped': 0}

* Optimizers -- :func:`optimizer` builds an ``optax.GradientTransformation``:
  sgd / nesterov / rmsprop / adagrad / adam / adamw, a learning rate or
  schedule, ``clip_norm`` (global norm, before the optimizer), ``clip_value``,
  ``adaptive_clip``, ``weight_clip`` (params projected into [-c, c] after each
  update), ``l1`` / ``l2`` penalties (added to the gradient), and skipping of
  non-finite steps. The stages are public transformations too:
  :func:`clip_by_global_norm` (with the overflow-safe :func:`global_norm`),
  :func:`weight_clip`, :func:`l1_penalty`, :func:`l2_penalty`.
* Losses -- :func:`mse`, :func:`cross_entropy`, :func:`binary_cross_entropy`
  (from logits), :func:`accuracy`, all masked by ``lengths``;
  :func:`model_loss` turns a model and a loss name into a ``loss_fn``.
* Tasks -- seeded generators returning a :class:`Batch`:
  :func:`binary_addition`, :func:`adding_problem`, :func:`copy_task`,
  :func:`sequence_classification` (baselines in their docstrings).
* Gradient flossing (Engelken 2023) -- :func:`flossing_loss` (``sum_i lambda_i^2``
  over the first k Lyapunov exponents), :func:`floss` (flossing before
  training), :func:`flossing` (an optax stage flossing every n updates during
  training); :func:`scale_to_edge_of_chaos` (recurrent gain with
  ``lambda_1 = 0``). See :mod:`rnnjax.train._flossing`.
* The loop -- :func:`fit`: a short loop over hooks around the jitted pure
  step :func:`make_train_step`; a data function, an iterable, or in-memory
  arrays with ``epochs`` / ``batch_size`` / ``shuffle`` /
  ``validation_split`` (:class:`ArrayData`); truncated BPTT (``tbptt=K``:
  one update per chunk of K steps, the carry passed on; :func:`fit_tbptt`,
  :func:`make_tbptt_step`, :func:`chunk_model_loss`); evaluation, progress bar, metric
  writers (:class:`JsonLinesWriter`, :class:`CsvWriter`,
  :class:`TensorBoardWriter`), callbacks (:class:`Callback`,
  :class:`EarlyStopping`, :class:`ReduceLROnPlateau`), checksummed orbax
  checkpoints with exact resume and fallback past corrupt ones, data
  parallelism over all devices, multi-process runs (:func:`process_slice`,
  ``python -m rnnjax.launch``); :func:`evaluate`, :func:`predict`,
  :func:`gradient_stats`.
"""

from rnnjax.diagnostics._gradstats import gradient_stats as gradient_stats
from rnnjax.train._callbacks import Callback as Callback
from rnnjax.train._callbacks import EarlyStopping as EarlyStopping
from rnnjax.train._callbacks import ReduceLROnPlateau as ReduceLROnPlateau
from rnnjax.train._checkpoint import CorruptCheckpointError as CorruptCheckpointError
from rnnjax.train._data import ArrayData as ArrayData
from rnnjax.train._data import evaluate as evaluate
from rnnjax.train._data import predict as predict
from rnnjax.train._flossing import FlossingState as FlossingState
from rnnjax.train._flossing import floss as floss
from rnnjax.train._flossing import flossing as flossing
from rnnjax.train._flossing import flossing_loss as flossing_loss
from rnnjax.train._flossing import scale_to_edge_of_chaos as scale_to_edge_of_chaos
from rnnjax.train._distributed import process_slice as process_slice
from rnnjax.train._loop import FitResult as FitResult
from rnnjax.train._loop import Loop as Loop
from rnnjax.train._loop import fit as fit
from rnnjax.train._step import TrainState as TrainState
from rnnjax.train._step import make_train_step as make_train_step
from rnnjax.train._losses import LOSSES as LOSSES
from rnnjax.train._losses import accuracy as accuracy
from rnnjax.train._losses import binary_cross_entropy as binary_cross_entropy
from rnnjax.train._losses import cross_entropy as cross_entropy
from rnnjax.train._losses import model_loss as model_loss
from rnnjax.train._losses import mse as mse
from rnnjax.train._optim import OPTIMIZERS as OPTIMIZERS
from rnnjax.train._optim import Optimizer as Optimizer
from rnnjax.train._optim import ClipByGlobalNormState as ClipByGlobalNormState
from rnnjax.train._optim import clip_by_global_norm as clip_by_global_norm
from rnnjax.train._optim import global_norm as global_norm
from rnnjax.train._optim import l1_penalty as l1_penalty
from rnnjax.train._optim import l2_penalty as l2_penalty
from rnnjax.train._optim import optimizer as optimizer
from rnnjax.train._optim import weight_clip as weight_clip
from rnnjax.train._tasks import Batch as Batch
from rnnjax.train._tbptt import chunk_model_loss as chunk_model_loss
from rnnjax.train._tbptt import fit_tbptt as fit_tbptt
from rnnjax.train._tbptt import make_tbptt_step as make_tbptt_step
from rnnjax.train._tasks import adding_problem as adding_problem
from rnnjax.train._tasks import binary_addition as binary_addition
from rnnjax.train._tasks import copy_task as copy_task
from rnnjax.train._tasks import sequence_classification as sequence_classification
from rnnjax.train._writers import CsvWriter as CsvWriter
from rnnjax.train._writers import JsonLinesWriter as JsonLinesWriter
from rnnjax.train._writers import MetricWriter as MetricWriter
from rnnjax.train._writers import TensorBoardWriter as TensorBoardWriter
from rnnjax.train._writers import read_jsonl as read_jsonl

__all__ = [
    "ArrayData", "Batch", "Callback", "ClipByGlobalNormState", "CorruptCheckpointError",
    "CsvWriter", "EarlyStopping", "FitResult", "FlossingState", "JsonLinesWriter", "LOSSES", "Loop",
    "MetricWriter", "OPTIMIZERS", "Optimizer", "ReduceLROnPlateau", "TensorBoardWriter",
    "TrainState", "accuracy", "adding_problem", "binary_addition", "binary_cross_entropy",
    "chunk_model_loss", "clip_by_global_norm", "copy_task", "cross_entropy", "evaluate", "fit",
    "fit_tbptt", "floss", "flossing", "flossing_loss", "global_norm", "gradient_stats",
    "l1_penalty", "l2_penalty", "make_tbptt_step", "make_train_step", "model_loss", "mse",
    "optimizer", "predict", "process_slice", "read_jsonl", "scale_to_edge_of_chaos", "sequence_classification",
    "weight_clip",
]
