"""agent/ reads the wall clock only through agent/core/clock.py; everything else gets its clock injected, so
tests can fix the time (issue 9, C1: a test with a fixed date broke once that date passed, because
AuthStore read the real clock). ruff's banned-api (pyproject.toml) enforces it; this runs it in the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WALL_CLOCK_READS = """import time
from datetime import UTC, date, datetime

print(time.time(), datetime.now(UTC), datetime.utcnow(), date.today(), time.monotonic())
"""


def banned_clock_calls(code: str | None, filename: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "TID251", "--output-format", "concise"]
    argv += ["--stdin-filename", filename, "-"] if code is not None else ["agent"]
    return subprocess.run(argv, cwd=REPO, input=code, capture_output=True, text=True, timeout=60)


def test_no_module_of_agent_reads_the_wall_clock_itself():
    result = banned_clock_calls(None, "")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_ban_catches_every_wall_clock_read_but_not_the_monotonic_clock():
    result = banned_clock_calls(WALL_CLOCK_READS, "agent/new_module.py")
    banned = sorted(line.split("`")[1] for line in result.stdout.splitlines() if "TID251" in line)
    assert banned == ["datetime.date.today", "datetime.datetime.now", "datetime.datetime.utcnow", "time.time"]


def test_agent_clock_is_the_one_module_allowed_to_read_it():
    assert banned_clock_calls(WALL_CLOCK_READS, "agent/core/clock.py").returncode == 0
