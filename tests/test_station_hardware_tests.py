"""The technician's hardware checks (agent.station.hardware_tests) and the status view on a real Station with
the sim board: refused while the devices are still being started, a contactor test refused while a
transaction runs, a meter read when idle, latched faults reset once their cause is gone."""

from __future__ import annotations

from agent.cli import hw as hw_cli
from tests.station_bench import charging_station, sim_station, steps


async def test_checks_are_refused_until_the_control_loop_has_run(tmp_path):
    station, board = await sim_station(tmp_path)
    report = await station.hardware.hw_meter(1)
    assert report["ok"] is False and report["exit_code"] == hw_cli.EXIT_USAGE
    assert "still starting" in report["error"]
    await steps(station, 1)
    report = await station.hardware.hw_meter(1)
    assert report["ok"] is True
    await board.close()


async def test_contactor_and_rcd_tests_are_refused_while_charging(tmp_path):
    station, board, rt = await charging_station(tmp_path)
    assert rt.controller.transaction_active
    for test in (station.hardware.hw_contactor_test, station.hardware.hw_rcd_test):
        report = await test(1)
        assert report["ok"] is False and report["exit_code"] == hw_cli.EXIT_USAGE
        assert "a transaction is running" in report["error"]
    assert rt.controller.contactor_commanded  # the session goes on untouched
    connector = station.status()["connectors"][0]
    assert connector["transaction_active"] and connector["id_tag"] == "0411223344"
    await board.close()


async def test_a_latched_rcd_fault_is_reset_once_its_cause_is_gone(tmp_path):
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    await steps(station, 3)
    board.simulator.set_fault("rcd", True)
    await steps(station, 3)
    assert "rcd" in rt.controller.view().faults
    assert "rcd" in await station.hardware.reset_faults(1)  # still tripped: the fault stays
    board.simulator.set_fault("rcd", False)
    await steps(station, 3)
    assert "rcd" in rt.controller.view().faults  # latched: it waits for the technician
    await station.hardware.reset_faults(1)
    await steps(station, 3)
    assert "rcd" not in rt.controller.view().faults and rt.controller.view().status.value == "available"
    await board.close()
