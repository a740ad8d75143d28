"""Small helpers shared by the example scripts (argument parsing, output, timing).

Not part of the library: each example imports it as ``_common`` from its own
folder (``python examples/NAME.py`` puts ``examples/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import time


def parser(description: str, *, out_default: str = "examples_out") -> argparse.ArgumentParser:
  """An ``ArgumentParser`` with the flags every example shares.

  ``--quick`` (a seconds-long smoke run), ``--out`` (PNG folder), ``--seed``,
  ``--no-plot``.
  """
  p = argparse.ArgumentParser(description=description,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="small sizes for a smoke run (seconds, not minutes; the tests use it)")
  p.add_argument("--out", default=out_default,
                 help=f"folder for the PNG plots (default {out_default}/)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.add_argument("--no-plot", action="store_true", help="skip writing PNG files")
  return p


def add_run_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
  """The flags of the long seed-grid examples (adding, copy, pixels):
  ``--time-limit``, ``--results`` and ``--from-results`` (one or more files of
  the same setting, merged by :func:`load_curves`)."""
  p.add_argument("--time-limit", type=float, default=None,
                 help="stop all runs at the same step after this many seconds")
  p.add_argument("--results", default=None,
                 help="save the curves here (.npz) after every round (default OUT/<script>.npz)")
  p.add_argument("--from-results", default=None, nargs="+", metavar="FILE",
                 help="redraw the table and figure from saved .npz files (several runs of one "
                      "setting, e.g. one --lengths each, are merged)")
  return p


def pick(args, name, default, quick):
  """``args.name`` if the user set it, else ``quick`` under ``--quick``, else ``default``."""
  value = getattr(args, name, None)
  if value is not None:
    return value
  return quick if args.quick else default


def pyplot():
  """matplotlib.pyplot with the non-interactive Agg backend."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def savefig(fig, args, name: str) -> str:
  """Saves ``fig`` as ``{args.out}/{name}`` and returns the path."""
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, name)
  fig.savefig(path, dpi=110, bbox_inches="tight")
  import matplotlib.pyplot as plt
  plt.close(fig)
  print(f"  wrote {path}")
  return path


class Timer:
  """``with Timer() as t: ...`` then ``t.seconds``."""

  def __enter__(self):
    self.t0 = time.perf_counter()
    return self

  def __exit__(self, *exc):
    self.seconds = time.perf_counter() - self.t0
    return False


def table(rows, headers) -> str:
  """Formats a list of row tuples as a plain-text table."""
  cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def make_cell(name: str, hidden: int):
  """The examples' cells by name: tanh / sigmoid SimpleRNN, IRNN, LSTM, GRU, IndRNN."""
  import rnnjax as rj
  return {"tanh": lambda: rj.SimpleRNN(hidden, "tanh"),
          "sigmoid": lambda: rj.SimpleRNN(hidden, "sigmoid"),
          "irnn": lambda: rj.IRNN(hidden),
          "lstm": lambda: rj.LSTM(hidden),
          "gru": lambda: rj.GRU(hidden),
          "indrnn": lambda: rj.IndRNN(hidden),
          "mingru": lambda: rj.MinGRU(hidden),
          "lru": lambda: rj.LRU(hidden)}[name]()


# ---------------------------------------------------------------------------
# Several seeds of one configuration trained as one jitted program.


