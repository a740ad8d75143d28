"""The built-in hooks of :func:`rnnjax.train.fit` (each a :class:`~rnnjax.train.Callback`).

``BatchChecks`` (first-batch shape checks, label ranges), ``Evaluation``,
``AdjointNorms``, ``Writers`` (JSON lines / CSV / TensorBoard), ``Progress``
(tqdm) and ``Checkpointing`` (restore on resume, save every k updates). A new
feature of the loop is one more hook; :func:`fit` only lists them.
"""

from __future__ import annotations

import sys
import time
import warnings

import jax
import numpy as np

from rnnjax.train._callbacks import Callback
from rnnjax.train._losses import check_labels, check_targets01, unpack_batch
from rnnjax.train._step import TrainState, with_aux


def check_batch_fits(loss_fn, params, batch, key, i, what="data"):
  try:
    jax.eval_shape(lambda p, b, k: with_aux(loss_fn)(p, b, k), params, batch, key)
  except (ValueError, TypeError) as e:
    cls = TypeError if isinstance(e, TypeError) else ValueError
    raise cls(f"the batch {what}({i}) does not fit the model/loss: {e}") from e


class TargetCheck:
  """Host-side range check of a model batch's labels / targets (jit cannot raise).

  ``cross_entropy``: integer labels in ``[0, C)``, ``C`` read once from the
  model's logits shape; ``binary_cross_entropy``: targets in ``[0, 1]``.
  NumPy batches are checked every time (cheap); device arrays only the first
  time (a check would stall the pipeline).
  """

  def __init__(self, model, loss):
    self.model, self.loss, self.num_classes = model, loss, None

  def __call__(self, params, batch, what, first):
    if self.model is None or self.loss not in ("cross_entropy", "binary_cross_entropy"):
      return
    x, y, lengths = unpack_batch(batch)
    if not first and isinstance(y, jax.Array):
      return
    if self.loss == "binary_cross_entropy":
      check_targets01(y, f"the targets (y) of the batch {what}")
      return
    if self.num_classes is None:
      fwd = self.model.logits if hasattr(self.model, "logits") else self.model.apply
      out = jax.eval_shape(lambda p, xs: fwd(p, xs, lengths=lengths), params, x)
      self.num_classes = int(out.shape[-1])
    check_labels(y, self.num_classes, f"the labels (y) of the batch {what}")


class BatchChecks(Callback):
  """Before the first update: batch divisible over the devices, fits the model; label ranges."""

  def __init__(self, loss_fn, dp, target_check):
    self.loss_fn, self.dp, self.targets = loss_fn, dp, target_check

  def on_batch(self, loop, i, batch):
    first = i == loop.start
    if first:
      self.dp.check_batch(batch, argname=f"data({i})")
      check_batch_fits(self.loss_fn, loop.state.params, batch, loop.state.key, i)
    self.targets(loop.state.params, batch, f"data({i})", first)


class Evaluation(Callback):
  """``eval_loss`` and ``eval_<aux>`` every ``every`` updates and after the last."""

  def __init__(self, eval_fn, loss_fn, eval_data, every, dp, target_check):
    self.eval_fn, self.loss_fn, self.every, self.dp = eval_fn, loss_fn, every, dp
    self.targets = target_check
    if callable(eval_data):
      self.batch_at = eval_data
    else:
      fixed = eval_data
      self.batch_at = lambda n: fixed  # noqa: E731
    self.checked = False
    self._sharded = {}

  def due(self, loop, n):
    return n == loop.steps or bool(self.every and n % self.every == 0)

  def wants_flush(self, loop, n):
    return self.due(loop, n)

  def on_step(self, loop, n, batch, metrics):
    if not self.due(loop, n):
      return metrics
    eb = self.batch_at(n)
    if not self.checked:
      check_batch_fits(self.loss_fn, loop.state.params, eb, loop.state.key, n, "eval_data")
      self.targets(loop.state.params, eb, "eval_data", True)
      self.checked = True
    key = id(eb)
    if key not in self._sharded:  # a fixed eval batch is placed on the devices once
      self._sharded = {key: (eb, self.dp.shard_batch(eb))}
    eloss, eaux = self.eval_fn(loop.state.params, self._sharded[key][1])
    return dict(metrics, eval_loss=eloss, **{f"eval_{k}": v for k, v in eaux.items()})


class AdjointNorms(Callback):
  """``adjoint_norms`` (batch-mean ``||dL/dh_t||``) every ``every`` updates and after the last."""

  def __init__(self, fn, every):
    self.fn, self.every = fn, every

  def on_step(self, loop, n, batch, metrics):
    if n % self.every == 0 or n == loop.steps:
      return dict(metrics, adjoint_norms=self.fn(loop.state.params, loop.dp.shard_batch(batch)))
    return metrics


