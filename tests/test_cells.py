"""Every cell's step against a float64 NumPy implementation of its equations.

The references below are written from the equations (Elman 1990; Jordan 1986;
the standard LSTM with a cell state; the GRU in both reset placements, with
``h' = (1 - z) n + z h``), independently of rnnjax. They take parameters in
rnnjax's "x @ W" layout so the same random arrays feed both.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

# --------------------------------------------------------------------------
# float64 NumPy references, from the equations.


def _np_sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


NP_ACTIVATIONS = {
    "sigmoid": _np_sigmoid,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "hard_sigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "identity": lambda x: x,
}


def np_simple(p, h, x, f="tanh"):
  """h' = f(x U + h W + b)."""
  h = NP_ACTIVATIONS[f](x @ p["w_i"] + h @ p["w_h"] + p["b"])
  return h, h


def np_jordan(p, y, x, f="tanh", g="identity"):
  """h = f(x U + y_prev W + b_h);  y = g(h V + b_o)."""
  h = NP_ACTIVATIONS[f](x @ p["w_i"] + y @ p["w_h"] + p["b"])
  y = NP_ACTIVATIONS[g](h @ p["w_o"] + p["b_o"])
  return y, y


def np_lstm(p, carry, x, gate="sigmoid", act="tanh"):
  """Gates i, f, g, o; c' = f c + i g; h' = o act(c')."""
  h, c = carry
  H = h.shape[-1]
  z = x @ p["w_i"] + h @ p["w_h"] + p["b"]
  sg, ac = NP_ACTIVATIONS[gate], NP_ACTIVATIONS[act]
  i, f, g, o = (z[..., k * H:(k + 1) * H] for k in range(4))
  i, f, g, o = sg(i), sg(f), ac(g), sg(o)
  c = f * c + i * g
  h = o * ac(c)
  return (h, c), h


def np_indrnn(p, h, x, f="relu", clip=None):
  """Li et al. 2018, eq. 2: h' = f(W x + u * h + b), u elementwise (|u| <= clip if set)."""
  u = p["u"] if clip is None else np.clip(p["u"], -clip, clip)
  h = NP_ACTIVATIONS[f](x @ p["w_i"] + u * h + p["b"])
  return h, h


def np_peephole_lstm(p, carry, x):
  """Gers & Schmidhuber 2000: i, f see c_{t-1}, o sees c_t through diagonal peepholes."""
  h, c = carry
  H = h.shape[-1]
  z = x @ p["w_i"] + h @ p["w_h"] + p["b"]
  zi, zf, zg, zo = (z[..., k * H:(k + 1) * H] for k in range(4))
  pi, pf, po = p["w_p"]
  i = _np_sigmoid(zi + pi * c)
  f = _np_sigmoid(zf + pf * c)
  c = f * c + i * np.tanh(zg)
  o = _np_sigmoid(zo + po * c)
  h = o * np.tanh(c)
  return (h, c), h


def np_gru(p, h, x, reset_after=True, gate="sigmoid"):
  """Gates r, z, n; h' = (1 - z) n + z h."""
  H = h.shape[-1]
  sg = NP_ACTIVATIONS[gate]
  wi = [p["w_i"][:, k * H:(k + 1) * H] for k in range(3)]
  wh = [p["w_h"][:, k * H:(k + 1) * H] for k in range(3)]
  b = [p["b"][k * H:(k + 1) * H] for k in range(3)]
  r = sg(x @ wi[0] + b[0] + h @ wh[0])
  z = sg(x @ wi[1] + b[1] + h @ wh[1])
  if reset_after:
    n = np.tanh(x @ wi[2] + b[2] + r * (h @ wh[2] + p["b_hn"]))
  else:
    n = np.tanh(x @ wi[2] + b[2] + (r * h) @ wh[2])
  h = (1.0 - z) * n + z * h
  return h, h


# --------------------------------------------------------------------------
# helpers

