"""The real clocks: the one place in agent/ that reads the wall clock.

Everything else receives its clock (a `Callable[[], datetime]` or `Callable[[], float]`) from the caller, so
tests can fix time; ruff's banned-api (pyproject.toml) rejects `time.time()`, `datetime.now()`,
`datetime.utcnow()` and `date.today()` anywhere else in agent/. `time.monotonic()` is not a wall clock and
stays allowed everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

WallClock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current wall-clock time, timezone-aware in UTC (OCPP timestamps, schedules, expiry dates)."""
    return datetime.now(UTC)


def wall_time() -> float:
    """The current wall-clock time as POSIX seconds."""
    return time.time()
