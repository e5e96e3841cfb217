"""agent/station/journal.py on real SQLite files: queue order, the CSMS's id filled in when an event is sent
(through the 1.6 adapter's rendering, agent/ocpp/v16/transactions.py), delivery bookkeeping, crash survival,
settings, durability pragmas and the errors a bad journal file gives."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ocpp.v16.transactions import TRANSACTION_ID_UNKNOWN, read_answer, render
from agent.station.journal import (
    Delivery,
    Journal,
    JournalError,
    JournalSetupError,
    JournalValueError,
    QueuedMessage,
)

REPO = Path(__file__).resolve().parent.parent
T0 = "2025-01-01T10:00:00.000Z"
T1 = "2025-01-01T10:01:00.000Z"
T2 = "2025-01-01T10:02:00.000Z"
T3 = "2025-01-01T10:03:00.000Z"


def sample(wh: float, timestamp: str) -> list[dict]:
    """One neutral meter value: the energy register."""
    return [{"timestamp": timestamp, "samples": [
        {"value": f"{wh:.0f}", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
         "unit": "Wh"}]}]


def sample_v16(wh: float, timestamp: str) -> list[dict]:
    """sample() as the 1.6 adapter sends it."""
    return [{"timestamp": timestamp, "sampledValue": [
        {"value": f"{wh:.0f}", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
         "unit": "Wh"}]}]


def stop(journal: Journal, local_id: int, wh: float, timestamp: str, reason: str = "ev_disconnected") -> None:
    journal.end_transaction(local_id, round(wh), timestamp, reason)


def action_of(message: QueuedMessage) -> str:
    return render(message)[0]


def payload_of(message: QueuedMessage) -> dict:
    return render(message)[1]


def deliver(journal: Journal, message: QueuedMessage, answer: dict | None = None) -> None:
    """The CSMS answered `message` (its 1.6 answer, read by the 1.6 adapter)."""
    action, payload = render(message)
    journal.message_delivered(message, read_answer(action, payload, answer or {}))


def start_answer(transaction_id: int, status: str = "Accepted") -> dict:
    return {"transactionId": transaction_id, "idTagInfo": {"status": status}}


@pytest.fixture
def path(tmp_path) -> Path:
    return tmp_path / "state" / "journal.sqlite"


@pytest.fixture
def journal(path):
    j = Journal(path)
    yield j
    j.close()


def one_session(journal: Journal) -> int:
    """Start at 1000 Wh, two samples, stop at 1300 Wh: four queued messages."""
    local = journal.begin_transaction(1, "TAG-1", 1000.4, T0)
    journal.add_meter_values(local, sample(1100, T1), 1100.0, T1)
    journal.add_meter_values(local, sample(1200, T2), 1200.0, T2)
    stop(journal, local, 1300.2, T3)
    return local


def drain(journal: Journal, answers: dict[str, dict] | None = None) -> list[tuple[str, dict]]:
    """Deliver every queued message as a CSMS would; returns (action, payload) in send order."""
    sent = []
    while (message := journal.next_message()) is not None:
        action, payload = render(message)
        sent.append((action, payload))
        deliver(journal, message, (answers or {}).get(action, {}))
    return sent


# ---- queue order and payloads ------------------------------------------------------------------


def test_begin_meter_end_queue_start_metervalues_stop_in_order(journal):
    local = one_session(journal)
    assert journal.pending_count() == 4
    sent = drain(journal, {"StartTransaction": start_answer(7)})
    assert [action for action, _ in sent] == ["StartTransaction", "MeterValues", "MeterValues", "StopTransaction"]
    start, mv1, mv2, stop = (payload for _, payload in sent)
    assert start == {"connectorId": 1, "idTag": "TAG-1", "meterStart": 1000, "timestamp": T0}
    assert "transactionId" not in start
    assert mv1 == {"connectorId": 1, "meterValue": sample_v16(1100, T1), "transactionId": 7}
    assert mv2["meterValue"] == sample_v16(1200, T2)
    assert stop == {"meterStop": 1300, "timestamp": T3, "reason": "EVDisconnected", "transactionId": 7}
    assert journal.transaction(local) is None


def test_next_message_is_the_oldest_and_does_not_remove_it(journal):
    one_session(journal)
    first = journal.next_message()
    again = journal.next_message()
    assert first == again
    assert action_of(first) == "StartTransaction"
    assert first.attempts == 0
    assert journal.pending_count() == 4


def test_transaction_id_is_patched_only_after_start_transaction_was_delivered(journal):
    local = journal.begin_transaction(1, "TAG-1", 0, T0)
    journal.add_meter_values(local, sample(10, T1), 10, T1)
    start = journal.next_message()
    # while the Start is queued it is what goes first; nothing later can be sent with a guessed id
    assert action_of(start) == "StartTransaction"
    assert journal.transaction(local).csms_tx_id is None
    deliver(journal, start, start_answer(4242))
    assert journal.transaction(local).csms_tx_id == "4242"
    assert journal.local_id_for_csms_id(4242) == local
    meter = journal.next_message()
    assert action_of(meter) == "MeterValues"
    assert payload_of(meter)["transactionId"] == 4242
    # queued after the Start was delivered: patched too
    stop(journal, local, 20, T2)
    deliver(journal, meter, {})
    assert payload_of(journal.next_message())["transactionId"] == 4242


def test_messages_after_a_dropped_start_transaction_carry_minus_one(journal):
    local = one_session(journal)
    start = journal.next_message()
    assert journal.message_failed(start) == 1
    journal.drop_message(start)
    rest = drain(journal)
    assert [action for action, _ in rest] == ["MeterValues", "MeterValues", "StopTransaction"]
    assert {payload["transactionId"] for _, payload in rest} == {TRANSACTION_ID_UNKNOWN}
    assert TRANSACTION_ID_UNKNOWN == -1
    assert journal.transaction(local) is None


def test_message_delivered_removes_only_that_message(journal):
    a = journal.begin_transaction(1, "TAG-A", 0, T0)
    b = journal.begin_transaction(2, "TAG-B", 500, T0)
    journal.add_meter_values(a, sample(5, T1), 5, T1)
    first = journal.next_message()
    assert (first.local_tx, action_of(first)) == (a, "StartTransaction")
    deliver(journal, first, start_answer(1))
    assert journal.pending_count() == 2
    second = journal.next_message()
    assert (second.local_tx, action_of(second)) == (b, "StartTransaction")
    assert second.seq > first.seq
    deliver(journal, second, start_answer(2))
    third = journal.next_message()
    assert (third.local_tx, action_of(third), payload_of(third)["transactionId"]) == (a, "MeterValues", 1)
    # a stale duplicate delivery of an already removed message changes nothing else
    deliver(journal, first, start_answer(1))
    assert journal.pending_count() == 1
    assert journal.next_message() == third


def test_message_failed_counts_attempts_and_keeps_the_message(journal):
    one_session(journal)
    message = journal.next_message()
    assert journal.message_failed(message) == 1
    message = journal.next_message()
    assert message.attempts == 1
    assert journal.message_failed(message) == 2
    assert journal.next_message().attempts == 2
    assert journal.next_message().seq == message.seq
    assert journal.pending_count() == 4


def test_stopped_transaction_is_forgotten_only_when_its_last_message_is_delivered(journal):
    local = one_session(journal)
    for _ in range(3):
        deliver(journal, journal.next_message(), start_answer(9))
        record = journal.transaction(local)
        assert record is not None and record.stopped
    assert journal.running_transactions() == []
    deliver(journal, journal.next_message(), {})
    assert journal.transaction(local) is None
    assert journal.pending_count() == 0
    assert journal.next_message() is None


def test_running_transaction_keeps_its_row_after_all_messages_are_delivered(journal):
    local = journal.begin_transaction(1, "TAG-1", 0, T0)
    drain(journal, {"StartTransaction": start_answer(3)})
    record = journal.transaction(local)
    assert record is not None and not record.stopped and record.csms_tx_id == "3"


def test_last_meter_follows_meter_values_and_stop(journal):
    local = journal.begin_transaction(1, "TAG-1", 1000, T0)
    assert (journal.transaction(local).last_meter, journal.transaction(local).last_meter_at) == (1000, T0)
    journal.add_meter_values(local, sample(1234.5, T1), 1234.5, T1)
    assert (journal.transaction(local).last_meter, journal.transaction(local).last_meter_at) == (1234.5, T1)
    stop(journal, local, 1300, T2)
    assert (journal.transaction(local).last_meter, journal.transaction(local).last_meter_at) == (1300, T2)


# ---- crash survival ----------------------------------------------------------------------------


def die_after(path, work):
    """Run work(journal) in a forked child that ends like kill -9 (no close, no atexit, the lock
    released by the kernel); return what work returned."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, json.dumps(work(Journal(path))).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = json.loads(pipe.read())
    os.waitpid(pid, 0)
    return result


