"""SQLite journal: the source of truth for transactions and their outgoing OCPP messages.

Every transaction-related message is committed here (WAL, synchronous=FULL, so the commit is on
disk) before anything tries to send it. The OCPP layer takes the oldest message, sends it, and
only the CSMS's answer removes it. A power cut at any point leaves either the message queued (it
is sent again: at-least-once) or the answer applied, never a lost message.

The CSMS's transactionId is not known when StopTransaction or MeterValues are queued during an
outage, so those rows refer to the local transaction key and the id is filled in from the
transactions table when the row is sent (-1 if StartTransaction could never be delivered,
as OCPP 1.6 errata 3.18 prescribes).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    local_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    connector_id  INTEGER NOT NULL,
    id_tag        TEXT    NOT NULL,
    meter_start   REAL    NOT NULL,
    started_at    TEXT    NOT NULL,
    csms_id       INTEGER,             -- transactionId from StartTransaction.conf
    id_tag_status TEXT,                -- idTagInfo.status from StartTransaction.conf
    last_meter    REAL    NOT NULL,    -- last journaled register value, for a PowerLoss stop
    last_meter_at TEXT    NOT NULL,
    stopped_at    TEXT,
    meter_stop    REAL,
    stop_reason   TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,      -- rowid order; rows leave from the head, so it stays FIFO
    local_tx   INTEGER REFERENCES transactions(local_id),
    action     TEXT    NOT NULL,
    payload    BLOB    NOT NULL,         -- zlib-compressed JSON: small rows, fewer pages rewritten
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

log = logging.getLogger("evse.journal")

TRANSACTION_ID_UNKNOWN = -1  # OCPP 1.6 errata 3.18
PAGE_SIZE = 512


class JournalError(Exception):
    """The journal cannot be opened or written (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class TransactionRecord:
    local_id: int
    connector_id: int
    id_tag: str
    meter_start: float
    started_at: str
    csms_id: int | None
    last_meter: float
    last_meter_at: str
    stopped: bool


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    local_tx: int | None
    action: str
    payload: dict  # camelCase OCPP payload, transactionId filled in
    attempts: int


class Journal:
    """The journal. Storage bound: when `max_messages` are queued (a long outage), every new MeterValues
    first removes the oldest queued MeterValues, so the samples of the outage thin out from its start;
    StartTransaction and StopTransaction, which carry meterStart/meterStop, are never dropped."""

    def __init__(self, path: Path, max_messages: int = 100_000):
        self.path = Path(path)
        self.max_messages = max_messages
        self.dropped_for_space = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            # small pages: a commit rewrites whole pages, so this cuts the bytes written to the SD card
            # per queued message about fourfold (only takes effect when the file is created)
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            # one agent owns the journal: an exclusive lock keeps a second instance out, and lets SQLite
            # keep the WAL index in memory instead of dirtying a -shm file on the flash at every commit
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit (see write())
            self._durable = True
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        if problems != ["ok"]:  # quick_check reports damage as rows, it does not raise
            self._db.close()
            detail = " ".join(" ".join(str(p) for p in problems[:3]).split())
            raise JournalError(f"journal {self.path}: corrupt: {detail[:200]}")
        self._pending = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For stores that keep their tables in the same file (agent.auth_store); write with write()."""
        return self._db

    def ensure_tables(self, schema: str) -> None:
        """Create the tables of a store that keeps its state in this database (agent.auth_store,
        agent.profile_store), if they are missing: `schema` is CREATE TABLE IF NOT EXISTS statements."""
        with self.write() as db:  # not executescript(): it would commit the open transaction
            for statement in schema.split(";"):
                if statement.strip():
                    db.execute(statement)

    @contextmanager
    def write(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One commit (BEGIN IMMEDIATE ... COMMIT), rolled back on any error.

        durable=True fsyncs the commit (and with it every earlier one). durable=False leaves it to the
        kernel's write-back: it survives a crash of the agent but may be lost with the last seconds of a
        power cut. Only intermediate MeterValues and their deliveries are written that way: losing one
        is harmless, while an fsync per sample would wear out an SD card. Start and Stop are always durable.
        """
        try:
            if durable != self._durable:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    # ---- transactions --------------------------------------------------------------------------

    def begin_transaction(self, connector_id: int, id_tag: str, meter_wh: float, timestamp: str,
                          reservation_id: int | None = None) -> int:
        """Record a new transaction and queue its StartTransaction in one commit; returns the local key.
        A transaction that uses a reservation carries its id, and the reservation's persisted record
        (setting `reservation.<id>`) goes in the same commit: after a crash it is either used or still there."""
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO transactions (connector_id, id_tag, meter_start, started_at, last_meter, last_meter_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (connector_id, id_tag, meter_wh, timestamp, meter_wh, timestamp),
            )
            local_id = cur.lastrowid
            payload = {
                "connectorId": connector_id,
                "idTag": id_tag,
                "meterStart": round(meter_wh),
                "timestamp": timestamp,
            }
            if reservation_id is not None:
                payload["reservationId"] = reservation_id
                db.execute("DELETE FROM settings WHERE key = ?", (f"reservation.{reservation_id}",))
            self._enqueue(db, local_id, "StartTransaction", payload)
        self._pending += 1
        return local_id

    def add_meter_values(
        self, local_id: int, connector_id: int, meter_value: list[dict], meter_wh: float, timestamp: str
    ) -> None:
        """Queue a transaction's MeterValues and remember the register for a PowerLoss stop."""
        with self.write(durable=False) as db:
            db.execute(
                "UPDATE transactions SET last_meter = ?, last_meter_at = ? WHERE local_id = ?",
                (meter_wh, timestamp, local_id),
            )
            dropped = self._make_room(db)
            self._enqueue(
                db, local_id, "MeterValues", {"connectorId": connector_id, "meterValue": meter_value}
            )
        self._pending += 1 - dropped
        self.dropped_for_space += dropped

    def end_transaction(self, local_id: int, payload: dict) -> None:
        """Mark the transaction stopped and queue its StopTransaction (payload without transactionId)."""
        with self.write() as db:
            db.execute(
                "UPDATE transactions SET stopped_at = ?, meter_stop = ?, stop_reason = ?,"
                " last_meter = ?, last_meter_at = ? WHERE local_id = ?",
                (
                    payload["timestamp"],
                    payload["meterStop"],
                    payload.get("reason", "Local"),
                    payload["meterStop"],
                    payload["timestamp"],
                    local_id,
                ),
            )
            self._enqueue(db, local_id, "StopTransaction", payload)
        self._pending += 1

    def enqueue(self, action: str, payload: dict) -> None:
        """Queue a message that belongs to no transaction but must survive an outage or a power cut
        (SecurityEventNotification); it is sent in order with the transaction messages."""
        with self.write() as db:
            self._enqueue(db, None, action, payload)
        self._pending += 1

    def running_transactions(self) -> list[TransactionRecord]:
        rows = self._db.execute(
            "SELECT local_id, connector_id, id_tag, meter_start, started_at, csms_id, last_meter,"
            " last_meter_at, stopped_at IS NOT NULL FROM transactions WHERE stopped_at IS NULL ORDER BY local_id"
        ).fetchall()
        return [TransactionRecord(*row[:8], stopped=bool(row[8])) for row in rows]

    def transaction(self, local_id: int) -> TransactionRecord | None:
        row = self._db.execute(
            "SELECT local_id, connector_id, id_tag, meter_start, started_at, csms_id, last_meter,"
            " last_meter_at, stopped_at IS NOT NULL FROM transactions WHERE local_id = ?",
            (local_id,),
        ).fetchone()
        return TransactionRecord(*row[:8], stopped=bool(row[8])) if row else None

    def local_id_for_csms_id(self, csms_id: int) -> int | None:
        row = self._db.execute(
            "SELECT local_id FROM transactions WHERE csms_id = ? AND stopped_at IS NULL", (csms_id,)
        ).fetchone()
        return row[0] if row else None

    # ---- outbox --------------------------------------------------------------------------------

    def _enqueue(self, db: sqlite3.Connection, local_id: int | None, action: str, payload: dict) -> None:
        db.execute(
            "INSERT INTO outbox (local_tx, action, payload) VALUES (?, ?, ?)",
            (local_id, action, zlib.compress(json.dumps(payload, separators=(",", ":")).encode())),
        )

    def next_message(self) -> QueuedMessage | None:
        """The oldest queued message with the CSMS transactionId filled in, or None."""
        row = self._db.execute(
            "SELECT o.seq, o.local_tx, o.action, o.payload, o.attempts, t.csms_id"
            " FROM outbox o LEFT JOIN transactions t ON t.local_id = o.local_tx ORDER BY o.seq LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        seq, local_tx, action, payload_json, attempts, csms_id = row
        payload = json.loads(zlib.decompress(payload_json))
        if action != "StartTransaction" and local_tx is not None:
            payload["transactionId"] = csms_id if csms_id is not None else TRANSACTION_ID_UNKNOWN
        return QueuedMessage(seq, local_tx, action, payload, attempts)

    def pending_count(self) -> int:
        return self._pending

    def _make_room(self, db: sqlite3.Connection) -> int:
        """At the bound, drop the oldest queued MeterValues (see the class docstring); returns how many."""
        if self._pending < self.max_messages:
            return 0
        oldest = db.execute("SELECT seq FROM outbox WHERE action = 'MeterValues' ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return 0  # only Start/Stop queued: those are never dropped, the bound yields
        db.execute("DELETE FROM outbox WHERE seq = ?", oldest)
        if self.dropped_for_space % 100 == 0:
            log.warning("journal full (%d messages): dropping the oldest queued MeterValues", self._pending)
        return 1

    def message_delivered(self, message: QueuedMessage, response: dict) -> None:
        """The CSMS answered: drop the message and apply what the answer tells us, in one commit."""
        with self.write(durable=message.action != "MeterValues") as db:
            deleted = db.execute("DELETE FROM outbox WHERE seq = ?", (message.seq,)).rowcount
            if message.action == "StartTransaction" and message.local_tx is not None:
                db.execute(
                    "UPDATE transactions SET csms_id = ?, id_tag_status = ? WHERE local_id = ?",
                    (
                        response.get("transactionId"),
                        (response.get("idTagInfo") or {}).get("status"),
                        message.local_tx,
                    ),
                )
            self._forget_finished(db, message.local_tx)
        self._pending -= deleted

    def message_failed(self, message: QueuedMessage) -> int:
        """Count a failed attempt (CALLERROR, or a timeout while connected); returns the attempts so far."""
        with self.write() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE seq = ?", (message.seq,))
        return message.attempts + 1

    def drop_message(self, message: QueuedMessage) -> None:
        """Give up on a message the CSMS repeatedly refused (OCPP 1.6 §3.7.1)."""
        with self.write() as db:
            deleted = db.execute("DELETE FROM outbox WHERE seq = ?", (message.seq,)).rowcount
            self._forget_finished(db, message.local_tx)
        self._pending -= deleted

    def _forget_finished(self, db: sqlite3.Connection, local_id: int | None) -> None:
        """A stopped transaction with nothing left to send has served its purpose."""
        if local_id is None:
            return
        db.execute(
            "DELETE FROM transactions WHERE local_id = ? AND stopped_at IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM outbox WHERE local_tx = ?)",
            (local_id, local_id),
        )

    # ---- persistent settings (OCPP configuration, availability) ---------------------------------

    def settings(self, prefix: str = "") -> dict[str, str]:
        rows = self._db.execute(
            "SELECT key, value FROM settings WHERE key LIKE ? ESCAPE '\\'",
            (prefix.replace("%", "\\%").replace("_", "\\_") + "%",),
        ).fetchall()
        return {key[len(prefix) :]: value for key, value in rows}

    def delete_setting(self, key: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM settings WHERE key = ?", (key,))

    def set_setting(self, key: str, value: str) -> None:
        with self.write() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
