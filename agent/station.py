"""The station: the thin shell that wires hardware, session controllers, journal and OCPP together.

* The control loop reads the HAL every `control_period_s`, turns changes into controller events and
  carries out the commands that come back (contactor, pilot, lock) in the same step.
* Transaction bookkeeping for a connector runs in one ordered worker per connector: the meter is
  read, the journal written (the commit is on disk), then the OCPP sender is woken.
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

from agent import controller as ctl
from agent import hw_cli, logs
from agent.auth_store import AuthStore
from agent.authorization import (
    AuthSettings,
    Decision,
    IdTagInfo,
    ListUpdate,
    Source,
    decide,
    plan_send_local_list,
)
from agent.charging_limits import ChargingLimits
from agent.config import AgentConfig
from agent.firmware import FirmwareManager
from agent.journal import Journal, JournalError, QueuedMessage
from agent.meter_values import meter_value, ocpp_timestamp, register_value
from agent.ocpp16 import OcppClient
from agent.ocpp_config import OcppConfiguration
from agent.reservations import Reservations
from agent.security import RESET_OR_REBOOT, STARTUP, SecurityManager
from hal.interfaces import (
    Board,
    ConnectorHardware,
    CpState,
    HardwareError,
    IndicatorState,
    MeterError,
    MeterReading,
    PilotMode,
)

log = logging.getLogger("evse.station")

METER_FAILURES_FOR_FAULT = 3  # consecutive failed polls before a meter counts as dead (one glitch is not)
METER_READ_TIMEOUT_S = 2.0
IDLE_CONTROL_PERIOD_S = 0.1  # poll period while no EV is plugged in and every contactor is open


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
    hw: ConnectorHardware
    controller: ctl.ConnectorController
    ops: asyncio.Queue = field(default_factory=asyncio.Queue)
    local_tx: int | None = None
    tx_begin: tuple[float, str] | None = None  # (meter start Wh, timestamp)
    next_sample_at: float | None = None
    next_aligned_at: float | None = None  # wall-clock time of the next clock-aligned sample
    last_reading: MeterReading | None = None
    meter_failures: int = 0
    unreadable: set[str] = field(default_factory=set)  # devices whose last read failed
    hw_test: str | None = None  # a technician's test that switches devices itself ("contactor test"...)
    # events raised while this connector's commands are being carried out (a journal failure inside
    # StartTransaction...): handled right after, never inside the controller's previous decision
    pending_events: deque = field(default_factory=deque)
    dispatching: bool = False

    @property
    def id(self) -> int:
        return self.hw.connector_id


def _grants_energy(command: ctl.Command) -> bool:
    return (isinstance(command, ctl.SetContactor) and command.closed) or (
        isinstance(command, ctl.SetPilot) and command.mode is PilotMode.PWM)


def _read(unreadable: dict[str, str], name: str, read):
    """One device read; a HardwareError is noted in `unreadable` instead of escaping the control step."""
    try:
        return read()
    except HardwareError as exc:
        unreadable[name] = str(exc)
        return None


class StationCrashed(Exception):
    """An essential task of the station died; the agent exits non-zero with every contactor open."""


class RestartRequested(Exception):
    """Raised out of Station.run() when the agent must restart in place (Reset)."""

    def __init__(self, kind: str, reboot_command: list[str] | None):
        super().__init__(kind)
        self.kind = kind
        self.reboot_command = reboot_command


class Station:
    def __init__(self, config: AgentConfig, board: Board, journal: Journal,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.config = config
        self.board = board
        self.journal = journal
        self.clock = clock
        self.wall_clock = wall_clock  # UTC: charging schedules are in wall-clock time
        self.security = SecurityManager(config, journal)
        self.security.apply_local_settings()  # config-file edits win over what the CSMS set (agent.security)
        self.configuration = OcppConfiguration(
            number_of_connectors=len(board.connectors),
            initial={**config.ocpp_configuration, "SecurityProfile": str(config.ocpp.security_profile)},
            stored=journal.settings("ocpp."),
            on_change=self.configuration_changed,
            check_change=self.security.check_change,
        )
        self.security.attach(self.configuration)
        self.auth = AuthStore(journal)
        self.connectors: dict[int, ConnectorRuntime] = {}
        for hw in board.connectors:
            controller = ctl.ConnectorController(settings=self._session_settings(hw), has_lock=hw.lock is not None)
            self.connectors[hw.connector_id] = ConnectorRuntime(hw, controller)
        self.station_operative = journal.settings("availability.").get("0", "Operative") == "Operative"
        controllers = {cid: rt.controller for cid, rt in self.connectors.items()}
        self.reservations = Reservations(journal, controllers, self._dispatch_to, clock, wall_clock,
                                         self.journal_failed)
        self.charging_limits = ChargingLimits(self.configuration, journal, self.connectors, self._dispatch_to,
                                              wall_clock, self.journal_failed)
        self.ocpp = OcppClient(config, self, journal)
        self.security.on_event_queued = self.ocpp.journal_changed
        self.firmware = FirmwareManager(self, install_command=board.firmware_install_command,
                                        max_download_bytes=board.firmware_max_download_bytes)
        self._tasks: list[asyncio.Task] = []
        self._side_tasks: set[asyncio.Task] = set()
        self._restart: RestartRequested | None = None
        self._shutdown = asyncio.Event()
        self.control_loop_alive_at = 0.0
        self.storage_error: str | None = None
        # called after every completed control step: the systemd watchdog and status (agent.service)
        self.after_control_step: Callable[[], None] | None = None
        self.closing = False  # SIGTERM: no new session starts (cards, remote starts) while shutting down

    # ---- settings -------------------------------------------------------------------------------

    def _session_settings(self, hw: ConnectorHardware) -> ctl.SessionSettings:
        cfg = self.configuration
        return ctl.SessionSettings(
            max_current_a=min(self.config.charging.max_current_a, hw.max_current_a),
            connection_timeout_s=cfg.get_int("ConnectionTimeOut"),
            stop_on_ev_side_disconnect=cfg.get_bool("StopTransactionOnEVSideDisconnect"),
            stop_on_invalid_id=cfg.get_bool("StopTransactionOnInvalidId"),
            authorize_remote_tx=cfg.get_bool("AuthorizeRemoteTxRequests"),
            feedback_supervised=hw.contactor.has_mirror_contact,
            meter_failure_stops=self.config.charging.meter_failure == "stop",
            unlock_on_ev_side_disconnect=cfg.get_bool("UnlockConnectorOnEVSideDisconnect"),
            lock_timeout_s=hw.lock.travel_timeout_s if hw.lock is not None else ctl.SessionSettings.lock_timeout_s,
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
        for rt in self.connectors.values():
            self._dispatch(rt, ctl.SettingsChanged(self._session_settings(rt.hw)))

    # ---- lifecycle ------------------------------------------------------------------------------

    def recover(self) -> None:
        """Close transactions a previous run left open: reason PowerLoss, last journaled meter value."""
        stop_measurands = self.configuration.get_list("StopTxnSampledData")
        for tx in self.journal.running_transactions():
            if self._resume(tx):
                continue
            payload = {
                "meterStop": round(tx.last_meter),
                "timestamp": tx.last_meter_at,
                "reason": ctl.StopReason.POWER_LOSS.value,
            }
            if "Energy.Active.Import.Register" in stop_measurands:
                payload["transactionData"] = [
                    register_value(tx.meter_start, "Transaction.Begin", tx.started_at),
                    register_value(tx.last_meter, "Transaction.End", tx.last_meter_at),
                ]
            self.journal.end_transaction(tx.local_id, payload)
            log.warning("transaction %s on connector %d was interrupted: stopped with PowerLoss at %.0f Wh",
                        tx.csms_id or f"local-{tx.local_id}", tx.connector_id, tx.last_meter)
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
        try:
            plugged = rt.hw.pilot.read().state in (CpState.B, CpState.C, CpState.D)
        except HardwareError:
            return False
        if not plugged:
            return False
        rt.local_tx = tx.local_id
        rt.tx_begin = (tx.meter_start, tx.started_at)
        self.charging_limits.transaction_resumed(rt, tx.started_at)
        interval = self.configuration.get_int("MeterValueSampleInterval")
        rt.next_sample_at = self.clock() + interval if interval > 0 else None
        self._dispatch(rt, ctl.ResumeTransaction(tx.id_tag))
        log.warning("transaction %s on connector %d resumes after the restart (EV still plugged in)",
                    tx.csms_id or f"local-{tx.local_id}", rt.id)
        return True

    async def run(self) -> None:
        """Run until shutdown() or a reset; raises RestartRequested for a reset."""
        await self.board.start()
        self.recover()
        self.security.event(STARTUP, f"evse-agent {self.config.station.firmware_version} started")
        self.firmware.recover()
        for rt in self.connectors.values():
            rt.hw.contactor.set_closed(False)
            self._tasks.append(asyncio.create_task(self._transaction_worker(rt), name=f"tx-{rt.id}"))
            self._tasks.append(asyncio.create_task(self._meter_loop(rt), name=f"meter-{rt.id}"))
        self._tasks.append(asyncio.create_task(self._control_loop(), name="control"))
        if self.board.rfid is not None:
            self._tasks.append(asyncio.create_task(self._rfid_loop(), name="rfid"))
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
        await self.board.close()  # every contactor open

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

    # ---- control loop ---------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        loop = asyncio.get_running_loop()
        hardware_changed = asyncio.Event()
        for rt in self.connectors.values():  # back-ends that can tell wake the loop at once (any thread)
            rt.hw.pilot.on_change(lambda: loop.call_soon_threadsafe(hardware_changed.set))
        while True:
            hardware_changed.clear()  # before the step: a change during it makes the next wait return at once
            self.control_step()
            self.control_loop_alive_at = self.clock()
            if self.after_control_step is not None:
                self.after_control_step()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._control_period()):
                    await hardware_changed.wait()

    def _control_period(self) -> float:
        """The configured period while an EV is plugged in or a contactor is (or reads) closed; a slower
        poll while every connector is empty and open, where nothing has a deadline (saves CPU on a Pi)."""
        period = self.config.charging.control_period_s  # read each time: SIGHUP may change it
        idle = all(not rt.controller.plugged and not rt.controller.contactor_commanded
                   and not rt.controller.feedback_closed for rt in self.connectors.values())
        return max(period, IDLE_CONTROL_PERIOD_S) if idle else period

    def control_step(self) -> None:
        """Read every device once and feed the changes to the controllers."""
        for rt in self.connectors.values():
            if rt.hw_test is not None:
                continue  # the test switches the contactor on purpose; supervision resumes right after it
            hw, c = rt.hw, rt.controller
            unreadable: dict[str, str] = {}
            reading = _read(unreadable, "control pilot", hw.pilot.read)
            tripped = _read(unreadable, "RCD", hw.rcd.tripped) if hw.rcd is not None else None
            feedback = _read(unreadable, "contactor mirror contact", hw.contactor.feedback_closed)
            locked = _read(unreadable, "connector lock", hw.lock.is_locked) if hw.lock is not None else None
            ampacity = None
            if hw.proximity is not None and c.plugged:
                ampacity = _read(unreadable, "proximity pilot", hw.proximity.read_ampacity)
            self._report_unreadable(rt, unreadable)

            if reading is not None:
                if reading.state != c.cp_state:
                    self._dispatch(rt, ctl.PilotChanged(reading.state))
                if reading.diode_ok != c.diode_ok:
                    self._dispatch(rt, ctl.DiodeChecked(reading.diode_ok))
            if tripped is not None and tripped != (ctl.Fault.RCD in c.faults):
                self._dispatch(rt, ctl.FaultChanged(ctl.Fault.RCD, tripped))
            if feedback is not None and feedback != c.feedback_closed:
                self._dispatch(rt, ctl.ContactorFeedback(feedback))
            if locked is not None and locked != c.lock_feedback:
                self._dispatch(rt, ctl.LockFeedback(locked))
            if "proximity pilot" not in unreadable and ampacity != c.cable_a:
                self._dispatch(rt, ctl.CableDetected(ampacity))
            self.charging_limits.update(rt)
            self._dispatch(rt, ctl.Tick())

    def _report_unreadable(self, rt: ConnectorRuntime, unreadable: dict[str, str]) -> None:
        """A device that cannot be read is a fault until it answers again; logged on change only."""
        if set(unreadable) == rt.unreadable:
            return
        for name in set(unreadable) - rt.unreadable:
            log.error("connector %d: %s cannot be read: %s", rt.id, name, unreadable[name])
        for name in rt.unreadable - set(unreadable):
            log.info("connector %d: %s answers again", rt.id, name)
        rt.unreadable = set(unreadable)
        self._dispatch(rt, ctl.FaultChanged(ctl.Fault.DEVICE, bool(unreadable)))

    def _dispatch(self, rt: ConnectorRuntime, event: ctl.Event) -> None:
        """Hand an event to the connector's controller and carry out its commands. An event raised while
        commands are carried out (a journal failure inside StartTransaction...) is handled after the current
        list, never inside it; what is left of the list that would grant energy (close the contactor, start
        the PWM) waits for the newer event's decision and runs only if the controller still wants it then."""
        rt.pending_events.append(event)
        if rt.dispatching:
            return
        rt.dispatching = True
        withheld: list[ctl.Command] = []
        try:
            while rt.pending_events:
                for command in rt.controller.handle(rt.pending_events.popleft(), self.clock()):
                    if rt.pending_events and _grants_energy(command):
                        withheld.append(command)
                    else:
                        self._execute(rt, command)
            view = rt.controller.view()
            for command in withheld:
                if isinstance(command, ctl.SetContactor) and view.contactor_closed:
                    self._execute(rt, command)
                elif isinstance(command, ctl.SetPilot) and view.pilot_mode is PilotMode.PWM:
                    self._execute(rt, ctl.SetPilot(PilotMode.PWM, view.duty_percent))
                else:
                    log.warning("connector %d: %s not carried out: a newer event changed the decision",
                                rt.id, command)
        finally:
            rt.dispatching = False
            rt.pending_events.clear()

    def _dispatch_to(self, connector_id: int, event: ctl.Event) -> None:
        self._dispatch(self.connectors[connector_id], event)

    def _execute(self, rt: ConnectorRuntime, command: ctl.Command) -> None:
        hw = rt.hw
        match command:
            case ctl.SetContactor(closed):
                hw.contactor.set_closed(closed)
                log.info("connector %d: contactor %s", rt.id, "closed" if closed else "opened")
            case ctl.SetPilot(mode, duty):
                if mode is PilotMode.PWM:
                    hw.pilot.set_pwm(duty)
                elif mode is PilotMode.F:
                    hw.pilot.set_f()
                else:
                    hw.pilot.set_x1()
            case ctl.SetLock(locked):
                if hw.lock is not None:
                    hw.lock.set_locked(locked)
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
                self.ocpp.send_status(rt.id, status.value, error_code, info, vendor_code)
                self._indicate(rt, ctl.indicator_for(status))
            case ctl.Notice(text):
                log.info("connector %d: %s", rt.id, text)

    def _indicate(self, rt: ConnectorRuntime, state: IndicatorState) -> None:
        """Status LEDs follow the connector status; a LED that cannot be driven is logged, never a fault."""
        if rt.hw.indicator is None:
            return
        try:
            rt.hw.indicator.indicate(state)
        except Exception as exc:  # gpiozero raises its own errors: a LED must never stop a control step
            log.warning("connector %d: status indicator cannot show %s: %s", rt.id, state.value, exc)

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
        return decide(id_tag, online=online, now=datetime.now(UTC), list_entry=self.auth.listed(id_tag),
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

    async def _rfid_loop(self) -> None:
        assert self.board.rfid is not None
        while True:
            try:
                tag = await self.board.rfid.next_tag()
            except HardwareError as exc:
                log.warning("RFID reader: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self.present_id_tag(tag)

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
            async with asyncio.timeout(METER_READ_TIMEOUT_S):
                reading = await rt.hw.meter.read()
        except (MeterError, HardwareError, TimeoutError) as exc:
            rt.meter_failures += 1
            if rt.meter_failures == METER_FAILURES_FOR_FAULT:
                log.error("connector %d: energy meter failed %d times: %s", rt.id, rt.meter_failures, exc)
                self._dispatch(rt, ctl.FaultChanged(ctl.Fault.METER, True))
            return None
        if rt.meter_failures >= METER_FAILURES_FOR_FAULT:
            log.info("connector %d: energy meter answers again", rt.id)
            self._dispatch(rt, ctl.FaultChanged(ctl.Fault.METER, False))
        rt.meter_failures = 0
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
        now = time.time()
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
            try:
                if op.kind == "start":
                    await self._journal_start(rt, op)
                elif op.kind == "stop":
                    await self._journal_stop(rt, op)
                elif op.kind == "sample":
                    self._journal_sample(rt, op)
                self.ocpp.journal_changed()
            except JournalError as exc:
                self.journal_failed(exc)
            except Exception:
                log.exception("connector %d: journal %s failed", rt.id, op.kind)
            finally:
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
        timestamp = ocpp_timestamp()
        rt.local_tx = self.journal.begin_transaction(rt.id, op.id_tag or "", energy, timestamp,
                                                     reservation_id=op.reservation_id)
        rt.tx_begin = (energy, timestamp)
        interval = self.configuration.get_int("MeterValueSampleInterval")
        rt.next_sample_at = self.clock() + interval if interval > 0 else None
        log.info("connector %d: transaction started for %s at %.0f Wh%s", rt.id, op.id_tag, energy,
                 f" (reservation {op.reservation_id})" if op.reservation_id is not None else "")

    async def _journal_stop(self, rt: ConnectorRuntime, op: _Op) -> None:
        if rt.local_tx is None:
            return
        reading = await self._read_meter(rt)  # the contactor is already open: this is the final register
        energy = self._energy_now(rt, reading)
        timestamp = ocpp_timestamp()
        payload: dict = {"meterStop": round(energy), "timestamp": timestamp, "reason": op.reason}
        if op.id_tag:
            payload["idTag"] = op.id_tag
        measurands = self.configuration.get_list("StopTxnSampledData")
        if measurands and rt.tx_begin is not None:
            begin_wh, begin_ts = rt.tx_begin
            end = (meter_value(reading, measurands, "Transaction.End", timestamp) if reading
                   else register_value(energy, "Transaction.End", timestamp))
            payload["transactionData"] = [register_value(begin_wh, "Transaction.Begin", begin_ts), end]
        self.journal.end_transaction(rt.local_tx, payload)
        log.info("connector %d: transaction stopped (%s) at %.0f Wh", rt.id, op.reason, energy)
        rt.local_tx = None
        rt.tx_begin = None
        rt.next_sample_at = None

    def _journal_sample(self, rt: ConnectorRuntime, op: _Op) -> None:
        reading = op.reading
        if rt.local_tx is None or reading is None:
            return
        timestamp = op.timestamp or ocpp_timestamp()
        measurands = self.configuration.get_list(
            "MeterValuesAlignedData" if op.context == "Sample.Clock" else "MeterValuesSampledData")
        value = meter_value(reading, measurands, op.context, timestamp, rt.controller.offered_current_a())
        self.journal.add_meter_values(rt.local_tx, rt.id, [value], reading.energy_wh, timestamp)

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
                            ocpp_timestamp(), rt.controller.offered_current_a())]

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
            self._dispatch(rt, ctl.AvailabilityChanged(operative))
            scheduled |= rt.controller.view().availability_scheduled
        return "Scheduled" if scheduled else "Accepted"

    async def unlock_connector(self, connector_id: int) -> str:
        """UnlockConnector (§5.18): the controller stops a running transaction (UnlockCommand), releases a
        held cable and commands the lock open; Unlocked once the lock's feedback reads open, UnlockFailed if
        it does not within the lock deadline (the controller then also reports ConnectorLockFailure)."""
        rt = self.connectors[connector_id]
        lock = rt.hw.lock
        if lock is None:
            return "NotSupported"
        self._dispatch(rt, ctl.UnlockRequested())
        loop = asyncio.get_running_loop()  # a real wait for the actuator: the event loop's clock
        deadline = loop.time() + rt.controller.settings.lock_timeout_s
        while True:
            try:
                locked = lock.is_locked()
            except HardwareError as exc:
                log.warning("connector %d: unlock: the lock cannot be read: %s", rt.id, exc)
                locked = True  # not confirmed open
            if not locked:
                log.info("connector %d: unlocked by the CSMS", rt.id)
                return "Unlocked"
            if loop.time() >= deadline:
                log.warning("connector %d: unlock failed: the lock still reads locked", rt.id)
                return "UnlockFailed"
            await asyncio.sleep(0.02)

    def transaction_message_delivered(self, message: QueuedMessage, response: dict) -> None:
        info = response.get("idTagInfo") or {}
        if info and message.payload.get("idTag"):
            self._remember(message.payload["idTag"], IdTagInfo.from_ocpp(info))
        if message.action != "StartTransaction":
            return
        for rt in self.connectors.values():
            if rt.local_tx == message.local_tx:
                accepted = info.get("status") == "Accepted"
                if not accepted:
                    log.warning("connector %d: CSMS refused id %s in StartTransaction (%s)",
                                rt.id, message.payload.get("idTag"), info.get("status"))
                self._dispatch(rt, ctl.TransactionConfirmed(accepted, info.get("parentIdTag")))

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

    # ---- Reservation (agent.reservations) and Smart Charging (agent.charging_limits) ---------------------

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
        await self._drain_transaction_ops()
        await self._flush_journal()
        reboot = self.board.reboot_command if kind == "Hard" else None
        self._restart = RestartRequested(kind, reboot)
        self._shutdown.set()

    # ---- firmware installation (agent.firmware) ----------------------------------------------------

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
                "transaction_active": view.transaction_active,
                "transaction_id": record.csms_id if record else None,
                "id_tag": view.id_tag,
                "reservation": self.reservations.status(view.reservation),
                "energy_wh": reading.energy_wh if reading else None,
                "power_w": reading.power_w if reading else None,
                "session_energy_wh": (reading.energy_wh - record.meter_start) if reading and record else None,
                "meter_ok": rt.meter_failures < METER_FAILURES_FOR_FAULT,
                "charging_limit_a": rt.controller.charging_limit_a,  # Smart Charging; None: no limit
                "lock": None if rt.hw.lock is None else {
                    "commanded": view.lock_commanded, "locked": view.lock_feedback,
                    "held_for": view.lock_held_for},
                "indicator": rt.hw.indicator.shown.value if rt.hw.indicator is not None else None,
            })
        return {
            "station": {"id": self.config.station.id, "pid": os.getpid(),
                        "operative": self.station_operative},
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
    # Each returns a report dict of agent.hw_cli: {"ok": true, ...} or {"ok": false, "exit_code", "error"}.

    async def hw_meter(self, connector_id: int) -> dict:
        return self._hw_starting() or await hw_cli.report(hw_cli.read_meter(self.connectors[connector_id].hw))

    async def hw_pilot(self, connector_id: int) -> dict:
        return self._hw_starting() or await hw_cli.report(hw_cli.read_pilot(self.connectors[connector_id].hw))

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
        return await self._hw_test(connector_id, "contactor test", hw_cli.contactor_test)

    async def hw_rcd_test(self, connector_id: int) -> dict:
        link = self.board.extras.get("coprocessor")
        return await self._hw_test(connector_id, "RCD self-test", lambda hw: hw_cli.rcd_test(hw, link))

    async def _hw_test(self, connector_id: int, name: str, test) -> dict:
        rt = self.connectors[connector_id]
        refusal = self._hw_starting()
        if refusal is not None:
            return refusal
        refusal = self._hw_test_refusal(rt, name)
        if refusal is not None:
            return {"ok": False, "exit_code": hw_cli.EXIT_USAGE, "error": refusal}
        rt.hw_test = name
        log.warning("connector %d: %s requested by a technician", rt.id, name)
        try:
            result = await hw_cli.report(test(rt.hw))
        finally:
            rt.hw_test = None
        log.warning("connector %d: %s: %s", rt.id, name, "passed" if result["ok"] else result["error"])
        return result

    def _hw_test_refusal(self, rt: ConnectorRuntime, name: str) -> str | None:
        view = rt.controller.view()
        where = f"connector {rt.id}: {name} refused"
        if rt.hw_test is not None:
            return f"{where}: a {rt.hw_test} is running"
        if view.transaction_active:
            return f"{where}: a transaction is running (stop it first: evse stop)"
        if view.cp_state is not CpState.A:
            return f"{where}: the control pilot reads state {view.cp_state.value}, not A: unplug the EV"
        if view.contactor_closed:
            return f"{where}: the agent has the contactor closed"
        blocking = sorted({ctl.Fault.WELD, ctl.Fault.CONTACTOR, ctl.Fault.RCD} & set(view.faults))
        if blocking:
            return f"{where}: fault(s) {', '.join(blocking)} active: clear the cause and run evse fault reset"
        return None

    def reset_faults(self, connector_id: int) -> list[str]:
        rt = self.connectors[connector_id]
        if rt.hw.rcd is not None and rt.hw.rcd.tripped():
            rt.hw.rcd.reset()
        reset_hardware = getattr(rt.hw.contactor, "reset_fault", None)  # boards that latch faults themselves
        if reset_hardware is not None:
            reset_hardware()
        self._dispatch(rt, ctl.ResetLatchedFaults())
        return list(rt.controller.view().faults)
