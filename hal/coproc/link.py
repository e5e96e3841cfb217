"""CoprocessorLink: the host end of the safety co-processor protocol.

It owns the transport, sends keep-alives, keeps the MCU's latest Status per connector, and hands out
per-connector HAL devices (hal.coproc.devices) whose reads are synchronous lookups of that Status.

Two rules keep the host and the MCU in agreement (docs/coprocessor-protocol.md, "Host behaviour"):
* Every command is sent at once, and re-sent while the MCU's Status echo still disagrees after
  RESEND_AFTER_S, so a frame lost to line noise heals itself.
* When the MCU withdraws power on its own (keep-alive lost, MCU restarted) while the agent allows it, the
  link re-sends nothing: the pilot reads raise HardwareError until the agent has opened the contactor, and
  only then are the MCU's latched HOST_TIMEOUT / MCU_RESTARTED flags reset and the agent's pilot and lock
  commands re-applied. Power never comes back without the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from hal.build import Lifecycle
from hal.coproc.devices import CoprocessorConnector
from hal.coproc.protocol import (
    MCU_WITHDREW_POWER,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    AllowPower,
    Capability,
    CpCode,
    ErrorFlag,
    Event,
    EventCode,
    Hello,
    HelloReason,
    KeepAlive,
    LinkStats,
    McuHello,
    McuKeepAlive,
    Message,
    OffReason,
    PilotCode,
    RcdTest,
    ResetFaults,
    SetLock,
    SetPilot,
    Status,
    duty_to_centi,
    encode_payload,
)
from hal.coproc.transport import Transport, TransportError
from hal.interfaces import HardwareError, PilotMode, PilotOutput

log = logging.getLogger(__name__)

RESEND_AFTER_S = 0.25  # a command the Status echo has not confirmed by then is sent again
REOPEN_INTERVAL_S = 2.0  # how often a failed port is reopened
START_TIMEOUT_S = 2.0  # start() waits this long at most for the MCU to apply the start-up commands
MAX_CONNECTORS = 15  # the CAN id mapping has room for 15
EVENT_HISTORY = 100

X1_OUTPUT = PilotOutput(PilotMode.X1, 100.0)
F_OUTPUT = PilotOutput(PilotMode.F, 0.0)
_PILOT_CODES = {PilotMode.X1: PilotCode.X1, PilotMode.PWM: PilotCode.PWM, PilotMode.F: PilotCode.F}


@dataclass
class Commanded:
    """What the agent last asked for; the agent's own controller starts from the same values."""

    pilot: PilotOutput = X1_OUTPUT
    allow_power: bool = False
    locked: bool = False

    def set_pilot_message(self, connector: int) -> SetPilot:
        return SetPilot(connector, _PILOT_CODES[self.pilot.mode], duty_to_centi(self.pilot.duty_percent))


@dataclass
class ConnectorLink:
    """The link's view of one connector."""

    connector_id: int
    commanded: Commanded = field(default_factory=Commanded)
    status: Status | None = None
    status_at: float = 0.0
    # Set while the MCU has withdrawn power the agent still allows: which flags say why.
    power_withdrawn: ErrorFlag = ErrorFlag(0)
    sent_at: dict[str, float] = field(default_factory=dict)  # command kind -> last send time


