"""The local CSMS (hil/csms.py) over a real WebSocket on 127.0.0.1, with a minimal charge point
written here on `ocpp.v16.ChargePoint`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from ocpp.exceptions import InternalError, SecurityError
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from hil.csms import CsmsCallError, InvalidStationResponse, LocalCsms, StationNotConnected

STATION = "CP-T"
TIMESTAMP = "2025-01-01T10:00:00.000Z"


class MiniStation(ChargePoint):
    """Just enough charge point to talk to the CSMS; keeps every raw frame it receives."""

    def __init__(self, station_id, connection):
        super().__init__(station_id, connection, response_timeout=5)
        self.received_raw: list[str] = []
        self.remote_starts: list[dict] = []

    async def route_message(self, raw_msg):
        self.received_raw.append(raw_msg)
        await super().route_message(raw_msg)

    async def boot(self) -> call_result.BootNotification:
        request = call.BootNotification(charge_point_model="Mini", charge_point_vendor="Test")
        return await self.call(request, suppress=False)

    @on(Action.get_configuration)
    def on_get_configuration(self, key=None):
        return call_result.GetConfiguration(
            configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
        )

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction(self, id_tag, connector_id=None, **_):
        self.remote_starts.append({"id_tag": id_tag, "connector_id": connector_id})
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.clear_cache, skip_schema_validation=True)  # so the library lets the bad answer out
    def on_clear_cache(self):
        # Deliberately wrong: "Maybe" is not a ClearCacheStatus; the CSMS must not accept it.
        return call_result.ClearCache(status="Maybe")


@contextlib.asynccontextmanager
async def running_csms(tmp_path: Path, **options):
    options.setdefault("authorized_tags", {"TAG-OK": "Accepted", "TAG-BLOCKED": "Blocked"})
    options.setdefault("parent_id_tags", {"TAG-OK": "GROUP-1"})
    options.setdefault("record_path", tmp_path / "frames.jsonl")
    csms = LocalCsms(**options)
    await csms.start()
    try:
        yield csms
    finally:
        await csms.stop()


@contextlib.asynccontextmanager
async def station_connected(csms: LocalCsms, station_id: str = STATION):
    async with connect(f"{csms.url}/{station_id}", subprotocols=["ocpp1.6"], proxy=None) as websocket:
        station = MiniStation(station_id, websocket)
        reader = asyncio.create_task(station.start())
        try:
            await csms.wait_connected(station_id, timeout=5)
            yield station
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader


async def test_boot_pending_then_accepted_with_security_error_before_accepted(tmp_path):
    async with (
        running_csms(tmp_path, boot_statuses=("Pending", "Accepted"), boot_interval=7) as csms,
        station_connected(csms) as station,
    ):
        first = await station.boot()
        assert (first.status, first.interval) == ("Pending", 7)

        with pytest.raises(SecurityError):
            await station.call(call.Heartbeat(), suppress=False)
        assert [(v.station_id, v.kind) for v in csms.violations] == [(STATION, "call_before_accepted")]
        assert csms.violations[0].frame.action == "Heartbeat"

        second = await station.boot()
        assert (second.status, second.interval) == ("Accepted", 7)
        assert second.current_time.endswith("Z")
        datetime.fromisoformat(second.current_time)  # parses as ISO 8601

        third = await station.boot()  # the last configured status repeats
        assert third.status == "Accepted"
        heartbeat = await station.call(call.Heartbeat(), suppress=False)
        assert heartbeat.current_time.endswith("Z")
        assert len(csms.violations) == 1
        assert len(csms.calls("BootNotification", STATION)) == 3


async def test_pending_station_may_send_what_the_csms_triggered_and_nothing_else(tmp_path):
    """OCPP 1.6 §4.2: while Pending the station sends no request unless the CSMS triggered it."""
    async with (
        running_csms(tmp_path, boot_statuses=("Pending", "Accepted"), boot_interval=7) as csms,
        station_connected(csms) as station,
    ):
        assert (await station.boot()).status == "Pending"
        with pytest.raises(SecurityError):  # not asked for
            await station.call(call.Heartbeat(), suppress=False)
        with contextlib.suppress(CsmsCallError):  # MiniStation has no TriggerMessage handler: asked anyway
            await csms.call(STATION, "TriggerMessage", {"requestedMessage": "Heartbeat"})
        heartbeat = await station.call(call.Heartbeat(), suppress=False)  # asked for
        assert heartbeat.current_time.endswith("Z")
        assert [v.frame.action for v in csms.violations] == ["Heartbeat"]


async def test_station_that_never_booted_gets_security_error(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        with pytest.raises(SecurityError):
            await station.call(call.Authorize(id_tag="TAG-OK"), suppress=False)
        assert [v.kind for v in csms.violations] == ["call_before_accepted"]


async def test_authorize_known_blocked_and_unknown_tags(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        known = await station.call(call.Authorize(id_tag="TAG-OK"), suppress=False)
        assert known.id_tag_info == {"status": "Accepted", "parent_id_tag": "GROUP-1"}
        same_tag_other_case = await station.call(call.Authorize(id_tag="tag-ok"), suppress=False)
        assert same_tag_other_case.id_tag_info["status"] == "Accepted"
        blocked = await station.call(call.Authorize(id_tag="TAG-BLOCKED"), suppress=False)
        assert blocked.id_tag_info == {"status": "Blocked"}
        unknown = await station.call(call.Authorize(id_tag="NOBODY"), suppress=False)
        assert unknown.id_tag_info == {"status": "Invalid"}
        assert csms.violations == []


async def test_transaction_start_meter_values_stop_are_recorded(tmp_path):
    energy = {"value": "1500", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    sample = {"timestamp": TIMESTAMP, "sampledValue": [energy]}
    async with running_csms(tmp_path, first_transaction_id=500) as csms, station_connected(csms) as station:
        await station.boot()
        start = await station.call(
            call.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=1000, timestamp=TIMESTAMP),
            suppress=False,
        )
        assert start.transaction_id == 500
        assert start.id_tag_info == {"status": "Accepted", "parent_id_tag": "GROUP-1"}
        await station.call(
            call.MeterValues(connector_id=1, transaction_id=500, meter_value=[sample]), suppress=False
        )
        stop = await station.call(
            call.StopTransaction(
                meter_stop=2500,
                timestamp="2025-01-01T11:00:00.000Z",
                transaction_id=500,
                reason="EVDisconnected",
                id_tag="TAG-OK",
                transaction_data=[sample],
            ),
            suppress=False,
        )
        assert stop.id_tag_info["status"] == "Accepted"

        record = csms.transactions[500]
        assert (record.station_id, record.connector_id, record.id_tag) == (STATION, 1, "TAG-OK")
        assert (record.meter_start, record.start_timestamp) == (1000, TIMESTAMP)
        assert (record.meter_stop, record.stop_timestamp) == (2500, "2025-01-01T11:00:00.000Z")
        assert record.stop_reason == "EVDisconnected"
        assert record.meter_values == [sample]  # camelCase, exactly as sent
        assert record.transaction_data == [sample]
        assert record.stopped and record.stop_count == 1

        second = await station.call(
            call.StartTransaction(connector_id=1, id_tag="NOBODY", meter_start=2500, timestamp=TIMESTAMP),
            suppress=False,
        )
        assert second.transaction_id == 501  # a new id even for an invalid tag
        assert second.id_tag_info == {"status": "Invalid"}

        # Unknown transaction ids are answered but kept apart.
        unknown_stop = await station.call(
            call.StopTransaction(meter_stop=1, timestamp=TIMESTAMP, transaction_id=999), suppress=False
        )
        assert unknown_stop.id_tag_info is None  # no idTag sent, so no idTagInfo
        await station.call(call.MeterValues(connector_id=1, meter_value=[sample]), suppress=False)
        assert [frame.payload["transactionId"] for frame in csms.unknown_stops] == [999]
        assert [frame.payload for frame in csms.other_meter_values] == [
            {"connectorId": 1, "meterValue": [sample]}
        ]
        assert csms.violations == []


async def test_invalid_call_from_station_is_answered_with_callerror_and_recorded(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        # connectorId as a string breaks the schema; skip the station's own check to send it anyway.
        request = call.StatusNotification(connector_id="one", error_code="NoError", status="Available")
        with pytest.raises(Exception) as raised:
            await station.call(request, suppress=False, skip_schema_validation=True)
        assert raised.value.code == "TypeConstraintViolation"
        assert [v.kind for v in csms.violations] == ["invalid_call"]
        assert csms.connector_statuses == {}


async def test_record_file_has_every_frame_in_order(tmp_path):
    record_path = tmp_path / "frames.jsonl"
    async with running_csms(tmp_path, record_path=record_path) as csms, station_connected(csms) as station:
        await station.boot()
        await station.call(call.Heartbeat(), suppress=False)
        await csms.call(STATION, "GetConfiguration", {})
        await csms.send_raw(STATION, "not json at all")
        lines = record_path.read_text().splitlines()

    assert len(lines) == len(csms.frames) == 7
    records = [json.loads(line) for line in lines]
    assert [r["raw"] for r in records] == [frame.raw for frame in csms.frames]
    assert [r["dir"] for r in records] == ["in", "out", "in", "out", "out", "in", "out"]
    assert {r["station"] for r in records} == {STATION}
    for r in records[:-1]:
        assert r["frame"] == json.loads(r["raw"])
    assert records[-1]["frame"] is None  # not JSON: raw only
    for r in records:
        assert r["time"].endswith("Z")
        datetime.fromisoformat(r["time"])
    answered = [(f.message_type, f.action) for f in csms.frames[:6]]
    assert answered == [
        (2, "BootNotification"),
        (3, "BootNotification"),
        (2, "Heartbeat"),
        (3, "Heartbeat"),
        (2, "GetConfiguration"),
        (3, "GetConfiguration"),
    ]


async def test_csms_call_returns_answer_and_callerror_raises(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        answer = await csms.call(STATION, "GetConfiguration", {"key": ["HeartbeatInterval"]})
        assert answer == {
            "configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]
        }

        with pytest.raises(CsmsCallError) as raised:
            await csms.call(STATION, "Reset", {"type": "Soft"})  # MiniStation has no Reset handler
        assert raised.value.code == "NotImplemented"
        error_frame = csms.frames[-1]
        assert (error_frame.direction, error_frame.message_type, error_frame.action) == ("in", 4, "Reset")

        with pytest.raises(InvalidStationResponse):
            await csms.call(STATION, "ClearCache", {})
        assert [v.kind for v in csms.violations] == ["invalid_response"]

        with pytest.raises(StationNotConnected):
            await csms.call("CP-NOBODY", "ClearCache", {})


async def test_csms_validates_its_own_requests_unless_told_not_to(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        sent_before = len(csms.frames)
        with pytest.raises(Exception) as raised:
            await csms.call(STATION, "RemoteStartTransaction", {"idTag": "TAG-OK", "bogus": 1})
        assert raised.value.code == "FormatViolation"
        assert len(csms.frames) == sent_before  # nothing went out

        with pytest.raises(CsmsCallError):  # sent as is: the station's library rejects it
            await csms.call(
                STATION, "RemoteStartTransaction", {"idTag": "TAG-OK", "bogus": 1}, validate=False
            )
        assert station.remote_starts == []


async def test_send_raw_malformed_frame_reaches_station(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        malformed = '[2,"abc","RemoteStartTransaction"'
        await csms.send_raw(STATION, malformed)
        async with asyncio.timeout(5):
            while malformed not in station.received_raw:
                await asyncio.sleep(0.01)
        assert csms.frames[-1].raw == malformed and csms.frames[-1].direction == "out"
        # The connection is still usable afterwards.
        assert (await csms.call(STATION, "GetConfiguration", {}))["configurationKey"]


async def test_malformed_frames_from_station_are_recorded_and_ignored(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        for bad in ("{not json", '{"an": "object"}', '[2,"id-1"]', '[3,"never-asked",{}]'):
            await station._connection.send(bad)
        await station._connection.send(b"\x00binary")
        await csms.wait_until(lambda: len(csms.violations) == 5, timeout=5)
        assert [v.kind for v in csms.violations] == [
            "malformed_frame",
            "malformed_frame",
            "malformed_frame",
            "unexpected_response",
            "binary_frame",
        ]
        heartbeat = await station.call(call.Heartbeat(), suppress=False)  # the CSMS is still answering
        assert heartbeat.current_time


async def test_wait_frame_waits_for_a_new_frame(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        await station.call(call.Heartbeat(), suppress=False)
        mark = len(csms.frames)
        waiter = asyncio.create_task(
            csms.wait_frame(lambda f: f.action == "Heartbeat" and f.direction == "in", timeout=5, since=mark)
        )
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the old heartbeat does not count
        await station.call(call.Heartbeat(), suppress=False)
        frame = await waiter
        assert frame.index >= mark
        # A predicate that raises on other frames is simply not a match.
        boot = await csms.wait_frame(lambda f: f.payload["chargePointModel"] == "Mini", timeout=1)
        assert boot.action == "BootNotification"
        with pytest.raises(TimeoutError):
            await csms.wait_frame(lambda f: f.action == "Authorize", timeout=0.1)


async def test_wrong_subprotocol_and_wrong_path_are_refused(tmp_path):
    async with running_csms(tmp_path) as csms:
        with pytest.raises(InvalidStatus) as raised:
            async with connect(f"{csms.url}/{STATION}", subprotocols=["ocpp2.0.1"], proxy=None):
                pass
        assert raised.value.response.status_code == 400
        with pytest.raises(InvalidStatus):
            async with connect(f"{csms.url}/{STATION}", proxy=None):  # no subprotocol offered
                pass
        with pytest.raises(InvalidStatus) as raised:
            async with connect(f"{csms.url}/a/{STATION}", subprotocols=["ocpp1.6"], proxy=None):
                pass
        assert raised.value.response.status_code == 404
        assert csms.frames == [] and not csms.is_connected(STATION)


async def test_station_id_is_percent_decoded(tmp_path):
    async with running_csms(tmp_path) as csms:
        async with connect(f"{csms.url}/CP%201", subprotocols=["ocpp1.6"], proxy=None):
            await csms.wait_connected("CP 1", timeout=5)
        await csms.wait_disconnected("CP 1", timeout=5)


async def test_disconnect_closes_with_going_away(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        await csms.disconnect(STATION)
        assert not csms.is_connected(STATION)
        assert station._connection.close_code == 1001
        with pytest.raises(StationNotConnected):
            await csms.call(STATION, "ClearCache", {})


async def test_control_socket_call_end_to_end(tmp_path):
    socket_path = tmp_path / "ctl.sock"
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await csms.start_control_socket(socket_path)
        await station.boot()
        reader, writer = await asyncio.open_unix_connection(socket_path)

        async def ask(request) -> dict:
            line = request if isinstance(request, str) else json.dumps(request)
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return json.loads(await asyncio.wait_for(reader.readline(), 5))

        assert await ask({"cmd": "stations"}) == {"ok": True, "result": [STATION]}
        remote_start = {"idTag": "TAG-OK", "connectorId": 1}
        reply = await ask(
            {"cmd": "call", "station": STATION, "action": "RemoteStartTransaction", "payload": remote_start}
        )
        assert reply == {"ok": True, "result": {"status": "Accepted"}}
        assert station.remote_starts == [{"id_tag": "TAG-OK", "connector_id": 1}]

        await station.call(
            call.StartTransaction(connector_id=1, id_tag="TAG-OK", meter_start=0, timestamp=TIMESTAMP),
            suppress=False,
        )
        transactions = await ask({"cmd": "transactions"})
        assert transactions["ok"] and transactions["result"][0]["transaction_id"] == 100

        failed = await ask(
            {"cmd": "call", "station": STATION, "action": "Reset", "payload": {"type": "Hard"}}
        )
        assert failed["ok"] is False and "NotImplemented" in failed["error"]
        unknown_station = await ask({"cmd": "call", "station": "CP-X", "action": "ClearCache"})
        assert unknown_station["ok"] is False and "CP-X" in unknown_station["error"]
        assert (await ask("{broken"))["ok"] is False
        assert (await ask({"cmd": "dance"}))["ok"] is False
        assert (await ask({"cmd": "stations"}))["ok"] is True  # still serving after errors
        writer.close()
    assert not socket_path.exists()


def test_cli_prints_frames_and_stops_on_sigint(tmp_path):
    record_path = tmp_path / "cli.jsonl"
    options = ["--port", "0", "--tags", "TAG-OK", "--record", str(record_path)]
    command = [sys.executable, "-m", "hil.csms", *options]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        assert "CSMS listening on ws://127.0.0.1:" in banner
        url = banner.split()[3].removesuffix("/<station")

        async def boot_once():
            async with connect(f"{url}/{STATION}", subprotocols=["ocpp1.6"], proxy=None) as websocket:
                station = MiniStation(STATION, websocket)
                reader = asyncio.create_task(station.start())
                result = await station.boot()
                reader.cancel()
                return result

        assert asyncio.run(boot_once()).status == "Accepted"
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert "CP-T -> CSMS  BootNotification" in output
    assert "CSMS -> CP-T  BootNotification.conf" in output
    assert len(record_path.read_text().splitlines()) == 2


async def test_new_connection_of_same_station_replaces_the_old_one(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as old:
        await old.boot()
        async with station_connected(csms) as new:
            await asyncio.wait_for(old._connection.wait_closed(), 5)
            assert csms.stations() == [STATION]
            heartbeat = await new.call(call.Heartbeat(), suppress=False)  # still Accepted from before
            assert heartbeat.current_time
        assert csms.violations == []


# ---- test hooks: assume_booted, fail_next, refuse_connections ------------------------------------


async def test_assume_booted_accepts_calls_until_the_station_boots(tmp_path):
    async with (
        running_csms(tmp_path, assume_booted=True, boot_statuses=("Pending",)) as csms,
        station_connected(csms) as station,
    ):
        await station.call(call.Heartbeat(), suppress=False)  # no BootNotification to this instance
        assert csms.violations == []
        assert (await station.boot()).status == "Pending"  # once it boots, its answer counts
        with pytest.raises(SecurityError):
            await station.call(call.Heartbeat(), suppress=False)
        assert [v.kind for v in csms.violations] == ["call_before_accepted"]


async def test_fail_next_answers_that_many_calls_with_the_callerror(tmp_path):
    async with running_csms(tmp_path) as csms, station_connected(csms) as station:
        await station.boot()
        csms.fail_next("Authorize", 2, "InternalError", "try later")
        for _ in range(2):
            with pytest.raises(InternalError):
                await station.call(call.Authorize(id_tag="TAG-OK"), suppress=False)
        answer = await station.call(call.Authorize(id_tag="TAG-OK"), suppress=False)
        assert answer.id_tag_info["status"] == "Accepted"
        await station.call(call.Heartbeat(), suppress=False)  # other actions are not affected
        errors = [f for f in csms.frames if f.direction == "out" and f.message_type == 4]
        assert [(f.action, f.payload["errorCode"], f.payload["errorDescription"]) for f in errors] == [
            ("Authorize", "InternalError", "try later")] * 2
        assert csms.violations == []
        with pytest.raises(ValueError):
            csms.fail_next("Authorize", 1, "NoSuchError")


async def test_refuse_connections_answers_handshakes_with_503(tmp_path):
    async with running_csms(tmp_path) as csms:
        csms.refuse_connections = True
        with pytest.raises(InvalidStatus) as raised:
            async with connect(f"{csms.url}/{STATION}", subprotocols=["ocpp1.6"], proxy=None):
                pass
        assert raised.value.response.status_code == 503
        csms.refuse_connections = False
        async with station_connected(csms) as station:
            assert (await station.boot()).status == "Accepted"
