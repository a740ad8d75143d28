"""The ``rnnjax`` command: --version, help texts, one-line errors, diagnose as
documented, and ``rnnjax bench`` run from outside the repository."""

import argparse
import os
import re
import subprocess
import sys

import jax
import pytest

import rnnjax
from rnnjax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBCOMMANDS = ("demo", "diagnose", "bench")


def _subparsers(parser):
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      return action.choices
  raise AssertionError("no subcommands")


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"rnnjax {rnnjax.__version__}"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_shows_every_default_and_no_rest(command, capsys):
  parser = cli.build_parser()
  sub = _subparsers(parser)[command]
  fmt = cli.HelpFormatter(sub.prog)
  for action in sub._actions:
    if action.dest in ("help",):
      continue
    assert action.help, (command, action.dest)
    # Every option's help shows its default (or, for None, says what it is).
    assert "default" in fmt._get_help_string(action), (command, action.dest)
  with pytest.raises(SystemExit):
    cli.main([command, "--help"])
  text = capsys.readouterr().out
  assert "(default: " in text
  # No reStructuredText markup in the help.
  for marker in ("``", ":func:", ":class:", ":meth:", ".. ", "::\n"):
    assert marker not in text, (command, marker)


BAD = [
    (["diagnose", "--T", "x"], 2, "rnnjax diagnose: error: argument --T: invalid int value"),
    (["diagnose", "--T", "1"], 1, "rnnjax diagnose: error: --T must be >= 2, got 1."),
    (["diagnose", "--cell", "nope"], 1, "rnnjax diagnose: error: --cell must be one or more of"),
    (["diagnose", "--method", "svd"], 2, "rnnjax diagnose: error: argument --method: invalid choice"),
    (["demo", "--steps", "0"], 1, "rnnjax demo: error: --steps must be >= 1, got 0."),
    (["demo", "--lr", "-1"], 1, "rnnjax demo: error: --lr must be > 0, got -1.0."),
    (["demo", "--bogus"], 2, "rnnjax: error: unrecognized arguments: --bogus"),
    (["bench", "--rounds", "0"], 1, "rnnjax bench: error: --rounds must be >= 1, got 0."),
    (["bench", "--cells", "foo"], 1, "rnnjax bench: error: --cells: unknown ['foo']"),
    (["bench", "--presets", "huge"], 1, "rnnjax bench: error: --presets: unknown ['huge']"),
    (["nope"], 2, "rnnjax: error: argument"),
]


@pytest.mark.parametrize("argv,code,message", BAD)
def test_bad_options_fail_with_one_line(argv, code, message, capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    cli.main(argv + (["--out", str(tmp_path)] if argv[0] == "bench" else []))
  # argparse's own errors print and exit with 2; our checks raise SystemExit(message) -> 1.
  got = e.value.code
  text = capsys.readouterr().err if isinstance(got, int) else got + "\n"
  assert (got if isinstance(got, int) else 1) == code
  assert text.startswith(message), text
  assert text.count("\n") == 1 and "Traceback" not in text


def test_errors_from_a_shell_are_one_line():
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, "-m", "rnnjax.cli", "diagnose", "--batch", "0"],
                        capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 1
  assert proc.stderr == "rnnjax diagnose: error: --batch must be >= 1, got 0.\n"
  assert proc.stdout == ""


def test_diagnose_prints_what_the_documented_python_prints(capsys, tmp_path):
  # The help says: cell.init(key(seed), 2), adding_inputs(key(seed + 1), batch, T),
  # diagnose(..., key=key(seed)). Small sizes; README's own numbers: test_readme.
  from rnnjax import diagnostics as rd
  assert cli.main(["diagnose", "--cell", "gru", "--hidden", "6", "--T", "24", "--batch", "2",
                   "--seed", "3", "--warmup", "2", "--no-plot"]) == 0
  out = capsys.readouterr().out
  cell = rnnjax.GRU(6)
  params = cell.init(jax.random.key(3), 2)
  xs = rd.adding_inputs(jax.random.key(4), batch=2, T=24)
  report = rd.diagnose(cell, params, xs, warmup=2, key=jax.random.key(3))
  assert str(report) in out


@pytest.mark.slow
def test_bench_runs_from_outside_the_repository(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "rnnjax.cli", "bench", "--quick", "--cells", "simple",
       "--presets", "tiny", "--impls", "rnnjax", "--modes", "fwd", "--no-plot"],
      cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = tmp_path / "rnnjax_bench"  # the default --out of `rnnjax bench`: the working folder
  assert (out / "results.json").exists() and (out / "results.md").exists()
  assert re.search(r"simple.*tiny", (out / "results.md").read_text())