class Members:
  """One model trained from several seeds at once, as one jitted program.

  Every member is an independent run: its own initial parameters
  (``model.init(jax.random.key(seed))``), its own optimizer state and its own
  stream of fresh batches (``sample(fold_in(key(seed + 10**6), step))``).
  Stacking the members on a leading axis changes nothing but the speed: one
  compile for all seeds. ``batching`` says how the members' updates run:
  ``"map"`` (``jax.lax.map``: one member after the other inside the program)
  or ``"vmap"`` (all members in one batched step). The default is ``"map"`` on
  CPU, where XLA's batched small matmuls are slower than the members' plain
  ones (3 members, hidden 100, batch 32, T = 150, one core of a Zen 3 EPYC:
  LSTM 0.23 s per update with ``map`` vs 0.32 s with ``vmap``, IRNN 0.057 vs
  0.065 s), and ``"vmap"`` on accelerators, where the members run in parallel.

  Args:
    model: an ``rj.SequenceModel``.
    input_size: its input features.
    loss_fn: ``(model, params, batch) -> scalar``.
    sample: ``key -> batch``, written in JAX (it is traced into the program).
    seeds: the members' seeds.
    lr: learning rate, one float or one per member (the update of Adam,
      RMSProp and SGD is linear in the learning rate, so the optimizer is
      built with rate 1 and each member's update is scaled by its own rate).
    clip_norm: global-norm clipping of the gradient, before the optimizer.
    optimizer: a ``rnnjax.train.optimizer`` name (extra kwargs go to it).
    chunk: updates per jitted call.
    batching: ``"map"``, ``"vmap"`` or ``None`` (the backend's default, above).

  ``advance()`` runs ``chunk`` updates and returns the training losses
  ``[S, chunk]``; each is the loss on a fresh batch before that step's update,
  i.e. an unbiased estimate of the test loss of the parameters at that step.
  ``curve`` holds them all, ``[S, steps_done]``.
  """

  def __init__(self, model, input_size, loss_fn, sample, *, seeds, lr, clip_norm=1.0,
               optimizer="adam", chunk=100, batching=None, **optimizer_kwargs):
    import jax
    import jax.numpy as jnp
    import optax
    from rnnjax import train

    self.model, self.seeds, self.chunk = model, [int(s) for s in seeds], int(chunk)
    lrs = jnp.broadcast_to(jnp.asarray(lr, jnp.float32), (len(self.seeds),))
    tx = train.optimizer(optimizer, 1.0, clip_norm=clip_norm, **optimizer_kwargs)
    seeds_arr = jnp.asarray(self.seeds)
    self.params = jax.vmap(lambda s: model.init(jax.random.key(s), input_size))(seeds_arr)
    self.opt_state = jax.vmap(tx.init)(self.params)
    data_keys = jax.vmap(lambda s: jax.random.key(s + 10**6))(seeds_arr)

    def one(p, o, key, rate):
      loss, g = jax.value_and_grad(lambda q: loss_fn(model, q, sample(key)))(p)
      u, o = tx.update(g, o, p)
      u = jax.tree_util.tree_map(lambda v: rate * v, u)
      return optax.apply_updates(p, u), o, loss

    if batching is None:
      batching = "map" if jax.default_backend() == "cpu" else "vmap"
    if batching == "vmap":
      vone = jax.vmap(one)
    elif batching == "map":
      vone = lambda *members: jax.lax.map(lambda m: one(*m), members)
    else:
      raise ValueError(f"batching: expected 'map', 'vmap' or None, got {batching!r}")
    self.batching = batching

    def run_chunk(p, o, start):
      def body(carry, i):
        p, o = carry
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(data_keys)
        p, o, loss = vone(p, o, keys, lrs)
        return (p, o), loss
      (p, o), losses = jax.lax.scan(body, (p, o), start + jnp.arange(self.chunk))
      return p, o, losses.T

    self._run = jax.jit(run_chunk)
    self.steps_done, self.seconds, self._curves = 0, 0.0, []

  def advance(self):
    import numpy as np
    t0 = time.perf_counter()
    self.params, self.opt_state, losses = self._run(self.params, self.opt_state,
                                                    self.steps_done)
    losses = np.asarray(losses)
    self.seconds += time.perf_counter() - t0
    self.steps_done += self.chunk
    self._curves.append(losses)
    return losses

  @property
  def curve(self):
    import numpy as np
    if not self._curves:
      return np.zeros((len(self.seeds), 0), np.float32)
    return np.concatenate(self._curves, axis=1)

  def evaluate(self, fn):
    """``fn(model, params) -> value`` (an array or a pytree of arrays) applied to
    every member (vmapped); leaves come back as NumPy arrays ``[S, ...]``."""
    import jax
    import numpy as np
    out = jax.jit(jax.vmap(lambda p: fn(self.model, p)))(self.params)
    return jax.tree_util.tree_map(np.asarray, out)


