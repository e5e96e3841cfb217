"""Complete charging sessions: the agent process against the bundled CSMS over real WebSockets."""

from __future__ import annotations

from tests.agent_harness import STATION_ID, TAG_OK, charge, online

pytestmark = __import__("pytest").mark.slow


async def test_plug_first_session_reaches_csms_in_order(csms, run_agent):
    agent = await online(run_agent, csms)
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


async def test_clock_aligned_meter_values_in_and_out_of_a_transaction(csms, run_agent):
    """TC_071_CS: ClockAlignedDataInterval: MeterValues stamped on the interval boundaries, context
    Sample.Clock; with the transactionId during a transaction, without it when idle."""
    agent = await run_agent(csms, ocpp_keys={"ClockAlignedDataInterval": 2, "MeterValueSampleInterval": 0})
    await csms.wait_connected(STATION_ID)
    await csms.wait_until(lambda: clock_aligned(csms), timeout=10)
    idle = clock_aligned(csms)[0]
    assert "transactionId" not in idle.payload
    await charge(agent, csms, TAG_OK)
    (tx_id,) = csms.transactions
    await csms.wait_until(lambda: any(f.payload.get("transactionId") == tx_id for f in clock_aligned(csms)),
                          timeout=10)
    for frame in clock_aligned(csms):
        stamp = frame.payload["meterValue"][0]["timestamp"]
        assert stamp.endswith(".000Z") and int(stamp[17:19]) % 2 == 0  # on a 2 s boundary
    assert not csms.calls("MeterValues") or all(
        v["context"] == "Sample.Clock" for f in csms.calls("MeterValues")
        for v in f.payload["meterValue"][0]["sampledValue"])


def clock_aligned(csms):
    return [f for f in csms.calls("MeterValues")
            if f.payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"]
