"""The control loop reports the EV's diode only from a pilot sample taken while the PWM already ran (issue 9
B.4), on the simulated board and a clock the test moves."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent.control.loop import ControlLoop
from agent.core import controller as ctl
from agent.core.controller import Fault
from agent.core.transaction_policy import plugged_and_authorized
from hal.board import load_board

SIM_BOARD = Path(__file__).resolve().parent.parent / "board-configs" / "sim.toml"


def sim_board_without_lock(tmp_path: Path) -> Path:
    """The bundled simulated board with a socket that has no lock (a lock would mask the missed check: the
    close also waits for the lock's feedback)."""
    path = tmp_path / "sim-no-lock.toml"
    path.write_text(SIM_BOARD.read_text().replace("lock = true", "lock = false"))
    return path


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_an_ev_without_diode_plugging_into_a_running_transaction_gets_no_close(tmp_path):
    """StopTransactionOnEVSideDisconnect=false keeps the transaction across an unplug; the EV that comes back
    straight into C has no diode: the PWM starts with the pilot sample that sees C, and that sample (taken under
    x1) must not count as the diode check."""
    clock = Clock()
    board = load_board(sim_board_without_lock(tmp_path), state_dir=tmp_path, clock=clock)
    await board.start()
    sent: list[dict] = []
    control = ControlLoop(board, sent.append, clock)
    settings = dataclasses.replace(ctl.SessionSettings(), min_close_interval_s=0.0, transaction_policy=plugged_and_authorized(stop_on_unplug=False))
    control.setup({1: settings}, 0.01)

    def steps(n: int):
        for _ in range(n):
            clock.now += 0.01
            control.step()

    try:
        board.simulator.set_ev_state("C")
        steps(3)
        control.handle_event(1, ctl.TokenPresented("04A1"))
        control.handle_event(1, ctl.AuthorizationResult("04A1", True))
        steps(5)
        control.handle_event(1, ctl.TransactionRecorded())
        steps(3)
        assert board.simulator.snapshot()["connectors"][0]["contactor_commanded"]
        board.simulator.set_ev_state("A")  # unplugged: the transaction goes on (SuspendedEV)
        steps(3)
        assert not board.simulator.snapshot()["connectors"][0]["contactor_commanded"]
        assert control.connectors[1].controller.transaction_active

        board.simulator.set_fault("diode", True)  # another EV, without a diode, straight into C
        board.simulator.set_ev_state("C")
        closed_in_steps = []
        for _ in range(3):
            steps(1)
            closed_in_steps.append(board.simulator.snapshot()["connectors"][0]["contactor_commanded"])
        assert Fault.DIODE in control.connectors[1].controller.faults
        assert closed_in_steps == [False, False, False], "closed before a sample under the PWM saw the diode"
    finally:
        await board.close()
