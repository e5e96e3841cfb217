"""Hardware faults injected on the simulated board, seen from the CSMS and the technician (OCTT TC_041)."""

from __future__ import annotations

import pytest

from tests.agent_harness import TAG_OK, calls_since, charge, online, wait_call

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kind,error_code", [
    ("rcd", "GroundFailure"),
    ("diode", "OtherError"),
    ("meter", "PowerMeterFailure"),
])
async def test_fault_during_charging_opens_stops_and_reports_faulted(csms, run_agent, kind, error_code):
    """TC_041: a fault opens the contactor, ends the session and is reported as Faulted with its error code."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.fault", kind=kind, on=True)

    faulted = await csms.wait_frame(lambda f: f.action == "StatusNotification" and f.message_type == 2
                                    and f.payload["status"] == "Faulted")
    assert faulted.payload["errorCode"] == error_code and faulted.payload["connectorId"] == 1
    await csms.wait_until(lambda: any(t.stopped for t in csms.transactions.values()))
    (tx,) = csms.transactions.values()
    assert tx.stop_reason == "Other"
    connector = await agent.connector()
    assert connector["contactor_closed"] is False and connector["status"] == "Faulted"
    snapshot = await agent.cmd("sim.snapshot")
    assert snapshot["connectors"][0]["contactor_feedback"] is False
    assert connector["pilot_mode"] != "PWM"


async def test_welded_contactor_stays_faulted_until_the_technician_resets_it(csms, run_agent):
    """A weld shows when the contactor is told to open and its mirror contact stays closed."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.fault", kind="weld", on=True)
    await agent.cmd("sim.swipe", tag=TAG_OK)  # the driver ends the session: the contactor is told to open
    await agent.wait_connector(lambda c: "weld" in c["faults"], what="weld fault")
    faulted = await csms.wait_frame(lambda f: f.action == "StatusNotification" and f.message_type == 2
                                    and f.payload["status"] == "Faulted")
    assert faulted.payload["errorCode"] == "PowerSwitchFailure"
    assert faulted.payload["vendorErrorCode"] == "ContactorWelded"
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["cp_state"] == "A", what="unplugged")
    await agent.cmd("sim.fault", kind="weld", on=False)  # contacts freed, mirror reads open again
    # the fault is latched: a new session must not start
    await agent.cmd("sim.plug")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    connector = await agent.wait_connector(lambda c: c["cp_state"] == "B", what="plugged")
    assert connector["status"] == "Faulted" and not connector["transaction_active"]
    assert (await agent.cmd("fault.reset"))["faults"] == []
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing after reset")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await agent.wait_connector(lambda c: c["status"] == "Charging" and c["contactor_closed"], what="charging again")


async def test_meter_recovering_clears_the_fault(csms, run_agent):
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    await agent.cmd("sim.fault", kind="meter", on=True)
    await agent.wait_connector(lambda c: c["status"] == "Faulted" and not c["meter_ok"], what="meter fault")
    await agent.cmd("sim.fault", kind="meter", on=False)
    await agent.wait_connector(lambda c: c["status"] == "Available" and c["meter_ok"], what="recovered")
    # the agent's status changes first, its StatusNotification follows: wait until the CSMS has it
    await wait_call(csms, "StatusNotification", mark, lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    statuses = [f.payload["status"] for f in calls_since(csms, "StatusNotification", mark)
                if f.payload["connectorId"] == 1]
    assert statuses == ["Faulted", "Available"]


async def test_status_on_connecting_reports_the_most_severe_of_two_faults(csms, run_agent):
    """The StatusNotification sent on (re)connecting carries the error code of the most severe active
    fault (an RCD trip before a dead meter), the same code the live Faulted notification had."""
    csms.refuse_connections = True
    agent = await run_agent(csms)
    await agent.cmd("sim.fault", kind="meter", on=True)
    await agent.cmd("sim.fault", kind="rcd", on=True)
    await agent.wait_connector(lambda c: set(c["faults"]) >= {"meter", "rcd"}, timeout=15, what="both faults")
    csms.refuse_connections = False
    frame = await wait_call(csms, "StatusNotification", where=lambda p: p["connectorId"] == 1, timeout=30)
    assert (frame.payload["status"], frame.payload["errorCode"]) == ("Faulted", "GroundFailure")
