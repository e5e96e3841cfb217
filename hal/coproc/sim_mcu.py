"""Simulated safety MCU: the co-processor firmware of docs/coprocessor-protocol.md, in Python.

It runs in its own thread (an MCU does not stop when the host's event loop stalls), speaks the protocol
over the far end of a pty pair or a python-can bus, and drives hal.sim's physical model of the outlet
(EV with the IEC 61851 resistor model, cable PP coding, contactor with mirror contact, lock, RCD sensor).
Its safety logic is the one a board maker implements in C: sample CP, debounce, diode check, latch faults,
and drive the coil only while the host allows AND the EV asks (C/D) AND no error flag is set.

Manual HIL use:  python -m hal.coproc.sim_mcu --pty      (prints the pty to put in [coprocessor] port)
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hal.coproc.mcu_ports import CanPort, McuPort, PtyPort
from hal.coproc.protocol import (
    HOST_RESETTABLE,
    PP_FAULT_CODE,
    PP_NO_CABLE,
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
    LockState,
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
    centi_to_duty,
    encode_payload,
)
from hal.interfaces import CpState, PilotMode, PilotOutput
from hal.pilot_math import classify_cp_voltage
from hal.sim.connector import F_OUTPUT, SimConnector, SimConnectorSpec, SimEvSpec

# Firmware timing (documented in docs/coprocessor-protocol.md, "MCU behaviour").
TICK_S = 0.01  # CP sampling and safety evaluation period
STATUS_PERIOD_S = 0.1
DEBOUNCE_SAMPLES = 2  # equal consecutive CP classifications before a state is accepted
DIODE_FAULT_MV = 1200  # |V+ + V-| at or below this while PWM runs in B/C/D = diode missing or shorted
RELAY_FEEDBACK_TIMEOUT_S = 0.25  # mirror contact must follow the coil within this
LOCK_TIMEOUT_S = 0.5
PWM_STOPPED_OPEN_S = 6.0  # IEC 61851-1 Table A.6 seq. 10.2: EV keeps drawing after the PWM stopped
KEEPALIVE_TIMEOUT_DEFAULT_MS = 3000
KEEPALIVE_TIMEOUT_RANGE_MS = (1000, 10000)

FAULT_KINDS = ("diode", "rcd", "weld", "pp", "lock", "rcd_selftest")
_CP_CODES = {state: CpCode[state.value] for state in CpState}
_PILOT_MODES = {PilotCode.X1: PilotMode.X1, PilotCode.PWM: PilotMode.PWM, PilotCode.F: PilotMode.F}
_PILOT_CODES = {mode: code for code, mode in _PILOT_MODES.items()}


# --- firmware state ------------------------------------------------------------------------------------------


@dataclass
class McuConnector:
    """What the MCU firmware keeps per connector; `world` is the hardware around it (hal.sim model)."""

    world: SimConnector
    host_allow: bool = False
    pilot: PilotOutput = F_OUTPUT  # until the host says otherwise: EVSE not available
    lock_commanded: bool = False
    flags: ErrorFlag = ErrorFlag.MCU_RESTARTED
    cp_state: CpCode = CpCode.A
    cp_candidate: CpCode = CpCode.A
    cp_candidate_samples: int = 0
    diode_samples: int = 0
    high_mv: int = 12000
    low_mv: int = 12000
    pp_code: int = PP_NO_CABLE
    coil: bool = False
    power_on_reported: bool = False
    pwm_left_at: float | None = None
    mirror_mismatch_since: float | None = None
    lock_mismatch_since: float | None = None
    last_status: Status | None = None
    last_status_at: float = -float("inf")

    @property
    def id(self) -> int:
        return self.world.spec.id


class SimMcu:
    """The MCU twin. Control surface (thread-safe): plug, unplug, set_ev_state, set_fault, freeze, resume,
    reboot, send_raw, snapshot."""

    def __init__(
        self,
        port: McuPort,
        connectors: list[SimConnectorSpec] | None = None,
        *,
        ev: SimEvSpec = SimEvSpec(),  # noqa: B008 - frozen dataclass, safe as a default
        status_period_s: float = STATUS_PERIOD_S,
        firmware: str = "sim-mcu 1.0",
        clock: Callable[[], float] = time.monotonic,
    ):
        specs = connectors or [SimConnectorSpec(1)]
        if [spec.id for spec in specs] != list(range(1, len(specs) + 1)):
            raise ValueError("simulated MCU connectors must be numbered 1..n in order")
        for spec in specs:
            spec.validate()
        ev.validate()
        self.port = port
        self.firmware = firmware
        self.status_period_s = status_period_s
        self._clock = clock
        now = clock()
        self._worlds = {spec.id: SimConnector(spec, ev, 230.0, now) for spec in specs}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frozen = False
        self._seq = 0
        self._connectors: dict[int, McuConnector] = {}
        self._boot(now)

    @property
    def stats(self) -> LinkStats:
        return self.port.stats

    # --- thread ------------------------------------------------------------------------------------------

    def start(self) -> SimMcu:
        self._thread = threading.Thread(target=self._run, name="sim-mcu", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.port.close()

    def _run(self) -> None:
        next_tick = self._clock()
        while not self._stop.is_set():
            messages = self.port.receive(max(0.0, next_tick - self._clock()))
            with self._lock:
                if self._frozen:
                    continue  # a hung MCU: frames are lost, nothing is sent
                now = self._clock()
                for _seq, message in messages:
                    self._handle(message, now)
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + TICK_S

    # --- control surface ----------------------------------------------------------------------------------

    def plug(self, connector: int = 1) -> None:
        """Cable in and a fresh EV in state B that follows the pilot."""
        with self._lock:
            world = self._world(connector)
            world.plug()

    def unplug(self, connector: int = 1) -> None:
        with self._lock:
            self._world(connector).unplug()

    def set_ev_state(self, state: str | None, connector: int = 1) -> None:
        """Pin what the EV presents (B..F; A unplugs), or None to let it follow the pilot again."""
        with self._lock:
            world = self._world(connector)
            if state is None:
                world.pinned = None
            elif CpState(state) is CpState.A:
                world.unplug()
            else:
                if not world.plugged:
                    world.plug()
                world.pinned = CpState(state)

    def set_fault(self, kind: str, on: bool, connector: int = 1) -> None:
        """Physical faults: diode (EV diode shorted), rcd (residual current), weld (contacts fused),
        pp (PP shorted), lock (actuator jammed), rcd_selftest (the next RCD self-test fails)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        with self._lock:
            world = self._world(connector)
            if on:
                world.faults.add(kind)
            else:
                world.faults.discard(kind)

    def freeze(self) -> None:
        """Stop answering and acting, like a hung MCU (frames sent to it are lost)."""
        with self._lock:
            self._frozen = True

    def resume(self) -> None:
        with self._lock:
            self._frozen = False

    def reboot(self) -> None:
        """Watchdog reset: firmware state back to boot values, contactor open, Hello(BOOT) sent."""
        with self._lock:
            self._frozen = False
            self._boot(self._clock())

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            self.port.send_raw(data)

    def snapshot(self, connector: int = 1) -> dict:
        with self._lock:
            conn = self._connectors[connector]
            return {
                "cp_state": conn.cp_state.name,
                "pilot_mode": conn.pilot.mode.value,
                "duty": conn.pilot.duty_percent,
                "host_allow": conn.host_allow,
                "coil": conn.coil,
                "contacts_closed": conn.world.contacts_closed(),
                "locked": conn.world.locked,
                "flags": conn.flags,
                "keepalive_timeout_s": self._keepalive_timeout_s,
                "host_present": self._host_present,
            }

    def _world(self, connector: int) -> SimConnector:
        world = self._worlds.get(connector)
        if world is None:
            raise ValueError(f"no connector {connector!r} on the simulated MCU (1..{len(self._worlds)})")
        world.advance(self._clock())
        return world

    # --- firmware: boot and host messages -------------------------------------------------------------------

    def _boot(self, now: float) -> None:
        self._connectors = {}
        for cid, world in self._worlds.items():
            world.advance(now)
            world.contactor_commanded = False
            world.drive(F_OUTPUT)
            self._connectors[cid] = McuConnector(world)
        self._keepalive_timeout_s = KEEPALIVE_TIMEOUT_DEFAULT_MS / 1000
        self._host_present = False  # no keep-alive since boot: nothing to time out yet
        self._last_keepalive_at = now
        self._boot_at = now
        self._seq = 0
        self.port.send_raw(b"\x00")  # end any frame the reset cut in half
        self._send(self._hello(HelloReason.BOOT))

    def _hello(self, reason: HelloReason) -> McuHello:
        capabilities = Capability.RCD | Capability.RCD_SELFTEST | Capability.RELAY_MIRROR
        if any(w.spec.cable_ampacity_a is not None for w in self._worlds.values()):
            capabilities |= Capability.PROXIMITY
        if any(w.spec.has_lock for w in self._worlds.values()):
            capabilities |= Capability.LOCK
        return McuHello(
            0,
            PROTOCOL_MAJOR,
            PROTOCOL_MINOR,
            reason,
            len(self._worlds),
            capabilities,
            round(self._keepalive_timeout_s * 1000),
            round(self.status_period_s * 1000),
            self.firmware,
        )

    def _handle(self, message: Message, now: float) -> None:
        if isinstance(message, Hello | KeepAlive):
            self._host_present = True
            self._last_keepalive_at = now
            if isinstance(message, Hello):
                low, high = KEEPALIVE_TIMEOUT_RANGE_MS
                self._keepalive_timeout_s = min(max(message.keepalive_timeout_ms, low), high) / 1000
                self._send(self._hello(HelloReason.REPLY))
            else:
                uptime_ms = round((now - self._boot_at) * 1000) & 0xFFFFFFFF
                self._send(McuKeepAlive(0, message.host_time_ms, uptime_ms))
            return
        conn = self._connectors.get(message.connector)
        if conn is None:
            self._reject(message)
            return
        match message:
            case SetPilot(mode=mode, duty_centi_percent=centi):
                if mode is PilotCode.PWM and centi > 10000:
                    self._reject(message)
                    return
                conn.pilot = _pilot_output(mode, centi)
                conn.world.advance(now)
                conn.world.drive(conn.pilot)
            case AllowPower(allow=allow):
                conn.host_allow = allow
            case SetLock(locked=locked):
                conn.lock_commanded = locked
            case RcdTest():
                self._rcd_self_test(conn, message)
            case ResetFaults(flags=flags):
                self._reset_faults(conn, flags)

    def _reject(self, message: Message) -> None:
        self._event(message.connector, EventCode.COMMAND_REJECTED, message.TYPE)

    def _rcd_self_test(self, conn: McuConnector, message: Message) -> None:
        if conn.coil:
            self._reject(message)  # the test current must not be mistaken for a fault under load
        elif "rcd_selftest" in conn.world.faults:
            self._raise(conn, ErrorFlag.RCD_SELFTEST_FAILED)
            self._event(conn.id, EventCode.RCD_SELFTEST_FAILED)
        else:
            self._event(conn.id, EventCode.RCD_SELFTEST_PASSED)

    def _reset_faults(self, conn: McuConnector, requested: ErrorFlag) -> None:
        clearable = requested & HOST_RESETTABLE
        if conn.flags & ErrorFlag.RCD_INPUT_ACTIVE:
            clearable &= ~ErrorFlag.RCD_TRIPPED  # the residual current is still there
        if conn.world.contacts_closed() != conn.coil:
            clearable &= ~ErrorFlag.RELAY_FAULT  # the mirror contact still disagrees
        self._clear(conn, clearable)

    # --- firmware: the 10 ms safety tick ---------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        if self._host_present and now - self._last_keepalive_at > self._keepalive_timeout_s:
            self._host_present = False
            for conn in self._connectors.values():
                self._host_lost(conn, now)
        for conn in self._connectors.values():
            self._update(conn, now)

    def _host_lost(self, conn: McuConnector, now: float) -> None:
        """No keep-alive: withdraw the host's permission, show F, release the lock once the relay is open."""
        self._raise(conn, ErrorFlag.HOST_TIMEOUT)
        conn.host_allow = False
        conn.lock_commanded = False
        conn.pilot = F_OUTPUT
        conn.world.advance(now)
        conn.world.drive(F_OUTPUT)

    def _update(self, conn: McuConnector, now: float) -> None:
        world = conn.world
        world.advance(now)
        reading = world.pilot_reading()  # the analog front end: plateau voltages only
        conn.high_mv, conn.low_mv = round(reading.high_v * 1000), round(reading.low_v * 1000)
        self._sample_cp(conn)
        self._check_diode(conn)
        self._set_live(conn, ErrorFlag.RCD_INPUT_ACTIVE, "rcd" in world.faults)
        if "rcd" in world.faults:
            self._raise(conn, ErrorFlag.RCD_TRIPPED)
        self._read_pp(conn)
        self._drive_lock(conn, now)
        self._drive_relay(conn, now)
        self._check_mirror(conn, now)
        self._maybe_send_status(conn, now)

    def _sample_cp(self, conn: McuConnector) -> None:
        state = classify_cp_voltage(conn.high_mv / 1000)
        raw = _CP_CODES[state] if state is not None else CpCode.INVALID
        if raw == conn.cp_candidate:
            conn.cp_candidate_samples += 1
        else:
            conn.cp_candidate, conn.cp_candidate_samples = raw, 1
        if conn.cp_candidate_samples >= DEBOUNCE_SAMPLES and raw != conn.cp_state:
            previous, conn.cp_state = conn.cp_state, raw
            self._cp_changed(conn, previous, raw)
        self._set_live(conn, ErrorFlag.CP_INVALID, conn.cp_state is CpCode.INVALID)

    def _cp_changed(self, conn: McuConnector, previous: CpCode, state: CpCode) -> None:
        requesting = (CpCode.C, CpCode.D)
        if state is CpCode.A:
            self._event(conn.id, EventCode.EV_UNPLUGGED)
            self._clear(conn, ErrorFlag.DIODE_FAULT)  # the next EV gets a fresh diode check
        elif previous is CpCode.A:
            self._event(conn.id, EventCode.EV_PLUGGED)
        if state in requesting and previous not in requesting:
            self._event(conn.id, EventCode.EV_REQUESTS_POWER)
        elif state is CpCode.B and previous in requesting:
            self._event(conn.id, EventCode.EV_STOPS_POWER)

    def _check_diode(self, conn: McuConnector) -> None:
        checkable = conn.pilot.mode is PilotMode.PWM and conn.cp_state in (CpCode.B, CpCode.C, CpCode.D)
        if checkable and abs(conn.high_mv + conn.low_mv) <= DIODE_FAULT_MV:
            conn.diode_samples += 1
            if conn.diode_samples >= DEBOUNCE_SAMPLES:
                self._raise(conn, ErrorFlag.DIODE_FAULT)
        else:
            conn.diode_samples = 0

    def _read_pp(self, conn: McuConnector) -> None:
        world = conn.world
        has_pp = world.spec.cable_ampacity_a is not None
        faulted = has_pp and world.plugged and "pp" in world.faults
        self._set_live(conn, ErrorFlag.PP_FAULT, faulted)
        if faulted:
            conn.pp_code = PP_FAULT_CODE
        else:
            ampacity = world.pp_ampacity()
            conn.pp_code = round(ampacity) if ampacity is not None else PP_NO_CABLE

    def _drive_lock(self, conn: McuConnector, now: float) -> None:
        world = conn.world
        if not world.spec.has_lock:
            return
        target = conn.lock_commanded
        if world.locked != target and (target or not world.contacts_closed()) and "lock" not in world.faults:
            world.locked = target  # the simulated actuator moves within one tick; never unlock under load
        if world.locked == target:
            conn.lock_mismatch_since = None
        elif conn.lock_mismatch_since is None:
            conn.lock_mismatch_since = now
        late = conn.lock_mismatch_since is not None and now - conn.lock_mismatch_since > LOCK_TIMEOUT_S
        self._set_live(conn, ErrorFlag.LOCK_FAULT, late)

    def _drive_relay(self, conn: McuConnector, now: float) -> None:
        if conn.pilot.mode is PilotMode.PWM:
            conn.pwm_left_at = None
        elif conn.pwm_left_at is None:
            conn.pwm_left_at = now
        pwm_ok = conn.pwm_left_at is None or (conn.coil and now - conn.pwm_left_at < PWM_STOPPED_OPEN_S)
        lock_ok = not conn.lock_commanded or conn.world.locked or not conn.world.spec.has_lock
        coil = (
            conn.host_allow
            and conn.cp_state in (CpCode.C, CpCode.D)
            and not conn.flags
            and pwm_ok
            and lock_ok
        )
        if coil != conn.coil:
            conn.coil = coil
            conn.world.contactor_commanded = coil
            conn.power_on_reported = False
            if not coil:
                self._event(conn.id, EventCode.POWER_OFF, self._off_reason(conn, pwm_ok))
        if coil and not conn.power_on_reported and conn.world.contacts_closed():
            conn.power_on_reported = True
            self._event(conn.id, EventCode.POWER_ON)

    @staticmethod
    def _off_reason(conn: McuConnector, pwm_ok: bool) -> OffReason:
        if not conn.host_allow:
            return OffReason.HOST_TIMEOUT if conn.flags & ErrorFlag.HOST_TIMEOUT else OffReason.HOST_WITHDREW
        if conn.flags:
            return OffReason.FAULT
        if conn.cp_state is CpCode.A:
            return OffReason.EV_UNPLUGGED
        if conn.cp_state is CpCode.B:
            return OffReason.EV_STOPPED
        if conn.cp_state in (CpCode.E, CpCode.F):
            return OffReason.PILOT_E_OR_F
        return OffReason.PWM_STOPPED if not pwm_ok else OffReason.FAULT

    def _check_mirror(self, conn: McuConnector, now: float) -> None:
        if conn.world.contacts_closed() == conn.coil:
            conn.mirror_mismatch_since = None
            return
        if conn.mirror_mismatch_since is None:
            conn.mirror_mismatch_since = now
        elif now - conn.mirror_mismatch_since > RELAY_FEEDBACK_TIMEOUT_S:
            self._raise(conn, ErrorFlag.RELAY_FAULT)

    # --- firmware: flags, events, status ----------------------------------------------------------------------

    def _raise(self, conn: McuConnector, flags: ErrorFlag) -> None:
        new = flags & ~conn.flags
        if new:
            conn.flags |= new
            self._event(conn.id, EventCode.FAULT_RAISED, int(new))

    def _clear(self, conn: McuConnector, flags: ErrorFlag) -> None:
        gone = conn.flags & flags
        if gone:
            conn.flags &= ~gone
            self._event(conn.id, EventCode.FAULT_CLEARED, int(gone))

    def _set_live(self, conn: McuConnector, flag: ErrorFlag, active: bool) -> None:
        if active:
            self._raise(conn, flag)
        else:
            self._clear(conn, flag)

    def _status(self, conn: McuConnector) -> Status:
        world = conn.world
        if not world.spec.has_lock:
            lock_state = LockState.NOT_FITTED
        else:
            lock_state = LockState.LOCKED if world.locked else LockState.UNLOCKED
        return Status(
            conn.id,
            conn.cp_state,
            conn.high_mv,
            conn.low_mv,
            not conn.flags & ErrorFlag.DIODE_FAULT,
            conn.pp_code,
            _PILOT_CODES[conn.pilot.mode],
            round(conn.pilot.duty_percent * 100),
            conn.host_allow,
            conn.coil,
            world.contacts_closed(),
            conn.lock_commanded,
            lock_state,
            conn.flags,
        )

    def _maybe_send_status(self, conn: McuConnector, now: float) -> None:
        status = self._status(conn)
        if status != conn.last_status or now - conn.last_status_at >= self.status_period_s:
            conn.last_status, conn.last_status_at = status, now
            self._send(status)

    def _event(self, connector: int, code: EventCode, detail: int = 0) -> None:
        self._send(Event(connector, code, detail))

    def _send(self, message: Message) -> None:
        payload = encode_payload(message, self._seq)
        self._seq = (self._seq + 1) & 0xFF
        self.port.send(payload)


