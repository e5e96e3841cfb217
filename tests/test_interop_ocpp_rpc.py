"""Every frame the agent sends, validated by a strict third-party validator: the npm library ocpp-rpc.

tests/interop/ocpp_rpc_csms.mjs runs an ocpp-rpc `RPCServer` with protocols ['ocpp1.6'] and strictMode on
127.0.0.1 under the machine's node (ocpp-rpc installed by tests/interop/setup.sh with `npm ci` from
tests/interop/package-lock.json). In strict mode ocpp-rpc validates each CALL the station sends, each
CALLRESULT the station returns to a CSMS call, and each frame the server itself sends, against its OCPP 1.6
JSON schemas (ajv: types, enums, string lengths, required/additional properties, `date-time` format; the
server also requires the RFC 3339 time zone that ajv-formats 2.1.1 forgets to check). Every validation
failure is reported to the test, which requires none for the station's frames.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import time
from dataclasses import dataclass
from typing import Any

import pytest
import websockets

from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, TAG_UNKNOWN, Agent, charging, plugged, write_config
from tests.interop.procs import HERE, INTEROP, DriverError, JsonLinesProcess, installed, tail

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MEASURANDS = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Current.Offered,Voltage"


@dataclass(frozen=True)
class Frame:
    index: int  # position among the frame events of this CSMS
    direction: str  # "in": station -> CSMS
    message_type: int | None
    unique_id: str | None
    action: str | None  # for CALLRESULT/CALLERROR: the action of the CALL it answers
    payload: Any
    raw: str


class StrictCsms:
    def __init__(self, driver: JsonLinesProcess, port: int):
        self.driver = driver
        self.url = f"ws://127.0.0.1:{port}/ocpp"

    @property
    def frames(self) -> list[Frame]:
        frames, open_calls = [], {}
        for event in self.driver.events:
            if event["event"] != "frame" or event["identity"] != STATION_ID:
                continue
            raw, direction = event["raw"], event["direction"]
            message_type = unique_id = action = payload = None
            try:
                message = json.loads(raw)
                message_type, unique_id = message[0], message[1]
                if message_type == CALL:
                    action, payload = message[2], message[3]
                    open_calls[(direction, unique_id)] = action
                else:
                    action = open_calls.pop(("out" if direction == "in" else "in", unique_id), None)
                    payload = message[2] if message_type == CALLRESULT else message[2:]
            except (ValueError, TypeError, IndexError, KeyError):
                pass
            frames.append(Frame(len(frames), direction, message_type, unique_id, action, payload, raw))
        return frames

    def calls(self, action: str | None = None, since: int = 0) -> list[Frame]:
        return [f for f in self.frames[since:] if f.direction == "in" and f.message_type == CALL
                and (action is None or f.action == action)]

    async def wait_call(self, action: str, since: int = 0, where=None, timeout: float = 10.0) -> Frame:
        """The first CALL of `action` from the station at frame index >= since (with `where(payload)`)."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.calls(action, since):
                try:
                    if where is None or where(frame.payload):
                        return frame
                except (KeyError, IndexError, TypeError):
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {action} from the station within {timeout} s")
            await asyncio.sleep(0.05)

    async def call(self, action: str, payload: dict, timeout: float = 15.0):
        return await self.driver.request("call", identity=STATION_ID, method=action, params=payload,
                                         timeoutMs=int(timeout * 1000), timeout=timeout + 5)

    def failures(self, direction: str | None = None) -> list[dict]:
        return [e for e in self.driver.events if e["event"] in ("validation_failure", "bad_message")
                and (direction is None or e.get("direction", "in") == direction)]

    def mark(self) -> int:
        return len(self.frames)

    def transcript(self, last: int = 40) -> str:
        return "\n".join(f"{'CP->CSMS' if f.direction == 'in' else 'CSMS->CP'} {f.raw[:300]}"
                         for f in self.frames[-last:])


