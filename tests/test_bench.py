"""The benchmarks run (at --size tiny) and print their figures. No timing is asserted: figures are reported
by `python -m bench`, not judged by the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import FIGURES

REPO = Path(__file__).resolve().parent.parent

# figure (or baseline) lines each benchmark must print: labels only, never values
EXPECTED = {
    "reaction": ["detection + decision: pilot change -> contactor command: p50", "C->B (open) only: p50",
                 "B->C (close) only: p50"],
    "isolation": [f"{attack}: C->B -> contactor open: p50" for attack in
                  ("quiet", "journal stalls", "5 MB frame", "frames", "GC pressure", "trickle download")],
    "c_to_b": ["C->B -> contactor open (sim marks): p50"],
    "idle": ["agent process RSS (VmRSS) =", "control process RSS (VmRSS) =", "RSS (VmRSS) = both processes together",
             "CPU while idle = both processes together", "control process code imports:"],
    "boot": ["run 1:", "median ="],
    "journal": ["MeterValues, write-back commit (add_meter_values) =",
                "StartTransaction/StopTransaction, fsynced commit ="],
    "replay": ["agent replay (best of 2) =", "bare ocpp loop, library defaults", "fastest bare ocpp loop ="],
    "flash": ["per charging hour, from the 1 s run =", "per charging hour, from the 10 s run ="],
}


def test_every_figure_is_covered():
    assert set(EXPECTED) == set(FIGURES)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("figure", list(FIGURES))
def test_benchmark_runs_and_prints_its_figures(figure):
    result = subprocess.run([sys.executable, "-m", "bench", figure, "--size", "tiny"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                            timeout=85)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"== {figure}:" in out
    assert "machine:" in out and "Python" in out
    figure_lines = [line for line in out.splitlines() if line.startswith(("figure:", "baseline:"))]
    for label in EXPECTED[figure]:
        assert any(label in line for line in figure_lines), f"no figure line {label!r} in:\n{out}"
    assert any(line.startswith("target:") for line in out.splitlines()), out
