"""Autotuning of :func:`rnnjax.scan`'s variants for the machine at hand.

The default rules of ``impl="auto"`` (fused or reference path, in-loop or
hoisted input projection) were measured on one CPU generation and need not
hold on another. :func:`autotune` times every applicable variant of
``rnnjax.scan`` for one configuration (cell, batch, length, input size,
dtype, mode) on the current default device, once, and caches the winner in
memory and on disk, so that later calls (and ``impl="auto"`` through
:func:`lookup`) reuse it without timing again.

Variants: ``impl`` in ``("fused", "reference")`` x ``input_projection`` in
``("inloop", "hoisted")``; a variant that does not apply to the cell (the
fused path of a cell it does not implement, raising ``ValueError``) is left
out, and for a cell without a split step (``input_projection`` /
``recurrent_step``) the reference path is timed once.

Budget. Every variant is jitted and compiled once (compile time counted) and
then called ``warmup`` times plus up to ``repeats`` timed calls. Variants are
tried in the order of the current rules (the default choice first); once the
elapsed time of a configuration passes ``budget_s`` (default 20 s) no
further variant starts and the timed calls of the running one stop, so a
configuration costs at most about ``budget_s`` plus one compile and one
call. The winner has the smallest median time.

Cache. A JSON file ``autotune.json`` in ``$RNNJAX_CACHE_DIR``, else
``$XDG_CACHE_HOME/rnnjax``, else ``~/.cache/rnnjax``. Entries are keyed by
the device (platform and kind; on CPU the CPU model, its vector features
such as AVX2 / AVX-512, and the number of CPUs), the jax version and the
configuration (the cell's ``repr``, which lists its whole static config;
the flattened batch size, ``T``, the input size, the dtype, the mode and
whether ``lengths`` are given). A file that cannot be read, is not valid
JSON, or has another schema version is ignored with a warning (and
replaced on the next write).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEMA_VERSION = 1
CACHE_FILE = "autotune.json"
IMPLS = ("fused", "reference")
PROJECTIONS = ("inloop", "hoisted")
MODES = ("fwd", "fwd+bwd")

_lock = threading.Lock()
_memory: Dict[str, dict] = {}   # key -> entry (this process)
_disk: Optional[Dict[str, dict]] = None  # the file's entries, loaded lazily
_disk_path: Optional[str] = None


class AutotuneResult(NamedTuple):
  """The outcome of :func:`autotune`.

  ``impl`` and ``input_projection``: the fastest variant; ``times_s``: median
  seconds per call of every variant timed (``"impl/projection"`` keys);
  ``compile_s``: compile seconds of each; ``cached``: whether the result came
  from the cache (no timing in this call); ``key``: the cache key.
  """
  impl: str
  input_projection: str
  times_s: Dict[str, float]
  compile_s: Dict[str, float]
  cached: bool
  key: str


# -- machine description ---------------------------------------------------------

def cpu_info() -> Dict[str, object]:
  """The CPU model, its vector features and the CPU count (Linux ``/proc/cpuinfo``).

  ``features`` lists those of ``avx``, ``avx2``, ``fma``, ``avx512f``,
  ``avx512bw``, ``avx512vl``, ``avx512_bf16``, ``avx512_vnni``, ``amx_tile``
  (x86) or ``asimd``, ``sve`` (Arm) that the CPU reports; ``vector`` is a
  one-word summary (``"AVX-512"``, ``"AVX2"``, ``"AVX"``, ``"NEON"``, ``"SVE"``
  or ``"unknown"``).
  """
  info = _cpu_info()
  return dict(info, features=list(info["features"]))


@functools.lru_cache(maxsize=1)
def _cpu_info() -> Dict[str, object]:
  """Reads /proc/cpuinfo (cached)."""
  model, flags = None, set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        k, _, v = line.partition(":")
        k = k.strip()
        if k in ("model name", "Model", "cpu model") and model is None:
          model = v.strip()
        elif k in ("flags", "Features") and not flags:
          flags = set(v.split())
  except OSError:
    pass
  model = model or platform.processor() or platform.machine() or "unknown"
  wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
            "avx512_vnni", "amx_tile", "asimd", "sve")
  feats = [f for f in wanted if f in flags]
  if "avx512f" in flags:
    vector = "AVX-512"
  elif "avx2" in flags:
    vector = "AVX2"
  elif "avx" in flags:
    vector = "AVX"
  elif "sve" in flags:
    vector = "SVE"
  elif "asimd" in flags:
    vector = "NEON"
  else:
    vector = "unknown"
  return {"model": model, "features": feats, "vector": vector, "cpu_count": os.cpu_count(),
          "machine": platform.machine()}


def device_key(device=None) -> Dict[str, object]:
  """What identifies the hardware a timing belongs to."""
  d = device or jax.devices()[0]
  out = {"platform": d.platform, "kind": d.device_kind}
  if d.platform == "cpu":
    info = cpu_info()
    out.update(cpu=info["model"], features=info["features"], cpus=info["cpu_count"])
  return out


# -- the cache -------------------------------------------------------------------

def cache_dir() -> str:
  """``$RNNJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnnjax``, else ``~/.cache/rnnjax``."""
  d = os.environ.get("RNNJAX_CACHE_DIR")
  if d:
    return d
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "rnnjax")


def cache_path() -> str:
  return os.path.join(cache_dir(), CACHE_FILE)


def _valid_entry(e) -> bool:
  return (isinstance(e, dict) and e.get("impl") in IMPLS
          and e.get("input_projection") in PROJECTIONS)


def _read_file(path: str) -> Dict[str, dict]:
  """The entries of the cache file; {} with a warning when it is unusable."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    warnings.warn(f"rnnjax autotune: ignoring unreadable cache file {path} ({type(e).__name__}: {e}).",
                  RuntimeWarning, stacklevel=3)
    return {}
  if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION or \
      not isinstance(data.get("entries"), dict):
    got = data.get("schema") if isinstance(data, dict) else type(data).__name__
    warnings.warn(f"rnnjax autotune: ignoring stale cache file {path} (schema {got!r}, "
                  f"expected {SCHEMA_VERSION}).", RuntimeWarning, stacklevel=3)
    return {}
  entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}
  if len(entries) != len(data["entries"]):
    warnings.warn(f"rnnjax autotune: ignoring {len(data['entries']) - len(entries)} malformed "
                  f"entries of {path}.", RuntimeWarning, stacklevel=3)
  return entries


