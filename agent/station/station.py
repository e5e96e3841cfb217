"""The station: the agent-side shell that wires the control loop, journal and OCPP together.

* The control loop (devices, session controllers) runs behind a ControlLink (agent.control.link): in its
  own process on a real station, in this event loop for tests. Events go down to it; the commands that are
  not hardware (StartTransaction, StatusChanged, ...) come back up with each controller's state, of which
  `rt.controller` is a read-only replica here (its handle() is never called on this side).
* Transaction bookkeeping for a connector runs in one ordered worker per connector: the meter is read,
  the journal written (the commit is on disk), then TransactionRecorded goes down (only then may energy
  flow) and the OCPP sender is woken.
* The OCPP client asks for things through the StationPort methods below and never sees a device.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent import logs
from agent.cli import hw as hw_cli
from agent.config import AgentConfig
from agent.control import channel
from agent.control.link import ControlLink, ControlLost, InProcessLink
from agent.core import controller as ctl
from agent.core.authorization import (
    AuthSettings,
    Decision,
    IdTagInfo,
    ListUpdate,
    Source,
    decide,
    plan_send_local_list,
)
from agent.core.clock import utc_now
from agent.ocpp.security import RESET_OR_REBOOT, STARTUP, SecurityManager
from agent.ocpp.v16.client import OcppClient
from agent.ocpp.v16.config import OcppConfiguration
from agent.ocpp.v16.meter_values import meter_value, ocpp_timestamp, register_value
from agent.ocpp.v16.transactions import meter_value_from_v16, stop_reason_from_v16
from agent.station.auth_store import AuthStore
from agent.station.charging_limits import ChargingLimits
from agent.station.firmware import FirmwareManager
from agent.station.journal import Delivery, Journal, JournalError, JournalValueError, QueuedMessage
from agent.station.reservations import Reservations
from hal.interfaces import Board, CpState, MeterReading

log = logging.getLogger("evse.station")

METER_FAILURES_FOR_FAULT = 3  # consecutive failed polls before a meter counts as dead (one glitch is not)
CHARGING_LIMITS_PERIOD_S = 0.25  # how often schedule period boundaries are looked for
JOURNAL_CHECK_PERIOD_S = 1.0
CONTROL_LOST_REPORT_S = 5.0  # a lost control process: time for the Faulted status to reach the CSMS


@dataclass
class _Op:
    kind: str  # "start" | "stop" | "sample"
    id_tag: str | None = None
    reason: str | None = None
    reading: MeterReading | None = None
    context: str = "Sample.Periodic"  # or "Sample.Clock" for clock-aligned values
    timestamp: str | None = None
    reservation_id: int | None = None  # of a start that uses a reservation


@dataclass
class ConnectorRuntime:
    hw: channel.ConnectorInfo  # what the board says of the connector; the devices are the control loop's
    controller: ctl.ConnectorController  # replica of the control loop's controller (read-only here)
    ops: asyncio.Queue = field(default_factory=asyncio.Queue)
    local_tx: int | None = None
    tx_begin: tuple[float, str] | None = None  # (meter start Wh, timestamp)
    next_sample_at: float | None = None
    next_aligned_at: float | None = None  # wall-clock time of the next clock-aligned sample
    last_reading: MeterReading | None = None
    meter_failures: int = 0
    meter_answered: bool = False  # the meter gave one good reading since the start
    indicator: str | None = None  # what the status LEDs show (the control loop reports it)

    @property
    def id(self) -> int:
        return self.hw.connector_id


class StationCrashed(Exception):
    """An essential task of the station died; the agent exits non-zero with every contactor open."""


class RestartRequested(Exception):
    """Raised out of Station.run() when the agent must restart in place (Reset)."""

    def __init__(self, kind: str, reboot_command: list[str] | None):
        super().__init__(kind)
        self.kind = kind
        self.reboot_command = reboot_command


class Station:
    def __init__(self, config: AgentConfig, board: Board | ControlLink, journal: Journal,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = utc_now):
        """`board`: a started ControlLink (ProcessLink: `evse run`), or a Board, run in this process."""
        self.config = config
        if isinstance(board, ControlLink):
            self.link, self.board = board, None
        else:  # the control loop in this process (tests, benchmarks, fleet): same channel, no process
            self.link, self.board = InProcessLink(board, clock), board
        self.info = self.link.info
        self.link.on_output = self._on_output
        self.link.on_state = self._on_state
        self.link.on_tag = self.present_id_tag
        self.link.on_alive = self._control_alive
        self.link.on_lost = self._control_lost
        self.journal = journal
        self.clock = clock
        self.wall_clock = wall_clock  # UTC: charging schedules are in wall-clock time
        self.security = SecurityManager(config, journal, wall_clock)
        self.security.apply_local_settings()  # config-file edits win over what the CSMS set (agent.ocpp.security)
        self.configuration = OcppConfiguration(
            number_of_connectors=len(self.info.connectors),
            initial={**config.ocpp_configuration, "SecurityProfile": str(config.ocpp.security_profile)},
            stored=journal.settings("ocpp."),
            on_change=self.configuration_changed,
            check_change=self.security.check_change,
        )
        self.security.attach(self.configuration)
        self.auth = AuthStore(journal, wall_clock=wall_clock)
        self.connectors: dict[int, ConnectorRuntime] = {}
        for hw in self.info.connectors:
            controller = ctl.ConnectorController(settings=self._session_settings(hw), has_lock=hw.has_lock)
            self.connectors[hw.connector_id] = ConnectorRuntime(hw, controller)
        self.station_operative = journal.settings("availability.").get("0", "Operative") == "Operative"
        controllers = {cid: rt.controller for cid, rt in self.connectors.items()}
        self.reservations = Reservations(journal, controllers, self._dispatch_to, clock, wall_clock,
                                         self.journal_failed)
        self.charging_limits = ChargingLimits(self.configuration, journal, self.connectors, self._dispatch_to,
                                              wall_clock, self.journal_failed)
        self.ocpp = OcppClient(config, self, journal)
        self.security.on_event_queued = self.ocpp.journal_changed
        install = list(self.info.firmware_install_command) if self.info.firmware_install_command else None
        self.firmware = FirmwareManager(self, install_command=install,
                                        max_download_bytes=self.info.firmware_max_download_bytes)
        self._tasks: list[asyncio.Task] = []
        self._side_tasks: set[asyncio.Task] = set()
        self._restart: RestartRequested | None = None
        self._shutdown = asyncio.Event()
        self.control_loop_alive_at = 0.0
        self.control_lost: str | None = None
        self.storage_error: str | None = None
        # called when the control loop reports a completed step: systemd READY and STATUS (agent.service)
        self.after_control_step: Callable[[], None] | None = None
        self._outputs: deque[tuple[ConnectorRuntime, ctl.Command]] = deque()
        self._executing = False
        self.closing = False  # SIGTERM: no new session starts (cards, remote starts) while shutting down

    # ---- settings -------------------------------------------------------------------------------

    def _session_settings(self, hw: channel.ConnectorInfo) -> ctl.SessionSettings:
        cfg = self.configuration
        return ctl.SessionSettings(
            max_current_a=min(self.config.charging.max_current_a, hw.max_current_a),
            connection_timeout_s=cfg.get_int("ConnectionTimeOut"),
            stop_on_ev_side_disconnect=cfg.get_bool("StopTransactionOnEVSideDisconnect"),
            stop_on_invalid_id=cfg.get_bool("StopTransactionOnInvalidId"),
            authorize_remote_tx=cfg.get_bool("AuthorizeRemoteTxRequests"),
            feedback_supervised=hw.has_mirror_contact,
            meter_failure_stops=self.config.charging.meter_failure == "stop",
            unlock_on_ev_side_disconnect=cfg.get_bool("UnlockConnectorOnEVSideDisconnect"),
            lock_timeout_s=hw.lock_timeout_s,
        )

    def configuration_changed(self, key: str, value: str) -> None:
        self.journal.set_setting(f"ocpp.{key}", value)  # survives reboots
        if key == "AuthorizationKey":
            logs.add_basic_auth_secret(self.config.station.id, value)  # never in a log line (agent.logs)
        self.security.configuration_changed(key, value)
        for rt in self.connectors.values():
            self._dispatch(rt, ctl.SettingsChanged(self._session_settings(rt.hw)))

    def apply_config(self, config: AgentConfig) -> None:
        """SIGHUP: take over a reloaded config (agent.app.reload_config kept what needs a restart): the
        [charging] limits reach the controllers at once, the reconnect back-off the OCPP client."""
        self.config = config
        self.ocpp.apply_config(config)
        self.link.set_period(config.charging.control_period_s)
        for rt in self.connectors.values():
            self._dispatch(rt, ctl.SettingsChanged(self._session_settings(rt.hw)))

    # ---- lifecycle ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Close transactions a previous run left open: reason PowerLoss, last journaled meter value."""
        stop_measurands = self.configuration.get_list("StopTxnSampledData")
        for tx in self.journal.running_transactions():
            if self._resume(tx):
                continue
            registers = []
            if "Energy.Active.Import.Register" in stop_measurands:
                registers = [meter_value_from_v16(register_value(tx.meter_start, "Transaction.Begin", tx.started_at)),
                             meter_value_from_v16(register_value(tx.last_meter, "Transaction.End", tx.last_meter_at))]
            # the stop is at the last journaled register: the one in the transaction's last queued event
            self.journal.end_transaction(tx.local_id, round(tx.last_meter), tx.last_meter_at, "power_loss",
                                         meter_values=registers)
            log.warning("transaction %s on connector %d was interrupted: stopped with PowerLoss at %.0f Wh",
                        tx.csms_tx_id or f"local-{tx.local_id}", tx.connector_id, tx.last_meter)
        availability = self.journal.settings("availability.")
        for rt in self.connectors.values():
            operative = self.station_operative and availability.get(str(rt.id), "Operative") == "Operative"
            if not operative:
                self._dispatch(rt, ctl.AvailabilityChanged(False))
            if not rt.controller.transaction_active:  # its transaction was stopped: its TxProfiles go
                self.charging_limits.transaction_ended(rt)
        self.reservations.restore()

    def _resume(self, tx) -> bool:
        """Continue an interrupted transaction when configured to and its EV is still plugged in."""
        rt = self.connectors.get(tx.connector_id)
        if not self.config.charging.resume_after_power_loss or rt is None or rt.local_tx is not None:
            return False
        plugged = self.info.pilot_states.get(rt.id) in (CpState.B, CpState.C, CpState.D)
        if not plugged:
            return False
        rt.local_tx = tx.local_id
        rt.tx_begin = (tx.meter_start, tx.started_at)
        self.charging_limits.transaction_resumed(rt, tx.started_at)
        interval = self.configuration.get_int("MeterValueSampleInterval")
        rt.next_sample_at = self.clock() + interval if interval > 0 else None
        self._dispatch(rt, ctl.ResumeTransaction(tx.id_token))
        log.warning("transaction %s on connector %d resumes after the restart (EV still plugged in)",
                    tx.csms_tx_id or f"local-{tx.local_id}", rt.id)
        return True

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
            self._tasks.append(asyncio.create_task(self._transaction_worker(rt), name=f"tx-{rt.id}"))
            self._tasks.append(asyncio.create_task(self._meter_loop(rt), name=f"meter-{rt.id}"))
        self._tasks.append(asyncio.create_task(self._control_link(), name="control"))
        self._tasks.append(asyncio.create_task(self._charging_limits_loop(), name="charging-limits"))
        self._tasks.append(asyncio.create_task(self._journal_watch(), name="journal-watch"))
        self._tasks.append(asyncio.create_task(self.ocpp.run(), name="ocpp"))
        shutdown = asyncio.create_task(self._shutdown.wait(), name="shutdown")
        try:
            # these tasks run forever; one that ends has crashed, and a station without its control loop
            # or journal worker must not go on pretending: stop (contactors open) and let systemd restart
            done, _ = await asyncio.wait([shutdown, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            shutdown.cancel()
            await self._stop_tasks()
        crashed = [task for task in done if task is not shutdown]
        if self.control_lost is not None:
            raise StationCrashed(f"the control loop is gone: {self.control_lost}")
        if crashed:
            task = crashed[0]
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
            for rt in self.connectors.values():
                self._dispatch(rt, ctl.StopRequested(ctl.StopReason.OTHER))
        await self.link.sync()
        await self._drain_transaction_ops()
        if stop_transactions:
            await self._flush_journal()
        self._shutdown.set()

    async def _stop_tasks(self) -> None:
        await self.ocpp.stop()
        for task in [*self._tasks, *self._side_tasks]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._side_tasks, return_exceptions=True)
        self._tasks.clear()
        await self.link.close()  # every contactor open

    async def _flush_journal(self, timeout: float = 5.0) -> None:
        """Give queued messages (a final StopTransaction) a moment to reach the CSMS; the journal keeps
        whatever could not be delivered for the next start."""
        deadline = time.monotonic() + timeout
        while self.journal.pending_count() and self.ocpp.accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _drain_transaction_ops(self, timeout: float = 5.0) -> None:
        async def drained():
            for rt in self.connectors.values():
                await rt.ops.join()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await drained()

    # ---- the control loop, behind its link --------------------------------------------------------

    async def _control_link(self) -> None:
        """Runs while the control loop does. When it is lost (the control process died or stalls), every
        connector is reported Faulted to the CSMS, then the station stops: systemd restarts the unit."""
        try:
            await self.link.run()
        except ControlLost as exc:
            self._control_lost(str(exc))
        if self.control_lost is None:
            self._control_lost("the control loop ended")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CONTROL_LOST_REPORT_S):
                while self.journal.pending_count() and self.ocpp.accepted:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # the Faulted StatusNotifications on their way

    def _control_alive(self) -> None:
        self.control_loop_alive_at = self.clock()
        if self.after_control_step is not None:
            self.after_control_step()

    def _control_lost(self, why: str) -> None:
        if self.control_lost is not None:
            return
        self.control_lost = why
        log.critical("control loop lost: %s; every connector is reported Faulted", why)
        for rt in self.connectors.values():
            self.ocpp.send_status(rt.id, ctl.ConnectorStatus.FAULTED.value, "InternalError",
                                  "control process lost", "ControlLoopLost")

    async def _charging_limits_loop(self) -> None:
        """Smart-charging schedules change at their period boundaries (and validFrom/validTo): look for one
        every CHARGING_LIMITS_PERIOD_S; a change of profile or transaction re-evaluates at once."""
        while True:
            for rt in self.connectors.values():
                self.charging_limits.update(rt)
            await asyncio.sleep(CHARGING_LIMITS_PERIOD_S)

    async def _journal_watch(self) -> None:
        """Deleted or replaced while running, the journal faults every connector even while nothing commits."""
        while True:
            if self.storage_error is None:
                try:
                    self.journal.check()
                except JournalError as exc:
                    self.journal_failed(exc)
            await asyncio.sleep(JOURNAL_CHECK_PERIOD_S)

    def control_step(self) -> None:
        """One step of an in-process control loop (tests and benchmarks drive it by hand)."""
        assert isinstance(self.link, InProcessLink), "the control loop runs in its own process"
        self.link.control.step()
        for rt in self.connectors.values():
            self.charging_limits.update(rt)

    def _dispatch(self, rt: ConnectorRuntime, event: ctl.Event) -> None:
        """Hand an event to the connector's controller, in the control loop."""
        self.link.send_event(rt.id, event)

    def _dispatch_to(self, connector_id: int, event: ctl.Event) -> None:
        self._dispatch(self.connectors[connector_id], event)

    def _on_state(self, connector_id: int, state: dict, indicator: str | None) -> None:
        rt = self.connectors.get(connector_id)
        if rt is not None:
            channel.apply_controller_state(rt.controller, state)
            rt.indicator = indicator

    def _on_output(self, connector_id: int, commands: list[ctl.Command]) -> None:
        """Commands from the control loop, carried out in the order they were decided: those that arrive
        while earlier ones are carried out (an in-process link delivers at once) wait for them."""
        rt = self.connectors.get(connector_id)
        if rt is None:
            return
        self._outputs.extend((rt, command) for command in commands)
        if self._executing:
            return
        self._executing = True
        try:
            while self._outputs:
                self._execute(*self._outputs.popleft())
        finally:
            self._executing = False

    def _execute(self, rt: ConnectorRuntime, command: ctl.Command) -> None:
        match command:
            case ctl.RequestAuthorization(id_tag):
                self._spawn(self._authorize(rt, id_tag))
            case ctl.StartTransaction(id_tag, reservation_id):
                if reservation_id is None:
                    reservation_id = self.reservations.used_elsewhere(rt.id)
                rt.ops.put_nowait(_Op("start", id_tag=id_tag, reservation_id=reservation_id))
                self.charging_limits.transaction_started(rt)
            case ctl.ReservationEnded(reservation_id, reason):
                self.reservations.ended(rt.id, reservation_id, reason)
            case ctl.StopTransaction(reason, id_tag):
                rt.ops.put_nowait(_Op("stop", id_tag=id_tag, reason=reason.value))
                self.charging_limits.transaction_ended(rt)
            case ctl.StatusChanged(status, error_code, info, vendor_code):
                log.info("connector %d: %s%s", rt.id, status.value,
                         "" if error_code == "NoError" else f" ({error_code}/{vendor_code})")
                if self.control_lost is None:
                    self.ocpp.send_status(rt.id, status.value, error_code, info, vendor_code)
            case ctl.Notice(text):
                log.info("connector %d: %s", rt.id, text)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)
        return task

    # ---- authorization --------------------------------------------------------------------------

    def _auth_settings(self) -> AuthSettings:
        cfg = self.configuration
        return AuthSettings(
            local_list_enabled=cfg.get_bool("LocalAuthListEnabled"),
            cache_enabled=cfg.get_bool("AuthorizationCacheEnabled"),
            local_authorize_offline=cfg.get_bool("LocalAuthorizeOffline"),
            local_pre_authorize=cfg.get_bool("LocalPreAuthorize"),
            allow_offline_unknown=cfg.get_bool("AllowOfflineTxForUnknownId"),
        )

    def _local_decision(self, id_tag: str, online: bool) -> Decision:
        return decide(id_tag, online=online, now=self.wall_clock(), list_entry=self.auth.listed(id_tag),
                      cache_entry=self.auth.cached(id_tag), settings=self._auth_settings())

    async def _authorize(self, rt: ConnectorRuntime, id_tag: str) -> None:
        decision = self._local_decision(id_tag, online=self.ocpp.accepted)
        verdict = "Accepted" if decision.accepted else "refused"
        if decision.ask_csms:
            info = await self.ocpp.authorize(id_tag)
            if info is not None:
                tag_info = IdTagInfo.from_ocpp(info)
                self._remember(id_tag, tag_info)
                decision = Decision(tag_info.status == "Accepted", Source.CSMS, tag_info.parent_id_tag)
                verdict = tag_info.status
            else:  # the CSMS could not be asked after all: offline rules
                decision = self._local_decision(id_tag, online=False)
                verdict = "Accepted" if decision.accepted else "refused"
        if self.closing and decision.accepted:
            decision, verdict = Decision(False, decision.source, None), "ignored: the agent is shutting down"
        log.info("connector %d: card %s: %s (%s)", rt.id, id_tag, verdict, decision.source.value)
        self._dispatch(rt, ctl.AuthorizationResult(id_tag, decision.accepted, decision.parent_id_tag))

    def _remember(self, id_tag: str, info: IdTagInfo) -> None:
        """Every IdTagInfo the CSMS sends updates the Authorization Cache (§3.5.1)."""
        if self.configuration.get_bool("AuthorizationCacheEnabled"):
            self.auth.remember(id_tag, info)

    def present_id_tag(self, id_tag: str) -> int | None:
        if self.closing:
            log.info("card %s ignored: the agent is shutting down", id_tag)
            return None
        controllers = {cid: rt.controller for cid, rt in self.connectors.items()}
        cid = ctl.route_id_tag(controllers, id_tag)
        if cid is None:
            log.info("card %s: no connector can take it", id_tag)
            return None
        self._dispatch(self.connectors[cid], ctl.IdTagPresented(id_tag))
        return cid

    # ---- metering and the transaction journal ---------------------------------------------------

    async def _read_meter(self, rt: ConnectorRuntime) -> MeterReading | None:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the read completes, and this loop would then outlive the station's shutdown
            reading = await self.link.read_meter(rt.id)
        except (channel.RequestFailed, ControlLost, TimeoutError) as exc:
            rt.meter_failures += 1
            if rt.meter_failures == METER_FAILURES_FOR_FAULT:
                log.error("connector %d: energy meter failed %d times: %s", rt.id, rt.meter_failures, exc)
                self._dispatch(rt, ctl.FaultChanged(ctl.Fault.METER, True))
            return None
        if rt.meter_failures >= METER_FAILURES_FOR_FAULT:
            log.info("connector %d: energy meter answers again", rt.id)
            self._dispatch(rt, ctl.FaultChanged(ctl.Fault.METER, False))
        rt.meter_failures = 0
        rt.meter_answered = True
        rt.last_reading = reading
        return reading

    async def _meter_loop(self, rt: ConnectorRuntime) -> None:
        while True:
            reading = await self._read_meter(rt)
            interval = self.configuration.get_int("MeterValueSampleInterval")
            now = self.clock()
            if reading and rt.local_tx is not None and interval > 0 and rt.next_sample_at is not None:
                if now >= rt.next_sample_at:
                    rt.ops.put_nowait(_Op("sample", reading=reading))
                    rt.next_sample_at = max(rt.next_sample_at + interval, now)
            if reading:
                self._clock_aligned_sample(rt, reading)
            await asyncio.sleep(self.config.charging.meter_poll_s)

    def _clock_aligned_sample(self, rt: ConnectorRuntime, reading: MeterReading) -> None:
        """ClockAlignedDataInterval: a sample at every multiple of the interval since midnight UTC (§3.16.2).
        During a transaction it is transaction-related and goes through the journal; otherwise it is
        sent as a plain MeterValues without transactionId."""
        interval = self.configuration.get_int("ClockAlignedDataInterval")
        if interval <= 0:
            rt.next_aligned_at = None
            return
        now = self.wall_clock().timestamp()
        if rt.next_aligned_at is None:
            rt.next_aligned_at = (now // interval + 1) * interval
            return
        if now < rt.next_aligned_at:
            return
        boundary = rt.next_aligned_at
        rt.next_aligned_at = (now // interval + 1) * interval
        timestamp = ocpp_timestamp(datetime.fromtimestamp(boundary, UTC))
        if rt.local_tx is not None:
            rt.ops.put_nowait(_Op("sample", reading=reading, context="Sample.Clock", timestamp=timestamp))
        else:
            value = meter_value(reading, self.configuration.get_list("MeterValuesAlignedData"), "Sample.Clock",
                                timestamp, rt.controller.offered_current_a())
            self.ocpp.send_meter_values(rt.id, [value])

    async def _transaction_worker(self, rt: ConnectorRuntime) -> None:
        """Start, sample and stop in the order the controller asked for them."""
        while True:
            op = await rt.ops.get()
            recorded = False
            try:
                if op.kind == "start":
                    await self._journal_start(rt, op)
                    recorded = True
                elif op.kind == "stop":
                    await self._journal_stop(rt, op)
                elif op.kind == "sample":
                    self._journal_sample(rt, op)
                self.ocpp.journal_changed()
            except JournalValueError as exc:  # one value the journal cannot hold: that write is refused
                log.error("connector %d: journal %s refused: %s", rt.id, op.kind, exc)
            except JournalError as exc:
                self.journal_failed(exc)
            except Exception:
                log.exception("connector %d: journal %s failed", rt.id, op.kind)
            finally:
                if op.kind == "start":  # every start is answered, in order: committed, or refused (no energy)
                    self._dispatch(rt, ctl.TransactionRecorded(ok=recorded))
                rt.ops.task_done()

    def journal_failed(self, exc: Exception) -> None:
        """The journal cannot be written (disk full, read-only, corrupt): nothing may charge unrecorded.
        Every connector faults, its contactor opens; a technician must fix the storage and restart."""
        if self.storage_error is None:
            self.storage_error = str(exc)
            log.critical("journal cannot be written: %s; all connectors are faulted until the agent is "
                         "restarted with working storage", exc)
        for rt in self.connectors.values():
            self._dispatch(rt, ctl.FaultChanged(ctl.Fault.STORAGE, True))

    def _energy_now(self, rt: ConnectorRuntime, reading: MeterReading | None) -> float:
        if reading is not None:
            return reading.energy_wh
        return rt.last_reading.energy_wh if rt.last_reading else 0.0

    async def _journal_start(self, rt: ConnectorRuntime, op: _Op) -> None:
        reading = await self._read_meter(rt)
        energy = self._energy_now(rt, reading)
        timestamp = ocpp_timestamp(self.wall_clock())
        rt.local_tx = self.journal.begin_transaction(rt.id, op.id_tag or "", energy, timestamp,
                                                     reservation_id=op.reservation_id)
        rt.tx_begin = (energy, timestamp)  # durable now: the worker tells the controller it may offer energy
        interval = self.configuration.get_int("MeterValueSampleInterval")
        rt.next_sample_at = self.clock() + interval if interval > 0 else None
        log.info("connector %d: transaction started for %s at %.0f Wh%s", rt.id, op.id_tag, energy,
                 f" (reservation {op.reservation_id})" if op.reservation_id is not None else "")

    async def _journal_stop(self, rt: ConnectorRuntime, op: _Op) -> None:
        if rt.local_tx is None:
            return
        await self._contactor_opened(rt)
        reading = await self._read_meter(rt)  # the contactor is open: this is the final register
        energy = self._energy_now(rt, reading)
        timestamp = ocpp_timestamp(self.wall_clock())
        transaction_data = []
        measurands = self.configuration.get_list("StopTxnSampledData")
        if measurands and rt.tx_begin is not None:
            begin_wh, begin_ts = rt.tx_begin
            end = (meter_value(reading, measurands, "Transaction.End", timestamp) if reading
                   else register_value(energy, "Transaction.End", timestamp))
            transaction_data = [meter_value_from_v16(register_value(begin_wh, "Transaction.Begin", begin_ts)),
                                meter_value_from_v16(end)]
        # the register as the stop has always reported it (whole Wh); the reason in the journal's words
        self.journal.end_transaction(rt.local_tx, round(energy), timestamp, stop_reason_from_v16(op.reason or "local"),
                                     id_token=op.id_tag or None, meter_values=transaction_data)
        log.info("connector %d: transaction stopped (%s) at %.0f Wh", rt.id, op.reason, energy)
        rt.local_tx = None
        rt.tx_begin = None
        rt.next_sample_at = None

    async def _contactor_opened(self, rt: ConnectorRuntime) -> None:
        """An orderly stop keeps the contactor closed until the EV leaves C (at most
        SessionSettings.stop_under_load_timeout_s): the final meter reading waits for it to open."""
        limit = rt.controller.settings.stop_under_load_timeout_s + 1.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while rt.controller.contactor_commanded and self.control_lost is None:
                    await asyncio.sleep(0.02)

    def _journal_sample(self, rt: ConnectorRuntime, op: _Op) -> None:
        reading = op.reading
        if rt.local_tx is None or reading is None:
            return
        timestamp = op.timestamp or ocpp_timestamp(self.wall_clock())
        measurands = self.configuration.get_list(
            "MeterValuesAlignedData" if op.context == "Sample.Clock" else "MeterValuesSampledData")
        value = meter_value(reading, measurands, op.context, timestamp, rt.controller.offered_current_a())
        trigger = "meter_sample_clock" if op.context == "Sample.Clock" else "meter_sample_periodic"
        self.journal.add_meter_values(rt.local_tx, [meter_value_from_v16(value)], reading.energy_wh, timestamp,
                                      trigger)

    # ---- StationPort: what the OCPP layer may ask -----------------------------------------------

    @property
    def connector_ids(self) -> list[int]:
        return list(self.connectors)

    def statuses(self) -> list[dict]:
        station = "Available" if self.station_operative else "Unavailable"
        result = [{"connector_id": 0, "status": station}]
        for rt in self.connectors.values():
            view = rt.controller.view()
            # the error code of the status the controller derived: its most severe fault's
            result.append({"connector_id": rt.id, "status": view.status.value, "error_code": view.error_code,
                           "vendor_error_code": view.vendor_error_code})
        return result

    def meter_values_now(self, connector_id: int) -> list[dict]:
        rt = self.connectors[connector_id]
        if rt.last_reading is None:
            return []
        return [meter_value(rt.last_reading, self.configuration.get_list("MeterValuesSampledData"), "Trigger",
                            ocpp_timestamp(self.wall_clock()), rt.controller.offered_current_a())]

    def remote_start(self, connector_id: int | None, id_tag: str, charging_profile: dict | None = None) -> bool:
        if self.closing:
            return False
        if connector_id is None:
            candidates = [rt for rt in self.connectors.values() if rt.controller.can_accept_remote_start(id_tag)]
            # the connector reserved for this id first; a connector reserved for another id last
            reserved = [rt for rt in candidates if rt.controller.reservation is not None
                        and rt.controller.reservation.id_tag.casefold() == id_tag.casefold()]
            unreserved = [rt for rt in candidates if rt.controller.reservation is None]
            plugged = [rt for rt in unreserved if rt.controller.plugged]
            chosen = (reserved or plugged or unreserved or candidates or [None])[0]
        else:
            chosen = self.connectors.get(connector_id)
        if chosen is None or not chosen.controller.can_accept_remote_start(id_tag):
            return False
        if charging_profile is not None and not self.charging_limits.accept_remote_start_profile(chosen, charging_profile):
            return False
        self._dispatch(chosen, ctl.RemoteStart(id_tag))
        return True

    def remote_stop(self, transaction_id: int) -> bool:
        local_id = self.journal.local_id_for_csms_id(transaction_id)
        for rt in self.connectors.values():
            if local_id is not None and rt.local_tx == local_id and rt.controller.transaction_active:
                self._dispatch(rt, ctl.StopRequested(ctl.StopReason.REMOTE))
                return True
        return False

    def change_availability(self, connector_id: int, operative: bool) -> str:
        targets = list(self.connectors.values()) if connector_id == 0 else [self.connectors[connector_id]]
        value = "Operative" if operative else "Inoperative"
        self.journal.set_setting(f"availability.{connector_id}", value)  # survives reboots (OCTT TC_034)
        if connector_id == 0:
            for rt in targets:
                self.journal.set_setting(f"availability.{rt.id}", value)
            if self.station_operative != operative:
                self.station_operative = operative
                self.ocpp.send_status(0, "Available" if operative else "Unavailable")
        scheduled = False
        for rt in targets:
            # the controller schedules Inoperative while a transaction runs (the replica tells it now)
            scheduled |= not operative and rt.controller.transaction_active
            self._dispatch(rt, ctl.AvailabilityChanged(operative))
        return "Scheduled" if scheduled else "Accepted"

    async def unlock_connector(self, connector_id: int) -> str:
        """UnlockConnector (§5.18): the controller stops a running transaction (UnlockCommand), releases a
        held cable and commands the lock open; Unlocked once the lock's feedback reads open, UnlockFailed if
        it does not within the lock deadline (the controller then also reports ConnectorLockFailure)."""
        rt = self.connectors[connector_id]
        if not rt.hw.has_lock:
            return "NotSupported"
        self._dispatch(rt, ctl.UnlockRequested())
        loop = asyncio.get_running_loop()  # a real wait for the actuator: the event loop's clock
        # the lock's feedback as the control loop reads it (a lock that cannot be read is a device fault); the
        # replica follows a moment later than the control loop: its deadline, and a step's time
        deadline = loop.time() + rt.controller.settings.lock_timeout_s + 0.1
        while True:
            c = rt.controller
            if not c.lock_feedback and ctl.Fault.DEVICE not in c.faults and not c.view().lock_commanded:
                log.info("connector %d: unlocked by the CSMS", rt.id)
                return "Unlocked"
            if loop.time() >= deadline:
                log.warning("connector %d: unlock failed: the lock still reads locked", rt.id)
                return "UnlockFailed"
            await asyncio.sleep(0.02)

    def transaction_message_delivered(self, message: QueuedMessage, delivery: Delivery) -> None:
        token = delivery.token
        if token is not None and delivery.id_token:
            self._remember(delivery.id_token, token)
        if not delivery.started:
            return
        for rt in self.connectors.values():
            if rt.local_tx == message.local_tx:
                accepted = token is not None and token.status == "Accepted"
                if not accepted:
                    log.warning("connector %d: CSMS refused id %s in StartTransaction (%s)",
                                rt.id, delivery.id_token, token.status if token else None)
                self._dispatch(rt, ctl.TransactionConfirmed(accepted, token.parent_id_tag if token else None))

    def clear_cache(self) -> str:
        self.auth.clear_cache()
        return "Accepted"

    def local_list_version(self) -> int:
        return self.auth.list_version()

    def send_local_list(self, list_version: int, update_type: str, entries: list[dict]) -> str:
        cfg = self.configuration
        change = plan_send_local_list(
            enabled=cfg.get_bool("LocalAuthListEnabled"), current_version=self.auth.list_version(),
            current_size=self.auth.list_size(), list_version=list_version, update_type=update_type,
            entries=entries, max_length=cfg.get_int("LocalAuthListMaxLength"),
            send_max_length=cfg.get_int("SendLocalListMaxLength"),
        )
        if change.status is ListUpdate.ACCEPTED:
            self.auth.apply_list_change(change)
            log.info("local authorization list: %s update to version %d (%d entries)", update_type,
                     list_version, self.auth.list_size())
        return change.status.value

    # ---- Reservation (agent.station.reservations) and Smart Charging (agent.station.charging_limits) ---------------------

    def reserve_now(self, connector_id: int, expiry_date: str, id_tag: str, reservation_id: int,
                    parent_id_tag: str | None) -> str:
        if self.closing or not self.config.charging.reservations:
            return "Rejected"  # configured not to accept reservations (OCTT TC_048_4)
        if connector_id == 0 and not self.configuration.get_bool("ReserveConnectorZeroSupported"):
            return "Rejected"  # TC_050_4
        return self.reservations.reserve(connector_id, expiry_date, id_tag, reservation_id, parent_id_tag)

    def cancel_reservation(self, reservation_id: int) -> str:
        return self.reservations.cancel(reservation_id)

    def set_charging_profile(self, connector_id: int, profile: dict) -> str:
        return self.charging_limits.set_profile(connector_id, profile)

    def clear_charging_profile(self, profile_id: int | None, connector_id: int | None, purpose: str | None,
                               stack_level: int | None) -> str:
        return self.charging_limits.clear(profile_id, connector_id, purpose, stack_level)

    def composite_schedule(self, connector_id: int, duration: int, rate_unit: str | None) -> dict | None:
        return self.charging_limits.composite_schedule(connector_id, duration, rate_unit)

    def reset(self, kind: str) -> None:
        self._spawn(self._reset(kind))

    async def _reset(self, kind: str) -> None:
        reason = ctl.StopReason.HARD_RESET if kind == "Hard" else ctl.StopReason.SOFT_RESET
        log.warning("%s reset requested by the CSMS", kind)
        self.security.event(RESET_OR_REBOOT, f"{kind} reset requested by the CSMS")
        for rt in self.connectors.values():
            self._dispatch(rt, ctl.StopRequested(reason))
        await self.link.sync()  # the StopTransactions decided by the control loop are queued here now
        await self._drain_transaction_ops()
        await self._flush_journal()
        await self._contactors_opened()
        reboot = list(self.info.reboot_command) if kind == "Hard" and self.info.reboot_command else None
        self._restart = RestartRequested(kind, reboot)
        self._shutdown.set()

    async def _contactors_opened(self) -> None:
        """A reset is an orderly stop: the EVs get their time to leave C before the restart opens everything."""
        await asyncio.gather(*(self._contactor_opened(rt) for rt in self.connectors.values()))

    # ---- firmware installation (agent.station.firmware) ----------------------------------------------------

    def transactions_active(self) -> bool:
        """A transaction runs, or its last journal write (StopTransaction) is still to be done."""
        return any(rt.controller.transaction_active or rt.local_tx is not None for rt in self.connectors.values())

    def hold_for_firmware(self, hold: bool) -> None:
        """While a firmware update waits to install: no new session (idle connectors Unavailable, busy ones
        once their transaction ends); afterwards the availability the CSMS set. Not persisted: a restart
        ends the hold."""
        availability = self.journal.settings("availability.")
        for rt in self.connectors.values():
            operative = not hold and self.station_operative and availability.get(str(rt.id), "Operative") == "Operative"
            self._dispatch(rt, ctl.AvailabilityChanged(operative))

    async def restart_for_firmware(self) -> None:
        """After the install hook succeeded: restart in place, the way a Soft reset does."""
        await self.link.sync()
        await self._drain_transaction_ops()
        await self._flush_journal()
        self._restart = RestartRequested("Firmware update", None)
        self._shutdown.set()

    # ---- technician's view ----------------------------------------------------------------------

    def status(self) -> dict:
        connectors = []
        for rt in self.connectors.values():
            view = rt.controller.view()
            record = self.journal.transaction(rt.local_tx) if rt.local_tx is not None else None
            reading = rt.last_reading
            connectors.append({
                "id": rt.id,
                "cp_state": view.cp_state.value,
                "pilot_mode": view.pilot_mode.value,
                "pwm_duty": view.duty_percent,
                "offered_current_a": view.offered_current_a,
                "contactor_closed": view.contactor_closed,
                "contactor_feedback": view.contactor_feedback,
                "status": view.status.value,
                "error_code": view.error_code,
                "faults": list(view.faults),
                # until its StopTransaction is in the journal, the transaction is not over
                "transaction_active": view.transaction_active or rt.local_tx is not None,
                "transaction_id": record.csms_tx_number if record else None,
                "id_tag": view.id_tag,
                "reservation": self.reservations.status(view.reservation),
                "energy_wh": reading.energy_wh if reading else None,
                "power_w": reading.power_w if reading else None,
                "session_energy_wh": (reading.energy_wh - record.meter_start) if reading and record else None,
                "meter_ok": rt.meter_answered and rt.meter_failures < METER_FAILURES_FOR_FAULT,
                "charging_limit_a": rt.controller.charging_limit_a,  # Smart Charging; None: no limit
                "lock": None if not rt.hw.has_lock else {
                    "commanded": view.lock_commanded, "locked": view.lock_feedback,
                    "held_for": view.lock_held_for},
                "indicator": rt.indicator if rt.hw.has_indicator else None,
            })
        return {
            "station": {"id": self.config.station.id, "pid": os.getpid(),
                        "control_pid": getattr(self.link, "pid", None), "operative": self.station_operative,
                        "control_loop": "lost: " + self.control_lost if self.control_lost else "running"},
            "ocpp": {"connected": self.ocpp.connected,
                     "registration": self.ocpp.registration,
                     "url": self.security.endpoint,
                     "security_profile": self.security.profile,
                     "last_error": self.ocpp.last_error},
            "journal": {"pending": self.journal.pending_count(), "path": str(self.journal.path),
                        "dropped": self.ocpp.dropped_messages,
                        "dropped_for_space": self.journal.dropped_for_space,
                        "error": self.storage_error},
            "firmware": self.firmware.status(),
            "smart_charging": self.charging_limits.status(),
            "connectors": connectors,
        }

    def stop_transaction(self, connector_id: int) -> bool:
        rt = self.connectors[connector_id]
        if not rt.controller.transaction_active:
            return False
        self._dispatch(rt, ctl.StopRequested(ctl.StopReason.LOCAL))
        return True

    # ---- technician's hardware checks (`evse hw ...`, control commands hw.*) ------------------------
    # Each returns a report dict of agent.cli.hw: {"ok": true, ...} or {"ok": false, "exit_code", "error"}.

    async def hw_meter(self, connector_id: int) -> dict:
        return self._hw_starting() or await self._hw_request("hw_meter", connector_id)

    async def hw_pilot(self, connector_id: int) -> dict:
        return self._hw_starting() or await self._hw_request("hw_pilot", connector_id)

    async def _hw_request(self, op: str, connector_id: int) -> dict:
        try:
            result = await self.link.request(op, connector=connector_id)
        except (channel.RequestFailed, ControlLost, TimeoutError) as exc:
            return {"ok": False, "exit_code": 1, "error": f"the control loop could not run it: {exc}"}
        assert isinstance(result, dict)
        return result

    def _hw_starting(self) -> dict | None:
        """A refusal while the board is still being started (the control loop has not run yet)."""
        if self.control_loop_alive_at:
            return None
        return {"ok": False, "exit_code": hw_cli.EXIT_USAGE,
                "error": "the agent is still starting its devices; try again in a moment"}

    async def hw_contactor_test(self, connector_id: int) -> dict:
        """Close and open the contactor by hand, only with no EV (state A) and no transaction. The control
        loop leaves the connector alone meanwhile, so the controller neither takes the closed contactor for
        a fault nor acts on it; the test always opens it again, then supervision resumes (a contactor that
        stayed closed is then a weld fault, as it should be)."""
        return await self._hw_test(connector_id, "hw_contactor_test")

    async def hw_rcd_test(self, connector_id: int) -> dict:
        return await self._hw_test(connector_id, "hw_rcd_test")

    async def _hw_test(self, connector_id: int, op: str) -> dict:
        # whether the test may run is decided in the control loop, on the controller itself (no EV, no
        # transaction, contactor open, no latched fault), where nothing can change between check and test
        return self._hw_starting() or await self._hw_request(op, connector_id)

    async def reset_faults(self, connector_id: int) -> list[str]:
        """`evse fault reset`: the RCD and a board's own latch are reset, then the controller's latched
        faults whose cause is gone; answers the faults still active."""
        faults = await self.link.request("reset_faults", connector=connector_id)
        return [str(f) for f in faults]
