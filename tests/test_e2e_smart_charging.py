"""OCPP 1.6 Smart Charging end to end: the real agent on the sim board against the bundled CSMS.

What a CSMS operator sees: SetChargingProfile answers, the offered current (pilot duty) and the current the
EV draws (MeterValues Current.Import) following the limit, SuspendedEVSE for a 0 A period, the composite
schedule, and profiles that survive a restart.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.cli.main import format_status
from tests.agent_harness import STATION_ID, TAG_OK, calls_since, charge, online, wait_call

pytestmark = pytest.mark.slow


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def profile(pid: int, purpose: str, periods, *, stack: int = 0, kind: str = "Relative", unit: str = "A",
            **extra) -> dict:
    schedule = {"chargingRateUnit": unit,
                "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods]}
    if kind == "Absolute":
        schedule["startSchedule"] = now_utc()
    return {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}


async def set_profile(csms, connector: int, body: dict) -> str:
    answer = await csms.call(STATION_ID, "SetChargingProfile", {"connectorId": connector, "csChargingProfiles": body})
    return answer["status"]


def current_import(frame) -> float:
    values = frame.payload["meterValue"][0]["sampledValue"]
    return max(float(v["value"]) for v in values if v.get("measurand") == "Current.Import")


async def wait_drawn_current(csms, since: int, predicate) -> float:
    """The Current.Import of the first MeterValues after `since` that satisfies `predicate`."""
    frame = await wait_call(csms, "MeterValues", since, where=lambda p: any(
        v.get("measurand") == "Current.Import" for v in p["meterValue"][0]["sampledValue"])
        and predicate(max(float(v["value"]) for v in p["meterValue"][0]["sampledValue"]
                          if v.get("measurand") == "Current.Import")))
    return current_import(frame)


async def test_tx_default_profile_lowers_the_current_of_the_running_session(csms, run_agent):
    """TC_082_CS / TC_056_CS: a TxDefaultProfile of 10 A on connector 0 during a 16 A session: Accepted, the
    pilot offers 10 A (duty 16.7 %), the EV draws 10 A in MeterValues; it applies to the next session too."""
    agent = await online(run_agent, csms)
    before = await charge(agent, csms, TAG_OK)
    assert before["offered_current_a"] == 16 and before["charging_limit_a"] is None
    assert await set_profile(csms, 0, profile(1, "TxDefaultProfile", [(0, 10)])) == "Accepted"
    mark = len(csms.frames)
    limited = await agent.wait_connector(lambda c: c["offered_current_a"] == 10, what="10 A offered")
    assert limited["pwm_duty"] == pytest.approx(16.67) and limited["charging_limit_a"] == 10
    assert limited["status"] == "Charging" and limited["contactor_closed"]
    assert "charging profile limit 10 A" in format_status(await agent.status())  # what `evse status` prints
    assert await wait_drawn_current(csms, mark, lambda amps: amps <= 10.05) == pytest.approx(10, abs=0.05)
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["status"] == "Available", what="Available")
    await charge(agent, csms, TAG_OK)
    assert (await agent.connector())["offered_current_a"] == 10  # TC_056: the default for new sessions


async def test_tx_profile_needs_the_running_transaction(csms, run_agent):
    """TC_058_1_CS / TC_058_2_CS / TC_057_CS: a TxProfile without a transaction, or with another
    transactionId, is Rejected; with the running one it is Accepted and limits it; it goes with the
    transaction."""
    agent = await online(run_agent, csms)
    assert await set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)])) == "Rejected"
    await charge(agent, csms, TAG_OK)
    tx_id = (await agent.wait_connector(lambda c: c["transaction_id"] is not None, what="tx id"))["transaction_id"]
    assert await set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)], transactionId=tx_id + 1)) == "Rejected"
    assert await set_profile(csms, 1, profile(5, "TxProfile", [(0, 8)], transactionId=tx_id)) == "Accepted"
    await agent.wait_connector(lambda c: c["offered_current_a"] == 8 and c["status"] == "Charging", what="8 A")
    await agent.cmd("sim.unplug")
    # the limit reaches the control process's controller a moment after the profile is gone
    await agent.wait_status(lambda s: s["smart_charging"]["profiles"] == []
                            and s["connectors"][0]["charging_limit_a"] is None, what="TxProfile and its limit cleared")


async def test_zero_amp_period_suspends_and_the_next_period_resumes(csms, run_agent):
    """A 0 A period: SuspendedEVSE, the pilot stops offering and the contactor opens, the transaction stays;
    at the next period boundary the agent offers current again and the EV charges (TC_057_CS)."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    mark = len(csms.frames)
    body = profile(7, "TxProfile", [(0, 0), (5, 12)], kind="Absolute")
    assert await set_profile(csms, 1, body) == "Accepted"
    paused = await agent.wait_connector(lambda c: c["status"] == "SuspendedEVSE", what="SuspendedEVSE")
    assert paused["pilot_mode"] != "PWM" and paused["transaction_active"]  # x1 at once (orderly stop)...
    await agent.wait_connector(lambda c: not c["contactor_closed"], what="open once the EV left C")  # ...then open
    await agent.wait_connector(lambda c: c["status"] == "Charging" and c["contactor_closed"], timeout=12,
                               what="charging again after the boundary")
    assert (await agent.connector())["offered_current_a"] == 12
    # the StatusNotification follows the agent's own status: wait until the CSMS has it
    await wait_call(csms, "StatusNotification", mark, where=lambda p: p["connectorId"] == 1
                    and p["status"] == "Charging")
    notified = [f.payload["status"] for f in calls_since(csms, "StatusNotification", mark)
                if f.payload["connectorId"] == 1]
    assert notified[:1] == ["SuspendedEVSE"] and "Charging" in notified
    assert calls_since(csms, "StopTransaction", mark) == []