@pytest.fixture
async def strict_csms(tmp_path):
    installed("ocpp-rpc")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the ocpp-rpc validator runs on the machine's node")
    driver = JsonLinesProcess(
        [node, str(HERE / "ocpp_rpc_csms.mjs"), "--modules", str(INTEROP / "node"),
         "--tags", json.dumps({TAG_OK: "Accepted", TAG_2: "Accepted"}), "--heartbeat", "2"],
        log_path=tmp_path / "ocpp-rpc.log", cwd=tmp_path)
    try:
        ready = await driver.start("listening", timeout=30)
    except (DriverError, OSError) as exc:
        pytest.skip(f"the ocpp-rpc CSMS could not be started: {exc}")
    assert ready["dateTimeZoneRequired"], "could not make ocpp-rpc's date-time check require a time zone"
    try:
        yield StrictCsms(driver, ready["port"])
    finally:
        await driver.stop()


@pytest.fixture
async def agent(strict_csms, tmp_path):
    config = write_config(tmp_path, strict_csms.url, ocpp_keys={
        "MeterValuesSampledData": MEASURANDS, "StopTxnSampledData": MEASURANDS,
        "ClockAlignedDataInterval": 2, "MeterValuesAlignedData": MEASURANDS,
        "StopTxnAlignedData": "Energy.Active.Import.Register"})
    process = Agent(tmp_path, config)
    process.start()
    try:
        await process.ready()
        yield process
    finally:
        process.cleanup()


def assert_station_frames_valid(csms: StrictCsms, agent: Agent, expected_actions: set[str]) -> None:
    """Zero validation failures for anything the station sent, and the frames cover what the test meant."""
    failures = csms.failures("in")
    assert failures == [], ("ocpp-rpc strict mode rejected frames the agent sent:\n"
                            + "\n".join(json.dumps(f)[:600] for f in failures))
    ours = csms.failures("out")
    assert ours == [], f"the test CSMS sent invalid frames (a test bug): {ours}"
    station = [f for f in csms.frames if f.direction == "in"]
    validated = {f.action for f in station if f.message_type in (CALL, CALLRESULT)}
    assert expected_actions <= validated, f"not exercised: {expected_actions - validated}"
    assert all(f.message_type in (CALL, CALLRESULT, CALLERROR) for f in station)
    print(f"{len(station)} station frames validated by ocpp-rpc strict mode: {sorted(validated)}")


async def online(csms: StrictCsms, agent: Agent) -> None:
    await csms.wait_call("BootNotification", timeout=20)
    await csms.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1)
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted", what="registration")


def explained(test):
    """On failure, print the frames, the validation failures and the logs."""
    @functools.wraps(test)
    async def wrapper(strict_csms, agent, **kwargs):
        try:
            await test(strict_csms, agent, **kwargs)
        except BaseException:
            print(f"--- frames ---\n{strict_csms.transcript()}\n--- validation failures ---\n"
                  f"{json.dumps(strict_csms.failures())[:4000]}\n--- node log ---\n"
                  f"{tail(strict_csms.driver.log_path, 20)}\n--- agent log ---\n{agent.log_tail(40)}")
            raise
    return wrapper


# ---- the tests ------------------------------------------------------------------------------------


async def test_the_validator_is_strict(strict_csms):
    """Not a vacuous check: a station frame with a time lacking its zone, or a status outside the enum, is
    reported (and answered with a CALLERROR)."""
    async with websockets.connect(strict_csms.url + "/" + STATION_ID, subprotocols=["ocpp1.6"]) as ws:
        await ws.send(json.dumps([2, "a", "StatusNotification", {
            "connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": "2025-01-01T12:00:00"}]))
        assert json.loads(await ws.recv())[:3] == [CALLERROR, "a", "FormationViolation"]
        await ws.send(json.dumps([2, "b", "StatusNotification", {
            "connectorId": 1, "errorCode": "NoError", "status": "Idle", "timestamp": "2025-01-01T12:00:00Z"}]))
        assert json.loads(await ws.recv())[:2] == [CALLERROR, "b"]
        await ws.send(json.dumps([2, "c", "StatusNotification", {
            "connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": "2025-01-01T12:00:00.5Z"}]))
        assert json.loads(await ws.recv()) == [CALLRESULT, "c", {}]
    failures = strict_csms.failures("in")
    assert [f["messageId"] for f in failures] == ["a", "b"]
    assert "date-time" in failures[0]["error"]


