"""The channel between the agent process and the control process (agent.control.channel), and the control loop's
side of it (agent.control.loop) with the simulated board: what crosses, what is refused, and the
supervision of the agent by the control loop, on an injected clock."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from agent.control import channel
from agent.control.loop import ControlLoop, describe
from agent.core import controller as ctl
from hal.board import load_board
from hal.interfaces import CpState, MeterReading, PilotMode

EVENTS = [
    ctl.PilotChanged(CpState.C), ctl.DiodeChecked(False), ctl.ContactorFeedback(True), ctl.LockFeedback(True),
    ctl.UnlockRequested(), ctl.CableDetected(20.0), ctl.CableDetected(None), ctl.FaultChanged(ctl.Fault.RCD, True),
    ctl.TokenPresented("04A1B2"), ctl.AuthorizationResult("04A1B2", True, "PARENT"), ctl.RemoteStart("X"),
    ctl.ResumeTransaction("X"), ctl.StopRequested(ctl.StopReason.REMOTE, "X"), ctl.TransactionRecorded(),
    ctl.TransactionConfirmed(False, None), ctl.AvailabilityChanged(False),
    ctl.ReservationMade(7, "X", None, 123.5, any_connector=True), ctl.ReservationCancelled(7, "expired"),
    ctl.SettingsChanged(ctl.SessionSettings(max_current_a=32.0, ventilation_available=True)),
    ctl.ResetLatchedFaults(), ctl.ChargingLimitChanged(5.9), ctl.Tick(),
]
COMMANDS = [
    ctl.SetContactor(True), ctl.SetPilot(PilotMode.PWM, 26.67), ctl.SetLock(False), ctl.RequestAuthorization("X"),
    ctl.BeginTransaction("X", 7), ctl.EndTransaction(ctl.StopReason.EV_DISCONNECTED, None),
    ctl.StatusChanged(ctl.ConnectorStatus.FAULTED, ctl.Fault.WELD, None),
    ctl.ReservationEnded(7, "used"), ctl.Notice("text"),
]


@pytest.mark.parametrize("value", EVENTS + COMMANDS, ids=lambda v: type(v).__name__)
def test_every_event_and_command_crosses_the_channel_unchanged(value):
    line = channel.dumps(channel.message(channel.EVENT, connector=1, event=channel.encode(value)))
    assert channel.decode(channel.loads(line)["event"]) == value


def test_every_controller_event_type_is_covered_by_the_codec_test():
    covered = {type(v) for v in EVENTS}
    assert covered == set(ctl.Event.__args__)  # a new event type must be added above (and cross the channel)
    assert {type(c) for c in COMMANDS} == set(ctl.Command.__args__)


def test_a_meter_reading_with_values_the_meter_marks_not_available_crosses_unchanged():
    reading = MeterReading(1234.5, None, (10.0, None, None), (230.0, None, None), taken_at=5.0)
    assert channel.decode(json.loads(json.dumps(channel.encode(reading)))) == reading


def test_the_controller_replica_answers_like_the_controller():
    """The agent's replica, fed the state messages, gives the same view and the same decisions."""
    original = ctl.ConnectorController(has_lock=True)
    for event in [ctl.PilotChanged(CpState.B), ctl.LockFeedback(False), ctl.TokenPresented("04A1"),
                  ctl.AuthorizationResult("04A1", True, "P1"), ctl.LockFeedback(True), ctl.TransactionRecorded(),
                  ctl.ReservationMade(3, "OTHER", None, 99.0), ctl.ChargingLimitChanged(10.0)]:
        original.handle(event, 1.5)
    replica = ctl.ConnectorController()
    channel.apply_controller_state(replica, json.loads(json.dumps(channel.controller_state(original))))
    assert replica.view() == original.view()
    assert replica.transaction_active and replica.offered_current_a() == 10.0
    assert replica.can_accept_remote_start("X") == original.can_accept_remote_start("X")
    assert replica.reservation_answer(4) == original.reservation_answer(4) == "Occupied"
    assert replica._last_close_at == original._last_close_at == -math.inf  # infinities cross too


def test_a_message_of_another_protocol_version_is_refused():
    line = json.dumps({"v": channel.PROTOCOL_VERSION + 1, "kind": "event"}).encode()
    with pytest.raises(channel.ChannelError, match="version"):
        channel.loads(line)


@pytest.mark.parametrize("line", [b"not json", b"[1, 2]", b'{"v": 1}', b"[" * 100_000])
def test_garbage_on_the_channel_is_a_channel_error(line):
    with pytest.raises(channel.ChannelError):
        channel.loads(line)


@pytest.mark.parametrize("data", [{"$t": "Popen", "args": ["sh"]}, {"$e": "Signals", "v": 9},
                                  {"$t": "SetContactor", "closed": True, "extra": 1}])
def test_only_registered_types_with_their_own_fields_can_be_decoded(data):
    with pytest.raises(channel.ChannelError):
        channel.decode(data)