def test_everything_survives_reopening_without_close(path):
    def work(first):
        done = first.begin_transaction(1, "TAG-1", 100, T0)
        deliver(first, first.next_message(), start_answer(11))
        first.add_meter_values(done, sample(150, T1), 150, T1)
        stop(first, done, 200, T2)
        running = first.begin_transaction(2, "TAG-2", 5000, T1)
        first.add_meter_values(running, sample(5100, T2), 5100, T2)
        failed = first.next_message()
        first.message_failed(failed)
        first.set_setting("ocpp.HeartbeatInterval", "120")
        return {"done": done, "running": running, "failed_seq": failed.seq}  # the process dies here

    ids = die_after(path, work)
    second = Journal(path)
    try:
        assert second.pending_count() == 4
        head = second.next_message()
        assert (head.seq, action_of(head), head.attempts) == (ids["failed_seq"], "MeterValues", 1)
        assert payload_of(head)["transactionId"] == 11
        assert [r.local_id for r in second.running_transactions()] == [ids["running"]]
        (record,) = second.running_transactions()
        assert (record.connector_id, record.id_token, record.meter_start, record.started_at) == (2, "TAG-2", 5000, T1)
        assert (record.last_meter, record.last_meter_at, record.csms_tx_id, record.stopped) == (5100, T2, None, False)
        assert second.transaction(ids["done"]).stopped
        assert second.settings("ocpp.") == {"HeartbeatInterval": "120"}
        sent = drain(second, {"StartTransaction": start_answer(12)})
        assert [(a, p.get("transactionId")) for a, p in sent] == [
            ("MeterValues", 11), ("StopTransaction", 11), ("StartTransaction", None), ("MeterValues", 12)]
    finally:
        second.close()


