"""Implementation adapters: build a forward or forward+backward callable for one
(cell, shape, mode) on one device.

Every adapter returns a :class:`Built` or raises :class:`Unavailable` (library
not installed, cell or backend not supported) with a one-line reason. The
forward computes the output sequence ``ys [B, T, H]``; forward+backward computes
the gradients of ``sum(ys)`` with respect to the parameters and the inputs.
JAX adapters are jitted, lowered and compiled explicitly so that compile time
is measured apart from run time.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from typing import Any, Callable, Dict, Optional

import numpy as np

from benchmarks._common import Shape


class Unavailable(Exception):
  """The implementation cannot run this configuration here (reason in the message)."""


@dataclasses.dataclass
class Built:
  call: Callable[[], Any]
  sync: Callable[[Any], None]
  compile_s: Optional[float]          # None for eager libraries
  memory: Dict[str, Optional[float]]  # bytes; keys present where reported
  note: str = ""


def _inputs(s: Shape):
  rng = np.random.default_rng(0)
  return rng.standard_normal((s.B, s.T, s.I)).astype(np.float32)


def _require(module: str, what: str):
  try:
    return importlib.import_module(module)
  except Exception as e:  # ImportError, or a broken install
    raise Unavailable(f"{what} not installed ({type(e).__name__}: {e})".split("\n")[0]) from None


# -- JAX helpers ---------------------------------------------------------------

def _jax_device(backend: Optional[str]):
  import jax
  return jax.devices(backend)[0] if backend else jax.devices()[0]


def _jax_sync(out):
  import jax
  jax.block_until_ready(out)


def _jax_build(fn, args, device, note=""):
  """Jits ``fn``, compiles it for ``args`` on ``device`` and times the compile."""
  import jax
  args = jax.device_put(args, device)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  memory: Dict[str, Optional[float]] = {}
  try:
    ma = compiled.memory_analysis()
    if ma is not None:
      memory["xla_temp_bytes"] = float(ma.temp_size_in_bytes)
      memory["xla_output_bytes"] = float(ma.output_size_in_bytes)
  except Exception:  # not every backend implements it
    pass
  built = Built(call=lambda: compiled(*args), sync=_jax_sync, compile_s=compile_s,
                memory=memory, note=note)
  return built


def _jax_peak(device) -> Optional[float]:
  try:
    stats = device.memory_stats()
  except Exception:
    return None
  if not stats:
    return None
  return float(stats.get("peak_bytes_in_use", 0)) or None


def _loss_and_grad(apply):
  """fwd+bwd of ``apply(params, xs) -> ys``: grads of sum(ys) w.r.t. params and xs."""
  import jax
  import jax.numpy as jnp
  return jax.grad(lambda p, x: jnp.sum(apply(p, x)), argnums=(0, 1))


# -- rnnjax --------------------------------------------------------------------

def _rnnjax(cell_name, s, mode, backend, impl, input_projection="auto"):
  import jax
  import jax.numpy as jnp
  import rnnjax as rj
  cell = {"simple": rj.SimpleRNN, "lstm": rj.LSTM, "gru": rj.GRU}[cell_name](s.H)
  params = cell.init(jax.random.key(0), s.I)
  apply = lambda p, x: rj.scan(cell, p, x, impl=impl, input_projection=input_projection)[1]
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  note = ""
  if impl == "auto":
    plan = rj.auto_plan(cell)
    note = f"auto: {plan[0]}, {plan[1]} projection"
  return _jax_build(fn, (params, jnp.asarray(_inputs(s))), _jax_device(backend), note=note)


def rnnjax_auto(cell, s, mode, backend):
  """rnnjax.scan with the automatic path choice (the default)."""
  return _rnnjax(cell, s, mode, backend, "auto")


def rnnjax_baseline(cell, s, mode, backend):
  """rnnjax.scan (auto) from another checkout: ``run.py --baseline-src PATH`` (A/B of a change).

  The worker puts PATH first on ``sys.path`` before importing rnnjax.
  """
  return _rnnjax(cell, s, mode, backend, "auto")


def rnnjax_reference(cell, s, mode, backend):
  """rnnjax.scan(impl="reference"): the plain lax.scan of the cell step."""
  return _rnnjax(cell, s, mode, backend, "reference")


def rnnjax_fused_inloop(cell, s, mode, backend):
  """rnnjax.scan(impl="fused", input_projection="inloop"): one variant ``auto`` chooses from."""
  return _rnnjax(cell, s, mode, backend, "fused", "inloop")


def rnnjax_fused_hoisted(cell, s, mode, backend):
  """rnnjax.scan(impl="fused", input_projection="hoisted"): one variant ``auto`` chooses from."""
  return _rnnjax(cell, s, mode, backend, "fused", "hoisted")


def rnnjax_reference_hoisted(cell, s, mode, backend):
  """rnnjax.scan(impl="reference", input_projection="hoisted")."""
  return _rnnjax(cell, s, mode, backend, "reference", "hoisted")


def _rnnjax_newton(cell_name, s, mode, backend, method):
  """rnnjax.parallel.newton_scan; the note gives the Newton iterations of an eager solve."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import rnnjax as rj
  from rnnjax import parallel
  cell = {"simple": rj.SimpleRNN, "lstm": rj.LSTM, "gru": rj.GRU}[cell_name](s.H)
  params = cell.init(jax.random.key(0), s.I)
  xs = jnp.asarray(_inputs(s))
  _, _, info = parallel.newton_scan(cell, params, xs, method=method)
  it = np.asarray(info.iterations)
  note = (f"{method}: iterations {int(it.min())}-{int(it.max())}, max residual "
          f"{float(np.max(info.residual)):.1e}, fallback {bool(np.any(info.fallback))}")
  apply = lambda p, x: parallel.newton_scan(cell, p, x, method=method)[1]
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  return _jax_build(fn, (params, xs), _jax_device(backend), note=note)


