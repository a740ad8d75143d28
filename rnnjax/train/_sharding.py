"""Data parallelism with JAX's own sharding: a 1-D device mesh over the batch.

``DataParallel(devices)`` builds ``Mesh(devices, ("data",))``; batches are
placed with ``NamedSharding(mesh, P("data"))`` (axis 0 split across devices)
and params / optimizer state with ``NamedSharding(mesh, P())`` (replicated).
``jax.jit`` then compiles one SPMD program: each device computes the loss on
its slice, and the gradient of the batch-mean loss is all-reduced by XLA, so
the result equals the single-device one up to float summation order. The same
code runs on 1 CPU, 8 GPUs or a TPU slice.

Multi-process (one process per host, JAX's multi-controller runtime): call
``jax.distributed.initialize()`` (or :func:`rnnjax.launch.initialize` under
``python -m rnnjax.launch``) in every process before anything else;
``jax.devices()`` is then the global device list (the default here), each
process's data function returns its *own* rows of the global batch
(:func:`rnnjax.train.process_slice`), :meth:`DataParallel.shard_batch`
assembles the global array with ``jax.make_array_from_process_local_data`` and
:meth:`DataParallel.replicate` the replicated params from each process's
(identical) host values. Every process runs the same ``fit`` call;
checkpoints are written collectively by orbax. See the README section "More
than one machine".
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


class DataParallel:
  """Replicated params, batch split on axis 0 over ``devices`` (default: all)."""

  def __init__(self, devices: Optional[Sequence] = None):
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
      raise ValueError("devices must be a non-empty sequence of jax devices.")
    self.devices = devices
    self.mesh = Mesh(np.array(devices), (AXIS,))
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
    self.replicated = NamedSharding(self.mesh, P())
    self.num_local = len([d for d in devices if d.process_index == jax.process_index()])

  def __len__(self):
    return len(self.devices)

  def check_batch(self, batch, argname="batch"):
    """Raises ValueError unless every leaf's axis 0 divides over the local devices."""
    for leaf in jax.tree_util.tree_leaves(batch):
      shape = np.shape(leaf)
      if not shape:
        raise ValueError(f"{argname} leaves must have a batch axis, got a scalar.")
      if shape[0] % self.num_local:
        raise ValueError(
            f"{argname} has batch size {shape[0]} (shape {shape}), which is not divisible by "
            f"the number of devices ({self.num_local}); use a batch size that is a multiple "
            f"of {self.num_local} or pass devices= with fewer devices.")

  def shard_batch(self, batch):
    """Prepares a (process-local) batch for a step jitted with ``in_shardings``
    ``batch_sharding``: single-process, the host arrays go to ``jit`` as they
    are (it splits them on the way in, the fast path); multi-process, the
    global array is assembled from every process's slice."""
    self.check_batch(batch)
    if jax.process_count() == 1:
      # Device arrays placed elsewhere (e.g. committed to one GPU) are moved;
      # host arrays stay as they are.
      return jax.tree_util.tree_map(
          lambda a: (jax.device_put(a, self.batch_sharding)
                     if isinstance(a, jax.Array) and a.sharding != self.batch_sharding else a),
          batch)
    return jax.tree_util.tree_map(
        lambda a: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(a)),
        batch)

  def replicate(self, tree):
    """Places ``tree`` on every device of the mesh.

    Multi-process, every process passes the same host values (same init,
    same seed) and each fills its own devices; arrays that are already
    global (not fully addressable) are kept as they are.
    """
    if jax.process_count() == 1:
      return jax.device_put(tree, self.replicated)

    def one(a):
      if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(one(jax.random.key_data(a)),
                                        impl=jax.random.key_impl(a))
      if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return a
      a = np.asarray(a)
      return jax.make_array_from_callback(a.shape, self.replicated, lambda idx: a[idx])

    return jax.tree_util.tree_map(one, tree)