def test_commits_survive_a_killed_process(path):
    """The writer process ends with os._exit (no close, no atexit): every commit is on disk."""
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
from agent.station.journal import Delivery, Journal
j = Journal({str(path)!r})
local = j.begin_transaction(1, "TAG-1", 1000, {T0!r})
j.message_delivered(j.next_message(), Delivery(csms_tx_id="77", token_status="accepted", started=True))
j.add_meter_values(local, [], 1111, {T1!r})
j.set_setting("availability.1", "Inoperative")
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    journal = Journal(path)
    try:
        (record,) = journal.running_transactions()
        assert (record.csms_tx_id, record.last_meter, record.last_meter_at) == ("77", 1111, T1)
        message = journal.next_message()
        assert (action_of(message), payload_of(message)["transactionId"]) == ("MeterValues", 77)
        assert journal.settings("availability.") == {"1": "Inoperative"}
    finally:
        journal.close()


def test_running_transactions_after_reopen_lists_only_unstopped_ones_in_order(path):
    def work(first):
        a = first.begin_transaction(1, "A", 0, T0)
        b = first.begin_transaction(2, "B", 0, T0)
        c = first.begin_transaction(3, "C", 0, T0)
        stop(first, b, 10, T1)
        return [a, c]

    a, c = die_after(path, work)
    second = Journal(path)
    try:
        assert [(r.local_id, r.id_token) for r in second.running_transactions()] == [(a, "A"), (c, "C")]
    finally:
        second.close()