def _disk_entries() -> Dict[str, dict]:
  global _disk, _disk_path
  path = cache_path()
  if _disk is None or _disk_path != path:
    _disk, _disk_path = _read_file(path), path
  return _disk


def _write(key: str, entry: dict):
  """Merges ``entry`` into the cache file (atomic replace); a failure only warns."""
  global _disk, _disk_path
  path = cache_path()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # already warned on load
    entries = _read_file(path)
  entries[key] = entry
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".autotune.", suffix=".json")
    with os.fdopen(fd, "w") as f:
      json.dump({"schema": SCHEMA_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:
    warnings.warn(f"rnnjax autotune: could not write the cache file {path} ({e}); the result is "
                  "kept in memory only.", RuntimeWarning, stacklevel=3)
  _disk, _disk_path = entries, path


def clear_memory_cache():
  """Forgets the in-memory cache and the loaded file (the file stays)."""
  global _disk, _disk_path
  with _lock:
    _memory.clear()
    _disk, _disk_path = None, None


def _canon_mode(mode: str) -> str:
  if mode == "fwdbwd":
    mode = "fwd+bwd"
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  return mode


def config_key(cell, batch_shape: Sequence[int], T: int, input_size: int, dtype, mode: str,
               lengths: bool = False, device=None) -> str:
  """The cache key (a JSON string) of one configuration on ``device``."""
  batch_shape = tuple(int(b) for b in batch_shape)
  key = {"device": device_key(device), "jax": jax.__version__, "cell": repr(cell),
         "batch": math.prod(batch_shape), "unbatched": len(batch_shape) == 0,
         "T": int(T), "input_size": int(input_size), "dtype": jnp.dtype(dtype).name,
         "mode": _canon_mode(mode), "lengths": bool(lengths)}
  return json.dumps(key, sort_keys=True)


def lookup(cell, batch_shape, T, input_size, dtype, mode, lengths=False,
           device=None) -> Optional[Tuple[str, str]]:
  """The cached ``(impl, input_projection)`` of a configuration, or None.

  Looks in memory, then in the cache file; never times anything. Meant for
  ``rnnjax.scan(impl="auto")`` (cache first, rules second).
  """
  key = config_key(cell, batch_shape, T, input_size, dtype, mode, lengths, device)
  with _lock:
    e = _memory.get(key)
    if e is None:
      e = _disk_entries().get(key)
      if e is not None:
        _memory[key] = e
  return None if e is None else (e["impl"], e["input_projection"])


# -- timing ----------------------------------------------------------------------

def _time_variant(fn, args, *, warmup: int, repeats: int, deadline: float):
  """Median seconds of up to ``repeats`` synchronised calls (at least one) after ``warmup``."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
    if time.perf_counter() > deadline:
      break
  return statistics.median(times)


def _variants(cell):
  from rnnjax import _fused
  from rnnjax import _scan
  split = hasattr(cell, "input_projection") and hasattr(cell, "recurrent_step")
  out = []
  if _fused.supports(cell):
    out += [("fused", p) for p in PROJECTIONS]
  out += [("reference", p) for p in (PROJECTIONS if split else ("inloop",))]
  # The current rules' choice first, so a tight budget still measures it.
  default = tuple(_scan.auto_plan(cell))
  out.sort(key=lambda v: (v[0] != default[0], v[1] != default[1]))
  return out


def autotune(cell, params_or_input_size, xs_or_shape, *, mode: str = "fwd",
             lengths=None, dtype=None, time_major: bool = False,
             budget_s: float = 20.0, warmup: int = 1, repeats: int = 5,
             force: bool = False, save: bool = True, key=None) -> AutotuneResult:
  """Times the variants of :func:`rnnjax.scan` for one configuration and caches the fastest.

  Args:
    cell: an rnnjax cell.
    params_or_input_size: the cell's params (the input size is read from
      ``w_i``, and they are used for the timing) or the input size ``I``
      (params are then initialised with ``cell.init``).
    xs_or_shape: an input array or its shape, ``[*B, T, I]``
      (``[T, *B, I]`` with ``time_major=True``). Only the shape is used.
    mode: ``"fwd"`` (the outputs) or ``"fwd+bwd"`` (gradients of a scalar
      loss of the outputs w.r.t. params and inputs).
    lengths: None, or int ``[*B]`` lengths / ``True`` to time the masked
      scan (random lengths in [T/2, T] are used when ``True``).
    dtype: input dtype (default: ``xs``'s dtype, else float32).
    time_major: the layout of ``xs_or_shape``.
    budget_s: soft bound on the seconds spent on this configuration (see
      the module doc).
    warmup, repeats: untimed and (at most) timed calls per variant.
    force: time again even if the configuration is cached.
    save: write the result to the cache file (it always goes to memory).
    key: PRNG key for the random inputs (default ``jax.random.key(0)``).

  Returns:
    An :class:`AutotuneResult`.
  """
  import rnnjax as rj
  mode = _canon_mode(mode)
  if isinstance(params_or_input_size, (int, np.integer)) and not isinstance(params_or_input_size, bool):
    input_size, params = int(params_or_input_size), None
  elif isinstance(params_or_input_size, dict) and "w_i" in params_or_input_size:
    params = params_or_input_size
    input_size = int(params["w_i"].shape[0])
  else:
    raise TypeError("params_or_input_size must be the cell's params (a dict with 'w_i') or an "
                    f"int input size, got {type(params_or_input_size).__name__}.")
  if hasattr(xs_or_shape, "shape") and hasattr(xs_or_shape, "dtype"):
    shape = tuple(xs_or_shape.shape)
    dtype = dtype or xs_or_shape.dtype
  elif isinstance(xs_or_shape, (tuple, list)) and all(isinstance(s, (int, np.integer)) for s in xs_or_shape):
    shape = tuple(int(s) for s in xs_or_shape)
  else:
    raise TypeError(f"xs_or_shape must be an array or a shape tuple, got {xs_or_shape!r}.")
  if len(shape) < 2:
    raise ValueError(f"xs_or_shape must have rank >= 2 ([*B, T, I]), got {shape}.")
  if shape[-1] != input_size:
    raise ValueError(f"xs_or_shape's last dim {shape[-1]} does not match the input size {input_size}.")
  dtype = jnp.dtype(dtype or jnp.float32)
  T = shape[0] if time_major else shape[-2]
  batch_shape = shape[1:-1] if time_major else shape[:-2]
  has_len = lengths is not None and lengths is not False
  ckey = config_key(cell, batch_shape, T, input_size, dtype, mode, has_len)

  if not force:
    with _lock:
      e = _memory.get(ckey) or _disk_entries().get(ckey)
    if e is not None:
      with _lock:
        _memory[ckey] = e
      return AutotuneResult(e["impl"], e["input_projection"], dict(e.get("times_s", {})),
                            dict(e.get("compile_s", {})), True, ckey)

  key = jax.random.key(0) if key is None else key
  k1, k2, k3 = jax.random.split(key, 3)
  if params is None:
    params = cell.init(k1, input_size)
  xs = jax.random.normal(k2, shape, dtype)
  if lengths is True:
    lens = jax.random.randint(k3, batch_shape, max(T // 2, 0), T + 1)
  elif has_len:
    lens = jnp.asarray(lengths)
  else:
    lens = None

  def make(impl, proj):
    def fwd(p, x, l):
      return rj.scan(cell, p, x, lengths=l, time_major=time_major, impl=impl,
                     input_projection=proj)[1]
    if mode == "fwd":
      return fwd
    return jax.grad(lambda p, x, l: jnp.sum(fwd(p, x, l).astype(jnp.float32) ** 2), argnums=(0, 1))

  t_start = time.perf_counter()
  deadline = t_start + budget_s
  times, compiles = {}, {}
  for impl, proj in _variants(cell):
    if times and time.perf_counter() > deadline:
      break
    name = f"{impl}/{proj}"
    try:
      t0 = time.perf_counter()
      fn = jax.jit(make(impl, proj)).lower(params, xs, lens).compile()
      compiles[name] = time.perf_counter() - t0
    except ValueError:  # the variant does not apply to this cell
      continue
    times[name] = _time_variant(fn, (params, xs, lens), warmup=warmup, repeats=repeats,
                                deadline=deadline)
  if not times:
    raise ValueError(f"no scan variant runs for {cell!r}.")
  best = min(times, key=times.get)
  impl, proj = best.split("/")
  entry = {"impl": impl, "input_projection": proj, "times_s": times, "compile_s": compiles,
           "tuning_s": time.perf_counter() - t_start,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
  with _lock:
    _memory[ckey] = entry
    if save:
      _write(ckey, entry)
  return AutotuneResult(impl, proj, times, compiles, False, ckey)


def resolve(cell, batch_shape, T, input_size, dtype, mode, lengths=False, *,
            tune: bool) -> Optional[Tuple[str, str]]:
  """For ``rnnjax.scan``: the cached variant; when absent and ``tune``, autotune it now.

  ``tune`` is ``impl="autotune"`` or the environment variable
  ``RNNJAX_AUTOTUNE=1`` (see :func:`env_enabled`). Shapes only: safe to call
  while tracing.
  """
  hit = lookup(cell, batch_shape, T, input_size, dtype, mode, lengths)
  if hit is not None or not tune:
    return hit
  r = autotune(cell, int(input_size), tuple(batch_shape) + (int(T), int(input_size)), mode=mode,
               lengths=True if lengths else None, dtype=dtype)
  return r.impl, r.input_projection


def env_enabled() -> bool:
  """Whether ``RNNJAX_AUTOTUNE`` asks ``impl="auto"`` to autotune configurations on a miss."""
  return os.environ.get("RNNJAX_AUTOTUNE", "").strip().lower() in ("1", "true", "yes", "on")