B, I, H, O = 3, 5, 4, 2


def random_params(cell, input_size, seed, scale=0.6):
  """Random values for every parameter (biases too), as float64 NumPy."""
  rng = np.random.default_rng(seed)
  shapes = jax.tree_util.tree_map(
      np.shape, jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size)))
  return {k: scale * rng.standard_normal(s) for k, s in shapes.items()}


def random_carry(cell, seed, batch=(B,)):
  rng = np.random.default_rng(seed)
  shapes = [np.shape(l) for l in jax.tree_util.tree_leaves(cell.initial_carry(batch))]
  leaves = [0.8 * rng.standard_normal(s) for s in shapes]
  return leaves[0] if len(leaves) == 1 else tuple(leaves)


def to_rj_carry(cell, carry, dtype):
  if isinstance(cell, rj.LSTM):
    return rj.LSTMCarry(jnp.asarray(carry[0], dtype), jnp.asarray(carry[1], dtype))
  return jnp.asarray(carry, dtype)


def to_np_carry(carry):
  if isinstance(carry, rj.LSTMCarry):
    return (np.asarray(carry.h, np.float64), np.asarray(carry.c, np.float64))
  return np.asarray(carry, np.float64)


def reference_step(cell, p, carry, x):
  if isinstance(cell, rj.LSTM) and cell.peephole:
    return np_peephole_lstm(p, carry, x)
  if isinstance(cell, rj.IndRNN):
    return np_indrnn(p, carry, x, cell.activation.name, cell.recurrent_clip)
  if isinstance(cell, rj.LSTM):
    return np_lstm(p, carry, x, cell.gate_activation.name, cell.activation.name)
  if isinstance(cell, rj.GRU):
    return np_gru(p, carry, x, cell.reset_after, cell.gate_activation.name)
  if isinstance(cell, rj.JordanRNN):
    return np_jordan(p, carry, x, cell.activation.name, cell.output_activation.name)
  return np_simple(p, carry, x, cell.activation.name)


def assert_carry_close(got, want, atol, rtol=0.0):
  got = to_np_carry(got)
  if isinstance(want, tuple):
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)
  else:
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)


ACTS = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "hard_sigmoid", "identity"]

CELL_CASES = (
    [pytest.param(lambda dt, a=a: rj.SimpleRNN(H, activation=a, param_dtype=dt),
                  id=f"simple-{a}") for a in ACTS]
    + [
        pytest.param(lambda dt: rj.IRNN(H, identity_scale=0.5, param_dtype=dt), id="irnn"),
        pytest.param(lambda dt: rj.JordanRNN(H, O, param_dtype=dt), id="jordan"),
        pytest.param(lambda dt: rj.JordanRNN(H, O, activation="relu",
                                             output_activation="sigmoid", param_dtype=dt),
                     id="jordan-relu-sigmoid"),
        pytest.param(lambda dt: rj.LSTM(H, param_dtype=dt), id="lstm"),
        pytest.param(lambda dt: rj.LSTM(H, gate_activation="hard_sigmoid", param_dtype=dt),
                     id="lstm-hard_sigmoid"),
        pytest.param(lambda dt: rj.GRU(H, reset_after=True, param_dtype=dt), id="gru-after"),
        pytest.param(lambda dt: rj.GRU(H, reset_after=False, param_dtype=dt), id="gru-before"),
        pytest.param(lambda dt: rj.GRU(H, gate_activation="hard_sigmoid", param_dtype=dt),
                     id="gru-hard_sigmoid"),
        pytest.param(lambda dt: rj.IndRNN(H, param_dtype=dt), id="indrnn"),
        pytest.param(lambda dt: rj.IndRNN(H, activation="tanh", recurrent_clip=0.3,
                                          param_dtype=dt), id="indrnn-tanh-clip"),
        pytest.param(lambda dt: rj.LSTM(H, peephole=True, param_dtype=dt), id="lstm-peephole"),
    ])