# ---- settings ----------------------------------------------------------------------------------


def test_settings_round_trip_and_prefix_filter(path):
    journal = Journal(path)
    journal.set_setting("ocpp.MeterValueSampleInterval", "60")
    journal.set_setting("ocpp.MeterValueSampleInterval", "30")  # overwritten, not duplicated
    journal.set_setting("ocpp.StopTxnSampledData", "Energy.Active.Import.Register,Voltage")
    journal.set_setting("availability.0", "Inoperative")
    journal.set_setting("ocppXfoo", "not under ocpp.")
    journal.set_setting("a_b.key", "underscore is literal")
    journal.set_setting("aXb.key", "must not match a_b.")
    journal.close()
    journal = Journal(path)
    try:
        assert journal.settings("ocpp.") == {
            "MeterValueSampleInterval": "30",
            "StopTxnSampledData": "Energy.Active.Import.Register,Voltage",
        }
        assert journal.settings("availability.") == {"0": "Inoperative"}
        assert journal.settings("a_b.") == {"key": "underscore is literal"}
        assert journal.settings("nothing.") == {}
        assert len(journal.settings()) == 6
    finally:
        journal.close()


# ---- durability and errors -----------------------------------------------------------------------


def test_wal_mode_and_synchronous_full_are_in_force(journal, path):
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert journal._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    journal.close()
    other = sqlite3.connect(path)  # WAL is a property of the file, seen by every connection
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_a_second_agent_cannot_open_a_journal_in_use(journal, path):
    with pytest.raises(JournalError, match="locked"):
        Journal(path)


def test_start_and_stop_are_fsynced_meter_values_are_left_to_write_back(path):
    """Durability per message kind: what is written while each commit runs."""
    journal = Journal(path)
    modes = []
    journal._db.set_trace_callback(lambda sql: modes.append(sql) if sql.startswith("PRAGMA synchronous") else None)
    local = journal.begin_transaction(1, "T", 0, T0)
    deliver(journal, journal.next_message(), start_answer(5))
    journal.add_meter_values(local, sample(10, T1), 10, T1)
    deliver(journal, journal.next_message(), {})
    stop(journal, local, 20, T2)
    assert modes == ["PRAGMA synchronous=NORMAL", "PRAGMA synchronous=FULL"]  # only around the sample
    journal.close()