async def test_get_composite_schedule(csms, run_agent):
    """TC_066_CS: the composite of a ChargePointMaxProfile (20 A, then 8 A after 60 s) and a TxDefaultProfile
    of 10 A, in A and in W (3 phases x 230 V); connector 0 shows the station limit; an unknown connector is
    Rejected."""
    await online(run_agent, csms)
    assert await set_profile(csms, 0, profile(1, "ChargePointMaxProfile", [(0, 20), (60, 8)],
                                              kind="Absolute")) == "Accepted"
    assert await set_profile(csms, 1, profile(2, "TxDefaultProfile", [(0, 10)])) == "Accepted"
    answer = await csms.call(STATION_ID, "GetCompositeSchedule", {"connectorId": 1, "duration": 300})
    assert answer["status"] == "Accepted" and answer["connectorId"] == 1
    schedule = answer["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "A" and schedule["duration"] == 300
    periods = [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]]
    assert periods[0] == (0, 10) and periods[1][1] == 8 and 55 <= periods[1][0] <= 60
    watts = await csms.call(STATION_ID, "GetCompositeSchedule", {"connectorId": 1, "duration": 30,
                                                                 "chargingRateUnit": "W"})
    assert watts["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == pytest.approx(6900, abs=1)
    # connector 0: the ChargePointMaxProfile, capped by what the station can offer at all (16 A configured)
    station = await csms.call(STATION_ID, "GetCompositeSchedule", {"connectorId": 0, "duration": 300})
    assert [p["limit"] for p in station["chargingSchedule"]["chargingSchedulePeriod"]] == [16, 8]
    unknown = await csms.call(STATION_ID, "GetCompositeSchedule", {"connectorId": 7, "duration": 30})
    assert unknown == {"status": "Rejected"}


async def test_clear_charging_profile_restores_the_limit(csms, run_agent):
    """TC_067_CS: ClearChargingProfile by id: Accepted and the offered current is back to 16 A; the same
    again, or criteria nothing matches: Unknown."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    assert await set_profile(csms, 1, profile(3, "TxDefaultProfile", [(0, 10)])) == "Accepted"
    await agent.wait_connector(lambda c: c["offered_current_a"] == 10, what="10 A")
    assert await csms.call(STATION_ID, "ClearChargingProfile", {"id": 3}) == {"status": "Accepted"}
    restored = await agent.wait_connector(lambda c: c["offered_current_a"] == 16, what="16 A again")
    assert restored["charging_limit_a"] is None and restored["status"] == "Charging"
    assert await csms.call(STATION_ID, "ClearChargingProfile", {"id": 3}) == {"status": "Unknown"}
    assert await csms.call(STATION_ID, "ClearChargingProfile",
                           {"chargingProfilePurpose": "ChargePointMaxProfile"}) == {"status": "Unknown"}


async def test_stacking_charging_profiles(csms, run_agent):
    """TC_072_CS: stack level 1 (6 A) over stack level 0 (10 A) wins; cleared by purpose and stack level, the
    lower one applies again."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    assert await set_profile(csms, 1, profile(10, "TxDefaultProfile", [(0, 10)], stack=0)) == "Accepted"
    assert await set_profile(csms, 1, profile(11, "TxDefaultProfile", [(0, 6)], stack=1)) == "Accepted"
    await agent.wait_connector(lambda c: c["offered_current_a"] == 6, what="6 A from stack level 1")
    cleared = await csms.call(STATION_ID, "ClearChargingProfile",
                              {"connectorId": 1, "chargingProfilePurpose": "TxDefaultProfile", "stackLevel": 1})
    assert cleared == {"status": "Accepted"}
    await agent.wait_connector(lambda c: c["offered_current_a"] == 10, what="10 A from stack level 0")


async def test_remote_start_with_a_charging_profile(csms, run_agent):
    """TC_059_CS: RemoteStartTransaction with a TxProfile of 8 A: Accepted, the session is offered 8 A.
    TC_060_CS: with a TxDefaultProfile instead: Rejected, no session."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    wrong = {"idTag": TAG_OK, "connectorId": 1,
             "chargingProfile": profile(20, "TxDefaultProfile", [(0, 8)])}
    assert await csms.call(STATION_ID, "RemoteStartTransaction", wrong) == {"status": "Rejected"}
    right = {"idTag": TAG_OK, "connectorId": 1, "chargingProfile": profile(21, "TxProfile", [(0, 8)])}
    assert await csms.call(STATION_ID, "RemoteStartTransaction", right) == {"status": "Accepted"}
    await agent.cmd("sim.plug")
    charging = await agent.wait_connector(lambda c: c["status"] == "Charging" and c["contactor_closed"],
                                          what="Charging")
    assert charging["offered_current_a"] == 8
    assert len(calls_since(csms, "StartTransaction", mark)) == 1
    status = await agent.status()
    assert [p["id"] for p in status["smart_charging"]["profiles"]] == [21]


async def test_profiles_survive_a_restart(csms, run_agent):
    """Profiles persist (errata 3.37): after a restart the TxDefaultProfile still limits the next session and
    GetCompositeSchedule still reports it."""
    agent = await online(run_agent, csms)
    assert await set_profile(csms, 0, profile(4, "TxDefaultProfile", [(0, 11)])) == "Accepted"
    assert await agent.terminate() == 0
    mark = len(csms.frames)
    agent.start()
    await agent.ready()
    await wait_call(csms, "BootNotification", mark)
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted", what="registration")
    answer = await csms.call(STATION_ID, "GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert answer["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 11
    assert (await charge(agent, csms, TAG_OK))["offered_current_a"] == 11
