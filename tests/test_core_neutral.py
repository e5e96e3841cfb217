"""The core (agent/core/) speaks no OCPP 1.6: its words are protocol-neutral, and agent.ocpp.v16.vocabulary
renders every one of them in 1.6 words and reads them back."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.core.authorization import AuthorizationStatus, TokenInfo
from agent.core.controller import ConnectorStatus, Fault, StopReason
from agent.ocpp.v16 import vocabulary as v16

CORE = Path(__file__).resolve().parent.parent / "agent" / "core"

# words only OCPP 1.6 uses; a 1.6 configuration key named in a comment (StopTransactionOnInvalidId) is not one
# of them: the word boundaries keep it, the substrings (idTag, IdTag, id_tag) do not
ONLY_16_SUBSTRINGS = ("idTag", "IdTag", "id_tag")
ONLY_16_WORDS = (
    "StartTransaction", "StopTransaction", "ChargePointErrorCode", "errorCode", "vendorErrorCode",
    "PowerSwitchFailure", "GroundFailure", "ConnectorLockFailure", "PowerMeterFailure", "InternalError",
    "OtherError", "NoError", "HighTemperature", "OverCurrentFailure", "OverVoltage", "UnderVoltage",
    "WeakSignal", "EVCommunicationError", "ReaderFailure", "ResetFailure",
    "Preparing", "Finishing", "SuspendedEV", "SuspendedEVSE",
    "EVDisconnected", "DeAuthorized", "SoftReset", "HardReset", "UnlockCommand", "PowerLoss",
    "ConcurrentTx", "transactionId", "connectorId", "meterStart", "meterStop", "StatusNotification",
    "MeterValues",
)
PATTERN = re.compile("|".join([*map(re.escape, ONLY_16_SUBSTRINGS), *(rf"\b{w}\b" for w in ONLY_16_WORDS)]))


def test_the_core_speaks_no_ocpp_16():
    sources = sorted(CORE.glob("*.py"))
    assert {p.name for p in sources} >= {"controller.py", "authorization.py", "smart_charging.py", "clock.py"}
    found = [f"{path.name}:{number}: {line.strip()}"
             for path in sources
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if PATTERN.search(line)]
    assert found == [], "OCPP 1.6 words in agent/core/ (render them in agent/ocpp/v16/):\n" + "\n".join(found)


def test_the_grep_would_see_a_16_word():
    """The check itself: it finds what it must find, and lets a 1.6 configuration key named in a comment be."""
    assert PATTERN.search("out.append(StartTransaction(tag))")
    assert PATTERN.search("parent_id_tag: str | None")
    assert PATTERN.search('return "Preparing"')
    assert not PATTERN.search("stop_on_invalid_id: bool = True  # OCPP 1.6 StopTransactionOnInvalidId")
    assert not PATTERN.search("BeginTransaction(id_token, reservation_id)")


def test_every_connector_status_has_a_16_status_and_they_are_distinct():
    words = {status: v16.connector_status(status) for status in ConnectorStatus}
    assert len(set(words.values())) == len(ConnectorStatus)
    assert words[ConnectorStatus.OCCUPIED] == "Preparing" and words[ConnectorStatus.FINISHED] == "Finishing"
    assert words[ConnectorStatus.SUSPENDED_EVSE] == "SuspendedEVSE"


def test_every_fault_has_a_16_error_code_and_a_vendor_code():
    for fault in Fault:
        code, vendor = v16.error_codes(fault)
        assert code != v16.NO_ERROR and vendor, fault
    assert v16.error_codes(None) == ("NoError", None)
    assert v16.error_codes(Fault.WELD) == ("PowerSwitchFailure", "ContactorWelded")
    assert v16.error_codes(Fault.LOCK) == ("ConnectorLockFailure", "LockFeedbackTimeout")


NO_16_WORD = {StopReason.TIMEOUT, StopReason.STOPPED_BY_EV}  # 2.0.1 reasons: 1.6 says Other


@pytest.mark.parametrize("reason", list(StopReason))
def test_every_stop_reason_goes_to_16_and_back(reason):
    word = v16.stop_reason(reason)
    if reason in NO_16_WORD:
        assert word == "Other" and v16.stop_reason_from_ocpp(word) is StopReason.OTHER
    else:
        assert v16.stop_reason_from_ocpp(word) is reason


def test_stop_reasons_in_16_words():
    assert v16.stop_reason(StopReason.EV_DISCONNECTED) == "EVDisconnected"
    assert v16.stop_reason(StopReason.DEAUTHORIZED) == "DeAuthorized"
    assert v16.stop_reason(StopReason.POWER_LOSS) == "PowerLoss"
    assert v16.stop_reason_from_ocpp("NotARealReason") is StopReason.OTHER


@pytest.mark.parametrize("status", list(AuthorizationStatus))
def test_every_authorization_status_goes_to_16_and_back(status):
    assert v16.authorization_status_from_ocpp(v16.authorization_status(status)) is status


def test_an_unknown_16_authorization_status_lets_nobody_charge():
    assert v16.authorization_status_from_ocpp("Whatever") is AuthorizationStatus.INVALID
    assert not v16.token_info({"status": "Whatever"}).accepted
    assert not v16.token_info({}).accepted


def test_id_tag_info_reads_as_token_info():
    info = v16.token_info({"status": "Accepted", "expiryDate": "2030-01-02T03:04:05Z", "parentIdTag": "FLEET"})
    assert info == TokenInfo(AuthorizationStatus.ACCEPTED, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC), "FLEET")
    assert v16.token_info({"status": "Accepted", "expiryDate": "not a date"}).expiry == datetime.min.replace(tzinfo=UTC)
    assert v16.token_info({"status": "Blocked"}).status is AuthorizationStatus.BLOCKED


def test_local_list_entries_keep_what_the_core_refuses():
    entries = v16.local_list_entries([{"idTag": "A", "idTagInfo": {"status": "ConcurrentTx"}}, {"idTag": "B"},
                                      {"idTagInfo": {"status": "Accepted"}}, "not an object"])
    assert entries == [("A", TokenInfo(AuthorizationStatus.CONCURRENT_TX)), ("B", None),
                       (None, TokenInfo(AuthorizationStatus.ACCEPTED)), (None, None)]