def train_round_robin(runs, *, steps, time_limit=None, on_round=None, log=print,
                      finished=None):
  """Advances every ``Members`` in ``runs`` (a dict) one chunk at a time, in turn,
  until ``steps`` updates each or until ``time_limit`` seconds have passed (then
  all runs stop at the same step). ``finished(run) -> bool``, if given, is asked
  after every chunk: a run it answers True for is not advanced again (e.g. every
  seed has solved the task), so its curve ends early. Returns the largest step
  reached."""
  t0 = time.perf_counter()
  done = set()
  while True:
    active = {k: r for k, r in runs.items() if k not in done and r.steps_done < steps}
    if not active:
      break
    for name, r in active.items():
      losses = r.advance()
      stop = finished is not None and finished(r)
      if stop:
        done.add(name)
      log(f"  {name:16s} step {r.steps_done:6d}  loss (mean of last chunk, per seed) "
          + " ".join(f"{v:.4f}" for v in losses.mean(axis=1))
          + f"  [{r.seconds:.0f} s]" + ("  finished" if stop else ""), flush=True)
    reached = max(r.steps_done for r in runs.values())
    if on_round is not None:
      on_round(reached)
    if time_limit is not None and time.perf_counter() - t0 > time_limit:
      log(f"  time limit {time_limit:.0f} s reached at step {reached}", flush=True)
      break
  return max(r.steps_done for r in runs.values())


def all_seeds_below(limit, final=500):
  """A ``finished(run)`` for :func:`train_round_robin`: True once the mean loss of
  every seed over its last ``final`` steps is below ``limit`` (a number, or a
  function ``run -> number`` for per-run limits)."""
  import numpy as np

  def finished(run):
    c = run.curve
    bound = limit(run) if callable(limit) else limit
    return c.shape[1] >= final and bool((np.mean(c[:, -final:], axis=1) < bound).all())
  return finished


def stop_tag(run_steps, steps, finals, stop):
  """The table's mark for a run that ended before ``steps``: ``" @N"`` when every
  seed's final loss is below ``stop`` (stopped as solved), ``" (N steps)"`` otherwise
  (stopped by a time limit)."""
  if run_steps == steps:
    return ""
  if stop is not None and max(finals) < stop:
    return f" @{run_steps}"
  return f" ({run_steps} steps)"


def member(params, i):
  """Member ``i`` of stacked parameters (e.g. ``Members.params``)."""
  import jax
  return jax.tree_util.tree_map(lambda v: v[i], params)


def window_means(curve, window):
  """Means of consecutive windows of ``window`` steps: ``[S, steps // window]``."""
  import numpy as np
  curve = np.asarray(curve)
  n = curve.shape[-1] // window
  return curve[..., :n * window].reshape(curve.shape[:-1] + (n, window)).mean(-1)


def first_crossing(curve, threshold, window):
  """Per member: the step ending the first ``window``-step block whose mean loss is
  below ``threshold`` (``None`` if no block is)."""
  import numpy as np
  out = []
  for row in window_means(curve, window):
    hit = np.nonzero(row < threshold)[0]
    out.append(int((hit[0] + 1) * window) if hit.size else None)
  return out


def spread(values, fmt="{:.4f}"):
  """``"median [min, max]"`` of a list of numbers."""
  import numpy as np
  v = np.asarray(values, float)
  return f"{fmt.format(np.median(v))} [{fmt.format(v.min())}, {fmt.format(v.max())}]"


def crossing_summary(steps_list):
  """``"median (k/n crossed; min-max)"`` of crossing steps; runs that never crossed count in n."""
  import numpy as np
  hits = [s for s in steps_list if s is not None]
  n = len(steps_list)
  if not hits:
    return f"never (0/{n})"
  return f"{int(np.median(hits))} ({len(hits)}/{n}; {min(hits)}-{max(hits)})"


