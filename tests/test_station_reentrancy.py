"""A journal failure while the station carries out a controller's commands (saving charging profiles at the
start or the end of a transaction) raises a storage fault in the same connector. The fault must be decided
after the command list, not inside it, and must win: no PWM and no closed contactor left on the hardware
behind a controller that believes them off, and the last StatusNotification says Faulted."""

from __future__ import annotations

import asyncio

from agent.config import load_config
from agent.controller import AuthorizationResult, IdTagPresented
from agent.journal import Journal, JournalError
from agent.station import Station
from hal.board import load_board
from tests.agent_harness import TAG_OK, write_config

TX_PROFILE = {"chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
              "chargingProfileKind": "Relative",
              "chargingSchedule": {"chargingRateUnit": "A",
                                   "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}


async def steps(station: Station, count: int = 30) -> None:
    for _ in range(count):
        station.control_step()
        await asyncio.sleep(0.01)


async def _station(tmp_path):
    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp"))
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    station = Station(config, board, Journal(config.journal.path))
    await board.start()
    return station, board


async def test_storage_fault_at_transaction_start_leaves_no_pwm_and_no_closed_contactor(tmp_path):
    station, board = await _station(tmp_path)
    rt = station.connectors[1]
    await steps(station, 3)
    board.simulator.set_ev_state("C")  # an EV that asks for power as soon as it is plugged
    await steps(station, 3)
    # a RemoteStartTransaction's TxProfile waits for its transaction; installing it fails (disk gone)
    assert station.charging_limits.accept_remote_start_profile(rt, TX_PROFILE)

    def broken_save(profiles):
        raise JournalError("disk I/O error")

    station.charging_limits._store.save = broken_save
    station._dispatch(rt, IdTagPresented(TAG_OK))
    station._dispatch(rt, AuthorizationResult(TAG_OK, True))
    await steps(station, 40)
    view = rt.controller.view()
    hw = board.simulator.snapshot()["connectors"][0]
    assert "storage" in view.faults
    # the controller believes it opened the contactor and stopped the PWM; the hardware must agree
    assert hw["pilot_mode"] == view.pilot_mode.value, "pilot hardware differs from the controller"
    assert not hw["contactor_commanded"], "contactor CLOSED on the hardware with a storage fault active"
    await board.close()


async def test_storage_fault_at_transaction_stop_is_the_last_status_reported(tmp_path):
    station, board = await _station(tmp_path)
    rt = station.connectors[1]
    sent = []
    station.ocpp.send_status = lambda cid, status, *a, **k: sent.append(status)
    board.simulator.plug(1)
    await steps(station, 5)
    station._dispatch(rt, IdTagPresented(TAG_OK))
    station._dispatch(rt, AuthorizationResult(TAG_OK, True))
    await steps(station, 40)
    assert rt.controller.transaction_active
    assert station.set_charging_profile(1, TX_PROFILE) == "Accepted"

    def broken_save(profiles):
        raise JournalError("disk I/O error")

    station.charging_limits._store.save = broken_save
    board.simulator.set_ev_state("B")  # EV stops drawing, then the driver stops the session locally
    await steps(station, 5)
    station._dispatch(rt, IdTagPresented(TAG_OK))  # stop -> TxProfile cleanup -> JournalError -> storage fault
    await steps(station, 5)
    assert rt.controller.view().status.value == "Faulted"
    assert sent[-1] == "Faulted", f"last StatusNotification {sent[-1]!r} while the connector is Faulted"
    await board.close()
