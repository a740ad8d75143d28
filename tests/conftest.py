"""Test-only settings. JAX runs on the CPU; float32 is the default dtype.

* Tests that compare against an exact float64 reference use the ``x64``
  fixture (``jax.enable_x64(True)`` for the duration of the test), never a
  global flag.
* Dtype promotion is strict (``jax_numpy_dtype_promotion="strict"``): an
  implicit float32/float64 or int/float mix inside rnnjax is a test failure.
* Warnings are errors (``filterwarnings`` in pyproject.toml, with the
  third-party ones listed and explained there).
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
