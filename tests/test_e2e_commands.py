"""CSMS-initiated commands, end to end: the agent process against the bundled CSMS over real WebSockets.

Each test asserts what a CSMS operator sees (the frames and answers LocalCsms recorded) and what the
station does (agent status and the simulated hardware, through the control socket). OCTT 1.6 test case
ids (chapter 2, "SUT Charge Point") are given where a test follows one.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from hil.csms import LocalCsms
from tests.agent_harness import (
    STATION_ID,
    TAG_2,
    TAG_BLOCKED,
    TAG_OK,
    TAG_UNKNOWN,
    Agent,
    calls_since,
    charge,
    online,
    wait_call,
)

pytestmark = pytest.mark.slow

CALLRESULT, CALLERROR = 3, 4

# OCPP 1.6 §9.1 configuration keys a Core charge point must report.
REQUIRED_CORE_KEYS = {
    "AuthorizeRemoteTxRequests", "ClockAlignedDataInterval", "ConnectionTimeOut", "ConnectorPhaseRotation",
    "GetConfigurationMaxKeys", "HeartbeatInterval", "LocalAuthorizeOffline", "LocalPreAuthorize",
    "MeterValuesAlignedData", "MeterValuesSampledData", "MeterValueSampleInterval", "NumberOfConnectors",
    "ResetRetries", "StopTransactionOnEVSideDisconnect", "StopTransactionOnInvalidId", "StopTxnAlignedData",
    "StopTxnSampledData", "SupportedFeatureProfiles", "TransactionMessageAttempts",
    "TransactionMessageRetryInterval", "UnlockConnectorOnEVSideDisconnect",
}


# ---- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _station_keeps_to_the_protocol(csms):
    yield
    assert csms.violations == [], f"the station broke the protocol: {csms.violations}"


# ---- helpers ---------------------------------------------------------------------------------------


async def call(csms: LocalCsms, action: str, payload: dict) -> dict:
    return await csms.call(STATION_ID, action, payload)


async def change_configuration(csms: LocalCsms, key: str, value: str) -> str:
    return (await call(csms, "ChangeConfiguration", {"key": key, "value": value}))["status"]


async def configuration(csms: LocalCsms, keys: list[str] | None = None) -> dict[str, dict]:
    answer = await call(csms, "GetConfiguration", {"key": keys} if keys is not None else {})
    return {entry["key"]: entry for entry in answer["configurationKey"]}


async def status_notification(csms: LocalCsms, connector: int, status: str, since: int, timeout: float = 10.0):
    return await wait_call(csms, "StatusNotification", since,
                           lambda p: p["connectorId"] == connector and p["status"] == status, timeout)


def answer_frame(csms: LocalCsms, action: str, since: int = 0):
    """The station's CALLRESULT/CALLERROR to the CSMS's `action` at index >= since."""
    return next(f for f in csms.frames[since:]
                if f.direction == "in" and f.message_type in (CALLRESULT, CALLERROR) and f.action == action)


async def answer_to(csms: LocalCsms, unique_id: str, timeout: float = 5.0):
    """The station's answer to the CSMS frame with this message id."""
    return await csms.wait_frame(lambda f: f.direction == "in" and f.message_type in (CALLRESULT, CALLERROR)
                                 and f.unique_id == unique_id, timeout)


async def charging(agent: Agent, csms: LocalCsms, tag: str = TAG_OK) -> int:
    """Plug in, swipe, wait until energy flows and the CSMS's transaction id is known to the station."""
    await charge(agent, csms, tag)
    status = await agent.wait_connector(lambda c: c["transaction_id"] is not None, what="transaction id")
    return status["transaction_id"]


async def snapshot(agent: Agent, connector: int = 1) -> dict:
    return (await agent.cmd("sim.snapshot"))["connectors"][connector - 1]


async def restart(agent: Agent, csms: LocalCsms) -> int:
    """SIGTERM, start again on the same files; returns the frame index the new process starts at."""
    assert await agent.terminate() == 0
    await csms.wait_disconnected(STATION_ID)
    mark = len(csms.frames)
    agent.start()
    await agent.ready()
    await wait_call(csms, "BootNotification", mark)
    return mark


async def wait_log(agent: Agent, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in agent.log_path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text!r} not in the agent log:\n{agent.log_tail()}")
        await asyncio.sleep(0.05)


# ---- RemoteStartTransaction ------------------------------------------------------------------------


