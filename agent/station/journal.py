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

Neutral form: the journal speaks no protocol. A transaction is the station's local key, its token, meter
start and stop, a neutral stop reason and, once the CSMS answered its start, the protocol's own transaction
id as text (`csms_tx_id`). What waits for the CSMS are transaction events (started / updated / ended, with a
trigger, a timestamp, meter values and a per-transaction seq_no) and messages of no transaction (security
events). The protocol adapter renders the wire payload when it sends (agent.ocpp.v16.transactions: 1.6
Start/MeterValues/Stop with their integer transactionId), so an event queued while the CSMS's id is not
known yet goes out with the id known at sending time.

Meter values are {"timestamp", "samples": [{"value", "context", "format", "measurand", "phase", "location",
"unit"}]}: the value is the decimal string as sampled (its precision kept), the other keys are OCPP's shared
vocabulary (ReadingContext, Measurand, Phase, Location, UnitOfMeasure are the same words in 1.6 and 2.0.1),
absent keys left out.

Schema version: PRAGMA user_version (SCHEMA_VERSION). A journal written by release 0.1 (no version, 1.6
payloads in `outbox`) is migrated at open in one SQLite transaction (agent.station.journal_migration); a
journal of a newer version is refused (JournalSetupError) rather than misread.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from agent.core.authorization import TokenInfo
from agent.core.controller import StopReason
from agent.logs import excerpt

