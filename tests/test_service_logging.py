"""Logging (agent.logs): secrets redacted whoever logs them; journald priorities under systemd."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os

import pytest

from agent import logs
from agent.logs import JournalFormatter, RedactSecrets, syslog_priority
from tests.agent_harness import STATION_ID, TAG_OK, Agent, charge, registered, write_config

CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\nAbCdEf==\n-----END CERTIFICATE-----"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----"


@pytest.fixture
def logged():
    """A logger whose handler carries the filter, as the agent's root handler does; returns (logger, output)."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    redactor = RedactSecrets()
    redactor.add_secret("Pa55-word!")
    handler.addFilter(redactor)
    logger = logging.getLogger("test.redaction")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield logger, output
    logger.removeHandler(handler)


def test_redaction_of_credentials_certificates_keys_and_configured_secrets(logged):
    logger, output = logged
    token = base64.b64encode(b"CP-1:Pa55-word!").decode()
    logger.info("headers: {'Authorization': 'Basic %s', 'Host': 'csms'}", token)
    logger.info("Authorization: Basic %s", base64.b64encode(b"CP-1:other").decode())
    logger.debug("< %s", '[2,"7","ChangeConfiguration",{"key":"AuthorizationKey","value":"00112233445566778899"}]')
    logger.debug("> %s", '[2,"8","X",{"value": "ffeeddcc", "key": "AuthorizationKey"}]')
    logger.info("call ChangeConfiguration(key='AuthorizationKey', value='a1b2c3d4e5')")
    logger.info("installing %s and %s", CERT, KEY)
    logger.warning("frame cut at 60 characters: %.60s", "[2,\"9\",\"CertificateSigned\",{\"cert\":\"" + CERT)
    logger.error("the password %r was refused", "Pa55-word!")
    try:
        raise ConnectionError("handshake with Pa55-word! failed")
    except ConnectionError:
        logger.exception("connection failed")
    logger.info("security profile 1 (Basic auth over ws://) is fine to log; so is %s", "Basic")

    text = output.getvalue()
    for secret in ("Pa55-word!", token, "00112233445566778899", "ffeeddcc", "a1b2c3d4e5", "MIIBszCCAVmgAwIBAgIU",
                   "MIGHAgEAMBMGByqGSM49", base64.b64encode(b"CP-1:other").decode()):
        assert secret not in text, secret
    assert "'Authorization': 'Basic [redacted]'" in text
    assert '"key":"AuthorizationKey","value":"[redacted]"' in text
    assert "installing [certificate redacted] and [private key redacted]" in text
    assert "the password '[redacted]' was refused" in text
    assert "ConnectionError: handshake with [redacted] failed" in text  # the traceback too
    assert "security profile 1 (Basic auth over ws://) is fine to log; so is Basic" in text


def test_short_secrets_are_not_redacted_everywhere():
    redactor = RedactSecrets()
    redactor.add_secret("ab")  # would turn every "ab" in every line into [redacted]
    assert redactor.redact("a table") == "a table"


def test_basic_auth_tokens_of_a_hex_authorization_key_are_registered_in_both_encodings():
    key = "0011223344556677889900aabbccddee"
    logs.add_basic_auth_secret("CP-9", key)
    as_text = base64.b64encode(b"CP-9:" + key.encode()).decode()
    as_bytes = base64.b64encode(b"CP-9:" + bytes.fromhex(key)).decode()
    assert logs.REDACTOR.redact(f"x {as_text} {as_bytes} {key}") == "x [redacted] [redacted] [redacted]"


def test_journal_formatter_prefixes_every_line_with_the_syslog_priority():
    assert [syslog_priority(level) for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR,
                                                 logging.CRITICAL)] == [7, 6, 4, 3, 2]
    record = logging.LogRecord("evse.station", logging.ERROR, __file__, 1, "two\nlines", None, None)
    assert JournalFormatter().format(record) == "<3>evse.station: two\n<3>lines"


async def test_under_journald_the_agent_logs_with_priorities_and_without_timestamps(csms, tmp_path, monkeypatch):
    password = "Journal-Secret-42"
    config = write_config(tmp_path, csms.url)
    config.write_text(config.read_text().replace("reconnect_max_s = 1.0", f'reconnect_max_s = 1.0\npassword = "{password}"'))
    agent = Agent(tmp_path, config)
    agent.log_path.touch()
    info = os.stat(agent.log_path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")  # stdout is "the journal"
    agent.start(log_level="debug")
    try:
        await agent.ready()
        await registered(agent)  # a card swiped before that is decided offline
        await charge(agent, csms, TAG_OK)
        await asyncio.sleep(1.2)  # a MeterValues or two
        await csms.disconnect(STATION_ID)
        await csms.wait_connected(STATION_ID)
        assert await agent.terminate() == 0
    finally:
        agent.cleanup()
    lines = agent.log_path.read_text().splitlines()
    assert lines and all(line[:3] in ("<2>", "<3>", "<4>", "<6>", "<7>") for line in lines), lines[:5]
    assert any(line.startswith("<6>evse.agent: station CP-T1 up") for line in lines)
    assert any(line.startswith("<7>evse.ocpp.frames: > [2,") for line in lines)  # one line per frame
    assert any(line.startswith("<4>") and "OCPP connection closed" in line for line in lines)
    text = "\n".join(lines)
    assert password not in text and base64.b64encode(f"{STATION_ID}:{password}".encode()).decode() not in text
    # log volume: nothing per meter sample or per control step at info
    info_lines = [line for line in lines if line.startswith("<6>")]
    assert len(info_lines) < 40, "\n".join(info_lines)
