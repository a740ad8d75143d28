"""Every ```python block of README.md runs as written, in order, in one namespace."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
  text = README.read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_blocks():
  assert len(_blocks()) >= 3


def test_readme_blocks_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # anything the blocks write lands in a temp folder
  ns = {"__name__": "__readme__"}
  for i, block in enumerate(_blocks()):
    try:
      exec(compile(block, f"README.md block {i}", "exec"), ns)
    except Exception as e:  # pragma: no cover - the failure message is the point
      pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}")
