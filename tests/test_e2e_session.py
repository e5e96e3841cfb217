"""Complete charging sessions: the agent process against the bundled CSMS over real WebSockets."""

from __future__ import annotations

from tests.agent_harness import STATION_ID, TAG_OK, charge

pytestmark = __import__("pytest").mark.slow


async def test_plug_first_session_reaches_csms_in_order(csms, run_agent):
    agent = await run_agent(csms)
    await csms.wait_connected(STATION_ID)
    await charge(agent, csms, TAG_OK)
    await agent.wait_connector(lambda c: (c["session_energy_wh"] or 0) > 3, what="energy flowing")
    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: any(t.stopped for t in csms.transactions.values()))
    actions = [f.action for f in csms.frames if f.direction == "in" and f.message_type == 2
               and f.action != "StatusNotification"]
    assert actions[:3] == ["BootNotification", "Authorize", "StartTransaction"]
    assert actions[-1] == "StopTransaction"
    assert set(actions[3:-1]) <= {"MeterValues", "Heartbeat"}
    (tx,) = csms.transactions.values()
    assert tx.stop_reason == "EVDisconnected"
    assert tx.meter_stop > tx.meter_start
    assert csms.violations == []