@pytest.mark.parametrize("authorize_remote", [True, False], ids=["authorize", "no-authorize"])
async def test_remote_start_with_cable_plugged_first_charges(csms, run_agent, authorize_remote):
    """TC_010_CS: EV plugged in, then RemoteStartTransaction. With AuthorizeRemoteTxRequests the idTag is
    authorized first; without it (set through ChangeConfiguration) StartTransaction goes out directly."""
    agent = await online(run_agent, csms)
    if not authorize_remote:
        assert await change_configuration(csms, "AuthorizeRemoteTxRequests", "false") == "Accepted"
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1}) == {"status": "Accepted"}

    start = await wait_call(csms, "StartTransaction", mark)
    assert start.payload["connectorId"] == 1 and start.payload["idTag"] == TAG_OK
    authorizes = calls_since(csms, "Authorize", mark)
    if authorize_remote:
        assert [a.payload["idTag"] for a in authorizes] == [TAG_OK]
        assert authorizes[0].index < start.index
    else:
        assert authorizes == []
    await agent.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging", what="Charging")
    await status_notification(csms, 1, "Charging", start.index)
    (tx,) = csms.transactions.values()
    assert tx.start_id_tag_status == "Accepted" and not tx.stopped


@pytest.mark.parametrize("authorize_remote", [True, False], ids=["authorize", "no-authorize"])
async def test_remote_start_first_then_plug_charges(csms, run_agent, authorize_remote):
    """TC_011_1_CS: RemoteStartTransaction on an empty connector makes it Preparing; the transaction
    starts when the EV is plugged in."""
    agent = await online(run_agent, csms)
    if not authorize_remote:
        assert await change_configuration(csms, "AuthorizeRemoteTxRequests", "false") == "Accepted"
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1}) == {"status": "Accepted"}

    preparing = await status_notification(csms, 1, "Preparing", mark)
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    assert calls_since(csms, "StartTransaction", mark) == []  # nothing starts without an EV
    await agent.cmd("sim.plug")
    start = await wait_call(csms, "StartTransaction", mark)
    assert start.payload["idTag"] == TAG_OK and start.payload["connectorId"] == 1
    assert preparing.index < start.index
    authorizes = calls_since(csms, "Authorize", mark)
    if authorize_remote:
        assert [a.payload["idTag"] for a in authorizes] == [TAG_OK]
        assert authorizes[0].index < start.index
    else:
        assert authorizes == []
    await agent.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging", what="Charging")


async def test_remote_start_without_plug_times_out_after_connection_timeout(csms, run_agent):
    """TC_011_2_CS: no EV within ConnectionTimeOut (set to 2 s) after RemoteStartTransaction: no
    transaction, the connector goes back to Available, and a later plug-in starts nothing."""
    agent = await online(run_agent, csms)
    assert await change_configuration(csms, "ConnectionTimeOut", "2") == "Accepted"
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1}) == {"status": "Accepted"}

    preparing = await status_notification(csms, 1, "Preparing", mark)
    available = await status_notification(csms, 1, "Available", preparing.index, timeout=6.0)
    waited = (available.time - preparing.time).total_seconds()
    assert 1.5 <= waited <= 4.0, f"went back to Available after {waited:.1f} s, ConnectionTimeOut is 2 s"
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing after plug-in")
    await asyncio.sleep(0.5)
    assert not (await agent.connector())["transaction_active"]
    assert calls_since(csms, "StartTransaction", mark) == []
    assert csms.transactions == {}


async def test_remote_start_on_connector_zero_is_rejected(csms, run_agent):
    """TC_027_CS: connectorId 0 is not a connector: Rejected, and nothing starts on the plugged EV."""
    agent = await online(run_agent, csms)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 0}) == {"status": "Rejected"}

    await asyncio.sleep(0.5)
    assert calls_since(csms, "Authorize", mark) == [] and calls_since(csms, "StartTransaction", mark) == []
    connector = await agent.connector()
    assert connector["status"] == "Preparing" and not connector["transaction_active"]


async def test_remote_start_on_busy_connector_is_rejected(csms, run_agent):
    """TC_026_CS: RemoteStartTransaction for a connector with a transaction running: Rejected, the
    running session is untouched and no second transaction starts."""
    agent = await online(run_agent, csms)
    tx_id = await charging(agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_2, "connectorId": 1}) == {"status": "Rejected"}
    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_2}) == {"status": "Rejected"}

    await asyncio.sleep(0.5)
    assert calls_since(csms, "StartTransaction", mark) == [] and calls_since(csms, "StopTransaction", mark) == []
    connector = await agent.connector()
    assert connector["contactor_closed"] and connector["transaction_id"] == tx_id
    assert connector["id_tag"] == TAG_OK


