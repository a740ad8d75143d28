"""Issue 12: padding never influences anything, and params of another cell are refused.

Padding (steps ``t >= lengths[b]``): NaN, +-Inf or huge values there must leave
the outputs, the final carry, the loss *and every gradient* finite and equal
to the run with zeros in the padding (the ``jnp.where`` gradient trap: a
masked-out NaN still poisons the gradient unless the inputs are masked as well
as the outputs). Every cell, both directions, the fused and the reference
paths.

Params that belong to another cell (a JordanRNN's given to a SimpleRNN,
GRU(reset_after=True)'s to GRU(reset_after=False) and back, a scalar bias, a
Stack / SequenceModel given params for fewer layers): a ValueError or
TypeError naming the cell, the leaf and the expected shape, raised by rnnjax
at the entry of ``rj.scan`` / ``Stack.apply`` / ``SequenceModel.apply``, not a
``KeyError`` or a ``dot_general`` error from inside JAX.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

B, T, I, H = 3, 5, 2, 4
LENGTHS = np.array([5, 2, 0], np.int32)   # full, padded, all padding

CELLS = {
    "SimpleRNN-tanh": rj.SimpleRNN(H, "tanh"),
    "SimpleRNN-relu": rj.SimpleRNN(H, "relu"),
    "IRNN": rj.IRNN(H),
    "JordanRNN": rj.JordanRNN(H, 3),
    "LSTM": rj.LSTM(H),
    "GRU": rj.GRU(H),
    "GRU-reset_before": rj.GRU(H, reset_after=False),
}
# "fused" where the cell has a fused engine, else "auto"; and "reference".
FUSED = {"SimpleRNN-tanh", "SimpleRNN-relu", "IRNN", "LSTM", "GRU"}
CASES = [(name, "fused" if name in FUSED else "auto") for name in CELLS] + \
        [(name, "reference") for name in CELLS]


def _params(cell):
  p = cell.init(jax.random.key(1), I)
  # Non-zero biases everywhere, so that no gradient is zero by accident.
  return jax.tree_util.tree_map(
      lambda a: a + 0.1 * jax.random.normal(jax.random.key(a.size), a.shape, a.dtype), p)


def _pad_mask():
  return np.arange(T)[None, :] >= LENGTHS[:, None]  # [B, T]


def _loss_grads_fn(cell, impl):
  """One compile: loss, outputs and gradients of the forward and the reverse scan."""
  def loss(params, xs, wy, wc, reverse):
    c, ys = rj.scan(cell, params, xs, lengths=jnp.asarray(LENGTHS), reverse=reverse, impl=impl)
    leaves = jax.tree_util.tree_leaves(c)
    val = jnp.sum(ys * wy[..., :ys.shape[-1]]) + sum(
        jnp.sum(l * wc[..., :l.shape[-1]]) for l in leaves)
    return val, (ys, c)

  def both(params, xs, wy, wc):
    out = []
    for reverse in (False, True):
      (v, (ys, c)), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
          params, xs, wy, wc, reverse)
      out.append({"loss": v, "ys": ys, "carry": c, "grad_params": g[0], "grad_xs": g[1]})
    return out
  return jax.jit(both)


@pytest.mark.parametrize("name,impl", CASES, ids=[f"{n}-{i}" for n, i in CASES])
def test_padding_never_influences_values_or_gradients(name, impl):
  cell = CELLS[name]
  params = _params(cell)
  f = _loss_grads_fn(cell, impl)
  kx, ky, kc = jax.random.split(jax.random.key(2), 3)
  pad = _pad_mask()
  xs_clean = jnp.where(pad[..., None], 0.0, jax.random.normal(kx, (B, T, I)))
  wy = jax.random.normal(ky, (B, T, 8))
  wc = jax.random.normal(kc, (B, 8))
  ref = f(params, xs_clean, wy, wc)
  for direction in ref:
    for leaf in jax.tree_util.tree_leaves(direction):
      assert np.all(np.isfinite(leaf)), f"{name}/{impl}: non-finite with zero padding"
  for value in (np.nan, np.inf, -np.inf, 1e30, -3e38):
    xs_bad = jnp.where(pad[..., None], value, xs_clean)
    got = f(params, xs_bad, wy, wc)
    for d, (r, g) in enumerate(zip(ref, got)):
      where = f"{name}, impl={impl!r}, reverse={bool(d)}, padding={value}"
      for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g)[0],
                              jax.tree_util.tree_leaves(r)):
        a = np.asarray(a)
        what = f"{where}: {jax.tree_util.keystr(path)}"
        assert np.all(np.isfinite(a)), f"{what} is not finite"
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-6, atol=1e-6, err_msg=what)
      gx = np.asarray(g["grad_xs"])
      np.testing.assert_array_equal(gx[pad], 0.0, err_msg=f"{where}: d loss / d padding != 0")


# --- params that belong to another cell ------------------------------------------------

def _shape_re(*dims):
  """Matches a shape written as ``(4, 4)`` / ``[4, 4]`` / ``(4,)`` / ``[4]``."""
  inner = r",\s*".join(str(d) for d in dims)
  return r"[\(\[]" + inner + r",?[\)\]]"


def _expect(exc_info, cell_name, leaf, shape=None):
  msg = str(exc_info.value)
  assert cell_name in msg, f"the error does not name the cell {cell_name}: {msg}"
  assert re.search(rf"\b{leaf}\b", msg), f"the error does not name the leaf {leaf!r}: {msg}"
  if shape is not None:
    assert re.search(_shape_re(*shape), msg), f"the error does not give the shape {shape}: {msg}"
  path = str(exc_info.traceback[-1].path)
  assert "rnnjax" in path, f"raised from {path}, not by rnnjax's own checks"


XS = jnp.ones((2, T, I))


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_jordan_params_to_simple_rnn(impl):
  jp = rj.JordanRNN(H, 3).init(jax.random.key(0), I)        # w_h is [O=3, H]
  with pytest.raises((ValueError, TypeError)) as ei:
    rj.scan(rj.SimpleRNN(H), jp, XS, impl=impl)
  # Either the extra leaves or the [O, H] w_h (then with its expected shape).
  if re.search(r"\b(w_o|b_o)\b", str(ei.value)):
    _expect(ei, "SimpleRNN", "(w_o|b_o)")
  else:
    _expect(ei, "SimpleRNN", "w_h", (H, H))
  # Same shapes where O == H: the extra leaves w_o, b_o give it away.
  jp4 = rj.JordanRNN(H, H).init(jax.random.key(0), I)
  with pytest.raises((ValueError, TypeError)) as ei:
    rj.scan(rj.SimpleRNN(H), jp4, XS, impl=impl)
  _expect(ei, "SimpleRNN", "(w_o|b_o)")


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_gru_reset_after_params_to_reset_before_and_back(impl):
  after = rj.GRU(H).init(jax.random.key(0), I)
  with pytest.raises((ValueError, TypeError)) as ei:
    rj.scan(rj.GRU(H, reset_after=False), after, XS, impl=impl)
  _expect(ei, "GRU", "b_hn")
  before = rj.GRU(H, reset_after=False).init(jax.random.key(0), I)
  with pytest.raises((ValueError, TypeError)) as ei:
    rj.scan(rj.GRU(H), before, XS, impl=impl)
  _expect(ei, "GRU", "b_hn", (H,))  # a missing leaf: its expected shape is named


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("cell", [rj.SimpleRNN(H), rj.LSTM(H), rj.GRU(H), rj.JordanRNN(H, 3)],
                         ids=lambda c: type(c).__name__)
def test_scalar_bias(cell, impl):
  p = cell.init(jax.random.key(0), I)
  p = {**p, "b": jnp.float32(0.1)}
  with pytest.raises((ValueError, TypeError)) as ei:
    rj.scan(cell, p, XS, impl=impl)
  _expect(ei, type(cell).__name__, "b", (cell.num_gates * H,))


def test_other_cells_params_inside_a_stack_and_a_model():
  stack = rj.Stack([rj.SimpleRNN(H), rj.SimpleRNN(H)])
  good = stack.init(jax.random.key(0), I)
  bad = (good[0], rj.JordanRNN(H, 3).init(jax.random.key(0), H))
  with pytest.raises((ValueError, TypeError)) as ei:
    stack.apply(bad, XS)
  _expect(ei, "SimpleRNN", "(w_h|w_o|b_o)")
  model = rj.SequenceModel([rj.GRU(H, reset_after=False)], rj.Dense(1))
  mp = model.init(jax.random.key(0), I)
  mp = {**mp, "layers": (rj.GRU(H).init(jax.random.key(0), I),)}
  with pytest.raises((ValueError, TypeError)) as ei:
    model.apply(mp, XS)
  _expect(ei, "GRU", "b_hn")


def test_stack_and_model_params_for_fewer_layers():
  stack = rj.Stack([rj.GRU(H), rj.LSTM(H), rj.GRU(H)])
  p = stack.init(jax.random.key(0), I)
  for run in (lambda q: stack.apply(q, XS), lambda q: rj.scan(stack, q, XS)):
    with pytest.raises(ValueError, match=r"Stack of 3 cells \[GRU, LSTM, GRU\] has 2 layer params, but it "
                                         r"has 3 layers") as ei:
      run(p[:2])
    assert "rnnjax" in str(ei.traceback[-1].path)
  model = rj.SequenceModel([rj.GRU(H), stack], rj.Dense(1))
  mp = model.init(jax.random.key(0), I)
  with pytest.raises(ValueError, match=r"params\['layers'\] of a SequenceModel with 2 recurrent "
                                       r"layers .*got 1 layers"):
    model.apply({**mp, "layers": mp["layers"][:1]}, XS)
  with pytest.raises(ValueError, match=r"Stack of 3 cells \[GRU, LSTM, GRU\] has 2 layer params"):
    model.apply({**mp, "layers": (mp["layers"][0], mp["layers"][1][:2])}, XS)
