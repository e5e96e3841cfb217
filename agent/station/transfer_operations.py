"""What firmware updates, diagnostics and log uploads share (agent.station.firmware, agent.station.diagnostics):
the operation, the station they act for (FirmwareHost), the transfer bounds and retries, and the status
notifications.

Each operation runs in a task of its own; the OCPP handlers only prepare it and start it once their
answer is out (agent.ocpp.v16.firmware). One firmware operation (plain or signed) at a time, one
diagnostics upload and one log upload.

Every status goes out as a non-transaction message while the station is registered; the latest
one is sent again after a reconnect while an operation runs or until it was delivered. The
firmware state is kept in the journal (settings key "firmware.state"), so a restart in the middle
is reported rather than forgotten. Files live under `<journal dir>/firmware/` and
`<journal dir>/diagnostics/`, never in /tmp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ocpp.v16 import call

from agent.logs import StationLogs
from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.station.journal import JournalError

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.ocpp.security import SecurityManager
    from agent.ocpp.v16.config import OcppConfiguration
    from agent.station.csms_link import CsmsLink
    from agent.station.journal import Journal

log = logging.getLogger("evse.firmware")
security_log = logging.getLogger("evse.security.firmware")

UPDATE_FIRMWARE = "UpdateFirmware"
SIGNED_UPDATE_FIRMWARE = "SignedUpdateFirmware"
GET_DIAGNOSTICS = "GetDiagnostics"
GET_LOG = "GetLog"

STATE_KEY = "firmware.state"  # journal setting: the firmware operation, JSON
DEFAULT_MAX_DOWNLOAD_BYTES = 200 * 1024 * 1024
DEFAULT_RETRIES = 1  # "retries" absent: the charge point decides (one more attempt after a failure)
DEFAULT_RETRY_INTERVAL_S = 30
MAX_RETRIES = 20
MAX_RETRY_INTERVAL_S = 24 * 3600
TRANSFER_TIMEOUT_S = 30.0  # read timeout ([transfer] read_timeout_s)
DOWNLOAD_DEADLINE_S = 600.0  # a firmware download's total deadline at the least ([transfer] firmware_deadline_s)
MIN_DOWNLOAD_RATE = 256 * 1024  # bytes/s: a larger size limit gets a deadline long enough at this rate
UPLOAD_DEADLINE_S = 300.0  # diagnostics and logs ([transfer] upload_deadline_s)
DELIVERY_WAIT_S = 5.0  # how long a last status may take to reach the CSMS before a restart


def parse_time(text: Any) -> datetime | None:
    """An OCPP dateTime as an aware UTC datetime; None if it is not one (the schema does not check)."""
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def sleep_until(when: datetime, wall_clock: Callable[[], datetime]) -> None:
    """Sleep until the wall clock reaches `when`; re-checked every minute, so a clock set by the CSMS counts."""
    while (remaining := (when - wall_clock()).total_seconds()) > 0:
        await asyncio.sleep(min(remaining, 60.0))


def _attempts(retries: Any) -> int:
    if not isinstance(retries, int) or isinstance(retries, bool):
        retries = DEFAULT_RETRIES
    return 1 + min(max(retries, 0), MAX_RETRIES)


def _interval(retry_interval: Any) -> float:
    if not isinstance(retry_interval, int) or isinstance(retry_interval, bool):
        return DEFAULT_RETRY_INTERVAL_S
    return float(min(max(retry_interval, 0), MAX_RETRY_INTERVAL_S))


def _safe_name(text: str, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100].strip("._")
    return name or fallback


async def _delivery(sent: asyncio.Future | None) -> None:
    """Wait a moment for a status notification to reach the CSMS (not at all while offline)."""
    if sent is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(sent), DELIVERY_WAIT_S)


@dataclass
class Operation:
    kind: str  # UPDATE_FIRMWARE, SIGNED_UPDATE_FIRMWARE, GET_DIAGNOSTICS or GET_LOG
    request_id: int | None = None
    status: str = "Idle"
    in_progress: bool = True
    delivered: bool = True  # the latest status reached the CSMS (nothing to send yet counts as delivered)
    seq: int = 0
    task: asyncio.Task | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    file_name: str | None = None

    def stop(self) -> None:
        self.cancel.set()  # a transfer thread ends at its next block
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def view(self) -> dict:
        return {"operation": self.kind, "status": self.status, "inProgress": self.in_progress,
                "requestId": self.request_id}


@dataclass
class FirmwareHost:
    """What the firmware manager needs of the station, given to it explicitly (agent.station.station)."""

    config: Callable[[], AgentConfig]  # the config in force (a SIGHUP may replace it)
    journal: Journal  # its state, and beside the journal file: the firmware and upload directories
    configuration: OcppConfiguration  # for the diagnostics archive
    security: SecurityManager | None  # security events and the security log; None: events go to the journal
    csms: Callable[[], CsmsLink]  # the adapter: status notifications, the journal sender's wake-up
    wall_clock: Callable[[], datetime]
    spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task]  # a task the station cancels at shutdown
    hold_for_firmware: Callable[[bool], None]  # no new session while an update waits to install
    transactions_active: Callable[[], bool]
    restart_for_firmware: Callable[[], Awaitable[None]]  # restart in place, as a Soft reset does
    status: Callable[[], dict]  # the technician's view, for the diagnostics archive
    board_name: str
    logs: StationLogs | None = None  # the station's loggers (tagged with its id); None: the module's


class TransferOperations:
    """The three operations' state and status notifications; FirmwareManager is the class the station builds."""

    def __init__(self, host: FirmwareHost, *, install_command: list[str] | None = None,
                 max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES):
        self.host = host
        station_logs = host.logs if host.logs is not None else StationLogs("")
        self.station_logs = station_logs
        self.log = station_logs.logger(log.name)  # the station's loggers (agent.logs.StationLogs)
        self.security_log = station_logs.logger(security_log.name)
        self.install_command = install_command
        self.max_download_bytes = max_download_bytes
        self.journal_dir = Path(host.journal.path).parent
        self.firmware: Operation | None = None
        self.diagnostics: Operation | None = None
        self.log_upload: Operation | None = None
        self._prepared: dict[str, Callable[[], None]] = {}  # action -> what its @after hook starts
        self._holding = False

    def _transfer_bounds(self) -> tuple[float, float, float]:
        """(read timeout, firmware download deadline, upload deadline) in seconds: [transfer] in the config."""
        settings = getattr(self.host.config(), "transfer", None)
        read_timeout = getattr(settings, "read_timeout_s", TRANSFER_TIMEOUT_S)
        download = getattr(settings, "firmware_deadline_s", 0.0) or max(
            DOWNLOAD_DEADLINE_S, self.max_download_bytes / MIN_DOWNLOAD_RATE)
        return read_timeout, download, getattr(settings, "upload_deadline_s", UPLOAD_DEADLINE_S)

    @property
    def firmware_dir(self) -> Path:
        return self.journal_dir / "firmware"

    @property
    def upload_dir(self) -> Path:
        return self.journal_dir / "diagnostics"

    # ---- what the OCPP handlers call ---------------------------------------------------------------

    def start_prepared(self, action: str) -> None:
        """Run what the @on handler of `action` prepared; called from its @after hook, once the answer is out."""
        starter = self._prepared.pop(action, None)
        if starter is None:
            return
        try:
            starter()
        except Exception:
            self.log.exception("%s could not be started", action)

    # ---- status notifications ----------------------------------------------------------------------

    def connected(self) -> None:
        """The station is registered on a new connection: send again what the CSMS may have missed."""
        for op in (self.firmware, self.diagnostics, self.log_upload):
            if op is not None and (op.in_progress or not op.delivered):
                self._send(op)

    def status(self) -> dict:
        return {name: op.view() if op is not None else None
                for name, op in (("firmware", self.firmware), ("diagnostics", self.diagnostics),
                                 ("log", self.log_upload))}

    @staticmethod
    def _payload(op: Operation):
        match op.kind:
            case "UpdateFirmware":
                return call.FirmwareStatusNotification(status=op.status)
            case "SignedUpdateFirmware":
                return call.SignedFirmwareStatusNotification(status=op.status, request_id=op.request_id)
            case "GetDiagnostics":
                return call.DiagnosticsStatusNotification(status=op.status)
            case _:
                return call.LogStatusNotification(status=op.status, request_id=op.request_id)

    def _set(self, op: Operation, status: str, final: bool = False) -> asyncio.Future | None:
        op.status = status
        op.in_progress = not final
        op.delivered = False
        op.seq += 1
        self.log.info("%s%s: %s", op.kind, f" (request {op.request_id})" if op.request_id is not None else "", status)
        if op is self.firmware:
            self._persist(op)
        return self._send(op)

    def _send(self, op: Operation) -> asyncio.Future | None:
        client = self.host.csms()
        if not client.accepted:
            return None  # sent by connected() once the station is registered again
        done = asyncio.get_running_loop().create_future()
        seq = op.seq
        done.add_done_callback(lambda future: self._sent(op, seq, future))
        client.queue_follow_up(self._payload(op), done=done)
        return done

    def _sent(self, op: Operation, seq: int, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        error = future.exception()
        # a CALLERROR is the CSMS's answer: it has the status; a lost connection or a timeout is not
        if (error is None or not isinstance(error, TimeoutError | ConnectionError)) and op.seq == seq:
            op.delivered = True
            if op is self.firmware and not op.in_progress:
                self._persist(None)

    def _persist(self, op: Operation | None) -> None:
        value = "" if op is None else json.dumps(
            {"operation": op.kind, "requestId": op.request_id, "status": op.status, "delivered": op.delivered})
        try:
            self.host.journal.set_setting(STATE_KEY, value)
        except JournalError as exc:
            self.log.error("firmware state cannot be saved: %s", exc)

    def _security_event(self, kind: str, tech_info: str) -> None:
        security = self.host.security
        if security is not None:  # agent.ocpp.security: security log file + SecurityEventNotification in the journal
            security.event(kind, tech_info)
            return
        self.security_log.warning("security event %s: %s", kind, tech_info)
        try:
            self.host.journal.enqueue(
                "SecurityEventNotification",
                {"type": kind, "timestamp": ocpp_timestamp(self.host.wall_clock()),
                 "techInfo": tech_info[:255]})
        except JournalError as exc:
            self.log.error("security event %s cannot be queued: %s", kind, exc)
            return
        self.host.csms().journal_changed()

    def _spawn(self, coro) -> asyncio.Task:
        return self.host.spawn(coro)