def _step_check(cell, dtype, atol, two_steps=True):
  p64 = random_params(cell, I, seed=1)
  carry64 = random_carry(cell, seed=2)
  x64 = np.random.default_rng(3).standard_normal((2, B, I))
  params = {k: jnp.asarray(v, dtype) for k, v in p64.items()}
  carry = to_rj_carry(cell, carry64, dtype)
  ref_carry = carry64
  for t in range(2 if two_steps else 1):
    carry, y = cell(params, carry, jnp.asarray(x64[t], dtype))
    ref_carry, ref_y = reference_step(cell, p64, ref_carry, x64[t])
    assert y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float64), ref_y, atol=atol, rtol=0)
    assert_carry_close(carry, ref_carry, atol=atol)
  # The same through the split protocol: recurrent_step(input_projection(x)).
  c2, y2 = cell.recurrent_step(params, to_rj_carry(cell, carry64, dtype),
                               cell.input_projection(params, jnp.asarray(x64[0], dtype)))
  _, y_ref = reference_step(cell, p64, carry64, x64[0])
  np.testing.assert_allclose(np.asarray(y2, np.float64), y_ref, atol=atol, rtol=0)


@pytest.mark.parametrize("make", CELL_CASES)
def test_step_float32_matches_numpy_float64(make):
  cell = make(jnp.float32)
  _step_check(cell, jnp.float32, atol=1e-5)


@pytest.mark.parametrize("make", CELL_CASES)
def test_step_float64_matches_numpy(make, x64):
  cell = make(jnp.float64)
  _step_check(cell, jnp.float64, atol=1e-12, two_steps=False)


def test_step_unbatched_and_multi_batch():
  cell = rj.LSTM(H)
  p64 = random_params(cell, I, seed=4)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in p64.items()}
  x = np.random.default_rng(5).standard_normal((2, 3, I))
  carry = cell.initial_carry((2, 3))
  assert carry.h.shape == (2, 3, H) and carry.c.shape == (2, 3, H)
  c, y = cell(params, carry, jnp.asarray(x, jnp.float32))
  (_, c_ref), y_ref = np_lstm(p64, (np.zeros((2, 3, H)), np.zeros((2, 3, H))), x)
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  np.testing.assert_allclose(c.c, c_ref, atol=1e-5)
  # A single unbatched step.
  c1, y1 = cell(params, cell.initial_carry(), jnp.asarray(x[1, 2], jnp.float32))
  assert y1.shape == (H,)
  np.testing.assert_allclose(y1, y_ref[1, 2], atol=1e-5)


def test_callable_activation_matches_numpy():
  cell = rj.SimpleRNN(H, activation=lambda x: jnp.sin(x) * 0.5)
  p64 = random_params(cell, I, seed=6)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in p64.items()}
  h0 = np.random.default_rng(7).standard_normal((B, H))
  x = np.random.default_rng(8).standard_normal((B, I))
  h, _ = cell(params, jnp.asarray(h0, jnp.float32), jnp.asarray(x, jnp.float32))
  ref = 0.5 * np.sin(x @ p64["w_i"] + h0 @ p64["w_h"] + p64["b"])
  np.testing.assert_allclose(h, ref, atol=1e-5)


def test_lstm_gate_order_is_ifgo():
  # Drive one gate block at a time with a large bias and read the effect.
  H1 = 1
  cell = rj.LSTM(H1)
  zero = {"w_i": jnp.zeros((1, 4)), "w_h": jnp.zeros((1, 4))}
  c0 = rj.LSTMCarry(jnp.zeros((1,)), jnp.array([2.0]))
  x = jnp.zeros((1,))
  # b = [i, f, g, o]: i open, f closed, g = tanh(1), o open -> c = tanh(1), h = tanh(tanh(1)).
  big = 30.0
  c, h = cell({**zero, "b": jnp.array([big, -big, 1.0, big])}, c0, x)
  np.testing.assert_allclose(c.c, [math.tanh(1.0)], atol=1e-6)
  np.testing.assert_allclose(h, [math.tanh(math.tanh(1.0))], atol=1e-6)
  # f open, i closed: c keeps 2.0.
  c, h = cell({**zero, "b": jnp.array([-big, big, 1.0, big])}, c0, x)
  np.testing.assert_allclose(c.c, [2.0], atol=1e-6)


