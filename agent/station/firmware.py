"""Firmware updates: OCPP 1.6 FirmwareManagement (UpdateFirmware) and the security
whitepaper's SignedUpdateFirmware (L01).

FirmwareManager is the one object the station builds for firmware updates, diagnostics and log uploads:
the update's state machine is here; the installation (hold, install hook, restart) is FirmwareInstall
(agent.station.firmware_install), GetDiagnostics and GetLog are DiagnosticsUploads (agent.station.diagnostics),
and what the operations share (status notifications, the state in the journal) is TransferOperations
(agent.station.transfer_operations). Signatures and certificates: agent.station.firmware_signing.

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

"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ocpp.v16 import call

from agent.ocpp import transfer
from agent.station.diagnostics import DiagnosticsUploads
from agent.station.firmware_install import FirmwareInstall
from agent.station.firmware_signing import (
    SignatureError,
    manufacturer_roots,
    verify_signature,
    verify_signing_certificate,
)
from agent.station.transfer_operations import (
    SIGNED_UPDATE_FIRMWARE,
    UPDATE_FIRMWARE,
    FirmwareHost,
    Operation,
    _attempts,
    _delivery,
    _interval,
    _safe_name,
    parse_time,
    sleep_until,
)

__all__ = ["FirmwareHost", "FirmwareManager"]  # FirmwareHost: what agent.station.station builds it with

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



class FirmwareManager(FirmwareInstall, DiagnosticsUploads):
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

    # ---- firmware ----------------------------------------------------------------------------------

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
