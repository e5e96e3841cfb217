"""The station shell with a real Station on the sim board: a device that cannot be read is a fault that
opens the contactor, and clears when the device answers again (the control step never breaks)."""

from __future__ import annotations

from hal.interfaces import HardwareError
from tests.station_bench import authorize, charging_station, sim_station, steps


async def test_unreadable_pilot_faults_the_connector_opens_the_contactor_and_recovers(tmp_path):
    station, board, rt = await charging_station(tmp_path)
    assert rt.controller.contactor_commanded and board.connectors[0].contactor.feedback_closed()

    read = board.connectors[0].pilot.read

    def link_down():
        raise HardwareError("co-processor silent for 1.2 s")

    board.connectors[0].pilot.read = link_down  # the pilot's back-end stops answering
    station.control_step()
    view = rt.controller.view()
    assert not view.contactor_closed and "device" in view.faults
    assert view.status.value == "faulted" and view.status_fault == "device"
    assert not rt.controller.transaction_active  # the session ended on the fault

    board.connectors[0].pilot.read = read  # it answers again
    await steps(station, 3)
    assert "device" not in rt.controller.view().faults
    assert rt.controller.view().status.value == "finished"  # EV still plugged, session over
    await board.close()


async def test_lock_fault_waits_for_the_lock_back_ends_travel_time(tmp_path):
    """The lock deadline is the lock back-end's travel_timeout_s (a board's slow motor lock sets it): a
    jammed lock is a lock fault only once that much time has passed since the command, not after 1 s."""
    now = [1000.0]

    def slow_lock(board):
        board.connectors[0].lock.travel_timeout_s = 3.0

    station, board = await sim_station(tmp_path, clock=lambda: now[0], prepare=slow_lock)
    rt = station.connectors[1]
    await steps(station, 3)
    board.simulator.set_fault("lock", True)  # jammed open: the next lock command cannot move it
    board.simulator.plug(1)
    await steps(station, 3)
    authorize(station, rt)
    await steps(station, 3)
    assert rt.controller.view().lock_commanded and not rt.controller.view().lock_feedback
    now[0] += 2.9
    await steps(station, 3)
    assert "lock" not in rt.controller.view().faults and not rt.controller.contactor_commanded
    now[0] += 0.2
    await steps(station, 3)
    view = rt.controller.view()
    assert "lock" in view.faults and view.status_fault == "lock"
    assert not view.transaction_active and not view.contactor_closed
    await board.close()


async def test_meter_ok_is_false_until_the_meter_has_answered_once(tmp_path):
    """`evse status` must not report a meter that never answered as ok (issue 9 C.11)."""
    station, board = await sim_station(tmp_path, prepare=lambda b: b.simulator.set_fault("meter", True))
    rt = station.connectors[1]
    assert station.status()["connectors"][0]["meter_ok"] is False  # no reading yet, no failure counted yet
    assert await station.metering.read_meter(rt) is None
    assert station.status()["connectors"][0]["meter_ok"] is False
    board.simulator.set_fault("meter", False)
    assert await station.metering.read_meter(rt) is not None
    assert station.status()["connectors"][0]["meter_ok"] is True
    await board.close()
