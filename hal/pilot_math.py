"""Pure IEC 61851-1 arithmetic: pilot voltage windows, duty cycle <-> current, PP resistor coding.

No I/O here, so every back-end (simulated or real) and the agent share one tested copy of the tables.
Sources are summarised in hardware-notes.md sections 1.1, 1.2 and 1.5.
"""

from __future__ import annotations

import math

from hal.interfaces import CpState

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
