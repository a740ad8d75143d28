"""Parity with PyTorch (nn.RNN / nn.LSTM / nn.GRU) and Flax linen cells given
the same weights through rnnjax.interop: outputs, final states and gradients."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnnjax as rj
from rnnjax import interop

B, T, I, H = 3, 6, 4, 5


def rand(shape, seed, scale=1.0):
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


# --------------------------------------------------------------------------
# PyTorch


@pytest.fixture(scope="module")
def torch():
  torch = pytest.importorskip("torch")
  torch.set_num_threads(1)
  return torch


def _torch_module(torch, kind, **kw):
  torch.manual_seed(0)
  if kind in ("rnn-tanh", "rnn-relu"):
    return torch.nn.RNN(I, H, nonlinearity=kind[4:], batch_first=True, **kw)
  return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](I, H, batch_first=True, **kw)


def _rj_cell(kind):
  return {"rnn-tanh": rj.SimpleRNN(H, "tanh"), "rnn-relu": rj.SimpleRNN(H, "relu"),
          "lstm": rj.LSTM(H), "gru": rj.GRU(H)}[kind]


_LOSS_FNS = {}


def _rj_loss_and_grad(cell):
  """A jitted (loss, (ys, carry)), (d params, d xs) for one cell, reused across tests."""
  if cell not in _LOSS_FNS:
    def loss(params, xs, carry0, r, s):
      carry, ys = rj.scan(cell, params, xs, carry0)
      leaves = jax.tree_util.tree_leaves(carry)
      return jnp.sum(ys * r) + sum(jnp.sum(l * s) for l in leaves), (ys, carry)
    _LOSS_FNS[cell] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  return _LOSS_FNS[cell]


def _torch_run(torch, module, xs, carry0, r, s):
  """Outputs, final state and gradients of the same loss in PyTorch."""
  xt = torch.from_numpy(xs).requires_grad_(True)
  if isinstance(module, torch.nn.LSTM):
    h0 = (torch.from_numpy(carry0[0])[None], torch.from_numpy(carry0[1])[None])
  else:
    h0 = torch.from_numpy(carry0)[None]
  ys, hn = module(xt, h0)
  finals = hn if isinstance(hn, tuple) else (hn,)
  loss = (ys * torch.from_numpy(r)).sum() + sum((f[0] * torch.from_numpy(s)).sum()
                                                for f in finals)
  for p in module.parameters():
    p.grad = None
  loss.backward()
  grads = {k: p.grad.numpy().copy() for k, p in module.named_parameters()}
  return (ys.detach().numpy(), [f[0].detach().numpy() for f in finals],
          grads, xt.grad.numpy().copy())


@pytest.mark.parametrize("kind", ["rnn-tanh", "rnn-relu", "lstm", "gru"])
def test_torch_parity_outputs_states_and_gradients(torch, kind):
  module = _torch_module(torch, kind)
  with torch.no_grad():  # nonzero, distinct biases on both sides
    for k, p in module.named_parameters():
      if "bias" in k:
        p.copy_(torch.from_numpy(rand(p.shape, seed=len(k) + 7, scale=0.3)))
  cell = _rj_cell(kind)
  params = interop.from_torch(cell, module.state_dict())
  xs, r, s = rand((B, T, I), 1), rand((B, T, H), 2), rand((B, H), 3)
  if kind == "lstm":
    carry_np = (rand((B, H), 4, 0.5), rand((B, H), 5, 0.5))
    carry0 = rj.LSTMCarry(jnp.asarray(carry_np[0]), jnp.asarray(carry_np[1]))
  else:
    carry_np = rand((B, H), 4, 0.5)
    carry0 = jnp.asarray(carry_np)

  (loss, (ys, carry)), (gp, gx) = _rj_loss_and_grad(cell)(params, xs, carry0, r, s)
  t_ys, t_finals, t_grads, t_gx = _torch_run(torch, module, xs, carry_np, r, s)

  np.testing.assert_allclose(ys, t_ys, atol=1e-5, rtol=1e-5)
  for ours, theirs in zip(jax.tree_util.tree_leaves(carry), t_finals):  # (h, c) both sides
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
  tol = dict(atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(gx, t_gx, **tol)
  np.testing.assert_allclose(gp["w_i"], t_grads["weight_ih_l0"].T, **tol)
  np.testing.assert_allclose(gp["w_h"], t_grads["weight_hh_l0"].T, **tol)
  np.testing.assert_allclose(gp["b"], t_grads["bias_ih_l0"], **tol)
  if kind == "gru":
    np.testing.assert_allclose(gp["b"][:2 * H], t_grads["bias_hh_l0"][:2 * H], **tol)
    np.testing.assert_allclose(gp["b_hn"], t_grads["bias_hh_l0"][2 * H:], **tol)
  else:
    np.testing.assert_allclose(gp["b"], t_grads["bias_hh_l0"], **tol)

  # The other way: rnnjax params -> to_torch -> a fresh module computes the same.
  p2 = jax.tree_util.tree_map(lambda a: jnp.asarray(rand(a.shape, 11, 0.4)), params)
  sd = interop.to_torch(cell, p2)
  assert {k: v.shape for k, v in sd.items()} == {
      k: tuple(v.shape) for k, v in module.state_dict().items()}
  module2 = _torch_module(torch, kind)
  module2.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  (_, (ys2, carry2)), _ = _rj_loss_and_grad(cell)(p2, xs, carry0, r, s)
  t_ys2, t_finals2, _, _ = _torch_run(torch, module2, xs, carry_np, r, s)
  np.testing.assert_allclose(ys2, t_ys2, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(jax.tree_util.tree_leaves(carry2)[0], t_finals2[0], atol=1e-5)
  # Round trips: params -> torch -> params is exact.
  back = interop.from_torch(cell, sd)
  for k in p2:
    np.testing.assert_array_equal(back[k], p2[k])
  # state dict -> params -> state dict: the same function (biases may move sides).
  sd_back = interop.to_torch(cell, params)
  np.testing.assert_array_equal(sd_back["weight_ih_l0"], module.weight_ih_l0.detach().numpy())
  bsum = (module.bias_ih_l0 + module.bias_hh_l0).detach().numpy()
  if kind == "gru":
    np.testing.assert_allclose(sd_back["bias_ih_l0"][:2 * H], bsum[:2 * H], atol=1e-6)
    np.testing.assert_array_equal(sd_back["bias_hh_l0"][2 * H:],
                                  module.bias_hh_l0.detach().numpy()[2 * H:])
  else:
    np.testing.assert_allclose(sd_back["bias_ih_l0"] + sd_back["bias_hh_l0"], bsum, atol=1e-6)


def test_torch_multilayer_stack(torch):
  module = torch.nn.GRU(I, H, num_layers=2, batch_first=True)
  stack = rj.Stack([rj.GRU(H), rj.GRU(H)])
  params = interop.from_torch(stack, module.state_dict())
  assert params[1]["w_i"].shape == (H, 3 * H)
  xs = rand((B, T, I), 21)
  carries, ys = stack.apply(params, jnp.asarray(xs))
  with torch.no_grad():
    t_ys, t_hn = module(torch.from_numpy(xs))
  np.testing.assert_allclose(ys, t_ys.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.stack(carries), t_hn.numpy(), atol=1e-5)
  # layer= picks the suffix: layer 1 alone.
  p1 = interop.from_torch(rj.GRU(H), module.state_dict(), layer=1)
  for k in p1:
    np.testing.assert_array_equal(p1[k], params[1][k])
  sd = interop.to_torch(stack, params)
  assert sorted(sd) == sorted(module.state_dict())
  assert set(interop.to_torch(rj.GRU(H), p1, layer=1)) == {
      "weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"}


def test_torch_bidirectional(torch):
  module = torch.nn.LSTM(I, H, batch_first=True, bidirectional=True)
  bi = rj.Bidirectional(rj.LSTM(H))
  params = interop.from_torch(bi, module.state_dict())
  pb = interop.from_torch(rj.LSTM(H), module.state_dict(), reverse=True)
  np.testing.assert_array_equal(pb["w_h"], params["backward"]["w_h"])
  xs = rand((B, T, I), 22)
  (cf, cb), ys = bi.apply(params, jnp.asarray(xs))
  with torch.no_grad():
    t_ys, (t_h, t_c) = module(torch.from_numpy(xs))
  np.testing.assert_allclose(ys, t_ys.numpy(), atol=1e-5)
  np.testing.assert_allclose(cf.h, t_h[0].numpy(), atol=1e-5)
  np.testing.assert_allclose(cb.h, t_h[1].numpy(), atol=1e-5)
  np.testing.assert_allclose(cb.c, t_c[1].numpy(), atol=1e-5)
  assert sorted(interop.to_torch(bi, params)) == sorted(module.state_dict())


def test_torch_prefix_module_and_no_bias(torch):
  # A module whose state dict has a prefix; and bias=False reads zero biases.
  seq = torch.nn.Sequential(torch.nn.RNN(I, H, bias=False, batch_first=True))
  p = interop.from_torch(rj.SimpleRNN(H), seq, prefix="0.")  # a module is accepted
  np.testing.assert_array_equal(p["b"], 0.0)
  np.testing.assert_array_equal(p["w_h"], seq[0].weight_hh_l0.detach().numpy().T)
  xs = rand((B, T, I), 23)
  _, ys = rj.scan(rj.SimpleRNN(H), p, jnp.asarray(xs))
  with torch.no_grad():
    t_ys, _ = seq(torch.from_numpy(xs))
  np.testing.assert_allclose(ys, t_ys.numpy(), atol=1e-5)
  # IRNN is nn.RNN(nonlinearity="relu") with an identity init.
  p = interop.from_torch(rj.IRNN(H), seq, prefix="0.")
  assert set(interop.to_torch(rj.IRNN(H), p)) == {
      "weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
  # bf16 params come back as float32 arrays that torch can take.
  sd = interop.to_torch(rj.LSTM(2), {"w_i": jnp.ones((3, 8), jnp.bfloat16),
                                     "w_h": jnp.ones((2, 8), jnp.bfloat16),
                                     "b": jnp.ones(8, jnp.bfloat16)})
  assert sd["weight_ih_l0"].dtype == np.float32 and sd["weight_ih_l0"].shape == (8, 3)
  torch.from_numpy(sd["weight_ih_l0"])


def test_torch_errors(torch):
  sd = torch.nn.GRU(I, H).state_dict()
  with pytest.raises(TypeError, match="JordanRNN has no PyTorch equivalent"):
    interop.from_torch(rj.JordanRNN(H, 2), sd)
  with pytest.raises(TypeError, match="JordanRNN has no PyTorch equivalent"):
    interop.to_torch(rj.JordanRNN(H, 2), {})
  with pytest.raises(ValueError, match=r"GRU\(reset_after=False\) has no PyTorch equivalent"):
    interop.from_torch(rj.GRU(H, reset_after=False), sd)
  with pytest.raises(ValueError, match=r"GRU\(reset_after=False\)"):
    interop.to_torch(rj.GRU(H, reset_after=False), {})
  with pytest.raises(ValueError, match=r"weight_ih_l0'\] has shape \(15, 4\), expected \(20, input_size\)"):
    interop.from_torch(rj.LSTM(H), sd)  # a GRU's weights for an LSTM
  with pytest.raises(ValueError, match=r"weight_hh_l0'\] has shape \(15, 5\), expected \(18, 6\)"):
    interop.from_torch(rj.GRU(6), {**sd, "weight_ih_l0": np.zeros((18, I))})
  with pytest.raises(ValueError, match="state_dict has no key 'weight_ih_l1'"):
    interop.from_torch(rj.GRU(H), sd, layer=1)
  with pytest.raises(ValueError, match="state_dict has no key 'weight_ih_l0_reverse'"):
    interop.from_torch(rj.GRU(H), sd, reverse=True)
  with pytest.raises(ValueError, match="layer must be an int >= 0"):
    interop.from_torch(rj.GRU(H), sd, layer=-1)
  with pytest.raises(ValueError, match="proj_size"):
    interop.from_torch(rj.LSTM(H), torch.nn.LSTM(I, H, proj_size=2).state_dict())
  with pytest.raises(TypeError, match="state_dict must be a mapping"):
    interop.from_torch(rj.GRU(H), [1, 2])
  with pytest.raises(ValueError, match="params do not match GRU"):
    interop.to_torch(rj.GRU(H), interop.from_torch(rj.GRU(H), sd) | {"b": jnp.zeros(3)})


def test_interop_does_not_import_torch():
  code = (
      "import sys, numpy as np, rnnjax as rj\n"
      "from rnnjax import interop\n"
      "sd = {'weight_ih_l0': np.ones((8, 3)), 'weight_hh_l0': np.eye(2).repeat(4, 0),\n"
      "      'bias_ih_l0': np.ones(8), 'bias_hh_l0': np.ones(8)}\n"
      "p = interop.from_torch(rj.LSTM(2), sd)\n"
      "assert float(p['b'][0]) == 2.0\n"
      "interop.to_torch(rj.LSTM(2), p)\n"
      "assert 'torch' not in sys.modules, 'torch was imported'\n")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"JAX_PLATFORMS": "cpu", "PATH": ""}, timeout=120)
  assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------
# Flax linen


@pytest.fixture(scope="module")
def linen():
  from flax import linen
  return linen


FLAX_KINDS = ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"]


@pytest.mark.parametrize("kind", FLAX_KINDS)
def test_flax_parity_and_round_trip(linen, kind):
  fcell = getattr(linen, kind)(features=H)
  cell = {"GRUCell": rj.GRU(H), "SimpleCell": rj.SimpleRNN(H)}.get(kind, rj.LSTM(H))
  x0 = jnp.zeros((B, I))
  carry0 = fcell.initialize_carry(jax.random.key(0), x0.shape)
  # Flax's tree (shapes only: its biases start at zero, so every leaf gets
  # random values).
  leaves, treedef = jax.tree_util.tree_flatten(
      jax.eval_shape(fcell.init, jax.random.key(1), carry0, x0))
  variables = jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(rand(l.shape, 30 + i, 0.5)) for i, l in enumerate(leaves)])
  params = interop.from_flax(cell, variables)

  xs = rand((B, T, I), 31)
  if kind.endswith("LSTMCell"):
    c_np, h_np = rand((B, H), 32, 0.5), rand((B, H), 33, 0.5)
    flax_carry = (jnp.asarray(c_np), jnp.asarray(h_np))  # Flax: (c, h)
    rj_carry = rj.LSTMCarry(h=jnp.asarray(h_np), c=jnp.asarray(c_np))
  else:
    flax_carry = rj_carry = jnp.asarray(rand((B, H), 32, 0.5))

  @jax.jit
  def flax_loop(variables, carry, xs):
    ys = []
    for t in range(T):
      carry, y = fcell.apply(variables, carry, xs[:, t])
      ys.append(y)
    return carry, jnp.stack(ys, 1)

  f_carry, f_ys = flax_loop(variables, flax_carry, jnp.asarray(xs))
  carry, ys = rj.scan(cell, params, jnp.asarray(xs), rj_carry)
  np.testing.assert_allclose(ys, f_ys, atol=1e-5, rtol=1e-5)
  if kind.endswith("LSTMCell"):
    np.testing.assert_allclose(carry.c, f_carry[0], atol=1e-5)
    np.testing.assert_allclose(carry.h, f_carry[1], atol=1e-5)
  else:
    np.testing.assert_allclose(carry, f_carry, atol=1e-5)

  # to_flax(from_flax(v)) has Flax's exact tree and values; and back.
  back = interop.to_flax(cell, params, kind=kind)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
  for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_allclose(a, b, atol=1e-7)
  again = interop.from_flax(cell, back["params"])  # the inner dict works too
  for k in params:
    np.testing.assert_array_equal(again[k], params[k])


def test_flax_from_rnnjax_params(linen):
  # rnnjax-initialised params drive Flax's GRUCell to the same outputs.
  cell = rj.GRU(H)
  params = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rand(s.shape, 40, 0.5)),
      jax.eval_shape(lambda: cell.init(jax.random.key(0), I)))
  variables = interop.to_flax(cell, params)
  assert sorted(variables["params"]) == ["hn", "hr", "hz", "in", "ir", "iz"]
  assert "bias" not in variables["params"]["hr"] and "bias" in variables["params"]["hn"]
  x = jnp.asarray(rand((B, I), 41))
  h0 = jnp.asarray(rand((B, H), 42, 0.5))
  h_flax, _ = linen.GRUCell(features=H).apply(variables, h0, x)
  h_rj, _ = cell(params, h0, x)
  np.testing.assert_allclose(h_rj, h_flax, atol=1e-6)


def test_flax_errors(linen):
  with pytest.raises(TypeError, match="JordanRNN has no Flax linen equivalent"):
    interop.from_flax(rj.JordanRNN(H, 2), {})
  with pytest.raises(ValueError, match=r"GRU\(reset_after=False\) has no Flax"):
    interop.to_flax(rj.GRU(H, reset_after=False), {})
  with pytest.raises(ValueError, match="kind='GRUCell' does not match cell LSTM"):
    interop.to_flax(rj.LSTM(H), {}, kind=linen.GRUCell)
  with pytest.raises(ValueError, match="kind must be one of"):
    interop.to_flax(rj.LSTM(H), {}, kind="ConvLSTMCell")
  with pytest.raises(ValueError, match="flax_params has no dense 'ii'"):
    interop.from_flax(rj.LSTM(H), {"params": {"ir": {"kernel": np.ones((I, H))}}})
  bad = {"i": {"kernel": np.ones((I, H + 1)), "bias": np.ones(H + 1)},
         "h": {"kernel": np.ones((H + 1, H + 1))}}
  with pytest.raises(ValueError, match=r"flax_params\['i'\] has kernel \(4, 6\)"):
    interop.from_flax(rj.SimpleRNN(H), bad)
  with pytest.raises(TypeError, match="flax_params must be a dict"):
    interop.from_flax(rj.SimpleRNN(H), [1])


# --------------------------------------------------------------------------
# Flax NNX cells and whole nn.RNN layers

def _randomize_nnx(module, seed):
  """Every Param of an NNX module set to random values (biases start at zero)."""
  from flax import nnx
  state = nnx.state(module, nnx.Param)
  leaves, treedef = jax.tree_util.tree_flatten(nnx.to_pure_dict(state))
  pure = jax.tree_util.tree_unflatten(
      treedef, [jnp.asarray(rand(l.shape, seed + i, 0.5)) for i, l in enumerate(leaves)])
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(module, state)
  return pure


@pytest.mark.parametrize("kind", FLAX_KINDS)
def test_flax_nnx_cell_parity_and_round_trip(kind):
  from flax import nnx
  fcell = getattr(nnx, kind)(I, H, rngs=nnx.Rngs(0))
  pure = _randomize_nnx(fcell, 50)
  cell = {"GRUCell": rj.GRU(H), "SimpleCell": rj.SimpleRNN(H)}.get(kind, rj.LSTM(H))
  params = interop.from_flax(cell, fcell)
  if kind == "GRUCell":  # NNX's GRUCell has no hidden-side bias
    np.testing.assert_array_equal(params["b_hn"], np.zeros(H))
  xs = jnp.asarray(rand((B, T, I), 51))
  h_np = rand((B, H), 52, 0.5)
  if kind.endswith("LSTMCell"):
    c_np = rand((B, H), 53, 0.5)
    flax_carry = (jnp.asarray(c_np), jnp.asarray(h_np))
    rj_carry = rj.LSTMCarry(h=jnp.asarray(h_np), c=jnp.asarray(c_np))
  else:
    flax_carry = rj_carry = jnp.asarray(h_np)

  @nnx.jit
  def flax_loop(fcell, carry, xs):
    ys = []
    for t in range(T):
      carry, y = fcell(carry, xs[:, t])
      ys.append(y)
    return jnp.stack(ys, 1)

  f_ys = flax_loop(fcell, flax_carry, xs)
  np.testing.assert_allclose(rj.scan(cell, params, xs, rj_carry)[1], f_ys, atol=1e-5)
  # to_flax(kind=nnx.X) builds the same module back: same tree, same values.
  back = interop.to_flax(cell, params, kind=getattr(nnx, kind))
  assert type(back) is type(fcell)
  got = nnx.to_pure_dict(nnx.state(back, nnx.Param))
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(pure)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(pure)):
    np.testing.assert_allclose(a, b, atol=1e-7)
  # ... and from_flax of an nnx.RNN wrapping it gives the params again.
  again = interop.from_flax(cell, interop.to_flax(cell, params, kind="nnx." + kind, rnn=True))
  for k in params:
    np.testing.assert_allclose(again[k], params[k], atol=1e-7)


def test_flax_nnx_rnn_and_linen_rnn_layers(linen):
  from flax import nnx
  xs = jnp.asarray(rand((B, T, I), 60))
  # A whole linen nn.RNN: its variables go in as they are ({"params": {"cell": ...}}).
  layer = linen.RNN(linen.LSTMCell(features=H))
  variables = layer.init(jax.random.key(0), xs)
  assert list(variables["params"]) == ["cell"]
  variables = jax.tree_util.tree_map(
      lambda l: jnp.asarray(rand(l.shape, 61, 0.5)), variables)
  cell = rj.LSTM(H)
  params = interop.from_flax(cell, variables)
  np.testing.assert_allclose(rj.scan(cell, params, xs)[1], layer.apply(variables, xs),
                             atol=1e-5)
  back = interop.to_flax(cell, params, rnn=True)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
  np.testing.assert_allclose(layer.apply(back, xs), layer.apply(variables, xs), atol=1e-6)
  # An nnx.RNN built by to_flax runs as the rnnjax cell does.
  gru = rj.GRU(H)
  gp = gru.init(jax.random.key(1), I)
  nnx_rnn = interop.to_flax(gru, gp, kind=nnx.GRUCell, rnn=True)
  assert isinstance(nnx_rnn, nnx.RNN)
  np.testing.assert_allclose(nnx_rnn(xs), rj.scan(gru, gp, xs)[1], atol=1e-5)


def test_flax_nnx_errors():
  from flax import nnx
  with pytest.raises(ValueError, match="kind='GRUCell' does not match cell LSTM"):
    interop.from_flax(rj.LSTM(H), nnx.GRUCell(I, H, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="residual=True"):
    interop.from_flax(rj.SimpleRNN(H), nnx.SimpleCell(I, H, residual=True, rngs=nnx.Rngs(0)))
  with pytest.raises(TypeError, match="an NNX module must be one of"):
    interop.from_flax(rj.SimpleRNN(H), nnx.Linear(I, H, rngs=nnx.Rngs(0)))
  gru = rj.GRU(H)
  gp = dict(gru.init(jax.random.key(1), I), b_hn=jnp.ones(H))
  with pytest.raises(ValueError, match="nnx.GRUCell has no hidden-side bias"):
    interop.to_flax(gru, gp, kind=nnx.GRUCell)
  with pytest.raises(ValueError, match=r"LSTM\(peephole=True\) has no Flax equivalent"):
    interop.from_flax(rj.LSTM(H, peephole=True), nnx.LSTMCell(I, H, rngs=nnx.Rngs(0)))
  with pytest.raises(TypeError, match="must be an rnnjax SimpleRNN, IRNN, LSTM"):
    interop.to_flax(rj.IndRNN(H), {})
  with pytest.raises(TypeError, match="rnn must be a bool"):
    interop.to_flax(gru, gp, rnn="yes")