def test_journal_under_a_regular_file_raises_journal_error_naming_the_path(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file")
    bad = blocker / "journal.sqlite"
    with pytest.raises(JournalError) as info:
        Journal(bad)
    assert str(bad) in str(info.value)


def test_journal_in_a_read_only_directory_raises_journal_error(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        with pytest.raises(JournalError) as info:
            Journal(directory / "journal.sqlite")
        assert str(directory / "journal.sqlite") in str(info.value)
    finally:
        directory.chmod(0o700)


def test_garbage_file_raises_journal_error(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite database, just garbage \x00\xff\xfe" * 200)
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(path) in str(info.value)


def test_damaged_pages_behind_a_valid_header_raise_journal_error(path):
    journal = Journal(path)
    for i in range(300):  # several pages of rows and index entries
        local = journal.begin_transaction(1, f"TAG-{i:04d}" * 4, i, T0)
        journal.add_meter_values(local, sample(i, T1), i, T1)
    journal.close()  # checkpoints the WAL into the main file
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    assert len(data) > 4 * page_size
    for offset in range(page_size + 8, len(data), page_size):  # every page but the header page
        data[offset:offset + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(path) in str(info.value)


def test_one_damaged_page_that_sqlite_still_opens_raises_journal_error(path):
    """SQLite opens such a file without complaint; only the integrity check at open finds it."""
    journal = Journal(path)
    for i in range(300):
        local = journal.begin_transaction(1, f"TAG-{i:04d}" * 4, i, T0)
        journal.add_meter_values(local, sample(i, T1), i, T1)
    journal.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    for end_of_page in range(2 * page_size, len(data) + 1, page_size):  # cell content, headers intact
        data[end_of_page - 200:end_of_page - 100] = b"\xa5" * 100
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="corrupt|malformed") as info:
        Journal(path)
    assert str(path) in str(info.value)


def test_at_the_bound_the_oldest_meter_values_go_first_and_start_stop_never(path):
    journal = Journal(path, max_messages=100)
    local = journal.begin_transaction(1, "T", 0, T0)
    for n in range(150):
        journal.add_meter_values(local, sample(n, T1), n, T1)
    stop(journal, local, 150, T2)
    assert journal.pending_count() == 101  # 100 at the bound, then the Stop on top: never dropped
    assert journal.dropped_for_space == 51
    sent = drain(journal, {"StartTransaction": start_answer(9)})
    actions = [action for action, _ in sent]
    assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction"
    registers = [p["meterValue"][0]["sampledValue"][0]["value"] for a, p in sent if a == "MeterValues"]
    assert registers == [str(n) for n in range(51, 150)]  # the oldest samples went first, order kept
    assert journal.pending_count() == 0
    journal.close()


# ---- values the journal cannot store (issue 9 C2) ----------------------------------------------------


def test_the_csms_transaction_id_is_kept_as_text_of_any_size_and_sent_back_as_it_came(path):
    """The journal keeps the protocol's id as text: no 64-bit bound (the 1.6 client refuses ids beyond
    signed 64 bits before they reach the journal, test_ocpp_defects); 1.6 gets its integer back."""
    journal = Journal(path)
    local = journal.begin_transaction(1, "TAG-1", 0, T0)
    deliver(journal, journal.next_message(), start_answer(2**64))
    assert journal.transaction(local).csms_tx_id == "18446744073709551616"
    assert journal.local_id_for_csms_id(2**64) == local == journal.local_id_for_csms_id("18446744073709551616")
    journal.add_meter_values(local, sample(5, T1), 5, T1)
    assert payload_of(journal.next_message())["transactionId"] == 2**64
    journal.close()
    reopened = Journal(path)
    try:
        assert reopened.transaction(local).csms_tx_id == str(2**64)
    finally:
        reopened.close()


def test_an_answer_the_journal_cannot_store_raises_journal_value_error_and_writes_nothing(path):
    journal = Journal(path)
    local = journal.begin_transaction(1, "TAG-1", 0, T0)
    start = journal.next_message()
    with pytest.raises(JournalValueError) as info:
        journal.message_delivered(start, Delivery(csms_tx_id="id-\ud800", started=True))
    assert isinstance(info.value, JournalError) and info.value.value == "id-\ud800"
    assert str(path) in str(info.value)
    # nothing half-written: the Start is still queued, its transaction has no CSMS id
    assert journal.next_message() == start and journal.pending_count() == 1
    assert journal.transaction(local).csms_tx_id is None
    # the journal works on: a failed attempt can be counted, a valid answer applied
    assert journal.message_failed(start) == 1
    deliver(journal, journal.next_message(), start_answer(2**63 - 1))
    assert journal.transaction(local).csms_tx_id == str(2**63 - 1)
    journal.close()


@pytest.mark.parametrize(("what", "store"), [
    ("lone surrogate id tag", lambda j: j.begin_transaction(1, "TAG-\ud800", 0, T0)),
    ("NaN meter value", lambda j: j.begin_transaction(1, "TAG-1", float("nan"), T0)),
    ("lone surrogate setting", lambda j: j.set_setting("ocpp.Key", "\udc80")),
    ("NaN in a payload", lambda j: j.enqueue("SecurityEventNotification", {"type": "x", "value": float("nan")})),
    ("object in a payload", lambda j: j.enqueue("SecurityEventNotification", {"type": object()})),
])
def test_unstorable_values_raise_journal_value_error_and_leave_the_journal_as_it_was(journal, what, store):
    with pytest.raises(JournalValueError, match="cannot store"):
        store(journal)
    assert journal.pending_count() == 0 and journal.next_message() is None
    assert journal.running_transactions() == [] and journal.settings() == {}
    journal.set_setting("ocpp.Key", "still writable")
    assert journal.settings("ocpp.") == {"Key": "still writable"}


# ---- a journal deleted, emptied or replaced (issue 9 C4) ----------------------------------------------


def test_a_journal_deleted_while_running_refuses_the_next_commit_and_saves_what_it_held(path):
    journal = Journal(path)
    local = one_session(journal)
    journal.begin_transaction(2, "TAG-2", 0, T0)
    path.unlink()
    with pytest.raises(JournalError, match="journal file was deleted or replaced while running"):
        journal.add_meter_values(local, sample(1400, T3), 1400, T3)
    with pytest.raises(JournalError, match="deleted or replaced"):  # for good, and reading the queue too
        journal.next_message()
    journal.close()
    rescued = path.with_name(path.name + ".rescued")
    # at the next start the journal is missing but was created here: refused, nothing created in its place
    with pytest.raises(JournalSetupError) as info:
        Journal(path)
    assert str(path) in str(info.value) and str(rescued) in str(info.value) and not path.exists()
    rescued.rename(path)  # what the message tells the technician to do
    restored = Journal(path)
    try:
        assert restored.pending_count() == 5 and [r.id_token for r in restored.running_transactions()] == ["TAG-2"]
    finally:
        restored.close()


def test_a_journal_replaced_while_running_refuses_the_next_commit(path, tmp_path):
    journal = Journal(path)
    journal.begin_transaction(1, "TAG-1", 0, T0)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).close()
    other.write_bytes(path.read_bytes())
    os.replace(other, path)
    with pytest.raises(JournalError, match="journal file was deleted or replaced while running"):
        journal.set_setting("a", "b")
    journal.close()


def test_an_emptied_journal_is_refused_at_start_not_taken_for_a_new_one(path):
    journal = Journal(path)
    journal.begin_transaction(1, "TAG-1", 0, T0)
    journal.close()
    path.write_bytes(b"")
    with pytest.raises(JournalSetupError, match="empty") as info:
        Journal(path)
    assert str(path) in str(info.value)
    assert path.stat().st_size == 0  # left as found


def test_a_journal_replaced_by_an_empty_database_is_refused_at_start(path):
    journal = Journal(path)
    journal.begin_transaction(1, "TAG-1", 0, T0)
    journal.close()
    path.unlink()
    sqlite3.connect(path).execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY)").connection.close()
    with pytest.raises(JournalSetupError, match="identity") as info:
        Journal(path)
    assert str(path) in str(info.value)


def test_a_journal_from_another_station_is_refused_at_start(path, tmp_path):
    Journal(path).close()
    other = tmp_path / "other" / "journal.sqlite"
    Journal(other).close()
    other.replace(path)
    with pytest.raises(JournalSetupError, match="not the one this station created"):
        Journal(path)


def test_a_new_install_starts_fresh_and_records_the_journal_identity(path):
    journal = Journal(path)
    journal.close()
    marker = path.with_name(path.name + ".id")
    identity = marker.read_text().strip()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM journal_info WHERE key = 'id'").fetchone() == (identity,)
    finally:
        db.close()
    Journal(path).close()  # and it opens again
    assert marker.read_text().strip() == identity


def test_a_journal_from_before_identities_is_kept_and_given_one(path):
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)  # the schema of earlier versions, with one queued message
    db.executescript("""
        CREATE TABLE transactions (local_id INTEGER PRIMARY KEY AUTOINCREMENT, connector_id INTEGER NOT NULL,
            id_tag TEXT NOT NULL, meter_start REAL NOT NULL, started_at TEXT NOT NULL, csms_id INTEGER,
            id_tag_status TEXT, last_meter REAL NOT NULL, last_meter_at TEXT NOT NULL, stopped_at TEXT,
            meter_stop REAL, stop_reason TEXT);
        CREATE TABLE outbox (seq INTEGER PRIMARY KEY, local_tx INTEGER REFERENCES transactions(local_id),
            action TEXT NOT NULL, payload BLOB NOT NULL, attempts INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO settings VALUES ('ocpp.HeartbeatInterval', '90');
    """)
    db.close()
    journal = Journal(path)
    try:
        assert journal.settings("ocpp.") == {"HeartbeatInterval": "90"}
    finally:
        journal.close()
    assert path.with_name(path.name + ".id").read_text().strip()
    Journal(path).close()


