"""A journal written by release 0.1 (tests/fixtures/journal-release-0.1.sqlite, made by that release's own code
with tests/fixtures/make_release_journal.py) opened by this agent: migrated in one SQLite transaction, nothing
lost, and the 1.6 adapter sends from it exactly what the release would have sent (the fixture's
.expected.json, written by the release's Journal from the same file). Every test works on a copy."""

from __future__ import annotations

import json
import shutil
import sqlite3
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.core import controller as ctl
from agent.core.authorization import AuthorizationStatus, TokenInfo
from agent.ocpp.v16.config import OcppConfiguration
from agent.ocpp.v16.transactions import read_answer, render
from agent.station.auth_store import AuthStore
from agent.station.journal import SCHEMA_VERSION, Journal, JournalError, JournalSetupError, read_queue
from agent.station.profile_store import ProfileStore
from agent.station.reservations import Reservations

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RELEASE = FIXTURES / "journal-release-0.1.sqlite"
EXPECTED = json.loads((FIXTURES / "journal-release-0.1.expected.json").read_text())
NOW = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)  # the station's clock when it is upgraded
START_D_ANSWER = {"transactionId": 4244, "idTagInfo": {"status": "Accepted"}}  # as in the expected sends


@pytest.fixture
def path(tmp_path) -> Path:
    copy = tmp_path / "state" / "journal.sqlite"
    copy.parent.mkdir()
    shutil.copyfile(RELEASE, copy)
    shutil.copyfile(RELEASE.with_name(RELEASE.name + ".id"), copy.with_name(copy.name + ".id"))
    return copy


@pytest.fixture
def journal(path):
    j = Journal(path)
    yield j
    j.close()


def send_all(journal: Journal) -> list[list]:
    """What the 1.6 adapter sends, in order, with the CSMS answering as the expected sends assume."""
    sent = []
    while (message := journal.next_message()) is not None:
        action, payload = render(message)
        sent.append([action, payload])
        answer = START_D_ANSWER if action == "StartTransaction" else {}
        journal.message_delivered(message, read_answer(action, payload, answer))
    return sent


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_the_fixture_is_a_release_journal(path):
    db = sqlite3.connect(path)  # the copy: even a read-only connection leaves -wal/-shm beside a WAL journal
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        actions = [row[0] for row in db.execute("SELECT action FROM outbox ORDER BY seq")]
    finally:
        db.close()
    assert actions == [action for action, _ in EXPECTED]


def test_the_adapter_sends_what_the_release_would_have_sent(journal):
    assert journal.pending_count() == len(EXPECTED) == 8
    assert send_all(journal) == EXPECTED
    assert [action for action, _ in EXPECTED] == [
        "MeterValues", "StopTransaction", "MeterValues", "SecurityEventNotification", "StopTransaction",
        "MeterValues", "StartTransaction", "MeterValues"]
    assert [payload.get("transactionId") for _, payload in EXPECTED] == [-1, -1, 4242, None, 4243, 4242, None, 4244]


def test_queued_messages_become_neutral_events_in_order(journal):
    rows = journal.connection.execute(
        "SELECT local_tx, kind, trigger, seq_no, action, protocol FROM queue ORDER BY seq").fetchall()
    assert rows == [
        (1, "updated", "meter_sample_periodic", 1, None, None),  # A: its start was given up
        (1, "ended", "ev_disconnected", 2, None, None),
        (2, "updated", "meter_sample_periodic", 1, None, None),  # B: open, CSMS id 4242
        (None, "message", None, None, "SecurityEventNotification", None),
        (3, "ended", "stop_requested", 1, None, None),  # C: stopped by its token, transactionData
        (2, "updated", "meter_sample_clock", 2, None, None),
        (4, "started", "authorized", 0, None, None),  # D: begun during the outage, on reservation 8
        (4, "updated", "meter_sample_periodic", 1, None, None),
    ]
    stop_c = next(m for m in read_queue(journal.connection) if m.kind == "ended" and m.local_tx == 3)
    assert stop_c.meter_values[0] == {"timestamp": "2025-03-01T11:00:09.000Z", "samples": [
        {"value": "700", "context": "Transaction.Begin", "measurand": "Energy.Active.Import.Register",
         "location": "Outlet", "unit": "Wh"}]}
    assert [s["measurand"] for s in stop_c.meter_values[1]["samples"]] == [
        "Energy.Active.Import.Register", "Power.Active.Import"]


def test_open_and_unacknowledged_transactions_survive_in_neutral_terms(journal):
    running = journal.running_transactions()
    assert [(t.local_id, t.connector_id, t.id_token, t.csms_tx_id, t.token_status, t.reservation_id)
            for t in running] == [(2, 2, "TAG-OPEN", "4242", "accepted", None), (4, 1, "TAG-D", None, None, 8)]
    b = running[0]
    assert (b.meter_start, b.started_at, b.last_meter, b.last_meter_at) == (
        52000.0, "2025-03-01T11:00:05.000Z", 53000.0, "2025-03-01T11:15:00.000Z")
    a, c = journal.transaction(1), journal.transaction(3)
    assert a.stopped and (a.csms_tx_id, a.meter_stop, a.stop_reason, a.stop_id_token) == (
        None, 1150, "ev_disconnected", None)
    assert c.stopped and (c.csms_tx_id, c.meter_stop, c.stop_reason, c.stop_id_token) == (
        "4243", 900, "local", "TAG-STOP")
    assert journal.local_id_for_csms_id(4242) == 2 and journal.local_id_for_csms_id("4243") is None  # C stopped
    send_all(journal)
    assert journal.transaction(1) is None and journal.transaction(3) is None  # delivered: forgotten
    assert journal.transaction(4).csms_tx_id == "4244"