async def test_remote_start_on_unknown_connector_is_rejected(csms, run_agent):
    """RemoteStartTransaction for a connector the station does not have: Rejected, nothing starts."""
    await online(run_agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 9}) == {"status": "Rejected"}

    await asyncio.sleep(0.3)
    assert calls_since(csms, "Authorize", mark) == [] and csms.transactions == {}


async def test_remote_start_with_refused_id_tag_starts_nothing(csms, run_agent):
    """AuthorizeRemoteTxRequests true: the idTag of a remote start is authorized like a card; the CSMS
    answers Blocked, so the request was Accepted but no transaction starts and no energy flows."""
    agent = await online(run_agent, csms)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    mark = len(csms.frames)

    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_BLOCKED, "connectorId": 1}) == {
        "status": "Accepted"}

    await wait_call(csms, "Authorize", mark, lambda p: p["idTag"] == TAG_BLOCKED)
    await wait_log(agent, f"card {TAG_BLOCKED}: Blocked")
    await asyncio.sleep(0.5)
    assert calls_since(csms, "StartTransaction", mark) == []
    connector = await agent.connector()
    assert connector["status"] == "Preparing" and not connector["transaction_active"]
    assert (await snapshot(agent))["energy_wh"] == 0


# ---- RemoteStopTransaction -------------------------------------------------------------------------


async def test_remote_stop_ends_the_transaction_and_opens_the_contactor(csms, run_agent):
    """TC_012_CS: RemoteStopTransaction of the running transaction: Accepted, StopTransaction with
    reason Remote, contactor open."""
    agent = await online(run_agent, csms)
    tx_id = await charging(agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "RemoteStopTransaction", {"transactionId": tx_id}) == {"status": "Accepted"}

    stop = await wait_call(csms, "StopTransaction", mark)
    assert stop.payload["transactionId"] == tx_id and stop.payload["reason"] == "Remote"
    connector = await agent.wait_connector(lambda c: not c["transaction_active"], what="transaction over")
    assert not connector["contactor_closed"] and connector["status"] == "Finishing"
    sim = await snapshot(agent)
    assert not sim["contactor_commanded"] and not sim["contactor_feedback"]
    tx = csms.transactions[tx_id]
    assert tx.stop_reason == "Remote" and tx.stop_count == 1 and tx.meter_stop >= tx.meter_start


async def test_remote_stop_of_unknown_transaction_is_rejected(csms, run_agent):
    """TC_028_CS: RemoteStopTransaction with a transactionId the station does not run: Rejected, and the
    running session goes on."""
    agent = await online(run_agent, csms)
    tx_id = await charging(agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "RemoteStopTransaction", {"transactionId": tx_id + 1000}) == {"status": "Rejected"}

    await wait_call(csms, "MeterValues", mark, lambda p: p.get("transactionId") == tx_id)
    assert calls_since(csms, "StopTransaction", mark) == []
    connector = await agent.connector()
    assert connector["contactor_closed"] and connector["transaction_id"] == tx_id


# ---- local authorization ---------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "verdict"), [(TAG_BLOCKED, "Blocked"), (TAG_UNKNOWN, "Invalid")])
async def test_refused_card_starts_nothing_and_never_closes_the_contactor(csms, run_agent, tag, verdict):
    """TC_023_CS: a card the CSMS answers Blocked / Invalid: no StartTransaction, no energy."""
    agent = await online(run_agent, csms)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    mark = len(csms.frames)

    await agent.cmd("sim.swipe", tag=tag)

    authorize = await wait_call(csms, "Authorize", mark, lambda p: p["idTag"] == tag)
    answer = await csms.wait_frame(lambda f: f.direction == "out" and f.unique_id == authorize.unique_id,
                                   since=authorize.index)
    assert answer.payload["idTagInfo"]["status"] == verdict
    await wait_log(agent, f"card {tag}: {verdict}")  # the station has the verdict
    await asyncio.sleep(0.5)
    assert calls_since(csms, "StartTransaction", mark) == []
    connector = await agent.connector()
    assert connector["status"] == "Preparing" and not connector["transaction_active"]
    assert not connector["contactor_closed"]
    sim = await snapshot(agent)
    assert not sim["contactor_commanded"] and sim["energy_wh"] == 0
    assert "contactor closed" not in agent.log_path.read_text()


# ---- GetConfiguration / ChangeConfiguration --------------------------------------------------------