def test_gru_update_keeps_history_when_z_is_one():
  # b = [r, z, n]: z -> 1 keeps h (h' = (1-z) n + z h), z -> 0 takes n.
  cell = rj.GRU(1)
  p = {"w_i": jnp.zeros((1, 3)), "w_h": jnp.zeros((1, 3)), "b_hn": jnp.zeros((1,))}
  h0 = jnp.array([0.7])
  h, _ = cell({**p, "b": jnp.array([0.0, 40.0, 1.0])}, h0, jnp.zeros((1,)))
  np.testing.assert_allclose(h, [0.7], atol=1e-6)
  h, _ = cell({**p, "b": jnp.array([0.0, -40.0, 1.0])}, h0, jnp.zeros((1,)))
  np.testing.assert_allclose(h, [math.tanh(1.0)], atol=1e-6)


# --------------------------------------------------------------------------
# init properties


def _is_orthogonal(m, atol=1e-5):
  m = np.asarray(m, np.float64)
  np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=atol)


@pytest.mark.parametrize("cell,G", [(rj.SimpleRNN(6), 1), (rj.LSTM(6), 4), (rj.GRU(6), 3),
                                    (rj.GRU(6, reset_after=False), 3)])
def test_init_shapes_and_orthogonal_recurrent_blocks(cell, G):
  p = cell.init(jax.random.key(0), 5)
  assert p["w_i"].shape == (5, G * 6)
  assert p["w_h"].shape == (6, G * 6)
  assert p["b"].shape == (G * 6,)
  assert all(v.dtype == jnp.float32 for v in p.values())
  for g in range(G):
    _is_orthogonal(p["w_h"][:, g * 6:(g + 1) * 6])
  # Blocks differ from one another (initialised with separate keys).
  if G > 1:
    assert not np.allclose(p["w_h"][:, :6], p["w_h"][:, 6:12])
  # Glorot-uniform input blocks: |w| <= sqrt(6 / (fan_in + H)).
  assert np.abs(np.asarray(p["w_i"])).max() <= math.sqrt(6 / (5 + 6)) + 1e-7
  if isinstance(cell, rj.GRU) and cell.reset_after:
    assert p["b_hn"].shape == (6,)
    np.testing.assert_array_equal(p["b_hn"], 0.0)
  if isinstance(cell, rj.GRU) and not cell.reset_after:
    assert "b_hn" not in p


def test_lstm_forget_bias_in_f_block():
  # (Init tests share the shapes I=5, H=6 so eager kernels compile once.)
  H2 = 6
  p = rj.LSTM(H2, forget_bias=2.5).init(jax.random.key(1), 5)
  expected = np.zeros(4 * H2)
  expected[H2:2 * H2] = 2.5
  np.testing.assert_array_equal(p["b"], expected)
  p0 = rj.LSTM(H2, forget_bias=0.0).init(jax.random.key(1), 5)
  np.testing.assert_array_equal(p0["b"], 0.0)
  np.testing.assert_array_equal(p0["w_h"], p["w_h"])
  # The forget bias is written at init, not added in the forward pass: with
  # zero params the step gives sigmoid(0) gates regardless of forget_bias.
  z = jax.tree_util.tree_map(jnp.zeros_like, p)
  c0 = rj.LSTMCarry(jnp.zeros(H2), jnp.ones(H2))
  ca, _ = rj.LSTM(H2, forget_bias=2.5)(z, c0, jnp.zeros(5))
  np.testing.assert_allclose(ca.c, np.full(H2, 0.5), atol=1e-6)


