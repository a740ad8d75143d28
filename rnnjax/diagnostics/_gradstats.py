"""Gradient statistics of one step: global norm, per-parameter norms, clipping."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp



def global_norm(tree) -> jax.Array:
  r"""``sqrt(sum over leaves of sum(g**2))``, without overflow.

  Computed as ``m * sqrt(sum((g / m)**2))`` with ``m = max |g|``: a finite
  gradient of norm 1e30 has a finite norm in float32 (the plain sum of
  squares would overflow to inf above ~1.8e19). Non-finite entries give a
  non-finite norm (NaN for a NaN entry, inf for an inf one); all zeros give 0.

  This hand-written norm is kept (rather than ``optax.global_norm``) for that
  overflow safety, and because :func:`rnnjax.train.clip_by_global_norm`
  records the norm and the clip flag in its state (``optax``'s clipping
  keeps no state), which :func:`rnnjax.train.fit` reports.
  """
  leaves = [jnp.asarray(g) for g in jax.tree_util.tree_leaves(tree)]
  if not leaves:
    return jnp.zeros((), jnp.float32)
  # Accumulate in float32 at least (bf16/f16 gradients), float64 if any leaf is
  # float64 (chosen explicitly: leaves of mixed precision need no implicit promotion).
  wide = [jnp.dtype(g.dtype) for g in leaves if jnp.issubdtype(g.dtype, jnp.inexact)]
  dtype = jnp.dtype(jnp.float32)
  for d in wide:
    if d.itemsize > dtype.itemsize:
      dtype = d
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(g)).astype(dtype) for g in leaves]))
  safe = jnp.where(m > 0, m, jnp.ones_like(m))
  total = sum(jnp.sum(jnp.square(g.astype(dtype) / safe)) for g in leaves)
  norm = jnp.where(m > 0, m * jnp.sqrt(total), jnp.zeros_like(m))
  # A NaN entry makes m NaN, an inf one (and no NaN) makes it inf: report m itself.
  return jnp.where(jnp.isfinite(m), norm, m)


def _path_name(path) -> str:
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    else:
      parts.append(str(k))
  return "/".join(parts) or "."


def gradient_stats(grads: Any, *, clip_norm: Optional[float] = None) -> dict:
  r"""Norms of a gradient pytree, and whether global-norm clipping would fire.

  Returns a dict (JAX scalars; works under ``jit``):

  * ``"global_norm"``: ``||g|| = sqrt(sum over leaves of sum(g**2))``, the
    quantity clipped by ``clip_norm`` (Pascanu et al. 2013), computed without
    overflow (:func:`rnnjax.train.global_norm`);
  * ``"norms"``: ``{name: ||g_leaf||_2}`` per parameter array, named by its
    path in the params tree joined by ``/`` (e.g. ``"layers/0/w_h"``);
  * ``"clipped"``: ``global_norm > clip_norm`` (False when ``clip_norm`` is None);
  * ``"clip_scale"``: ``min(1, clip_norm / global_norm)``, the factor clipping
    multiplies the gradient by (1 when ``clip_norm`` is None).

  Non-finite gradients are reported, not hidden: a leaf (and the global
  norm) holding a NaN has norm NaN, one holding +-inf (and no NaN) has norm
  inf; then ``clipped`` is False for NaN and ``clip_scale`` is NaN / 0.
  """
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  if not leaves:
    raise ValueError("grads must be a non-empty pytree of arrays.")
  norms = {_path_name(path): global_norm(g) for path, g in leaves}
  gnorm = global_norm(grads)
  if clip_norm is None:
    clipped = jnp.zeros((), jnp.bool_)
    scale = jnp.ones((), jnp.float32)
  else:
    if not float(clip_norm) > 0:
      raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}.")
    clipped = gnorm > clip_norm
    scale = clip_norm / jnp.maximum(gnorm, clip_norm)
  return {"global_norm": gnorm, "norms": norms, "clipped": clipped, "clip_scale": scale}
