r"""Jacobian-product diagnostics: measure vanishing and exploding gradients.

Backpropagation through time multiplies per-step Jacobians: for a loss ``L``
that reads the last state,

.. math::
   \frac{\partial L}{\partial h_i} = \Big(\frac{\partial h_{T-1}}{\partial h_i}\Big)^{\!T}
   \frac{\partial L}{\partial h_{T-1}}, \qquad
   \frac{\partial h_{T-1}}{\partial h_i} = J_{T-1} J_{T-2} \cdots J_{i+1},\qquad
   J_t = \frac{\partial h_t}{\partial h_{t-1}},

so the gradient vanishes or explodes like the norm of that product (for a
linear RNN ``h_t = W h_{t-1} + U x_t`` it is ``W^{T-1-i}``; for a simple RNN
``J_t = \mathrm{diag}(f'(a_t)) W`` with ``sigmoid' <= 1/4``, ``tanh' <= 1``).
This module measures it, exactly or cheaply, for every rnnjax cell.

Conventions
-----------
* The carry produced at step ``i`` (after reading ``xs[..., i, :]``) is
  ``h_i``; the initial carry is ``h_{-1}``. Index ``i`` of every per-step
  array refers to ``h_i``, so arrays line up with ``ys``.
* The state of a carry with several leaves (the LSTM's ``LSTMCarry(h, c)``,
  a :class:`rnnjax.Stack`'s tuple) is all leaves flattened together, in
  ``jax.tree_util`` order (``[h, c]``; layer by layer), ``D = sum S_j``.
  ``leaf=`` restricts rows and columns to one leaf, by index or name
  (``"h"``, ``"c"``, ``"[1].c"``): e.g. ``||E_c^T (dh_{T-1}/dh_i) E_c||``.
* Unbatched ``xs [T, I]`` give per-step arrays ``[T]``; batched
  ``[*B, T, I]`` give ``[*B, T]``. Each sequence is measured on its own.
* Exponents, decay rates and ``log=True`` values are natural logs, per step.
* With ``lengths``, the last state of sequence ``b`` is its last valid one,
  ``h_{L_b-1}``: ``jacobian_norms`` measures ``dh_{L_b-1}/dh_i``, and every
  per-step entry ``i >= L_b`` is NaN (never a silently wrong number).
  Lyapunov exponents average over the valid steps only.
* Everything is pure and jit-able (cells and flags are static), and the
  matrix-free methods keep memory ``O(T D)``, never ``O(T D^2)``.

Functions
---------
* :func:`step_jacobians` -- ``[*B, T, D, D]`` exact ``J_i`` (small D).
* :func:`jacobian_norms` -- ``[*B, T]``: ``||dh_{T-1}/dh_i||`` by
  ``"exact"`` (log-space renormalised accumulation), ``"power"`` (spectral,
  matrix-free block power iteration) or ``"hutchinson"`` (Frobenius, random
  probes, one VJP sweep for every lag); ``log=True`` for ``log`` norms that
  stay exact where the norm under/overflows (0.5 per step over 3,000 steps).
* :func:`adjoint_norms` -- ``[*B, T]``: ``||dL/dh_i||`` for any
  ``loss_fn(ys, final_carry)`` in one backward pass (a zero perturbation is
  injected into each carry inside the scan and differentiated).
* :func:`lyapunov_exponents` -- ``[*B, k]``: Benettin's QR method,
  ``J_t Q_{t-1} = Q_t R_t``, ``lambda_j = mean_t log R_t[j, j]``.
* :func:`saturation` -- saturated fraction and mean derivative per gate
  (thresholds in :mod:`rnnjax.diagnostics._saturation`: sigmoid outside
  [0.1, 0.9], ``|tanh| > 0.9``, ReLU off).
* :func:`diagnose` -> :class:`Report` -- all of the above with a decay rate
  (slope of log norm vs lag), memory horizon (first lag with norm below
  ``fraction = 0.01``) and a verdict (``"vanishing"``, ``"exploding"``,
  ``"stable"``, or ``"undetermined"`` when T = 1 or a norm is NaN; non-finite
  inputs raise); :func:`summary_table` prints several reports.
* :func:`plot_gradient_norms` -- one PNG of ``||dh_T/dh_i||`` and
  ``||dL/dh_i||`` by lag for one or several reports (needs matplotlib).
* :func:`vanishing_study` -- sigmoid RNN, tanh RNN, IRNN, LSTM and GRU at
  init on the adding problem: a table and a PNG (``rnnjax demo``, step 2).
* :func:`gradient_stats` -- for the training loop: global and per-parameter
  gradient norms and whether global-norm clipping fired (from
  :mod:`rnnjax.diagnostics._gradstats`, used by ``rnnjax.train``).

Example::

  import jax, rnnjax as rj
  from rnnjax import diagnostics as rd
  cell = rj.LSTM(64)
  params = cell.init(jax.random.key(0), input_size=2)
  xs = jax.random.uniform(jax.random.key(1), (8, 200, 2))
  print(rd.diagnose(cell, params, xs))
  rd.jacobian_norms(cell, params, xs, method="hutchinson", ord="fro", log=True)  # [8, 200]
"""

from rnnjax.diagnostics._core import leaf_names as leaf_names
from rnnjax.diagnostics._jacobians import adjoint_norms as adjoint_norms
from rnnjax.diagnostics._jacobians import jacobian_norms as jacobian_norms
from rnnjax.diagnostics._jacobians import step_jacobians as step_jacobians
from rnnjax.diagnostics._lyapunov import lyapunov_exponents as lyapunov_exponents
from rnnjax.diagnostics._plot import plot_gradient_norms as plot_gradient_norms
from rnnjax.diagnostics._report import Report as Report
from rnnjax.diagnostics._report import diagnose as diagnose
from rnnjax.diagnostics._report import summary_table as summary_table
from rnnjax.diagnostics._saturation import GateSaturation as GateSaturation
from rnnjax.diagnostics._saturation import saturation as saturation
from rnnjax.diagnostics._study import adding_inputs as adding_inputs
from rnnjax.diagnostics._study import vanishing_study as vanishing_study
from rnnjax.diagnostics._gradstats import gradient_stats as gradient_stats

__all__ = [
    "GateSaturation", "Report", "adding_inputs", "adjoint_norms", "diagnose",
    "gradient_stats", "jacobian_norms", "leaf_names", "lyapunov_exponents", "plot_gradient_norms",
    "saturation", "step_jacobians", "summary_table", "vanishing_study",
]