def _pilot_output(mode: PilotCode, duty_centi_percent: int) -> PilotOutput:
    if mode is PilotCode.PWM:
        return PilotOutput(PilotMode.PWM, centi_to_duty(duty_centi_percent))
    return PilotOutput(_PILOT_MODES[mode], 100.0 if mode is PilotCode.X1 else 0.0)


# --- command line ---------------------------------------------------------------------------------------------

_HELP = (
    "commands: plug [n] | unplug [n] | ev A..F|auto [n] | fault KIND on|off [n] | show [n]\n"
    "          reboot | freeze | resume | quit\n"
    f"          fault kinds: {', '.join(FAULT_KINDS)}"
)


def _command(mcu: SimMcu, line: str) -> str | None:
    words = line.split()
    if not words:
        return None
    verb, args = words[0].lower(), words[1:]

    def connector(index: int) -> int:
        return int(args[index]) if len(args) > index else 1

    if verb == "plug":
        mcu.plug(connector(0))
    elif verb == "unplug":
        mcu.unplug(connector(0))
    elif verb == "ev" and args:
        mcu.set_ev_state(None if args[0].lower() == "auto" else args[0].upper(), connector(1))
    elif verb == "fault" and len(args) >= 2 and args[1] in ("on", "off"):
        mcu.set_fault(args[0], args[1] == "on", connector(2))
    elif verb in ("reboot", "freeze", "resume"):
        getattr(mcu, verb)()
    elif verb == "show":
        return str(mcu.snapshot(connector(0)))
    else:
        return _HELP
    return "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hal.coproc.sim_mcu", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pty pair and print its path")
    where.add_argument("--can-channel", help="serve on this python-can channel")
    parser.add_argument(
        "--can-interface", default="socketcan", help="python-can interface (default socketcan)"
    )
    parser.add_argument(
        "--can-base-id", type=lambda s: int(s, 0), default=None, help="base CAN id (default 0x100)"
    )
    parser.add_argument("--connectors", type=int, default=1, help="number of connectors (default 1)")
    parser.add_argument("--fixed-cable", action="store_true", help="tethered cable: no PP, no lock")
    parser.add_argument("--ev-response-s", type=float, default=SimEvSpec().response_s)
    args = parser.parse_args(argv)

    port: McuPort = (
        PtyPort() if args.pty else CanPort(args.can_interface, args.can_channel, base_id=args.can_base_id)
    )
    specs = [
        SimConnectorSpec(
            n, cable_ampacity_a=None if args.fixed_cable else 32.0, has_lock=not args.fixed_cable
        )
        for n in range(1, args.connectors + 1)
    ]
    mcu = SimMcu(port, specs, ev=SimEvSpec(response_s=args.ev_response_s)).start()
    print(f"sim MCU on {port.description}, {args.connectors} connector(s)", flush=True)
    print(_HELP, flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            try:
                reply = _command(mcu, line)
            except ValueError as exc:
                reply = f"error: {exc}"
            if reply:
                print(reply, flush=True)
        else:
            threading.Event().wait()  # stdin closed (run in the background): serve until interrupted
    except KeyboardInterrupt:
        pass
    finally:
        mcu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
