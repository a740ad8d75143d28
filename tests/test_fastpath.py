"""The fused fast path (rnnjax/_fused.py) against the plain reference scan.

Every case compares ``rj.scan(..., impl="fused")`` with ``impl="reference"``
(the plain ``lax.scan`` of the cell step, itself tested against NumPy in
tests/test_scan.py) in float64: the final carry, the outputs, and the
gradients of a scalar loss with respect to the parameters, the inputs and the
initial carry, with and without ``lengths`` and ``reverse``. A finite
difference check pins the fused gradient independently of the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import _fused

B, T, I, H = 3, 5, 2, 3
LENGTHS = np.array([5, 2, 0])


def _setup(cell, batch_shape=(B,)):
  kp, kx, kc, kw = jax.random.split(jax.random.key(42), 4)
  params = cell.init(kp, I)
  # Non-zero biases everywhere so that every parameter gradient is exercised.
  params = {k: v + 0.1 * jax.random.normal(jax.random.fold_in(kw, n), v.shape, v.dtype)
            for n, (k, v) in enumerate(sorted(params.items()))}
  xs = jax.random.normal(kx, batch_shape + (T, I), jnp.float64)
  carry = jax.tree_util.tree_map(
      lambda z: 0.5 * jax.random.normal(kc, z.shape, jnp.float64),
      cell.initial_carry(batch_shape, jnp.float64))
  return params, xs, carry


def _loss_fn(cell, lengths, reverse, impl, time_major=False, projection="auto"):
  def loss(params, xs, carry):
    final, ys = rj.scan(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                        impl=impl, time_major=time_major, input_projection=projection)
    # Weights that differ per element so that no gradient is accidentally symmetric.
    w = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
    val = (jnp.sum(w * jnp.tanh(ys))
           + sum(jnp.sum(jnp.sin(3.0 * c)) for c in jax.tree_util.tree_leaves(final)))
    return val, (final, ys)
  return loss


def _both(cell, lengths, reverse, batch_shape=(B,), time_major=False, projection="auto"):
  """Values and gradients of both paths: {impl: (loss, (final, ys), grads)}."""
  params, xs, carry = _setup(cell, batch_shape)
  if time_major:
    xs = jnp.moveaxis(xs, -2, 0)
  out = {}
  for impl in ("reference", "fused"):
    loss = _loss_fn(cell, lengths, reverse, impl, time_major,
                    projection if impl == "fused" else "auto")
    (val, outs), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, xs, carry)
    out[impl] = (val, outs, grads)
  return out


def _assert_same(out, rtol=1e-10, atol=1e-12):
  ref = jax.tree_util.tree_leaves(out["reference"])
  fus = jax.tree_util.tree_leaves(out["fused"])
  assert len(ref) == len(fus)
  for a, b in zip(ref, fus):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=atol)


CELLS = {
    "simple_tanh": lambda: rj.SimpleRNN(H, param_dtype=jnp.float64),
    "irnn_relu": lambda: rj.IRNN(H, param_dtype=jnp.float64),
    "lstm": lambda: rj.LSTM(H, param_dtype=jnp.float64),
    # Analytic backward, but not the one-pass sigmoid/tanh gates of the forward.
    "lstm_relu": lambda: rj.LSTM(H, activation="relu", param_dtype=jnp.float64),
    "gru": lambda: rj.GRU(H, param_dtype=jnp.float64),
}


# (cell, lengths?, reverse?, projection): the in-loop projection is the CPU
# default of the SimpleRNN and the LSTM, the hoisted one that of the GRU and of
# GPU/TPU; both are tested here for every cell.
CASES = [("simple_tanh", False, False, "inloop"), ("simple_tanh", True, True, "hoisted"),
         ("irnn_relu", True, False, "inloop"),
         ("lstm", False, False, "inloop"), ("lstm", True, True, "inloop"),
         ("lstm", True, False, "hoisted"), ("lstm", False, True, "inloop"),
         ("lstm_relu", True, True, "inloop"),
         ("gru", False, False, "inloop"), ("gru", True, True, "inloop"),
         ("gru", False, True, "hoisted"), ("gru", True, False, "hoisted")]


@pytest.mark.parametrize("name,use_lengths,reverse,projection", CASES,
                         ids=[f"{n}-{'lengths' if l else 'full'}-{'rev' if r else 'fwd'}-{p}"
                              for n, l, r, p in CASES])
def test_fused_matches_reference(x64, name, use_lengths, reverse, projection):
  cell = CELLS[name]()
  assert _fused.supports(cell) and cell.custom_gates_vjp() is not None
  _assert_same(_both(cell, jnp.asarray(LENGTHS) if use_lengths else None, reverse,
                     projection=projection))


@pytest.mark.parametrize("cell,projection", [
    (rj.LSTM(H, gate_activation="hard_sigmoid", activation="elu", param_dtype=jnp.float64),
     "inloop"),
    (rj.GRU(H, gate_activation=lambda x: jax.nn.sigmoid(2.0 * x), param_dtype=jnp.float64),
     "hoisted"),
    # Cells without a hand-written gate VJP: the engine differentiates their gates.
    (rj.LSTM(H, peephole=True, param_dtype=jnp.float64), "inloop"),
    (rj.LSTM(H, peephole=True, param_dtype=jnp.float64), "hoisted"),
    (rj.IndRNN(H, param_dtype=jnp.float64), "hoisted"),
    (rj.IndRNN(H, activation="tanh", recurrent_clip=0.5, param_dtype=jnp.float64), "inloop"),
    (rj.JordanRNN(H, output_size=2, param_dtype=jnp.float64), "inloop"),
    (rj.GRU(H, reset_after=False, param_dtype=jnp.float64), "hoisted"),
    (rj.SimpleRNN(H, activation="elu", param_dtype=jnp.float64), "inloop"),
], ids=["lstm-hard-sigmoid-elu", "gru-callable", "peephole-inloop", "peephole-hoisted",
        "indrnn-relu", "indrnn-tanh-clip", "jordan", "gru-reset-before", "simple-elu"])
def test_generic_backward_matches_reference(x64, cell, projection):
  """Cells and activations without a hand-written derivative take the generic (VJP) backward."""
  assert _fused.supports(cell) and cell.custom_gates_vjp() is None
  _assert_same(_both(cell, jnp.asarray(LENGTHS), True, projection=projection))


def test_wide_hidden_takes_separate_weight_gradients(x64):
  """H >= 256: dW_i and dW_h as two post-loop matmuls instead of one (_run_bwd)."""
  cell = rj.LSTM(256, param_dtype=jnp.float64)
  _assert_same(_both(cell, jnp.asarray(LENGTHS), False))


def test_batch_dims_time_major_and_unbatched(x64):
  cell = rj.GRU(H, param_dtype=jnp.float64)
  _assert_same(_both(cell, None, False, batch_shape=(2, 2), time_major=True))
  _assert_same(_both(cell, None, True, batch_shape=()))


def test_fused_gradient_finite_differences(x64):
  """Central differences on the fused path, independent of the reference path."""
  cell = rj.LSTM(H, param_dtype=jnp.float64)
  params, xs, carry = _setup(cell)
  loss = jax.jit(lambda *a: _loss_fn(cell, jnp.asarray(LENGTHS), True, "fused")(*a)[0])
  g_params, g_xs, g_carry = jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry)
  rng = np.random.default_rng(0)
  eps = 1e-6
  checks = [("w_h", (1, 7)), ("w_i", (0, 10)), ("b", (4,))]
  for name, idx in checks:
    e = np.zeros(params[name].shape)
    e[idx] = eps
    up = {**params, name: params[name] + e}
    dn = {**params, name: params[name] - e}
    fd = (loss(up, xs, carry) - loss(dn, xs, carry)) / (2 * eps)
    np.testing.assert_allclose(g_params[name][idx], fd, rtol=1e-6, atol=1e-9)
  for _ in range(2):
    idx = tuple(rng.integers(0, s) for s in xs.shape)
    idx = (0,) + idx[1:]  # sequence 0 has full length: every step matters
    e = np.zeros(xs.shape)
    e[idx] = eps
    fd = (loss(params, xs + e, carry) - loss(params, xs - e, carry)) / (2 * eps)
    np.testing.assert_allclose(g_xs[idx], fd, rtol=1e-6, atol=1e-9)
  e = np.zeros(carry.c.shape)
  e[0, 1] = eps
  fd = (loss(params, xs, rj.LSTMCarry(carry.h, carry.c + e))
        - loss(params, xs, rj.LSTMCarry(carry.h, carry.c - e))) / (2 * eps)
  np.testing.assert_allclose(g_carry.c[0, 1], fd, rtol=1e-6, atol=1e-9)


def test_float32_close_to_reference():
  cell = rj.LSTM(8)
  params = cell.init(jax.random.key(0), 4)
  xs = jax.random.normal(jax.random.key(1), (2, 6, 4))
  f = lambda impl: jax.jit(jax.grad(
      lambda p, x: jnp.sum(rj.scan(cell, p, x, impl=impl)[1] ** 2), argnums=(0, 1)))(params, xs)
  for a, b in zip(jax.tree_util.tree_leaves(f("reference")), jax.tree_util.tree_leaves(f("fused"))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_dispatch_and_errors():
  lstm = rj.LSTM(4)
  params = lstm.init(jax.random.key(0), 3)
  xs = jnp.ones((2, 5, 3))
  jaxpr = lambda **kw: str(jax.make_jaxpr(lambda p, x: rj.scan(lstm, p, x, **kw))(params, xs))
  assert "custom_vjp" in jaxpr()                       # auto -> fused for LSTM
  assert "custom_vjp" not in jaxpr(impl="reference")
  assert "custom_vjp" in jaxpr(input_projection="hoisted")
  assert _fused.choose_projection(lstm, backend="cpu") == "inloop"
  assert _fused.choose_projection(lstm, backend="gpu") == "hoisted"
  assert _fused.choose_projection(rj.GRU(64), backend="cpu") == "hoisted"
  assert _fused.choose_projection(rj.SimpleRNN(64), backend="cpu") == "inloop"
  assert _fused.choose_projection(rj.GRU(512), backend="cpu") == "hoisted"
  assert _fused.choose_projection(rj.IndRNN(64), backend="cpu") == "hoisted"
  jordan = rj.JordanRNN(4, output_size=2)
  pj = jordan.init(jax.random.key(0), 3)
  # Every protocol cell runs fused; auto keeps Jordan and the reset-before GRU on the reference path.
  assert _fused.supports(jordan) and _fused.supports(rj.GRU(4, reset_after=False))
  assert rj.auto_plan(jordan, "cpu") == ("reference", "inloop")
  assert rj.auto_plan(rj.GRU(4), "cpu") == ("fused", "hoisted")
  assert rj.auto_plan(rj.GRU(256), "cpu") == ("reference", "inloop")
  assert rj.auto_plan(rj.IndRNN(4), "cpu") == ("fused", "hoisted")
  assert rj.auto_plan(rj.MinGRU(4), "cpu") == ("reference", "inloop")
  assert rj.auto_plan(rj.MinLSTM(4), "cpu") == ("reference", "inloop")
  assert rj.auto_plan(rj.MinGRU(4), "gpu")[0] == "fused"
  assert rj.auto_plan(rj.LRU(4), "cpu")[0] == "fused"
  assert rj.default_input_projection("cpu", cell=rj.GRU(4)) == "hoisted"
  assert rj.default_input_projection("cpu", cell=lstm) == "inloop"
  assert "custom_vjp" not in str(jax.make_jaxpr(lambda p, x: rj.scan(jordan, p, x))(pj, xs))
  assert "custom_vjp" in str(jax.make_jaxpr(lambda p, x: rj.scan(jordan, p, x, impl="fused"))(pj, xs))
  stack = rj.Stack([lstm, lstm])
  with pytest.raises(ValueError, match="impl='fused' does not support Stack"):
    rj.scan(stack, stack.init(jax.random.key(0), 3), xs, impl="fused")
  with pytest.raises(ValueError, match="impl must be one of"):
    rj.scan(lstm, params, xs, impl="fast")


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_second_order_and_forward_mode(x64):
  """grad-of-grad through the fused path matches the reference; forward mode
  (impl="reference") agrees with the fused gradient."""
  cell = rj.GRU(H, param_dtype=jnp.float64)
  params, xs, carry = _setup(cell)
  v = jax.tree_util.tree_map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                             params)

  def hvp(impl):
    loss = lambda p: _loss_fn(cell, jnp.asarray(LENGTHS), False, impl)(p, xs, carry)[0]
    inner = lambda p: sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(jax.grad(loss)(p)),
                                                         jax.tree_util.tree_leaves(v)))
    return jax.jit(jax.grad(inner))(params), jax.grad(loss)(params)

  (h_ref, g_ref), (h_fused, g_fused) = hvp("reference"), hvp("fused")
  _assert_same({"reference": h_ref, "fused": h_fused}, rtol=1e-9, atol=1e-11)
  loss_ref = lambda p: _loss_fn(cell, jnp.asarray(LENGTHS), False, "reference")(p, xs, carry)[0]
  _, tangent = jax.jvp(loss_ref, (params,), (v,))
  directional = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g_fused),
                                                   jax.tree_util.tree_leaves(v)))
  np.testing.assert_allclose(tangent, directional, rtol=1e-10)
