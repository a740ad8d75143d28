"""rnnjax.autotune: timing once, the cache (memory and disk), bad cache files, results."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import _autotune


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("RNNJAX_CACHE_DIR", str(tmp_path / "c"))
  _autotune.clear_memory_cache()
  calls = []
  orig = _autotune._time_variant

  def counting(*a, **k):
    calls.append(1)
    return orig(*a, **k)
  monkeypatch.setattr(_autotune, "_time_variant", counting)
  yield tmp_path / "c" / "autotune.json", calls
  _autotune.clear_memory_cache()


def test_times_once_then_uses_the_cache(cache):
  path, calls = cache
  cell = rj.LSTM(4)
  r = rj.autotune(cell, 3, (2, 5, 3), mode="fwd", warmup=0, repeats=2)
  # LSTM: fused and reference, each with in-loop and hoisted projection.
  assert len(calls) == 4 and not r.cached
  assert set(r.times_s) == {"fused/inloop", "fused/hoisted", "reference/inloop", "reference/hoisted"}
  assert r.times_s[f"{r.impl}/{r.input_projection}"] == min(r.times_s.values())
  again = rj.autotune(cell, 3, jnp.zeros((2, 5, 3)), mode="fwd")
  assert len(calls) == 4 and again.cached and (again.impl, again.input_projection) == (r.impl, r.input_projection)
  # A fresh process (memory cleared) reads the file and still does not time.
  data = json.loads(path.read_text())
  assert data["schema"] == _autotune.SCHEMA_VERSION and r.key in data["entries"]
  _autotune.clear_memory_cache()
  assert _autotune.lookup(cell, (2,), 5, 3, jnp.float32, "fwd") == (r.impl, r.input_projection)
  assert rj.autotune(cell, 3, (2, 5, 3), mode="fwd").cached and len(calls) == 4
  # Another configuration (mode, T, lengths, cell config) is a miss.
  assert _autotune.lookup(cell, (2,), 5, 3, jnp.float32, "fwd+bwd") is None
  assert _autotune.lookup(cell, (2,), 6, 3, jnp.float32, "fwd") is None
  assert _autotune.lookup(cell, (2,), 5, 3, jnp.float32, "fwd", lengths=True) is None
  assert _autotune.lookup(rj.LSTM(4, forget_bias=0.0), (2,), 5, 3, jnp.float32, "fwd") is None
  # The key names the machine and the jax version.
  key = json.loads(r.key)
  assert key["jax"] == jax.__version__ and key["device"]["platform"] == jax.devices()[0].platform
  assert key["cell"] == repr(cell) and key["batch"] == 2 and key["T"] == 5


@pytest.mark.parametrize("content,match", [("{not json", "unreadable"),
                                           ('{"schema": 0, "entries": {}}', "stale"),
                                           ("[1, 2]", "stale")])
def test_corrupt_or_stale_cache_file_is_ignored_with_a_warning(cache, content, match):
  path, calls = cache
  path.parent.mkdir(parents=True)
  path.write_text(content)
  cell = rj.SimpleRNN(3)
  with pytest.warns(RuntimeWarning, match=match):
    assert _autotune.lookup(cell, (2,), 4, 2, jnp.float32, "fwd") is None
  r = rj.autotune(cell, 2, (2, 4, 2), mode="fwd", warmup=0, repeats=1)
  assert len(calls) == 4 and not r.cached
  # The file was replaced by a valid one holding the new entry.
  assert json.loads(path.read_text())["entries"][r.key]["impl"] == r.impl


def test_malformed_entry_is_ignored(cache):
  path, calls = cache
  cell = rj.SimpleRNN(3)
  key = _autotune.config_key(cell, (2,), 4, 2, jnp.float32, "fwd")
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({"schema": _autotune.SCHEMA_VERSION,
                              "entries": {key: {"impl": "magic", "input_projection": "inloop"}}}))
  with pytest.warns(RuntimeWarning, match="malformed"):
    assert _autotune.lookup(cell, (2,), 4, 2, jnp.float32, "fwd") is None


def test_chosen_variant_equals_reference_path(cache):
  path, calls = cache
  cell = rj.GRU(4)
  params = cell.init(jax.random.key(1), 3)
  xs = jax.random.normal(jax.random.key(2), (2, 6, 3))
  lengths = jnp.array([6, 3])
  r = rj.autotune(cell, params, xs, mode="fwd+bwd", lengths=lengths, warmup=0, repeats=1)
  assert len(calls) == 4 and json.loads(r.key)["lengths"] is True
  def loss(impl, proj, p, x):
    _, ys = rj.scan(cell, p, x, lengths=lengths, impl=impl, input_projection=proj)
    return jnp.sum(jnp.sin(ys)), ys
  (l1, ys1), g1 = jax.value_and_grad(lambda p, x: loss(r.impl, r.input_projection, p, x),
                                     argnums=(0, 1), has_aux=True)(params, xs)
  (l0, ys0), g0 = jax.value_and_grad(lambda p, x: loss("reference", "inloop", p, x),
                                     argnums=(0, 1), has_aux=True)(params, xs)
  np.testing.assert_allclose(ys1, ys0, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert _autotune.resolve(cell, (2,), 6, 3, jnp.float32, "fwdbwd", True, tune=False) == \
      (r.impl, r.input_projection)


def test_budget_bounds_the_variants(cache):
  _, calls = cache
  r = rj.autotune(rj.LSTM(3), 2, (1, 3, 2), mode="fwd", budget_s=0.0, warmup=0, repeats=3)
  # Past the budget after the first variant: only the rules' default is measured.
  assert len(calls) == 1 and len(r.times_s) == 1


def test_bad_arguments():
  with pytest.raises(ValueError, match="mode"):
    rj.autotune(rj.LSTM(3), 2, (1, 3, 2), mode="backward")
  with pytest.raises(TypeError, match="params_or_input_size"):
    rj.autotune(rj.LSTM(3), "2", (1, 3, 2))
  with pytest.raises(ValueError, match="last dim"):
    rj.autotune(rj.LSTM(3), 4, (1, 3, 2))
  with pytest.raises(TypeError, match="xs_or_shape"):
    rj.autotune(rj.LSTM(3), 2, "1,3,2")


def test_cpu_info_matches_proc_cpuinfo():
  info = _autotune.cpu_info()
  assert info["cpu_count"] == os.cpu_count() and info["model"]
  if not os.path.exists("/proc/cpuinfo"):
    pytest.skip("no /proc/cpuinfo")
  flags = set()
  with open("/proc/cpuinfo") as f:
    for line in f:
      if line.startswith("flags") or line.startswith("Features"):
        flags = set(line.split(":", 1)[1].split())
        break
  assert ("avx2" in info["features"]) == ("avx2" in flags)
  assert ("avx512f" in info["features"]) == ("avx512f" in flags)
  assert info["vector"] == ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags
                            else info["vector"])
