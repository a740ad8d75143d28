"""Parallel-in-time evaluation of recurrent cells.

* :func:`newton_scan` -- any cell, by Newton's method over the whole sequence
  (DEER, quasi-DEER, ELK), each iteration an associative scan; converged to
  the sequential scan's answer or it falls back to it (with a warning).
* :func:`scan_dispatch` -- the same behind ``rnnjax.scan``'s signature, plus
  ``impl="associative"`` for the linear-recurrence cells (``MinGRU``,
  ``MinLSTM``, ``LRU``).
* :func:`linear_scan` -- a linear-recurrence cell on ``jax.lax.associative_scan``.
"""

from rnnjax.parallel._associative import is_linear as is_linear
from rnnjax.parallel._associative import linear_scan as linear_scan
from rnnjax.parallel._associative import scan_dispatch as scan_dispatch
from rnnjax.parallel._newton import LYAPUNOV_THRESHOLD as LYAPUNOV_THRESHOLD
from rnnjax.parallel._newton import METHODS as METHODS
from rnnjax.parallel._newton import NewtonInfo as NewtonInfo
from rnnjax.parallel._newton import newton_scan as newton_scan

__all__ = ["LYAPUNOV_THRESHOLD", "METHODS", "NewtonInfo", "is_linear", "linear_scan",
           "newton_scan", "scan_dispatch"]
