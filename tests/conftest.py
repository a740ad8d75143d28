"""Test-only settings. JAX runs on the CPU; float32 is the default dtype.

Tests that compare against an exact float64 reference use the ``x64`` fixture
(``jax.enable_x64(True)`` for the duration of the test), never a global flag.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
