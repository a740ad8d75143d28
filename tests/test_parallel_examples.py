"""examples/parallel_study.py and examples/parallel_training.py in --quick mode."""
import importlib
import os
import sys

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(name, tmp_path):
  if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)
  return importlib.import_module(name).main(["--quick", "--out", str(tmp_path)])


@pytest.mark.slow
def test_parallel_study_quick(tmp_path):
  res = _run("parallel_study", tmp_path)["results"]
  by = {(r["config"], r["T"], r["method"]): r for r in res}
  # Contracting (tanh gain 0.5, lambda_1 < 0): DEER converges in a few iterations.
  r = by[("tanh gain 0.5", 128, "deer")]
  assert r["lyapunov"] < 0 and r["converged"] and r["iterations"] <= 12 and r["err"] < 1e-4
  # Every result (converged or fallen back) equals the sequential scan.
  assert all(r["err"] < 1e-3 for r in res)
  # Chaotic (gain 2.0, lambda_1 > 0): more iterations than the contracting one, or none converge.
  c = by[("tanh gain 2.0", 128, "deer")]
  assert c["lyapunov"] > 0
  assert (not c["converged"]) or c["iterations"] > r["iterations"]
  assert os.path.exists(tmp_path / "parallel_study.png")


@pytest.mark.slow
def test_parallel_training_quick(tmp_path):
  r = _run("parallel_training", tmp_path)
  # Same loss curve (float32 round-off) for the associative and the sequential scan.
  assert r["rel_diff"] < 1e-3
  assert os.path.exists(tmp_path / "parallel_training.png")
