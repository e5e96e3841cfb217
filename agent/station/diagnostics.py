"""Diagnostics and logs: OCPP 1.6 GetDiagnostics and the security whitepaper's GetLog (N01).

A zip archive (status, OCPP configuration without secrets, firmware state, recent log lines of
this process, scrubbed of passwords, keys and certificates) is uploaded to the location:
Uploading -> Uploaded | UploadFailed (GetLog: Uploaded | UploadFailure, with requestId).
The recent log lines come from RecentLog, a handler on the root logger that keeps each line's station,
so that in a fleet a station uploads its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import platform
import re
import sys
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ocpp.v16 import call

from agent.ocpp import transfer
from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.station.transfer_operations import (
    GET_DIAGNOSTICS,
    GET_LOG,
    FirmwareHost,
    Operation,
    TransferOperations,
    _attempts,
    _interval,
    _safe_name,
    parse_time,
)

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


class DiagnosticsUploads(TransferOperations):
    """GetDiagnostics and GetLog: the archive, its upload and its status notifications."""

    def __init__(self, host: FirmwareHost, **limits: Any) -> None:
        super().__init__(host, **limits)
        recent_log()  # capturing from the station's start, so that the first upload has its lines

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

    def diagnostics_status_notification(self):
        op = self.diagnostics
        busy = op is not None and op.in_progress
        return call.DiagnosticsStatusNotification(status="Uploading" if busy else "Idle")

    def log_status_notification(self):
        op = self.log_upload
        if op is None or not op.in_progress:
            return call.LogStatusNotification(status="Idle", request_id=None)
        return call.LogStatusNotification(status=op.status, request_id=op.request_id)

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
