"""OCPP 1.6 Reservation profile end to end (OCTT TC_046..TC_053): the real agent against the bundled CSMS,
asserting what a CSMS operator sees: ReserveNow/CancelReservation answers, Reserved / Available status
notifications, and the reservationId in StartTransaction."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agent.cli.main import format_status
from hil.csms import LocalCsms
from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, calls_since, online, wait_call

pytestmark = pytest.mark.slow


def expiry(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def reserve_now(reservation_id: int = 41, connector_id: int = 1, tag: str = TAG_OK, seconds: float = 120,
                parent: str | None = None) -> dict:
    payload = {"connectorId": connector_id, "expiryDate": expiry(seconds), "idTag": tag,
               "reservationId": reservation_id}
    if parent is not None:
        payload["parentIdTag"] = parent
    return payload


def statuses(csms, since=0, connector=1):
    return [f.payload["status"] for f in calls_since(csms, "StatusNotification", since)
            if f.payload["connectorId"] == connector]


async def reserved(agent, csms, since: int, reservation_id: int = 41, connector: int = 1) -> None:
    """The CSMS sees Reserved on the connector and `evse status` shows the reservation."""
    await wait_call(csms, "StatusNotification", since,
                    where=lambda p: p["connectorId"] == connector and p["status"] == "Reserved")
    shown = await agent.connector(connector)
    assert shown["status"] == "Reserved"
    assert shown["reservation"]["id"] == reservation_id


async def test_reserved_connector_local_start(csms, run_agent):
    """TC_046_1_CS: ReserveNow Accepted, Reserved; another card is refused without an Authorize.req; the
    reserved card is authorized (Preparing); plug in: StartTransaction with the reservationId, Charging."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now()) == {"status": "Accepted"}
    await reserved(agent, csms, mark)

    other = len(csms.frames)
    await agent.cmd("sim.swipe", tag=TAG_2)
    await asyncio.sleep(0.7)
    assert calls_since(csms, "Authorize", other) == []
    assert (await agent.connector())["status"] == "Reserved"

    await agent.cmd("sim.swipe", tag=TAG_OK)
    await wait_call(csms, "Authorize", other, where=lambda p: p["idTag"] == TAG_OK)
    await wait_call(csms, "StatusNotification", other, where=lambda p: p["status"] == "Preparing")
    await agent.cmd("sim.plug")
    start = await wait_call(csms, "StartTransaction", other)
    assert start.payload["idTag"] == TAG_OK and start.payload["reservationId"] == 41
    connector = await agent.wait_connector(lambda c: c["status"] == "Charging", what="Charging")
    assert connector["reservation"] is None
    # the StatusNotification follows the agent's own status: wait until the CSMS has it
    await wait_call(csms, "StatusNotification", other, where=lambda p: p["connectorId"] == 1
                    and p["status"] == "Charging")
    assert statuses(csms, mark)[:3] == ["Reserved", "Preparing", "Charging"]


