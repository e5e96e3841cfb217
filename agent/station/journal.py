"""SQLite journal: the source of truth for transactions and their outgoing OCPP messages.

Every transaction-related message is committed here (WAL, synchronous=FULL, so the commit is on
disk) before anything tries to send it. The OCPP layer takes the oldest message, sends it, and
only the CSMS's answer removes it. A power cut at any point leaves either the message queued (it
is sent again: at-least-once) or the answer applied, never a lost message.

Identity: a journal is a SQLite file with application_id EVSE and a `journal_info` row holding the UUID it
was created with; the same UUID is in the sidecar file `<journal>.id`. At start, a journal that is missing,
empty (0 bytes), or without its row while the sidecar says it was created, was deleted, truncated or
replaced: it is refused (JournalSetupError, `evse run` exits 2), never silently started afresh, since its
queued messages and open transactions would be lost. Only no journal and no sidecar is a new install.
While running, every commit first checks that the path still names the file that was opened; if it was
deleted or replaced, the journal refuses to write (the station faults every connector) and saves what
the open file holds to `<journal>.rescued`.

The file holds the AuthorizationKey: it (and its -wal/-journal files, which SQLite creates with the
database's own mode) is 0600 whatever the umask, and an existing one is set to 0600 at open.

The CSMS's transactionId is not known when StopTransaction or MeterValues are queued during an
outage, so those rows refer to the local transaction key and the id is filled in from the
transactions table when the row is sent (-1 if StartTransaction could never be delivered,
as OCPP 1.6 errata 3.18 prescribes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import stat
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from agent.logs import excerpt

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
CREATE TABLE IF NOT EXISTS journal_info (
    key   TEXT PRIMARY KEY,                -- 'id': the UUID this journal was created with (see <journal>.id)
    value TEXT NOT NULL
);
"""

log = logging.getLogger("evse.journal")

TRANSACTION_ID_UNKNOWN = -1  # OCPP 1.6 errata 3.18
PAGE_SIZE = 512
APPLICATION_ID = 0x45565345  # "EVSE" in the SQLite header: this file is an evse-agent journal
FILE_MODE = 0o600  # the journal holds the AuthorizationKey
MARKER_SUFFIX = ".id"
RESCUE_SUFFIX = ".rescued"
SQLITE_INTEGER_MIN, SQLITE_INTEGER_MAX = -(2**63), 2**63 - 1


class JournalError(Exception):
    """The journal cannot be opened or written (disk full, read-only, corrupt)."""


class JournalSetupError(JournalError):
    """The journal cannot be used as configured: a path that is no journal file (a directory, a device, a
    directory that cannot be created or written), or a journal that was emptied, deleted or replaced.
    A technician must act; `evse run` exits 2 with this one-line message."""


class JournalValueError(JournalError):
    """A value the journal cannot store (an integer beyond 64 bits, a string with a lone surrogate, a NaN,
    a payload that is no JSON). Nothing of the commit was written; the journal itself is fine."""

    def __init__(self, message: str, value: object):
        super().__init__(message)
        self.value = value


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
    payload: dict[str, Any]  # camelCase OCPP payload, transactionId filled in
    attempts: int