async def test_get_configuration_without_keys_reports_every_core_key(csms, run_agent):
    """TC_019_CS: GetConfiguration with no keys returns all keys, read-only ones marked as such."""
    await online(run_agent, csms)

    answer = await call(csms, "GetConfiguration", {})

    assert not answer.get("unknownKey")
    keys = {entry["key"]: entry for entry in answer["configurationKey"]}
    assert len(keys) == len(answer["configurationKey"])  # each key once
    assert REQUIRED_CORE_KEYS <= keys.keys()
    assert keys["HeartbeatInterval"] == {"key": "HeartbeatInterval", "readonly": False, "value": "60"}
    assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True, "value": "1"}
    assert keys["SupportedFeatureProfiles"]["readonly"] is True
    assert "Core" in keys["SupportedFeatureProfiles"]["value"].split(",")
    assert keys["MeterValueSampleInterval"]["value"] == "1"  # the station maker's value from agent.toml
    assert "AuthorizationKey" not in keys


async def test_get_configuration_of_specific_keys_lists_unknown_ones(csms, run_agent):
    """TC_019_CS (keys given): known keys are answered, unknown ones come back in unknownKey."""
    await online(run_agent, csms)

    answer = await call(csms, "GetConfiguration", {"key": ["HeartbeatInterval", "NumberOfConnectors", "FooBar"]})

    assert answer["configurationKey"] == [
        {"key": "HeartbeatInterval", "readonly": False, "value": "60"},
        {"key": "NumberOfConnectors", "readonly": True, "value": "1"},
    ]
    assert answer["unknownKey"] == ["FooBar"]


async def test_change_configuration_of_writable_key_is_accepted_and_reported(csms, run_agent):
    """TC_021_CS: ChangeConfiguration of a read-write key: Accepted, and GetConfiguration shows it."""
    await online(run_agent, csms)

    assert await change_configuration(csms, "MeterValueSampleInterval", "7") == "Accepted"
    assert await change_configuration(csms, "StopTransactionOnInvalidId", "false") == "Accepted"

    keys = await configuration(csms, ["MeterValueSampleInterval", "StopTransactionOnInvalidId"])
    assert keys["MeterValueSampleInterval"]["value"] == "7"
    assert keys["StopTransactionOnInvalidId"]["value"] == "false"


async def test_change_configuration_of_unknown_key_is_not_supported(csms, run_agent):
    """TC_040_1_CS: an unknown key: NotSupported, and it does not appear afterwards."""
    await online(run_agent, csms)

    assert await change_configuration(csms, "FooBarInterval", "10") == "NotSupported"

    answer = await call(csms, "GetConfiguration", {"key": ["FooBarInterval"]})
    assert not answer.get("configurationKey") and answer["unknownKey"] == ["FooBarInterval"]


