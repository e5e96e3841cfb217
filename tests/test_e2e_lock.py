"""The connector lock and the status LEDs end to end: the agent process on the sim board against the bundled
CSMS, the lock jammed with `sim.fault lock` (OCTT 1.6 TC_024_CS, TC_030_CS, TC_005_2_CS)."""

from __future__ import annotations

import asyncio
import json

import pytest

from hil.csms import LocalCsms
from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, Agent, calls_since, charge, online, wait_call
from tests.test_cli import run_evse

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _station_keeps_to_the_protocol(csms):
    yield
    assert csms.violations == [], f"the station broke the protocol: {csms.violations}"


async def snapshot(agent: Agent, connector: int = 1) -> dict:
    return (await agent.cmd("sim.snapshot"))["connectors"][connector - 1]


def statuses(csms: LocalCsms, since: int = 0) -> list[tuple[str, str]]:
    return [(f.payload["status"], f.payload["errorCode"]) for f in calls_since(csms, "StatusNotification", since)
            if f.payload["connectorId"] == 1]


async def test_lock_failure_at_start_faults_without_starting(csms, run_agent):
    """TC_024_CS: the lock is jammed open; plug in and present an accepted card: Authorize, Preparing, then
    StatusNotification Faulted / ConnectorLockFailure; no StartTransaction, the contactor never closes.
    Unplugged and repaired, the connector is Available again and the next session charges."""
    agent = await online(run_agent, csms)
    await agent.cmd("sim.fault", kind="lock", on=True)
    mark = len(csms.frames)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await wait_call(csms, "Authorize", mark)

    faulted = await wait_call(csms, "StatusNotification", mark,
                              lambda p: p["connectorId"] == 1 and p["status"] == "Faulted")
    assert faulted.payload["errorCode"] == "ConnectorLockFailure"
    connector = await agent.connector()
    assert connector["faults"] == ["lock"] and connector["lock"]["commanded"] is False
    await asyncio.sleep(0.3)
    assert calls_since(csms, "StartTransaction", mark) == []
    sim = await snapshot(agent)
    assert not sim["contactor_commanded"] and sim["energy_wh"] == 0 and sim["indicator"] == "fault"
    assert statuses(csms, mark) == [("Preparing", "NoError"), ("Faulted", "ConnectorLockFailure")]

    await agent.cmd("sim.fault", kind="lock", on=False)
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["status"] == "Available" and not c["faults"], what="Available")
    await charge(agent, csms, TAG_OK)
    assert (await snapshot(agent))["locked"]


