"""A reservation of connector 0 moves to another connector when its holder faults. If the journal cannot
store the move, that is a storage fault: the error never escapes the control step (which would stop the
control loop, StationCrashed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.core import controller as ctl
from agent.station.csms_link import ReservationRequest
from agent.station.journal import JournalError
from tests.station_bench import sim_station, steps


async def test_moving_a_station_reservation_with_a_broken_journal_is_a_storage_fault(tmp_path):
    station, board = await sim_station(tmp_path, connectors=2)
    await steps(station, 3)
    expiry = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert station.csms_port.reserve_now(ReservationRequest(0, expiry, "TAG9", 42)) == "Accepted"
    holder = next(cid for cid, rt in station.connectors.items() if rt.controller.reservation is not None)

    def broken(*_):
        raise JournalError("disk I/O error")

    station.journal.set_setting = broken
    station.journal.delete_setting = broken
    try:
        # the holder's RCD trips: the reservation ends ("faulted") and moves to the other connector
        station.channel.dispatch(station.connectors[holder], ctl.FaultChanged(ctl.Fault.RCD, True))
    except JournalError as exc:
        pytest.fail(f"JournalError escaped the controller's command execution (control loop would crash): {exc}")
    finally:
        await board.close()
    assert all("storage" in rt.controller.view().faults for rt in station.connectors.values())