def test_irnn_init_identity_times_scale():
  p = rj.IRNN(6, identity_scale=0.3).init(jax.random.key(2), 5)
  np.testing.assert_allclose(p["w_h"], 0.3 * np.eye(6), atol=0)
  np.testing.assert_array_equal(p["b"], 0.0)
  assert p["w_i"].shape == (5, 6)
  w = np.asarray(p["w_i"])
  assert 0 < np.abs(w).max() < 0.006 and 0.0003 < w.std() < 0.002  # N(0, 0.001^2)
  assert rj.IRNN(6).activation == rj.get_activation("relu")


def test_jordan_init_shapes_and_carry():
  cell = rj.JordanRNN(6, 3)
  p = cell.init(jax.random.key(3), 5)
  assert {k: v.shape for k, v in p.items()} == {
      "w_i": (5, 6), "w_h": (3, 6), "b": (6,), "w_o": (6, 3), "b_o": (3,)}
  np.testing.assert_array_equal(p["b_o"], 0.0)
  c = cell.initial_carry((2,))
  assert c.shape == (2, 3) and c.dtype == jnp.float32
  np.testing.assert_array_equal(c, 0.0)


def test_initial_carry_fields_and_dtypes():
  c = rj.LSTM(4).initial_carry((2, 3))
  assert isinstance(c, rj.LSTMCarry) and c._fields == ("h", "c")
  assert c.h.shape == c.c.shape == (2, 3, 4)
  assert rj.GRU(4).initial_carry().shape == (4,)
  assert rj.SimpleRNN(4, param_dtype=jnp.bfloat16).initial_carry(2).dtype == jnp.bfloat16
  assert rj.SimpleRNN(4).initial_carry(2, dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_custom_initializers():
  cell = rj.SimpleRNN(6, kernel_init="zeros", recurrent_init="identity",
                      bias_init=lambda k, s, d: jnp.full(s, 0.25, d))
  p = cell.init(jax.random.key(0), 5)
  np.testing.assert_array_equal(p["w_i"], 0.0)
  np.testing.assert_array_equal(p["w_h"], np.eye(6))
  np.testing.assert_array_equal(p["b"], 0.25)
  # bf16 parameters, orthogonal recurrent blocks included.
  p16 = rj.LSTM(6, param_dtype=jnp.bfloat16).init(jax.random.key(0), 5)
  assert all(v.dtype == jnp.bfloat16 for v in p16.values())
  for g in range(4):
    _is_orthogonal(p16["w_h"][:, g * 6:(g + 1) * 6], atol=2e-2)


# --------------------------------------------------------------------------
# bf16 compute


BF16_CELLS = [
    pytest.param(rj.SimpleRNN(H, dtype=jnp.bfloat16), id="simple"),
    pytest.param(rj.JordanRNN(H, O, dtype=jnp.bfloat16), id="jordan"),
    pytest.param(rj.LSTM(H, dtype=jnp.bfloat16), id="lstm"),
    pytest.param(rj.GRU(H, dtype=jnp.bfloat16), id="gru-after"),
    pytest.param(rj.GRU(H, reset_after=False, dtype=jnp.bfloat16), id="gru-before"),
]


@pytest.mark.parametrize("cell", BF16_CELLS)
def test_bf16_compute_keeps_float32_carry(cell):
  T = 6
  p64 = random_params(cell, I, seed=9, scale=0.4)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in p64.items()}
  xs = np.random.default_rng(10).standard_normal((B, T, I))
  carry, ys = rj.scan(cell, params, jnp.asarray(xs, jnp.float32), input_projection="hoisted")
  for leaf in jax.tree_util.tree_leaves(carry):
    assert leaf.dtype == jnp.float32
  assert ys.dtype == jnp.float32
  # Against the float64 reference within bf16 accuracy.
  ref = to_np_carry(cell.initial_carry((B,)))
  ref_ys = []
  for t in range(T):
    ref, y = reference_step(cell, p64, ref, xs[:, t])
    ref_ys.append(y)
  ref_ys = np.stack(ref_ys, 1)
  err = np.abs(np.asarray(ys, np.float64) - ref_ys).max()
  assert err < 5e-2, err
  assert err > 0  # bf16 really was used (float32 would agree to ~1e-6)
  # The step itself, too: float32 carry in, float32 carry out.
  c1, y1 = cell(params, cell.initial_carry((B,)), jnp.asarray(xs[:, 0], jnp.float32))
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(c1))


