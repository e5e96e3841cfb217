"""Smart Charging in the station shell (agent.station.charging_limits) with a real Station on the sim board: the
limit handed to the controller is rounded down, never up, and GetCompositeSchedule answers for a bounded
window (it is computed on the event loop that also runs the control loop)."""

from __future__ import annotations

from agent.station.charging_limits import MAX_COMPOSITE_DURATION_S
from tests.station_bench import authorize, sim_station, steps


def default_profile(unit: str, limit: float, kind: str = "Relative", **extra) -> dict:
    return {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": kind, **extra,
            "chargingSchedule": {"chargingRateUnit": unit,
                                 "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}


async def test_power_limit_just_below_6_amps_suspends_instead_of_rounding_up(tmp_path):
    """4130 W on 3 phases x 230 V is 5.986 A: below the 6 A minimum nothing may be offered (SuspendedEVSE,
    contactor open), as GetCompositeSchedule (5.9 A) says; rounding to 6.0 A would exceed the CSMS's limit."""
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    assert station.csms_port.set_charging_profile(0, default_profile("W", 4130.0)) == "Accepted"
    board.simulator.plug(1)
    await steps(station, 5)
    authorize(station, rt)
    await steps(station, 60)
    view = rt.controller.view()
    assert rt.controller.charging_limit_a == 5.9
    assert station.csms_port.composite_schedule(1, 60, "A")["chargingSchedulePeriod"][0]["limit"] == 5.9
    assert view.status.value == "suspended_evse" and not view.contactor_closed
    await board.close()


async def test_composite_schedule_answers_for_at_most_a_week(tmp_path):
    """A CSMS asking for a year gets a week (the answer's duration says so); a short window is answered
    as asked."""
    station, board = await sim_station(tmp_path)
    daily = default_profile("A", 10.0, kind="Recurring", recurrencyKind="Daily")
    daily["chargingSchedule"]["startSchedule"] = "2025-01-01T00:00:00Z"
    daily["chargingSchedule"]["chargingSchedulePeriod"] = [
        {"startPeriod": i * 1800, "limit": 6.0 + i % 2} for i in range(48)]
    assert station.csms_port.set_charging_profile(1, daily) == "Accepted"
    assert station.csms_port.composite_schedule(1, 365 * 86400, "A")["duration"] == MAX_COMPOSITE_DURATION_S
    assert station.csms_port.composite_schedule(1, 3600, "A")["duration"] == 3600
    await board.close()
