"""mypy inside the suite (so CI runs it): all of agent/ and hal/ pass mypy with the project's configuration
(pyproject.toml's [tool.mypy], issue 10), the modules of its strict override strictly (issue 9, C12)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def mypy_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]


def strict_modules() -> list[Path]:
    """The existing files of the modules pyproject.toml checks strictly."""
    names = [name for override in mypy_config()["overrides"] if override.get("disallow_untyped_defs")
             for name in override["module"]]
    return [path for name in names if (path := REPO / (name.replace(".", "/") + ".py")).exists()]


def source_files(folders: list[str]) -> list[Path]:
    return [path for folder in folders for path in (REPO / folder).rglob("*.py")]


def test_agent_and_hal_pass_mypy_with_the_strict_modules_strictly(tmp_path):
    modules = strict_modules()
    assert REPO / "agent" / "core" / "controller.py" in modules and REPO / "agent" / "station" / "journal.py" in modules
    assert mypy_config()["files"] == ["agent", "hal"]
    checked = source_files(["agent", "hal"])
    assert set(modules) <= set(checked)  # the strict override applies to files that are checked
    # the project configuration: `python3 -m mypy` alone checks what CI checks
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                            cwd=REPO, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    # every file of agent/ and hal/ was checked: none silently dropped
    assert f"no issues found in {len(checked)} source files" in result.stdout, result.stdout
