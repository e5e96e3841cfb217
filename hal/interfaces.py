"""Typed interfaces every hardware back-end implements.

The agent only talks to these. A back-end (simulated, GPIO, co-processor, Modbus...) is chosen by the
board config, the way gpiozero picks a pin factory or python-can picks a bus interface.

Pilot, contactor, lock and RCD calls are synchronous: they set or read state that the back-end keeps
current (a GPIO level, the last frame from a safety co-processor), so the control loop can call them
every step without waiting. The meter and the RFID reader do real I/O and are async.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class CpState(StrEnum):
    """IEC 61851-1 control pilot states as the EVSE detects them."""

    A = "A"  # no EV (+12 V)
    B = "B"  # EV connected, not ready (+9 V)
    C = "C"  # EV ready, no ventilation (+6 V)
    D = "D"  # EV ready, ventilation required (+3 V)
    E = "E"  # CP shorted to PE / EVSE unpowered (0 V)
    F = "F"  # EVSE not available (-12 V)


class PilotMode(StrEnum):
    """What the EVSE drives onto the control pilot."""

    X1 = "X1"  # constant +12 V: EV may not draw current
    PWM = "PWM"  # 1 kHz PWM: duty cycle announces the offered current
    F = "F"  # constant -12 V: EVSE not available


@dataclass(frozen=True)
class PilotReading:
    state: CpState
    high_v: float  # positive plateau of the CP signal
    low_v: float  # negative plateau while PWM runs (about -12 V when the EV's diode is present)
    diode_ok: bool = True  # False when the negative half is loaded: diode missing or shorted


@dataclass(frozen=True)
class PilotOutput:
    mode: PilotMode
    duty_percent: float  # meaningful in PWM mode; 100.0 for X1, 0.0 for F


@dataclass(frozen=True)
class MeterReading:
    energy_wh: float  # active import register, monotonic, never rebased
    # None where the meter marks the value "not available" (an unused phase of an ABB B23...): left out
    power_w: float | None  # total active import power
    current_a: tuple[float | None, ...]  # per phase, L1..Ln
    voltage_v: tuple[float | None, ...]  # per phase, L-N
    taken_at: float = 0.0  # time.monotonic() of the reading


class HardwareError(Exception):
    """A device did not answer or answered nonsense. The message says which device and what was expected."""


class MeterError(HardwareError):
    pass


class ControlPilot(abc.ABC):
    @abc.abstractmethod
    def read(self) -> PilotReading:
        """Latest classified CP state and plateau voltages."""

    def on_change(self, callback: Callable[[], None]) -> None:
        """Have `callback` called (from any thread) when the reading may have changed, so the control loop
        reacts at once instead of at its next poll. Back-ends that cannot tell keep this no-op: they are
        polled every control period."""
        return None  # optional capability, not an abstract method

    @abc.abstractmethod
    def set_pwm(self, duty_percent: float) -> None:
        """Drive a 1 kHz PWM with this duty (state X2)."""

    @abc.abstractmethod
    def set_x1(self) -> None:
        """Drive constant +12 V (state X1, no current offered)."""

    @abc.abstractmethod
    def set_f(self) -> None:
        """Drive constant -12 V (state F, EVSE not available)."""

    @property
    @abc.abstractmethod
    def output(self) -> PilotOutput:
        """What is driven now."""


class ProximityPilot(abc.ABC):
    @abc.abstractmethod
    def read_ampacity(self) -> float | None:
        """Current rating of the plugged cable in A, or None when no cable is detected."""


class Contactor(abc.ABC):
    @abc.abstractmethod
    def set_closed(self, closed: bool) -> None:
        """Command the contactor coil."""

    @property
    @abc.abstractmethod
    def commanded_closed(self) -> bool:
        """Last command given."""

    @abc.abstractmethod
    def feedback_closed(self) -> bool:
        """State of the mirror (auxiliary) contact: True when the main contacts are closed."""

    @property
    def has_mirror_contact(self) -> bool:
        """False when feedback_closed() is inferred (a board that switches its own relay): then it
        cannot prove a weld, and the controller does not supervise it."""
        return True


class ConnectorLock(abc.ABC):
    # how long the feedback may take to follow a command (the actuator's travel) before the controller
    # raises a lock fault (ConnectorLockFailure); a back-end whose actuator is slower sets its own
    travel_timeout_s: float = 1.0

    @abc.abstractmethod
    def set_locked(self, locked: bool) -> None:
        """Command the actuator; it takes a moment to move (is_locked() tells when it got there)."""

    @abc.abstractmethod
    def is_locked(self) -> bool:
        """Lock feedback: the position switch, never the command. The controller raises a lock fault
        (ConnectorLockFailure) when it does not follow a command within `travel_timeout_s`."""


class IndicatorState(StrEnum):
    """What a connector's status indicator shows (agent.core.controller.indicator_for maps OCPP statuses)."""

    OFF = "off"  # unavailable: nothing lit
    READY = "ready"  # free, or waiting for the EV / the card / the driver to take the cable
    CHARGING = "charging"  # a transaction runs (energy flowing or suspended)
    FAULT = "fault"  # Faulted