class CoprocessorLink(Lifecycle):
    def __init__(
        self,
        transport: Transport,
        *,
        keepalive_s: float = 1.0,
        status_timeout_s: float = 1.0,
        mcu_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 < keepalive_s * 2 <= mcu_timeout_s:
            raise ValueError(
                f"keepalive_s ({keepalive_s:g}) must be at most half of mcu_timeout_s ({mcu_timeout_s:g})"
            )
        self.transport = transport
        self.keepalive_s = keepalive_s
        self.status_timeout_s = status_timeout_s
        self.mcu_timeout_s = mcu_timeout_s
        self._clock = clock

        self.mcu: McuHello | None = None  # the MCU's last Hello: version, capabilities, timing
        self.round_trip_s: float | None = None  # from the last keep-alive echo
        self.events: deque[Event] = deque(maxlen=EVENT_HISTORY)
        self.send_failures = 0

        self._connectors: dict[int, ConnectorLink] = {}
        self._devices: dict[int, CoprocessorConnector] = {}
        self._seq = 0
        self._opened = False
        self._opened_at = clock()
        self._last_open_attempt = -float("inf")
        self._last_frame_at: float | None = None
        self._incompatible: str | None = None
        self._task: asyncio.Task | None = None
        self._send_failing = False

    @property
    def description(self) -> str:
        return f"coprocessor on {self.transport.description}"

    @property
    def stats(self) -> LinkStats:
        return self.transport.stats

    # --- devices --------------------------------------------------------------------------------------

    def connector(self, connector_id: int) -> CoprocessorConnector:
        """The HAL devices of one connector (created on first use; create them all before start())."""
        if (
            isinstance(connector_id, bool)
            or not isinstance(connector_id, int)
            or not 1 <= connector_id <= MAX_CONNECTORS
        ):
            raise ValueError(f"connector id must be 1..{MAX_CONNECTORS}, got {connector_id!r}")
        if connector_id not in self._devices:
            self._connectors[connector_id] = ConnectorLink(connector_id)
            self._devices[connector_id] = CoprocessorConnector(self, connector_id)
        return self._devices[connector_id]

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the port, greet the MCU, start keep-alives, and wait (up to START_TIMEOUT_S) until every
        connector's Status shows the agent's start-up commands applied, so the agent's first reads see
        X1 and not the MCU's boot-time F. A silent MCU is logged, not fatal: reads raise HardwareError
        until it answers."""
        if self._task is not None:
            return
        self._opened_at = self._clock()
        await self._try_open()
        self._task = asyncio.create_task(self._keepalive_loop(), name="coprocessor keep-alive")
        loop = asyncio.get_running_loop()  # real time here, even when the injected clock is a test's fake
        deadline = loop.time() + START_TIMEOUT_S
        while loop.time() < deadline and not all(map(_in_sync, self._connectors.values())):
            await asyncio.sleep(0.01)
        lagging = [c.connector_id for c in self._connectors.values() if not _in_sync(c)]
        if lagging:
            log.error(
                "%s: connector(s) %s not in sync with the MCU after %g s (no or unexpected Status)",
                self.description,
                lagging,
                START_TIMEOUT_S,
            )

    async def close(self) -> None:
        """Leave every connector without power and the pilot at F (EVSE not available), then release."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._opened:
            for state in self._connectors.values():
                state.commanded.allow_power = False
                self._send(AllowPower(state.connector_id, False))
                self._send(SetPilot(state.connector_id, PilotCode.F, 0))
        self._opened = False
        await self.transport.close()

    # --- used by the device objects -----------------------------------------------------------------------

    def fresh_status(self, connector_id: int) -> Status:
        """The connector's latest Status, or HardwareError saying why there is no trustworthy one."""
        state = self._connectors[connector_id]
        now = self._clock()
        if self._incompatible is not None:
            raise HardwareError(f"{self.description}: {self._incompatible}")
        if self.mcu is not None and connector_id > self.mcu.connector_count:
            raise HardwareError(
                f"{self.description}: the MCU has {self.mcu.connector_count} connector(s), no connector {connector_id}"
            )
        if state.status is None:
            raise HardwareError(
                f"{self.description}: no status from the MCU for connector {connector_id} yet "
                f"({now - self._opened_at:.1f} s since start{self._port_note()})"
            )
        age = now - state.status_at
        if age > self.status_timeout_s:
            frame_age = now - self._last_frame_at if self._last_frame_at is not None else age
            raise HardwareError(
                f"{self.description}: no status for connector {connector_id} for {age:.1f} s "
                f"(limit {self.status_timeout_s:g} s); last frame from the MCU {frame_age:.1f} s ago"
                f"{self._port_note()}"
            )
        if state.power_withdrawn:
            raise HardwareError(
                f"{self.description}: connector {connector_id}: the MCU withdrew power on its own "
                f"({_flag_names(state.power_withdrawn)}); open the contactor to acknowledge"
            )
        return state.status

    def last_status(self, connector_id: int) -> Status | None:
        """The latest Status however old, for diagnostics; reads go through fresh_status()."""
        return self._connectors[connector_id].status

    def commanded(self, connector_id: int) -> Commanded:
        return self._connectors[connector_id].commanded

    def command_pilot(self, connector_id: int, output: PilotOutput) -> None:
        state = self._connectors[connector_id]
        state.commanded.pilot = output
        self._send_command(state, "pilot", state.commanded.set_pilot_message(connector_id))

    def command_allow_power(self, connector_id: int, allow: bool) -> None:
        """Sent at once; AllowPower(false) also acknowledges a power withdrawal by the MCU."""
        state = self._connectors[connector_id]
        state.commanded.allow_power = allow
        if not allow:
            state.power_withdrawn = ErrorFlag(0)
        self._send_command(state, "allow", AllowPower(connector_id, allow))

    def command_lock(self, connector_id: int, locked: bool) -> None:
        state = self._connectors[connector_id]
        state.commanded.locked = locked
        self._send_command(state, "lock", SetLock(connector_id, locked))

    def reset_faults(self, connector_id: int, flags: ErrorFlag) -> None:
        self._send(ResetFaults(connector_id, flags))

    def request_rcd_self_test(self, connector_id: int) -> None:
        """The result arrives as an RCD_SELFTEST_PASSED/FAILED event (and the RCD_SELFTEST_FAILED flag)."""
        self._send(RcdTest(connector_id))

    def diagnostics(self) -> dict:
        """Link health for logs and the CLI."""
        now = self._clock()
        return {
            "transport": self.transport.description,
            "failure": self.transport.failure,
            "mcu_firmware": self.mcu.firmware if self.mcu else None,
            "mcu_protocol": f"{self.mcu.protocol_major}.{self.mcu.protocol_minor}" if self.mcu else None,
            "last_frame_age_s": now - self._last_frame_at if self._last_frame_at is not None else None,
            "round_trip_s": self.round_trip_s,
            "send_failures": self.send_failures,
            "received": vars(self.stats).copy(),
        }

    # --- sending ------------------------------------------------------------------------------------------

    def _send_command(self, state: ConnectorLink, kind: str, message: Message) -> None:
        state.sent_at[kind] = self._clock()
        self._send(message)

    def _send(self, message: Message) -> None:
        """Best effort: a command that cannot be written is not an error for the caller, because the MCU
        falls back to its safe state on its own when the host goes quiet; the failure is counted and logged."""
        payload = encode_payload(message, self._seq)
        self._seq = (self._seq + 1) & 0xFF
        try:
            self.transport.send(payload)
        except TransportError as exc:
            self.send_failures += 1
            if not self._send_failing:
                log.error("%s: cannot send %s: %s", self.description, type(message).__name__, exc)
            self._send_failing = True
            return
        if self._send_failing:
            log.info("%s: sending works again", self.description)
        self._send_failing = False

    def _greet(self) -> None:
        """Hello, and AllowPower(false) wherever the agent does not allow power (a previous host may have).

        Everything else is brought in line by _reconcile() once the MCU's first Status shows what it holds,
        so a reconnect after an outage follows the same withdrawn-power rule as a running link.
        """
        self._send(Hello(0, PROTOCOL_MAJOR, PROTOCOL_MINOR, round(self.mcu_timeout_s * 1000)))
        for state in self._connectors.values():
            if not state.commanded.allow_power:
                self._send_command(state, "allow", AllowPower(state.connector_id, False))

    async def _try_open(self) -> None:
        self._last_open_attempt = self._clock()
        try:
            await self.transport.open(self._on_message)
        except TransportError as exc:
            log.error("%s: %s", self.description, exc)
            self._opened = False
            return
        if not self._opened:
            log.info("%s: port open", self.description)
        self._opened = True
        self.mcu = None  # ask again: it may be another MCU, or a restarted one
        self._greet()

    async def _keepalive_loop(self) -> None:
        while True:
            if not self._opened or self.transport.failure is not None:
                self._opened = False
                if self._clock() - self._last_open_attempt >= REOPEN_INTERVAL_S:
                    await self._try_open()
            else:
                if self.mcu is None:
                    self._send(Hello(0, PROTOCOL_MAJOR, PROTOCOL_MINOR, round(self.mcu_timeout_s * 1000)))
                self._send(KeepAlive(0, round(self._clock() * 1000) & 0xFFFFFFFF))
            await asyncio.sleep(self.keepalive_s)

    # --- receiving ----------------------------------------------------------------------------------------

    def _on_message(self, seq: int, message: Message) -> None:
        self._last_frame_at = self._clock()
        match message:
            case Status():
                self._on_status(message)
            case McuKeepAlive(host_time_ms=sent_ms):
                now_ms = round(self._clock() * 1000) & 0xFFFFFFFF
                self.round_trip_s = ((now_ms - sent_ms) & 0xFFFFFFFF) / 1000.0
            case Event():
                self._on_event(message)
            case McuHello():
                self._on_hello(message)

    def _on_hello(self, hello: McuHello) -> None:
        first = self.mcu is None
        self.mcu = hello
        if hello.protocol_major != PROTOCOL_MAJOR:
            self._incompatible = (
                f"the MCU speaks protocol {hello.protocol_major}.{hello.protocol_minor}, "
                f"this host {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
            )
            log.error("%s: %s", self.description, self._incompatible)
            return
        self._incompatible = None
        if hello.reason is HelloReason.BOOT:
            log.warning("%s: the MCU (re)started", self.description)
            self._send(Hello(0, PROTOCOL_MAJOR, PROTOCOL_MINOR, round(self.mcu_timeout_s * 1000)))
        elif first:
            log.info(
                "%s: MCU %r, protocol %d.%d, %d connector(s), capabilities %s, keep-alive timeout %d ms",
                self.description,
                hello.firmware,
                hello.protocol_major,
                hello.protocol_minor,
                hello.connector_count,
                "|".join(str(c.name) for c in Capability if c & hello.capabilities) or "none",
                hello.keepalive_timeout_ms,
            )

    def _on_status(self, status: Status) -> None:
        state = self._connectors.get(status.connector)
        if state is None:
            return  # a connector this board does not use
        state.status = status
        state.status_at = self._clock()
        self._reconcile(state)

    def _reconcile(self, state: ConnectorLink) -> None:
        """Compare the MCU's echo with what the agent commanded; re-send or acknowledge as needed."""
        status, cmd, cid = state.status, state.commanded, state.connector_id
        assert status is not None
        withdrawn = status.error_flags & MCU_WITHDREW_POWER
        if withdrawn and cmd.allow_power and not status.allow_power and not state.power_withdrawn:
            state.power_withdrawn = withdrawn
            log.warning(
                "%s: connector %d: the MCU withdrew power on its own (%s)",
                self.description,
                cid,
                _flag_names(withdrawn),
            )
        if state.power_withdrawn:
            return  # the MCU keeps its safe state (F, unlocked) until the agent has reacted
        expected = cmd.set_pilot_message(cid)
        if (status.pilot_mode, status.duty_centi_percent) != (expected.mode, expected.duty_centi_percent):
            self._resend(state, "pilot", expected)
        if status.allow_power != cmd.allow_power:
            self._resend(state, "allow", AllowPower(cid, cmd.allow_power))
        if status.lock_commanded != cmd.locked:
            self._resend(state, "lock", SetLock(cid, cmd.locked))
        if withdrawn:
            self._resend(state, "reset", ResetFaults(cid, withdrawn))  # acknowledged: let the MCU go on

    def _resend(self, state: ConnectorLink, kind: str, message: Message) -> None:
        if self._clock() - state.sent_at.get(kind, -float("inf")) >= RESEND_AFTER_S:
            self._send_command(state, kind, message)

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        code = event.code
        if code in (EventCode.FAULT_RAISED, EventCode.FAULT_CLEARED):
            detail = _flag_names(ErrorFlag(event.detail))
        elif code is EventCode.POWER_OFF:
            detail = _off_reason_name(event.detail)
        elif code is EventCode.COMMAND_REJECTED:
            detail = f"message type {event.detail:#04x}"
        else:
            detail = ""
        quiet = code in (
            EventCode.EV_PLUGGED,
            EventCode.EV_UNPLUGGED,
            EventCode.EV_REQUESTS_POWER,
            EventCode.EV_STOPS_POWER,
            EventCode.POWER_ON,
            EventCode.FAULT_CLEARED,
            EventCode.RCD_SELFTEST_PASSED,
        ) or (code is EventCode.POWER_OFF and event.detail == OffReason.HOST_WITHDREW)
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "%s: connector %d: %s %s",
            self.description,
            event.connector,
            code.name,
            detail,
        )

    def _port_note(self) -> str:
        failure = self.transport.failure
        return f"; port problem: {failure}" if failure else ""


def _in_sync(state: ConnectorLink) -> bool:
    """The MCU applied what the agent commanded and shows the pilot it drives (not its boot-time F)."""
    status, cmd = state.status, state.commanded
    if status is None or status.error_flags & MCU_WITHDREW_POWER:
        return False
    expected = cmd.set_pilot_message(state.connector_id)
    return (
        (status.pilot_mode, status.duty_centi_percent) == (expected.mode, expected.duty_centi_percent)
        and status.allow_power == cmd.allow_power
        and status.lock_commanded == cmd.locked
        and (status.cp_state is not CpCode.F or cmd.pilot.mode is PilotMode.F)
    )


def _flag_names(flags: ErrorFlag) -> str:
    return "|".join(str(flag.name) for flag in ErrorFlag if flag & flags) or "none"


def _off_reason_name(detail: int) -> str:
    try:
        return OffReason(detail).name
    except ValueError:
        return f"reason {detail}"  # a newer MCU's reason code