@pytest.mark.parametrize(("key", "value"), [
    ("HeartbeatInterval", "abc"),
    ("MeterValueSampleInterval", "-1"),
    ("StopTransactionOnInvalidId", "maybe"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register,Temperature.Of.The.Moon"),
])
async def test_change_configuration_with_invalid_value_is_rejected(csms, run_agent, key, value):
    """TC_040_2_CS: a value the key cannot take: Rejected, and the old value stays."""
    await online(run_agent, csms)
    before = (await configuration(csms, [key]))[key]["value"]

    assert await change_configuration(csms, key, value) == "Rejected"

    assert (await configuration(csms, [key]))[key]["value"] == before


async def test_change_configuration_of_read_only_key_is_rejected(csms, run_agent):
    """OCPP 1.6 §5.3: a read-only key cannot be changed: Rejected, the value stays."""
    await online(run_agent, csms)

    assert await change_configuration(csms, "NumberOfConnectors", "4") == "Rejected"

    assert (await configuration(csms, ["NumberOfConnectors"]))["NumberOfConnectors"] == {
        "key": "NumberOfConnectors", "readonly": True, "value": "1"}


async def test_changed_configuration_survives_agent_restart(csms, run_agent):
    """A key the CSMS changed keeps its value after the agent restarts, over the station maker's value."""
    agent = await online(run_agent, csms)
    assert await change_configuration(csms, "ConnectionTimeOut", "45") == "Accepted"  # agent.toml says 30
    assert await change_configuration(csms, "AuthorizeRemoteTxRequests", "false") == "Accepted"

    mark = await restart(agent, csms)

    await wait_call(csms, "StatusNotification", mark, lambda p: p["connectorId"] == 1)
    keys = await configuration(csms, ["ConnectionTimeOut", "AuthorizeRemoteTxRequests"])
    assert keys["ConnectionTimeOut"]["value"] == "45"
    assert keys["AuthorizeRemoteTxRequests"]["value"] == "false"


# ---- ChangeAvailability ----------------------------------------------------------------------------


async def test_change_availability_inoperative_then_operative_without_transaction(csms, run_agent):
    """ChangeAvailability Inoperative on an idle connector: Accepted, Unavailable, remote starts refused;
    Operative again: Accepted, Available."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == {"status": "Accepted"}

    await status_notification(csms, 1, "Unavailable", mark)
    await agent.wait_connector(lambda c: c["status"] == "Unavailable", what="Unavailable")
    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1}) == {"status": "Rejected"}
    mark = len(csms.frames)

    assert await call(csms, "ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == {"status": "Accepted"}

    await status_notification(csms, 1, "Available", mark)
    await agent.wait_connector(lambda c: c["status"] == "Available", what="Available")


async def test_change_availability_during_transaction_is_scheduled_until_it_ends(csms, run_agent):
    """ChangeAvailability Inoperative while charging: Scheduled; the session goes on, and the connector
    becomes Unavailable once the transaction has stopped."""
    agent = await online(run_agent, csms)
    tx_id = await charging(agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == {"status": "Scheduled"}

    await wait_call(csms, "MeterValues", mark, lambda p: p.get("transactionId") == tx_id)
    connector = await agent.connector()
    assert connector["status"] == "Charging" and connector["contactor_closed"]
    assert calls_since(csms, "StatusNotification", mark, lambda p: p["status"] == "Unavailable") == []
    assert await call(csms, "RemoteStopTransaction", {"transactionId": tx_id}) == {"status": "Accepted"}
    stop = await wait_call(csms, "StopTransaction", mark)
    unavailable = await status_notification(csms, 1, "Unavailable", mark)
    assert stop.payload["reason"] == "Remote"
    assert unavailable.index > answer_frame(csms, "RemoteStopTransaction", mark).index
    connector = await agent.wait_connector(lambda c: c["status"] == "Unavailable", what="Unavailable")
    assert not connector["contactor_closed"]


async def test_change_availability_of_connector_zero_applies_to_all_connectors(csms, run_agent):
    """ChangeAvailability with connectorId 0 sets the charge point and every connector."""
    agent = await online(run_agent, csms, connectors=2)
    mark = len(csms.frames)

    assert await call(csms, "ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}) == {"status": "Accepted"}

    for connector in (0, 1, 2):
        await status_notification(csms, connector, "Unavailable", mark)
    status = await agent.status()
    assert [c["status"] for c in status["connectors"]] == ["Unavailable", "Unavailable"]
    assert status["station"]["operative"] is False
    mark = len(csms.frames)

    assert await call(csms, "ChangeAvailability", {"connectorId": 0, "type": "Operative"}) == {"status": "Accepted"}

    for connector in (0, 1, 2):
        await status_notification(csms, connector, "Available", mark)
    await agent.wait_connector(lambda c: c["status"] == "Available", connector=2, what="connector 2 Available")


async def test_change_availability_of_unknown_connector_is_rejected(csms, run_agent):
    """ChangeAvailability for a connector the station does not have: Rejected, nothing changes."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "ChangeAvailability", {"connectorId": 9, "type": "Inoperative"}) == {"status": "Rejected"}

    await asyncio.sleep(0.3)
    assert calls_since(csms, "StatusNotification", mark) == []
    assert (await agent.connector())["status"] == "Available"


@pytest.mark.parametrize("connector_id", [1, 0])
async def test_unavailable_persists_across_agent_restart(csms, run_agent, connector_id):
    """TC_034_CS style: a connector set Inoperative is reported Unavailable again after a restart, right
    after the new BootNotification, and refuses remote starts."""
    agent = await online(run_agent, csms)
    assert await call(csms, "ChangeAvailability",
                      {"connectorId": connector_id, "type": "Inoperative"}) == {"status": "Accepted"}
    await agent.wait_connector(lambda c: c["status"] == "Unavailable", what="Unavailable")

    mark = await restart(agent, csms)

    boot = await wait_call(csms, "BootNotification", mark)
    for connector in {connector_id, 1}:
        unavailable = await status_notification(csms, connector, "Unavailable", mark)
        assert unavailable.index > boot.index
    assert calls_since(csms, "StatusNotification", mark, lambda p: p["connectorId"] == 1
                       and p["status"] != "Unavailable") == []
    await agent.wait_connector(lambda c: c["status"] == "Unavailable", what="Unavailable after restart")
    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1}) == {"status": "Rejected"}


# ---- UnlockConnector -------------------------------------------------------------------------------


async def test_unlock_connector_without_transaction_unlocks(csms, run_agent):
    """TC_017_1_CS: UnlockConnector on an idle socket outlet: Unlocked, the lock is open."""
    agent = await online(run_agent, csms)
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")
    mark = len(csms.frames)

    assert await call(csms, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}

    assert not (await snapshot(agent))["locked"]
    assert calls_since(csms, "StopTransaction", mark) == []