class StatusIndicator(abc.ABC):
    """Optional status lights of a connector (LEDs, a light ring). Failing to light one is never a fault
    of the session: the agent logs it and goes on."""

    @abc.abstractmethod
    def indicate(self, state: IndicatorState) -> None:
        """Show this state."""

    @property
    @abc.abstractmethod
    def shown(self) -> IndicatorState:
        """The state shown now (OFF before the first indicate())."""


class ResidualCurrentMonitor(abc.ABC):
    @abc.abstractmethod
    def tripped(self) -> bool:
        """True while the RCD/RCM trip is latched."""

    @abc.abstractmethod
    def reset(self) -> bool:
        """Try to clear a latched trip; True when it cleared."""


class EnergyMeter(abc.ABC):
    @abc.abstractmethod
    async def read(self) -> MeterReading:
        """One reading. Raises MeterError when the meter does not answer."""


class RfidReader(abc.ABC):
    @abc.abstractmethod
    async def next_tag(self) -> str:
        """Wait for the next card and return its UID as normalised uppercase hex."""


def normalise_uid(uid: bytes | str) -> str:
    """Card UID as uppercase hex without separators, the form used as OCPP idTag."""
    if isinstance(uid, bytes):
        return uid.hex().upper()
    cleaned = uid.strip().replace(":", "").replace("-", "").replace(" ", "").upper()
    if not cleaned or any(c not in "0123456789ABCDEF" for c in cleaned):
        raise ValueError(f"not a hex card UID: {uid!r}")
    return cleaned


@dataclass
class ConnectorHardware:
    """The devices that belong to one connector (one outlet with its own contactor)."""

    connector_id: int
    pilot: ControlPilot
    contactor: Contactor
    meter: EnergyMeter
    proximity: ProximityPilot | None = None  # None for a fixed (tethered) cable
    lock: ConnectorLock | None = None
    rcd: ResidualCurrentMonitor | None = None
    indicator: StatusIndicator | None = None  # status LEDs, when the outlet has them
    max_current_a: float = 16.0  # rating of this outlet's wiring
    phases: int = 3


@dataclass
class Board:
    """Everything the agent drives, as built from a board config."""

    name: str
    connectors: list[ConnectorHardware]
    rfid: RfidReader | None = None
    reboot_command: list[str] | None = None  # argv run on a Hard reset; None restarts the agent in place
    firmware_install_command: list[str] | None = None  # argv installing a firmware file ("{file}"); None: no installs
    firmware_max_download_bytes: int = 200 * 1024 * 1024  # largest firmware file the agent downloads
    simulator: object | None = None  # the sim control surface (hal.sim.SimBoard) when the board is simulated
    extras: dict = field(default_factory=dict)

    def devices(self) -> list[object]:
        """Every device object once (a bus or a co-processor may serve several connectors)."""
        seen: dict[int, object] = {}
        for conn in self.connectors:
            for device in (conn.pilot, conn.contactor, conn.meter, conn.proximity, conn.lock, conn.rcd,
                           conn.indicator):
                if device is not None:
                    seen.setdefault(id(device), device)
        if self.rfid is not None:
            seen.setdefault(id(self.rfid), self.rfid)
        for extra in self.extras.values():
            seen.setdefault(id(extra), extra)
        return list(seen.values())

    async def start(self) -> None:
        """Open ports and start background readers of every device that has them."""
        for device in self.devices():
            start = getattr(device, "start", None)
            if start is not None:
                await start()

    async def close(self) -> None:
        """Leave every contactor open, then release the devices."""
        for conn in self.connectors:
            try:
                conn.contactor.set_closed(False)
            except HardwareError:
                pass  # the hardware path (co-processor watchdog, coil drop-out) opens it anyway
        for device in reversed(self.devices()):
            close = getattr(device, "close", None)
            if close is not None:
                await close()
