"""rj.nnx.RNN: the NNX wrapper computes rj.scan, and trains with nnx.Optimizer
exactly as a hand-written optax step on the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rnnjax as rj


def test_rnn_module_equals_scan():
  cell = rj.LSTM(6)  # the shapes of test_cells' init tests: cached kernels
  rnn = rj.nnx.RNN(cell, 5, rngs=nnx.Rngs(0))
  params = rnn.get_params()
  # Initialised with cell.init and the Rngs' params stream.
  ref = cell.init(nnx.Rngs(0).params(), 5)
  for k in ref:
    np.testing.assert_array_equal(params[k], ref[k])
  # Every leaf is an nnx.Param.
  state = nnx.state(rnn, nnx.Param)
  assert sorted(jax.tree_util.tree_map(jnp.shape, nnx.to_pure_dict(state))["params"].items()) == [
      ("b", (24,)), ("w_h", (6, 24)), ("w_i", (5, 24))]
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((3, 6, 5)), jnp.float32)
  lengths = jnp.array([6, 2, 4])
  c0 = rj.LSTMCarry(jnp.asarray(rng.standard_normal((3, 6)), jnp.float32),
                    jnp.asarray(rng.standard_normal((3, 6)), jnp.float32))
  carry, ys = rnn(xs, lengths=lengths, carry=c0, reverse=True, return_carry=True)
  carry_ref, ys_ref = rj.scan(cell, params, xs, c0, lengths=lengths, reverse=True)
  np.testing.assert_allclose(ys, ys_ref, atol=1e-6)
  np.testing.assert_allclose(carry.c, carry_ref.c, atol=1e-6)
  np.testing.assert_allclose(rnn(xs), rj.scan(cell, params, xs)[1], atol=1e-6)
  assert rnn.initial_carry((3,)).h.shape == (3, 6)


def test_rnn_module_with_given_params_and_stack():
  stack = rj.Stack([rj.GRU(3), rj.SimpleRNN(2)])
  shapes = jax.eval_shape(lambda: stack.init(jax.random.key(0), 2))
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes)
  rnn = rj.nnx.RNN(stack, 2, rngs=nnx.Rngs(0), params=params, time_major=True)
  xs = jnp.asarray(rng.standard_normal((5, 2, 2)), jnp.float32)  # [T, B, I]
  np.testing.assert_allclose(rnn(xs), rj.scan(stack, params, xs, time_major=True)[1],
                             atol=1e-6)
  assert len(jax.tree_util.tree_leaves(nnx.state(rnn, nnx.Param))) == 7
  with pytest.raises(ValueError, match=r"params has a leaf of shape \(2, 9\)"):
    rj.nnx.RNN(stack, 3, rngs=nnx.Rngs(0), params=params)
  with pytest.raises(TypeError, match="params has structure"):
    rj.nnx.RNN(stack, 2, rngs=nnx.Rngs(0), params=params[0])
  with pytest.raises(TypeError, match="rngs must be an nnx.Rngs"):
    rj.nnx.RNN(stack, 2, rngs=0)
  with pytest.raises(TypeError, match="cell must be an rnnjax cell or Stack"):
    rj.nnx.RNN(rj.Dense(2), 2, rngs=nnx.Rngs(0))


class _Regressor(nnx.Module):
  def __init__(self, rngs):
    self.rnn = rj.nnx.RNN(rj.GRU(6), input_size=5, rngs=rngs)
    self.out = nnx.Linear(6, 1, rngs=rngs)

  def __call__(self, xs):
    return self.out(self.rnn(xs)[:, -1])


def test_nnx_optimizer_trains_and_matches_a_manual_optax_step():
  # optax's Adam computes decay ** count with a Python float and an int32 count,
  # which JAX's strict promotion (conftest) rejects: third-party code, default promotion.
  with jax.numpy_dtype_promotion("standard"):
    _optimizer_step_test()


def _optimizer_step_test():
  rng = np.random.default_rng(2)
  xs = jnp.asarray(rng.uniform(-1, 1, (16, 6, 5)), jnp.float32)
  ys = jnp.mean(xs[..., :1], axis=1)  # target: the mean of feature 0 over time
  model = _Regressor(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  # The reference: the same loss written on raw arrays, one hand-made optax step.
  cell = model.rnn.cell
  raw = {"rnn": model.rnn.get_params(), "w": model.out.kernel[...], "b": model.out.bias[...]}

  def raw_loss(p):
    h = rj.scan(cell, p["rnn"], xs)[1][:, -1]
    return jnp.mean((h @ p["w"] + p["b"] - ys) ** 2)

  @jax.jit
  def raw_step(p):
    tx = optax.adam(1e-2)
    upd, _ = tx.update(jax.grad(raw_loss)(p), tx.init(p), p)
    return raw_loss(p), optax.apply_updates(p, upd)

  raw_loss0, raw1 = raw_step(raw)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - ys) ** 2))(model)
    optimizer.update(model, grads)
    return loss

  first = float(train_step(model, optimizer))
  np.testing.assert_allclose(first, float(raw_loss0), rtol=1e-6)
  got = model.rnn.get_params()
  for k in raw1["rnn"]:
    np.testing.assert_allclose(got[k], raw1["rnn"][k], atol=1e-6, err_msg=k)
  np.testing.assert_allclose(model.out.kernel[...], raw1["w"], atol=1e-6)
  # A few more steps reduce the loss.
  for _ in range(40):
    last = float(train_step(model, optimizer))
  assert last < 0.3 * first, (first, last)


@pytest.mark.parametrize("cell", [rj.IndRNN(5), rj.LSTM(5, peephole=True)], ids=["indrnn", "peephole"])
def test_nnx_wraps_new_cells(cell):
  from flax import nnx
  rnn = rj.nnx.RNN(cell, input_size=3, rngs=nnx.Rngs(0))
  xs = jax.random.normal(jax.random.key(1), (2, 4, 3))
  np.testing.assert_allclose(rnn(xs), rj.scan(cell, rnn.get_params(), xs)[1], atol=1e-6)


# Dropout, train/eval mode, and the Stack / Bidirectional / SequenceModel modules.

def _identity_top(H):
  """Layer-2 params of a SimpleRNN(H, "identity") that copies its input: y_t = x_t."""
  return {"w_i": jnp.eye(H), "w_h": jnp.zeros((H, H)), "b": jnp.zeros((H,))}


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_stack_dropout_train_eval_and_rate():
  H, rate = 16, 0.3
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.standard_normal((32, 20, 3)), jnp.float32)
  stack = rj.Stack([rj.GRU(H), rj.SimpleRNN(H, "identity")], dropout=rate)
  p0 = stack.init(jax.random.key(0), 3)
  params = (p0[0], _identity_top(H))
  mod = rj.nnx.Stack(stack, 3, rngs=nnx.Rngs(params=0, dropout=1), params=params)
  assert mod.deterministic is False  # training mode by default, as nnx.Dropout
  ys1 = np.asarray(rj.scan(stack.cells[0], p0[0], xs)[1])  # layer 1's outputs
  a, b = np.asarray(mod(xs)), np.asarray(mod(xs))
  assert np.abs(a - b).max() > 0.1  # a fresh mask per call
  for out in (a, b):
    dropped = out == 0.0
    # The measured rate: 32*20*16 = 10240 Bernoulli(0.3) draws, std 0.0045.
    assert abs(dropped.mean() - rate) < 0.02, dropped.mean()
    # Kept units are scaled by 1 / (1 - rate) (inverted dropout).
    np.testing.assert_allclose(out[~dropped], ys1[~dropped] / (1 - rate), rtol=1e-5, atol=1e-6)
  # Evaluation mode: deterministic and equal to the plain scan of the stack.
  mod.eval()
  assert mod.deterministic is True
  e1, e2 = mod(xs), mod(xs)
  np.testing.assert_array_equal(e1, e2)
  np.testing.assert_allclose(e1, ys1, atol=1e-5)
  # Call-time overrides: deterministic= and an explicit key reproduce Stack.apply.
  key = jax.random.key(7)
  np.testing.assert_allclose(mod(xs, deterministic=False, rngs=key),
                             stack.apply(params, xs, key=key)[1], atol=1e-6)
  mod.train()
  np.testing.assert_allclose(mod(xs, deterministic=True), ys1, atol=1e-5)
  # nnx.view sets the mode of a copy.
  np.testing.assert_allclose(nnx.view(mod, deterministic=True)(xs), ys1, atol=1e-5)
  assert mod.deterministic is False


def test_rnn_with_a_dropout_stack_under_nnx_jit():
  # rj.nnx.RNN(rj.Stack(..., dropout=...)) drops too (the example), also
  # under nnx.jit, where the stream's counter advances between calls.
  stack = rj.Stack([rj.GRU(4), rj.GRU(4)], dropout=0.5)
  rnn = rj.nnx.RNN(stack, 2, rngs=nnx.Rngs(0))
  xs = jnp.ones((3, 5, 2))
  f = nnx.jit(lambda m, x: m(x))
  a, b = f(rnn, xs), f(rnn, xs)
  assert float(jnp.abs(a - b).max()) > 1e-3
  rnn.eval()
  np.testing.assert_allclose(f(rnn, xs), rj.scan(stack, rnn.get_params(), xs)[1], atol=1e-6)


def test_sequence_model_dropout_and_seq_lengths():
  H, rate = 16, 0.25
  rng = np.random.default_rng(4)
  xs = jnp.asarray(rng.standard_normal((32, 20, 3)), jnp.float32)
  lengths = jnp.asarray(rng.integers(1, 21, 32))
  model = rj.SequenceModel([rj.LSTM(H), rj.SimpleRNN(H, "identity")], None,
                           return_sequences=True, dropout=rate)
  p = model.init(jax.random.key(0), 3)
  params = {"layers": (p["layers"][0], _identity_top(H))}
  mod = rj.nnx.SequenceModel(model, 3, rngs=nnx.Rngs(params=0, dropout=2), params=params)
  ys1 = np.asarray(rj.scan(rj.LSTM(H), p["layers"][0], xs)[1])  # no lengths: all T steps
  out = np.asarray(mod(xs))
  dropped = out == 0.0
  assert abs(dropped.mean() - rate) < 0.02, dropped.mean()
  np.testing.assert_allclose(out[~dropped], ys1[~dropped] / (1 - rate), rtol=1e-5, atol=1e-6)
  mod.eval()
  ref = model.apply(params, xs, lengths=lengths)
  np.testing.assert_allclose(mod(xs, seq_lengths=lengths), ref, atol=1e-6)
  np.testing.assert_allclose(mod(xs, lengths=lengths), ref, atol=1e-6)
  with pytest.raises(TypeError, match="lengths= or seq_lengths=, not both"):
    mod(xs, lengths=lengths, seq_lengths=lengths)
  # A readout and logits=.
  clf = rj.SequenceModel([rj.GRU(5)], rj.Dense(3, "softmax"))
  m = rj.nnx.SequenceModel(clf, 3, rngs=nnx.Rngs(0))
  cp = m.get_params()
  np.testing.assert_allclose(m(xs, seq_lengths=lengths, logits=True),
                             clf.logits(cp, xs, lengths=lengths), atol=1e-6)
  np.testing.assert_allclose(m(xs), clf.apply(cp, xs), atol=1e-6)
  with pytest.raises(TypeError, match="model must be an rnnjax.SequenceModel"):
    rj.nnx.SequenceModel(rj.GRU(3), 3, rngs=nnx.Rngs(0))


def test_bidirectional_module_and_rnn_rejections():
  rng = np.random.default_rng(5)
  xs = jnp.asarray(rng.standard_normal((4, 7, 3)), jnp.float32)
  lengths = jnp.array([7, 1, 4, 0])
  bi = rj.Bidirectional(rj.GRU(4), rj.LSTM(3))
  mod = rj.nnx.Bidirectional(bi, 3, rngs=nnx.Rngs(0))
  params = mod.get_params()
  (cf, cb), ref = bi.apply(params, xs, lengths=lengths)
  (gf, gb), got = mod(xs, seq_lengths=lengths, return_carry=True)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  np.testing.assert_allclose(gb.c, cb.c, atol=1e-6)
  assert mod(xs).shape == (4, 7, 7)
  # A cell plus merge= builds the layer; rj.nnx.RNN points at the right module.
  m2 = rj.nnx.Bidirectional(rj.GRU(4), 3, merge="sum", rngs=nnx.Rngs(1))
  assert m2(xs).shape == (4, 7, 4)
  with pytest.raises(TypeError, match="rnnjax.nnx.Bidirectional, not rnnjax.nnx.RNN"):
    rj.nnx.RNN(bi, 3, rngs=nnx.Rngs(0))
  with pytest.raises(TypeError, match="rnnjax.nnx.SequenceModel, not rnnjax.nnx.RNN"):
    rj.nnx.RNN(rj.SequenceModel([rj.GRU(2)]), 3, rngs=nnx.Rngs(0))
  # RNN: Flax's keyword names (seq_lengths, initial_carry).
  rnn = rj.nnx.RNN(rj.GRU(4), 3, rngs=nnx.Rngs(0))
  h0 = jnp.asarray(rng.standard_normal((4, 4)), jnp.float32)
  np.testing.assert_allclose(rnn(xs, seq_lengths=lengths, initial_carry=h0),
                             rj.scan(rnn.cell, rnn.get_params(), xs, h0, lengths=lengths)[1],
                             atol=1e-6)
  with pytest.raises(TypeError, match="deterministic must be a bool"):
    rj.nnx.RNN(rj.GRU(4), 3, rngs=nnx.Rngs(0), deterministic="yes")