async def test_unlock_failure(csms, run_agent):
    """TC_030_CS: the lock jams while charging; UnlockConnector stops the transaction (UnlockCommand), the
    contactor opens, the lock does not open: UnlockFailed, and the connector reports ConnectorLockFailure.
    Freed, the next UnlockConnector answers Unlocked."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    (tx,) = csms.transactions.values()
    await agent.cmd("sim.fault", kind="lock", on=True)
    mark = len(csms.frames)

    assert await csms.call(STATION_ID, "UnlockConnector", {"connectorId": 1}) == {"status": "UnlockFailed"}

    stop = await wait_call(csms, "StopTransaction", mark)
    assert stop.payload["reason"] == "UnlockCommand"
    await csms.wait_until(lambda: tx.stopped)
    faulted = await wait_call(csms, "StatusNotification", mark,
                              lambda p: p["connectorId"] == 1 and p["status"] == "Faulted")
    assert faulted.payload["errorCode"] == "ConnectorLockFailure"
    sim = await snapshot(agent)
    assert sim["locked"] and not sim["lock_commanded"] and not sim["contactor_feedback"]

    await agent.cmd("sim.fault", kind="lock", on=False)
    assert await csms.call(STATION_ID, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}
    assert not (await snapshot(agent))["locked"]


async def test_ev_side_disconnect_keeps_the_cable_locked_until_the_card(csms, run_agent):
    """TC_005_2_CS: StopTransactionOnEVSideDisconnect true, UnlockConnectorOnEVSideDisconnect false (set by
    the CSMS): the EV side unplugs: StopTransaction EVDisconnected, the cable stays locked (Finishing); another
    card does not release it, the driver's card does, without a new Authorize or transaction (Available)."""
    agent = await online(run_agent, csms)
    assert await csms.call(STATION_ID, "ChangeConfiguration", {
        "key": "UnlockConnectorOnEVSideDisconnect", "value": "false"}) == {"status": "Accepted"}
    await charge(agent, csms, TAG_OK)
    (tx,) = csms.transactions.values()
    mark = len(csms.frames)

    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: tx.stopped)
    assert tx.stop_reason == "EVDisconnected"
    connector = await agent.wait_connector(lambda c: c["status"] == "Finishing", what="Finishing")
    assert connector["lock"] == {"commanded": True, "locked": True, "held_for": TAG_OK}
    assert (await snapshot(agent))["locked"]

    await agent.cmd("sim.swipe", tag=TAG_2)
    await asyncio.sleep(0.3)
    assert (await snapshot(agent))["locked"], "someone else's card must not release the cable"

    await agent.cmd("sim.swipe", tag=TAG_OK)
    await agent.wait_connector(lambda c: c["status"] == "Available" and not c["lock"]["locked"], what="released")
    assert not (await snapshot(agent))["locked"]
    assert calls_since(csms, "Authorize", mark) == [] and calls_since(csms, "StartTransaction", mark) == []
    assert [s for s, _ in statuses(csms, mark)] == ["Finishing", "Available"]


async def test_ev_side_disconnect_unlocks_by_default(csms, run_agent):
    """TC_005_1_CS: UnlockConnectorOnEVSideDisconnect true (the default): the cable is released as soon as
    the contactor's mirror contact reads open (never while the outlet may carry mains)."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.unplug")
    released = await agent.wait_connector(lambda c: c["status"] == "Available" and not c["lock"]["locked"],
                                          timeout=2, what="Available and unlocked")
    assert not released["contactor_closed"] and not (await snapshot(agent))["locked"]


async def test_status_leds_follow_the_connector_status(csms, run_agent):
    """The sim board's status LEDs: ready while Available/Preparing, charging while Charging, off while
    Unavailable; `evse status` and the sim snapshot show them."""
    agent = await online(run_agent, csms)
    assert (await snapshot(agent))["indicator"] == "ready"
    await charge(agent, csms, TAG_OK)
    assert (await snapshot(agent))["indicator"] == "charging"
    assert (await agent.connector())["indicator"] == "charging"
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["status"] == "Available", what="Available")
    assert (await snapshot(agent))["indicator"] == "ready"
    assert await csms.call(STATION_ID, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == {
        "status": "Accepted"}
    await agent.wait_connector(lambda c: c["status"] == "Unavailable", what="Unavailable")
    assert (await snapshot(agent))["indicator"] == "off"


async def test_evse_sim_fault_lock_and_sim_status_cli(csms, run_agent):
    """`evse sim fault lock on|off` and `evse sim status [--json]`, run as a technician runs them."""
    agent = await online(run_agent, csms)
    socket = str(agent.socket)
    result = await run_evse("sim", "fault", "lock", "on", "--socket", socket)
    assert result.returncode == 0, result.stderr
    await agent.cmd("sim.plug")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await agent.wait_connector(lambda c: c["status"] == "Faulted", what="Faulted")

    result = await run_evse("sim", "status", "--json", "--socket", socket)
    (connector,) = json.loads(result.stdout)["connectors"]
    assert connector["faults"] == ["lock"] and connector["indicator"] == "fault" and not connector["locked"]
    table = (await run_evse("sim", "status", "--socket", socket)).stdout
    assert "lock unlocked" in table and "LEDs fault" in table and "faults lock" in table
    result = await run_evse("sim", "fault", "lock", "off", "--socket", socket)
    assert result.returncode == 0, result.stderr
    assert not (await snapshot(agent))["faults"]