# --------------------------------------------------------------------------
# hashability and compile counts


def test_equal_configs_hash_equal():
  assert rj.LSTM(4) == rj.LSTM(4) and hash(rj.LSTM(4)) == hash(rj.LSTM(4))
  assert rj.LSTM(4) != rj.LSTM(5)
  assert rj.LSTM(4, forget_bias=1.0) != rj.LSTM(4, forget_bias=2.0)
  assert rj.GRU(4) != rj.GRU(4, reset_after=False)
  a, b = rj.SimpleRNN(4, activation="tanh"), rj.SimpleRNN(4, activation=jnp.tanh)
  assert a == b and hash(a) == hash(b)
  assert rj.SimpleRNN(4, "relu") != rj.SimpleRNN(4, "tanh")
  a, b = rj.LSTM(3, kernel_init="orthogonal"), rj.LSTM(3, kernel_init="orthogonal")
  assert a == b and hash(a) == hash(b)
  assert len({rj.GRU(3), rj.GRU(3), rj.GRU(3, reset_after=False)}) == 2


def _make_scaled_tanh(a):
  return lambda x: jnp.tanh(a * x)


def test_identical_lambdas_do_not_recompile():
  traces = []

  def run(cell, params, xs):
    traces.append(cell)
    return rj.scan(cell, params, xs)[1]

  jrun = jax.jit(run, static_argnums=0)
  c1 = rj.SimpleRNN(3, activation=lambda x: jnp.tanh(0.5 * x))
  c2 = rj.SimpleRNN(3, activation=lambda x: jnp.tanh(0.5 * x))
  assert c1 == c2 and hash(c1) == hash(c2)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in random_params(c1, 2, 15).items()}
  xs = jnp.asarray(np.random.default_rng(16).standard_normal((2, 4, 2)), jnp.float32)
  y1 = jrun(c1, params, xs)
  y2 = jrun(c2, params, xs)
  assert len(traces) == 1 and jrun._cache_size() == 1
  np.testing.assert_array_equal(y1, y2)
  # Closures over equal values are equal; over different values they are not,
  # and then the jitted function does recompile and compute the other thing.
  c3, c4 = rj.SimpleRNN(3, _make_scaled_tanh(0.5)), rj.SimpleRNN(3, _make_scaled_tanh(0.5))
  c5 = rj.SimpleRNN(3, _make_scaled_tanh(2.0))
  assert c3 == c4 and c3 != c5
  jrun(c3, params, xs)
  jrun(c4, params, xs)
  assert len(traces) == 2
  y5 = jrun(c5, params, xs)
  assert len(traces) == 3
  p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
  h = np.zeros((2, 3))
  for t in range(4):
    h = np.tanh(2.0 * (np.asarray(xs[:, t], np.float64) @ p64["w_i"] + h @ p64["w_h"] + p64["b"]))
    np.testing.assert_allclose(y5[:, t], h, atol=1e-5)


_GAIN = 0.5  # read as a global by the activation below


