"""The station: the agent-side shell and the composition root of its pieces (it builds them, runs them, routes
the control loop's commands to them). The control loop runs behind a ControlLink (agent.control.link) and is
reached through agent.station.control_channel; transactions are journaled by agent.station.recorder, cards
decided by agent.station.authorizer, meters polled by agent.station.meter_sampling. The CSMS protocol adapter
is received (agent.station.csms_link.CsmsLinkFactory), never built here, and asks only agent.station.csms_facade.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from agent import logs
from agent.config import AgentConfig
from agent.control import channel
from agent.control.link import ControlLink, InProcessLink
from agent.core import controller as ctl
from agent.core.clock import utc_now
from agent.ocpp.security import RESET_OR_REBOOT, STARTUP, SecurityManager
from agent.station.auth_store import AuthStore
from agent.station.authorizer import Authorizer
from agent.station.charging_limits import ChargingLimits
from agent.station.connector import ConnectorRuntime, session_settings
from agent.station.control_channel import ControlChannel
from agent.station.csms_facade import CsmsFacade, StationAvailability
from agent.station.csms_link import CsmsLink, CsmsLinkFactory
from agent.station.firmware import FirmwareHost, FirmwareManager
from agent.station.hardware_tests import HardwareTests
from agent.station.journal import Journal
from agent.station.meter_sampling import MeterSampling
from agent.station.recorder import TransactionRecorder
from agent.station.reservations import Reservations
from agent.station.status_view import StatusView
from agent.station.tasks import StationTasks
from hal.interfaces import Board

__all__ = ["ConnectorRuntime", "RestartRequested", "Station", "StationCrashed"]  # ConnectorRuntime: tests
log = logging.getLogger("evse.station")


class StationCrashed(Exception):
    """An essential task of the station died; the agent exits non-zero with every contactor open."""


class RestartRequested(Exception):
    """Raised out of Station.run() when the agent must restart in place (Reset)."""

    def __init__(self, kind: str, reboot_command: list[str] | None):
        super().__init__(kind)
        self.kind = kind
        self.reboot_command = reboot_command


class Station:
    def __init__(self, config: AgentConfig, board: Board | ControlLink, journal: Journal, *,
                 csms: CsmsLinkFactory, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = utc_now, station_logs: logs.StationLogs | None = None):
        """`board`: a started ControlLink (ProcessLink: `evse run`), or a Board, run in this process.
        `csms`: builds the CSMS protocol adapter (agent.ocpp.v16.client.OcppClient) for this station.
        `station_logs`: this station's loggers and secrets (agent.logs); many stations share a process."""
        self.logs = station_logs if station_logs is not None else logs.StationLogs(config.station.id)
        self.log = self.logs.logger(log.name)
        self.logs.add_basic_auth_secret(config.station.id, config.ocpp.password)  # before anything could log it
        self.config = config
        if isinstance(board, ControlLink):
            self.link, self.board = board, None
        else:  # the control loop in this process (tests, benchmarks, fleet): same channel, no process
            self.link, self.board = InProcessLink(board, clock), board
        self.info = self.link.info
        self.journal = journal
        self.clock = clock
        self.wall_clock = wall_clock  # UTC: charging schedules are in wall-clock time
        self.security = SecurityManager(config, journal, wall_clock, self.logs)
        self.security.apply_local_settings()  # config-file edits win over what the CSMS set (agent.ocpp.security)
        # the protocol's settings provider comes with its adapter (1.6: the configuration keys)
        self.settings = csms.open_settings(config, journal, self.security, self.logs, len(self.info.connectors))
        self.settings.on_change(self._settings_changed)
        self.configuration = self.settings.configuration  # the CSMS's view of the keys (CsmsPort)
        self.connectors: dict[int, ConnectorRuntime] = {}
        for hw in self.info.connectors:
            controller = ctl.ConnectorController(settings=self._session_settings(hw), has_lock=hw.has_lock)
            self.connectors[hw.connector_id] = ConnectorRuntime(hw, controller)
        self.tasks = StationTasks()
        self._restart: RestartRequested | None = None
        self._shutdown = asyncio.Event()
        self.closing = False  # SIGTERM: no new session starts (cards, remote starts) while shutting down
        adapter = self._adapter  # the CSMS adapter is built last: it is given the finished facade
        self.channel = ControlChannel(self.link, self.connectors, journal, adapter, self._execute, clock)
        dispatch = self.channel.dispatch
        self.metering = MeterSampling(self.link, self.settings, dispatch, adapter,
                                      lambda: self.config.charging.meter_poll_s, clock, wall_clock)
        self.recorder = TransactionRecorder(self.connectors, journal, self.settings, dispatch,
                                            self.metering.read_meter, adapter,
                                            lambda: self.channel.control_lost is not None, clock, wall_clock)
        self.authorizer = Authorizer(self.connectors, self.settings, AuthStore(journal, wall_clock=wall_clock),
                                     dispatch, adapter, lambda: self.closing, wall_clock)
        self.link.on_tag = self.authorizer.present_id_token
        controllers = {cid: rt.controller for cid, rt in self.connectors.items()}
        self.reservations = Reservations(journal, controllers, self.channel.dispatch_to, clock, wall_clock,
                                         self.recorder.journal_failed, self.logs)
        self.charging_limits = ChargingLimits(self.settings, journal, self.connectors,
                                              self.channel.dispatch_to, wall_clock, self.recorder.journal_failed,
                                              self.logs)
        self.availability = StationAvailability(self.connectors, journal, dispatch, adapter)
        self.status_view = StatusView(
            config=lambda: self.config, connectors=self.connectors, journal=journal, channel=self.channel,
            recorder=self.recorder, availability=self.availability, reservations=self.reservations,
            charging_limits=self.charging_limits, security=self.security, csms=adapter,
            firmware_status=lambda: self.firmware.status())
        install = list(self.info.firmware_install_command) if self.info.firmware_install_command else None
        self.firmware = FirmwareManager(FirmwareHost(
            config=lambda: self.config, journal=journal, configuration=self.configuration, security=self.security,
            csms=adapter, wall_clock=wall_clock, spawn=self.tasks.spawn, hold_for_firmware=self.availability.hold_for_firmware,
            transactions_active=self.recorder.transactions_active, restart_for_firmware=self._restart_for_firmware,
            status=self.status_view.status, board_name=self.info.name, logs=self.logs,
        ), install_command=install, max_download_bytes=self.info.firmware_max_download_bytes)
        self.hardware = HardwareTests(self.link, lambda: bool(self.channel.control_loop_alive_at))
        self.csms_port = CsmsFacade(
            connectors=self.connectors, journal=journal, configuration=self.configuration, settings=self.settings,
            security=self.security, firmware=self.firmware, dispatch=dispatch, availability=self.availability,
            authorizer=self.authorizer,
            metering=self.metering, reservations=self.reservations, charging_limits=self.charging_limits,
            journal_failed=self.recorder.journal_failed, reset=self.reset, closing=lambda: self.closing,
            reservations_enabled=lambda: self.config.charging.reservations, wall_clock=wall_clock)
        for piece in (self.channel, self.metering, self.recorder, self.authorizer, self.availability, self.csms_port):
            piece.log = self.log  # tagged with this station's id, its secrets redacted
        self.ocpp: CsmsLink = csms(config, self.csms_port, journal, logs=self.logs, clock=clock)
        self.security.on_event_queued = self.ocpp.journal_changed

    # ---- settings -------------------------------------------------------------------------------

    def _adapter(self) -> CsmsLink:
        return self.ocpp

    def _session_settings(self, hw: channel.ConnectorInfo) -> ctl.SessionSettings:
        return session_settings(self.config.charging, self.settings, hw)

    def apply_config(self, config: AgentConfig) -> None:
        """SIGHUP: take over a reloaded config (agent.app.reload_config kept what needs a restart): the
        [charging] limits reach the controllers at once, the reconnect back-off the OCPP client."""
        self.config = config
        self.ocpp.apply_config(config)
        self.link.set_period(config.charging.control_period_s)
        self._settings_changed()

    def _settings_changed(self) -> None:
        for rt in self.connectors.values():
            self.channel.dispatch(rt, ctl.SettingsChanged(self._session_settings(rt.hw)))

    # ---- lifecycle ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Close transactions a previous run left open (PowerLoss), or resume them when configured to and
        the EV is still plugged in; restore availability, charging profiles and reservations."""
        self.recorder.recover(self.info, self.config.charging.resume_after_power_loss,
                              self.charging_limits.transaction_resumed)
        self.availability.restore()
        for rt in self.connectors.values():
            if not rt.controller.transaction_active:  # its transaction was stopped: its TxProfiles go
                self.charging_limits.transaction_ended(rt)
        self.reservations.restore()

    async def start_control(self) -> None:
        """Start the control loop's side: every contactor open, the pilots read once (for a resume), the
        controllers built with this configuration's settings."""
        self.info = await self.link.start()
        await self.link.setup({rt.id: self._session_settings(rt.hw) for rt in self.connectors.values()},
                              self.config.charging.control_period_s)

    async def run(self) -> None:
        """Run until shutdown() or a reset; raises RestartRequested for a reset."""
        await self.start_control()
        self.recover()
        await self.link.sync()  # the replicas show the recovered state before OCPP reports any status
        self.security.event(STARTUP, f"evse-agent {self.config.station.firmware_version} started")
        self.firmware.recover()
        for rt in self.connectors.values():
            self.tasks.start(self.recorder.worker(rt), f"tx-{rt.id}")
            self.tasks.start(self.metering.run(rt), f"meter-{rt.id}")
        self.tasks.start(self.channel.run(), "control")
        self.tasks.start(self.charging_limits.run(), "charging-limits")
        self.tasks.start(self.recorder.journal_watch(), "journal-watch")
        self.tasks.start(self.ocpp.run(), "ocpp")
        try:
            task = await self.tasks.wait(self._shutdown)
        finally:
            await self._stop_tasks()
        if self.channel.control_lost is not None:
            raise StationCrashed(f"the control loop is gone: {self.channel.control_lost}")
        if task is not None:
            error = task.exception() if not task.cancelled() else None
            raise StationCrashed(f"{task.get_name()} task ended unexpectedly: {error!r}") from error
        if self._restart is not None:
            raise self._restart

    async def shutdown(self, stop_transactions: bool | None = None) -> None:
        """Orderly stop (SIGTERM): no new sessions, finish journal writes; stop sessions only if configured
        to (otherwise they stay open in the journal, for a PowerLoss stop or a resume at the next start)."""
        self.closing = True
        if stop_transactions is None:
            stop_transactions = self.config.charging.stop_on_shutdown
        if stop_transactions:
            self.channel.dispatch_all(ctl.StopRequested(ctl.StopReason.OTHER))
        await self.link.sync()
        await self.recorder.drain()
        if stop_transactions:
            await self.recorder.flush()
        self._shutdown.set()

    async def _stop_tasks(self) -> None:
        await self.ocpp.stop()
        await self.tasks.cancel()
        await self.link.close()  # every contactor open

    def reset(self, kind: str) -> None:
        """Reset from the CSMS: orderly stops, the journal flushed, then a restart in place."""
        self.tasks.spawn(self._reset(kind))

    async def _reset(self, kind: str) -> None:
        reason = ctl.StopReason.HARD_RESET if kind == "Hard" else ctl.StopReason.SOFT_RESET
        self.log.warning("%s reset requested by the CSMS", kind)
        self.security.event(RESET_OR_REBOOT, f"{kind} reset requested by the CSMS")
        self.channel.dispatch_all(ctl.StopRequested(reason))
        reboot = list(self.info.reboot_command) if kind == "Hard" and self.info.reboot_command else None
        await self._restart_in_place(RestartRequested(kind, reboot), contactors_opened=True)

    async def _restart_for_firmware(self) -> None:
        """After the install hook succeeded: restart in place, the way a Soft reset does."""
        await self._restart_in_place(RestartRequested("Firmware update", None))

    async def _restart_in_place(self, restart: RestartRequested, contactors_opened: bool = False) -> None:
        await self.link.sync()  # the StopTransactions decided by the control loop are queued here now
        await self.recorder.drain()
        await self.recorder.flush()
        if contactors_opened:
            await self.recorder.contactors_opened()
        self._restart = restart
        self._shutdown.set()

    # ---- the control loop's commands, routed to the pieces ------------------------------------------

    def _execute(self, rt: ConnectorRuntime, command: ctl.Command) -> None:
        match command:
            case ctl.RequestAuthorization(id_token):
                self.tasks.spawn(self.authorizer.authorize(rt, id_token))
            case ctl.BeginTransaction(id_token, reservation_id):
                if reservation_id is None:
                    reservation_id = self.reservations.used_elsewhere(rt.id)
                self.recorder.start(rt, id_token, reservation_id)
                self.charging_limits.transaction_started(rt)
            case ctl.ReservationEnded(reservation_id, reason):
                self.reservations.ended(rt.id, reservation_id, reason)
            case ctl.EndTransaction(reason, id_token):
                self.recorder.stop(rt, reason, id_token)
                self.charging_limits.transaction_ended(rt)
            case ctl.StatusChanged(status, fault, info):
                self.channel.report_status(rt, status, fault, info)
            case ctl.Notice(text):
                self.log.info("connector %d: %s", rt.id, text)

    def control_step(self) -> None:
        """One step of an in-process control loop (tests and benchmarks drive it by hand)."""
        self.channel.step()
        self.charging_limits.update_all()

    # ---- what the agent's process, the CLI and systemd use ------------------------------------------

    def status(self) -> dict:
        return self.status_view.status()

    def present_id_token(self, id_token: str) -> int | None:
        return self.authorizer.present_id_token(id_token)

    def change_availability(self, connector_id: int, operative: bool) -> str:
        return self.availability.change(connector_id, operative)

    def stop_transaction(self, connector_id: int) -> bool:
        rt = self.connectors[connector_id]
        if not rt.controller.transaction_active:
            return False
        self.channel.dispatch(rt, ctl.StopRequested(ctl.StopReason.LOCAL))
        return True
