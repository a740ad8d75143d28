"""Rematerialised scans (rnnjax._remat) and streaming inference (rnnjax.stream)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import _remat


def _loss(final, ys):
  w = jnp.arange(ys.size, dtype=ys.dtype).reshape(ys.shape) / ys.size
  return jnp.sum(ys * w) + sum(jnp.sum(c ** 2) for c in jax.tree_util.tree_leaves(final))


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("reverse", [False, True])
def test_remat_values_and_gradients_equal_plain_scan(x64, impl, reverse):
  cell = rj.LSTM(4)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(0), 3))
  xs = jax.random.normal(jax.random.key(1), (11, 4, 3), jnp.float64)   # T=11: chunks 3+3+3, tail 2
  lengths = jnp.array([11, 7, 0, 2])
  c0 = jax.tree_util.tree_map(lambda a: a + 0.1, cell.initial_carry((4,), dtype=jnp.float64))
  sf = functools.partial(rj.scan, time_major=True, impl=impl)

  def plain(p, x, c):
    return _loss(*sf(cell, p, x, c, lengths=lengths, reverse=reverse))

  def remat(p, x, c):
    return _loss(*_remat.remat_scan(sf, cell, p, x, c, lengths, reverse=reverse, chunk=3))

  v0, g0 = jax.value_and_grad(plain, argnums=(0, 1, 2))(params, xs, c0)
  v1, g1 = jax.jit(jax.value_and_grad(remat, argnums=(0, 1, 2)))(params, xs, c0)
  np.testing.assert_allclose(v1, v0, rtol=1e-12)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_remat_without_lengths_and_default_chunk(x64):
  cell = rj.GRU(3)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(2), 2))
  xs = jax.random.normal(jax.random.key(3), (10, 2, 2), jnp.float64)   # default chunk ceil(sqrt(10)) = 4
  c0 = cell.initial_carry((2,), dtype=jnp.float64)
  sf = functools.partial(rj.scan, time_major=True, impl="reference")
  for reverse in (False, True):
    f0, y0 = sf(cell, params, xs, c0, reverse=reverse)
    f1, y1 = _remat.remat_scan(sf, cell, params, xs, c0, None, reverse=reverse)
    np.testing.assert_allclose(y1, y0, rtol=1e-12)
    np.testing.assert_allclose(f1, f0, rtol=1e-12)
  assert [_remat.default_chunk(t) for t in (1, 2, 4, 5, 10, 65536)] == [1, 2, 2, 3, 4, 256]


def test_remat_reverse_reads_each_sequence_backwards_within_its_length(x64):
  """reverse=True: a sequence of length L gives the forward scan of its flipped first L steps."""
  cell = rj.SimpleRNN(3)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), cell.init(jax.random.key(4), 2))
  xs = np.asarray(jax.random.normal(jax.random.key(5), (7, 2, 2), jnp.float64))
  L = 5
  sf = functools.partial(rj.scan, time_major=True, impl="reference")
  c0 = cell.initial_carry((2,), dtype=jnp.float64)
  final, ys = _remat.remat_scan(sf, cell, params, xs, c0, jnp.array([L, 7]), reverse=True, chunk=3)
  # Independent float64 NumPy loop of h' = tanh(x U + h W + b) over x[L-1], ..., x[0].
  U, W, b = (np.asarray(params[k]) for k in ("w_i", "w_h", "b"))
  h = np.zeros(3)
  expect = np.zeros((7, 3))
  for t in reversed(range(L)):
    h = np.tanh(xs[t, 0] @ U + h @ W + b)
    expect[t] = h
  np.testing.assert_allclose(ys[:, 0], expect, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(final[0], h, rtol=1e-12)


def test_remat_memory_is_sublinear():
  """XLA's temp memory of fwd+bwd: remat with chunk sqrt(T) far below the plain scan."""
  cell = rj.LSTM(32)
  params = cell.init(jax.random.key(0), 8)
  xs = jnp.zeros((1024, 4, 8))
  c0 = cell.initial_carry((4,))
  sf = functools.partial(rj.scan, time_major=True, impl="fused")

  def temp(f):
    g = jax.grad(lambda p, x: jnp.sum(f(p, x)[1]), argnums=(0, 1))
    return jax.jit(g).lower(params, xs).compile().memory_analysis().temp_size_in_bytes
  plain = temp(lambda p, x: sf(cell, p, x, c0))
  remat = temp(lambda p, x: _remat.remat_scan(sf, cell, p, x, c0, None, chunk=32))
  # Plain stores >= 6 [T, B, H] float32 arrays of residuals (3 MiB); remat about 2 * 32 steps.
  assert plain >= 6 * 1024 * 4 * 32 * 4
  assert remat * 8 < plain, (remat, plain)


def test_remat_bad_chunk():
  with pytest.raises(ValueError, match="chunk"):
    _remat.remat_scan(rj.scan, rj.SimpleRNN(2), None, jnp.zeros((4, 1, 2)), None, chunk=0)
  with pytest.raises(ValueError, match="remat"):
    _remat.check_remat(-3)
  assert _remat.check_remat(True, 100) == 10 and _remat.check_remat(None) is None


@pytest.mark.parametrize("time_major", [False, True])
def test_stream_equals_one_scan(time_major):
  cell = rj.LSTM(5)
  params = cell.init(jax.random.key(0), 3)
  xs = jax.random.normal(jax.random.key(1), (2, 3, 10, 3))          # batch dims [2, 3], T=10
  lengths = jnp.array([[10, 4, 0], [7, 9, 1]])
  if time_major:
    xs = jnp.moveaxis(xs, 2, 0)
  f0, y0 = rj.scan(cell, params, xs, lengths=lengths, time_major=time_major)
  f1, y1 = rj.stream(cell, params, np.asarray(xs), chunk=4, lengths=lengths, time_major=time_major)
  assert y1.shape == y0.shape
  np.testing.assert_allclose(y1, y0, rtol=1e-5, atol=1e-6)
  for a, b in zip(f1, f0):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stream_chunks_generator_carries_state():
  cell = rj.GRU(4)
  params = cell.init(jax.random.key(3), 2)
  xs = jax.random.normal(jax.random.key(4), (3, 9, 2))
  parts = [xs[:, :2], xs[:, 2:7], xs[:, 7:]]
  outs = [ys for _, ys in rj.stream_chunks(cell, params, parts)]
  np.testing.assert_allclose(jnp.concatenate(outs, 1), rj.scan(cell, params, xs)[1], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="chunk"):
    rj.stream(cell, params, xs, chunk=0)