def test_new_transactions_never_reuse_a_release_key(journal):
    local = journal.begin_transaction(2, "TAG-NEW", 0, "2025-03-01T12:30:00.000Z")
    assert local > 4


def test_configuration_cache_local_list_reservations_and_profiles_survive(journal):
    config = OcppConfiguration(3, stored=journal.settings("ocpp."))
    assert {key: config.get(key) for key in (
        "MeterValueSampleInterval", "HeartbeatInterval", "StopTxnSampledData", "MeterValuesAlignedData",
        "ClockAlignedDataInterval", "TransactionMessageAttempts", "LocalAuthListEnabled")} == {
        "MeterValueSampleInterval": "30", "HeartbeatInterval": "120",
        "StopTxnSampledData": "Energy.Active.Import.Register,Power.Active.Import",
        "MeterValuesAlignedData": "Energy.Active.Import.Register", "ClockAlignedDataInterval": "900",
        "TransactionMessageAttempts": "5", "LocalAuthListEnabled": "false"}
    assert journal.settings("availability.") == {"2": "Inoperative"}

    auth = AuthStore(journal, wall_clock=lambda: NOW)
    assert auth.cached("TAG-CACHED") == TokenInfo(AuthorizationStatus.ACCEPTED, datetime(2031, 1, 1, tzinfo=UTC), "PARENT-1")
    assert auth.cached("TAG-BLOCKED") == TokenInfo(AuthorizationStatus.BLOCKED)
    assert (auth.list_version(), auth.list_size()) == (5, 2)
    assert auth.listed("TAG-LIST-1") == TokenInfo(AuthorizationStatus.ACCEPTED, datetime(2032, 6, 1, tzinfo=UTC), "PARENT-2")
    assert auth.listed("TAG-LIST-2") == TokenInfo(AuthorizationStatus.EXPIRED)

    (profile,) = ProfileStore(journal).load()
    assert (profile.id, profile.connector_id, profile.purpose) == (11, 0, "TxDefaultProfile")
    assert [(p.start_period, p.limit) for p in profile.schedule.periods] == [(0, 16), (3600, 10)]

    made: list[tuple[int, ctl.Event]] = []
    controllers = {cid: ctl.ConnectorController() for cid in (1, 2, 3)}
    reservations = Reservations(journal, controllers, dispatch=lambda cid, event: made.append((cid, event)),
                                clock=lambda: 0.0, wall_clock=lambda: NOW, journal_failed=lambda exc: None)
    reservations.restore()  # reservation 8 left with D's StartTransaction, in the same commit
    ((held_on, event),) = made
    assert held_on == 3 and isinstance(event, ctl.ReservationMade)
    assert (event.reservation_id, event.id_token, event.parent_id_token) == (7, "TAG-RES", "PARENT-RES")


def test_the_migrated_journal_keeps_its_identity_and_is_migrated_once(path):
    identity = path.with_name(path.name + ".id").read_text()
    first = Journal(path)
    first.close()
    assert user_version(path) == SCHEMA_VERSION
    assert path.with_name(path.name + ".id").read_text() == identity
    again = Journal(path)
    try:
        assert again.pending_count() == len(EXPECTED)
        assert send_all(again) == EXPECTED
    finally:
        again.close()


def test_a_message_the_neutral_form_cannot_say_exactly_is_kept_and_sent_verbatim(path):
    """A MeterValues with a field the neutral meter values do not hold goes out as it was queued."""
    odd = {"connectorId": 2, "meterValue": [{"timestamp": "2025-03-01T11:16:00.000Z", "sampledValue": [
        {"value": "53100", "measurand": "Energy.Active.Import.Register", "unit": "Wh", "vendorField": "x"}]}]}
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO outbox (local_tx, action, payload) VALUES (2, 'MeterValues', ?)",
                   (zlib.compress(json.dumps(odd).encode()),))
    db.close()
    journal = Journal(path)
    try:
        sent = send_all(journal)
    finally:
        journal.close()
    assert sent[:-1] == EXPECTED
    assert sent[-1] == ["MeterValues", {**odd, "transactionId": 4242}]


def test_a_failed_migration_leaves_the_release_journal_as_it_was(path):
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT INTO outbox (local_tx, action, payload) VALUES (2, 'MeterValues', x'00ff')")
    db.close()
    with pytest.raises(JournalError, match="unreadable"):
        Journal(path)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == len(EXPECTED) + 1
        assert db.execute("SELECT name FROM sqlite_master WHERE name IN ('queue', 'release_outbox')").fetchall() == []
    finally:
        db.close()


def test_a_journal_of_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(JournalSetupError, match=f"newer evse-agent.*schema version {SCHEMA_VERSION + 1}"):
        Journal(path)
    assert path.read_bytes() == before
