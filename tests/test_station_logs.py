"""agent.logs.StationLogs: a station's loggers tag and redact its records themselves, whichever handler
receives them, so two stations in one process neither share secrets nor need a filter on the root logger."""

from __future__ import annotations

import logging

import pytest

from agent import logs


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured():
    handler = Records()
    logger = logging.getLogger("evse.test_station_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def test_each_station_redacts_its_own_secrets_in_message_and_traceback(captured):
    first, second = logs.StationLogs("CP-A", tag_lines=True), logs.StationLogs("CP-B", tag_lines=True)
    first.add_basic_auth_secret("CP-A", "secret-of-station-a")
    second.add_basic_auth_secret("CP-B", "secret-of-station-b")
    try:
        raise ValueError("refused secret-of-station-a")
    except ValueError:
        first.logger("evse.test_station_logs").exception("login with %s failed", "secret-of-station-a")
    second.logger("evse.test_station_logs").warning("100%% sure: %s", "secret-of-station-b")
    second.logger("evse.test_station_logs").info("100% no args")

    a, b, c = captured.records
    assert (a.station_id, b.station_id) == ("CP-A", "CP-B")
    assert a.getMessage() == "[CP-A] login with [redacted] failed"
    assert "secret-of-station-a" not in a.exc_text and "refused [redacted]" in a.exc_text
    assert b.getMessage() == "[CP-B] 100% sure: [redacted]"
    assert c.getMessage() == "[CP-B] 100% no args"
    assert first.redact("secret-of-station-b") == "secret-of-station-b"  # not registered by the other one
    assert logs.REDACTOR.redact("secret-of-station-a") == "secret-of-station-a"  # nothing process-wide


def test_a_record_names_the_line_that_logged_it_and_a_lone_station_is_untagged(captured):
    station = logs.StationLogs("CP-1")  # `evse run`: one station, its lines as they always were
    station.logger("evse.test_station_logs").info("50%% of %s", "nothing")
    station.logger("evse.test_station_logs").info("plain 50%")  # no args: the message is not formatted
    first, second = captured.records
    assert first.getMessage() == "50% of nothing" and second.getMessage() == "plain 50%"
    assert first.station_id == "CP-1"
    assert first.pathname == __file__ and first.funcName == "test_a_record_names_the_line_that_logged_it_and_a_lone_station_is_untagged"


def test_a_station_that_owns_the_process_also_feeds_the_process_wide_filter():
    redactor = logs.RedactSecrets()
    station = logs.StationLogs("CP-1", process_redactor=redactor)
    station.add_basic_auth_secret("CP-1", "the-only-station-key")
    assert redactor.redact("key the-only-station-key") == "key [redacted]"


def test_every_station_component_logs_through_its_station_s_logger():
    """A component a station owns logs with `self.log` (tagged, redacted per station), not the module's logger:
    tools/station_logger.py --check lists any module-level logger call left in those classes."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, str(repo / "tools" / "station_logger.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
