"""Core OCTT 1.6 charging-session cases end to end, one test each, named by what a CSMS operator sees."""

from __future__ import annotations

import asyncio

import pytest

from hil.csms import LocalCsms
from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, calls_since, charge, online, wait_call

pytestmark = pytest.mark.slow


def statuses(csms, since=0):
    return [f.payload["status"] for f in calls_since(csms, "StatusNotification", since)
            if f.payload["connectorId"] == 1]


async def test_plug_in_first_session(csms, run_agent):
    """TC_003_CS / TC_070_CS: Preparing on plug-in, Authorize, StartTransaction, Charging, sampled
    MeterValues during the transaction, StopTransaction on unplug, Available."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    await charge(agent, csms, TAG_OK)
    await csms.wait_until(lambda: len(calls_since(csms, "MeterValues", mark)) >= 2)
    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: any(t.stopped for t in csms.transactions.values()))
    await csms.wait_until(lambda: statuses(csms, mark)[-1:] == ["Available"])
    assert statuses(csms, mark)[:2] == ["Preparing", "Charging"]
    values = calls_since(csms, "MeterValues", mark)[0].payload["meterValue"][0]["sampledValue"]
    assert {v["measurand"] for v in values} >= {"Energy.Active.Import.Register", "Power.Active.Import",
                                                "Current.Import", "Voltage"}


async def test_identification_first_session(csms, run_agent):
    """TC_004_1_CS: card first (Preparing), then the cable: StartTransaction and Charging."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await wait_call(csms, "Authorize", mark)
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    assert calls_since(csms, "StartTransaction", mark) == []
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Charging" and c["contactor_closed"], what="Charging")
    assert len(calls_since(csms, "StartTransaction", mark)) == 1


async def test_identification_first_connection_timeout(csms, run_agent):
    """TC_004_2_CS: the card is accepted but no cable comes within ConnectionTimeOut: back to Available,
    no transaction."""
    agent = await online(run_agent, csms, ocpp_keys=dict(ConnectionTimeOut=2))
    mark = len(csms.frames)
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    await agent.wait_connector(lambda c: c["status"] == "Available", timeout=6, what="Available again")
    await agent.cmd("sim.plug")
    await asyncio.sleep(0.5)
    assert calls_since(csms, "StartTransaction", mark) == []


@pytest.mark.parametrize("stop_on_disconnect", [True, False])
async def test_ev_side_disconnect(csms, run_agent, stop_on_disconnect):
    """TC_005_1_CS / TC_005_3_CS: StopTransactionOnEVSideDisconnect true → StopTransaction EVDisconnected;
    false → the transaction stays, SuspendedEV, energy stops."""
    agent = await online(run_agent, csms, ocpp_keys=dict(StopTransactionOnEVSideDisconnect=stop_on_disconnect))
    await charge(agent, csms, TAG_OK)
    (tx,) = csms.transactions.values()
    await agent.cmd("sim.unplug")
    if stop_on_disconnect:
        await csms.wait_until(lambda: tx.stopped)
        assert tx.stop_reason == "EVDisconnected"
    else:
        connector = await agent.wait_connector(lambda c: c["status"] == "SuspendedEV", what="SuspendedEV")
        assert connector["transaction_active"] and not connector["contactor_closed"] and not tx.stopped


async def test_stop_with_the_same_card(csms, run_agent):
    """TC_068_CS: the card that started the session stops it: StopTransaction reason Local with its idTag,
    no second Authorize (§4.1: same id), Finishing while the cable stays."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    mark = len(csms.frames)
    await agent.cmd("sim.swipe", tag=TAG_OK)
    stop = await wait_call(csms, "StopTransaction", mark)
    assert stop.payload["idTag"] == TAG_OK and stop.payload.get("reason", "Local") == "Local"
    assert calls_since(csms, "Authorize", mark) == []
    await agent.wait_connector(lambda c: c["status"] == "Finishing" and not c["contactor_closed"], what="Finishing")


async def test_stop_with_another_card_of_the_same_parent(tmp_path, run_agent):
    """TC_069_CS: a different card whose parentIdTag matches the starting card's stops the session."""
    csms = LocalCsms(authorized_tags=[TAG_OK, TAG_2], parent_id_tags={TAG_OK: "FLEET-1", TAG_2: "FLEET-1"},
                     record_path=tmp_path / "csms.jsonl")
    await csms.start()
    try:
        agent = await online(run_agent, csms)
        await charge(agent, csms, TAG_OK)
        mark = len(csms.frames)
        await agent.cmd("sim.swipe", tag=TAG_2)
        stop = await wait_call(csms, "StopTransaction", mark)
        assert stop.payload["idTag"] == TAG_2
        assert len(calls_since(csms, "Authorize", mark)) == 1  # a different id is authorized first
    finally:
        await csms.stop()


async def test_hard_reset_without_transaction(csms, run_agent):
    """TC_013_CS: Reset Hard while idle: Accepted and a new BootNotification, no StopTransaction."""
    await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "Reset", {"type": "Hard"}) == {"status": "Accepted"}
    await wait_call(csms, "BootNotification", mark)
    assert calls_since(csms, "StopTransaction", mark) == []


async def test_local_list_disabled_answers_not_supported(csms, run_agent):
    """TC_043_1_CS: with LocalAuthListEnabled false, SendLocalList answers NotSupported."""
    await online(run_agent, csms, ocpp_keys=dict(LocalAuthListEnabled=False))
    answer = await csms.call(STATION_ID, "SendLocalList", {"listVersion": 1, "updateType": "Full",
                                                          "localAuthorizationList": []})
    assert answer == {"status": "NotSupported"}
