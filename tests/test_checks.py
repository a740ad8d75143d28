"""Issue 12: bad or degenerate input gets a clear error (or an explicit verdict), never a
cryptic one from deep inside JAX, and never a silently wrong answer.

Groups:
* layers, last_valid, interop, diagnostics: checks in rnnjax/_layers.py,
  rnnjax/interop/_torch.py, rnnjax/diagnostics/_report.py.
* ``test_core_*``: checks whose helpers live in rnnjax/_checks.py and whose
  one-line calls go into rnnjax/_cells.py and rnnjax/_scan.py (the core
  engine); they pass once those calls are in.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import _checks
from rnnjax import diagnostics as rd
from rnnjax import interop

B, T, I, H = 2, 5, 3, 4


def _ones_params(cell, input_size=I, value=0.1):
  return jax.tree_util.tree_map(lambda s: jnp.full(s.shape, value, s.dtype),
                                jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size)))


def _raised_by_rnnjax(excinfo):
  """The raising frame is rnnjax code, not JAX's or NumPy's."""
  return "rnnjax" in str(excinfo.traceback[-1].path)


# --- _checks helpers -----------------------------------------------------------------

def test_check_batch_shape():
  assert _checks.check_batch_shape(3) == (3,)
  assert _checks.check_batch_shape(()) == ()
  assert _checks.check_batch_shape([2, np.int64(0)]) == (2, 0)
  for bad, exc in [((-1,), ValueError), (-2, ValueError), ((2.5,), TypeError), (2.0, TypeError),
                   (None, TypeError), ("2", TypeError), ((True,), TypeError),
                   (np.array([1.0]), TypeError)]:
    with pytest.raises(exc, match="batch_shape"):
      _checks.check_batch_shape(bad)


def test_check_float_dtype_real_rate():
  assert _checks.check_float_dtype(jnp.bfloat16) == jnp.bfloat16
  assert _checks.check_float_dtype(None, "dtype", allow_none=True) is None
  for bad in (jnp.int32, "int8", bool, "float99", None):
    with pytest.raises(TypeError, match="param_dtype must be a"):
      _checks.check_float_dtype(bad)
  assert _checks.check_real(np.float32(2.0), "identity_scale") == 2.0
  assert _checks.check_real(jnp.asarray(0.5), "identity_scale") == 0.5
  for bad in ("1", None, True, [1.0], jnp.ones(2)):
    with pytest.raises(TypeError, match="identity_scale must be a real number"):
      _checks.check_real(bad, "identity_scale")
  with pytest.raises(ValueError, match="identity_scale must be finite"):
    _checks.check_real(float("nan"), "identity_scale")
  for bad in (1.0, -0.1, float("inf")):
    with pytest.raises(ValueError, match="dropout must be"):
      _checks.check_rate(bad)


def test_check_cell():
  _checks.check_cell(rj.LSTM(2))
  _checks.check_cell(rj.Stack([rj.LSTM(2)]))
  with pytest.raises(TypeError, match=r"cell must be an rnnjax cell .* got NoneType"):
    _checks.check_cell(None)
  with pytest.raises(TypeError, match=r"the class LSTM itself; instantiate it"):
    _checks.check_cell(rj.LSTM)


def test_check_finite_names_leaf_and_index():
  _checks.check_finite({"a": jnp.ones(3), "n": jnp.arange(3)}, "params")
  with pytest.raises(ValueError, match=r"params\['w'\] has 2 non-finite .* index \(1, 0\)"):
    _checks.check_finite({"w": jnp.ones((3, 2)).at[1, 0].set(jnp.inf).at[2, 1].set(jnp.nan)},
                         "params")
  jax.jit(lambda x: _checks.check_finite(x, "xs") or x)(jnp.ones(2))  # traced: no check


# --- layers --------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["0.5", None, [0.1]])
def test_dropout_not_a_number(bad):
  for make in (lambda: rj.Stack([rj.GRU(H)], dropout=bad),
               lambda: rj.SequenceModel([rj.GRU(H)], dropout=bad)):
    with pytest.raises(TypeError, match="dropout must be a real number"):
      make()


def test_stack_of_non_cells():
  with pytest.raises(TypeError, match=r"cells\[1\] must be an rnnjax cell.*got str"):
    rj.Stack([rj.GRU(H), "lstm"])
  with pytest.raises(TypeError, match=r"cells\[0\] must be an rnnjax cell.*class LSTM itself"):
    rj.Stack([rj.LSTM])
  with pytest.raises(TypeError, match="cells must be a sequence of cells"):
    rj.Stack(rj.GRU(H))
  with pytest.raises(TypeError, match=r"layers\[0\] must be an rnnjax cell.*got int"):
    rj.SequenceModel([3])
  with pytest.raises(TypeError, match="layers must be a sequence"):
    rj.SequenceModel(rj.GRU(H))
  with pytest.raises(TypeError, match="readout must be a Dense or None"):
    rj.SequenceModel([rj.GRU(H)], readout=rj.GRU(1))
  with pytest.raises(TypeError, match="forward must be an rnnjax cell"):
    rj.Bidirectional("gru")
  with pytest.raises(TypeError, match="backward must be an rnnjax cell"):
    rj.Bidirectional(rj.GRU(H), backward=1)


def test_bidirectional_params_missing_a_direction():
  bi = rj.Bidirectional(rj.SimpleRNN(H))
  p = _ones_params(bi)
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match=r"params of Bidirectional lacks \['backward'\]"):
    bi.apply({"forward": p["forward"]}, xs)
  with pytest.raises(TypeError, match="params of Bidirectional must be a dict"):
    bi.apply((p["forward"], p["backward"]), xs)
  with pytest.raises(TypeError, match="carry of Bidirectional must be a pair"):
    bi.apply(p, xs, carry=jnp.zeros((B, H)))


def test_stack_and_model_params_for_fewer_layers():
  # (Also in tests/test_padding_and_params.py, with the cell-level checks.)
  stack = rj.Stack([rj.GRU(H), rj.LSTM(H)])
  p = _ones_params(stack)
  xs = jnp.ones((B, T, I))
  with pytest.raises(ValueError, match=r"params of the Stack of 2 cells \[GRU, LSTM\] has 1 layer params, but it "
                                       r"has 2 layers"):
    stack.apply(p[:1], xs)
  with pytest.raises(ValueError, match=r"has 1 layer params, but it has 2"):
    rj.scan(stack, p[:1], xs)
  with pytest.raises(TypeError, match=r"params of the Stack of 2 cells \[GRU, LSTM\] must be a tuple of 2"):
    stack.apply(p[0], xs)
  model = rj.SequenceModel([rj.GRU(H), rj.GRU(H)], rj.Dense(1))
  mp = _ones_params(model)
  with pytest.raises(ValueError, match=r"params\['layers'\] of a SequenceModel with 2 recurrent layers .*got 1 layers"):
    model.apply({**mp, "layers": mp["layers"][:1]}, xs)
  with pytest.raises(ValueError, match=r"params of SequenceModel lacks \['readout'\]"):
    model.apply({"layers": mp["layers"]}, xs)
  with pytest.raises(TypeError, match="params of Dense must be a dict"):
    rj.Dense(2).logits(jnp.ones((H, 2)), jnp.ones((B, H)))


def test_last_valid_checks_lengths():
  ys = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  np.testing.assert_array_equal(rj.last_valid(ys, jnp.array([4, 0])), [ys[0, 3], [0, 0, 0]])
  with pytest.raises(ValueError, match="lengths must be <= the number of time steps T=4, got a "
                                       "maximum of 5"):
    rj.last_valid(ys, jnp.array([5, 1]))
  with pytest.raises(ValueError, match="lengths must be >= 0"):
    rj.last_valid(ys, np.array([-1, 1]))
  with pytest.raises(TypeError, match="lengths must be an integer array, got dtype float32"):
    rj.last_valid(ys, jnp.array([2.0, 1.0]))
  with pytest.raises(TypeError, match="lengths must be an integer array, got dtype float64"):
    rj.last_valid(ys, [2.5, 1.0])
  with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
    rj.last_valid(ys, jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="ys must be an array"):
    rj.last_valid(jnp.ones(3), jnp.array(1))
  with pytest.raises(ValueError, match="ys has no time steps"):
    rj.last_valid(jnp.ones((2, 0, 3)))
  np.testing.assert_array_equal(rj.last_valid(jnp.ones((2, 0, 3)), jnp.array([0, 0])),
                                np.zeros((2, 3)))
  # Under jit: documented clipping, no error.
  out = jax.jit(rj.last_valid)(ys, jnp.array([9, 2]))
  np.testing.assert_array_equal(out, [ys[0, 3], ys[1, 1]])


# --- interop -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


def test_from_torch_module_checks_nonlinearity(torch):
  relu = torch.nn.RNN(I, H, nonlinearity="relu")
  with pytest.raises(ValueError, match=r"cell is SimpleRNN\(activation='tanh'\) but the RNN module "
                                       r"computes nonlinearity='relu'"):
    interop.from_torch(rj.SimpleRNN(H, "tanh"), relu)
  with pytest.raises(ValueError, match=r"IRNN\(activation='relu'\).*nonlinearity='tanh'"):
    interop.from_torch(rj.IRNN(H), torch.nn.RNN(I, H))
  with pytest.raises(ValueError, match=r"cell.cells\[1\] is SimpleRNN\(activation='tanh'\)"):
    interop.from_torch(rj.Stack([rj.SimpleRNN(H, "relu"), rj.SimpleRNN(H)]),
                       torch.nn.RNN(I, H, num_layers=2, nonlinearity="relu"))
  with pytest.raises(ValueError, match=r"cell.backward is LSTM\(activation='relu'\).*fixed tanh"):
    interop.from_torch(rj.Bidirectional(rj.LSTM(H), rj.LSTM(H, activation="relu")),
                       torch.nn.LSTM(I, H, bidirectional=True))
  with pytest.raises(ValueError, match=r"gate_activation='hard_sigmoid'.*fixed sigmoid"):
    interop.from_torch(rj.GRU(H, gate_activation="hard_sigmoid"), torch.nn.GRU(I, H))
  with pytest.raises(ValueError, match=r"cell is a LSTM, which reads nn.LSTM weights, but the "
                                       r"module is a GRU"):
    interop.from_torch(rj.LSTM(H), torch.nn.GRU(I, H))
  with pytest.raises(ValueError, match="cell has hidden_size=5, the module has hidden_size=4"):
    interop.from_torch(rj.SimpleRNN(5), torch.nn.RNN(I, H))
  # The matching module converts, to the same params as its state dict.
  p = interop.from_torch(rj.SimpleRNN(H, "relu"), relu)
  q = interop.from_torch(rj.SimpleRNN(H, "relu"), relu.state_dict())
  jax.tree_util.tree_map(np.testing.assert_array_equal, p, q)
  # A state dict alone cannot be checked (documented): this converts.
  interop.from_torch(rj.SimpleRNN(H, "tanh"), relu.state_dict())
  assert "cannot be checked" in " ".join(interop.from_torch.__doc__.split())


def test_torch_interop_has_no_isinstance_branches_on_cells():
  import inspect
  import re
  from rnnjax.interop import _torch
  src = inspect.getsource(_torch)
  assert not re.search(r"isinstance\(cell, \(?(LSTM|GRU|SimpleRNN|JordanRNN)", src)
  # The table is keyed by class and looked up along the MRO: IRNN uses SimpleRNN's entry.
  assert _torch._lookup(rj.IRNN(2)) is _torch._TORCH_KINDS[rj.SimpleRNN]


def test_from_flax_kernel_of_wrong_fan_in():
  # The input-side kernels of the gates disagree on the input size.
  lstm = {n: {"kernel": np.ones((I if n != "ig" else I + 1, H))} for n in ("ii", "if", "ig", "io")}
  lstm.update({n: {"kernel": np.ones((H, H)), "bias": np.zeros(H)}
               for n in ("hi", "hf", "hg", "ho")})
  with pytest.raises(ValueError, match=r"flax_params: the input-side kernels disagree on the "
                                       r"input size .*'ig': 4"):
    interop.from_flax(rj.LSTM(H), {"params": lstm})


# --- diagnostics on degenerate input ---------------------------------------------------

@pytest.fixture(scope="module")
def rnn():
  cell = rj.SimpleRNN(H)
  return cell, cell.init(jax.random.key(0), I)


def test_diagnose_single_step_is_undetermined(rnn):
  cell, params = rnn
  rep = rd.diagnose(cell, params, jnp.ones((B, 1, I)))
  assert rep.verdict == "undetermined" and np.isnan(rep.decay_rate)
  assert "fewer than two lags" in rep.reason and "undetermined" in str(rep)


@pytest.mark.slow  # compile-heavy on 2 cores; `python -m pytest -q` (the whole suite) runs it
def test_diagnose_lengths_at_most_one_is_undetermined(rnn):
  cell, params = rnn
  xs = jax.random.normal(jax.random.key(1), (B, 3, I))
  for L in ([0, 0], [1, 0], [1, 1]):
    rep = rd.diagnose(cell, params, xs, lengths=jnp.array(L))
    assert rep.verdict == "undetermined", L
  assert rd.diagnose(cell, params, xs, lengths=jnp.array([2, 1])).verdict != "undetermined"


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf, -jnp.inf])
def test_diagnose_non_finite_input_raises(rnn, bad):
  cell, params = rnn
  xs = jnp.ones((B, 3, I)).at[1, 2, 0].set(bad)
  with pytest.raises(ValueError, match=r"xs has 1 non-finite value\(s\) .* index \(1, 2, 0\)"):
    rd.diagnose(cell, params, xs)
  with pytest.raises(ValueError, match=r"params\['w_h'\] has 1 non-finite"):
    rd.diagnose(cell, {**params, "w_h": params["w_h"].at[0, 1].set(bad)}, jnp.ones((B, 3, I)))
  with pytest.raises(ValueError, match="carry has 1 non-finite"):
    rd.diagnose(cell, params, jnp.ones((B, 3, I)), jnp.zeros((B, H)).at[0, 0].set(bad))


def test_verdict_nan_norm_at_valid_step_and_one_exploding_sequence():
  from rnnjax.diagnostics import _report
  logj = np.array([[3.0, 2.0, np.nan, 0.0], [3.0, 2.0, 1.0, 0.0]])
  curve = _report.by_lag(logj)
  assert _report.verdict(curve, 0.01) != "undetermined"          # the mean hides the NaN
  assert _report.verdict(curve, 0.01, logj) == "undetermined"
  assert "NaN at valid steps (first: sequence 0, step 2)" in _report.undetermined_reason(curve, logj)
  # NaN past a length is by design, not a failed measurement.
  logj2 = np.array([[1.0, 0.0, np.nan, np.nan], [3.0, 2.0, 1.0, 0.0]])
  assert _report.verdict(_report.by_lag(logj2, [2, 4]), 0.01, logj2, np.array([2, 4])) == "stable"
  # A dead sequence (-inf) must not hide an exploding one.
  logj3 = np.array([[20.0, 10.0, 0.0], [-np.inf, -np.inf, 0.0]])
  assert _report.verdict(_report.by_lag(logj3), 0.01, logj3) == "exploding"


def test_diagnose_fraction_not_a_number(rnn):
  cell, params = rnn
  with pytest.raises(TypeError, match="fraction must be a real number"):
    rd.diagnose(cell, params, jnp.ones((B, 3, I)), fraction="0.1")


# --- core: one-line calls in rnnjax/_cells.py and rnnjax/_scan.py -----------------------

@pytest.mark.parametrize("bad,exc", [((-1,), ValueError), ((2, -3), ValueError),
                                     ((2.5,), TypeError), (2.0, TypeError), ("4", TypeError)])
def test_core_initial_carry_batch_shape(bad, exc):
  for cell in (rj.SimpleRNN(H), rj.LSTM(H), rj.GRU(H), rj.JordanRNN(H, 2)):
    with pytest.raises(exc, match="batch_shape") as ei:
      cell.initial_carry(bad)
    assert _raised_by_rnnjax(ei)
  with pytest.raises(ValueError, match="batch_shape"):
    rj.Stack([rj.GRU(H)]).initial_carry((-2,))


@pytest.mark.parametrize("dt", [jnp.int32, "int8", jnp.bool_])
def test_core_integer_param_dtype(dt):
  for make in (rj.SimpleRNN, rj.IRNN, rj.LSTM, rj.GRU, lambda h, **k: rj.JordanRNN(h, 2, **k)):
    with pytest.raises(TypeError, match="param_dtype must be a floating dtype"):
      make(H, param_dtype=dt)
  with pytest.raises(TypeError, match="dtype must be a floating dtype"):
    rj.LSTM(H, dtype=jnp.int32)


@pytest.mark.parametrize("bad", ["1.0", None, [1.0]])
def test_core_identity_scale_and_forget_bias_not_numbers(bad):
  with pytest.raises(TypeError, match="identity_scale must be a real number"):
    rj.IRNN(H, identity_scale=bad)
  with pytest.raises(TypeError, match="forget_bias must be a real number"):
    rj.LSTM(H, forget_bias=bad)


def test_core_scan_of_none():
  with pytest.raises(TypeError, match=r"cell must be an rnnjax cell .* got NoneType") as ei:
    rj.scan(None, {}, jnp.ones((B, T, I)))
  assert _raised_by_rnnjax(ei)
  with pytest.raises(TypeError, match="class GRU itself"):
    rj.scan(rj.GRU, {}, jnp.ones((B, T, I)))


_GRAD_CELLS = [rj.SimpleRNN(H), rj.IRNN(H), rj.LSTM(H), rj.GRU(H), rj.GRU(H, reset_after=False),
               rj.JordanRNN(H, 2)]


@pytest.mark.parametrize("cell", _GRAD_CELLS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("shape", [(B, 0, I), (0, T, I), (0, 0, I)], ids=["T0", "B0", "T0B0"])
def test_core_gradients_of_empty_scans(cell, shape):
  # The forward pass of an empty scan works; so must its gradient: all zeros, like the
  # reference path's (d sum(ys) / d params over no steps or no sequences).
  params = _ones_params(cell)
  xs = jnp.ones(shape)
  lengths = jnp.zeros(shape[:1], jnp.int32) if shape[0] == 0 else None

  def loss(p, x):
    c, ys = rj.scan(cell, p, x, lengths=lengths)
    return jnp.sum(ys) + sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(c))
  g, gx = jax.grad(loss, argnums=(0, 1))(params, xs)
  for leaf in jax.tree_util.tree_leaves(g):
    np.testing.assert_array_equal(leaf, np.zeros_like(leaf))
  assert gx.shape == xs.shape


@pytest.mark.parametrize("dt", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_core_low_precision_inputs_with_float32_params(dt, impl):
  # Found by tests/test_fuzz.py: float16/bfloat16 xs with float32 params relied on implicit
  # promotion (a TypePromotionError from inside JAX under strict promotion). The inputs are
  # cast to the params' dtype (the cell's compute dtype when it has one): the result is the
  # float32 run on the rounded inputs.
  for cell in (rj.SimpleRNN(H), rj.LSTM(H), rj.GRU(H)):
    params = cell.init(jax.random.key(0), I)
    xs = jnp.linspace(-1, 1, B * T * I).reshape(B, T, I).astype(dt)
    c, ys = rj.scan(cell, params, xs, impl=impl)
    c32, ys32 = rj.scan(cell, params, xs.astype(jnp.float32), impl=impl)
    assert ys.dtype == jnp.float32
    np.testing.assert_array_equal(ys, ys32)