async def test_unlock_connector_during_transaction_stops_it_first(csms, run_agent):
    """TC_018_1_CS: UnlockConnector while charging: the transaction stops with reason UnlockCommand, the
    contactor opens, the plug is released, and the answer is Unlocked."""
    agent = await online(run_agent, csms)
    tx_id = await charging(agent, csms)
    assert (await snapshot(agent))["locked"]  # a socket outlet holds the plug while charging
    mark = len(csms.frames)

    assert await call(csms, "UnlockConnector", {"connectorId": 1}) == {"status": "Unlocked"}

    stop = await wait_call(csms, "StopTransaction", mark)
    assert stop.payload["transactionId"] == tx_id and stop.payload["reason"] == "UnlockCommand"
    sim = await snapshot(agent)
    assert not sim["locked"] and not sim["contactor_commanded"]
    connector = await agent.wait_connector(lambda c: not c["transaction_active"], what="transaction over")
    assert not connector["contactor_closed"]
    assert csms.transactions[tx_id].stop_reason == "UnlockCommand"


@pytest.mark.parametrize("with_transaction", [False, True], ids=["idle", "charging"])
async def test_unlock_connector_with_fixed_cable_is_not_supported(csms, run_agent, with_transaction):
    """TC_017_2_CS / TC_018_2_CS: a tethered cable has no lock: NotSupported, and a running transaction
    is not stopped by the request."""
    agent = await run_agent(csms)
    assert await agent.terminate() == 0
    board = agent.workdir / "board.toml"
    board.write_text(board.read_text().replace('cable = "socket"\ncable_ampacity_a = 32', 'cable = "fixed"'))
    assert 'cable = "fixed"' in board.read_text()
    mark = len(csms.frames)
    agent.start()
    await agent.ready()
    await wait_call(csms, "StatusNotification", mark, lambda p: p["connectorId"] == 1)
    tx_id = await charging(agent, csms) if with_transaction else None
    mark = len(csms.frames)

    assert await call(csms, "UnlockConnector", {"connectorId": 1}) == {"status": "NotSupported"}

    await asyncio.sleep(0.3)
    assert calls_since(csms, "StopTransaction", mark) == []
    connector = await agent.connector()
    assert connector["transaction_id"] == tx_id and connector["contactor_closed"] == with_transaction


async def test_unlock_unknown_connector_is_not_supported(csms, run_agent):
    """TC_031_CS: UnlockConnector for a connector the station does not have: NotSupported (errata 3.85)."""
    await online(run_agent, csms)

    assert await call(csms, "UnlockConnector", {"connectorId": 9}) == {"status": "NotSupported"}


# ---- TriggerMessage --------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "connector_id"), [
    ("Heartbeat", None), ("StatusNotification", 1), ("MeterValues", 1), ("MeterValues", None)])
async def test_trigger_message_is_accepted_and_the_message_follows(csms, run_agent, requested, connector_id):
    """TC_054_CS: TriggerMessage for Heartbeat / StatusNotification / MeterValues: Accepted, then the
    requested message is sent."""
    agent = await online(run_agent, csms)
    await agent.wait_connector(lambda c: c["energy_wh"] is not None, what="a first meter reading")
    mark = len(csms.frames)
    payload = {"requestedMessage": requested}
    if connector_id is not None:
        payload["connectorId"] = connector_id

    assert await call(csms, "TriggerMessage", payload) == {"status": "Accepted"}

    answer = answer_frame(csms, "TriggerMessage", mark)
    message = await wait_call(csms, requested, mark)
    assert message.index > answer.index
    if requested == "StatusNotification":
        assert message.payload["connectorId"] == 1 and message.payload["status"] == "Available"
    if requested == "MeterValues":
        assert message.payload["connectorId"] == 1 and "transactionId" not in message.payload
        contexts = {v.get("context") for mv in message.payload["meterValue"] for v in mv["sampledValue"]}
        assert contexts == {"Trigger"}


async def test_trigger_boot_notification_after_accepted_is_rejected(csms, run_agent):
    """Errata 3.35: once registered, TriggerMessage BootNotification is Rejected and no boot follows."""
    await online(run_agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "TriggerMessage", {"requestedMessage": "BootNotification"}) == {"status": "Rejected"}

    await asyncio.sleep(0.5)
    assert calls_since(csms, "BootNotification", mark) == []


