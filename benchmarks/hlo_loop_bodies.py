"""Counts the instructions, fusions and other thunks of every while-loop body in the
optimized HLO of rnnjax's scan (B=16, T=256, I=32, H=64; forward and forward+backward).

On XLA:CPU each fusion or other thunk in a loop body costs ~1 us per step at small
shapes, so two versions whose loop bodies have the same counts run at the same
speed; this is the noise-free half of an A/B (the timed half is
``python -m benchmarks.run --baseline-src OTHER_CHECKOUT``).

Usage: ``python benchmarks/hlo_loop_bodies.py PATH_TO_A_CHECKOUT`` (prints JSON).
"""
import sys, re, json
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, rnnjax as rj
out = {}
for cname, mk in [("simple", lambda: rj.SimpleRNN(64)), ("lstm", lambda: rj.LSTM(64)), ("gru", lambda: rj.GRU(64))]:
  cell = mk(); p = cell.init(jax.random.key(0), 32); xs = jnp.ones((16, 256, 32))
  for mode in ("fwd", "fwdbwd"):
    f = (lambda p, x: rj.scan(cell, p, x)[1]) if mode == "fwd" else jax.grad(lambda p, x: jnp.sum(rj.scan(cell, p, x)[1]), argnums=(0, 1))
    txt = jax.jit(f).lower(p, xs).compile().as_text()
    # computations that are while bodies
    bodies = set(re.findall(r"body=(%?[\w.\-]+)", txt))
    comps = {}
    cur = None
    for line in txt.split("\n"):
      m = re.match(r"^(?:ENTRY )?(%?[\w.\-]+) ", line)
      if m and line.rstrip().endswith("{"):
        cur = m.group(1); comps[cur] = []
      elif cur and line.strip() == "}":
        cur = None
      elif cur:
        comps[cur].append(line)
    res = []
    for b in bodies:
      lines = comps.get(b, comps.get(b.lstrip("%"), []))
      ops = [re.search(r"= \S+ (\w[\w\-]*)\(", l) for l in lines]
      ops = [o.group(1) for o in ops if o]
      thunks = [o for o in ops if o in ("fusion", "dot", "custom-call", "convolution", "copy", "dynamic-update-slice", "dynamic-slice", "reduce", "add", "multiply", "select", "concatenate", "tanh", "logistic")]
      res.append({"n_instr": len(ops), "fusion": ops.count("fusion"), "dot": ops.count("dot") + ops.count("custom-call"), "other_thunks": len(thunks) - ops.count("fusion") - ops.count("dot") - ops.count("custom-call")})
    out[f"{cname}-{mode}"] = sorted(res, key=lambda r: -r["n_instr"])
print(json.dumps(out))
