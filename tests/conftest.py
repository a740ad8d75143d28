"""Test-only settings. JAX runs on the CPU; float32 is the default dtype.

* Tests that compare against an exact float64 reference use the ``x64``
  fixture (``jax.enable_x64(True)`` for the duration of the test), never a
  global flag.
* Dtype promotion is strict (``jax_numpy_dtype_promotion="strict"``): an
  implicit float32/float64 or int/float mix inside rnnjax is a test failure.
* Warnings are errors (``filterwarnings`` in pyproject.toml, with the
  third-party ones listed and explained there).
* XLA:CPU compiles with LLVM's optimisation level 0
  (``--xla_backend_optimization_level=0`` appended to ``XLA_FLAGS``, so
  subprocesses inherit it): the suite is dominated by compiling many tiny
  programs, and this cut its CPU time by 20-27% (measured on tests/test_cells.py
  and the example tests). It changes code generation only, not the HLO
  (fusions, buffer assignment) nor IEEE float semantics. Set
  ``RNNJAX_TEST_XLA_OPT=1`` to test with the default optimisation instead.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if os.environ.get("RNNJAX_TEST_XLA_OPT") != "1" and \
    "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
