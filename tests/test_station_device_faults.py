"""The station shell with a real Station on the sim board: a device that cannot be read is a fault that
opens the contactor, and clears when the device answers again (the control step never breaks)."""

from __future__ import annotations

import asyncio

from agent.config import load_config
from agent.controller import AuthorizationResult, IdTagPresented
from agent.journal import Journal
from agent.station import Station
from hal.board import load_board
from hal.interfaces import HardwareError
from tests.agent_harness import TAG_OK, write_config


async def steps(station: Station, count: int = 30) -> None:
    for _ in range(count):
        station.control_step()
        await asyncio.sleep(0.01)


async def test_unreadable_pilot_faults_the_connector_opens_the_contactor_and_recovers(tmp_path):
    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp"))
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    station = Station(config, board, Journal(config.journal.path))
    await board.start()
    rt = station.connectors[1]
    board.simulator.plug(1)
    await steps(station, 5)
    station._dispatch(rt, IdTagPresented(TAG_OK))
    station._dispatch(rt, AuthorizationResult(TAG_OK, True))
    await steps(station)
    assert rt.controller.contactor_commanded and rt.hw.contactor.feedback_closed()

    read = rt.hw.pilot.read

    def link_down():
        raise HardwareError("co-processor silent for 1.2 s")

    rt.hw.pilot.read = link_down  # the pilot's back-end stops answering
    station.control_step()
    view = rt.controller.view()
    assert not view.contactor_closed and "device" in view.faults
    assert view.status.value == "Faulted" and view.error_code == "InternalError"
    assert not rt.controller.transaction_active  # the session ended on the fault

    rt.hw.pilot.read = read  # it answers again
    await steps(station, 3)
    assert "device" not in rt.controller.view().faults
    assert rt.controller.view().status.value == "Finishing"  # EV still plugged, session over
    await board.close()
