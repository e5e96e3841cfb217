"""The station's end of the control channel (agent.station.control_channel) with the in-process link and the sim
board: the replica follows the control loop, its status changes reach the CSMS adapter in order, and a lost
control loop is reported as every connector Faulted (and nothing after that claims otherwise)."""

from __future__ import annotations

from tests.station_bench import RecordingCsmsLink, sim_station, steps


async def test_the_replica_and_the_csms_follow_the_control_loop(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    rt = station.connectors[1]
    completed = []
    station.channel.after_control_step = lambda: completed.append(True)
    station.ocpp.online = True
    await steps(station, 3)
    assert len(completed) == 3 and station.channel.control_loop_alive_at > 0
    board.simulator.plug(1)
    await steps(station, 3)
    assert rt.controller.view().cp_state.value == "B"
    statuses = [status for cid, status, *_ in station.ocpp.statuses if cid == 1]
    assert statuses[-1] == "occupied"  # 1.6: Preparing
    await board.close()


async def test_a_lost_control_loop_faults_every_connector_at_the_csms(tmp_path):
    station, board = await sim_station(tmp_path, connectors=2, csms=RecordingCsmsLink)
    await steps(station, 3)
    station.link.on_lost("control process exited with code -9")
    assert station.channel.control_lost == "control process exited with code -9"
    assert station.ocpp.statuses[-2:] == [
        (1, "faulted", None, "control process lost", True),
        (2, "faulted", None, "control process lost", True)]
    reported = len(station.ocpp.statuses)
    board.simulator.plug(1)
    await steps(station, 3)  # the replica changes; the CSMS is told nothing that contradicts Faulted
    assert station.connectors[1].controller.view().cp_state.value == "B"
    assert len(station.ocpp.statuses) == reported
    assert station.status()["station"]["control_loop"] == "lost: control process exited with code -9"
    await board.close()