class Writers(Callback):
  """Every history entry to each metric writer (see ``rnnjax.train._writers``)."""

  def __init__(self, writers):
    self.writers = writers

  def on_fit_start(self, loop):
    for w in self.writers:
      getattr(w, "open", lambda h: None)(list(loop.history))

  def on_step_end(self, loop, step, metrics):
    for w in self.writers:
      w.write(metrics)

  def on_flush(self, loop):
    for w in self.writers:
      getattr(w, "flush", lambda: None)()

  def teardown(self, loop):
    for w in self.writers:
      getattr(w, "close", lambda: None)()


class Progress(Callback):
  """A tqdm bar with the live loss and gradient norm (default: when stderr is a terminal)."""

  def __init__(self, show):
    self.show = bool(getattr(sys.stderr, "isatty", lambda: False)()) if show is None else show
    self.bar = None

  def on_fit_start(self, loop):
    if self.show:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=loop.steps, initial=loop.start, desc="fit", dynamic_ncols=True,
                      file=sys.stderr)

  def on_step_end(self, loop, step, h):
    if self.bar is not None:
      self.bar.update(1)
      self.bar.set_postfix(loss=f"{h['loss']:.4g}", grad_norm=f"{h['grad_norm']:.3g}",
                           skipped=h["skipped"], refresh=False)

  def teardown(self, loop):
    if self.bar is not None:
      self.bar.close()


def _checkpoint_tree(state: TrainState):
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "key": jax.random.key_data(state.key), "skipped": state.skipped}


class Checkpointing(Callback):
  """Restores the latest intact checkpoint on resume; saves every ``every`` updates and at the end.

  A checkpoint holds the train state, the history, ``lr_scale`` and the
  states of the callbacks (``state_dict``), so a resumed run continues
  exactly. Runs last in ``on_step_end`` (after the callbacks updated their
  state for that update).
  """

  def __init__(self, directory, every, keep, resume):
    from rnnjax.train._checkpoint import Checkpointer
    self.ckpt = Checkpointer(directory, keep=keep)
    self.every, self.resume, self.saved = every, resume, None

  def restore(self, loop):
    """Called by ``fit`` before the loop: sets ``loop.state``, ``history``, ``start``, callback states."""
    latest = self.ckpt.latest_step()
    if latest is not None and not self.resume:
      raise ValueError(f"checkpoint_dir {self.ckpt.directory!r} already holds checkpoints (latest "
                       f"step {latest}); pass resume=True to continue, or use an empty folder.")
    found = self.ckpt.restore_latest_intact(_checkpoint_tree(loop.state)) if latest is not None else None
    if found is None:
      return
    step, tree, meta = found
    key = jax.random.wrap_key_data(tree["key"], impl=jax.random.key_impl(loop.state.key))
    loop.state = TrainState(tree["params"], tree["opt_state"], tree["step"], key, tree["skipped"])
    loop.history = [loop.order(h) for h in meta.get("history", [])]
    if int(loop.state.step) != step or len(loop.history) != step:
      raise ValueError(f"checkpoint {self.ckpt.path(step)!r} is inconsistent: step "
                       f"{int(loop.state.step)}, {len(loop.history)} history entries, folder name "
                       f"{step}.")
    loop.lr_scale = float(meta.get("lr_scale", 1.0))
    for i, (cb, st) in enumerate(zip(loop.callbacks, meta.get("callbacks", []))):
      if st is not None:
        cb.load_state_dict(st)
    loop.start = step
    self.saved = step
    if step > loop.steps:
      warnings.warn(f"resumed checkpoint {self.ckpt.path(step)!r} is at step {step}, past "
                    f"steps={loop.steps}: nothing is trained and fit returns the state of step "
                    f"{step} (checkpoints are never rolled back).", RuntimeWarning, stacklevel=4)

  def due(self, loop, n):
    return n == loop.steps or bool(self.every and n % self.every == 0)

  def wants_flush(self, loop, n):
    return self.due(loop, n)

  def on_step_end(self, loop, step, metrics):
    if self.due(loop, step):
      self.save(loop, step)

  def on_fit_end(self, loop, history):
    if self.saved != int(loop.state.step):  # stopped early: save where it stopped
      self.save(loop, int(loop.state.step))

  def save(self, loop, step):
    t = time.perf_counter()
    assert int(loop.state.step) == step, (int(loop.state.step), step)
    meta = {"history": [dict(h) for h in loop.history[:step]], "lr_scale": loop.lr_scale,
            "callbacks": [cb.state_dict() for cb in loop.callbacks]}
    self.ckpt.save(step, _checkpoint_tree(loop.state), meta)
    self.saved = step
    loop.side_seconds += time.perf_counter() - t

  def teardown(self, loop):
    self.ckpt.close()


def steps_from_epochs(array_data, epochs, steps):
  if array_data is None:
    if epochs is not None:
      raise ValueError("epochs= needs in-memory array data (X, Y); with a data function or "
                       "iterable pass steps=.")
    return steps
  if epochs is not None and steps is not None:
    raise ValueError("pass either epochs= or steps=, not both.")
  if steps is not None:
    return steps
  epochs = 1 if epochs is None else epochs
  if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
    raise ValueError(f"epochs must be a positive int, got {epochs!r}.")
  return int(epochs) * array_data.steps_per_epoch
