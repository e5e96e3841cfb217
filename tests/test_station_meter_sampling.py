"""Meter sampling (agent.station.meter_sampling) on a real Station with the sim board and a real SQLite journal:
one failed read is a glitch, three in a row fault the connector until the meter answers again; a
clock-aligned sample goes to the CSMS directly outside a transaction and through the journal during one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.station_bench import RecordingCsmsLink, answered, as_sent, authorize, sim_station, steps


async def test_three_failed_reads_in_a_row_fault_the_connector_until_the_meter_answers(tmp_path):
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    board.simulator.set_fault("meter", True)
    for _ in range(2):
        assert await station.metering.read_meter(rt) is None
        await station.link.sync()
    assert "meter" not in rt.controller.view().faults  # two glitches are not a dead meter
    assert await station.metering.read_meter(rt) is None
    await station.link.sync()
    await steps(station, 2)
    assert "meter" in rt.controller.view().faults
    assert station.status()["connectors"][0]["meter_ok"] is False

    board.simulator.set_fault("meter", False)
    assert await station.metering.read_meter(rt) is not None
    await steps(station, 2)
    assert "meter" not in rt.controller.view().faults
    assert station.status()["connectors"][0]["meter_ok"] is True
    await board.close()


async def test_clock_aligned_samples_outside_and_during_a_transaction(tmp_path):
    now = [datetime(2024, 5, 1, 10, 14, 50, tzinfo=UTC)]
    station, board = await sim_station(tmp_path, wall_clock=lambda: now[0], csms=RecordingCsmsLink)
    rt = station.connectors[1]
    assert station.configuration.change("ClockAlignedDataInterval", "900") == "Accepted"
    reading = await station.metering.read_meter(rt)
    station.metering.clock_aligned_sample(rt, reading)  # the first call only finds the next boundary: 10:15
    now[0] += timedelta(seconds=15)
    station.metering.clock_aligned_sample(rt, reading)
    [(connector, [value])] = station.ocpp.meter_values
    assert connector == 1 and value["timestamp"] == "2024-05-01T10:15:00.000Z"
    assert value["sampledValue"][0]["context"] == "Sample.Clock"

    board.simulator.plug(1)
    await steps(station, 5)
    authorize(station, rt)
    await steps(station)
    assert rt.local_tx is not None
    now[0] += timedelta(minutes=15)
    station.metering.clock_aligned_sample(rt, reading)
    await station.recorder.drain()
    assert len(station.ocpp.meter_values) == 1  # during a transaction: not sent directly
    start = station.journal.next_message()
    station.journal.message_delivered(start, answered(start, {"transactionId": 7, "idTagInfo": {"status": "Accepted"}}))
    action, payload = as_sent(station.journal.next_message())
    assert action == "MeterValues" and payload["transactionId"] == 7
    assert payload["meterValue"][0]["timestamp"] == "2024-05-01T10:30:00.000Z"
    assert payload["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    await board.close()


async def test_meter_values_now_is_the_last_reading(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    assert station.csms_port.meter_values_now(1) == []  # nothing read yet
    await station.metering.read_meter(station.connectors[1])
    [value] = station.csms_port.meter_values_now(1)
    assert value["sampledValue"][0]["context"] == "Trigger"
    await board.close()
