"""Installing a downloaded firmware (agent.station.firmware): the station stops taking new sessions (idle
connectors Unavailable, busy ones after their transaction), waits until no transaction runs, then runs the
board's install hook; on success the agent restarts in place (the Reset path).

The install hook is `[board] firmware_install_command = ["/path/to/hook", "{file}"]` in the board
config: "{file}" becomes the downloaded file; the environment also carries EVSE_FIRMWARE_FILE,
EVSE_FIRMWARE_SHA256 and EVSE_FIRMWARE_SIGNED ("1" when the signature was verified). The hook may
reboot the board itself instead of returning: the agent then finds "Installing" in its journal at
the next start and reports Installed (a hook that cannot tell success must exit non-zero instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from agent.station.transfer_operations import SIGNED_UPDATE_FIRMWARE, Operation, TransferOperations, _delivery

HOOK_TIMEOUT_S = 30 * 60
EXIT_VERIFICATION_FAILED = 3  # install hook: the image failed its own verification


class FirmwareInstall(TransferOperations):
    """The install hold, the board's install hook and the restart after it (a part of FirmwareManager)."""

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