# ---- file modes (issue 9 C11: the AuthorizationKey is in the journal) -----------------------------


def test_journal_files_are_0600_whatever_the_umask(path):
    old = os.umask(0o002)
    try:
        journal = Journal(path)
        journal.set_setting("ocpp.AuthorizationKey", "secret")
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert {p.name for p in files} >= {path.name, path.name + "-wal", path.name + ".id"}
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o600" for p in files}
        journal.close()
    finally:
        os.umask(old)


def test_an_existing_world_readable_journal_is_set_to_0600_at_open(path):
    Journal(path).close()
    path.chmod(0o644)
    Journal(path).close()
    assert path.stat().st_mode & 0o777 == 0o600


# ---- bad journal paths (issue 9 C11: `evse run` exits 2 for these) ------------------------------------


@pytest.mark.parametrize("where", ["a directory", "a character device", "under a regular file",
                                   "under a directory that cannot be created"])
def test_a_path_that_can_be_no_journal_raises_journal_setup_error_naming_it(tmp_path, where):
    bad = {"a directory": tmp_path,
           "a character device": Path("/dev/zero"),
           "under a regular file": tmp_path / "file" / "journal.sqlite",
           "under a directory that cannot be created": Path("/proc/evse-no-such-dir/journal.sqlite")}[where]
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(JournalSetupError) as info:
        Journal(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("stored", "sent"), [
    ("ev_disconnected", "EVDisconnected"), ("deauthorized", "DeAuthorized"), ("power_loss", "PowerLoss"),
    ("unlock_command", "UnlockCommand"), ("other", "Other"),
    ("EVDisconnected", "EVDisconnected"),  # a 1.6 word (a controller that still speaks 1.6) passes through
])
def test_the_stop_reason_is_sent_in_1_6_words(journal, stored, sent):
    local = journal.begin_transaction(1, "TAG-1", 0, T0)
    stop(journal, local, 10, T1, reason=stored)
    assert drain(journal)[-1][1]["reason"] == sent


