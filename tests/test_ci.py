"""CI runs the README's test command, and on CI an interop test whose peer is missing fails instead of
skipping (issue 9, C12): otherwise a broken install lets interop silently vanish from a green build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INTEROP_TEST = "tests/test_interop_ocpp_rpc.py::test_the_validator_is_strict"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"^## Test it\n+```sh\n(.+?)\n```", readme, re.MULTILINE | re.DOTALL)
    assert block, "README.md has no 'Test it' command block"
    command = block.group(1).strip()
    report = next((arg for arg in command.split() if arg.startswith("-r")), "")
    assert "s" in report[2:] and "f" in report[2:], "skips must show their reasons, failures their names"
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")][-1] == command
    assert "export CI=true" in lines


def no_apt_get_in_tests():
    return [path.relative_to(REPO) for path in (REPO / "tests").rglob("*.py")
            if path.name != Path(__file__).name and re.search(r"[\"']apt-get[\"']", path.read_text())]


def test_no_test_installs_packages_itself():
    assert no_apt_get_in_tests() == []


def run_interop_test_without_its_peer(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["EVSE_INTEROP_DIR"] = str(tmp_path / "empty-interop")  # setup.sh never ran here
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", INTEROP_TEST],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=110)


def test_an_interop_test_whose_peer_is_missing_skips_with_the_reason_off_ci(tmp_path):
    result = run_interop_test_without_its_peer(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout and "ocpp-rpc is not installed" in result.stdout, result.stdout


def test_an_interop_test_whose_peer_is_missing_fails_on_ci(tmp_path):
    result = run_interop_test_without_its_peer(tmp_path, ci="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 error" in result.stdout or "1 failed" in result.stdout, result.stdout
    assert "ocpp-rpc is not installed" in result.stdout, result.stdout
