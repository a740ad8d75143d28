"""`python -m build` makes an sdist and a wheel that install and import in a fresh
virtual environment (no network: --no-isolation build, --no-deps install into a venv
that sees this environment's site-packages for the dependencies)."""

import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

import rnnjax

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(cmd, **kw):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
  assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
  return proc.stdout


# Not marked slow: the wheel and sdist are checked in CI.
def test_build_sdist_and_wheel_install_in_a_fresh_venv(tmp_path):
  pytest.importorskip("build")
  dist = tmp_path / "dist"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)],
       env=env)
  version = rnnjax.__version__
  wheel = dist / f"rnnjax-{version}-py3-none-any.whl"
  sdist = dist / f"rnnjax-{version}.tar.gz"
  assert wheel.exists() and sdist.exists(), sorted(os.listdir(dist))
  names = zipfile.ZipFile(wheel).namelist()
  for needed in ("rnnjax/py.typed", "rnnjax/nnx.py", "benchmarks/run.py",
                 "benchmarks/_worker.py", f"rnnjax-{version}.dist-info/licenses/LICENSE"):
    assert needed in names, needed
  assert not any(n.startswith("tests/") for n in names)
  members = tarfile.open(sdist).getnames()
  for needed in ("LICENSE", "README.md", "pyproject.toml", "rnnjax/py.typed"):
    assert f"rnnjax-{version}/{needed}" in members, needed
  meta = zipfile.ZipFile(wheel).read(f"rnnjax-{version}.dist-info/METADATA").decode()
  assert "License-Expression: Apache-2.0" in meta

  for artifact in (wheel, sdist):
    venv = tmp_path / f"venv_{artifact.suffix.strip('.')}"
    # --without-pip: pip and setuptools come from this environment (a venv's own bundled
    # setuptools may be too old for the SPDX license field).
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
         env=env)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
          str(artifact)], env=env)
    # From a folder outside the clone: the installed copy is the one imported.
    out = _run([str(py), "-c", "import rnnjax, benchmarks.run; print(rnnjax.__version__); "
                "print(rnnjax.__file__)"], cwd=tmp_path, env=env)
    got_version, path = out.split()
    assert got_version == version and str(venv) in path, out
    assert _run([str(venv / "bin" / "rnnjax"), "--version"], cwd=tmp_path,
                env=env).strip() == f"rnnjax {version}"
