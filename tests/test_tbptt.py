"""Truncated BPTT (rnnjax.train._tbptt) against a hand-written chunked reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rnnjax as rj
from rnnjax.train import _tbptt


def _reference(params, x, y, lengths, K, lr):
  """Chunk by chunk: the carry from the previous chunk (with the params of then) as a constant,
  an SGD update on the gradient of the chunk's masked MSE, written out by hand."""
  cell = rj.SimpleRNN(4)
  T = x.shape[1]
  h = jnp.zeros((x.shape[0], 4), x.dtype)
  updates = 0
  for s in range(0, T, K):
    xc, yc = x[:, s:s + K], y[:, s:s + K]
    lc = np.clip(np.asarray(lengths) - s, 0, xc.shape[1])

    def loss(p, h0):
      hT, hs = rj.scan(cell, p["layers"][0], xc, h0, lengths=jnp.asarray(lc), impl="reference")
      pred = hs @ p["readout"]["w"] + p["readout"]["b"]
      m = (np.arange(xc.shape[1])[None, :] < lc[:, None])[..., None]
      return jnp.sum(jnp.where(m, (pred - yc) ** 2, 0.0)) / float(max(m.sum(), 1)), hT
    (_, h_next), g = jax.value_and_grad(loss, has_aux=True)(params, h)
    if lc.sum() > 0:
      params = jax.tree_util.tree_map(lambda p, d: p - lr * d, params, g)
      updates += 1
    h = h_next
  return params, updates


@pytest.mark.parametrize("lengths", [[7, 3], [3, 2]])
def test_tbptt_step_matches_chunked_reference(x64, lengths):
  model = rj.SequenceModel([rj.SimpleRNN(4)], rj.Dense(1), return_sequences=True)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0), 3))
  x = jax.random.normal(jax.random.key(1), (2, 7, 3), jnp.float64)
  y = jax.random.normal(jax.random.key(2), (2, 7, 1), jnp.float64)
  lengths = jnp.array(lengths)
  opt = optax.sgd(0.1)
  step = _tbptt.make_tbptt_step(_tbptt.chunk_model_loss(model, "mse"), opt, 3,
                                functools.partial(_tbptt.model_initial_carry, model))
  new, _, m = step(params, opt.init(params), (x, y, lengths), None)
  ref, n_upd = _reference(params, x, y, lengths, 3, 0.1)
  assert m["chunk_loss"].shape == (3,) and int(m["updates"]) == n_upd == (3 if lengths[0] == 7 else 1)
  for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_tbptt_with_K_at_least_T_is_full_bptt(x64):
  model = rj.SequenceModel([rj.Stack([rj.LSTM(3), rj.GRU(3)])], rj.Dense(2), return_sequences=True)
  params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(3), 2))
  x = jax.random.normal(jax.random.key(4), (3, 5, 2), jnp.float64)
  y = jax.random.randint(jax.random.key(5), (3, 5), 0, 2)
  opt = optax.sgd(0.5)
  step = _tbptt.make_tbptt_step(_tbptt.chunk_model_loss(model, "cross_entropy"), opt, 8,
                                functools.partial(_tbptt.model_initial_carry, model))
  new, _, m = step(params, opt.init(params), (x, y), None)
  full_loss = rj.train.model_loss(model, "cross_entropy")
  (l, _), g = jax.value_and_grad(full_loss, has_aux=True)(params, (x, y))
  np.testing.assert_allclose(m["loss"], l, rtol=1e-12)
  for a, p, d in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(params),
                     jax.tree_util.tree_leaves(g)):
    np.testing.assert_allclose(a, p - 0.5 * d, rtol=1e-10, atol=1e-12)


def test_fit_tbptt_learns_a_delayed_copy():
  """y_t = x_{t-1}: within reach of K=4, so TBPTT training must drive the loss down."""
  model = rj.SequenceModel([rj.GRU(8)], rj.Dense(1), return_sequences=True)
  params = model.init(jax.random.key(0), 1)
  x = jax.random.normal(jax.random.key(1), (16, 24, 1))
  y = jnp.concatenate([jnp.zeros((16, 1, 1)), x[:, :-1]], axis=1)
  # optax's Adam bias correction mixes a Python float with its int32 count: standard promotion.
  with jax.numpy_dtype_promotion("standard"):
    params, hist = _tbptt.fit_tbptt(model, params, (x, y), optimizer=rj.train.optimizer("adam", 0.03),
                                    steps=30, tbptt=4)
  assert hist[0]["updates"] == 6
  assert hist[-1]["loss"] < 0.2 * hist[0]["loss"], (hist[0], hist[-1])


def test_tbptt_bad_arguments():
  seq = rj.SequenceModel([rj.GRU(2)], rj.Dense(1), return_sequences=True)
  with pytest.raises(ValueError, match="return_sequences"):
    _tbptt.chunk_model_loss(rj.SequenceModel([rj.GRU(2)], rj.Dense(1)))
  with pytest.raises(ValueError, match="Bidirectional"):
    _tbptt.chunk_model_loss(rj.SequenceModel([rj.Bidirectional(rj.GRU(2), rj.GRU(2))], rj.Dense(1),
                                             return_sequences=True))
  with pytest.raises(ValueError, match="tbptt"):
    _tbptt.make_tbptt_step(_tbptt.chunk_model_loss(seq), optax.sgd(0.1), 0, None)
