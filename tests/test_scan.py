"""rj.scan against a Python loop over the cell's step (itself checked against
float64 NumPy in test_cells.py), and jax.grad through scan against central
finite differences in float64."""

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj

B, T, I, H = 3, 7, 3, 4
LENGTHS = np.array([7, 3, 0], np.int32)  # full, partial, empty

CELLS = {
    "simple": rj.SimpleRNN(H),
    "jordan": rj.JordanRNN(H, 2),
    "lstm": rj.LSTM(H),
    "gru-after": rj.GRU(H),
    "gru-before": rj.GRU(H, reset_after=False),
    "stack": rj.Stack([rj.GRU(H), rj.SimpleRNN(3, "relu")]),
    "indrnn": rj.IndRNN(H, activation="tanh"),
    "lstm-peephole": rj.LSTM(H, peephole=True),
}


def rand_params(cell, input_size, seed, dtype=np.float32, scale=0.5):
  """Random values for every parameter, biases included (init's shapes)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype), shapes)


def rand_carry(cell, batch_shape, seed, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda z: jnp.asarray(0.7 * rng.standard_normal(z.shape), dtype),
      cell.initial_carry(batch_shape))


_STEPS = {}


def _step(cell):
  if cell not in _STEPS:
    _STEPS[cell] = jax.jit(cell.__call__)
  return _STEPS[cell]


def loop_reference(cell, params, xs, carry0=None, lengths=None, reverse=False):
  """A Python loop over the unbatched step, one sequence at a time.

  xs: [N, T, I] (batch-major, one batch dim). Sequence n reads steps
  0..L_n-1 (reverse: L_n-1..0); outputs past L_n are zero; the final carry is
  the carry after the last step read.
  """
  xs = np.asarray(xs)
  N, T_ = xs.shape[:2]
  if carry0 is None:
    carry0 = cell.initial_carry((N,))
  step = _step(cell)
  finals, ys_all = [], []
  for n in range(N):
    L = T_ if lengths is None else int(lengths[n])
    c = jax.tree_util.tree_map(lambda l: l[n], carry0)
    order = range(L - 1, -1, -1) if reverse else range(L)
    outs = {}
    for t in order:
      c, y = step(params, c, jnp.asarray(xs[n, t]))
      outs[t] = np.asarray(y)
    O = cell.output_size if not isinstance(cell, rj.Stack) else cell.cells[-1].output_size
    ys = np.zeros((T_, O), np.float64)
    for t, y in outs.items():
      ys[t] = y
    finals.append(c)
    ys_all.append(ys)
  final = jax.tree_util.tree_map(lambda *ls: np.stack([np.asarray(l) for l in ls]), *finals)
  return final, np.stack(ys_all)


def assert_tree_close(a, b, atol=1e-5, rtol=1e-5):
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               atol=atol, rtol=rtol)


VARIANTS = {
    # name: (given carry, lengths, reverse, unroll, input_projection)
    # (LENGTHS[0] == T, so the reverse variant also covers a plain reversed read.)
    "inloop-unroll4": (True, False, False, 4, "inloop"),
    "lengths-hoisted": (True, True, False, 1, "hoisted"),
    "reverse-lengths-inloop": (False, True, True, 1, "inloop"),
    # The default path (whatever implementation "auto" picks for this cell).
    "default-reverse-lengths": (True, True, True, 1, "auto"),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_scan_matches_python_loop(name):
  cell = CELLS[name]
  params = rand_params(cell, I, seed=1)
  xs = jnp.asarray(np.random.default_rng(2).standard_normal((B, T, I)), jnp.float32)
  carry0 = rand_carry(cell, (B,), seed=3)
  lengths = jnp.asarray(LENGTHS)

  @jax.jit  # all variants in one compile
  def run(params, xs, carry0, lengths):
    out = {}
    for v, (given, use_len, reverse, unroll, mode) in VARIANTS.items():
      out[v] = rj.scan(cell, params, xs, carry0 if given else None,
                       lengths=lengths if use_len else None, reverse=reverse,
                       unroll=unroll, input_projection=mode)
    return out

  results = run(params, xs, carry0, lengths)
  for v, (given, use_len, reverse, unroll, mode) in VARIANTS.items():
    final, ys = results[v]
    c0 = carry0 if given else None
    ref_final, ref_ys = loop_reference(cell, params, xs, c0,
                                       LENGTHS if use_len else None, reverse)
    assert ys.shape == ref_ys.shape, v
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5, rtol=1e-5, err_msg=v)
    assert_tree_close(final, ref_final)
    if use_len:
      # Zero outputs past each length; the empty sequence keeps its initial carry.
      np.testing.assert_array_equal(np.asarray(ys)[1, 3:], 0.0)
      np.testing.assert_array_equal(np.asarray(ys)[2], 0.0)
      c0 = carry0 if given else cell.initial_carry((B,))
      assert_tree_close(jax.tree_util.tree_map(lambda l: l[2], final),
                        jax.tree_util.tree_map(lambda l: l[2], c0), atol=0, rtol=0)


def test_reverse_with_lengths_reads_each_sequence_backwards_within_its_length():
  # Identity-recurrent linear RNN: h_t = x_t + h_{t-1} is a running sum, so the
  # reversed outputs are suffix sums within each sequence's own length.
  cell = rj.SimpleRNN(1, activation="identity")
  params = {"w_i": jnp.ones((1, 1)), "w_h": jnp.ones((1, 1)), "b": jnp.zeros((1,))}
  xs = jnp.arange(1.0, 6.0).reshape(1, 5, 1) * jnp.ones((2, 1, 1))  # 1..5
  final, ys = rj.scan(cell, params, xs, lengths=jnp.array([5, 3]), reverse=True)
  np.testing.assert_array_equal(ys[0, :, 0], [15, 14, 12, 9, 5])
  np.testing.assert_array_equal(ys[1, :, 0], [6, 5, 3, 0, 0])
  np.testing.assert_array_equal(final[:, 0], [15, 6])
  final, ys = rj.scan(cell, params, xs, lengths=jnp.array([5, 3]))
  np.testing.assert_array_equal(ys[1, :, 0], [1, 3, 6, 0, 0])
  np.testing.assert_array_equal(final[:, 0], [15, 6])


def test_time_major_matches_batch_major():
  cell = CELLS["lstm"]
  params = rand_params(cell, I, seed=4)
  xs = np.random.default_rng(5).standard_normal((B, T, I)).astype(np.float32)
  final, ys = rj.scan(cell, params, jnp.asarray(xs.transpose(1, 0, 2)), time_major=True,
                      lengths=jnp.asarray(LENGTHS), input_projection="hoisted")
  ref_final, ref_ys = loop_reference(cell, params, xs, None, LENGTHS)
  assert ys.shape == (T, B, H)
  np.testing.assert_allclose(ys, ref_ys.transpose(1, 0, 2), atol=1e-5)
  assert_tree_close(final, ref_final)


def test_unbatched_sequence():
  cell = CELLS["gru-after"]
  params = rand_params(cell, I, seed=6)
  xs = np.random.default_rng(7).standard_normal((T, I)).astype(np.float32)
  final, ys = rj.scan(cell, params, jnp.asarray(xs))
  ref_final, ref_ys = loop_reference(cell, params, xs[None])
  assert ys.shape == (T, H) and final.shape == (H,)
  np.testing.assert_allclose(ys, ref_ys[0], atol=1e-5)
  np.testing.assert_allclose(final, ref_final[0], atol=1e-5)
  # A scalar length for a single sequence.
  final, ys = rj.scan(cell, params, jnp.asarray(xs), lengths=jnp.array(4), reverse=True)
  ref_final, ref_ys = loop_reference(cell, params, xs[None], None, [4], reverse=True)
  np.testing.assert_allclose(ys, ref_ys[0], atol=1e-5)
  np.testing.assert_allclose(final, ref_final[0], atol=1e-5)


@pytest.mark.parametrize("time_major", [False, True])
def test_several_leading_batch_dims(time_major):
  cell = CELLS["lstm"]
  params = rand_params(cell, I, seed=8)
  T2 = 5
  xs = np.random.default_rng(9).standard_normal((2, 3, T2, I)).astype(np.float32)
  lengths = np.array([[5, 1, 2], [0, 4, 3]], np.int32)
  carry0 = rand_carry(cell, (2, 3), seed=10)
  x_in = xs.transpose(2, 0, 1, 3) if time_major else xs
  final, ys = rj.scan(cell, params, jnp.asarray(x_in), carry0, lengths=jnp.asarray(lengths),
                      time_major=time_major)
  flat_c0 = jax.tree_util.tree_map(lambda l: l.reshape(6, H), carry0)
  ref_final, ref_ys = loop_reference(cell, params, xs.reshape(6, T2, I), flat_c0,
                                     lengths.reshape(6))
  ref_ys = ref_ys.reshape(2, 3, T2, H)
  if time_major:
    ref_ys = ref_ys.transpose(2, 0, 1, 3)
  assert ys.shape == ref_ys.shape
  np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
  assert final.h.shape == (2, 3, H)
  assert_tree_close(final, jax.tree_util.tree_map(lambda l: l.reshape(2, 3, H), ref_final))


def test_final_carry_is_not_a_stored_history():
  # The masked scan carries only the state: its stacked outputs are ys alone.
  cell = CELLS["lstm"]
  params = rand_params(cell, I, seed=11)
  xs = jnp.zeros((B, T, I))
  jaxpr = jax.make_jaxpr(lambda p, x, L: rj.scan(cell, p, x, lengths=L))(
      params, xs, jnp.asarray(LENGTHS))

  def find_scans(jpr):
    for e in jpr.eqns:
      if e.primitive.name == "scan":
        yield e
      for sub in jax.extend.core.jaxprs_in_params(e.params):
        yield from find_scans(sub)

  scans = list(find_scans(jaxpr.jaxpr))
  assert len(scans) == 1
  n_carry = scans[0].params["num_carry"]
  stacked = scans[0].outvars[n_carry:]
  assert [tuple(v.aval.shape) for v in stacked] == [(T, B, H)]


# --------------------------------------------------------------------------
# gradients: both input-projection modes, against finite differences (float64)


FD_CELLS = ["simple", "jordan", "lstm", "gru-before", "indrnn", "lstm-peephole"]


def _fd_setup(name, seed, reverse=False):
  cell = CELLS[name]
  if isinstance(cell, rj.Stack):
    cell = rj.Stack([dataclasses.replace(c, param_dtype=jnp.float64) for c in cell.cells])
  else:
    cell = dataclasses.replace(cell, param_dtype=jnp.float64)
  T3 = 5
  params = rand_params(cell, I, seed=seed, dtype=np.float64)
  rng = np.random.default_rng(seed + 1)
  xs = jnp.asarray(rng.standard_normal((3, T3, I)))
  out = cell.cells[-1].output_size if isinstance(cell, rj.Stack) else cell.output_size
  r = jnp.asarray(rng.standard_normal((3, T3, out)))
  lengths = jnp.array([5, 3, 0])

  def loss(p, x, mode="auto"):
    c, ys = rj.scan(cell, p, x, lengths=lengths, reverse=reverse, input_projection=mode)
    return jnp.sum(jnp.tanh(ys) * r) + sum(jnp.sum(l ** 2) for l in jax.tree_util.tree_leaves(c))

  return cell, params, xs, loss


@pytest.mark.parametrize("name", FD_CELLS)
def test_grad_projection_modes_and_default_match_finite_differences(name, x64):
  cell, params, xs, loss = _fd_setup(name, seed=20, reverse=(name == "jordan"))
  eps = 1e-6
  rng = np.random.default_rng(21)
  k = 3  # random directions in (params, xs)
  vps = jax.tree_util.tree_map(
      lambda a: jnp.asarray(rng.standard_normal((k,) + a.shape)), params)
  vxs = jnp.asarray(rng.standard_normal((k,) + xs.shape))

  @jax.jit
  def check(p, x):
    grads = [jax.value_and_grad(loss, argnums=(0, 1))(p, x, m)
             for m in ("hoisted", "inloop", "auto")]

    def shifted(s, vp, vx):  # loss at (p + s vp, x + s vx)
      return loss(jax.tree_util.tree_map(lambda a, v: a + s * v, p, vp), x + s * vx, "hoisted")

    fd = jax.vmap(lambda vp, vx: (shifted(eps, vp, vx) - shifted(-eps, vp, vx)) / (2 * eps))(
        vps, vxs)
    return grads, fd

  ((vh, (gph, gxh)), (vi, (gpi, gxi)), (va, (gpa, gxa))), fd = check(params, xs)
  np.testing.assert_allclose(float(va), float(vh), rtol=1e-10)
  for g_p, g_x in ((gph, gxh), (gpi, gxi), (gpa, gxa)):
    an = sum(jnp.tensordot(v, g, axes=g.ndim) for g, v in zip(
        jax.tree_util.tree_leaves(g_p), jax.tree_util.tree_leaves(vps)))
    an = an + jnp.tensordot(vxs, g_x, axes=g_x.ndim)
    np.testing.assert_allclose(np.asarray(an), np.asarray(fd), rtol=1e-6, atol=1e-7)
  # The two modes agree on values and gradients to float64 rounding.
  np.testing.assert_allclose(float(vh), float(vi), rtol=1e-12)
  assert_tree_close((gph, gxh), (gpi, gxi), atol=1e-12, rtol=1e-10)
  # Padding gets exactly zero gradient; valid inputs do not.
  gx = np.asarray(gxh)
  np.testing.assert_array_equal(gx[1, 3:], 0.0)
  np.testing.assert_array_equal(gx[2], 0.0)
  assert np.all(np.abs(gx[0]).sum(-1) > 0)


def test_grad_every_entry_matches_finite_differences(x64):
  # Coordinate-wise central differences for every parameter of a small GRU,
  # read in reverse within each sequence's length.
  from jax.flatten_util import ravel_pytree
  cell, params, xs, loss = _fd_setup("gru-after", seed=30, reverse=True)
  flat, unravel = ravel_pytree(params)
  eps = 1e-6

  @jax.jit
  def fd_and_grad(flat):
    f = lambda v: loss(unravel(v), xs)
    E = eps * jnp.eye(flat.size, dtype=flat.dtype)
    return (jax.vmap(f)(flat + E) - jax.vmap(f)(flat - E)) / (2 * eps), jax.grad(f)(flat)

  fd, g = fd_and_grad(flat)
  assert flat.size == 3 * 12 + 4 * 12 + 12 + 4
  np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-6, atol=1e-8)
