"""The documentation site builds with Sphinx, warnings as errors (a broken
reference, a docstring Sphinx cannot parse or a missing image fails CI)."""

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


# Not marked slow: the issue asks for the docs build in CI.
def test_sphinx_builds_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
       str(REPO / "docs"), str(tmp_path / "html")],
      capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  html = tmp_path / "html"
  api = (html / "api.html").read_text()
  # Every public name has its reference entry.
  import rnnjax
  import rnnjax.train  # noqa: F401  (loads the subpackages)
  for mod in ("rnnjax", "rnnjax.nnx", "rnnjax.train", "rnnjax.diagnostics", "rnnjax.interop"):
    module = sys.modules.get(mod) or __import__(mod, fromlist=["_"])
    for name in module.__all__:
      assert f'id="{mod}.{name}"' in api, f"{mod}.{name} missing from the API reference"
  for page in ("getting_started", "conventions", "nnx", "diagnostics_math", "benchmarks",
               "examples", "cli", "changelog"):
    assert (html / f"{page}.html").exists(), page
  # The gallery's images were copied into the site.
  images = set(os.listdir(html / "_images"))
  assert {"results.png", "vanishing_gradients.png", "nnx_model.png"} <= images, images