@pytest.mark.parametrize("requested", ["MeterValues", "StatusNotification"])
async def test_trigger_message_for_unknown_connector_is_rejected(csms, run_agent, requested):
    """TC_055_CS: TriggerMessage for a connector the station does not have: Rejected, nothing sent."""
    await online(run_agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "TriggerMessage", {"requestedMessage": requested, "connectorId": 9}) == {
        "status": "Rejected"}

    await asyncio.sleep(0.5)
    assert calls_since(csms, requested, mark) == []


# ---- ClearCache, DataTransfer ----------------------------------------------------------------------


async def test_data_transfer_answers_unknown_vendor(csms, run_agent):
    """TC_062_CS: DataTransfer for a vendor the station does not know: UnknownVendorId."""
    await online(run_agent, csms)

    answer = await call(csms, "DataTransfer", {"vendorId": "com.example.csms", "messageId": "Ping", "data": "x"})

    assert answer == {"status": "UnknownVendorId"}


# ---- Reset -----------------------------------------------------------------------------------------


async def test_soft_reset_without_transaction_restarts_and_boots_again(csms, run_agent):
    """TC_014_CS: Reset Soft with no transaction: Accepted, the agent restarts and sends a new
    BootNotification, then reports its connectors again."""
    agent = await online(run_agent, csms)
    pid = agent.proc.pid
    mark = len(csms.frames)

    assert await call(csms, "Reset", {"type": "Soft"}) == {"status": "Accepted"}

    boot = await wait_call(csms, "BootNotification", mark)
    await status_notification(csms, 1, "Available", boot.index)
    status = await agent.ready()
    assert status["station"]["pid"] == pid  # restarted in place
    assert status["ocpp"]["registration"] == "Accepted"
    assert calls_since(csms, "StopTransaction", mark) == []
    assert agent.proc.poll() is None


async def test_soft_reset_with_transaction_stops_it_then_boots_again(csms, run_agent):
    """TC_016_CS: Reset Soft while charging: Accepted, StopTransaction reason SoftReset, then a new
    BootNotification; the transaction is not resent or closed a second time after the restart."""
    agent = await online(run_agent, csms)
    tx_id = await charging(agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "Reset", {"type": "Soft"}) == {"status": "Accepted"}

    stop = await wait_call(csms, "StopTransaction", mark)
    assert stop.payload["transactionId"] == tx_id and stop.payload["reason"] == "SoftReset"
    boot = await wait_call(csms, "BootNotification", mark)
    assert boot.index > stop.index
    await status_notification(csms, 1, "Preparing", boot.index)  # the EV is still plugged in
    connector = await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing after reset")
    assert not connector["transaction_active"] and not connector["contactor_closed"]
    tx = csms.transactions[tx_id]
    assert tx.stop_reason == "SoftReset" and tx.stop_count == 1
    assert csms.unknown_stops == []


async def test_hard_reset_with_transaction_stops_it_runs_reboot_command_and_boots_again(
        csms, run_agent, tmp_path):
    """TC_015_CS: Reset Hard while charging: Accepted, StopTransaction reason HardReset, the board's
    reboot command runs, and the agent comes back with a new BootNotification."""
    marker = tmp_path / "rebooted"  # no quotes in the command: write_config renders it with a naive repr
    agent = await online(run_agent, csms,
                         reboot_command=["/bin/sh", "-c", f"echo rebooted > {marker}"])
    tx_id = await charging(agent, csms)
    mark = len(csms.frames)

    assert await call(csms, "Reset", {"type": "Hard"}) == {"status": "Accepted"}

    stop = await wait_call(csms, "StopTransaction", mark)
    assert stop.payload["transactionId"] == tx_id and stop.payload["reason"] == "HardReset"
    boot = await wait_call(csms, "BootNotification", mark)
    assert boot.index > stop.index
    assert marker.read_text().strip() == "rebooted"
    await agent.ready()
    connector = await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing after reset")
    assert not connector["transaction_active"]
    assert csms.transactions[tx_id].stop_count == 1 and csms.unknown_stops == []


# ---- malformed and unknown input from the CSMS -----------------------------------------------------


async def session_in_progress(run_agent, csms) -> tuple[Agent, int]:
    agent = await online(run_agent, csms)
    return agent, await charging(agent, csms)


async def assert_session_undisturbed(agent: Agent, csms: LocalCsms, csms_events: list[str], tx_id: int,
                                     since: int) -> None:
    """The session goes on after bad input: MeterValues keep coming, contactor closed, never reconnected."""
    await wait_call(csms, "MeterValues", since, lambda p: p.get("transactionId") == tx_id)
    connector = await agent.connector()
    assert connector["contactor_closed"] and connector["status"] == "Charging"
    assert connector["transaction_id"] == tx_id
    assert calls_since(csms, "StopTransaction", since) == []
    assert calls_since(csms, "BootNotification", since) == []
    assert csms.is_connected(STATION_ID)
    assert not [line for line in csms_events if "disconnected" in line]
    assert (await agent.status())["ocpp"]["connected"]


