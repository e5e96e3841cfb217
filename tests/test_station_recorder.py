"""The transaction recorder (agent.station.recorder) on a real Station with the sim board and a real SQLite
journal: energy flows only after the start is committed; a journal that cannot be written faults the
station instead of granting; the stop records the final register; an interrupted transaction is closed
with PowerLoss at the next start."""

from __future__ import annotations

from agent.core import controller as ctl
from agent.station.journal import JournalError
from tests.station_bench import answered, as_sent, authorize, charging_station, sim_station, steps


def recording_dispatch(station, seen: list):
    """Write down, for every TransactionRecorded the recorder sends to the control loop, what the journal
    held at that moment."""
    send = station.link.send_event

    def spy(connector_id, event):
        if isinstance(event, ctl.TransactionRecorded):
            seen.append((event.ok, [tx.id_token for tx in station.journal.running_transactions()]))
        send(connector_id, event)
    station.link.send_event = spy


async def test_the_start_is_committed_before_energy_may_flow(tmp_path):
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    seen: list = []
    recording_dispatch(station, seen)
    board.simulator.plug(1)
    await steps(station, 5)
    authorize(station, rt)
    await steps(station)
    assert seen == [(True, ["0411223344"])]  # granted once, with the transaction already in the journal
    assert rt.controller.contactor_commanded and rt.local_tx is not None
    first = station.journal.next_message()
    assert first.kind == "started" and first.transaction.id_token == "0411223344"
    assert as_sent(first)[0] == "StartTransaction" and as_sent(first)[1]["idTag"] == "0411223344"
    await board.close()


async def test_a_journal_that_cannot_be_written_faults_instead_of_granting(tmp_path):
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    seen: list = []
    recording_dispatch(station, seen)

    def disk_full(*args, **kwargs):
        raise JournalError("database or disk is full")
    station.journal.begin_transaction = disk_full
    board.simulator.plug(1)
    await steps(station, 5)
    authorize(station, rt)
    await steps(station)
    assert seen == [(False, [])]
    view = rt.controller.view()
    assert "storage" in view.faults and view.status.value == "faulted"
    assert not view.contactor_closed and not board.connectors[0].contactor.feedback_closed()
    assert station.recorder.storage_error == "database or disk is full"
    assert station.status()["journal"]["error"] == "database or disk is full"
    await board.close()


async def test_the_stop_records_the_final_register_once_the_contactor_is_open(tmp_path):
    station, board, rt = await charging_station(tmp_path)
    await steps(station, 20)
    assert station.stop_transaction(1)
    await steps(station, 40)
    await station.recorder.drain()
    assert rt.local_tx is None and not station.recorder.transactions_active()
    assert station.journal.running_transactions() == []
    actions = []
    while (message := station.journal.next_message()) is not None:
        actions.append(as_sent(message))
        station.journal.message_delivered(message, answered(message, {"transactionId": 7,
                                                                      "idTagInfo": {"status": "Accepted"}}))
    stop = [payload for action, payload in actions if action == "StopTransaction"]
    assert len(stop) == 1 and stop[0]["reason"] == "Local"
    assert stop[0]["meterStop"] == round(rt.last_reading.energy_wh)  # the register read after the contactor opened
    await board.close()


async def test_an_interrupted_transaction_is_closed_with_power_loss_at_the_next_start(tmp_path):
    station, board = await sim_station(tmp_path)
    local_id = station.journal.begin_transaction(1, "0411223344", 1000.0, "2024-05-01T10:00:00Z")
    station.journal.add_meter_values(local_id, [], 1500.0, "2024-05-01T10:30:00Z")
    station.journal.close()
    await board.close()

    again, board = await sim_station(tmp_path)  # the next run: a new station on the same journal file
    assert [tx.local_id for tx in again.journal.running_transactions()] == [local_id]
    again.recover()
    assert again.journal.running_transactions() == []
    record = again.journal.transaction(local_id)
    assert record.stopped and record.last_meter == 1500.0
    again.journal.close()
    await board.close()
