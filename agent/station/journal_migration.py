"""Migration of a journal written by release 0.1 (schema without version) to the neutral journal.

Release 0.1 kept OCPP 1.6 in its journal: `transactions` with an INTEGER csms_id and 1.6 stop reasons, and an
`outbox` of 1.6 actions with camelCase payloads (zlib-compressed JSON, or JSON text in still older files).
Each queued payload becomes a neutral transaction event if the 1.6 adapter renders that event back to exactly
the same payload; anything else is kept as it is, a 1.6 message the adapter sends verbatim (kind message,
protocol ocpp1.6), so an upgrade in the field loses nothing and sends what the release would have sent.
The other tables (settings: configuration, availability, local list version, reservations, firmware and
security state; auth_cache, local_list, charging_profiles) keep their layout and are left as they are.

Runs inside the caller's transaction (Journal._upgrade): it succeeds as a whole or not at all.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

from agent.ocpp.v16 import transactions as v16
from agent.station.journal import MESSAGE, JournalError, QueuedMessage, TransactionRecord, ended_trigger

# looked up with None too: a MeterValue without samples
_TRIGGER_OF_CONTEXT: dict[str | None, str] = {"Sample.Clock": "meter_sample_clock", "Trigger": "trigger"}


def migrate_release_0_1(db: sqlite3.Connection, schema: str, path: Path) -> None:
    db.execute("ALTER TABLE outbox RENAME TO release_outbox")
    db.execute("ALTER TABLE transactions RENAME TO release_transactions")
    for statement in schema.split(";"):
        if statement.strip():
            db.execute(statement)
    db.row_factory = sqlite3.Row
    try:
        old_transactions = {row["local_id"]: dict(row) for row in db.execute("SELECT * FROM release_transactions")}
        queued = [(row["seq"], row["local_tx"], row["action"], _payload(path, row["payload"]), row["attempts"])
                  for row in db.execute("SELECT * FROM release_outbox ORDER BY seq")]
    finally:
        db.row_factory = None
    records = {local_id: _record(row, queued) for local_id, row in old_transactions.items()}
    next_seq_no: dict[int, int] = {}
    rows: list[tuple[Any, ...]] = []
    for seq, local_tx, action, payload, attempts in queued:
        record = records.get(local_tx) if local_tx is not None else None
        event = _event(action, payload, record) if record is not None else None
        if event is None:  # a message of no transaction, or one the neutral form cannot say exactly
            protocol = None if action == "SecurityEventNotification" and local_tx is None else v16.PROTOCOL
            rows.append((seq, local_tx, MESSAGE, None, None, None, action, protocol, _compressed(payload), attempts))
            continue
        kind, trigger, timestamp, meter_values = event
        assert local_tx is not None
        seq_no = next_seq_no.get(local_tx, 0 if kind == "started" else 1)
        next_seq_no[local_tx] = seq_no + 1
        data = {"meter_values": meter_values} if meter_values else {}
        rows.append((seq, local_tx, kind, trigger, timestamp, seq_no, None, None, _compressed(data), attempts))
    db.executemany(
        "INSERT INTO transactions (local_id, connector_id, id_token, meter_start, started_at, reservation_id,"
        " csms_tx_id, token_status, last_meter, last_meter_at, stopped_at, meter_stop, stop_reason, stop_id_token,"
        " next_seq_no) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.local_id, r.connector_id, r.id_token, r.meter_start, r.started_at, r.reservation_id, r.csms_tx_id,
          r.token_status, r.last_meter, r.last_meter_at, r.stopped_at, r.meter_stop, r.stop_reason, r.stop_id_token,
          next_seq_no.get(r.local_id, 1)) for r in records.values()])
    db.executemany(
        "INSERT INTO queue (seq, local_tx, kind, trigger, timestamp, seq_no, action, protocol, data, attempts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    # local keys are never reused (AUTOINCREMENT): the new table goes on from the release's high-water mark
    (high,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name IN"
                         " ('release_transactions', 'transactions')").fetchone()
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'transactions'")
    db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('transactions', ?)", (high,))
    db.execute("DROP TABLE release_outbox")
    db.execute("DROP TABLE release_transactions")


def _payload(path: Path, stored: bytes | str) -> dict[str, Any]:
    try:
        return json.loads(zlib.decompress(stored) if isinstance(stored, bytes) else stored)
    except (zlib.error, ValueError) as exc:  # the release wrote every row: a row it cannot read is damage
        raise JournalError(f"journal {path}: a queued message of release 0.1 is unreadable: {exc}") from None


def _compressed(data: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(data, separators=(",", ":")).encode())


def _record(row: dict[str, Any], queued: list[tuple[int, int | None, str, dict, int]]) -> TransactionRecord:
    """The release's transaction row in neutral terms; what only its queued Start and Stop say (the
    reservation used, the token that stopped it) is taken from them."""
    reservation_id = stop_id_token = None
    for _, local_tx, action, payload, _ in queued:
        if local_tx == row["local_id"] and action == "StartTransaction":
            reservation_id = payload.get("reservationId")
        elif local_tx == row["local_id"] and action == "StopTransaction":
            stop_id_token = payload.get("idTag")
    status = row["id_tag_status"]
    return TransactionRecord(
        local_id=row["local_id"], connector_id=row["connector_id"], id_token=row["id_tag"],
        meter_start=row["meter_start"], started_at=row["started_at"],
        csms_tx_id=str(row["csms_id"]) if row["csms_id"] is not None else None,
        last_meter=row["last_meter"], last_meter_at=row["last_meter_at"], stopped=row["stopped_at"] is not None,
        reservation_id=reservation_id if isinstance(reservation_id, int) else None,
        token_status=v16.TOKEN_STATUSES.get(status, status), stopped_at=row["stopped_at"],
        meter_stop=row["meter_stop"],
        stop_reason=v16.stop_reason_from_v16(row["stop_reason"]) if row["stop_reason"] is not None else None,
        stop_id_token=stop_id_token if isinstance(stop_id_token, str) else None)


def _event(action: str, payload: dict[str, Any], record: TransactionRecord
           ) -> tuple[str, str, str, list[dict[str, Any]]] | None:
    """(kind, trigger, timestamp, meter values) of a release message of a transaction, or None if the event
    would not render back to exactly this payload."""
    try:
        if action == "StartTransaction":
            event: tuple[str, str, str, list[dict[str, Any]]] = ("started", "authorized", record.started_at, [])
        elif action == "MeterValues":
            meter_values = [v16.meter_value_from_v16(entry) for entry in payload["meterValue"]]
            context = meter_values[0]["samples"][0].get("context") if meter_values[0]["samples"] else None
            event = ("updated", _TRIGGER_OF_CONTEXT.get(context, "meter_sample_periodic"),
                     meter_values[-1]["timestamp"], meter_values)
        elif action == "StopTransaction":
            meter_values = [v16.meter_value_from_v16(entry) for entry in payload.get("transactionData", [])]
            event = ("ended", ended_trigger(record.stop_reason), payload["timestamp"], meter_values)
        else:
            return None
        kind, trigger, timestamp, meter_values = event
        message = QueuedMessage(0, record.local_id, kind, 0, record, trigger, timestamp, 0, meter_values)
        rendered_action, rendered = v16.render(message)
        rendered.pop("transactionId", None)  # the release filled it in when sending, as the adapter does
    except (KeyError, TypeError, ValueError, IndexError, AssertionError):
        return None
    return event if (rendered_action, rendered) == (action, payload) else None
