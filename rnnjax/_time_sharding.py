"""Linear recurrences with the time axis sharded over devices (blocked parallel prefix).

:func:`sharded_linear_scan` computes, for a sequence whose time axis is split
over the devices of a mesh axis (``NamedSharding(mesh, P(axis_name))``),

.. math::

   h_t = a_t \\odot h_{t-1} + b_t \\quad\\text{(elementwise: } a_t, b_t, h_t \\in \\mathbb{R}^{\\dots})

or, with ``a`` one axis longer than ``b``, the affine form used by DEER /
Newton solves of nonlinear recurrences,

.. math::

   h_t = A_t h_{t-1} + b_t, \\qquad A_t \\in \\mathbb{R}^{D\\times D},\\ b_t, h_t \\in \\mathbb{R}^{D},

with ``h_{-1} = h0``, as the blocked parallel prefix algorithm
(Blelloch 1990, section 1.4): device ``d`` holds the block ``T_d`` of
``T / n`` steps and

1. scans its block with ``jax.lax.associative_scan`` on the pairs
   ``(a_t, b_t)`` under ``(a_2, b_2) o (a_1, b_1) = (a_2 a_1, a_2 b_1 + b_2)``,
   giving ``h_t = P_t h_in + Q_t`` for the unknown block input ``h_in``
   (``P_t`` the product of the ``a`` since the block start, ``Q_t`` the block's
   zero-input prefix);
2. all-gathers the block totals ``(P_last, Q_last)`` (one ``[...]`` or
   ``[D, D]`` + ``[D]`` element per device) and composes them in device order
   from ``h0``: ``h_in[0] = h0``, ``h_in[d+1] = P_last[d] h_in[d] + Q_last[d]``
   -- a scan over ``n`` elements, the only cross-device step;
3. finishes locally: ``h_t = P_t h_in[d] + Q_t``.

Communication is one all-gather of ``n`` block totals, whatever ``T``; work
is ``O(T/n log(T/n))`` per device, the result is sharded like the input.
The result equals the unsharded scan up to float summation order.

Reference: G. E. Blelloch, "Prefix sums and their applications", CMU-CS-90-190
(1990); Lim et al., "Parallelizing non-linear sequential models over the
sequence length" (DEER), ICLR 2024.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _matmul(A, B):
  return jnp.einsum("...ij,...jk->...ik", A, B)


def _matvec(A, x):
  return jnp.einsum("...ij,...j->...i", A, x)


def _ops(matrix):
  if matrix:
    return _matmul, _matvec
  return (lambda x, y: x * y), (lambda x, y: x * y)


def linear_scan(a, b, h0):
  """The unsharded ``h_t = a_t h_{t-1} + b_t`` (elementwise, or affine when
  ``a.ndim == b.ndim + 1``) by one associative scan; returns ``h`` shaped as ``b``."""
  matrix = _check(a, b, h0)
  mul, apply = _ops(matrix)

  def combine(e1, e2):
    a1, b1 = e1
    a2, b2 = e2
    return mul(a2, a1), apply(a2, b1) + b2

  Pt, Qt = jax.lax.associative_scan(combine, (a, b))
  return apply(Pt, jnp.broadcast_to(h0, b.shape[1:])[None]) + Qt


def _check(a, b, h0):
  a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
  if b.ndim < 1:
    raise ValueError(f"b must have a leading time axis, got shape {b.shape}.")
  if a.ndim == b.ndim:
    matrix = False
    if a.shape != b.shape:
      raise ValueError(f"a (shape {a.shape}) and b (shape {b.shape}) must have the same shape "
                       "for the elementwise recurrence.")
  elif a.ndim == b.ndim + 1:
    matrix = True
    D = b.shape[-1]
    if a.shape != b.shape + (D,):
      raise ValueError(f"for the affine recurrence a must be shaped b.shape + (D,) = "
                       f"{b.shape + (D,)}, got {a.shape}.")
  else:
    raise ValueError(f"a must have the shape of b {b.shape} (elementwise) or b.shape + (D,) "
                     f"(affine), got {a.shape}.")
  if h0.shape != b.shape[1:]:
    raise ValueError(f"h0 must have shape {b.shape[1:]} (b without its time axis), got {h0.shape}.")
  return matrix


def sharded_linear_scan(a, b, h0, mesh, axis_name: str):
  """``h_t = a_t h_{t-1} + b_t`` with the time axis (axis 0) sharded over ``mesh[axis_name]``.

  Args:
    a: ``[T, ...]`` (elementwise) or ``[T, ..., D, D]`` (affine; ``b`` then
      ``[T, ..., D]``).
    b: ``[T, ...]``.
    h0: ``[...]`` (``b`` without its time axis), the state before step 0.
    mesh: a ``jax.sharding.Mesh``.
    axis_name: the mesh axis the time axis is split over; ``T`` must be
      divisible by its size. Other mesh axes replicate.

  Returns:
    ``h`` ``[T, ...]`` with ``NamedSharding(mesh, P(axis_name))``.
  """
  matrix = _check(a, b, h0)
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}.")
  n = mesh.shape[axis_name]
  T = jnp.shape(b)[0]
  if T % n:
    raise ValueError(f"the time axis (length {T}) must be divisible by the size {n} of mesh "
                     f"axis {axis_name!r}.")
  mul, apply = _ops(matrix)

  def combine(e1, e2):
    a1, b1 = e1
    a2, b2 = e2
    return mul(a2, a1), apply(a2, b1) + b2

  def block(a_loc, b_loc, h0):
    Pt, Qt = jax.lax.associative_scan(combine, (a_loc, b_loc))          # step 1
    tot_a = jax.lax.all_gather(Pt[-1], axis_name)                        # step 2: [n, ...]
    tot_b = jax.lax.all_gather(Qt[-1], axis_name)

    def carry_step(h, e):
      pa, qb = e
      return apply(pa, h) + qb, h                                         # emits the block input

    # The gathered totals are typed device-varying; so must the carry be.
    h0 = jax.lax.pcast(h0, (axis_name,), to="varying")
    _, h_in = jax.lax.scan(carry_step, h0, (tot_a, tot_b))
    mine = h_in[jax.lax.axis_index(axis_name)]
    return apply(Pt, mine[None]) + Qt                                    # step 3

  f = jax.shard_map(block, mesh=mesh, in_specs=(P(axis_name), P(axis_name), P()),
                    out_specs=P(axis_name))
  return f(a, b, h0)


def sharded_newton_scan(step, h0, xs, mesh, axis_name: str, *, iters: int = 10):
  """Nonlinear ``h_t = step(h_{t-1}, x_t)`` by Newton iterations (DEER) over a time-sharded mesh.

  Each iteration linearises every step around the current trajectory guess
  ``H`` (``J_t = d step / d h`` at ``(H_{t-1}, x_t)``) and solves the linear
  recurrence ``h_t = J_t h_{t-1} + (step(H_{t-1}, x_t) - J_t H_{t-1})`` with
  :func:`sharded_linear_scan`; the Jacobians are computed where the time
  steps live, and the shift ``H_{t-1}`` across block boundaries is left to
  XLA (one neighbour exchange). Newton converges in at most ``T`` iterations
  and, for contractive cells, in a few (Lim et al., ICLR 2024).

  Args:
    step: ``(h [D], x [...]) -> h [D]``, differentiable in ``h``.
    h0: ``[D]``.
    xs: ``[T, ...]`` inputs, time on axis 0 (``T`` divisible by the mesh axis).
    mesh, axis_name: as :func:`sharded_linear_scan`.
    iters: Newton iterations (fixed, so the function is jittable).

  Returns:
    ``h`` ``[T, D]`` sharded along T.
  """
  from jax.sharding import NamedSharding
  h0 = jnp.asarray(h0)
  if h0.ndim != 1:
    raise ValueError(f"h0 must be a vector [D], got shape {h0.shape}.")
  T = jax.tree_util.tree_leaves(xs)[0].shape[0]
  sh = NamedSharding(mesh, P(axis_name))

  def newton(H, _):
    H_prev = jnp.concatenate([h0[None], H[:-1]], axis=0)
    H_prev = jax.lax.with_sharding_constraint(H_prev, sh)
    fH = jax.vmap(step)(H_prev, xs)
    J = jax.vmap(jax.jacfwd(step, argnums=0))(H_prev, xs)          # [T, D, D]
    r = fH - jnp.einsum("tij,tj->ti", J, H_prev)
    return sharded_linear_scan(J, r, h0, mesh, axis_name), None

  H0 = jax.lax.with_sharding_constraint(jnp.zeros((T,) + h0.shape, h0.dtype), sh)
  H, _ = jax.lax.scan(newton, H0, None, length=iters)
  return H
