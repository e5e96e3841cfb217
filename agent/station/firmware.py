"""Firmware updates, diagnostics and log uploads: OCPP 1.6 FirmwareManagement and the security
whitepaper's SignedUpdateFirmware (L01) and GetLog (N01).

The FirmwareManager runs each operation in a task of its own; the OCPP handlers only prepare it
and start it once their answer is out (agent.ocpp.v16.firmware). One firmware operation (plain or
signed) at a time, one diagnostics upload and one log upload:

Firmware
    [DownloadScheduled] -> Downloading -> Downloaded | DownloadFailed
    signed: -> SignatureVerified | InvalidSignature (+ security event InvalidFirmwareSignature)
            -> [InstallScheduled until installDateTime]
    the station then stops taking new sessions (idle connectors Unavailable, busy ones after their
    transaction) and waits until no transaction runs -> Installing -> the board's install hook:
        exit 0   -> [signed: InstallRebooting] -> the agent restarts in place (the Reset path) and
                    reports Installed after its BootNotification
        exit 3   -> InstallVerificationFailed (signed) / InstallationFailed (plain)
        other    -> InstallationFailed; the connectors are available again
    No hook configured -> InstallationFailed: the agent never replaces itself.

The install hook is `[board] firmware_install_command = ["/path/to/hook", "{file}"]` in the board
config: "{file}" becomes the downloaded file; the environment also carries EVSE_FIRMWARE_FILE,
EVSE_FIRMWARE_SHA256 and EVSE_FIRMWARE_SIGNED ("1" when the signature was verified). The hook may
reboot the board itself instead of returning: the agent then finds "Installing" in its journal at
the next start and reports Installed (a hook that cannot tell success must exit non-zero instead).

Diagnostics and logs
    a zip archive (status, OCPP configuration without secrets, firmware state, recent log lines of
    this process, scrubbed of passwords, keys and certificates) is uploaded to the location:
    Uploading -> Uploaded | UploadFailed (GetLog: Uploaded | UploadFailure, with requestId).

Every status goes out as a non-transaction message while the station is registered; the latest
one is sent again after a reconnect while an operation runs or until it was delivered. The
firmware state is kept in the journal (settings key "firmware.state"), so a restart in the middle
is reported rather than forgotten. Files live under `<journal dir>/firmware/` and
`<journal dir>/diagnostics/`, never in /tmp.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import sys
import threading
import zipfile
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ocpp.v16 import call

from agent.logs import StationLogs
from agent.ocpp import transfer
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
HOOK_TIMEOUT_S = 30 * 60
EXIT_VERIFICATION_FAILED = 3  # install hook: the image failed its own verification
DELIVERY_WAIT_S = 5.0  # how long a last status may take to reach the CSMS before a restart

FIRMWARE_FINAL = frozenset({"Installed", "InstallationFailed", "DownloadFailed", "InvalidSignature",
                            "InstallVerificationFailed"})
# what the plain FirmwareStatusNotification (1.6 Core TriggerMessage) can say about a signed update
_PLAIN_STATUS = {
    "DownloadScheduled": "Idle", "Downloading": "Downloading", "DownloadPaused": "Downloading",
    "Downloaded": "Downloaded", "SignatureVerified": "Downloaded", "InstallScheduled": "Downloaded",
    "Installing": "Installing", "InstallRebooting": "Installing", "Installed": "Installed",
    "DownloadFailed": "DownloadFailed", "InvalidSignature": "DownloadFailed",
    "InstallationFailed": "InstallationFailed", "InstallVerificationFailed": "InstallationFailed",
}


# ---- certificates and signatures -----------------------------------------------------------------


class SignatureError(Exception):
    """The firmware file does not match its signature."""


def certificate_store(journal_dir: Path):
    """The station's certificate store (agent.ocpp.security_certs), under `<journal dir>/certs`."""
    from agent.ocpp.security_certs import CertificateStore

    return CertificateStore(Path(journal_dir) / "certs")