class Journal:
    """The journal. Storage bound: when `max_messages` are queued (a long outage), every new MeterValues
    first removes the oldest queued MeterValues, so the samples of the outage thin out from its start;
    StartTransaction and StopTransaction, which carry meterStart/meterStop, are never dropped."""

    def __init__(self, path: Path, max_messages: int = 100_000):
        self.path = Path(path)
        self.marker_path = self.path.with_name(self.path.name + MARKER_SUFFIX)
        self.max_messages = max_messages
        self.dropped_for_space = 0
        self._lost: str | None = None  # why writing stopped for good: the file was deleted or replaced
        self._wal_inode: tuple[int, int] | None = None
        existing = self._check_path()
        marker = self._read_marker()
        created = None
        if existing is None:
            self._refuse_if_deleted(marker)
            created = self._create()
        elif existing.st_size == 0:
            raise JournalSetupError(
                f"journal {self.path} is empty (0 bytes): it was truncated, and the queued messages and open "
                f"transactions it held with it; restore it {self._restore_from()}, or remove it"
                f"{' and ' + str(self.marker_path) if marker else ''} to start with an empty journal")
        else:
            _restrict_mode(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            # one agent owns the journal: an exclusive lock keeps a second instance out, and lets SQLite
            # keep the WAL index in memory instead of dirtying a -shm file on the flash at every commit
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            identity = self._identity(marker, created)  # before anything writes to a file we may refuse
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit (see write())
            self._durable = True
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems == ["ok"] and identity is None:  # a journal from before identities: give it one
                identity = str(uuid.uuid4())
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._db.execute("INSERT INTO journal_info (key, value) VALUES ('id', ?)", (identity,))
            self._inode = _inode(os.stat(self.path))
        except JournalSetupError:
            self._db.close()
            raise
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        if problems != ["ok"]:  # quick_check reports damage as rows, it does not raise
            self._db.close()
            detail = " ".join(" ".join(str(p) for p in problems[:3]).split())
            raise JournalError(f"journal {self.path}: corrupt: {detail[:200]}")
        for companion in ("-wal", "-journal", "-shm"):  # SQLite gives them the database's mode
            _restrict_mode(self.path.with_name(self.path.name + companion))
        if identity is not None and marker != identity:  # not None here: given one above if it had none
            if marker is None and created is None:
                log.warning("journal %s: its identity file %s was missing: written again", self.path,
                            self.marker_path)
            self._write_marker(identity)
        self._note_wal()
        self._pending: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    # ---- opening: the path, the journal's identity ----------------------------------------------

    def _check_path(self) -> os.stat_result | None:
        """The journal's stat, None if it does not exist yet; JournalSetupError for a path that can be no
        journal (evse run exits 2 and names it)."""
        where = f"journal {self.path}"
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise JournalSetupError(f"{where}: {parent} (or a directory above it) is not a directory") from None
        except OSError as exc:
            raise JournalSetupError(f"{where}: cannot create its directory {parent}: "
                                    f"{exc.strerror or exc}") from None
        try:
            existing = os.stat(self.path)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise JournalSetupError(f"{where}: {exc.strerror or exc}") from None
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise JournalSetupError(f"{where}: is {_kind(existing.st_mode)}, not a journal file: "
                                    "set [journal] path to a file in a writable directory")
        if not os.access(parent, os.W_OK | os.X_OK):  # SQLite creates its write-ahead log beside the journal
            raise JournalSetupError(f"{where}: its directory {parent} is not writable by uid {os.geteuid()}")
        if existing is not None and not os.access(self.path, os.R_OK | os.W_OK):
            raise JournalSetupError(f"{where}: not readable and writable by uid {os.geteuid()}")
        return existing

    def _read_marker(self) -> str | None:
        try:
            text = self.marker_path.read_text("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise JournalSetupError(f"journal {self.path}: cannot read its identity file {self.marker_path}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        return text or None

    def _restore_from(self) -> str:
        rescued = self.path.with_name(self.path.name + RESCUE_SUFFIX)
        if rescued.exists():
            return f"from {rescued} (saved when the agent noticed the loss) or from a backup"
        return "from a backup"

    def _refuse_if_deleted(self, marker: str | None) -> None:
        """No journal file: a new install, unless something says there was one."""
        if marker is not None:
            raise JournalSetupError(
                f"journal {self.path} is missing, but {self.marker_path} says this station created it: it was "
                f"deleted, with the queued messages and open transactions it held; restore it "
                f"{self._restore_from()}, or remove {self.marker_path} to start with an empty journal")
        for companion in ("-wal", "-journal"):
            left = self.path.with_name(self.path.name + companion)
            if left.exists():
                raise JournalSetupError(
                    f"journal {self.path} is missing, but its {left.name} is there: the journal was deleted, with "
                    f"the queued messages and open transactions it held; restore it {self._restore_from()}, "
                    f"or remove {left} to start with an empty journal")

    def _create(self) -> str:
        """A new journal: built under a temporary name and renamed into place, so a journal file that
        exists was always complete (an empty one was truncated). Returns its identity."""
        building = self.path.with_name(self.path.name + ".new")
        try:
            for leftover in (building, building.with_name(building.name + "-journal")):
                leftover.unlink(missing_ok=True)
            _create_private(building)
            db = sqlite3.connect(building, isolation_level=None)
            try:
                # small pages: a commit rewrites whole pages, so this cuts the bytes written to the SD card
                # per queued message about fourfold (only takes effect when the file is created)
                db.execute(f"PRAGMA page_size={PAGE_SIZE}")
                db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                db.executescript(SCHEMA)
                identity = str(uuid.uuid4())
                db.execute("INSERT INTO journal_info (key, value) VALUES ('id', ?)", (identity,))
            finally:
                db.close()
            os.replace(building, self.path)
            _fsync_directory(self.path.parent)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                building.unlink()
            raise JournalError(f"journal {self.path}: cannot create it: {exc}") from exc
        log.info("journal %s created (id %s)", self.path, identity)
        return identity

    def _identity(self, marker: str | None, created: str | None) -> str | None:
        """The UUID stored in the journal, checked against the identity file; None for a journal from before
        identities (no file either). JournalSetupError for an emptied or replaced journal."""
        application_id = self._db.execute("PRAGMA application_id").fetchone()[0]
        if application_id not in (0, APPLICATION_ID):
            raise JournalSetupError(f"journal {self.path}: is another program's SQLite database "
                                    f"(application_id {application_id:#x}): set [journal] path to another file")
        has_table = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'journal_info'").fetchone()
        row = self._db.execute("SELECT value FROM journal_info WHERE key = 'id'").fetchone() if has_table else None
        identity = row[0] if row else None
        if identity is None and marker is not None:
            raise JournalSetupError(
                f"journal {self.path} has lost its identity row, but {self.marker_path} says this station created "
                f"it: it was emptied or replaced, and the queued messages and open transactions it held with it; "
                f"restore it {self._restore_from()}, or remove it and {self.marker_path} to start with an empty journal")
        if identity is not None and marker is not None and identity != marker and created is None:
            raise JournalSetupError(
                f"journal {self.path} is not the one this station created (id {identity}, {self.marker_path} says "
                f"{marker}): it was replaced; restore the right one {self._restore_from()}, or remove "
                f"{self.marker_path} to keep this one")
        return identity

    def _write_marker(self, identity: str) -> None:
        part = self.marker_path.with_name(self.marker_path.name + ".part")
        try:
            part.unlink(missing_ok=True)
            _create_private(part, f"{identity}\n".encode())
            os.replace(part, self.marker_path)
            _fsync_directory(self.path.parent)
        except OSError as exc:
            self._db.close()
            raise JournalError(f"journal {self.path}: cannot write its identity file {self.marker_path}: "
                               f"{exc.strerror or exc}") from None

    # ---- the file under the open database ---------------------------------------------------------

    def _note_wal(self) -> None:
        """Remember which file is our write-ahead log, so a lost journal does not leave it to a successor."""
        if self._wal_inode is None:
            with contextlib.suppress(OSError):
                self._wal_inode = _inode(os.stat(self.path.with_name(self.path.name + "-wal")))

    def check(self) -> None:
        """Raise JournalError if the journal file was deleted or replaced since it was opened (every commit
        checks this first; the station may also call it periodically)."""
        if self._lost is not None:
            raise JournalError(self._lost)
        try:
            now = _inode(os.stat(self.path))
        except FileNotFoundError:
            now = None
        except OSError:
            return  # cannot tell (an unreadable directory): SQLite's own errors will say what is wrong
        if now == self._inode:
            return
        what = "deleted" if now is None else "replaced"
        self._lost = (f"journal {self.path}: journal file was deleted or replaced while running ({what}); "
                      f"{self._rescue(deleted=now is None)}")
        log.critical("%s", self._lost)
        raise JournalError(self._lost)

    def _rescue(self, deleted: bool) -> str:
        """Save what the open (unlinked) database still holds beside it; the sentence for the log."""
        pending = self.pending_count()
        target = self.path.with_name(self.path.name + RESCUE_SUFFIX)
        number = 1
        while target.exists():
            number += 1
            target = self.path.with_name(f"{self.path.name}{RESCUE_SUFFIX}.{number}")
        try:
            _create_private(target)
            copy = sqlite3.connect(target)
            try:
                self._db.backup(copy)
            finally:
                copy.close()
        except (sqlite3.Error, OSError) as exc:
            return f"its {pending} queued message(s) and open transactions could not be saved: {exc}"
        wal = self.path.with_name(self.path.name + "-wal")
        with contextlib.suppress(OSError):  # ours, and it would be replayed into whatever is restored there
            if deleted and self._wal_inode is not None and _inode(os.stat(wal)) == self._wal_inode:
                wal.unlink()
        return (f"its {pending} queued message(s) and open transactions were saved to {target}: stop the agent "
                f"and move that file to {self.path} to keep them; nothing is written until then")

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For stores that keep their tables in the same file (agent.station.auth_store); write with write()."""
        return self._db

    def ensure_tables(self, schema: str) -> None:
        """Create the tables of a store that keeps its state in this database (agent.station.auth_store,
        agent.station.profile_store), if they are missing: `schema` is CREATE TABLE IF NOT EXISTS statements."""
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

        Every bound value is checked first: one SQLite cannot store raises JournalValueError (nothing of
        the commit is written). The file is checked too: one deleted or replaced raises JournalError.
        """
        self.check()
        try:
            if durable != self._durable:
                self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield cast(sqlite3.Connection, _CheckedConnection(self._db, self.path))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc
        except (OverflowError, UnicodeEncodeError) as exc:  # a value bound outside execute()/executemany()
            raise JournalValueError(f"journal {self.path}: cannot store a value: {exc}", None) from exc
        if self._wal_inode is None:
            self._note_wal()

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
            assert local_id is not None  # set by every INSERT
            payload: dict[str, Any] = {
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
        self, local_id: int, connector_id: int, meter_value: list[dict[str, Any]], meter_wh: float,
        timestamp: str,
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

    def end_transaction(self, local_id: int, payload: dict[str, Any]) -> None:
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

    def enqueue(self, action: str, payload: dict[str, Any]) -> None:
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
        return [_transaction_record(row) for row in rows]

    def transaction(self, local_id: int) -> TransactionRecord | None:
        row = self._db.execute(
            "SELECT local_id, connector_id, id_tag, meter_start, started_at, csms_id, last_meter,"
            " last_meter_at, stopped_at IS NOT NULL FROM transactions WHERE local_id = ?",
            (local_id,),
        ).fetchone()
        return _transaction_record(row) if row else None

    def local_id_for_csms_id(self, csms_id: int) -> int | None:
        if not SQLITE_INTEGER_MIN <= csms_id <= SQLITE_INTEGER_MAX:
            return None  # no transaction can have it: the journal could not have stored it
        row = self._db.execute(
            "SELECT local_id FROM transactions WHERE csms_id = ? AND stopped_at IS NULL", (csms_id,)
        ).fetchone()
        return row[0] if row else None

    # ---- outbox --------------------------------------------------------------------------------

    def _enqueue(self, db: sqlite3.Connection, local_id: int | None, action: str,
                 payload: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO outbox (local_tx, action, payload) VALUES (?, ?, ?)",
            (local_id, action, zlib.compress(_payload_json(self.path, action, payload).encode())),
        )

    def next_message(self) -> QueuedMessage | None:
        """The oldest queued message with the CSMS transactionId filled in, or None. JournalError if the
        journal file was deleted or replaced (what it holds could no longer be marked delivered)."""
        self.check()
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

    def message_delivered(self, message: QueuedMessage, response: dict[str, Any]) -> None:
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


# ---- helpers -------------------------------------------------------------------------------------------


class _CheckedConnection:
    """The connection inside one write(): every bound parameter is checked before SQLite sees it, so a
    value it cannot store raises JournalValueError naming that value, instead of an OverflowError (or a
    NaN silently stored as NULL) halfway through a commit."""

    def __init__(self, db: sqlite3.Connection, path: Path):
        self._db = db
        self._path = path

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        self._check(parameters)
        return self._db.execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Any) -> sqlite3.Cursor:
        rows = list(seq_of_parameters)
        for parameters in rows:
            self._check(parameters)
        return self._db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)

    def _check(self, parameters: Any) -> None:
        for value in parameters.values() if isinstance(parameters, dict) else parameters:
            _check_storable(self._path, value)


def _check_storable(path: Path, value: object) -> None:
    if value is None or isinstance(value, bytes | bytearray | memoryview):
        return
    reason = None
    if isinstance(value, int):
        if not SQLITE_INTEGER_MIN <= value <= SQLITE_INTEGER_MAX:
            reason = "an integer beyond SQLite's 64-bit range"
    elif isinstance(value, float):
        if math.isnan(value):
            reason = "NaN (SQLite would store NULL)"
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            reason = "a string with a lone surrogate, which is no UTF-8"
    else:
        reason = f"of type {type(value).__name__}"
    if reason is not None:
        raise JournalValueError(f"journal {path}: cannot store the value {excerpt(repr(value), 60)}: {reason}", value)


def _transaction_record(row: tuple[Any, ...]) -> TransactionRecord:
    """A row of the transaction SELECTs: the record's fields in order, the last `stopped_at IS NOT NULL`."""
    return TransactionRecord(*(*row[:8], bool(row[8])))  # one tuple: mypy cannot count a starred slice


def _payload_json(path: Path, action: str, payload: dict[str, Any]) -> str:
    try:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JournalValueError(f"journal {path}: cannot store the {action} payload: {exc}", payload) from None


def _inode(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _create_private(path: Path, content: bytes = b"") -> None:
    """Create `path` with mode 0600 whatever the umask (O_EXCL: never through a planted file), fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        if content:
            os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def _restrict_mode(path: Path) -> None:
    """An existing journal file readable by others (created before this rule, or by hand) becomes 0600."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("journal file %s: cannot read its mode: %s", path, exc.strerror or exc)
        return
    if mode & ~FILE_MODE:
        try:
            os.chmod(path, FILE_MODE)
        except OSError as exc:
            log.warning("journal file %s has mode %04o and cannot be set to %04o (it holds the AuthorizationKey): "
                        "%s", path, mode, FILE_MODE, exc.strerror or exc)
            return
        log.warning("journal file %s had mode %04o: set to %04o (it holds the AuthorizationKey)", path, mode,
                    FILE_MODE)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
