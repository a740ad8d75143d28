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
  # optax.adam's bias correction (float ** int32 count) needs standard promotion;
  # the suite runs strict to catch implicit promotions inside rnnjax.
  with jax.numpy_dtype_promotion("standard"):
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