SCHEMA_VERSION = 2  # PRAGMA user_version. Release 0.1 wrote none (0): its layout is version 1, migrated at open

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    local_id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- the station's own key
    connector_id   INTEGER NOT NULL,
    id_token       TEXT    NOT NULL,
    meter_start    REAL    NOT NULL,    -- Wh, as read
    started_at     TEXT    NOT NULL,
    reservation_id INTEGER,             -- the reservation the transaction used
    csms_tx_id     TEXT,                -- the protocol's own transaction id, as the CSMS gave it
    token_status   TEXT,                -- what the CSMS answered for the token at the start (accepted, blocked...)
    last_meter     REAL    NOT NULL,    -- last journaled register value, for a power_loss stop
    last_meter_at  TEXT    NOT NULL,
    stopped_at     TEXT,
    meter_stop     REAL,
    stop_reason    TEXT,                -- neutral: local, remote, ev_disconnected, ... (STOP_REASONS)
    stop_id_token  TEXT,                -- the token that stopped it, if one did
    next_seq_no    INTEGER NOT NULL DEFAULT 0  -- the seq_no of the transaction's next event
);
CREATE TABLE IF NOT EXISTS queue (
    seq        INTEGER PRIMARY KEY,      -- rowid order: rows leave from the head, so it stays FIFO
    local_tx   INTEGER REFERENCES transactions(local_id),
    kind       TEXT    NOT NULL,         -- a transaction event (started, updated, ended) or message
    trigger    TEXT,                     -- event: why it happened (TRIGGERS)
    timestamp  TEXT,                     -- event: when
    seq_no     INTEGER,                  -- event: its number within its transaction, from 0
    action     TEXT,                     -- message: its name (SecurityEventNotification)
    protocol   TEXT,                     -- message: NULL, or the protocol of a wire payload kept verbatim
    data       BLOB    NOT NULL,         -- zlib-compressed JSON: small rows, fewer pages rewritten
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

# Why a transaction stopped, in the station's words; each protocol adapter maps them to its own.
STOP_REASONS = tuple(reason.value for reason in StopReason)  # the core's words (agent.core.controller)
# Why a transaction event happened (2.0.1 triggerReason in the station's words; 1.6 does not send it).
TRIGGERS = ("authorized", "ev_connected", "remote_start", "meter_sample_periodic", "meter_sample_clock",
            "stop_requested", "remote_stop", "ev_disconnected", "deauthorized", "unlock_command", "reset_command",
            "abnormal_condition", "trigger", "ev_connect_timeout", "charging_state_changed")
_ENDED_TRIGGER = {"remote": "remote_stop", "ev_disconnected": "ev_disconnected", "deauthorized": "deauthorized",
                  "unlock_command": "unlock_command", "soft_reset": "reset_command", "hard_reset": "reset_command",
                  "reboot": "reset_command", "power_loss": "abnormal_condition", "emergency_stop": "abnormal_condition",
                  "timeout": "ev_connect_timeout", "stopped_by_ev": "charging_state_changed"}
EVENT_KINDS = ("started", "updated", "ended")


def ended_trigger(reason: str | None) -> str:
    """The trigger of a transaction's ended event, from its stop reason."""
    return _ENDED_TRIGGER.get(reason or "local", "stop_requested")
MESSAGE = "message"  # the kind of a queued message that belongs to no transaction event

log = logging.getLogger("evse.journal")

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
    id_token: str
    meter_start: float
    started_at: str
    csms_tx_id: str | None  # the protocol's transaction id; None until the CSMS answered the start
    last_meter: float
    last_meter_at: str
    stopped: bool
    reservation_id: int | None = None
    token_status: str | None = None
    stopped_at: str | None = None
    meter_stop: float | None = None
    stop_reason: str | None = None
    stop_id_token: str | None = None

    @property
    def csms_tx_number(self) -> int | None:
        """The CSMS's transaction id as an integer when it is one (every OCPP 1.6 id is), else None."""
        try:
            return int(self.csms_tx_id) if self.csms_tx_id is not None else None
        except ValueError:
            return None


@dataclass(frozen=True)
class QueuedMessage:
    """The oldest thing waiting for the CSMS: a transaction event (kind started/updated/ended, with its
    transaction as it is now) or a message of no transaction (kind MESSAGE: action and payload)."""

    seq: int
    local_tx: int | None
    kind: str
    attempts: int
    transaction: TransactionRecord | None = None
    trigger: str | None = None
    timestamp: str | None = None
    seq_no: int | None = None
    meter_values: list[dict[str, Any]] = field(default_factory=list)
    action: str | None = None
    payload: dict[str, Any] | None = None
    protocol: str | None = None  # a message kept as the wire payload of this protocol (from a migration)


@dataclass(frozen=True)
class Delivery:
    """What the CSMS's answer to a queued message says, in the station's terms (the adapter reads it)."""

    csms_tx_id: str | None = None  # the transaction id the CSMS gave in answer to a start
    token_status: str | None = None  # what it said about the token of a start: accepted, blocked, expired...
    id_token: str | None = None  # the token the message carried
    token: TokenInfo | None = None  # the CSMS's full answer about that token (for the authorization cache)
    started: bool = False  # the answer to the transaction's start


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
            version = self._schema_version()  # a newer journal is refused before anything is written
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit (see write())
            self._durable = True
            if version < SCHEMA_VERSION:
                self._upgrade(version)
            self._db.execute("PRAGMA foreign_keys=ON")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
            if problems == ["ok"] and identity is None:  # a journal from before identities: give it one
                identity = str(uuid.uuid4())
                self._db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self._db.execute("INSERT INTO journal_info (key, value) VALUES ('id', ?)", (identity,))
            self._inode = _inode(os.stat(self.path))
        except JournalError:  # refused, or a migration that could not read what it found: nothing kept open
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
        self._pending: int = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

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
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
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

    def _schema_version(self) -> int:
        """The journal's schema version: user_version, or 1 for release 0.1's layout (no version, `outbox`)."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise JournalSetupError(
                f"journal {self.path}: written by a newer evse-agent (journal schema version {version}; this one "
                f"reads up to {SCHEMA_VERSION}): install that version again, or move the journal away to start "
                f"with an empty one (its queued messages and open transactions would be lost)")
        if version == 0 and self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone():
            return 1
        return version

    def _upgrade(self, version: int) -> None:
        """Bring the schema to SCHEMA_VERSION in one transaction (before foreign keys are enforced: tables
        are rebuilt). A journal of no version and no tables (one from before identities) is just created."""
        from agent.station.journal_migration import migrate_release_0_1  # it needs the 1.6 adapter's reading

        self._db.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                migrate_release_0_1(self._db, SCHEMA, self.path)
            for statement in SCHEMA.split(";"):  # not executescript(): it would commit the open transaction
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        if version == 1:
            log.warning("journal %s: migrated from release 0.1 to schema version %d", self.path, SCHEMA_VERSION)

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

    def begin_transaction(self, connector_id: int, id_token: str, meter_wh: float, timestamp: str,
                          reservation_id: int | None = None, trigger: str = "authorized") -> int:
        """Record a new transaction and queue its started event in one commit; returns the local key.
        A transaction that uses a reservation carries its id, and the reservation's persisted record
        (setting `reservation.<id>`) goes in the same commit: after a crash it is either used or still there."""
        with self.write() as db:
            cur = db.execute(
                "INSERT INTO transactions (connector_id, id_token, meter_start, started_at, reservation_id,"
                " last_meter, last_meter_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (connector_id, id_token, meter_wh, timestamp, reservation_id, meter_wh, timestamp),
            )
            local_id = cur.lastrowid
            assert local_id is not None  # set by every INSERT
            if reservation_id is not None:
                db.execute("DELETE FROM settings WHERE key = ?", (f"reservation.{reservation_id}",))
            self._queue_event(db, local_id, "started", trigger, timestamp, [])
        self._pending += 1
        return local_id

    def add_meter_values(self, local_id: int, meter_values: list[dict[str, Any]], meter_wh: float, timestamp: str,
                         trigger: str = "meter_sample_periodic") -> None:
        """Queue a transaction's updated event with its meter values (neutral form, see the module docstring)
        and remember the register for a power_loss stop."""
        with self.write(durable=False) as db:
            db.execute(
                "UPDATE transactions SET last_meter = ?, last_meter_at = ? WHERE local_id = ?",
                (meter_wh, timestamp, local_id),
            )
            dropped = self._make_room(db)
            self._queue_event(db, local_id, "updated", trigger, timestamp, meter_values)
        self._pending += 1 - dropped
        self.dropped_for_space += dropped

    def end_transaction(self, local_id: int, meter_stop_wh: float, timestamp: str, reason: str,
                        id_token: str | None = None, meter_values: list[dict[str, Any]] | None = None,
                        trigger: str | None = None) -> None:
        """Mark the transaction stopped (reason: one of STOP_REASONS) and queue its ended event, with the
        meter values of the transaction (its begin and end registers) if configured."""
        with self.write() as db:
            db.execute(
                "UPDATE transactions SET stopped_at = ?, meter_stop = ?, stop_reason = ?, stop_id_token = ?,"
                " last_meter = ?, last_meter_at = ? WHERE local_id = ?",
                (timestamp, meter_stop_wh, reason, id_token, meter_stop_wh, timestamp, local_id),
            )
            self._queue_event(db, local_id, "ended", trigger or ended_trigger(reason),
                              timestamp, meter_values or [])
        self._pending += 1

    def enqueue(self, action: str, payload: dict[str, Any], protocol: str | None = None) -> None:
        """Queue a message that belongs to no transaction but must survive an outage or a power cut
        (SecurityEventNotification); it is sent in order with the transaction events."""
        with self.write() as db:
            db.execute("INSERT INTO queue (local_tx, kind, action, protocol, data) VALUES (NULL, ?, ?, ?, ?)",
                       (MESSAGE, action, protocol, _compressed(self.path, action, payload)))
        self._pending += 1

    def running_transactions(self) -> list[TransactionRecord]:
        rows = self._db.execute(
            f"SELECT {_transaction_columns()} FROM transactions WHERE stopped_at IS NULL ORDER BY local_id").fetchall()
        return [_transaction_record(row) for row in rows]

    def transaction(self, local_id: int) -> TransactionRecord | None:
        row = self._db.execute(f"SELECT {_transaction_columns()} FROM transactions WHERE local_id = ?",
                               (local_id,)).fetchone()
        return _transaction_record(row) if row else None

    def local_id_for_csms_id(self, csms_tx_id: str | int) -> int | None:
        """The running transaction the CSMS knows by this id (a protocol's integer id is compared as text)."""
        row = self._db.execute(
            "SELECT local_id FROM transactions WHERE csms_tx_id = ? AND stopped_at IS NULL", (str(csms_tx_id),)
        ).fetchone()
        return row[0] if row else None

    # ---- queue ---------------------------------------------------------------------------------

    def _queue_event(self, db: sqlite3.Connection, local_id: int, kind: str, trigger: str, timestamp: str,
                     meter_values: list[dict[str, Any]]) -> None:
        (seq_no,) = db.execute("SELECT next_seq_no FROM transactions WHERE local_id = ?", (local_id,)).fetchone()
        db.execute("UPDATE transactions SET next_seq_no = ? WHERE local_id = ?", (seq_no + 1, local_id))
        data = {"meter_values": meter_values} if meter_values else {}
        db.execute(
            "INSERT INTO queue (local_tx, kind, trigger, timestamp, seq_no, data) VALUES (?, ?, ?, ?, ?, ?)",
            (local_id, kind, trigger, timestamp, seq_no, _compressed(self.path, kind, data)),
        )

    def next_message(self) -> QueuedMessage | None:
        """The oldest queued event or message, with its transaction as it is now, or None. JournalError if
        the journal file was deleted or replaced (what it holds could no longer be marked delivered)."""
        self.check()
        queued = read_queue(self._db, limit=1)
        return queued[0] if queued else None

    def pending_count(self) -> int:
        return self._pending

    def _make_room(self, db: sqlite3.Connection) -> int:
        """At the bound, drop the oldest queued updated event (see the class docstring); returns how many."""
        if self._pending < self.max_messages:
            return 0
        oldest = db.execute("SELECT seq FROM queue WHERE kind = 'updated' ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return 0  # only starts and ends queued: those are never dropped, the bound yields
        db.execute("DELETE FROM queue WHERE seq = ?", oldest)
        if self.dropped_for_space % 100 == 0:
            log.warning("journal full (%d messages): dropping the oldest queued meter values", self._pending)
        return 1

    def message_delivered(self, message: QueuedMessage, delivery: Delivery | None = None) -> None:
        """The CSMS answered: drop the message and apply what the answer tells us, in one commit."""
        delivery = delivery or Delivery()
        with self.write(durable=message.kind != "updated") as db:
            deleted = db.execute("DELETE FROM queue WHERE seq = ?", (message.seq,)).rowcount
            if delivery.started and message.local_tx is not None:
                db.execute("UPDATE transactions SET csms_tx_id = ?, token_status = ? WHERE local_id = ?",
                           (delivery.csms_tx_id, delivery.token_status, message.local_tx))
            self._forget_finished(db, message.local_tx)
        self._pending -= deleted

    def message_failed(self, message: QueuedMessage) -> int:
        """Count a failed attempt (CALLERROR, or a timeout while connected); returns the attempts so far."""
        with self.write() as db:
            db.execute("UPDATE queue SET attempts = attempts + 1 WHERE seq = ?", (message.seq,))
        return message.attempts + 1

    def drop_message(self, message: QueuedMessage) -> None:
        """Give up on a message the CSMS repeatedly refused (OCPP 1.6 §3.7.1)."""
        with self.write() as db:
            deleted = db.execute("DELETE FROM queue WHERE seq = ?", (message.seq,)).rowcount
            self._forget_finished(db, message.local_tx)
        self._pending -= deleted

    def _forget_finished(self, db: sqlite3.Connection, local_id: int | None) -> None:
        """A stopped transaction with nothing left to send has served its purpose."""
        if local_id is None:
            return
        db.execute(
            "DELETE FROM transactions WHERE local_id = ? AND stopped_at IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM queue WHERE local_tx = ?)",
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


_TRANSACTION_FIELDS = ("local_id", "connector_id", "id_token", "meter_start", "started_at", "csms_tx_id", "last_meter",
                       "last_meter_at", "stopped_at IS NOT NULL", "reservation_id", "token_status", "stopped_at",
                       "meter_stop", "stop_reason", "stop_id_token")  # TransactionRecord's fields, in order


def _transaction_columns(table: str = "") -> str:
    return ", ".join(f"{table}{column}" for column in _TRANSACTION_FIELDS)


def _transaction_record(row: tuple[Any, ...]) -> TransactionRecord:
    """A row of _TRANSACTION_FIELDS: the record's fields in order (`stopped_at IS NOT NULL` is `stopped`)."""
    return TransactionRecord(*(*row[:8], bool(row[8]), *row[9:]))  # one tuple: mypy cannot count starred slices


def read_queue(db: sqlite3.Connection, limit: int = -1) -> list[QueuedMessage]:
    """The queued events and messages in send order, each with its transaction as it is now. Also for
    tools that read a copy of a stopped agent's journal (hil.chaos, the resilience tests)."""
    rows = db.execute(
        f"SELECT q.seq, q.local_tx, q.kind, q.attempts, q.trigger, q.timestamp, q.seq_no, q.action, q.protocol,"
        f" q.data, {_transaction_columns('t.')} FROM queue q LEFT JOIN transactions t ON t.local_id = q.local_tx"
        f" ORDER BY q.seq LIMIT ?", (limit,)).fetchall()
    queued = []
    for seq, local_tx, kind, attempts, trigger, timestamp, seq_no, action, protocol, data, *tx in rows:
        body = json.loads(zlib.decompress(data))
        transaction = _transaction_record(tuple(tx)) if tx[0] is not None else None
        if kind == MESSAGE:
            queued.append(QueuedMessage(seq, local_tx, kind, attempts, transaction, action=action, payload=body,
                                        protocol=protocol))
        else:
            queued.append(QueuedMessage(seq, local_tx, kind, attempts, transaction, trigger, timestamp, seq_no,
                                        body.get("meter_values", [])))
    return queued


def _compressed(path: Path, what: str, data: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise JournalValueError(f"journal {path}: cannot store the {what} data: {exc}", data) from None
    return zlib.compress(text.encode())


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