def test_every_1_6_reason_reads_back_as_a_neutral_one_and_neutral_ones_pass_through():
    from agent.ocpp.v16.transactions import stop_reason_from_v16
    from agent.ocpp.v16.vocabulary import STOP_REASON
    from agent.station.journal import STOP_REASONS

    assert {stop_reason_from_v16(word) for word in STOP_REASON.values()} <= set(STOP_REASONS)
    assert [stop_reason_from_v16(neutral) for neutral in STOP_REASONS] == list(STOP_REASONS)


def test_events_carry_a_trigger_and_a_per_transaction_seq_no(journal):
    a = journal.begin_transaction(1, "TAG-A", 0, T0)
    b = journal.begin_transaction(2, "TAG-B", 0, T0)
    journal.add_meter_values(a, sample(5, T1), 5, T1)
    journal.add_meter_values(b, sample(7, T1), 7, T1, trigger="meter_sample_clock")
    stop(journal, a, 10, T2, reason="remote")
    queued = []
    while (message := journal.next_message()) is not None:
        queued.append((message.local_tx, message.kind, message.trigger, message.seq_no))
        deliver(journal, message, start_answer(message.local_tx) if message.kind == "started" else {})
    assert queued == [(a, "started", "authorized", 0), (b, "started", "authorized", 0),
                      (a, "updated", "meter_sample_periodic", 1), (b, "updated", "meter_sample_clock", 1),
                      (a, "ended", "remote_stop", 2)]
