"""Layers (Stack, Bidirectional, Dense, SequenceModel) against manual
compositions of scans and float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

B, T, I = 3, 6, 3
LENGTHS = np.array([6, 2, 4], np.int32)


def rand_params(model, input_size, seed, scale=0.5):
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), input_size))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), jnp.float32), shapes)


def rand_xs(seed, shape=(B, T, I)):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def close(a, b, atol=1e-5):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------
# Stack


def test_stack_as_cell_equals_layer_by_layer():
  # Forward stacks are checked against a Python loop in test_scan.py; here the
  # reversed read, the cell view (one scan) against the layer view (apply).
  stack = rj.Stack([rj.LSTM(4), rj.GRU(3), rj.SimpleRNN(2, "relu")])
  params = rand_params(stack, I, seed=1)
  xs = rand_xs(2)
  lengths = jnp.asarray(LENGTHS)

  @jax.jit
  def run(params, xs):
    as_cell = rj.scan(stack, params, xs, lengths=lengths, reverse=True)
    applied = stack.apply(params, xs, lengths=lengths, reverse=True)
    # Manual: one scan per layer, each reading the previous layer's outputs.
    h, carries = xs, []
    for cell, p in zip(stack.cells, params):
      c, h = rj.scan(cell, p, h, lengths=lengths, reverse=True)
      carries.append(c)
    return as_cell, applied, (tuple(carries), h)

  (c_cell, y_cell), (c_app, y_app), (carries, h) = run(params, xs)
  assert y_cell.shape == (B, T, 2)
  close(y_cell, h)
  close(y_app, h)
  close(c_cell, carries)
  close(c_app, carries)
  assert isinstance(c_cell[0], rj.LSTMCarry) and isinstance(c_app, tuple)
  np.testing.assert_array_equal(np.asarray(y_app)[1, 2:], 0.0)


def _dropout_probe(rate):
  """A stack whose top layer copies its input: h2_t = x_t (identity, W_h = 0).

  Its outputs are then exactly the (dropped-out) outputs of the layer below.
  """
  H1 = 8
  stack = rj.Stack([rj.SimpleRNN(H1), rj.SimpleRNN(H1, "identity")], dropout=rate)
  p1 = rand_params(stack.cells[0], I, seed=3)
  p2 = {"w_i": jnp.eye(H1), "w_h": jnp.zeros((H1, H1)), "b": jnp.zeros(H1)}
  return stack, (p1, p2)


def test_stack_dropout_is_keyed():
  rate = 0.4
  stack, params = _dropout_probe(rate)
  xs = rand_xs(4, (16, 10, I))
  no_key, clean = jax.jit(lambda p, x: (
      stack.apply(p, x)[1], rj.scan(stack.cells[0], p[0], x)[1]))(params, xs)
  # No key: no dropout; the output is layer 1's tanh outputs, all nonzero.
  np.testing.assert_allclose(no_key, clean, atol=1e-6)
  assert np.all(np.asarray(clean) != 0)
  # With a key: a fraction ~rate is zeroed, survivors are scaled by 1/(1-rate).
  keyed = jax.jit(lambda p, x, k: stack.apply(p, x, key=k)[1])
  d1 = keyed(params, xs, jax.random.key(7))
  d1b = keyed(params, xs, jax.random.key(7))
  d2 = keyed(params, xs, jax.random.key(8))
  d1, clean = np.asarray(d1), np.asarray(clean)
  dropped = d1 == 0
  frac = dropped.mean()
  n = dropped.size  # 16 * 10 * 8 = 1280; 4 sigma ~ 0.055
  assert abs(frac - rate) < 4 * np.sqrt(rate * (1 - rate) / n), frac
  np.testing.assert_allclose(d1[~dropped], clean[~dropped] / (1 - rate), rtol=1e-5)
  np.testing.assert_array_equal(d1, d1b)
  assert not np.array_equal(d1 == 0, np.asarray(d2) == 0)


def test_stack_dropout_spares_the_top_layer():
  stack = rj.Stack([rj.SimpleRNN(3)], dropout=0.5)
  params = rand_params(stack, I, seed=5)
  xs = rand_xs(6)
  _, a = stack.apply(params, xs, key=jax.random.key(0))
  _, b = rj.scan(stack.cells[0], params[0], xs)
  np.testing.assert_allclose(a, b, atol=1e-6)


# --------------------------------------------------------------------------
# Bidirectional


def test_bidirectional_merges_two_scans():
  H = 4
  fwd, bwd = rj.LSTM(H), rj.GRU(H)
  params = rand_params(rj.Bidirectional(fwd, bwd), I, seed=7)
  xs = rand_xs(8)
  lengths = jnp.asarray(LENGTHS)
  # Independent of scan's reverse flag: the backward cell reads each sequence
  # flipped within its own length, then its outputs are flipped back.
  xs_np = np.asarray(xs)
  step = jax.jit(bwd.__call__)  # a Python loop over the unbatched step
  yb_ref = np.zeros((B, T, H), np.float32)
  cb_ref = np.zeros((B, H), np.float32)
  for n, L in enumerate(LENGTHS):
    c = bwd.initial_carry()
    for t, x in enumerate(xs_np[n, :L][::-1]):
      c, y = step(params["backward"], c, jnp.asarray(x))
      yb_ref[n, L - 1 - t] = y
    cb_ref[n] = c
  merges = ("concat", "sum", "mean")

  @jax.jit
  def run(p, x):
    fwd_only = rj.scan(fwd, p["forward"], x, lengths=lengths)
    return fwd_only, [rj.Bidirectional(fwd, bwd, merge=m).apply(p, x, lengths=lengths)
                      for m in merges]

  (cf_ref, yf_ref), outs = run(params, xs)
  yf_ref = np.asarray(yf_ref)
  wants = (np.concatenate([yf_ref, yb_ref], -1), yf_ref + yb_ref, 0.5 * (yf_ref + yb_ref))
  for merge, want, ((cf, cb), ys) in zip(merges, wants, outs):
    assert ys.shape == want.shape
    assert rj.Bidirectional(fwd, bwd, merge=merge).output_size == want.shape[-1]
    np.testing.assert_allclose(ys, want, atol=1e-5, err_msg=merge)
    close(cf, cf_ref)
    np.testing.assert_allclose(cb, cb_ref, atol=1e-5)


def test_bidirectional_default_backward_copies_config():
  bi = rj.Bidirectional(rj.SimpleRNN(3))
  assert bi.backward == bi.forward and bi.output_size == 6
  params = rand_params(bi, I, seed=9)
  xs = rand_xs(10)
  _, ys = bi.apply(params, xs)
  _, yb = rj.scan(bi.backward, params["backward"], xs[:, ::-1])
  np.testing.assert_allclose(ys[..., 3:], yb[:, ::-1], atol=1e-5)
  with pytest.raises(ValueError, match="merge"):
    rj.Bidirectional(rj.SimpleRNN(3), rj.SimpleRNN(4), merge="sum")
  with pytest.raises(ValueError, match="merge"):
    rj.Bidirectional(rj.SimpleRNN(3), merge="max")


# --------------------------------------------------------------------------
# Dense and SequenceModel


def _np_act(name, z):
  if name == "identity":
    return z
  if name == "sigmoid":
    return 1 / (1 + np.exp(-z))
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("act", ["identity", "sigmoid", "softmax"])
def test_dense_readout(act):
  d = rj.Dense(3, act)
  p = rand_params(d, 5, seed=11)
  assert p["w"].shape == (5, 3) and p["b"].shape == (3,)
  h = np.random.default_rng(12).standard_normal((2, 4, 5))
  z = h @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)
  np.testing.assert_allclose(d.logits(p, jnp.asarray(h, jnp.float32)), z, atol=1e-5)
  np.testing.assert_allclose(d(p, jnp.asarray(h, jnp.float32)), _np_act(act, z), atol=1e-6)


def test_sequence_model_last_valid_step_under_lengths():
  model = rj.SequenceModel([rj.GRU(4)], rj.Dense(2, "softmax"))
  seq_model = rj.SequenceModel([rj.GRU(4)], rj.Dense(2, "softmax"), return_sequences=True)
  params = rand_params(model, I, seed=13)
  xs = rand_xs(14)
  lengths = np.array([6, 2, 0], np.int32)

  @jax.jit
  def run(params, xs, L):
    return (model.apply(params, xs, lengths=L), model.logits(params, xs, lengths=L),
            rj.scan(model.layers[0], params["layers"][0], xs, lengths=L)[1],
            seq_model.apply(params, xs, lengths=L))

  probs, logits, hs, all_steps = run(params, xs, jnp.asarray(lengths))
  hs = np.asarray(hs, np.float64)
  last = np.stack([hs[0, 5], hs[1, 1], np.zeros(4)])
  w, b = (np.asarray(params["readout"][k], np.float64) for k in ("w", "b"))
  np.testing.assert_allclose(logits, last @ w + b, atol=1e-5)
  np.testing.assert_allclose(probs, _np_act("softmax", last @ w + b), atol=1e-6)
  assert probs.shape == (3, 2)
  assert all_steps.shape == (3, T, 2)
  np.testing.assert_allclose(all_steps, _np_act("softmax", hs @ w + b), atol=1e-6)
  # Without lengths the last step is taken.
  np.testing.assert_allclose(rj.last_valid(jnp.asarray(hs)), hs[:, -1])


def test_sequence_model_with_bidirectional_and_stack_layers():
  model = rj.SequenceModel(
      [rj.Bidirectional(rj.LSTM(3)), rj.Stack([rj.GRU(4), rj.SimpleRNN(2)])],
      rj.Dense(1, "identity"), return_sequences=True)
  params = rand_params(model, I, seed=17)
  assert params["layers"][1][0]["w_i"].shape == (6, 12)  # reads the concat [.., 2*3]
  xs = rand_xs(15)
  lengths = jnp.asarray(LENGTHS)

  @jax.jit
  def run(params, xs):
    out = model.apply(params, xs, lengths=lengths)
    _, h = model.layers[0].apply(params["layers"][0], xs, lengths=lengths)
    _, h = model.layers[1].apply(params["layers"][1], h, lengths=lengths)
    return out, h @ params["readout"]["w"] + params["readout"]["b"]

  out, want = run(params, xs)
  assert out.shape == (B, T, 1)
  np.testing.assert_allclose(out, want, atol=1e-5)


def test_keras_style_simple_rnn_relu_then_dense_sigmoid():
  # Seed 002: SimpleRNN(64, activation="relu") -> Dense(1, activation="sigmoid").
  model = rj.SequenceModel([rj.SimpleRNN(64, "relu")], rj.Dense(1, "sigmoid"))
  params = model.init(jax.random.key(0), input_size=8)
  xs = rand_xs(16, (5, 10, 8))
  probs = model.apply(params, xs)
  assert probs.shape == (5, 1)
  # float64 NumPy forward pass from the equations.
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  rnn, out = p["layers"][0], p["readout"]
  h = np.zeros((5, 64))
  for t in range(10):
    h = np.maximum(np.asarray(xs[:, t], np.float64) @ rnn["w_i"] + h @ rnn["w_h"] + rnn["b"], 0)
  np.testing.assert_allclose(probs, 1 / (1 + np.exp(-(h @ out["w"] + out["b"]))), atol=1e-5)