def manufacturer_roots(journal_dir: Path) -> list:
    """The installed ManufacturerRootCertificates (cryptography x509.Certificate objects)."""
    from agent.ocpp.security_certs import MANUFACTURER_ROOT

    return certificate_store(journal_dir).root_certificates(MANUFACTURER_ROOT)


def verify_signing_certificate(pem: str, roots: list, now: datetime):
    """The signing certificate (the first of `pem`, which may carry intermediates after it), once its
    chain leads to one of the trusted `roots`, every certificate valid now. Raises
    agent.ocpp.security_certs.CertificateError (a ValueError; its message is safe to log)."""
    from agent.ocpp.security_certs import load_pem_certificates, verify_chain

    chain = load_pem_certificates(pem)
    verify_chain(chain, roots, now)
    return chain[0]


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(transfer.BLOCK_SIZE):
            digest.update(block)
    return digest.digest()


def verify_signature(certificate, path: Path, signature_b64: str) -> None:
    """RSA (PKCS#1 v1.5) or ECDSA signature with SHA-256 over the file, by the certificate's key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    try:  # standard base64, also as `openssl base64` wraps it (64 characters a line)
        signature = base64.b64decode(re.sub(r"[ \t\r\n\f\v]+", "", signature_b64), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureError("the signature is not base64") from None
    if not signature:
        raise SignatureError("the signature is empty")
    digest = file_sha256(path)
    key = certificate.public_key()
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            raise SignatureError(f"unsupported signing key type {type(key).__name__}")
    except InvalidSignature:
        raise SignatureError("the firmware does not match its signature (SHA-256)") from None


# ---- what goes into a diagnostics upload ----------------------------------------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
_SECRET_VALUE = re.compile(
    r"(?i)\b(password|passwd|secret|authorization_?key|private_?key|token)(\"?\s*[:=]\s*\"?)([^\s\",}']+)")
_AUTHORIZATION_KEY_JSON = re.compile(r'(?i)("key"\s*:\s*"AuthorizationKey"\s*,\s*"value"\s*:\s*")[^"]*')
_AUTH_HEADER = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{8,}")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]+):[^@\s/]*@")
_SECRET_KEY_NAMES = re.compile(r"(?i)password|secret|authorizationkey|privatekey")


def scrub(text: str) -> str:
    """`text` without passwords, keys, auth headers and PEM blocks (certificates and keys)."""
    text = _PEM_BLOCK.sub(lambda m: f"[{m.group(1).lower()} removed]", text)
    text = _AUTHORIZATION_KEY_JSON.sub(r"\1***", text)
    text = _SECRET_VALUE.sub(r"\1\2***", text)
    text = _AUTH_HEADER.sub(r"\1 ***", text)
    return _URL_PASSWORD.sub(r"\1:***@", text)


class RecentLog(logging.Handler):
    """The last log lines of this process, in memory, for diagnostics uploads. OCPP frames and the
    websockets library are left out (volume; a frame may carry a configuration value). Each line keeps the
    station it came from (agent.logs.StationLogger's `station_id`), so in a fleet a station uploads its own."""

    EXCLUDED = ("evse.ocpp.frames", "websockets")
    MAX_LINE = 2000

    def __init__(self, capacity: int = 5000):
        super().__init__()
        self.records: collections.deque[tuple[float, str | None, str]] = collections.deque(maxlen=capacity)
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(self.EXCLUDED):
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._formatter.formatException(record.exc_info)
            when = datetime.fromtimestamp(record.created, UTC)
            line = f"{ocpp_timestamp(when)} {record.levelname:<7} {record.name}: {scrub(message)}"
            self.records.append((record.created, getattr(record, "station_id", None), line[: self.MAX_LINE]))
        except Exception:  # a diagnostics buffer must never break logging
            pass

    def lines(self, since: datetime | None = None, until: datetime | None = None,
              only: Callable[[str], bool] | None = None, station_id: str | None = None) -> list[str]:
        """With `station_id`: that station's lines and those of no station (libraries), not other stations'."""
        low = since.timestamp() if since else float("-inf")
        high = until.timestamp() if until else float("inf")
        return [line for created, station, line in list(self.records)
                if low <= created <= high and (only is None or only(line))
                and (station_id is None or station is None or station == station_id)]


_recent_log: RecentLog | None = None


def recent_log() -> RecentLog:
    """The process-wide RecentLog handler, attached to the root logger (again, if a logging set-up
    replaced the root handlers since)."""
    global _recent_log
    if _recent_log is None:
        _recent_log = RecentLog()
        try:  # the agent's own redaction (registered secrets such as the [ocpp] password), when present
            from agent.logs import REDACTOR
        except ImportError:
            pass
        else:
            _recent_log.addFilter(REDACTOR)
    root = logging.getLogger()
    if _recent_log not in root.handlers:
        root.addHandler(_recent_log)
    return _recent_log


def _is_security_line(line: str) -> bool:
    return " evse.security" in line


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


# ---- the manager -----------------------------------------------------------------------------------


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


class FirmwareManager:
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
        recent_log()

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

    # ---- start-up ----------------------------------------------------------------------------------

    def recover(self) -> None:
        """At start: report what a previous run left unfinished; remove stale files."""
        for directory in (self.firmware_dir, self.upload_dir):
            if directory.is_dir():
                for leftover in directory.iterdir():
                    with contextlib.suppress(OSError):
                        leftover.unlink()
        raw = self.host.journal.settings("firmware.").get("state")
        if not raw:
            return
        try:
            state = json.loads(raw)
            kind, status = state["operation"], state["status"]
            request_id = state.get("requestId")
        except (ValueError, KeyError, TypeError):
            self.log.warning("firmware state in the journal is unreadable; ignored")
            self._persist(None)
            return
        if status == "Installing":
            self.log.warning("the firmware install hook did not return before this start (it rebooted the board): "
                             "reporting Installed")
            status = "Installed"
        elif status not in FIRMWARE_FINAL:
            status = "DownloadFailed" if status in ("DownloadScheduled", "Downloading", "DownloadPaused") \
                else "InstallationFailed"
            self.log.warning("a firmware update was interrupted by a restart: reporting %s", status)
        elif state.get("delivered"):
            self._persist(None)
            return
        self.firmware = Operation(kind, request_id, status, in_progress=False, delivered=False)
        self._persist(self.firmware)
        if status == "Installed":
            version = self.host.config().station.firmware_version
            self.log.info("firmware update installed; agent version %s", version)
            request = "" if request_id is None else f" (request {request_id})"
            self._security_event("FirmwareUpdated", f"{kind}{request} installed, agent version {version}")

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

    def update_firmware(self, location: str, retrieve_date: str, retries: Any = None,
                        retry_interval: Any = None) -> None:
        """UpdateFirmware.req; its conf has no status, so a request that cannot run ends in DownloadFailed."""
        self._prepared.pop(UPDATE_FIRMWARE, None)
        if self.firmware is not None and self.firmware.in_progress and self.firmware.status in (
                "Installing", "InstallRebooting"):
            self.log.warning("UpdateFirmware ignored: an installation is running")
            return
        retrieve_at = parse_time(retrieve_date)

        def start() -> None:
            op = self._replace_firmware(Operation(UPDATE_FIRMWARE))
            if retrieve_at is None:
                self.log.error("UpdateFirmware: retrieveDate %r is not a date", retrieve_date[:40])
                self._set(op, "DownloadFailed", final=True)
                return
            op.task = self._spawn(self._run_firmware(op, location, retrieve_at, None, _attempts(retries),
                                                     _interval(retry_interval), None, None))

        self._prepared[UPDATE_FIRMWARE] = start

    def signed_update_firmware(self, request_id: int, firmware: dict, retries: Any = None,
                               retry_interval: Any = None) -> str:
        """SignedUpdateFirmware.req: the conf status (Accepted, AcceptedCanceled, Rejected, InvalidCertificate)."""
        self._prepared.pop(SIGNED_UPDATE_FIRMWARE, None)
        if self.firmware is not None and self.firmware.in_progress and self.firmware.status in (
                "Installing", "InstallRebooting"):
            self.log.warning("SignedUpdateFirmware rejected: an installation is running")
            return "Rejected"
        location = firmware.get("location", "")
        retrieve_at = parse_time(firmware.get("retrieve_date_time"))
        install_at = parse_time(firmware.get("install_date_time")) if firmware.get("install_date_time") else None
        if retrieve_at is None or (firmware.get("install_date_time") and install_at is None):
            self.log.warning("SignedUpdateFirmware rejected: retrieveDateTime/installDateTime is not a date")
            return "Rejected"
        try:
            certificate = verify_signing_certificate(firmware.get("signing_certificate", ""),
                                                     manufacturer_roots(self.journal_dir),
                                                     self.host.wall_clock())
        except ImportError:
            self.log.error("SignedUpdateFirmware rejected: the cryptography package is not installed")
            return "Rejected"
        except ValueError as exc:  # agent.ocpp.security_certs.CertificateError
            reason = str(exc)
            self.security_log.warning("SignedUpdateFirmware (request %s): invalid signing certificate: %s",
                                      request_id, reason)
            self._prepared[SIGNED_UPDATE_FIRMWARE] = lambda: self._security_event(
                "InvalidFirmwareSigningCertificate", reason)
            return "InvalidCertificate"
        busy = self.firmware is not None and self.firmware.in_progress
        signature = firmware.get("signature", "")

        def start() -> None:
            op = self._replace_firmware(Operation(SIGNED_UPDATE_FIRMWARE, request_id))
            op.task = self._spawn(self._run_firmware(op, location, retrieve_at, install_at, _attempts(retries),
                                                     _interval(retry_interval), certificate, signature))

        self._prepared[SIGNED_UPDATE_FIRMWARE] = start
        return "AcceptedCanceled" if busy else "Accepted"

    def get_diagnostics(self, location: str, retries: Any = None, retry_interval: Any = None,
                        start_time: Any = None, stop_time: Any = None) -> str:
        """GetDiagnostics.req: the file name of the upload that starts after the answer."""
        file_name = self._archive_name("diagnostics")
        since, until = parse_time(start_time), parse_time(stop_time)

        def start() -> None:
            if self.diagnostics is not None:
                self.diagnostics.stop()
            op = self.diagnostics = Operation(GET_DIAGNOSTICS, file_name=file_name)
            op.task = self._spawn(self._run_upload(op, location, _attempts(retries), _interval(retry_interval),
                                                   since, until, security=False))

        self._prepared[GET_DIAGNOSTICS] = start
        return file_name

    def get_log(self, log_type: str, request_id: int, log_parameters: dict, retries: Any = None,
                retry_interval: Any = None) -> tuple[str, str]:
        """GetLog.req: (status Accepted | AcceptedCanceled, file name)."""
        security = log_type == "SecurityLog"
        file_name = self._archive_name("securitylog" if security else "diagnosticslog")
        location = log_parameters.get("remote_location", "")
        since = parse_time(log_parameters.get("oldest_timestamp"))
        until = parse_time(log_parameters.get("latest_timestamp"))
        busy = self.log_upload is not None and self.log_upload.in_progress

        def start() -> None:
            if self.log_upload is not None:
                self.log_upload.stop()
            op = self.log_upload = Operation(GET_LOG, request_id, file_name=file_name)
            op.task = self._spawn(self._run_upload(op, location, _attempts(retries), _interval(retry_interval),
                                                   since, until, security=security))

        self._prepared[GET_LOG] = start
        return ("AcceptedCanceled" if busy else "Accepted"), file_name

    # ---- status notifications ----------------------------------------------------------------------

    def firmware_status_notification(self, signed: bool = False):
        """The payload a (Extended)TriggerMessage(FirmwareStatusNotification) asks for: Idle unless busy."""
        op = self.firmware
        busy = op is not None and op.in_progress
        if signed:
            if op is None or not busy:
                return call.SignedFirmwareStatusNotification(status="Idle", request_id=None)
            return call.SignedFirmwareStatusNotification(status=op.status, request_id=op.request_id)
        status = _PLAIN_STATUS.get(op.status, "Idle") if op is not None and busy else "Idle"
        return call.FirmwareStatusNotification(status=status)

    def diagnostics_status_notification(self):
        op = self.diagnostics
        busy = op is not None and op.in_progress
        return call.DiagnosticsStatusNotification(status="Uploading" if busy else "Idle")

    def log_status_notification(self):
        op = self.log_upload
        if op is None or not op.in_progress:
            return call.LogStatusNotification(status="Idle", request_id=None)
        return call.LogStatusNotification(status=op.status, request_id=op.request_id)

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

    # ---- firmware ----------------------------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        return self.host.spawn(coro)

    def _replace_firmware(self, op: Operation) -> Operation:
        if self.firmware is not None and self.firmware.in_progress:
            self.log.warning("%s (request %s) cancelled by a new firmware request", self.firmware.kind,
                             self.firmware.request_id)
            self.firmware.stop()
        self.firmware = op
        return op

    def _firmware_path(self, op: Operation, location: str) -> Path:
        try:
            name = Path(urlsplit(location).path).name
        except ValueError:
            name = ""
        # one file per operation: a replaced one may still be writing or removing its own
        return self.firmware_dir / f"{id(op):x}-{_safe_name(name, 'firmware.bin')}"

    async def _run_firmware(self, op: Operation, location: str, retrieve_at: datetime, install_at: datetime | None,
                            attempts: int, interval: float, certificate, signature: str | None) -> None:
        signed = op.kind == SIGNED_UPDATE_FIRMWARE
        path: Path | None = None
        try:
            if retrieve_at > self.host.wall_clock():
                if signed:
                    self._set(op, "DownloadScheduled")
                self.log.info("firmware download scheduled for %s", retrieve_at.isoformat())
                await sleep_until(retrieve_at, self.host.wall_clock)
            path = self._firmware_path(op, location)
            self._set(op, "Downloading")
            digest = await self._download(op, location, path, attempts, interval)
            if digest is None:
                self._set(op, "DownloadFailed", final=True)
                return
            self._set(op, "Downloaded")
            if signed:
                try:
                    await asyncio.to_thread(verify_signature, certificate, path, signature or "")
                except SignatureError as exc:
                    self._set(op, "InvalidSignature", final=True)
                    self._security_event("InvalidFirmwareSignature", f"request {op.request_id}: {exc}")
                    return
                self.security_log.info("firmware signature verified (request %s, SHA-256 %s)", op.request_id, digest)
                self._set(op, "SignatureVerified")
                if install_at is not None and install_at > self.host.wall_clock():
                    self._set(op, "InstallScheduled")
                    await sleep_until(install_at, self.host.wall_clock)
            await self._wait_for_no_transaction()
            await _delivery(self._set(op, "Installing"))  # the hook may reboot the board right away
            outcome = await self._install(op, path, digest, signed)
            if outcome == "Installed":
                await self._installed(op)
                return
            self._set(op, outcome, final=True)
        except asyncio.CancelledError:
            op.cancel.set()
            raise
        except Exception:
            self.log.exception("%s failed", op.kind)
            if op.in_progress:
                failed = "DownloadFailed" if op.status in ("DownloadScheduled", "Downloading") else "InstallationFailed"
                self._set(op, failed, final=True)
        finally:
            installed = op.status in ("Installed", "InstallRebooting")
            if self._holding and not installed:
                self._hold(False)
            if path is not None and not installed:  # an installed file stays until the next start (recover())
                with contextlib.suppress(OSError):
                    path.unlink()

    async def _download(self, op: Operation, location: str, path: Path, attempts: int,
                        interval: float) -> str | None:
        """The file's SHA-256 once downloaded, None after the last failed attempt."""
        where = transfer.redact(location)
        try:
            transfer.check_url(location)
        except transfer.TransferError as exc:
            self.log.error("firmware download from %s impossible: %s", where, exc)
            return None
        read_timeout, deadline, _ = self._transfer_bounds()
        for attempt in range(1, attempts + 1):
            try:  # in the transfer workers, never the default executor the devices' reads need
                size, digest = await transfer.run(
                    transfer.download, location, path, max_bytes=self.max_download_bytes,
                    timeout=read_timeout, deadline_s=deadline, cancel=op.cancel)
            except transfer.TransferError as exc:
                self.log.warning("firmware download attempt %d of %d failed: %s", attempt, attempts, exc)
                if attempt < attempts:
                    await asyncio.sleep(interval)
                continue
            self.log.info("firmware downloaded from %s: %d bytes, SHA-256 %s", where, size, digest)
            return digest
        return None

    def _hold(self, hold: bool) -> None:
        self._holding = hold
        self.host.hold_for_firmware(hold)

    async def _wait_for_no_transaction(self) -> None:
        """No new session from here on; wait until the running ones (and their journal writes) end."""
        self._hold(True)
        if self.host.transactions_active():
            self.log.info("firmware installation waits until the running transaction(s) end")
            while self.host.transactions_active():
                await asyncio.sleep(0.5)
            self._hold(True)  # again: a ChangeAvailability meanwhile must not let a session start now

    async def _install(self, op: Operation, path: Path, digest: str, signed: bool) -> str:
        """Run the board's install hook: "Installed", "InstallationFailed" or "InstallVerificationFailed"."""
        if not self.install_command:
            self.log.error("firmware cannot be installed: the board config has no [board] firmware_install_command "
                           "(the agent never replaces itself); InstallationFailed")
            return "InstallationFailed"
        argv = [arg.replace("{file}", str(path)) for arg in self.install_command]
        env = {**os.environ, "EVSE_FIRMWARE_FILE": str(path), "EVSE_FIRMWARE_SHA256": digest,
               "EVSE_FIRMWARE_SIGNED": "1" if signed else "0"}
        self.log.warning("installing firmware: running %s", " ".join(argv))
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, env=env, cwd=str(self.firmware_dir))
        except OSError as exc:
            self.log.error("firmware install hook %s cannot be started: %s", argv[0], exc)
            return "InstallationFailed"
        try:
            output, _ = await asyncio.wait_for(process.communicate(), HOOK_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.log.error("firmware install hook did not finish within %d s: killed", HOOK_TIMEOUT_S)
            return "InstallationFailed"
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        for line in output.decode("utf-8", "replace").splitlines()[-20:]:
            self.log.info("install hook: %s", line[:300])
        if process.returncode == 0:
            self.log.warning("firmware installed by the hook")
            return "Installed"
        self.log.error("firmware install hook failed with exit code %s", process.returncode)
        if signed and process.returncode == EXIT_VERIFICATION_FAILED:
            return "InstallVerificationFailed"
        return "InstallationFailed"

    async def _installed(self, op: Operation) -> None:
        """Restart in place; Installed is reported after the new start's BootNotification (recover())."""
        if op.kind == SIGNED_UPDATE_FIRMWARE:
            await _delivery(self._set(op, "InstallRebooting"))
        op.status, op.in_progress, op.delivered = "Installed", False, False
        self._persist(op)
        self.log.warning("firmware update installed: restarting the agent")
        await self.host.restart_for_firmware()

    # ---- diagnostics and logs ----------------------------------------------------------------------

    def _archive_name(self, what: str) -> str:
        station = _safe_name(self.host.config().station.id, "station")
        stamp = self.host.wall_clock().strftime("%Y%m%dT%H%M%SZ")
        return f"{station}-{what}-{stamp}.zip"[-255:]

    async def _run_upload(self, op: Operation, location: str, attempts: int, interval: float,
                          since: datetime | None, until: datetime | None, security: bool) -> None:
        failed = "UploadFailure" if op.kind == GET_LOG else "UploadFailed"
        where = transfer.redact(location)
        file_name = op.file_name or "diagnostics.zip"
        path = self.upload_dir / f"{id(op):x}-{file_name}"  # a replaced operation may still hold its own file
        try:
            try:
                transfer.check_url(location)
            except transfer.TransferError as exc:
                self.log.error("%s upload to %s impossible: %s", op.kind, where, exc)
                self._set(op, failed, final=True)
                return
            files = self._diagnostics_files(since, until, security)
            self._set(op, "Uploading")
            await asyncio.to_thread(_write_archive, path, files)
            read_timeout, _, deadline = self._transfer_bounds()
            for attempt in range(1, attempts + 1):
                try:
                    await transfer.run(transfer.upload, location, path, name=file_name, timeout=read_timeout,
                                       deadline_s=deadline, cancel=op.cancel)
                except transfer.TransferError as exc:
                    self.log.warning("%s upload attempt %d of %d failed: %s", op.kind, attempt, attempts, exc)
                    if attempt < attempts:
                        await asyncio.sleep(interval)
                    continue
                self.log.info("%s: %s uploaded to %s (%d bytes)", op.kind, file_name, where, path.stat().st_size)
                self._set(op, "Uploaded", final=True)
                return
            self._set(op, failed, final=True)
        except asyncio.CancelledError:
            op.cancel.set()
            raise
        except Exception:
            self.log.exception("%s failed", op.kind)
            if op.in_progress:
                self._set(op, failed, final=True)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _diagnostics_files(self, since: datetime | None, until: datetime | None, security: bool) -> dict[str, str]:
        """The archive's contents. Never a secret: no config file, no passwords, keys or certificates."""
        span = {"from": since.isoformat() if since else None, "to": until.isoformat() if until else None,
                "created": ocpp_timestamp(self.host.wall_clock())}
        if security:
            lines = self._security_log_lines(since, until)
            return {"security.log": "\n".join(lines) + "\n",
                    "README.txt": _readme("security log", span, len(lines))}
        entries, _ = self.host.configuration.get_configuration(None)
        configuration = [e for e in entries if not _SECRET_KEY_NAMES.search(str(e.get("key", "")))]
        lines = recent_log().lines(since, until, station_id=self.station_logs.station_id)
        return {
            "status.json": scrub(json.dumps(self.host.status(), indent=2, default=str)),
            "configuration.json": scrub(json.dumps(configuration, indent=2, default=str)),
            "firmware.json": json.dumps(self.status(), indent=2),
            "agent.log": "\n".join(lines) + "\n",
            "system.txt": _system_info(self.host),
            "README.txt": _readme("diagnostics", span, len(lines)),
        }


    def _security_log_lines(self, since: datetime | None, until: datetime | None) -> list[str]:
        """The security log (agent.ocpp.security's rolling file, `<timestamp> <event> <techInfo>` lines) within the
        period; without that module, the security lines of this process's log."""
        security = self.host.security
        if security is None:
            return recent_log().lines(since, until, only=_is_security_line, station_id=self.station_logs.station_id)
        lines = []
        for path in security.security_log_files():
            try:
                text = path.read_text("utf-8", "replace")
            except OSError as exc:
                self.log.warning("security log %s cannot be read: %s", path, exc)
                continue
            for line in text.splitlines():
                when = parse_time(line.split(" ", 1)[0])
                if when is None or ((since is None or when >= since) and (until is None or when <= until)):
                    lines.append(scrub(line))
        return lines


async def _delivery(sent: asyncio.Future | None) -> None:
    """Wait a moment for a status notification to reach the CSMS (not at all while offline)."""
    if sent is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(sent), DELIVERY_WAIT_S)


def _write_archive(path: Path, files: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, text in files.items():  # log lines may hold lone surrogates from CSMS input
                archive.writestr(name, text.encode("utf-8", "backslashreplace"))
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _readme(what: str, span: dict, count: int) -> str:
    return (f"evse-agent {what}, created {span['created']}\n"
            f"requested period: {span['from'] or 'any'} .. {span['to'] or 'any'}\n"
            f"{count} log line(s) of the running agent process (kept in memory; older ones and those of "
            "earlier runs are in the system journal)\n")


def _system_info(host: FirmwareHost) -> str:
    import ocpp

    cfg = host.config().station
    return "\n".join([
        f"station id: {cfg.id}", f"vendor/model: {cfg.vendor} / {cfg.model}",
        f"firmware (agent) version: {cfg.firmware_version}", f"board: {host.board_name}",
        f"python: {sys.version.split()[0]}", f"ocpp library: {getattr(ocpp, '__version__', '?')}",
        f"platform: {platform.platform()}", "",
    ])
