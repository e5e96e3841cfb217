"""Resilience of the agent process against the bundled CSMS: boot, connection loss, CSMS restart,
kill -9, SIGTERM, a CSMS that refuses a transaction message, and bad config files.

Frames are compared "by content" (action + payload, without the message id): a transaction message
the CSMS receives twice would show up as two equal entries.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.ocpp.v16.transactions import queued_wire_messages
from hil.csms import Frame, LocalCsms
from tests.agent_harness import (
    REPO,
    STATION_ID,
    TAG_2,
    TAG_BLOCKED,
    TAG_OK,
    Agent,
    charge,
    registered,
    write_config,
)

pytestmark = pytest.mark.slow

TAGS = {TAG_OK: "Accepted", TAG_2: "Accepted", TAG_BLOCKED: "Blocked"}
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
CALL, CALLRESULT, CALLERROR = 2, 3, 4


# ---- helpers ---------------------------------------------------------------------------------------


def station_calls(csms: LocalCsms, actions=None, since: int = 0) -> list[Frame]:
    return [f for f in csms.frames[since:] if f.direction == "in" and f.message_type == CALL
            and (actions is None or f.action in actions)]


def content(frame: Frame) -> tuple[str, str]:
    return frame.action, json.dumps(frame.payload, sort_keys=True)


def assert_no_duplicates(frames: list[Frame]) -> None:
    seen: dict[tuple[str, str], Frame] = {}
    for frame in frames:
        key = content(frame)
        assert key not in seen, f"received twice: {frame.raw} (first as frame {seen[key].index})"
        seen[key] = frame


def register_wh(meter_values_payload: dict) -> int:
    """Energy.Active.Import.Register of the last meterValue entry of a MeterValues payload."""
    entry = meter_values_payload["meterValue"][-1]
    (value,) = [v["value"] for v in entry["sampledValue"] if v.get("measurand") == "Energy.Active.Import.Register"]
    return int(value)


async def wait_answer(csms: LocalCsms, action: str, since: int, timeout: float = 10.0) -> Frame:
    """The CSMS's CALLRESULT to the station's `action`, at frame index >= since."""
    return await csms.wait_frame(
        lambda f: f.direction == "out" and f.message_type == CALLRESULT and f.action == action, timeout, since)


def read_journal(workdir: Path) -> tuple[list[dict], list[tuple[str, dict]]]:
    """(transactions rows, queued (action, payload without transactionId) in order, as the 1.6 adapter sends
    them) of a stopped agent, read-only."""
    db = sqlite3.connect(f"file:{workdir / 'state' / 'journal.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        transactions = [dict(row) for row in db.execute("SELECT * FROM transactions ORDER BY local_id")]
        outbox = [(action, without_tx_id(payload)) for _, action, payload in queued_wire_messages(db)]
    finally:
        db.close()
    return transactions, outbox


def without_tx_id(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "transactionId"}


async def charging_with_samples(agent: Agent, csms: LocalCsms, samples: int = 1):
    """Charge TAG_OK; return the CSMS transaction once `samples` MeterValues were answered, right after
    an answer (the next sample is then ~1 s away, so nothing is in flight)."""
    await registered(agent)
    await charge(agent, csms, TAG_OK)
    await csms.wait_until(lambda: len(csms.transactions) == 1)
    (tx,) = csms.transactions.values()
    await csms.wait_until(lambda: len(tx.meter_values) >= samples - 1)
    await wait_answer(csms, "MeterValues", len(csms.frames))
    await csms.wait_until(lambda: len(tx.meter_values) >= samples)
    return tx


@pytest.fixture
async def own_csms():
    """Factory for CSMS instances a test configures itself; all are stopped afterwards."""
    servers: list[LocalCsms] = []

    async def factory(port: int = 0, **kwargs) -> LocalCsms:
        server = LocalCsms(authorized_tags=TAGS, **{"boot_interval": 60, **kwargs})
        await server.start(port=port)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


# ---- 1. boot ---------------------------------------------------------------------------------------


async def test_cold_boot_pending_then_accepted_sends_nothing_before_accepted(own_csms, run_agent):
    """OCTT TC_002_CS: Pending, the interval is honoured, nothing but BootNotification until Accepted."""
    # the two CSMS calls below must both be answered while the station is still Pending: the interval
    # leaves room for them on a loaded machine (with 1 s the second BootNotification could come first)
    interval = 3
    csms = await own_csms(boot_statuses=("Pending", "Accepted"), boot_interval=interval)
    agent = await run_agent(csms)
    pending = await wait_answer(csms, "BootNotification", 0)
    assert pending.payload["status"] == "Pending"
    # while Pending the station answers the CSMS, but refuses to start a transaction (OCPP 1.6 §4.2)
    answer = await csms.call(STATION_ID, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert [entry["key"] for entry in answer["configurationKey"]] == ["HeartbeatInterval"]
    answer = await csms.call(STATION_ID, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1})
    assert answer["status"] == "Rejected"
    assert len(csms.calls("BootNotification")) == 1, f"the Pending interval ({interval} s) must have been honoured"
    await csms.wait_until(lambda: {0, 1} <= set(csms.connector_statuses.get(STATION_ID, {})))
    calls = station_calls(csms)
    assert [f.action for f in calls[:2]] == ["BootNotification", "BootNotification"]
    gap = (calls[1].time - calls[0].time).total_seconds()
    assert interval - 0.1 <= gap < interval + 2, \
        f"second BootNotification {gap:.2f} s after the Pending answer (interval {interval} s)"
    answers = [f.payload["status"] for f in csms.frames
               if f.direction == "out" and f.message_type == CALLRESULT and f.action == "BootNotification"]
    assert answers == ["Pending", "Accepted"]
    assert [f.action for f in calls[2:4]] == ["StatusNotification", "StatusNotification"]
    assert {f.payload["connectorId"] for f in calls[2:4]} == {0, 1}
    assert csms.violations == []
    assert (await agent.status())["ocpp"]["registration"] == "Accepted"


async def test_csms_can_query_a_pending_station_and_trigger_its_boot(own_csms, run_agent):
    """OCPP 1.6 §4.2: while Pending the CSMS may retrieve information: a triggered MeterValues goes out while
    the station is still Pending (nothing untriggered does), and TriggerMessage(BootNotification) makes the
    station boot again at once instead of at the end of the (long) interval."""
    csms = await own_csms(boot_statuses=("Pending", "Accepted"), boot_interval=60)
    await run_agent(csms)
    await wait_answer(csms, "BootNotification", 0)
    answer = await csms.call(STATION_ID, "TriggerMessage", {"requestedMessage": "MeterValues", "connectorId": 1})
    assert answer == {"status": "Accepted"}
    triggered = await csms.wait_frame(lambda f: f.direction == "in" and f.action == "MeterValues", 10)
    assert triggered.payload["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    assert [f.action for f in station_calls(csms)] == ["BootNotification", "MeterValues"]

    answer = await csms.call(STATION_ID, "TriggerMessage", {"requestedMessage": "BootNotification"})
    assert answer == {"status": "Accepted"}
    accepted = await wait_answer(csms, "BootNotification", triggered.index, timeout=10)  # not 60 s later
    assert accepted.payload["status"] == "Accepted"
    await csms.wait_until(lambda: {0, 1} <= set(csms.connector_statuses.get(STATION_ID, {})))
    assert [f.action for f in station_calls(csms)][:3] == ["BootNotification", "MeterValues", "BootNotification"]
    assert csms.violations == []


async def test_cold_boot_accepted_boot_notification_then_available(csms, run_agent):
    """OCTT TC_001_CS: BootNotification with vendor/model from the config, then Available for 0 and 1."""
    await run_agent(csms)
    await csms.wait_until(lambda: {0, 1} <= set(csms.connector_statuses.get(STATION_ID, {})))
    calls = station_calls(csms)
    assert calls[0].action == "BootNotification"
    assert calls[0].payload["chargePointVendor"] == "TestVendor"
    assert calls[0].payload["chargePointModel"] == "TestModel"
    statuses = [(f.payload["connectorId"], f.payload["status"], f.payload["errorCode"]) for f in calls[1:3]]
    assert sorted(statuses) == [(0, "Available", "NoError"), (1, "Available", "NoError")]
    assert len(csms.calls("BootNotification")) == 1
    assert csms.violations == []


# ---- 2. the CSMS goes away -------------------------------------------------------------------------


async def test_connection_loss_during_transaction_queued_messages_arrive_once_in_order(csms, run_agent):
    """OCTT TC_036_CS (connection loss during a transaction) + TC_038_CS (stop while offline)."""
    agent = await run_agent(csms)
    tx = await charging_with_samples(agent, csms)
    csms.refuse_connections = True  # keeps the agent offline until we let it back
    await csms.disconnect(STATION_ID)
    cut = len(csms.frames)
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], what="agent offline")
    await agent.wait_status(lambda s: s["journal"]["pending"] >= 2, what="samples queued offline")
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: not c["transaction_active"], what="transaction stopped")
    status = await agent.status()
    assert not status["ocpp"]["connected"], "the stop must happen while offline"
    queued = status["journal"]["pending"]
    assert queued >= 3  # >= 2 MeterValues + StopTransaction

    csms.refuse_connections = False  # the agent reconnects by itself (reconnect_max_s = 1)
    await csms.wait_until(lambda: tx.stopped, timeout=15)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    await asyncio.sleep(0.3)  # room for a duplicate to show up

    tx_calls = station_calls(csms, TX_ACTIONS)
    assert_no_duplicates(tx_calls)
    actions = [f.action for f in tx_calls]
    assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction"
    assert set(actions[1:-1]) == {"MeterValues"}
    assert actions.count("StartTransaction") == 1 and actions.count("StopTransaction") == 1
    assert len(station_calls(csms, TX_ACTIONS, since=cut)) == queued  # the offline ones, each once
    meter_values = [f.payload for f in tx_calls if f.action == "MeterValues"]
    assert {p["transactionId"] for p in meter_values} == {tx.transaction_id}
    stamps = [p["meterValue"][0]["timestamp"] for p in meter_values]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), "MeterValues out of order"
    stop = tx_calls[-1].payload
    assert stop["transactionId"] == tx.transaction_id
    assert stop["reason"] == "EVDisconnected"
    assert stop["timestamp"] >= stamps[-1]
    assert tx.stop_count == 1
    assert tx.meter_stop >= register_wh(meter_values[-1])
    assert len(csms.calls("BootNotification")) == 1  # a reconnect is not a reboot
    assert csms.unknown_stops == [] and csms.other_meter_values == []
    assert csms.violations == []


async def test_whole_transaction_offline_is_delivered_to_a_restarted_csms(own_csms, run_agent):
    """OCTT TC_039_CS (whole transaction offline), TC_037_1_CS (offline start, valid idTag): the CSMS
    process is replaced; the new one assigns the transactionId that MeterValues/Stop must carry."""
    csms = await own_csms()
    port = urlsplit(csms.url).port
    agent = await run_agent(csms, ocpp_keys={"AllowOfflineTxForUnknownId": True})
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted" and s["ocpp"]["connected"])
    await csms.stop()
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], what="agent offline")

    await charge(agent, csms, TAG_OK)
    await agent.wait_status(lambda s: s["journal"]["pending"] >= 3, what="Start + 2 MeterValues queued")
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: not c["transaction_active"], what="transaction stopped")
    queued = (await agent.status())["journal"]["pending"]

    # a new CSMS process on the same address; it keeps registrations in its "database"
    new = await own_csms(port=port, assume_booted=True, first_transaction_id=500)
    await new.wait_until(lambda: any(t.stopped for t in new.transactions.values()), timeout=15)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    await asyncio.sleep(0.3)

    (tx,) = new.transactions.values()
    assert tx.transaction_id == 500
    assert tx.id_tag == TAG_OK and tx.start_id_tag_status == "Accepted"
    tx_calls = station_calls(new, TX_ACTIONS)
    assert_no_duplicates(tx_calls)
    assert len(tx_calls) == queued
    assert [f.action for f in tx_calls] == ["StartTransaction"] + ["MeterValues"] * (queued - 2) + ["StopTransaction"]
    assert {f.payload["transactionId"] for f in tx_calls[1:]} == {500}
    assert tx.stop_reason == "EVDisconnected"
    assert len(tx.meter_values) == queued - 2
    assert csms.calls("StartTransaction") == []
    assert new.calls("BootNotification") == []  # a reconnect is not a reboot (OCPP 1.6 §4.2)
    assert new.unknown_stops == [] and new.other_meter_values == []
    assert new.violations == []


async def test_csms_that_forgot_the_registration_gets_a_new_boot_and_loses_nothing(own_csms, run_agent):
    """A replaced CSMS without the station's registration answers SecurityError (errata 3.8): the agent
    registers again with BootNotification instead of burning TransactionMessageAttempts on it."""
    csms = await own_csms()
    port = urlsplit(csms.url).port
    agent = await run_agent(csms, ocpp_keys={"AllowOfflineTxForUnknownId": True, "TransactionMessageAttempts": 1})
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted" and s["ocpp"]["connected"])
    await csms.stop()
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], what="agent offline")
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: not c["transaction_active"], what="transaction stopped")

    new = await own_csms(port=port, first_transaction_id=700)  # knows nothing of the station
    await new.wait_until(lambda: any(t.stopped for t in new.transactions.values()), timeout=15)
    (tx,) = new.transactions.values()
    assert tx.transaction_id == 700 and tx.stop_reason == "EVDisconnected"
    (boot,) = new.calls("BootNotification")
    refused = [v for v in new.violations if v.kind == "call_before_accepted"]
    # only what was already on its way when the first SecurityError came back
    assert 1 <= len(refused) <= 2 and all(v.frame.index < boot.index for v in refused)
    assert (await agent.status())["journal"]["dropped"] == 0
    after_boot = station_calls(new, TX_ACTIONS, since=boot.index)
    assert_no_duplicates(after_boot)
    assert [f.action for f in after_boot][0] == "StartTransaction"
    assert after_boot[-1].action == "StopTransaction"


async def test_connection_loss_while_charging_queued_meter_values_go_before_new_ones(csms, run_agent):
    """OCTT TC_036_CS: after the reconnect all queued MeterValues are sent in chronological order
    before any new ones, none twice, all with the CSMS transactionId."""
    agent = await run_agent(csms)
    tx = await charging_with_samples(agent, csms)
    csms.refuse_connections = True
    await csms.disconnect(STATION_ID)
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], what="agent offline")
    await agent.wait_status(lambda s: s["journal"]["pending"] >= 2, what="samples queued offline")
    cut = len(csms.frames)
    csms.refuse_connections = False
    await csms.wait_until(lambda: len(station_calls(csms, ["MeterValues"], since=cut)) >= 4, timeout=15)
    await wait_answer(csms, "MeterValues", len(csms.frames))
    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: tx.stopped)

    after = station_calls(csms, ["MeterValues"], since=cut)
    reconnected = ocpp_timestamp(station_calls(csms, since=cut)[0].time)  # the first CALL after it
    stamps = [f.payload["meterValue"][0]["timestamp"] for f in station_calls(csms, ["MeterValues"])]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    queued = [f for f in after if f.payload["meterValue"][0]["timestamp"] < reconnected]
    assert len(queued) >= 2 and after[:len(queued)] == queued  # the old ones first
    assert {f.payload["transactionId"] for f in after} == {tx.transaction_id}
    assert_no_duplicates(station_calls(csms, TX_ACTIONS))
    assert csms.violations == []


# ---- 3. kill -9 --------------------------------------------------------------------------------------


async def test_kill9_mid_transaction_restart_stops_it_with_power_loss(csms, run_agent, tmp_path):
    """OCTT TC_032_2_CS style (power failure): after the restart the interrupted transaction is stopped
    with PowerLoss at the last journaled meter value; nothing arrives twice."""
    agent = await run_agent(csms)
    tx = await charging_with_samples(agent, csms, samples=2)
    # the answer is committed (the next sample is still ~1 s away): a kill before that would resend it
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="the answer committed")
    received_wh = register_wh(station_calls(csms, ["MeterValues"])[-1].payload)
    agent.kill9()
    transactions, _ = read_journal(tmp_path)
    (row,) = transactions
    assert row["stopped_at"] is None and row["csms_tx_id"] == str(tx.transaction_id)

    agent.start()
    await agent.ready()
    await csms.wait_until(lambda: tx.stopped, timeout=15)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    await asyncio.sleep(0.3)

    assert tx.stop_reason == "PowerLoss"
    assert tx.meter_stop == round(row["last_meter"]) >= received_wh
    assert tx.stop_timestamp == row["last_meter_at"]
    last_mv = station_calls(csms, ["MeterValues"])[-1].payload
    assert register_wh(last_mv) == tx.meter_stop  # the last journaled sample is what the CSMS got last
    tx_calls = station_calls(csms, TX_ACTIONS)
    assert_no_duplicates(tx_calls)
    assert len(csms.calls("StartTransaction")) == 1
    assert tx.stop_count == 1
    assert len(csms.calls("BootNotification")) == 2  # a restart is a reboot: boot again
    assert csms.violations == []


async def test_kill9_with_resume_configured_continues_the_same_transaction(csms, run_agent):
    """[charging] resume_after_power_loss: the EV is still plugged after the restart, so the interrupted
    transaction goes on (no PowerLoss stop, no second StartTransaction) until the EV leaves."""
    agent = await run_agent(csms, extra="resume_after_power_loss = true")
    tx = await charging_with_samples(agent, csms, samples=2)
    # the last answer is committed (a kill before that would resend it)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="the answer committed")
    agent.kill9()
    agent.start()
    await agent.ready()
    connector = await agent.wait_connector(lambda c: c["status"] == "Charging" and c["contactor_closed"],
                                           timeout=15, what="charging again")
    assert connector["transaction_id"] == tx.transaction_id
    mark = len(csms.frames)
    await csms.wait_until(lambda: len(station_calls(csms, ["MeterValues"], since=mark)) >= 2)
    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: tx.stopped)
    assert tx.stop_reason == "EVDisconnected" and tx.stop_count == 1
    assert len(csms.calls("StartTransaction")) == 1
    assert {f.payload["transactionId"] for f in station_calls(csms, ["MeterValues"])} == {tx.transaction_id}
    assert_no_duplicates(station_calls(csms, TX_ACTIONS))


async def test_kill9_while_offline_every_queued_message_arrives_exactly_once(csms, run_agent, tmp_path):
    """OCTT TC_032_2_CS + TC_036_CS: queued MeterValues survive kill -9, then go out once, in order,
    followed by the PowerLoss StopTransaction."""
    agent = await run_agent(csms)
    tx = await charging_with_samples(agent, csms)
    csms.refuse_connections = True
    await csms.disconnect(STATION_ID)
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], what="agent offline")
    await agent.wait_status(lambda s: s["journal"]["pending"] >= 2, what="samples queued offline")
    agent.kill9()
    _, queued = read_journal(tmp_path)
    assert len(queued) >= 2 and {action for action, _ in queued} == {"MeterValues"}

    agent.start()
    await agent.ready()
    await agent.wait_status(lambda s: s["journal"]["pending"] == len(queued) + 1, what="PowerLoss stop queued")
    cut = len(csms.frames)
    csms.refuse_connections = False
    await csms.wait_until(lambda: tx.stopped, timeout=15)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    await asyncio.sleep(0.3)

    delivered = station_calls(csms, TX_ACTIONS, since=cut)
    assert [(f.action, without_tx_id(f.payload)) for f in delivered[:-1]] == queued
    assert delivered[-1].action == "StopTransaction"
    assert delivered[-1].payload["reason"] == "PowerLoss"
    assert {f.payload["transactionId"] for f in delivered} == {tx.transaction_id}
    assert tx.meter_stop == register_wh(queued[-1][1])
    assert_no_duplicates(station_calls(csms, TX_ACTIONS))
    assert tx.stop_count == 1
    assert csms.violations == []


# ---- 4. SIGTERM --------------------------------------------------------------------------------------


async def test_sigterm_keeps_the_transaction_and_restart_stops_it_with_power_loss(csms, run_agent, tmp_path):
    """Default stop_on_shutdown = false: SIGTERM exits 0 quickly, the transaction stays open in the
    journal and is closed with PowerLoss after the restart (TC_032_2_CS style)."""
    agent = await run_agent(csms)
    tx = await charging_with_samples(agent, csms)
    started = time.monotonic()
    assert await agent.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5
    transactions, outbox = read_journal(tmp_path)
    (row,) = transactions
    assert row["stopped_at"] is None
    assert not tx.stopped

    agent.start()
    await agent.ready()
    await csms.wait_until(lambda: tx.stopped, timeout=15)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    assert tx.stop_reason == "PowerLoss"
    assert tx.meter_stop == round(row["last_meter"])
    assert_no_duplicates(station_calls(csms, TX_ACTIONS))
    assert tx.stop_count == 1
    assert csms.violations == []


async def test_sigterm_with_stop_on_shutdown_journals_stop_other_before_exit(csms, run_agent, tmp_path):
    """OCTT TC_032_1_CS style (configured to stop transactions before going down): stop_on_shutdown = true:
    the StopTransaction (reason Other) is on disk before the process exits
    and reaches the CSMS exactly once, before the exit or after the restart."""
    agent = await run_agent(csms, extra="stop_on_shutdown = true")
    tx = await charging_with_samples(agent, csms)
    started = time.monotonic()
    assert await agent.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5
    transactions, outbox = read_journal(tmp_path)
    if tx.stopped:  # delivered before the exit: the journal has forgotten it
        assert transactions == [] and outbox == []
    else:
        (row,) = transactions
        assert row["stop_reason"] == "other" and row["stopped_at"] is not None
        assert outbox[-1][0] == "StopTransaction" and outbox[-1][1]["reason"] == "Other"

    agent.start()
    await agent.ready()
    await csms.wait_until(lambda: tx.stopped, timeout=15)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    await asyncio.sleep(0.3)
    assert tx.stop_reason == "Other"
    assert tx.stop_count == 1
    assert len(csms.calls("StopTransaction")) == 1
    assert_no_duplicates(station_calls(csms, TX_ACTIONS))
    assert csms.violations == []


# ---- 5. CALLERROR on a transaction message --------------------------------------------------------


async def test_start_transaction_callerror_is_retried_once_then_dropped_later_messages_use_minus_one(
        csms, run_agent):
    """OCPP 1.6 §3.7.1 + errata 3.18: TransactionMessageAttempts=2, RetryInterval=1 -> one retry after
    ~1 s, then the Start is dropped and the transaction's later messages carry transactionId -1."""
    csms.fail_next("StartTransaction", 2, "InternalError")
    agent = await run_agent(csms, ocpp_keys={"TransactionMessageAttempts": 2,
                                             "TransactionMessageRetryInterval": 1})
    await registered(agent)
    await charge(agent, csms, TAG_OK)
    await csms.wait_until(lambda: len(csms.other_meter_values) >= 1, timeout=15)
    starts = csms.calls("StartTransaction")
    assert len(starts) == 2
    assert starts[0].payload == starts[1].payload  # the same message, retried
    gap = (starts[1].time - starts[0].time).total_seconds()
    assert 0.9 <= gap < 3.0, f"retry after {gap:.2f} s, expected ~1 s"
    errors = [f for f in csms.frames if f.direction == "out" and f.message_type == CALLERROR]
    assert [f.action for f in errors] == ["StartTransaction", "StartTransaction"]
    status = await agent.status()
    assert status["journal"]["dropped"] == 1
    assert status["connectors"][0]["transaction_active"]

    await agent.cmd("sim.unplug")
    await csms.wait_until(lambda: len(csms.unknown_stops) == 1, timeout=10)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    assert csms.transactions == {}
    assert len(csms.calls("StartTransaction")) == 2  # never a third attempt
    assert csms.unknown_stops[0].payload["transactionId"] == -1
    assert csms.unknown_stops[0].payload["reason"] == "EVDisconnected"
    assert {f.payload["transactionId"] for f in csms.calls("MeterValues")} == {-1}
    assert "dropped StartTransaction" in agent.log_path.read_text()
    assert csms.violations == []


