"""Gradient statistics of one step: global norm, per-parameter norms, clipping."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from rnnjax.train._optim import global_norm as _global_norm


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


def gradient_stats(grads, *, clip_norm: Optional[float] = None) -> dict:
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
  """
  leaves = jax.tree_util.tree_flatten_with_path(grads)[0]
  if not leaves:
    raise ValueError("grads must be a non-empty pytree of arrays.")
  norms = {_path_name(path): _global_norm(g) for path, g in leaves}
  global_norm = _global_norm(grads)
  if clip_norm is None:
    clipped = jnp.zeros((), jnp.bool_)
    scale = jnp.ones((), jnp.float32)
  else:
    if not float(clip_norm) > 0:
      raise ValueError(f"clip_norm must be > 0, got {clip_norm!r}.")
    clipped = global_norm > clip_norm
    scale = clip_norm / jnp.maximum(global_norm, clip_norm)
  return {"global_norm": global_norm, "norms": norms, "clipped": clipped, "clip_scale": scale}