@explained
async def test_card_session_frames_pass_strict_validation(strict_csms, agent):
    """Boot, StatusNotification, Heartbeat, Authorize (refused and accepted), StartTransaction, MeterValues
    with every measurand the agent supports, StopTransaction (card presented again: Local) with
    transactionData: all valid. (ClockAlignedDataInterval is set too, so that clock-aligned MeterValues are
    validated as soon as the agent sends them; it sends none yet.)"""
    csms = strict_csms
    await online(csms, agent)
    await csms.wait_call("Heartbeat", timeout=8)  # idle: HeartbeatInterval is the 2 s of the Boot answer
    await plugged(agent)
    await agent.cmd("sim.swipe", tag=TAG_UNKNOWN)
    await csms.wait_call("Authorize", where=lambda p: p["idTag"] == TAG_UNKNOWN)
    await agent.cmd("sim.swipe", tag=TAG_OK)
    start = await csms.wait_call("StartTransaction")
    status = await charging(agent)
    tx = status["transaction_id"]
    await csms.wait_call("MeterValues", start.index, timeout=5, where=lambda p: p.get("transactionId") == tx
                         and p["meterValue"][0]["sampledValue"][0].get("context") == "Sample.Periodic")
    await csms.wait_call("MeterValues", start.index, timeout=5, where=lambda p: p.get("transactionId") == tx
                         and p["meterValue"][0]["sampledValue"][0].get("context") == "Sample.Periodic"
                         and len(p["meterValue"][0]["sampledValue"]) >= 9)  # 5 measurands, 3 phases

    await agent.cmd("sim.swipe", tag=TAG_OK)  # the same card again ends the session
    stop = await csms.wait_call("StopTransaction", start.index)
    assert stop.payload["reason"] == "Local" and stop.payload["transactionData"]
    await agent.cmd("sim.unplug")
    await csms.wait_call("StatusNotification", stop.index,
                         where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert_station_frames_valid(csms, agent, {
        "BootNotification", "StatusNotification", "Heartbeat", "Authorize", "StartTransaction",
        "MeterValues", "StopTransaction"})


@explained
async def test_remote_start_stop_and_csms_commands_pass_strict_validation(strict_csms, agent):
    """RemoteStartTransaction / RemoteStopTransaction from the ocpp-rpc CSMS, then the station's answers to
    the other commands it supports (GetConfiguration, ChangeConfiguration, ChangeAvailability,
    TriggerMessage, UnlockConnector, DataTransfer, local list, ClearCache) and Reset: every answer and
    every message they trigger is valid."""
    csms = strict_csms
    await online(csms, agent)
    await plugged(agent)

    assert await csms.call("RemoteStartTransaction", {"connectorId": 1, "idTag": TAG_OK}) == {"status": "Accepted"}
    start = await csms.wait_call("StartTransaction")
    tx = (await charging(agent))["transaction_id"]
    await csms.wait_call("MeterValues", start.index, where=lambda p: p.get("transactionId") == tx)
    assert await csms.call("RemoteStopTransaction", {"transactionId": tx}) == {"status": "Accepted"}
    stop = await csms.wait_call("StopTransaction", start.index)
    assert stop.payload["reason"] == "Remote" and stop.payload["transactionId"] == tx
    await agent.wait_connector(lambda c: not c["transaction_active"], what="stopped")
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["status"] == "Available", what="Available")

    every_key = await csms.call("GetConfiguration", {})
    assert len(every_key["configurationKey"]) > 20
    some = await csms.call("GetConfiguration", {"key": ["HeartbeatInterval", "NoSuchKey"]})
    assert some["unknownKey"] == ["NoSuchKey"]
    assert await csms.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "2"}) == {
        "status": "Accepted"}
    assert (await csms.call("ChangeConfiguration", {"key": "NoSuchKey", "value": "1"}))["status"] == "NotSupported"
    assert await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}) == {"status": "Accepted"}
    await csms.wait_call("StatusNotification", where=lambda p: p["status"] == "Unavailable")
    assert await csms.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"}) == {"status": "Accepted"}
    for message, extra in [("StatusNotification", {"connectorId": 1}), ("Heartbeat", {}),
                           ("MeterValues", {"connectorId": 1}), ("BootNotification", {}),
                           ("DiagnosticsStatusNotification", {}), ("FirmwareStatusNotification", {})]:
        answer = await csms.call("TriggerMessage", {"requestedMessage": message, **extra})
        assert answer["status"] in ("Accepted", "Rejected", "NotImplemented"), (message, answer)
    assert (await csms.call("UnlockConnector", {"connectorId": 1}))["status"] in (
        "Unlocked", "UnlockFailed", "NotSupported")
    assert (await csms.call("DataTransfer", {"vendorId": "org.example", "messageId": "x", "data": "y"}))[
        "status"] == "UnknownVendorId"
    await csms.call("GetLocalListVersion", {})
    await csms.call("SendLocalList", {"listVersion": 1, "updateType": "Full",
                                      "localAuthorizationList": [{"idTag": TAG_2, "idTagInfo": {
                                          "status": "Accepted", "expiryDate": "2099-01-01T00:00:00Z"}}]})
    await csms.call("ClearCache", {})

    mark = csms.mark()
    assert await csms.call("Reset", {"type": "Soft"}) == {"status": "Accepted"}
    await csms.wait_call("BootNotification", mark, timeout=20)
    await csms.wait_call("StatusNotification", mark, where=lambda p: p["connectorId"] == 1)
    await asyncio.sleep(0.5)  # let the triggered messages and the reboot's statuses arrive
    assert_station_frames_valid(csms, agent, {
        "BootNotification", "StatusNotification", "Heartbeat", "Authorize", "StartTransaction",
        "MeterValues", "StopTransaction", "RemoteStartTransaction", "RemoteStopTransaction",
        "GetConfiguration", "ChangeConfiguration", "ChangeAvailability", "TriggerMessage", "UnlockConnector",
        "DataTransfer", "GetLocalListVersion", "ClearCache", "Reset"})


