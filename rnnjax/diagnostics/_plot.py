"""Plotting the diagnostics (matplotlib is an optional dependency: ``pip install rnnjax[plot]``)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import os

import numpy as np


def _require_matplotlib():
  try:
    import matplotlib  # noqa: F401
    from matplotlib.figure import Figure
  except ImportError:
    raise ImportError("plot_gradient_norms needs matplotlib (an optional dependency): "
                      "pip install 'rnnjax[plot]' or pip install matplotlib.") from None
  return Figure


def plot_gradient_norms(reports: Any, path: str = "gradient_norms.png", *,
                        title: Optional[str] = None,
                        labels: Optional[Sequence[str]] = None) -> str:
  """Draws ``||dh_T/dh_i||`` and ``||dL/dh_i||`` against the lag for one or more reports.

  One colour per report; solid: ``||dh_{L-1}/dh_i||`` (the Jacobian product);
  dashed: ``||dL/dh_i|| / ||dL/dh_{L-1}||`` (the adjoint, normalised to 1 at
  lag 0 so both curves start together). Both are geometric means over the
  batch (:meth:`Report.jacobian_by_lag`), on a log y axis; values below
  1e-300 are drawn at 1e-300.

  Args:
    reports: a :class:`Report` or a sequence of them.
    path: where to save the PNG (its folder is created).
    title: figure title.
    labels: legend labels (default: each report's ``name``).

  Returns:
    ``path``.

  Raises:
    ImportError: when matplotlib is not installed.
  """
  Figure = _require_matplotlib()
  if not isinstance(reports, (list, tuple)):
    reports = [reports]
  if not reports:
    raise ValueError("reports must hold at least one Report.")
  if labels is None:
    labels = [r.name for r in reports]
  if len(labels) != len(reports):
    raise ValueError(f"labels has {len(labels)} entries for {len(reports)} reports.")
  fig = Figure(figsize=(8, 5), dpi=110)
  ax = fig.add_subplot()
  floor = -690.0  # log(1e-300)
  for j, (r, lab) in enumerate(zip(reports, labels)):
    color = f"C{j % 10}"
    jac = r.jacobian_by_lag()
    adj = r.adjoint_by_lag()
    lag = np.arange(jac.shape[0])
    ax.plot(lag, np.exp(np.maximum(jac, floor)), color=color, lw=1.8, label=lab)
    if np.isfinite(adj[0]):
      adj = adj - adj[0]
    ax.plot(lag, np.exp(np.maximum(adj, floor)), color=color, lw=1.2, ls="--")
  ax.plot([], [], color="k", lw=1.8, label="solid: ||dh_T/dh_i||")
  ax.plot([], [], color="k", lw=1.2, ls="--", label="dashed: ||dL/dh_i|| / ||dL/dh_T||")
  ax.set_yscale("log")
  ax.set_xlabel("lag T-1-i (steps back from the last state)")
  ax.set_ylabel("gradient norm")
  ax.set_title(title or "Gradient norms by lag")
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  folder = os.path.dirname(os.fspath(path))
  if folder:
    os.makedirs(folder, exist_ok=True)
  fig.savefig(path)
  return path
