"""The board side of the station: devices, session controllers and the control loop.

It runs alone in the control process (agent.control.process) on a real station, or in the agent's own
event loop behind agent.control.link.InProcessLink (tests, fleet mode). Each step reads every safety device
once, turns changes into controller events and carries out the hardware commands (contactor, pilot, lock,
status LEDs) in the same step; every other command (StartTransaction, StatusChanged, ...) goes up the
channel to the agent, with the controller's state. Nothing here waits for the agent, the disk or the network.

Supervision of the agent: every message from it counts as a sign of life; without one for
`agent_deadline_s` every connector gets Fault.SUPERVISION (contactor open at once, PWM off, the plug stays
locked while the contacts may be live) until the agent answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.cli import hw as hw_cli
from agent.control import channel
from agent.core import controller as ctl
from hal.interfaces import Board, ConnectorHardware, CpState, HardwareError, MeterError, PilotMode

log = logging.getLogger("evse.control_loop")

# poll period while no EV is plugged in and every contactor is open: nothing has a deadline then (a plug-in
# is seen within it; a back-end that reports changes wakes the loop at once anyway); it is the idle CPU
IDLE_CONTROL_PERIOD_S = 0.2
AGENT_DEADLINE_S = 2.0  # no message from the agent for this long: it is gone or stalled
METER_READ_TIMEOUT_S = 2.0
_HARDWARE_COMMANDS = (ctl.SetContactor, ctl.SetPilot, ctl.SetLock)
_TICK = ctl.Tick()  # one object for every step's Tick (frozen, carries nothing)


@dataclass
class _Connector:
    hw: ConnectorHardware
    controller: ctl.ConnectorController
    unreadable: set[str] = field(default_factory=set)
    hw_test: str | None = None  # a technician's test that switches devices itself
    pending_events: deque[ctl.Event] = field(default_factory=deque)
    dispatching: bool = False
    sent_state: dict[str, Any] | None = None

    @property
    def id(self) -> int:
        return self.hw.connector_id


def _grants_energy(command: ctl.Command) -> bool:
    return (isinstance(command, ctl.SetContactor) and command.closed) or (
        isinstance(command, ctl.SetPilot) and command.mode is PilotMode.PWM)


def _read(unreadable: dict[str, str], name: str, read: Callable[[], Any]) -> Any:
    """One device read; a HardwareError is noted in `unreadable` instead of escaping the control step."""
    try:
        return read()
    except HardwareError as exc:
        unreadable[name] = str(exc)
        return None


def _hw_test_refusal(conn: _Connector, name: str) -> str | None:
    """Why a technician's test that switches the contactor may not run now, decided on the controller's own
    state in the same step as the test starts."""
    c, where = conn.controller, f"connector {conn.id}: {name} refused"
    if conn.hw_test is not None:
        return f"{where}: a {conn.hw_test} is running"
    if c.transaction_active:
        return f"{where}: a transaction is running (stop it first: evse stop)"
    if c.cp_state is not CpState.A:
        return f"{where}: the control pilot reads state {c.cp_state.value}, not A: unplug the EV"
    if c.contactor_commanded:
        return f"{where}: the agent has the contactor closed"
    blocking = sorted({ctl.Fault.WELD, ctl.Fault.CONTACTOR, ctl.Fault.RCD} & c.faults)
    if blocking:
        return f"{where}: fault(s) {', '.join(blocking)} active: clear the cause and run evse fault reset"
    return None


def describe(board: Board, *, read_pilots: bool = True) -> channel.BoardInfo:
    """The hello: what the agent may know of the board (never the devices themselves), with each pilot's
    state read once (the agent resumes an interrupted session only with the EV still plugged in)."""
    pilots: dict[int, str] = {}
    for hw in board.connectors if read_pilots else ():
        try:
            pilots[hw.connector_id] = hw.pilot.read().state.value
        except HardwareError:
            pilots[hw.connector_id] = ""
    return channel.BoardInfo(
        name=board.name,
        connectors=tuple(channel.ConnectorInfo(
            connector_id=hw.connector_id, max_current_a=hw.max_current_a, phases=hw.phases,
            has_lock=hw.lock is not None,
            lock_timeout_s=(hw.lock.travel_timeout_s if hw.lock is not None
                            else ctl.SessionSettings.lock_timeout_s),
            has_mirror_contact=hw.contactor.has_mirror_contact, has_proximity=hw.proximity is not None,
            has_indicator=hw.indicator is not None, has_rcd=hw.rcd is not None,
        ) for hw in board.connectors),
        has_rfid=board.rfid is not None,
        simulated=board.simulator is not None,
        reboot_command=tuple(board.reboot_command) if board.reboot_command else None,
        firmware_install_command=tuple(board.firmware_install_command) if board.firmware_install_command else None,
        firmware_max_download_bytes=board.firmware_max_download_bytes,
        pilot_states=pilots,
    )


class ControlLoop:
    def __init__(self, board: Board, emit: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic):
        self.board = board
        self.emit = emit  # one up-message (channel.message(...)) to the agent
        self.clock = clock
        self.connectors: dict[int, _Connector] = {}
        self.control_period_s = 0.01
        self.agent_deadline_s = AGENT_DEADLINE_S
        self.supervise_agent = False  # the in-process link shares the agent's loop: nothing to supervise
        self.agent_seen_at = clock()
        self.agent_lost = False
        self.steps = 0
        self.after_step: Callable[[], None] | None = None  # the systemd watchdog ping (control process)

    # ---- setup ---------------------------------------------------------------------------------

    def setup(self, settings: dict[int, ctl.SessionSettings], period_s: float) -> None:
        """The controllers, with the settings the agent derived from its configuration."""
        self.control_period_s = period_s
        for hw in self.board.connectors:
            controller = ctl.ConnectorController(settings=settings[hw.connector_id], has_lock=hw.lock is not None)
            self.connectors[hw.connector_id] = _Connector(hw, controller)
            self._send_state(self.connectors[hw.connector_id], [])

    # ---- down-messages -------------------------------------------------------------------------

    def agent_alive(self) -> None:
        self.agent_seen_at = self.clock()
        if self.agent_lost:
            self.agent_lost = False
            log.warning("the agent process answers again")
            for conn in self.connectors.values():
                self._dispatch(conn, ctl.FaultChanged(ctl.Fault.SUPERVISION, False))

    def handle_event(self, connector_id: int, event: ctl.Event) -> None:
        conn = self.connectors.get(connector_id)
        if conn is None:
            log.warning("event %s for unknown connector %r ignored", event, connector_id)
            return
        self._dispatch(conn, event)

    def agent_gone(self, why: str) -> None:
        """The agent process died or stalls: every contactor opens now, PWM off, plug held while live."""
        if not self.agent_lost:
            self.agent_lost = True
            log.critical("%s: opening every contactor; no session may charge unrecorded", why)
        for conn in self.connectors.values():
            self._dispatch(conn, ctl.FaultChanged(ctl.Fault.SUPERVISION, True))

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        hardware_changed = asyncio.Event()

        def wake() -> None:  # called by back-ends that can tell a change, from any thread
            loop.call_soon_threadsafe(hardware_changed.set)

        for conn in self.connectors.values():
            conn.hw.pilot.on_change(wake)
        while True:
            hardware_changed.clear()  # before the step: a change during it makes the next wait return at once
            self.step()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period()):
                    await hardware_changed.wait()

    def period(self) -> float:
        """The configured period while an EV is plugged in or a contactor is (or reads) closed; a slower
        poll while every connector is empty and open, where nothing has a deadline (saves CPU on a Pi)."""
        idle = all(not c.controller.plugged and not c.controller.contactor_commanded
                   and not c.controller.feedback_closed for c in self.connectors.values())
        return max(self.control_period_s, IDLE_CONTROL_PERIOD_S) if idle else self.control_period_s

    def step(self) -> None:
        """Read every device once and feed the changes to the controllers."""
        now = self.clock()
        if self.supervise_agent and not self.agent_lost and now - self.agent_seen_at > self.agent_deadline_s:
            self.agent_gone(f"no message from the agent process for {now - self.agent_seen_at:.1f} s")
        for conn in self.connectors.values():
            if conn.hw_test is None:  # a test switches the contactor on purpose; supervision resumes after it
                self._step_connector(conn)
        self.steps += 1
        if self.after_step is not None:
            self.after_step()

    def _step_connector(self, conn: _Connector) -> None:
        hw, c = conn.hw, conn.controller
        unreadable: dict[str, str] = {}
        pwm_at_read = c.pwm_offered  # a sample taken under x1 says nothing of the diode (boards report it ok)
        reading = _read(unreadable, "control pilot", hw.pilot.read)
        tripped = _read(unreadable, "RCD", hw.rcd.tripped) if hw.rcd is not None else None
        feedback = _read(unreadable, "contactor mirror contact", hw.contactor.feedback_closed)
        locked = _read(unreadable, "connector lock", hw.lock.is_locked) if hw.lock is not None else None
        ampacity = None
        if hw.proximity is not None and c.plugged:
            ampacity = _read(unreadable, "proximity pilot", hw.proximity.read_ampacity)
        self._report_unreadable(conn, unreadable)

        if reading is not None:
            if reading.state != c.cp_state or not c.pilot_seen:  # the first reading always goes in
                self._dispatch(conn, ctl.PilotChanged(reading.state))
            # a sample taken while the PWM ran tells the diode, changed or not (no close before it); not one
            # taken before this step's PilotChanged started the PWM
            if pwm_at_read and (reading.diode_ok != c.diode_ok or c.awaiting_diode_check):
                self._dispatch(conn, ctl.DiodeChecked(reading.diode_ok))
        if tripped is not None and tripped != (ctl.Fault.RCD in c.faults):
            self._dispatch(conn, ctl.FaultChanged(ctl.Fault.RCD, tripped))
        if feedback is not None and feedback != c.feedback_closed:
            self._dispatch(conn, ctl.ContactorFeedback(feedback))
        if locked is not None and locked != c.lock_feedback:
            self._dispatch(conn, ctl.LockFeedback(locked))
        if "proximity pilot" not in unreadable and ampacity != c.cable_a:
            self._dispatch(conn, ctl.CableDetected(ampacity))
        self._dispatch(conn, _TICK)

    def _report_unreadable(self, conn: _Connector, unreadable: dict[str, str]) -> None:
        """A device that cannot be read is a fault until it answers again; logged on change only."""
        if set(unreadable) == conn.unreadable:
            return
        for name in set(unreadable) - conn.unreadable:
            log.error("connector %d: %s cannot be read: %s", conn.id, name, unreadable[name])
        for name in conn.unreadable - set(unreadable):
            log.info("connector %d: %s answers again", conn.id, name)
        conn.unreadable = set(unreadable)
        self._dispatch(conn, ctl.FaultChanged(ctl.Fault.DEVICE, bool(unreadable)))

    # ---- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, conn: _Connector, event: ctl.Event) -> None:
        """Hand an event to the connector's controller and carry out its commands. An event raised while
        commands are carried out is handled after the current list, never inside it; what is left of the
        list that would grant energy waits for the newer event's decision and runs only if the controller
        still wants it then."""
        conn.pending_events.append(event)
        if conn.dispatching:
            return
        conn.dispatching = True
        withheld: list[ctl.Command] = []
        upward: list[ctl.Command] = []
        quiet = True  # only Ticks that changed nothing: no state to send (no allocation 100 times a second)
        try:
            while conn.pending_events:
                event = conn.pending_events.popleft()
                commands = conn.controller.handle(event, self.clock())
                quiet = quiet and not commands and isinstance(event, ctl.Tick)
                for command in commands:
                    if not isinstance(command, _HARDWARE_COMMANDS):
                        upward.append(command)
                        if isinstance(command, ctl.StatusChanged):
                            self._indicate(conn, ctl.indicator_for(command.status))
                    elif conn.pending_events and _grants_energy(command):
                        withheld.append(command)
                    else:
                        self._execute(conn, command)
            view = conn.controller.view() if withheld else None
            for command in withheld:
                assert view is not None
                if isinstance(command, ctl.SetContactor) and view.contactor_closed:
                    self._execute(conn, command)
                elif isinstance(command, ctl.SetPilot) and view.pilot_mode is PilotMode.PWM:
                    self._execute(conn, ctl.SetPilot(PilotMode.PWM, view.duty_percent))
                else:
                    log.warning("connector %d: %s not carried out: a newer event changed the decision",
                                conn.id, command)
        finally:
            conn.dispatching = False
            conn.pending_events.clear()
        if not quiet:
            self._send_state(conn, upward)

    def _send_state(self, conn: _Connector, commands: list[ctl.Command]) -> None:
        state = channel.controller_state(conn.controller)
        now = state.pop("_now")
        if not commands and state == conn.sent_state:
            return
        conn.sent_state = state
        body = dict(state, _now=now)
        indicator = conn.hw.indicator.shown.value if conn.hw.indicator is not None else None
        if commands:
            self.emit(channel.message(channel.OUTPUT, connector=conn.id, state=body, indicator=indicator,
                                      commands=[channel.encode(c) for c in commands]))
        else:
            self.emit(channel.message(channel.STATE, connector=conn.id, state=body, indicator=indicator))

    def _execute(self, conn: _Connector, command: ctl.Command) -> None:
        hw = conn.hw
        match command:
            case ctl.SetContactor(closed):
                hw.contactor.set_closed(closed)
                log.info("connector %d: contactor %s", conn.id, "closed" if closed else "opened")
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

    def _indicate(self, conn: _Connector, state: Any) -> None:
        """Status LEDs follow the connector status; a LED that cannot be driven is logged, never a fault."""
        if conn.hw.indicator is None:
            return
        try:
            conn.hw.indicator.indicate(state)
        except Exception as exc:  # gpiozero raises its own errors: a LED must never stop a control step
            log.warning("connector %d: status indicator cannot show %s: %s", conn.id, state.value, exc)

    # ---- requests (answered over the channel) --------------------------------------------------

    async def request(self, op: str, args: dict[str, Any]) -> Any:
        """One device operation for the agent; raises channel.RequestFailed with the reason."""
        if op == "sync":
            return None  # answered after every earlier message was handled: the agent's barrier
        if op == "sim":
            return self._sim(args)
        conn = self.connectors.get(args.get("connector", 0))
        if conn is None:
            raise channel.RequestFailed(f"no connector {args.get('connector')!r}")
        match op:
            case "read_meter":
                try:
                    async with asyncio.timeout(METER_READ_TIMEOUT_S):
                        reading = await conn.hw.meter.read()
                except (MeterError, HardwareError, TimeoutError) as exc:
                    raise channel.RequestFailed(str(exc) or type(exc).__name__) from exc
                return channel.encode(reading)
            case "hw_meter":
                return await hw_cli.report(hw_cli.read_meter(conn.hw))
            case "hw_pilot":
                return await hw_cli.report(hw_cli.read_pilot(conn.hw))
            case "hw_contactor_test":
                return await self._hw_test(conn, "contactor test", hw_cli.contactor_test)
            case "hw_rcd_test":
                link = self.board.extras.get("coprocessor")
                return await self._hw_test(conn, "RCD self-test", lambda hw: hw_cli.rcd_test(hw, link))
            case "reset_faults":
                if conn.hw.rcd is not None and conn.hw.rcd.tripped():
                    conn.hw.rcd.reset()
                reset_hardware = getattr(conn.hw.contactor, "reset_fault", None)  # boards that latch faults
                if reset_hardware is not None:
                    reset_hardware()
                self._dispatch(conn, ctl.ResetLatchedFaults())
                return sorted(conn.controller.faults)
        raise channel.RequestFailed(f"unknown request {op!r}")

    async def _hw_test(self, conn: _Connector, name: str,
                       test: Callable[[ConnectorHardware], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        refusal = _hw_test_refusal(conn, name)
        if refusal is not None:
            return {"ok": False, "exit_code": hw_cli.EXIT_USAGE, "error": refusal}
        conn.hw_test = name
        log.warning("connector %d: %s requested by a technician", conn.id, name)
        try:
            result = await hw_cli.report(test(conn.hw))
        finally:
            conn.hw_test = None
        log.warning("connector %d: %s: %s", conn.id, name, "passed" if result["ok"] else result["error"])
        return result

    def _sim(self, args: dict[str, Any]) -> Any:
        simulator = self.board.simulator
        if simulator is None:
            raise channel.RequestFailed("this board is not simulated: sim commands only work with a sim board")
        method, params = args.get("method"), args.get("params", {})
        if method not in ("plug", "unplug", "set_ev_state", "swipe", "set_fault", "snapshot", "stall_pilot",
                          "schedule_ev_states", "timing_marks"):
            raise channel.RequestFailed(f"unknown simulator command {method!r}")
        try:
            return getattr(simulator, method)(**params)
        except (ValueError, TypeError, KeyError) as exc:
            raise channel.RequestFailed(str(exc)) from exc

    async def rfid_loop(self) -> None:
        """Cards at the station's reader go up to the agent (it decides which connector they are for)."""
        if self.board.rfid is None:
            return
        while True:
            try:
                tag = await self.board.rfid.next_tag()
            except HardwareError as exc:
                log.warning("RFID reader: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self.emit(channel.message(channel.TAG, id_token=tag))