@explained
async def test_fault_and_suspended_session_frames_pass_strict_validation(strict_csms, agent):
    """The less travelled paths: the EV pausing (SuspendedEV) and resuming, then a meter that stops
    answering mid-session (Faulted/PowerMeterFailure, StopTransaction reason Other with the last known
    register), and its recovery: all valid."""
    csms = strict_csms
    await online(csms, agent)
    await plugged(agent)
    await agent.cmd("sim.swipe", tag=TAG_OK)
    start = await csms.wait_call("StartTransaction")
    await charging(agent)
    await agent.cmd("sim.ev_state", state="B")  # the EV pauses
    await csms.wait_call("StatusNotification", start.index, where=lambda p: p["status"] == "SuspendedEV")
    await agent.cmd("sim.ev_state", state="C")
    await charging(agent)
    await agent.cmd("sim.fault", kind="meter", on=True)
    faulted = await csms.wait_call("StatusNotification", start.index, timeout=15,
                                   where=lambda p: p["status"] == "Faulted")
    assert faulted.payload["errorCode"] == "PowerMeterFailure"
    stop = await csms.wait_call("StopTransaction", start.index, timeout=15)
    assert stop.payload["reason"] == "Other"
    await agent.cmd("sim.fault", kind="meter", on=False)
    await csms.wait_call("StatusNotification", faulted.index, timeout=15,
                         where=lambda p: p["connectorId"] == 1 and p["status"] != "Faulted")
    await agent.cmd("sim.unplug")
    await csms.wait_call("StatusNotification", stop.index, timeout=15,
                         where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert_station_frames_valid(csms, agent, {"StatusNotification", "StartTransaction", "StopTransaction"})