async def test_unknown_action_is_answered_not_implemented(csms, run_agent, csms_events):
    """OCPP-J 1.6 §4.2.3: an action the station does not know: CALLERROR NotImplemented."""
    agent, tx_id = await session_in_progress(run_agent, csms)
    mark = len(csms.frames)

    await csms.send_raw(STATION_ID, '[2,"id1","FooBar",{}]')

    error = await answer_to(csms, "id1")
    assert error.message_type == CALLERROR and error.payload["errorCode"] == "NotImplemented"
    await assert_session_undisturbed(agent, csms, csms_events, tx_id, mark)


@pytest.mark.parametrize("frame", [
    [2, "id2", "Heartbeat", {}],  # a charge point's message, known to OCPP, not served by a station
    [2, "id2", "Authorize", {"idTag": "0411223344"}],  # another one (every feature profile is served now)
], ids=["Heartbeat", "Authorize"])
async def test_known_but_unsupported_action_is_answered_not_supported(csms, run_agent, csms_events, frame):
    """OCPP-J 1.6 §4.2.3: a valid request of a profile the station does not support: CALLERROR
    NotSupported."""
    agent, tx_id = await session_in_progress(run_agent, csms)
    mark = len(csms.frames)

    await csms.send_raw(STATION_ID, json.dumps(frame))

    error = await answer_to(csms, "id2")
    assert error.message_type == CALLERROR and error.payload["errorCode"] == "NotSupported"
    await assert_session_undisturbed(agent, csms, csms_events, tx_id, mark)


@pytest.mark.parametrize(("action", "payload", "code"), [
    ("ChangeConfiguration", {"key": "HeartbeatInterval"}, "ProtocolError"),  # "value" missing
    ("RemoteStartTransaction", {"idTag": 411223344}, "TypeConstraintViolation"),
    ("ChangeConfiguration", {"key": "HeartbeatInterval", "value": "60", "extra": 1}, "FormationViolation"),
    ("ChangeAvailability", {"connectorId": 1, "type": "Sometimes"}, "FormationViolation"),
], ids=["missing-field", "wrong-type", "extra-field", "bad-enum"])
async def test_request_violating_the_schema_gets_an_ocpp16_callerror(csms, run_agent, csms_events, action,
                                                                     payload, code):
    """OCPP-J 1.6 §4.2.3: a request that breaks the schema gets a CALLERROR with an OCPP-J 1.6 code; the
    spelling is FormationViolation (the library's FormatViolation is the 2.0 name) and nothing is done."""
    agent, tx_id = await session_in_progress(run_agent, csms)
    mark = len(csms.frames)

    await csms.send_raw(STATION_ID, json.dumps([2, "id3", action, payload]))

    error = await answer_to(csms, "id3")
    assert error.message_type == CALLERROR and error.payload["errorCode"] == code
    assert isinstance(error.payload["errorDescription"], str)
    assert isinstance(error.payload["errorDetails"], dict)
    assert len(error.raw) < 1000  # no schema dump on the wire
    await assert_session_undisturbed(agent, csms, csms_events, tx_id, mark)
    assert calls_since(csms, "Authorize", mark) == [] and calls_since(csms, "StartTransaction", mark) == []
    assert (await configuration(csms, ["HeartbeatInterval"]))["HeartbeatInterval"]["value"] == "60"


@pytest.mark.parametrize("text", ["this is not json", '{"messageTypeId": 2}', "[]", "[7,\"id4\"]", "42"],
                         ids=["not-json", "object", "empty-list", "unknown-type", "number"])
async def test_frame_that_is_not_ocpp_gets_no_answer_and_the_connection_stays(csms, run_agent, csms_events,
                                                                              text):
    """OCPP-J 1.6 §4: a frame that is not an OCPP message cannot be answered; the station ignores it,
    keeps the connection and still answers the next request."""
    agent, tx_id = await session_in_progress(run_agent, csms)
    mark = len(csms.frames)

    await csms.send_raw(STATION_ID, text)

    await assert_session_undisturbed(agent, csms, csms_events, tx_id, mark)
    assert [f for f in csms.frames[mark:] if f.direction == "in" and f.message_type == CALLERROR] == []
    assert await call(csms, "DataTransfer", {"vendorId": "x"}) == {"status": "UnknownVendorId"}  # still answering
