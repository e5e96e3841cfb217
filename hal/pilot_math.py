"""Pure IEC 61851-1 arithmetic: pilot voltage windows, duty cycle <-> current, PP resistor coding.

No I/O here, so every back-end (simulated or real) and the agent share one tested copy of the tables.
Sources are summarised in hardware-notes.md sections 1.1, 1.2 and 1.5. The second half holds the CP
sample classifier and the PP divider math for back-ends that sample the pilot themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hal.interfaces import CpState, PilotReading

# Nominal positive plateau of each state; a reading within +-1 V of it is accepted (IEC 61851-1 Table A.4,
# as used by chargebyte, Yeti and the Siemens manuals). Between the windows the reading is invalid.
_NOMINAL_VOLTS: dict[CpState, float] = {
    CpState.A: 12.0,
    CpState.B: 9.0,
    CpState.C: 6.0,
    CpState.D: 3.0,
    CpState.E: 0.0,
    CpState.F: -12.0,
}
CP_WINDOW_V = 1.0

MIN_CURRENT_A = 6.0  # below this a basic-charging EVSE cannot offer anything
MAX_CURRENT_A = 80.0  # the duty table ends at 96 % = 80 A


def classify_cp_voltage(volts: float) -> CpState | None:
    """CP state for a positive-plateau voltage (or the steady -12 V of state F); None outside all windows."""
    if math.isnan(volts):
        return None
    for state, nominal in _NOMINAL_VOLTS.items():
        if abs(volts - nominal) <= CP_WINDOW_V:
            return state
    return None


def duty_for_current(amps: float) -> float | None:
    """EVSE side: PWM duty in percent that offers `amps`; None when below 6 A (nothing can be offered).

    Above 80 A the offer is clamped to 80 A (96 %). Between 51 and 52.5 A the formula gives a duty just
    below 85 %, which an EV reads as at most 51 A: the "gap in the norm" errs on the safe side.
    """
    if math.isnan(amps):
        raise ValueError("current is NaN")
    if amps < MIN_CURRENT_A:
        return None
    amps = min(amps, MAX_CURRENT_A)
    if amps <= 51.0:
        return amps / 0.6
    return amps / 2.5 + 64.0


def current_for_duty(duty_percent: float) -> float:
    """EV side: the current an EV may draw for a PWM duty (IEC 61851-1 Table A.8); 0.0 when not allowed.

    3-7 % means "high-level communication required" and the other gaps are not allowed, so a basic EV
    draws nothing for them. The result is rounded to 0.01 A so 89.2 % reads as 63 A, not 63.00000000000001.
    """
    if math.isnan(duty_percent):
        return 0.0
    if 8.0 <= duty_percent < 10.0:
        amps = 6.0
    elif 10.0 <= duty_percent <= 85.0:
        amps = duty_percent * 0.6
    elif 85.0 < duty_percent <= 96.0:
        amps = (duty_percent - 64.0) * 2.5
    elif 96.0 < duty_percent <= 97.0:
        amps = 80.0
    else:
        return 0.0
    return round(amps, 2)


# (upper bound of the resistance range in ohms, cable ampacity in A), IEC 61851-1 Annex B / IEC 62196-2.
# The 63 A coding means 70 A on a single-phase installation; callers that care apply that themselves.
_PP_RANGES: tuple[tuple[float, float], ...] = (
    (150.0, 63.0),
    (330.0, 32.0),
    (1000.0, 20.0),
    (2200.0, 13.0),
)
PP_MIN_VALID_OHMS = 75.0

# Nominal resistor in the cable plug for each ampacity, used by simulators to produce a PP reading.
PP_NOMINAL_OHMS: dict[float, float] = {13.0: 1500.0, 20.0: 680.0, 32.0: 220.0, 63.0: 100.0}


def ampacity_for_pp_resistance(ohms: float) -> float | None:
    """Cable current rating coded by the PP resistor; None when no cable is detected (> 2.2 kOhm).

    Raises ValueError below 75 Ohm: PP shorted or a broken cable coding, which must stop charging.
    """
    if math.isnan(ohms) or ohms < PP_MIN_VALID_OHMS:
        raise ValueError(
            f"PP resistance {ohms} Ohm is below {PP_MIN_VALID_OHMS:g} Ohm: PP short or invalid cable"
        )
    for upper_ohms, ampacity in _PP_RANGES:
        if ohms < upper_ohms:
            return ampacity
    if ohms <= _PP_RANGES[-1][0]:
        return _PP_RANGES[-1][1]
    return None


# --- CP signal processing for back-ends that sample the pilot themselves (hal.linux_pilot) ------------
#
# chargebyte's Tarragon driver (CPUtils.cpp, "mostly based on IEC 61851-1 Table A.4") is the model: the
# +-1 V windows, hysteresis bands between them, the CP-short and diode rules, and a state change only after
# 2 equal consecutive samples. See hardware-notes.md sections 1.1 and 1.3.

# Windows on the positive plateau, inclusive, checked in this order (so exactly 2.0 V is D, not E).
# E reaches up to 2 V as in chargebyte: a reading between D's window and 0 V is treated as a short.
_CP_WINDOWS: tuple[tuple[float, float, CpState], ...] = (
    (11.0, 13.0, CpState.A),
    (8.0, 10.0, CpState.B),
    (5.0, 7.0, CpState.C),
    (2.0, 4.0, CpState.D),
    (-1.0, 2.0, CpState.E),
    (-13.0, -11.0, CpState.F),
)
# Hysteresis bands between windows: a reading there keeps the confirmed state when that state is one of
# the band's neighbours, so a pilot sitting near a threshold does not chatter. Otherwise it is invalid.
_CP_BANDS: tuple[tuple[float, float, tuple[CpState, ...]], ...] = (
    (10.0, 11.0, (CpState.A, CpState.B)),
    (7.0, 8.0, (CpState.B, CpState.C)),
    (4.0, 5.0, (CpState.C, CpState.D)),
    (-2.0, -1.0, (CpState.E,)),
    (-11.0, -10.0, (CpState.F,)),
)

CP_SHORT_HIGH_BELOW_V = 2.0  # a positive plateau below this is no EV state: CP is (partly) shorted to PE
CP_SHORT_LOW_ABOVE_V = -10.0  # with a steady output, a level above this means the -12 V side is loaded
DIODE_FAULT_SUM_V = 1.2  # |high + low| up to this with PWM on: the negative half is loaded too
CONFIRM_SAMPLES = 2  # equal consecutive samples that confirm a state change (chargebyte)
INVALID_FAULT_S = 0.1  # a pilot that stays outside every window this long is reported as state F


def cp_state_with_hysteresis(volts: float, previous: CpState | None) -> CpState | None:
    """State for a positive-plateau voltage, keeping `previous` inside the hysteresis band next to it.

    None when the reading is outside every window (above 13 V, between -10 and -2 V, below -13 V, NaN) or
    in a band whose neighbours do not include `previous`.
    """
    if math.isnan(volts):
        return None
    for low, high, state in _CP_WINDOWS:
        if low <= volts <= high:
            return state
    for low, high, neighbours in _CP_BANDS:
        if low < volts < high:
            return previous if previous in neighbours else None
    return None


def pwm_is_on(duty_percent: float) -> bool:
    """True while the output toggles (not the steady +12 V of X1 or -12 V of F)."""
    return 0.0 < duty_percent < 100.0


def is_cp_short(high_v: float, low_v: float, duty_percent: float) -> bool:
    """CP shorted to PE (state E), by chargebyte's rule.

    The positive plateau is below 2 V and the negative side is loaded too: with PWM running the two
    plateaus are symmetric around 0 V; with a steady output (0 or 100 %) the level is above -10 V.
    """
    if high_v >= CP_SHORT_HIGH_BELOW_V:
        return False
    if pwm_is_on(duty_percent):
        return abs(high_v + low_v) <= DIODE_FAULT_SUM_V
    return low_v > CP_SHORT_LOW_ABOVE_V


def is_diode_fault_sample(high_v: float, low_v: float, duty_percent: float) -> bool:
    """One sample that shows a missing or shorted EV diode: with PWM running, the negative plateau mirrors
    the positive one. The caller also requires a state other than A (no EV = no load on either half)."""
    return (
        pwm_is_on(duty_percent)
        and high_v > CP_SHORT_HIGH_BELOW_V
        and abs(high_v + low_v) <= DIODE_FAULT_SUM_V
    )


def classify_cp_sample(
    high_v: float, low_v: float, duty_percent: float, previous: CpState | None
) -> CpState | None:
    """The state one sample shows (E by the short rule first, then the windows); None when invalid."""
    if math.isnan(high_v) or math.isnan(low_v):
        return None
    if is_cp_short(high_v, low_v, duty_percent):
        return CpState.E
    return cp_state_with_hysteresis(high_v, previous)


def invalid_fault_samples(sample_period_s: float) -> int:
    """Consecutive invalid samples that make INVALID_FAULT_S at this sample period (10 at 10 ms)."""
    return max(CONFIRM_SAMPLES, math.ceil(round(INVALID_FAULT_S / sample_period_s, 6)))


class PilotClassifier:
    """Turns CP samples into a confirmed state, the way chargebyte's Tarragon driver does.

    Rules, each one tested sample by sample:
    * every state change, toward more or less power alike, needs CONFIRM_SAMPLES equal consecutive samples:
      a single-sample glitch never changes the state. At a 10 ms sample period a real C->B is confirmed
      20 ms after the edge, well inside the 100 ms IEC 61851-1 allows for opening the contactor;
    * an invalid sample (outside every window) is skipped: it neither confirms nor breaks a candidate, and
      the last confirmed state stays. After `invalid_fault_samples` invalid samples in a row the state
      becomes F (a pilot fault the controller acts on), until valid samples confirm a state again;
    * the diode check (PWM on, state not A, |high + low| <= 1.2 V) must also hold for CONFIRM_SAMPLES
      consecutive samples, then latches until the state is A (else it swings when the duty changes).
    """

    def __init__(self, *, invalid_fault_samples: int = 10, confirm_samples: int = CONFIRM_SAMPLES):
        if confirm_samples < 1 or invalid_fault_samples < 1:
            raise ValueError("confirm_samples and invalid_fault_samples must be at least 1")
        self.confirm_samples = confirm_samples
        self.invalid_fault_samples = invalid_fault_samples
        self._confirmed: CpState | None = None
        self._candidate: CpState | None = None
        self._candidate_count = 0
        self._invalid_count = 0
        self._diode_count = 0
        self._diode_fault = False
        self._high_v = math.nan
        self._low_v = math.nan

    @property
    def state(self) -> CpState | None:
        """The confirmed state; None until the first state is confirmed."""
        return self._confirmed

    @property
    def diode_fault(self) -> bool:
        return self._diode_fault

    @property
    def reading(self) -> PilotReading | None:
        if self._confirmed is None:
            return None
        return PilotReading(self._confirmed, self._high_v, self._low_v, diode_ok=not self._diode_fault)

    def update(self, high_v: float, low_v: float, duty_percent: float) -> PilotReading | None:
        """Feed one sample (plateau voltages and the duty that was driven while it was taken)."""
        self._high_v, self._low_v = high_v, low_v
        sampled = classify_cp_sample(high_v, low_v, duty_percent, self._confirmed)
        if sampled is None:
            self._on_invalid()
        else:
            self._on_valid(sampled)
        self._check_diode(high_v, low_v, duty_percent)
        return self.reading

    def _on_invalid(self) -> None:
        self._invalid_count += 1
        if self._invalid_count >= self.invalid_fault_samples and self._confirmed is not CpState.F:
            self._confirmed = CpState.F
            self._candidate, self._candidate_count = None, 0

    def _on_valid(self, sampled: CpState) -> None:
        self._invalid_count = 0
        if sampled is self._candidate:
            self._candidate_count += 1
        else:
            self._candidate, self._candidate_count = sampled, 1
        if self._candidate_count >= self.confirm_samples:
            self._confirmed = sampled

    def _check_diode(self, high_v: float, low_v: float, duty_percent: float) -> None:
        if self._confirmed is CpState.A:
            self._diode_fault = False
            self._diode_count = 0
            return
        if is_diode_fault_sample(high_v, low_v, duty_percent):
            self._diode_count += 1
            if self._diode_count >= self.confirm_samples:
                self._diode_fault = True
        else:
            self._diode_count = 0


# --- PP voltage divider -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PpDivider:
    """How a board measures the PP resistor: a pull-up to `supply_v`, optionally a fixed resistor from PP
    to PE in parallel with the cable's coding resistor (it sets the open-circuit voltage)."""

    pullup_ohms: float
    supply_v: float
    parallel_ohms: float | None = None


def pp_resistance_for_voltage(volts: float, divider: PpDivider) -> float:
    """The cable's coding resistance for a PP node voltage; math.inf when no cable loads the node."""
    if math.isnan(volts):
        raise ValueError("PP voltage is NaN")
    volts = max(volts, 0.0)
    if volts >= divider.supply_v:
        return math.inf
    measured = divider.pullup_ohms * volts / (divider.supply_v - volts)
    if divider.parallel_ohms is None:
        return measured
    if measured >= divider.parallel_ohms:
        return math.inf
    return 1.0 / (1.0 / measured - 1.0 / divider.parallel_ohms) if measured > 0 else 0.0


def pp_voltage_to_ampacity(volts: float, divider: PpDivider) -> float | None:
    """Cable rating for a PP node voltage; None when no cable. ValueError for a PP short (< 75 Ohm)."""
    ohms = pp_resistance_for_voltage(volts, divider)
    return None if math.isinf(ohms) else ampacity_for_pp_resistance(ohms)