def test_value_hash_sees_globals_and_keyword_defaults():
  # A fresh lambda that reads a global must not reuse a compile made when the
  # global had another value (that would be a stale, wrong answer).
  global _GAIN
  jstep = jax.jit(lambda cell, h: cell.activation(h), static_argnums=0)
  h = jnp.ones(3)
  old = _GAIN
  try:
    y1 = jstep(rj.SimpleRNN(3, activation=lambda x: _GAIN * x), h)
    _GAIN = 2.0
    y2 = jstep(rj.SimpleRNN(3, activation=lambda x: _GAIN * x), h)
  finally:
    _GAIN = old
  np.testing.assert_array_equal(y1, 0.5)
  np.testing.assert_array_equal(y2, 2.0)
  # Keyword-only defaults are part of the value, too.
  assert (rj.get_activation(lambda x, *, a=1.0: a * x)
          != rj.get_activation(lambda x, *, a=2.0: a * x))
  assert (rj.get_activation(lambda x, *, a=1.0: a * x)
          == rj.get_activation(lambda x, *, a=1.0: a * x))


def test_jitted_scan_compiles_once_for_same_shapes():
  jscan = jax.jit(rj.scan, static_argnums=0)
  cell = rj.LSTM(H)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in random_params(cell, I, 11).items()}
  params2 = {k: jnp.asarray(v, jnp.float32) for k, v in random_params(cell, I, 12).items()}
  xa = jnp.asarray(np.random.default_rng(13).standard_normal((B, 5, I)), jnp.float32)
  xb = jnp.asarray(np.random.default_rng(14).standard_normal((B, 5, I)), jnp.float32)
  ca, ya = jscan(cell, params, xa)
  cb, yb = jscan(rj.LSTM(H), params2, xb)  # a fresh, equal cell; new values
  assert jscan._cache_size() == 1
  assert not np.allclose(ya, yb)
  jscan(cell, params, xa[:, :3])  # a new shape compiles again
  assert jscan._cache_size() == 2


def test_indrnn_init_range_and_params():
  cell = rj.IndRNN(64, recurrent_min=0.5, recurrent_max=2 ** (1 / 100))
  p = cell.init(jax.random.key(0), 3)
  assert set(p) == {"w_i", "u", "b"} and p["u"].shape == (64,) and p["w_i"].shape == (3, 64)
  assert 0.5 <= float(p["u"].min()) and float(p["u"].max()) <= 2 ** (1 / 100)
  with pytest.raises(ValueError, match="recurrent_min"):
    rj.IndRNN(4, recurrent_min=2.0, recurrent_max=1.0)
  with pytest.raises(ValueError, match="recurrent_clip"):
    rj.IndRNN(4, recurrent_clip=-1.0)


def test_indrnn_jacobian_is_diagonal_u_times_derivative():
  """dh_t/dh_{t-1} = diag(u * f'(a)): the paper's premise, via the diagnostics' step Jacobians."""
  cell = rj.IndRNN(5, activation="tanh")
  p = cell.init(jax.random.key(1), 2)
  xs = jax.random.normal(jax.random.key(2), (4, 2))
  J = np.asarray(rj.diagnostics.step_jacobians(cell, p, xs))
  hs = np.asarray(rj.scan(cell, p, xs)[1])
  for t in range(4):
    np.testing.assert_allclose(J[t], np.diag(np.asarray(p["u"]) * (1 - hs[t] ** 2)), atol=1e-6)


def test_peephole_lstm_params_and_gates():
  cell = rj.LSTM(4, peephole=True)
  p = cell.init(jax.random.key(0), 3)
  assert p["w_p"].shape == (3, 4) and not np.any(np.asarray(p["w_p"]))
  # With zero peepholes it is exactly the plain LSTM.
  plain = rj.LSTM(4)
  xs = jax.random.normal(jax.random.key(1), (2, 6, 3))
  q = {k: v for k, v in p.items() if k != "w_p"}
  np.testing.assert_allclose(rj.scan(cell, p, xs)[1], rj.scan(plain, q, xs)[1], atol=1e-6)
  names = list(rj.diagnostics.saturation(cell, p, xs))
  assert names == ["i", "f", "g", "o", "tanh_c"]
