"""Physical model of one simulated outlet: pilot generator, cable, virtual EV, contactor, meter, RCD.

Time only moves when `advance(now)` is called; between two calls nothing the model depends on changes
(every command advances first), so energy is integrated exactly, piece by piece.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from hal.interfaces import CpState, PilotMode, PilotOutput, PilotReading
from hal.pilot_math import PP_NOMINAL_OHMS, ampacity_for_pp_resistance, classify_cp_voltage, current_for_duty

FAULT_KINDS = ("meter", "weld", "rcd", "diode", "lock")  # lock: the actuator is jammed where it is

# IEC 61851-1 resistor model (hardware-notes 1.1): +-12 V generator behind R1 = 1 kOhm; the EV loads the
# CP with these equivalent resistances (R2 alone, R2 || 1.3 kOhm, R2 || 270 Ohm).
PILOT_SOURCE_V = 12.0
PILOT_SOURCE_OHMS = 1000.0
EV_LOAD_OHMS: dict[CpState, float] = {CpState.B: 2740.0, CpState.C: 882.0, CpState.D: 246.0}

X1_OUTPUT = PilotOutput(PilotMode.X1, 100.0)
F_OUTPUT = PilotOutput(PilotMode.F, 0.0)


@dataclass(frozen=True)
class SimConnectorSpec:
    id: int
    max_current_a: float = 32.0
    phases: int = 3
    cable_ampacity_a: float | None = 32.0  # None = fixed (tethered) cable, no PP device
    has_lock: bool = True

    def validate(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int) or self.id < 1:
            raise ValueError(f"connector id must be an integer >= 1, got {self.id!r}")
        if not 0 < self.max_current_a <= 80:
            raise ValueError(
                f"connector {self.id}: max_current_a must be in (0, 80], got {self.max_current_a!r}"
            )
        if self.phases not in (1, 3):
            raise ValueError(f"connector {self.id}: phases must be 1 or 3, got {self.phases!r}")
        if self.cable_ampacity_a is not None and float(self.cable_ampacity_a) not in PP_NOMINAL_OHMS:
            allowed = ", ".join(f"{a:g}" for a in PP_NOMINAL_OHMS)
            raise ValueError(
                f"connector {self.id}: cable_ampacity_a must be one of {allowed} or None, got {self.cable_ampacity_a!r}"
            )


@dataclass(frozen=True)
class SimEvSpec:
    response_s: float = 0.2  # delay before the EV reacts to a pilot change
    max_current_a: float = 32.0
    phases: int = 3
    battery_kwh: float = 60.0
    initial_soc: float = 0.3

    def validate(self) -> None:
        if not self.response_s >= 0:
            raise ValueError(f"EV response_s must be >= 0, got {self.response_s!r}")
        if not self.max_current_a > 0:
            raise ValueError(f"EV max_current_a must be > 0, got {self.max_current_a!r}")
        if self.phases not in (1, 2, 3):
            raise ValueError(f"EV phases must be 1, 2 or 3, got {self.phases!r}")
        if not self.battery_kwh > 0:
            raise ValueError(f"EV battery_kwh must be > 0, got {self.battery_kwh!r}")
        if not 0 <= self.initial_soc <= 1:
            raise ValueError(f"EV initial_soc must be between 0 and 1, got {self.initial_soc!r}")


def _pilot_volts(ohms: float) -> float:
    return PILOT_SOURCE_V * ohms / (ohms + PILOT_SOURCE_OHMS)


class SimConnector:
    """State of one outlet and the EV plugged into it."""

    def __init__(self, spec: SimConnectorSpec, ev: SimEvSpec, voltage_v: float, now: float):
        self.spec = spec
        self.ev = ev
        self.voltage_v = voltage_v
        self.t = now  # time the model has been advanced to

        self.plugged = False
        self.pinned: CpState | None = None  # state forced by the technician, None = EV follows the pilot
        self.soc = ev.initial_soc
        self.energy_wh = 0.0
        self.faults: set[str] = set()
        self.rcd_latched = False
        self.contactor_commanded = False
        self.lock_commanded = False
        self.locked = False  # the lock's position switch: follows the command unless the actuator is jammed
        self.indicator = "off"  # what the status LEDs show (hal.interfaces.IndicatorState value)
        # [time.monotonic() (one clock for every process of the machine), "ev"|"ev_applied"|"contactor", value]
        # of the EV's scripted changes and the contactor commands: `python -m bench` times reactions with them
        self.marks: deque[list] = deque(maxlen=100_000)

        self.output = X1_OUTPUT  # what the EVSE drives; a powered-up pilot generator starts at +12 V
        # The EV sees pilot changes `response_s` late: `perceived` is what it reacts to now, `pending` holds
        # the changes it has not noticed yet as (due time, output), oldest first.
        self.perceived: PilotOutput | None = None
        self.pending: list[tuple[float, PilotOutput]] = []

    # --- what the hardware shows -----------------------------------------------------------------------

    def ev_presents(self) -> CpState:
        """The state the EV's resistors (or a pinned fault) put on the CP."""
        if not self.plugged:
            return CpState.A
        if self.pinned is not None:
            return self.pinned
        if self.soc >= 1.0:
            return CpState.B  # charging complete: S2 open
        if self.offered_a() >= 6.0:
            return CpState.C
        return CpState.B

    def offered_a(self) -> float:
        """Current the EV believes it may draw, from the pilot as it has perceived it."""
        if self.perceived is None or self.perceived.mode is not PilotMode.PWM:
            return 0.0
        return current_for_duty(self.perceived.duty_percent)

    def contacts_closed(self) -> bool:
        if "weld" in self.faults:
            return True  # fused contacts stay closed whatever the coil does
        return self.contactor_commanded and not self.rcd_latched  # the RCM trip path opens the contactor

    def phase_current_a(self) -> float:
        """Current drawn on each used phase right now."""
        if not self.contacts_closed() or self.ev_presents() not in (CpState.C, CpState.D) or self.soc >= 1.0:
            return 0.0
        offered = self.offered_a()
        if offered <= 0.0:
            return 0.0
        return min(offered, self.ev.max_current_a, self.spec.max_current_a)

    def used_phases(self) -> int:
        return min(self.ev.phases, self.spec.phases)

    def phase_currents(self) -> tuple[float, ...]:
        amps = self.phase_current_a()
        used = self.used_phases()
        return tuple(amps if phase < used else 0.0 for phase in range(self.spec.phases))

    def power_w(self) -> float:
        return self.phase_current_a() * self.used_phases() * self.voltage_v

    def pilot_reading(self) -> PilotReading:
        presents = self.ev_presents()
        if presents is CpState.E:
            return PilotReading(CpState.E, 0.0, 0.0)  # CP shorted to PE
        if presents is CpState.F or self.output.mode is PilotMode.F:
            return PilotReading(CpState.F, -PILOT_SOURCE_V, -PILOT_SOURCE_V)
        high = PILOT_SOURCE_V if presents is CpState.A else _pilot_volts(EV_LOAD_OHMS[presents])
        diode_ok = True
        if self.output.mode is PilotMode.PWM:
            if presents is not CpState.A and "diode" in self.faults:
                low, diode_ok = -high, False  # without the diode the EV loads the negative half too
            else:
                low = -PILOT_SOURCE_V
        else:
            low = high  # X1 is DC: there is no negative half
        state = classify_cp_voltage(high)
        if state is None:  # cannot happen with the nominal resistor values above
            raise AssertionError(f"simulated pilot voltage {high:.2f} V outside every window")
        return PilotReading(state, round(high, 3), round(low, 3), diode_ok)

    def pp_ampacity(self) -> float | None:
        if not self.plugged or self.spec.cable_ampacity_a is None:
            return None
        return ampacity_for_pp_resistance(PP_NOMINAL_OHMS[float(self.spec.cable_ampacity_a)])

    # --- changes ---------------------------------------------------------------------------------------

    def command_lock(self, locked: bool) -> None:
        self.lock_commanded = locked
        self.move_lock()

    def move_lock(self) -> None:
        """The actuator travels to the commanded position at once, unless it is jammed ("lock" fault)."""
        if "lock" not in self.faults:
            self.locked = self.lock_commanded

    def drive(self, output: PilotOutput) -> None:
        self.output = output
        if self.plugged:
            self.pending.append((self.t + self.ev.response_s, output))
            self._apply_due_reactions()

    def plug(self) -> None:
        """A fresh EV arrives: cable in, S2 open (state B), it notices the pilot after its response time."""
        self.plugged = True
        self.pinned = None
        self.soc = self.ev.initial_soc
        self.perceived = None
        self.pending = [(self.t + self.ev.response_s, self.output)]
        self._apply_due_reactions()

    def unplug(self) -> None:
        self.plugged = False
        self.pinned = None
        self.perceived = None
        self.pending = []

    def advance(self, now: float) -> None:
        """Move the model to `now`, integrating energy piecewise between EV reactions and a full battery."""
        self._apply_due_reactions()
        while self.t < now:
            end = now
            if self.pending and self.pending[0][0] < end:
                end = self.pending[0][0]
            power = self.power_w()
            battery_full_at_end = False
            if power > 0:
                full_at = self.t + (1.0 - self.soc) * self.ev.battery_kwh * 1000.0 * 3600.0 / power
                if full_at <= end:
                    end, battery_full_at_end = full_at, True
            self._accumulate(power, max(0.0, end - self.t))
            if battery_full_at_end:
                self.soc = 1.0  # exact, so float rounding cannot leave a sliver of charging
            self.t = max(self.t, end)
            self._apply_due_reactions()

    def _accumulate(self, power_w: float, seconds: float) -> None:
        wh = power_w * seconds / 3600.0
        self.energy_wh += wh
        self.soc = min(1.0, self.soc + wh / (self.ev.battery_kwh * 1000.0))

    def _apply_due_reactions(self) -> None:
        while self.pending and self.pending[0][0] <= self.t:
            self.perceived = self.pending.pop(0)[1]
