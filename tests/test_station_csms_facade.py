"""The CSMS facade (agent.station.csms_facade), what the CSMS may ask of the station, on a real Station with the
sim board and a real SQLite journal, seen from a CsmsLink that records what the station sends back:
typed statuses, availability that survives a restart, remote start and stop, reservations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.authorization import AuthorizationStatus, TokenInfo
from agent.station.csms_link import ReservationRequest, StatusReport
from tests.agent_harness import TAG_OK
from tests.station_bench import RecordingCsmsLink, answered, sim_station, steps


async def test_the_station_receives_its_adapter_and_reports_typed_statuses(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    assert isinstance(station.ocpp, RecordingCsmsLink) and station.ocpp.port is station.csms_port
    await steps(station, 3)
    assert station.csms_port.statuses() == [StatusReport(0, "available"), StatusReport(1, "available")]
    assert station.csms_port.connector_ids == [1]
    await board.close()


async def test_inoperative_station_stays_inoperative_after_a_restart(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    await steps(station, 3)
    assert station.csms_port.change_availability(0, False) == "Accepted"
    await steps(station, 3)
    assert (0, "unavailable", None, None, False) in station.ocpp.statuses
    assert [s.status for s in station.csms_port.statuses()] == ["unavailable", "unavailable"]
    station.journal.close()
    await board.close()

    again, board = await sim_station(tmp_path, csms=RecordingCsmsLink)  # the same journal file
    again.recover()
    await steps(again, 3)
    assert [s.status for s in again.csms_port.statuses()] == ["unavailable", "unavailable"]
    await board.close()


async def test_remote_start_and_stop(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    port = station.csms_port
    rt = station.connectors[1]
    station.ocpp.online = True
    station.ocpp.answers[TAG_OK] = TokenInfo(AuthorizationStatus.ACCEPTED)  # AuthorizeRemoteTxRequests: the id is authorized
    board.simulator.plug(1)
    await steps(station, 5)
    assert port.remote_start(None, TAG_OK)
    await steps(station)
    assert rt.controller.transaction_active and rt.local_tx is not None
    assert not port.remote_stop(99)  # no transaction of the CSMS's has that id
    start = station.journal.next_message()
    delivery = answered(start, {"transactionId": 42, "idTagInfo": {"status": "Accepted"}})
    station.journal.message_delivered(start, delivery)
    port.transaction_message_delivered(start, delivery)
    assert port.remote_stop(42)
    await steps(station, 40)
    assert not rt.controller.transaction_active
    await board.close()


async def test_reservation_requests(tmp_path):
    now = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    station, board = await sim_station(tmp_path, wall_clock=lambda: now, csms=RecordingCsmsLink)
    port = station.csms_port
    await steps(station, 3)
    later = (now + timedelta(hours=1)).isoformat()
    assert port.reserve_now(ReservationRequest(1, later, TAG_OK, 5)) == "Accepted"
    await steps(station, 3)
    assert station.connectors[1].controller.view().status.value == "reserved"
    assert port.reserve_now(ReservationRequest(1, "next tuesday", TAG_OK, 6)) == "Rejected"
    assert port.reserve_now(ReservationRequest(1, (now - timedelta(hours=1)).isoformat(), TAG_OK, 7)) == "Rejected"
    assert port.cancel_reservation(5) == "Accepted"
    assert port.cancel_reservation(5) == "Rejected"
    await board.close()