def final_window(steps, final=500):
  """The last ``min(final, steps // 4)`` steps (at least one): the window of a run's "final" loss."""
  return max(1, min(final, steps // 4))


NOT_RUN = "not run"   # a table cell for a (cell, T) of the grid with no saved run


def plot_runs(ax, curves, labels, window):
  """Per run: the median over seeds of ``window``-step mean losses, with the min-max band.

  ``curves``: ``{key: [S, steps]}``; ``labels``: ``{key: legend label}`` (the
  order of ``labels`` is the drawing order, and the ``i``-th label always gets
  colour ``Ci``, so one cell keeps its colour across panels). Keys missing from
  ``curves`` (a grid merged from partial runs) are skipped. Returns the number
  of runs drawn.
  """
  import numpy as np
  drawn = 0
  for i, (key, label) in enumerate(labels.items()):
    if key not in curves:
      continue
    w = window_means(curves[key], window)
    x = (np.arange(w.shape[1]) + 1) * window
    ax.plot(x, np.median(w, axis=0), label=label, color=f"C{i}")
    ax.fill_between(x, w.min(axis=0), w.max(axis=0), color=f"C{i}", alpha=0.2)
    drawn += 1
  return drawn


def plot_window(steps, window=100):
  """The plot's averaging window: ``window`` steps, finer for short runs (~50 points)."""
  return max(1, min(window, steps // 50))


def curve_saver(path, runs, meta):
  """``on_round`` callback for :func:`train_round_robin`: saves the curves after every round."""
  def on_round(done):
    if path:
      save_curves(path, runs, {**meta, "steps_done": done})
  return on_round


def save_curves(path, runs, meta):
  """Saves every run's loss curve (``[S, steps]``) and ``meta`` (JSON) to ``path`` (.npz)."""
  import json
  import numpy as np
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  arrays = {f"curve/{k}": r.curve for k, r in runs.items()}
  arrays.update({f"seconds/{k}": np.asarray(r.seconds) for k, r in runs.items()})
  np.savez_compressed(path + ".tmp.npz", meta=np.asarray(json.dumps(meta)), **arrays)
  os.replace(path + ".tmp.npz", path)


def load_curves(*paths):
  """``(curves, seconds, meta)`` as saved by :func:`save_curves`, from one file or
  several runs of the same setting (e.g. one ``--lengths`` each) merged: their
  cell/T keys must not overlap and their settings must agree. In the merged
  ``meta`` the cells and lengths are the union, ``steps_done`` the largest,
  ``wall_seconds`` the sum, and dict entries (per-cell hidden sizes, per-run
  accuracies) are united where they agree on common keys."""
  import json
  import numpy as np
  curves, seconds, meta = {}, {}, None
  for path in paths:
    z = np.load(path)
    c = {k[6:]: z[k] for k in z.files if k.startswith("curve/")}
    clash = sorted(set(c) & set(curves))
    if clash:
      raise ValueError(f"results: {path} repeats runs already loaded from an earlier file: {clash}")
    curves.update(c)
    seconds.update({k[8:]: float(z[k]) for k in z.files if k.startswith("seconds/")})
    m = json.loads(str(z["meta"]))
    if meta is None:
      meta = m
      continue
    differ = []
    for k in sorted(set(meta) | set(m)):
      a, b = meta.get(k), m.get(k)
      if k in ("cells", "lengths"):
        meta[k] = list(a or []) + [v for v in (b or []) if v not in (a or [])]
      elif k == "steps_done":
        meta[k] = max(a or 0, b or 0)
      elif k == "wall_seconds":
        meta[k] = (a or 0.0) + (b or 0.0)
      elif a == b:
        continue
      elif isinstance(a, dict) and isinstance(b, dict) and all(a[j] == b[j] for j in set(a) & set(b)):
        meta[k] = {**a, **b}
      else:
        differ.append(f"{k} {a!r} vs {b!r}")
    if differ:
      raise ValueError(f"results: {path} was run with other settings than {paths[0]}: "
                       + ", ".join(differ))
    if "lengths" in meta:
      meta["lengths"] = sorted(meta["lengths"])
  if meta is None:
    raise ValueError("results: give at least one file")
  return curves, seconds, meta