def rnnjax_deer(cell, s, mode, backend):
  """rnnjax.parallel.newton_scan(method="deer"): dense-Jacobian Newton, associative scan."""
  return _rnnjax_newton(cell, s, mode, backend, "deer")


def rnnjax_quasi_deer(cell, s, mode, backend):
  """rnnjax.parallel.newton_scan(method="quasi_deer"): diagonal-Jacobian Newton."""
  return _rnnjax_newton(cell, s, mode, backend, "quasi_deer")


def rnnjax_elk(cell, s, mode, backend):
  """rnnjax.parallel.newton_scan(method="elk"): damped dense Newton (parallel Kalman smoother)."""
  return _rnnjax_newton(cell, s, mode, backend, "elk")


def rnnjax_quasi_elk(cell, s, mode, backend):
  """rnnjax.parallel.newton_scan(method="quasi_elk"): damped diagonal Newton (Kalman smoother)."""
  return _rnnjax_newton(cell, s, mode, backend, "quasi_elk")


PARALLEL_METHODS = ("deer", "quasi_deer", "elk", "quasi_elk")


# -- Flax linen ------------------------------------------------------------------

def flax_linen(cell_name, s, mode, backend):
  """flax.linen.RNN with OptimizedLSTMCell / GRUCell / SimpleCell."""
  nn = _require("flax.linen", "flax")
  import jax
  import jax.numpy as jnp
  cell = {"simple": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[cell_name](s.H)
  model = nn.RNN(cell)
  xs = jnp.asarray(_inputs(s))
  params = model.init(jax.random.key(0), xs)
  apply = lambda p, x: model.apply(p, x)
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  return _jax_build(fn, (params, xs), _jax_device(backend))


# -- Flax NNX --------------------------------------------------------------------

def flax_nnx(cell_name, s, mode, backend):
  """flax.nnx.RNN with OptimizedLSTMCell / GRUCell / SimpleCell, via split/merge under jax.jit."""
  _require("flax", "flax")
  try:
    from flax import nnx
  except Exception as e:
    raise Unavailable(f"flax.nnx not available ({e})") from None
  if not hasattr(nnx, "RNN"):
    raise Unavailable("this flax has no nnx.RNN")
  import jax.numpy as jnp
  rngs = nnx.Rngs(0)
  cls = {"simple": nnx.SimpleCell, "lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}[cell_name]
  cell = cls(s.I, s.H, rngs=rngs)
  model = nnx.RNN(cell, rngs=False)
  carry0 = cell.initialize_carry((s.B, s.I), rngs)  # zeros, passed in explicitly
  # Parameters are differentiated; the rest of the state is a constant.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  apply = lambda p, x: nnx.merge(graphdef, p, rest)(x, initial_carry=carry0)
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  return _jax_build(fn, (params, jnp.asarray(_inputs(s))), _jax_device(backend))


# -- Equinox ---------------------------------------------------------------------

def equinox(cell_name, s, mode, backend):
  """equinox.nn.LSTMCell / GRUCell under lax.scan (time) and vmap (batch)."""
  eqx = _require("equinox", "equinox")
  import jax
  import jax.numpy as jnp
  if cell_name == "simple":
    raise Unavailable("equinox has no simple RNN cell")
  key = jax.random.key(0)
  cell = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[cell_name](s.I, s.H, key=key)
  params, static = eqx.partition(cell, eqx.is_array)

  def one(p, x):  # x [T, I]
    c = eqx.combine(p, static)
    h0 = jnp.zeros((s.H,), x.dtype)
    carry0 = (h0, h0) if cell_name == "lstm" else h0

    def step(carry, xt):
      carry = c(xt, carry)
      return carry, (carry[0] if cell_name == "lstm" else carry)
    return jax.lax.scan(step, carry0, x)[1]

  apply = lambda p, x: jax.vmap(one, in_axes=(None, 0))(p, x)
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  return _jax_build(fn, (params, jnp.asarray(_inputs(s))), _jax_device(backend))


# -- Haiku -----------------------------------------------------------------------

def haiku(cell_name, s, mode, backend):
  """haiku.LSTM / GRU / VanillaRNN with hk.dynamic_unroll."""
  hk = _require("haiku", "dm-haiku")
  import jax
  import jax.numpy as jnp

  def f(x):
    core = {"simple": hk.VanillaRNN, "lstm": hk.LSTM, "gru": hk.GRU}[cell_name](s.H)
    ys, _ = hk.dynamic_unroll(core, x, core.initial_state(x.shape[0]), time_major=False)
    return ys

  model = hk.without_apply_rng(hk.transform(f))
  xs = jnp.asarray(_inputs(s))
  params = model.init(jax.random.key(0), xs)
  apply = model.apply
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  return _jax_build(fn, (params, xs), _jax_device(backend))


# -- jax.experimental.rnn (cuDNN) ----------------------------------------------------

def cudnn(cell_name, s, mode, backend):
  """jax.experimental.rnn.lstm: cuDNN's fused LSTM (GPU only, LSTM only)."""
  import jax
  import jax.numpy as jnp
  dev = _jax_device(backend)
  if dev.platform != "gpu":
    raise Unavailable(f"cuDNN RNN needs a GPU (device is {dev.platform})")
  if cell_name != "lstm":
    raise Unavailable("jax.experimental.rnn implements only the LSTM")
  from jax.experimental import rnn
  w = rnn.init_lstm_weight(jax.random.key(0), s.I, s.H, 1, False)
  lengths = jnp.full((s.B,), s.T, jnp.int32)
  h0 = jnp.zeros((1, s.B, s.H), jnp.float32)

  def apply(w, x):
    ys, _, _ = rnn.lstm(x, h0, h0, w, lengths, s.I, s.H, 1, 0.0, False)
    return ys
  fn = apply if mode == "fwd" else _loss_and_grad(apply)
  return _jax_build(fn, (w, jnp.asarray(_inputs(s))), dev)


# -- PyTorch ---------------------------------------------------------------------

def torch(cell_name, s, mode, backend):
  """torch.nn.LSTM / GRU / RNN(tanh), batch_first, on CUDA when the JAX backend is a GPU."""
  th = _require("torch", "torch")
  if backend in (None, "") :
    import jax
    backend = jax.default_backend()
  if backend in ("gpu", "cuda", "rocm"):
    if not th.cuda.is_available():
      raise Unavailable("torch has no CUDA device")
    dev = th.device("cuda")
    sync_dev = lambda _: th.cuda.synchronize()
  elif backend == "cpu":
    dev = th.device("cpu")
    sync_dev = lambda _: None
  else:
    raise Unavailable(f"torch does not run on backend {backend!r}")
  th.manual_seed(0)
  mod = {"simple": lambda: th.nn.RNN(s.I, s.H, nonlinearity="tanh", batch_first=True),
         "lstm": lambda: th.nn.LSTM(s.I, s.H, batch_first=True),
         "gru": lambda: th.nn.GRU(s.I, s.H, batch_first=True)}[cell_name]().to(dev)
  xs = th.from_numpy(_inputs(s)).to(dev)
  if mode == "fwd":
    def call():
      with th.no_grad():
        return mod(xs)[0]
  else:
    xg = xs.clone().requires_grad_(True)

    def call():
      mod.zero_grad(set_to_none=True)
      xg.grad = None
      ys, _ = mod(xg)
      ys.sum().backward()
      return xg.grad
  memory: Dict[str, Optional[float]] = {}
  if dev.type == "cuda":
    th.cuda.reset_peak_memory_stats()
  return Built(call=call, sync=sync_dev, compile_s=None, memory=memory,
               note=f"torch {th.__version__} on {dev.type}, {th.get_num_threads()} threads")


def torch_peak(backend) -> Optional[float]:
  import torch as th
  if th.cuda.is_available() and backend in ("gpu", "cuda", "rocm"):
    return float(th.cuda.max_memory_allocated())
  return None


ADAPTERS: Dict[str, Callable] = {
    "rnnjax": rnnjax_auto,
    "rnnjax_reference": rnnjax_reference,
    "rnnjax_fused_inloop": rnnjax_fused_inloop,
    "rnnjax_fused_hoisted": rnnjax_fused_hoisted,
    "rnnjax_reference_hoisted": rnnjax_reference_hoisted,
    "rnnjax_baseline": rnnjax_baseline,
    "rnnjax_deer": rnnjax_deer,
    "rnnjax_quasi_deer": rnnjax_quasi_deer,
    "rnnjax_elk": rnnjax_elk,
    "flax_linen": flax_linen,
    "flax_nnx": flax_nnx,
    "torch": torch,
    "equinox": equinox,
    "haiku": haiku,
    "cudnn": cudnn,
}
# rnnjax_{method} and its alias parallel_{method} (the GPU check's name for it).
for _m in PARALLEL_METHODS:
  ADAPTERS[f"rnnjax_{_m}"] = {"deer": rnnjax_deer, "quasi_deer": rnnjax_quasi_deer, "elk": rnnjax_elk,
                              "quasi_elk": rnnjax_quasi_elk}[_m]
  ADAPTERS[f"parallel_{_m}"] = ADAPTERS[f"rnnjax_{_m}"]
OURS = (("rnnjax", "rnnjax_reference", "rnnjax_baseline", "rnnjax_fused_inloop",
         "rnnjax_fused_hoisted", "rnnjax_reference_hoisted")
        + tuple(f"rnnjax_{m}" for m in PARALLEL_METHODS) + tuple(f"parallel_{m}" for m in PARALLEL_METHODS))
DEFAULT_IMPLS = ("rnnjax", "flax_linen", "flax_nnx", "torch", "equinox", "haiku", "cudnn")