# ---- 6. bad config files -----------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


GOOD = """\
[station]
id = "CP-1"
[ocpp]
url = "ws://127.0.0.1:9/ocpp"
[board]
file = "board.toml"
[journal]
path = "state/journal.sqlite"
[control]
socket = "control.sock"
"""


@pytest.mark.parametrize(("name", "text", "needle"), [
    ("unknown key", GOOD + "[charging]\nmax_curent_a = 16\n", "max_curent_a"),
    ("wrong type", GOOD + '[charging]\nmax_current_a = "sixteen"\n', "max_current_a"),
    ("missing station id", GOOD.replace('id = "CP-1"\n', ""), "[station] id"),
    ("invalid TOML", GOOD + "[charging\nmax_current_a = 16\n", "line 11"),
])
def test_bad_config_exits_2_with_one_line_naming_the_key(tmp_path, name, text, needle):
    write_config(tmp_path, "ws://127.0.0.1:9/ocpp")  # for board.toml
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    result = run_cli("run", "--config", str(bad), cwd=tmp_path)
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0] and str(bad) in lines[0]
    assert not (tmp_path / "state").exists()  # nothing was started


@pytest.mark.parametrize(("damage", "exit_code"), [("garbage", 1), ("under a regular file", 2)])
def test_unusable_journal_exits_with_one_line_naming_the_path(tmp_path, damage, exit_code):
    """A corrupt journal is a failure (1); a path that can be no journal is a configuration error (2)."""
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    journal = tmp_path / "state" / "journal.sqlite"
    if damage == "garbage":
        journal.parent.mkdir()
        journal.write_bytes(b"\x13\x37 not a database " * 500)
    else:
        (tmp_path / "blocker").write_text("a regular file")
        config.write_text(config.read_text().replace("state/journal.sqlite", "blocker/journal.sqlite"))
        journal = tmp_path / "blocker" / "journal.sqlite"
    result = run_cli("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == exit_code, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and str(journal) in lines[0], result.stderr


def test_config_check_accepts_a_good_config(tmp_path):
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    result = run_cli("config", "check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    assert run_cli("config", "check", "--config", str(good), cwd=tmp_path).returncode == 0
