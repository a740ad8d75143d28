"""rnnjax.train optimizer builder, clipping, penalties, gradient stats, losses, tasks.

References: float64 NumPy written from the equations in the docstrings,
closed-form baselines, and jax.grad of the penalty terms.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm as normal

import rnnjax as rj
from rnnjax import train
from rnnjax.train._optim import find_state


def _tree(seed, scale=1.0):
  rng = np.random.default_rng(seed)
  return {"layers": ({"w_h": jnp.asarray(scale * rng.standard_normal((3, 4)), jnp.float32),
                      "b": jnp.asarray(scale * rng.standard_normal((4,)), jnp.float32)},),
          "readout": {"w": jnp.asarray(scale * rng.standard_normal((4, 2)), jnp.float32)}}


def _up(tx):
  """``tx.update`` jitted: eager optax runs op by op, far slower than one compile."""
  return jax.jit(tx.update)


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)])


# ----------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("tau", [0.5, 2.0, 100.0])
def test_clip_norm_applied_gradient_has_norm_min_g_tau_and_same_direction(tau):
  params, grads = _tree(0), _tree(1, scale=2.0)
  g = _flat(grads)
  gnorm = np.linalg.norm(g)
  assert 0.5 < gnorm < 100.0  # tau brackets the norm: both branches run
  tx = train.optimizer("sgd", 1.0, clip_norm=tau)
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  applied = -_flat(updates)  # sgd with lr 1: update = -applied gradient
  np.testing.assert_allclose(np.linalg.norm(applied), min(gnorm, tau), rtol=1e-5)
  np.testing.assert_allclose(applied, g * min(1.0, tau / gnorm), rtol=1e-5, atol=1e-6)
  assert np.dot(applied, g) / (np.linalg.norm(applied) * gnorm) == pytest.approx(1.0, abs=1e-6)
  (clip_state,) = find_state(state, train.ClipByGlobalNormState)
  assert float(clip_state.norm) == pytest.approx(gnorm, rel=1e-5)
  assert bool(clip_state.clipped) == (gnorm > tau)
  stats = train.gradient_stats(grads, clip_norm=tau)
  assert float(stats["global_norm"]) == pytest.approx(gnorm, rel=1e-5)
  assert bool(stats["clipped"]) == (gnorm > tau)
  assert float(stats["clip_scale"]) == pytest.approx(min(1.0, tau / gnorm), rel=1e-5)


def test_clip_norm_handles_huge_finite_gradients_without_overflow():
  # ||g|| ~ 1e30 is finite in float32, but its square is not: the norm is taken
  # as max|g| * ||g / max|g|||, so clipping still returns a unit-norm gradient.
  params, grads = _tree(0), _tree(1, scale=1e30)
  g = _flat(grads)
  tx = train.optimizer("sgd", 1.0, clip_norm=1.0)
  u, s = _up(tx)(grads, tx.init(params), params)
  np.testing.assert_allclose(-_flat(u), g / np.linalg.norm(g), rtol=1e-5, atol=1e-7)
  assert int(s.total_notfinite) == 0
  assert float(jax.jit(train.global_norm)(grads)) == pytest.approx(np.linalg.norm(g), rel=1e-5)
  assert float(train.global_norm({"a": jnp.zeros(3)})) == 0.0
  assert not np.isfinite(float(train.global_norm({"a": jnp.array([1.0, jnp.inf])})))


def test_clip_norm_is_applied_before_the_optimizer():
  # Adam normalises the first step to lr * sign(g) whatever the scale, so test
  # the order with momentum SGD over two steps: v2 = 0.9 * clip(g1) + clip(g2).
  params, g1, g2 = _tree(0), _tree(1, 10.0), _tree(2, 10.0)
  tx = train.optimizer("sgd", 1.0, momentum=0.9, clip_norm=1.0)
  s = tx.init(params)
  _, s = _up(tx)(g1, s, params)
  u, _ = _up(tx)(g2, s, params)
  c1 = _flat(g1) / np.linalg.norm(_flat(g1))
  c2 = _flat(g2) / np.linalg.norm(_flat(g2))
  np.testing.assert_allclose(-_flat(u), 0.9 * c1 + c2, rtol=1e-5, atol=1e-6)


def test_clip_value_and_adaptive_clip_match_numpy():
  params, grads = _tree(0), _tree(1, scale=3.0)
  tx = train.optimizer("sgd", 1.0, clip_value=0.7)
  u, _ = _up(tx)(grads, tx.init(params), params)
  np.testing.assert_allclose(-_flat(u), np.clip(_flat(grads), -0.7, 0.7), rtol=1e-6)
  # AGC (Brock et al. 2021): per unit (last axis = output unit for matrices, whole
  # vector for biases), g <- g * min(1, r * max(||w||, 1e-3) / ||g||).
  tx = train.optimizer("sgd", 1.0, adaptive_clip=0.1)
  u, _ = _up(tx)(grads, tx.init(params), params)
  ref = {}
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    w = np.asarray(dict(jax.tree_util.tree_flatten_with_path(params)[0])[path], np.float64)
    g = np.asarray(g, np.float64)
    axis = tuple(range(g.ndim - 1)) if g.ndim > 1 else None
    wn = np.maximum(np.sqrt(np.sum(w * w, axis=axis, keepdims=True)), 1e-3)
    gn = np.sqrt(np.sum(g * g, axis=axis, keepdims=True))
    ref[path] = g * np.minimum(1.0, 0.1 * wn / np.maximum(gn, 1e-6))
  got = dict(jax.tree_util.tree_flatten_with_path(u)[0])
  for path, r in ref.items():
    np.testing.assert_allclose(-np.asarray(got[path]), r, rtol=1e-5, atol=1e-7)


def test_weight_clip_projects_every_weight_into_range():
  c, lr = 0.3, 0.5
  params, grads = _tree(0), _tree(1)
  tx = train.optimizer("sgd", lr, weight_clip=c)
  u, _ = _up(tx)(grads, tx.init(params), params)
  new = optax.apply_updates(params, u)
  np.testing.assert_allclose(_flat(new), np.clip(_flat(params) - lr * _flat(grads), -c, c),
                             rtol=1e-6, atol=1e-7)
  # Many Adam steps pushing every weight outwards: all stay in [-c, c], at the bound.
  tx = train.optimizer("adam", 0.1, weight_clip=c)
  step = jax.jit(lambda p, s: (lambda us: (optax.apply_updates(p, us[0]), us[1]))(
      _up(tx)(jax.tree_util.tree_map(lambda w: -jnp.sign(w), p), s, p)))
  p, s = params, tx.init(params)
  for _ in range(20):
    p, s = step(p, s)
  w = _flat(p)
  assert np.all(np.abs(w) <= c + 1e-7)
  np.testing.assert_allclose(np.abs(w), c, rtol=1e-6)


def test_l2_penalty_gradient_is_2_lambda_w_and_l1_is_lambda_sign_w():
  lam, mu = 0.03, 0.01
  params = _tree(0)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  tx = train.optimizer("sgd", 1.0, l2=lam)
  u, _ = _up(tx)(zeros, tx.init(params), params)
  np.testing.assert_allclose(-_flat(u), 2 * lam * _flat(params), rtol=1e-6)
  # Against autodiff of loss + lam ||w||^2 + mu ||w||_1 with a nonzero loss gradient.
  target = _tree(3)

  def loss(p):
    return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree_util.tree_leaves(p),
                                                      jax.tree_util.tree_leaves(target)))

  def penalised(p):
    leaves = jax.tree_util.tree_leaves(p)
    return loss(p) + lam * sum(jnp.sum(w ** 2) for w in leaves) + mu * sum(
        jnp.sum(jnp.abs(w)) for w in leaves)

  tx = train.optimizer("sgd", 1.0, l1=mu, l2=lam)
  u, _ = _up(tx)(jax.jit(jax.grad(loss))(params), tx.init(params), params)
  np.testing.assert_allclose(-_flat(u), _flat(jax.jit(jax.grad(penalised))(params)), rtol=1e-5, atol=1e-7)
  # A mask restricts the penalty: only weight matrices, not biases.
  mask = {"layers": ({"w_h": True, "b": False},), "readout": {"w": True}}
  tx = train.optimizer("sgd", 1.0, l2=lam, penalty_mask=mask)
  u, _ = _up(tx)(zeros, tx.init(params), params)
  assert np.all(np.asarray(u["layers"][0]["b"]) == 0)
  np.testing.assert_allclose(-np.asarray(u["readout"]["w"]), 2 * lam * np.asarray(params["readout"]["w"]),
                             rtol=1e-6)


def test_every_optimizer_matches_optax_and_nonfinite_updates_are_skipped_and_counted():
  params, grads = _tree(0), _tree(1)
  refs = {"sgd": optax.sgd(0.1), "nesterov": optax.sgd(0.1, momentum=0.9, nesterov=True),
          "rmsprop": optax.rmsprop(0.1), "adagrad": optax.adagrad(0.1), "adam": optax.adam(0.1),
          "adamw": optax.adamw(0.1)}
  assert set(refs) == set(train.OPTIMIZERS)
  pairs = {name: (train.optimizer(name, 0.1), ref) for name, ref in refs.items()}

  @jax.jit
  def two_steps(params, grads):  # one compile for all twelve optimizers
    out = {}
    for name, (tx, ref) in pairs.items():
      s, rs = tx.init(params), ref.init(params)
      for _ in range(2):
        u, s = tx.update(grads, s, params)
        with jax.numpy_dtype_promotion("standard"):  # plain optax mixes float and int32
          ru, rs = ref.update(grads, rs, params)
      out[name] = (u, ru)
    return out

  for name, (u, ru) in two_steps(params, grads).items():
    np.testing.assert_allclose(_flat(u), _flat(ru), rtol=1e-6, err_msg=name)
  tx = train.optimizer("adam", 0.1, clip_norm=1.0)
  s = tx.init(params)
  bad = jax.tree_util.tree_map(lambda g: g.at[0].set(jnp.nan), grads)
  u, s2 = _up(tx)(bad, s, params)
  assert np.all(_flat(u) == 0)  # params untouched
  assert int(s2.total_notfinite) == 1
  np.testing.assert_array_equal(_flat(s2.inner_state[1][0].mu), _flat(s.inner_state[1][0].mu))
  # A schedule works as the learning rate.
  tx = train.optimizer("sgd", optax.linear_schedule(1.0, 0.0, 10))
  u, _ = _up(tx)(grads, tx.init(params), params)
  np.testing.assert_allclose(-_flat(u), _flat(grads), rtol=1e-6)


def test_optimizer_bad_options_raise_clear_errors():
  with pytest.raises(ValueError, match="name must be one of"):
    train.optimizer("adamax")
  with pytest.raises(ValueError, match="clip_norm must be a positive"):
    train.optimizer("adam", 1e-3, clip_norm=0.0)
  with pytest.raises(ValueError, match="weight_clip must be a positive"):
    train.optimizer("adam", 1e-3, weight_clip=-1.0)
  with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
    train.optimizer("adam", 1e-3, l2=-0.1)
  with pytest.raises(ValueError, match="learning_rate"):
    train.optimizer("adam", 0.0)
  with pytest.raises(TypeError, match="does not accept the options"):
    train.optimizer("adam", 1e-3, momentum=0.9)


def test_gradient_stats_per_parameter_norms():
  grads = _tree(5)
  stats = jax.jit(lambda g: train.gradient_stats(g))(grads)
  assert set(stats["norms"]) == {"layers/0/w_h", "layers/0/b", "readout/w"}
  np.testing.assert_allclose(float(stats["norms"]["layers/0/w_h"]),
                             np.linalg.norm(np.asarray(grads["layers"][0]["w_h"], np.float64)), rtol=1e-6)
  np.testing.assert_allclose(float(stats["global_norm"]), np.linalg.norm(_flat(grads)), rtol=1e-6)
  assert not bool(stats["clipped"]) and float(stats["clip_scale"]) == 1.0


# ----------------------------------------------------------------------------- losses


def _np_mask(lengths, T):
  return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


def test_masked_losses_match_float64_numpy():
  rng = np.random.default_rng(0)
  B, T, O, C = 4, 6, 3, 5
  lengths = np.array([6, 3, 0, 1], np.int32)
  m = _np_mask(lengths, T)
  pred, target = rng.standard_normal((B, T, O)), rng.standard_normal((B, T, O))
  ref = np.sum(((pred - target) ** 2) * m[..., None]) / (m.sum() * O)
  got = jax.jit(train.mse)(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32), lengths)
  assert float(got) == pytest.approx(ref, rel=1e-5)
  assert float(jax.jit(train.mse)(jnp.asarray(pred, jnp.float32), target)) == pytest.approx(
      np.mean((pred - target) ** 2), rel=1e-5)
  # Padding never matters: change it, same loss.
  pred2 = np.where(m[..., None], pred, 1e3)
  assert float(jax.jit(train.mse)(jnp.asarray(pred2, jnp.float32), target, lengths)) == pytest.approx(ref, rel=1e-5)

  logits = 30.0 * rng.standard_normal((B, T, C))
  labels = rng.integers(0, C, (B, T)).astype(np.int32)
  lse = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, labels[..., None], -1)[..., 0]
  ref = np.sum(nll * m) / m.sum()
  assert float(jax.jit(train.cross_entropy)(jnp.asarray(logits, jnp.float32), labels, lengths)) == pytest.approx(
      ref, rel=1e-5)
  # Stable for huge logits.
  big = jnp.array([[1e4, -1e4, 0.0]], jnp.float32)
  assert float(jax.jit(train.cross_entropy)(big, jnp.array([1]))) == pytest.approx(2e4, rel=1e-6)

  z = 40.0 * rng.standard_normal((B, T, O))
  y = (rng.random((B, T, O)) > 0.5).astype(np.float64)
  nll = -(y * -np.logaddexp(0, -z) + (1 - y) * -np.logaddexp(0, z))  # -y log s(z) - (1-y) log(1-s(z))
  ref = np.sum(nll * m[..., None]) / (m.sum() * O)
  got = jax.jit(train.binary_cross_entropy)(jnp.asarray(z, jnp.float32), jnp.asarray(y, jnp.float32), lengths)
  assert float(got) == pytest.approx(ref, rel=1e-5)
  acc = jax.jit(train.accuracy)(jnp.asarray(logits, jnp.float32), labels, lengths)
  assert float(acc) == pytest.approx(np.sum((logits.argmax(-1) == labels) * m) / m.sum(), rel=1e-6)


def test_model_loss_matches_numpy_on_model_outputs():
  # cross-entropy per step on the copy task (return_sequences, integer labels)
  model = rj.SequenceModel([rj.SimpleRNN(6)], rj.Dense(9), return_sequences=True)
  params = model.init(jax.random.key(0), input_size=10)
  b = train.copy_task(4, delay=3, seed=0)
  loss, aux = jax.jit(train.model_loss(model, "cross_entropy"))(params, b)
  z = np.asarray(jax.jit(model.logits)(params, jnp.asarray(b.x)), np.float64)
  logp = z - np.log(np.sum(np.exp(z), -1, keepdims=True))
  nll = -np.take_along_axis(logp, b.y[..., None], -1)[..., 0]
  assert float(loss) == pytest.approx(nll.mean(), rel=1e-5)
  assert float(aux["accuracy"]) == pytest.approx(np.mean(z.argmax(-1) == b.y), abs=1e-6)
  # MSE per step with lengths: padded steps do not count; dict batches work.
  model = rj.SequenceModel([rj.SimpleRNN(6)], rj.Dense(1), return_sequences=True)
  params = model.init(jax.random.key(1), input_size=4)
  c = train.sequence_classification(5, length=7, features=4, seed=1)
  y = np.random.default_rng(0).standard_normal((5, 7, 1)).astype(np.float32)
  loss, _ = jax.jit(train.model_loss(model, "mse"))(params, {"x": c.x, "y": y, "lengths": c.lengths})
  pred = np.asarray(jax.jit(model.apply)(params, jnp.asarray(c.x), lengths=jnp.asarray(c.lengths)),
                    np.float64)
  m = _np_mask(c.lengths, 7)
  assert float(loss) == pytest.approx(np.sum((pred - y)[..., 0] ** 2 * m) / m.sum(), rel=1e-5)
  with pytest.raises(TypeError, match="batch must be a Batch"):
    train.model_loss(model, "mse")(params, c.x)


def test_losses_reject_bad_shapes():
  with pytest.raises(ValueError, match="target must have the shape of pred"):
    train.mse(np.zeros((2, 3, 1), np.float32), np.zeros((2, 3), np.float32))
  with pytest.raises(TypeError, match="labels must be an integer array"):
    train.cross_entropy(np.zeros((2, 3), np.float32), np.zeros((2,)))
  with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
    train.binary_cross_entropy(np.zeros((2, 3, 1), np.float32), np.zeros((2, 3, 1), np.float32), np.array([1, 2, 3]))
  with pytest.raises(ValueError, match="lengths must be <= the number of time steps"):
    train.mse(np.zeros((2, 3, 1), np.float32), np.zeros((2, 3, 1), np.float32), np.array([1, 4]))


# ----------------------------------------------------------------------------- tasks


def test_binary_addition_task_is_deterministic_and_correct():
  b = train.binary_addition(256, seed=(7, 3))
  b2 = train.binary_addition(256, seed=(7, 3))
  np.testing.assert_array_equal(b.x, b2.x)
  assert not np.array_equal(b.x, train.binary_addition(256, seed=(7, 4)).x)
  assert b.x.shape == (256, 8, 2) and b.y.shape == (256, 8, 1) and b.lengths is None
  w = 2 ** np.arange(8)
  a, c = b.x[..., 0] @ w, b.x[..., 1] @ w
  s = b.y[..., 0] @ w
  np.testing.assert_array_equal(a + c, s)
  assert a.max() < 128 and c.max() < 128
  # Baseline: predicting 1/2 everywhere (logit 0) gives BCE ln 2.
  assert float(train.binary_cross_entropy(jnp.zeros(b.y.shape), b.y)) == pytest.approx(math.log(2), rel=1e-6)


def test_adding_problem_structure_and_baseline_one_sixth():
  T = 50
  b = train.adding_problem(20000, length=T, seed=1)
  x, y = b.x, b.y
  assert x.shape == (20000, T, 2) and y.shape == (20000, 1)
  marks = x[..., 1]
  assert np.all(marks[:, : T // 2].sum(1) == 1) and np.all(marks[:, T // 2:].sum(1) == 1)
  np.testing.assert_allclose(y[:, 0], (x[..., 0] * marks).sum(1), rtol=1e-6)
  # Baseline: predict the mean sum 1 -> MSE = Var(U1 + U2) = 1/6 (SE ~ 0.0013 at n = 20000).
  mse1 = float(train.mse(jnp.ones_like(y), y))
  assert abs(mse1 - 1 / 6) < 0.005


def test_copy_task_structure_and_baseline():
  T, n, k = 30, 10, 8
  b = train.copy_task(64, delay=T, seed=2)
  inp = b.x.argmax(-1)
  assert b.x.shape == (64, T + 2 * n, k + 2) and b.y.shape == (64, T + 2 * n)
  assert np.all(inp[:, :n] < k) and np.all(inp[:, T + n - 1] == k + 1)
  assert np.all(inp[:, n:T + n - 1] == k) and np.all(inp[:, T + n:] == k)
  assert np.all(b.y[:, :T + n] == k)
  np.testing.assert_array_equal(b.y[:, T + n:], inp[:, :n])
  # The baseline predictor: blank with certainty for T + n steps, uniform over the
  # k symbols for the last n -> cross-entropy n ln k / (T + 2n).
  logits = np.full(b.y.shape + (k + 1,), -1e4, np.float32)
  logits[:, :T + n, k] = 1e4
  logits[:, T + n:, :k] = 0.0
  ce = float(train.cross_entropy(jnp.asarray(logits), b.y))
  assert ce == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-5)


def test_sequence_classification_is_separable_with_documented_bayes_error():
  b = train.sequence_classification(4000, length=20, features=4, seed=3)
  x, y, L = b.x, b.y[:, 0], b.lengths
  assert x.shape == (4000, 20, 4) and b.lengths.dtype == np.int32
  assert L.min() >= 10 and L.max() <= 20
  assert np.all(x[~_np_mask(L, 20)] == 0)  # padding is zero
  assert abs(y.mean() - 0.5) < 0.03
  score = x.sum(axis=(1, 2))  # w . sum_t x_t up to the positive factor 1/sqrt(4)
  bayes_acc = np.mean((score > 0) == (y > 0.5))
  expected = 1 - np.mean(normal.cdf(-1.0 * np.sqrt(L)))
  assert expected > 0.999 and bayes_acc > 0.995
