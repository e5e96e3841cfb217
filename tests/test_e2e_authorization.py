"""Authorization Cache, Local Authorization List and offline authorization against the real agent
(OCTT TC_007, TC_061, TC_008, TC_042_2, TC_043, TC_043_2, TC_043_3, TC_037_1..3)."""

from __future__ import annotations

import asyncio

import pytest

from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, TAG_UNKNOWN, calls_since, charge, online, wait_call

pytestmark = pytest.mark.slow


async def go_offline(agent, csms):
    csms.refuse_connections = True
    await csms.disconnect(STATION_ID)
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], what="agent offline")


async def come_back(agent, csms):
    csms.refuse_connections = False
    await agent.wait_status(lambda s: s["ocpp"]["connected"] and s["ocpp"]["registration"] == "Accepted",
                            what="agent online")


async def test_cached_id_starts_a_session_offline(csms, run_agent):
    """TC_007_CS: an id accepted online is cached; offline it starts a session without the CSMS."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: any(t.stopped for t in csms.transactions.values()))
    await go_offline(agent, csms)
    await charge(agent, csms, TAG_OK)  # accepted from the cache
    await agent.cmd("sim.unplug")
    mark = len(csms.frames)
    await come_back(agent, csms)
    await csms.wait_until(lambda: len([t for t in csms.transactions.values() if t.stopped]) == 2)
    assert calls_since(csms, "Authorize", mark) == []


async def test_clear_cache_forgets_cached_ids(csms, run_agent):
    """TC_061_CS: ClearCache is Accepted and the cached id no longer works offline."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["status"] == "Available", what="unplugged")
    assert await csms.call(STATION_ID, "ClearCache", {}) == {"status": "Accepted"}
    await go_offline(agent, csms)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await asyncio.sleep(0.5)
    connector = await agent.connector()
    assert not connector["transaction_active"] and not connector["contactor_closed"]


async def test_local_list_pre_authorizes_without_asking_the_csms(csms, run_agent):
    """TC_008_CS + TC_043_CS + TC_042_2_CS: SendLocalList Full, GetLocalListVersion, and a listed id
    starts at once with LocalPreAuthorize (no Authorize.req); the list survives a restart."""
    agent = await online(run_agent, csms, ocpp_keys=dict(LocalPreAuthorize=True))
    assert await csms.call(STATION_ID, "GetLocalListVersion", {}) == {"listVersion": 0}
    answer = await csms.call(STATION_ID, "SendLocalList", {
        "listVersion": 5, "updateType": "Full",
        "localAuthorizationList": [{"idTag": TAG_2, "idTagInfo": {"status": "Accepted"}}]})
    assert answer == {"status": "Accepted"}
    await agent.terminate()
    agent.start()
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted" and s["ocpp"]["connected"])
    assert await csms.call(STATION_ID, "GetLocalListVersion", {}) == {"listVersion": 5}
    mark = len(csms.frames)
    await charge(agent, csms, TAG_2)
    await wait_call(csms, "StartTransaction", mark)
    assert calls_since(csms, "Authorize", mark) == []


async def test_send_local_list_version_mismatch_and_failed(csms, run_agent):
    """TC_043_2_CS / TC_043_3_CS: a differential update not newer than the list → VersionMismatch;
    more entries than SendLocalListMaxLength → Failed; the list is unchanged."""
    await online(run_agent, csms)
    full = {"listVersion": 3, "updateType": "Full",
            "localAuthorizationList": [{"idTag": TAG_2, "idTagInfo": {"status": "Accepted"}}]}
    assert await csms.call(STATION_ID, "SendLocalList", full) == {"status": "Accepted"}
    stale = {"listVersion": 3, "updateType": "Differential", "localAuthorizationList": [{"idTag": TAG_OK}]}
    assert await csms.call(STATION_ID, "SendLocalList", stale) == {"status": "VersionMismatch"}
    too_many = {"listVersion": 4, "updateType": "Differential", "localAuthorizationList": [
        {"idTag": f"T{i:05d}", "idTagInfo": {"status": "Accepted"}} for i in range(1001)]}
    assert await csms.call(STATION_ID, "SendLocalList", too_many) == {"status": "Failed"}
    assert await csms.call(STATION_ID, "GetLocalListVersion", {}) == {"listVersion": 3}


async def test_blocked_in_local_list_is_refused_offline(csms, run_agent):
    agent = await online(run_agent, csms, ocpp_keys=dict(AllowOfflineTxForUnknownId=True))
    await csms.call(STATION_ID, "SendLocalList", {
        "listVersion": 1, "updateType": "Full",
        "localAuthorizationList": [{"idTag": TAG_UNKNOWN, "idTagInfo": {"status": "Blocked"}}]})
    await go_offline(agent, csms)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    await agent.cmd("sim.swipe", tag=TAG_UNKNOWN)
    await asyncio.sleep(0.5)
    assert not (await agent.connector())["transaction_active"]


@pytest.mark.parametrize("stop_on_invalid", [True, False])
async def test_offline_start_with_id_the_csms_then_rejects(csms, run_agent, stop_on_invalid):
    """TC_037_2_CS / TC_037_3_CS: an unknown id starts offline (AllowOfflineTxForUnknownId); after the
    reconnect StartTransaction.conf says Invalid: StopTransactionOnInvalidId true → StopTransaction
    DeAuthorized; false → energy stops (SuspendedEVSE) and the transaction stays open."""
    agent = await online(run_agent, csms, ocpp_keys=dict(AllowOfflineTxForUnknownId=True,
                                                           StopTransactionOnInvalidId=stop_on_invalid))
    await go_offline(agent, csms)
    await charge(agent, csms, TAG_UNKNOWN)
    await come_back(agent, csms)
    await csms.wait_until(lambda: any(t.start_id_tag_status == "Invalid" for t in csms.transactions.values()))
    (tx,) = csms.transactions.values()
    if stop_on_invalid:
        await csms.wait_until(lambda: tx.stopped)
        assert tx.stop_reason == "DeAuthorized"
        connector = await agent.wait_connector(lambda c: not c["transaction_active"], what="stopped")
    else:
        connector = await agent.wait_connector(lambda c: c["status"] == "SuspendedEVSE", what="SuspendedEVSE")
        assert connector["transaction_active"] and not tx.stopped
    assert connector["pilot_mode"] != "PWM"  # energy withdrawn at once: the PWM stops (x1)...
    # ...and the contactor opens once the EV has left C (an orderly stop, IEC 61851-1 Table A.6 seq. 10.2)
    await agent.wait_connector(lambda c: not c["contactor_closed"], what="contactor open after the EV left C")
