"""mypy inside the suite (so CI runs it): the modules listed in pyproject.toml's [tool.mypy] pass strict
checking (issue 9, C12). A listed module that does not exist yet is not an error."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def strict_modules() -> list[Path]:
    """The existing files of the modules pyproject.toml checks strictly."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"]
    names = [name for override in config["overrides"] if override.get("disallow_untyped_defs")
             for name in override["module"]]
    return [path for name in names if (path := REPO / (name.replace(".", "/") + ".py")).exists()]


def test_the_strictly_typed_modules_pass_mypy(tmp_path):
    modules = strict_modules()
    assert REPO / "agent" / "core" / "controller.py" in modules and REPO / "agent" / "station" / "journal.py" in modules
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
                            cwd=REPO, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr
    # exactly the strict modules were checked: none silently dropped by the `exclude` pattern
    assert f"no issues found in {len(modules)} source file" in result.stdout, result.stdout
