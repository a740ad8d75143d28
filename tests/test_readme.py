"""Every ```python block of README.md runs as written, in order, in one namespace
(a block that uses an earlier block's names says so in the text before it).

A block followed by "prints" and a plain ``` block must print exactly that text
(the diagnostics' numbers are deterministic); numbers the README gives as "about"
are checked against the range it states."""
import contextlib
import io
import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
  text = README.read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _printed():
  """{python block source: the output the README says it prints}."""
  text = README.read_text()
  return dict(re.findall(r"```python\n(.*?)```\n\nprints\n\n```\n(.*?)```", text, flags=re.S))


def test_readme_has_python_blocks():
  assert len(_blocks()) >= 3
  assert len(_printed()) >= 1


def test_readme_blocks_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # anything the blocks write lands in a temp folder
  ns = {"__name__": "__readme__"}
  printed = _printed()
  for i, block in enumerate(_blocks()):
    out = io.StringIO()
    try:
      # As a user runs them: JAX's default dtype promotion (conftest's strict mode is
      # for rnnjax's own code; optax's Adam mixes a Python float with an int32 count).
      with contextlib.redirect_stdout(out), jax.numpy_dtype_promotion("standard"):
        exec(compile(block, f"README.md block {i}", "exec"), ns)
    except Exception as e:  # pragma: no cover - the failure message is the point
      pytest.fail(f"README python block {i} failed: {type(e).__name__}: {e}\n{block}")
    if block in printed:
      assert out.getvalue() == printed[block], (
          f"README block {i} printed\n{out.getvalue()}\nbut the README shows\n{printed[block]}")
    if "eval_loss" in block:  # the training example: "0.001-0.004" (0.0014 on one thread,
      # 0.0036-0.0038 on two; the baseline is 1/6)
      assert 0.0007 < ns["last"]["eval_loss"] < 0.006, ns["last"]


@pytest.mark.slow
def test_rnnjax_diagnose_prints_the_readme_report(tmp_path, monkeypatch, capsys):
  # The README: "`rnnjax diagnose --cell lstm --hidden 64 --T 200 --batch 4` prints the same report".
  text = README.read_text()
  assert "rnnjax diagnose --cell lstm --hidden 64 --T 200 --batch 4" in text
  report = next(out for block, out in _printed().items() if "rd.diagnose(" in block)
  report = report[:report.index("(4, 200)")]  # the report, without the shapes printed after it
  monkeypatch.chdir(tmp_path)
  from rnnjax import cli
  assert cli.main(["diagnose", "--cell", "lstm", "--hidden", "64", "--T", "200", "--batch", "4",
                   "--no-plot"]) == 0
  assert report in capsys.readouterr().out
