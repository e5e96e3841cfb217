"""IEC 61851-1 tables: pilot voltage windows, current <-> duty, PP resistor coding."""

import math

import pytest

from hal.interfaces import CpState
from hal.pilot_math import (
    ampacity_for_pp_resistance,
    classify_cp_voltage,
    current_for_duty,
    duty_for_current,
)


@pytest.mark.parametrize(
    ("amps", "duty"),
    [
        (6, 10.0),
        (16, 26.67),
        (32, 53.33),
        (51, 85.0),
        (63, 89.2),
        (80, 96.0),
        (100, 96.0),  # clamped to the top of the table
    ],
)
def test_duty_for_current_matches_the_standard_table(amps, duty):
    assert duty_for_current(amps) == pytest.approx(duty, abs=0.005)


@pytest.mark.parametrize("amps", [5, 5.99, 0, -3])
def test_below_six_amps_nothing_can_be_offered(amps):
    assert duty_for_current(amps) is None


def test_duty_for_nan_current_is_refused():
    with pytest.raises(ValueError):
        duty_for_current(math.nan)


@pytest.mark.parametrize("amps", [6, 10, 13, 16, 20, 25, 32, 40, 51, 55, 63, 70, 80])
def test_ev_reads_back_exactly_the_offered_current(amps):
    assert current_for_duty(duty_for_current(amps)) == amps


def test_the_51_to_52_5_amp_gap_errs_on_the_safe_side():
    # 52 A gives a duty just below 85 %, which the EV reads from the lower branch: less than offered.
    assert current_for_duty(duty_for_current(52)) <= 52


@pytest.mark.parametrize(
    ("duty", "amps"),
    [
        (0, 0.0),
        (2.9, 0.0),
        (5, 0.0),  # 5 % = digital communication required, no basic current
        (7.5, 0.0),  # gap: not allowed
        (8, 6.0),
        (9.9, 6.0),
        (10, 6.0),
        (50, 30.0),
        (85, 51.0),
        (85.5, 53.75),
        (89.2, 63.0),
        (96, 80.0),
        (96.5, 80.0),
        (97, 80.0),
        (97.1, 0.0),
        (100, 0.0),
        (math.nan, 0.0),
    ],
)
def test_current_for_duty_ev_side_table(duty, amps):
    assert current_for_duty(duty) == pytest.approx(amps)


@pytest.mark.parametrize(
    ("ohms", "ampacity"),
    [
        (75, 63.0),
        (100, 63.0),
        (149.9, 63.0),
        (150, 32.0),
        (220, 32.0),
        (330, 20.0),
        (680, 20.0),
        (1000, 13.0),
        (1500, 13.0),
        (2200, 13.0),
        (2201, None),
        (1e6, None),
    ],
)
def test_pp_resistance_ranges(ohms, ampacity):
    assert ampacity_for_pp_resistance(ohms) == ampacity


@pytest.mark.parametrize("ohms", [0, 74.9, -5, math.nan])
def test_pp_resistance_below_75_ohm_is_an_error(ohms):
    with pytest.raises(ValueError, match="PP"):
        ampacity_for_pp_resistance(ohms)


@pytest.mark.parametrize(
    ("volts", "state"),
    [
        (12.0, CpState.A),
        (11.0, CpState.A),
        (13.0, CpState.A),
        (8.79, CpState.B),  # 2.74 kOhm behind 1 kOhm
        (9.0, CpState.B),
        (5.62, CpState.C),  # 882 Ohm
        (2.37, CpState.D),  # 246 Ohm
        (0.0, CpState.E),
        (-0.9, CpState.E),
        (-12.0, CpState.F),
        (-11.0, CpState.F),
    ],
)
def test_classify_cp_voltage_within_windows(volts, state):
    assert classify_cp_voltage(volts) is state


@pytest.mark.parametrize("volts", [13.5, 10.5, 7.5, 4.5, 1.5, -1.5, -5.0, -10.5, -13.5, math.nan])
def test_classify_cp_voltage_between_windows_is_invalid(volts):
    assert classify_cp_voltage(volts) is None