async def test_reserved_connector_remote_start(csms, run_agent):
    """TC_046_2_CS: RemoteStartTransaction for another idTag is Rejected on the reserved connector; with the
    reserved idTag it is Accepted and StartTransaction carries that idTag and the reservationId."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(reservation_id=42)) == {"status": "Accepted"}
    await reserved(agent, csms, mark, reservation_id=42)
    answer = await csms.call(STATION_ID, "RemoteStartTransaction", {"connectorId": 1, "idTag": TAG_2})
    assert answer == {"status": "Rejected"}
    answer = await csms.call(STATION_ID, "RemoteStartTransaction", {"connectorId": 1, "idTag": TAG_OK})
    assert answer == {"status": "Accepted"}
    await agent.cmd("sim.plug")
    start = await wait_call(csms, "StartTransaction", mark)
    assert (start.payload["idTag"], start.payload["reservationId"]) == (TAG_OK, 42)
    await agent.wait_connector(lambda c: c["status"] == "Charging", what="Charging")


async def test_reservation_expires(csms, run_agent):
    """TC_047_CS: the driver does not come before expiryDate: Available again, and another card charges
    (without a reservationId)."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(seconds=2)) == {"status": "Accepted"}
    await reserved(agent, csms, mark)
    await wait_call(csms, "StatusNotification", mark, timeout=5,
                    where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert statuses(csms, mark) == ["Reserved", "Available"]
    assert (await agent.connector())["reservation"] is None
    since = len(csms.frames)
    await agent.cmd("sim.plug")
    await agent.cmd("sim.swipe", tag=TAG_2)
    start = await wait_call(csms, "StartTransaction", since)
    assert start.payload["idTag"] == TAG_2 and "reservationId" not in start.payload


async def _faulted(agent, csms):
    await agent.cmd("sim.fault", connector=1, kind="rcd", on=True)
    await agent.wait_connector(lambda c: c["status"] == "Faulted", what="Faulted")


async def _occupied(agent, csms):
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")


async def _unavailable(agent, csms, connector_id=1):
    answer = await csms.call(STATION_ID, "ChangeAvailability", {"connectorId": connector_id, "type": "Inoperative"})
    assert answer == {"status": "Accepted"}
    await agent.wait_connector(lambda c: c["status"] == "Unavailable", what="Unavailable")


async def _station_unavailable(agent, csms):
    await _unavailable(agent, csms, connector_id=0)


async def _nothing(agent, csms):
    pass


@pytest.mark.parametrize("case,setup,config,answer", [
    ("TC_048_1", _faulted, {}, "Faulted"),
    ("TC_048_2", _occupied, {}, "Occupied"),
    ("TC_048_3", _unavailable, {}, "Unavailable"),
    ("TC_048_4", _nothing, {"extra": "reservations = false"}, "Rejected"),
])
async def test_connector_cannot_be_reserved(csms, run_agent, case, setup, config, answer):
    """TC_048_1..4_CS: a Faulted, Occupied (EV plugged in) or Unavailable connector, or a station configured
    not to accept reservations ([charging] reservations = false), answers so and is not Reserved."""
    agent = await online(run_agent, csms, **config)
    await setup(agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now()) == {"status": answer}
    await asyncio.sleep(0.3)
    assert "Reserved" not in statuses(csms, mark)
    assert (await agent.connector())["reservation"] is None


async def test_reservation_of_the_charge_point(csms, run_agent):
    """TC_049_CS: ReserveNow for connector 0 (ReserveConnectorZeroSupported true): Accepted, one connector
    is held Reserved while the other stays Available; the reserved driver charges on the other connector
    and StartTransaction carries the reservationId; the held connector is Available again."""
    agent = await online(run_agent, csms, connectors=2)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(reservation_id=49, connector_id=0)) \
        == {"status": "Accepted"}
    await reserved(agent, csms, mark, reservation_id=49, connector=1)
    assert (await agent.connector(2))["status"] == "Available"
    since = len(csms.frames)
    await agent.cmd("sim.plug", connector=2)
    await agent.wait_connector(lambda c: c["status"] == "Preparing", 2, what="Preparing")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    start = await wait_call(csms, "StartTransaction", since)
    assert (start.payload["connectorId"], start.payload["idTag"], start.payload["reservationId"]) == (2, TAG_OK, 49)
    await wait_call(csms, "StatusNotification", since,
                    where=lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert (await agent.connector(1))["reservation"] is None


@pytest.mark.parametrize("case,setup,config,answer", [
    ("TC_050_1", _faulted, {}, "Faulted"),
    ("TC_050_2", _occupied, {}, "Occupied"),
    ("TC_050_3", _station_unavailable, {}, "Unavailable"),
    ("TC_050_4", _nothing, {"ocpp_keys": {"ReserveConnectorZeroSupported": False}}, "Rejected"),
])
async def test_charge_point_cannot_be_reserved(csms, run_agent, case, setup, config, answer):
    """TC_050_1..4_CS: ReserveNow for connector 0 while every connector is Faulted, Occupied or the Charge
    Point is Unavailable; or with ReserveConnectorZeroSupported false (the station maker's choice): the
    answer names the reason and nothing is Reserved."""
    agent = await online(run_agent, csms, **config)
    await setup(agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(connector_id=0)) == {"status": answer}
    await asyncio.sleep(0.3)
    assert "Reserved" not in statuses(csms, mark)
    keys = (await csms.call(STATION_ID, "GetConfiguration", {"key": ["ReserveConnectorZeroSupported"]}))
    assert keys["configurationKey"][0]["readonly"] is True


async def test_cancel_reservation(csms, run_agent):
    """TC_051_CS: CancelReservation of the active reservation: Accepted, the connector is Available."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(reservation_id=51)) == {"status": "Accepted"}
    await reserved(agent, csms, mark, reservation_id=51)
    assert f"reservation 51 of this connector for {TAG_OK} until" in format_status(await agent.status())  # evse status
    assert await csms.call(STATION_ID, "CancelReservation", {"reservationId": 51}) == {"status": "Accepted"}
    await wait_call(csms, "StatusNotification", mark, where=lambda p: p["status"] == "Available")
    assert (await agent.connector())["reservation"] is None


async def test_cancel_unknown_reservation_is_rejected(csms, run_agent):
    """TC_052_CS: CancelReservation with an id that matches no reservation: Rejected, the reservation stays."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(reservation_id=52)) == {"status": "Accepted"}
    await reserved(agent, csms, mark, reservation_id=52)
    assert await csms.call(STATION_ID, "CancelReservation", {"reservationId": 99}) == {"status": "Rejected"}
    await asyncio.sleep(0.3)
    assert statuses(csms, mark) == ["Reserved"]
    assert (await agent.connector())["reservation"]["id"] == 52


async def test_reserved_connector_used_with_parent_id_tag(tmp_path, run_agent):
    """TC_053_CS: the reservation names a parentIdTag; another card of the same parent (learned from
    Authorize.conf) uses it: StartTransaction with that card and the reservationId. A card of another parent
    is refused."""
    csms = LocalCsms(authorized_tags=[TAG_OK, TAG_2, "04CAFE0001"],
                     parent_id_tags={TAG_OK: "FLEET-1", TAG_2: "FLEET-1", "04CAFE0001": "FLEET-9"},
                     record_path=tmp_path / "csms.jsonl")
    await csms.start()
    try:
        agent = await online(run_agent, csms)
        mark = len(csms.frames)
        payload = reserve_now(reservation_id=53, parent="FLEET-1")
        assert await csms.call(STATION_ID, "ReserveNow", payload) == {"status": "Accepted"}
        await reserved(agent, csms, mark, reservation_id=53)
        await agent.cmd("sim.plug")
        await agent.cmd("sim.swipe", tag="04CAFE0001")
        await wait_call(csms, "Authorize", mark, where=lambda p: p["idTag"] == "04CAFE0001")
        await asyncio.sleep(0.5)
        assert calls_since(csms, "StartTransaction", mark) == []
        assert (await agent.connector())["status"] == "Reserved"
        await agent.cmd("sim.swipe", tag=TAG_2)
        start = await wait_call(csms, "StartTransaction", mark)
        assert (start.payload["idTag"], start.payload["reservationId"]) == (TAG_2, 53)
        await agent.wait_connector(lambda c: c["status"] == "Charging", what="Charging")
    finally:
        await csms.stop()


async def test_reservation_survives_kill_9(csms, run_agent):
    """A reservation survives a crash (kill -9) and restart: after the new BootNotification the connector
    reports Reserved again, and the reserved card's StartTransaction carries the reservationId."""
    agent = await online(run_agent, csms)
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ReserveNow", reserve_now(reservation_id=77)) == {"status": "Accepted"}
    await reserved(agent, csms, mark, reservation_id=77)
    agent.kill9()
    await csms.wait_disconnected(STATION_ID)
    restart = len(csms.frames)
    agent.start()
    await agent.ready()
    await wait_call(csms, "BootNotification", restart)
    await wait_call(csms, "StatusNotification", restart,
                    where=lambda p: p["connectorId"] == 1 and p["status"] == "Reserved")
    assert (await agent.connector())["reservation"]["id"] == 77
    await agent.cmd("sim.swipe", tag=TAG_2)  # still reserved for TAG_OK only
    await agent.cmd("sim.plug")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    start = await wait_call(csms, "StartTransaction", restart)
    assert (start.payload["idTag"], start.payload["reservationId"]) == (TAG_OK, 77)
