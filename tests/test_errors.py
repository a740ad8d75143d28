"""Bad input raises a ValueError/TypeError whose message names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

B, T, I, H = 2, 5, 3, 4


@pytest.fixture(scope="module")
def lstm():
  cell = rj.LSTM(H)
  params = jax.tree_util.tree_map(
      lambda s: jnp.full(s.shape, 0.1, s.dtype),
      jax.eval_shape(lambda: cell.init(jax.random.key(0), I)))
  return cell, params


def test_xs_wrong_rank(lstm):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"xs must have rank >= 2.*\(3,\)"):
    rj.scan(cell, params, jnp.ones((I,)))
  with pytest.raises(ValueError, match="xs"):
    rj.scan(cell, params, jnp.ones((I,)), time_major=True)


def test_xs_not_an_array_or_not_floating(lstm):
  cell, params = lstm
  with pytest.raises(TypeError, match="xs must be an array"):
    rj.scan(cell, params, [[1.0, 2.0, 3.0]])
  with pytest.raises(TypeError, match="xs must be a floating array"):
    rj.scan(cell, params, jnp.ones((B, T, I), jnp.int32))


def test_feature_size_mismatch(lstm):
  cell, params = lstm
  with pytest.raises(ValueError, match=r"xs has feature size 5.*input_size=3"):
    rj.scan(cell, params, jnp.ones((B, T, 5)))
  with pytest.raises(ValueError, match=r"x has feature size 2.*input_size=3"):
    cell(params, cell.initial_carry((B,)), jnp.ones((B, 2)))
  stack = rj.Stack([cell, rj.GRU(2)])
  with pytest.raises(ValueError, match="xs has feature size 4"):
    rj.scan(stack, stack.init(jax.random.key(0), 3), jnp.ones((B, T, 4)))
  with pytest.raises(ValueError, match="h has feature size 3"):
    rj.Dense(2).logits({"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}, jnp.ones((B, 3)))


def test_params_wrong_type(lstm):
  cell, params = lstm
  with pytest.raises(TypeError, match="params must be the dict returned by LSTM.init"):
    rj.scan(cell, (params["w_i"], params["w_h"]), jnp.ones((B, T, I)))


def test_carry_wrong_structure_shape_dtype(lstm):
  cell, params = lstm
  xs = jnp.ones((B, T, I))
  with pytest.raises(TypeError, match=r"carry has structure .* expected"):
    rj.scan(cell, params, xs, jnp.zeros((B, H)))  # an LSTM needs (h, c)
  with pytest.raises(TypeError, match="carry has structure"):
    rj.scan(rj.GRU(H), {"w_i": jnp.ones((I, 3 * H)), "w_h": jnp.ones((H, 3 * H)),
                        "b": jnp.ones(3 * H), "b_hn": jnp.ones(H)},
            xs, rj.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, H))))
  with pytest.raises(ValueError, match=r"carry leaf 1 has shape \(2, 5\), expected \(2, 4\)"):
    rj.scan(cell, params, xs, rj.LSTMCarry(jnp.zeros((B, H)), jnp.zeros((B, 5))))
  with pytest.raises(ValueError, match=r"carry leaf 0 has shape \(3, 4\), expected \(2, 4\)"):
    rj.scan(cell, params, xs, rj.LSTMCarry(jnp.zeros((3, H)), jnp.zeros((3, H))))
  with pytest.raises(TypeError, match="carry leaf 0 has dtype int32, expected a floating"):
    rj.scan(cell, params, xs, rj.LSTMCarry(jnp.zeros((B, H), jnp.int32), jnp.zeros((B, H))))


def test_step_carry_wrong_structure_size_dtype(lstm):
  # The single step must not unpack a [2, H] array along its batch axis as (h, c).
  cell, params = lstm
  x = jnp.ones((2, I))
  with pytest.raises(TypeError, match=r"carry has structure PyTreeDef\(\*\), expected"):
    cell(params, jnp.zeros((2, H)), x)
  with pytest.raises(ValueError, match=r"carry leaf 1 has shape \(2, 3\), expected \[\*batch, 4\]"):
    cell(params, (jnp.zeros((2, H)), jnp.zeros((2, 3))), x)
  with pytest.raises(TypeError, match="carry leaf 0 has dtype int32"):
    rj.SimpleRNN(H)({"w_i": jnp.ones((I, H)), "w_h": jnp.ones((H, H)), "b": jnp.ones(H)},
                    jnp.zeros((2, H), jnp.int32), x)
  with pytest.raises(TypeError, match="carry has structure"):
    rj.SimpleRNN(H)({"w_i": jnp.ones((I, H)), "w_h": jnp.ones((H, H)), "b": jnp.ones(H)},
                    (jnp.zeros((2, H)),), x)


def test_lengths_wrong_shape_dtype_range(lstm):
  cell, params = lstm
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match=r"lengths must have shape \(2,\).*got \(3,\)"):
    rj.scan(cell, params, xs, lengths=jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match=r"lengths must have shape \(2,\).*got \(2, 1\)"):
    rj.scan(cell, params, xs, lengths=jnp.array([[1], [2]]))
  with pytest.raises(TypeError, match="lengths must be an integer array.*float32"):
    rj.scan(cell, params, xs, lengths=jnp.array([1.0, 2.0]))
  with pytest.raises(ValueError, match="lengths must be >= 0, got a minimum of -1"):
    rj.scan(cell, params, xs, lengths=jnp.array([-1, 2]))
  with pytest.raises(ValueError, match="lengths must be <= the number of time steps T=5, got a maximum of 6"):
    rj.scan(cell, params, xs, lengths=np.array([6, 2]))
  with pytest.raises(ValueError, match=r"lengths must have shape \(\)"):
    rj.scan(cell, params, xs[0], lengths=jnp.array([3]))  # unbatched: scalar length


def test_traced_lengths_out_of_range_act_clipped():
  # Documented: under jit the range cannot be checked; values act as clipped to [0, T].
  cell = rj.SimpleRNN(2, "identity")
  params = {"w_i": jnp.ones((1, 2)), "w_h": jnp.eye(2), "b": jnp.zeros(2)}
  xs = jnp.arange(1.0, 4.0).reshape(1, 3, 1) * jnp.ones((2, 1, 1))
  f = jax.jit(lambda L: rj.scan(cell, params, xs, lengths=L)[0])
  np.testing.assert_array_equal(f(jnp.array([7, -2])), [[6.0, 6.0], [0.0, 0.0]])


def test_unknown_activation_name():
  with pytest.raises(ValueError, match=r"activation='swish' is not a known activation"):
    rj.SimpleRNN(H, activation="swish")
  with pytest.raises(ValueError, match="gate_activation='hard_tanh'"):
    rj.LSTM(H, gate_activation="hard_tanh")
  with pytest.raises(ValueError, match="output_activation='soft'"):
    rj.JordanRNN(H, 2, output_activation="soft")
  with pytest.raises(ValueError, match="activation='logsoftmax'"):
    rj.Dense(2, "logsoftmax")
  with pytest.raises(TypeError, match="activation must be an activation name"):
    rj.GRU(H, activation=3)


def test_unknown_initializer_name():
  with pytest.raises(ValueError, match="kernel_init='glorot'"):
    rj.LSTM(H, kernel_init="glorot")
  with pytest.raises(TypeError, match="recurrent_init must be an initialiser"):
    rj.GRU(H, recurrent_init=1.0)


@pytest.mark.parametrize("bad", [0, 1.5, np.ones(2, np.float32), jnp.zeros((2,), jnp.float32),
                                 "key", None])
def test_non_key_to_init(bad):
  for model in (rj.LSTM(H), rj.Dense(2), rj.Stack([rj.GRU(H)]),
                rj.Bidirectional(rj.SimpleRNN(H)),
                rj.SequenceModel([rj.SimpleRNN(H)], rj.Dense(1))):
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
      model.init(bad, I)


def test_non_key_to_dropout(lstm):
  cell, params = lstm
  with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
    rj.Stack([cell], dropout=0.5).apply((params,), jnp.ones((B, T, I)), key=3)


@pytest.mark.parametrize("make,arg", [
    (lambda v: rj.SimpleRNN(v), "hidden_size"),
    (lambda v: rj.IRNN(v), "hidden_size"),
    (lambda v: rj.LSTM(hidden_size=v), "hidden_size"),
    (lambda v: rj.GRU(v), "hidden_size"),
    (lambda v: rj.JordanRNN(v, 2), "hidden_size"),
    (lambda v: rj.JordanRNN(3, v), "output_size"),
    (lambda v: rj.Dense(v), "out_size"),
])
def test_sizes_must_be_positive_ints(make, arg):
  for v in (0, -3):
    with pytest.raises(ValueError, match=f"{arg} must be a positive int, got {v}"):
      make(v)
  with pytest.raises(TypeError, match=f"{arg} must be a positive int, got float"):
    make(2.5)
  with pytest.raises(TypeError, match=f"{arg} must be a positive int, got bool"):
    make(True)


def test_input_size_must_be_positive():
  with pytest.raises(ValueError, match="input_size must be a positive int, got 0"):
    rj.GRU(H).init(jax.random.key(0), 0)
  with pytest.raises(ValueError, match="input_size must be a positive int, got -1"):
    rj.SequenceModel([rj.GRU(H)]).init(jax.random.key(0), -1)


def test_scan_options(lstm):
  cell, params = lstm
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match="unroll must be a positive int, got 0"):
    rj.scan(cell, params, xs, unroll=0)
  with pytest.raises(ValueError, match="input_projection must be one of"):
    rj.scan(cell, params, xs, input_projection="fused")


def test_layer_config_errors():
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
    rj.Stack([rj.GRU(H)], dropout=1.0)
  with pytest.raises(ValueError, match="cells must be a non-empty"):
    rj.Stack([])
  with pytest.raises(ValueError, match="layers must be a non-empty"):
    rj.SequenceModel([])
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
    rj.SequenceModel([rj.GRU(H)], dropout=-0.1)
  with pytest.raises(TypeError, match="reset_after must be a bool"):
    rj.GRU(H, reset_after="yes")
  with pytest.raises(TypeError, match="param_dtype must be a dtype"):
    rj.LSTM(H, param_dtype="float99")


def test_params_of_another_cell_are_named():
  xs = jnp.ones((2, 5, 2))
  pj = rj.JordanRNN(4, output_size=2).init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match=r"params do not belong to SimpleRNN.*unexpected \['b_o', 'w_o'\]"):
    rj.scan(rj.SimpleRNN(4), pj, xs)
  pg = rj.GRU(4).init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match=r"reset_after=False.*unexpected \['b_hn'\]"):
    rj.scan(rj.GRU(4, reset_after=False), pg, xs)
  pb = dict(rj.SimpleRNN(4).init(jax.random.key(0), 2), b=jnp.float32(0.0))
  with pytest.raises(ValueError, match=r"params\['b'\] has shape \(\), .* expects \(4,\)"):
    rj.scan(rj.SimpleRNN(4), pb, xs)
  stack = rj.Stack([rj.LSTM(4), rj.GRU(3)])
  ps = stack.init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="Stack of 2 cells .* got tuple of length 1"):
    stack.apply(ps[:1], xs)
  with pytest.raises(ValueError, match=r"params\[1\]\['\w+'\] has shape"):
    stack.apply((ps[0], rj.GRU(4).init(jax.random.key(0), 4)), xs)
  model = rj.SequenceModel([rj.LSTM(4), rj.GRU(3)], rj.Dense(1))
  pm = model.init(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="2 recurrent layers .* got 1 layers"):
    model.apply({"layers": pm["layers"][:1], "readout": pm["readout"]}, xs)


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("reverse", [False, True])
def test_nan_in_padding_influences_nothing(impl, reverse):
  cell = rj.LSTM(3)
  params = cell.init(jax.random.key(0), 2)
  xs = jax.random.normal(jax.random.key(1), (2, 6, 2))
  lengths = jnp.array([6, 3])
  bad = xs.at[1, 3:].set(jnp.nan).at[1, 4].set(jnp.inf)

  def loss(p, x):
    c, ys = rj.scan(cell, p, x, lengths=lengths, reverse=reverse, impl=impl)
    return jnp.sum(ys ** 2) + jnp.sum(c.h)
  (v0, g0), (v1, g1) = [jax.value_and_grad(loss, argnums=(0, 1))(params, x) for x in (xs, bad)]
  np.testing.assert_allclose(v1, v0, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0[0]), jax.tree_util.tree_leaves(g1[0])):
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(g1[1][1, 3:]) == 0)