def test_the_hello_round_trips(tmp_path):
    board = load_board(_board_file(), state_dir=tmp_path)
    info = describe(board, read_pilots=False)
    assert channel.BoardInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert info.simulated and info.connectors[0].connector_id == 1


# ---- the control loop, in this process, on a clock the test moves -----------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _board_file():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent / "board-configs" / "sim.toml"


async def _control(tmp_path, clock):
    board = load_board(_board_file(), state_dir=tmp_path, clock=clock)
    await board.start()
    sent: list[dict] = []
    control = ControlLoop(board, sent.append, clock)
    control.setup({1: dataclasses.replace(ctl.SessionSettings(), min_close_interval_s=0.0)}, 0.01)
    return control, board, sent


def _commands(sent: list[dict]) -> list:
    return [channel.decode(c) for m in sent if m["kind"] == channel.OUTPUT for c in m["commands"]]


async def test_energy_flows_only_after_the_agent_said_the_start_is_recorded(tmp_path):
    clock = Clock()
    control, board, sent = await _control(tmp_path, clock)
    board.simulator.set_ev_state("C")
    for _ in range(3):
        control.step()
        clock.now += 0.01
    control.handle_event(1, ctl.TokenPresented("04A1"))
    control.handle_event(1, ctl.AuthorizationResult("04A1", True))
    for _ in range(5):  # the plug locks first, where the outlet has a lock
        control.step()
        clock.now += 0.01
    assert ctl.BeginTransaction("04A1") in _commands(sent)
    snap = board.simulator.snapshot()["connectors"][0]
    assert snap["pilot_mode"] == "X1" and not snap["contactor_commanded"], "energy before the journal had it"

    control.handle_event(1, ctl.TransactionRecorded())
    assert board.simulator.snapshot()["connectors"][0]["pilot_mode"] == "PWM"
    assert not board.simulator.snapshot()["connectors"][0]["contactor_commanded"]  # the diode is unknown yet
    control.step()  # a pilot sample under the PWM: diode checked
    assert board.simulator.snapshot()["connectors"][0]["contactor_commanded"]
    await board.close()


async def test_a_silent_agent_faults_the_connector_and_opens_the_contactor_then_recovers(tmp_path):
    clock = Clock()
    control, board, sent = await _control(tmp_path, clock)
    control.supervise_agent = True
    control.agent_deadline_s = 2.0
    board.simulator.set_ev_state("C")
    control.agent_alive()
    control.step()
    control.handle_event(1, ctl.TokenPresented("04A1"))
    control.handle_event(1, ctl.AuthorizationResult("04A1", True))
    for _ in range(3):
        control.step()
    control.handle_event(1, ctl.TransactionRecorded())
    control.step()
    assert board.simulator.snapshot()["connectors"][0]["contactor_commanded"]

    clock.now += 1.999
    control.step()
    assert board.simulator.snapshot()["connectors"][0]["contactor_commanded"], "opened before the deadline"
    clock.now += 0.002
    control.step()
    snap = board.simulator.snapshot()["connectors"][0]
    assert not snap["contactor_commanded"] and snap["pilot_mode"] != "PWM"
    assert "supervision" in [str(f) for f in control.connectors[1].controller.faults]
    assert not [c for c in _commands(sent) if isinstance(c, ctl.EndTransaction)]  # suspended, not ended

    control.agent_alive()  # the agent answers again: the same transaction charges on
    assert not control.connectors[1].controller.faults
    control.step()
    clock.now += 0.01
    control.step()
    assert control.connectors[1].controller.transaction_active
    assert board.simulator.snapshot()["connectors"][0]["contactor_commanded"]
    await board.close()


async def test_simulator_commands_outside_the_list_are_refused(tmp_path):
    control, board, _ = await _control(tmp_path, Clock())
    with pytest.raises(channel.RequestFailed, match="unknown simulator command"):
        await control.request("sim", {"method": "save", "params": {}})
    with pytest.raises(channel.RequestFailed, match="no connector"):
        await control.request("read_meter", {"connector": 9})
    await board.close()


def test_the_control_process_imports_no_protocol_storage_or_crypto_library(tmp_path):
    """The safety path stays lean (issue 9 B.1): the control process's code and a started sim board pull in
    neither the OCPP library, jsonschema, websockets, SQLite nor cryptography."""
    import subprocess
    import sys

    script = (
        "import asyncio, sys\n"
        "import agent.control.process\n"
        "from pathlib import Path\n"
        "from hal.board import load_board\n"
        f"board = load_board(Path({str(_board_file())!r}), state_dir=Path({str(tmp_path)!r}))\n"
        "asyncio.run(board.start())\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    root = str(_board_file().parent.parent)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=root,
                         check=True).stdout
    loaded = set(out.split())
    assert "agent" in loaded and "hal" in loaded
    assert loaded.isdisjoint({"ocpp", "jsonschema", "websockets", "sqlite3", "_sqlite3", "cryptography"}), loaded
