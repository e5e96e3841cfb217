"""The EVSE-DIN style Modbus EVSE board against a pymodbus server holding its register map (TCP loopback)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hal.board import BoardConfigError, ConfigTable
from hal.build import BuildContext
from hal.interfaces import CpState, PilotMode
from hal.modbus import EvseDinBoard, ModbusBus, TcpSettings, build_evse_board
from hal.modbus.evse_board import MISSED_POLLS_FOR_F

DEVICE_ID = 1
POLL_S = 0.02
CONFIG = Path("board-configs/test.toml")
STATE_CODES = {"A": 1, "B": 2, "C": 3, "D": 4, "failure": 5}


@dataclass
class EvseDinRegisters:
    """SimDevice action: gives the test the board's holding registers and records every write."""

    registers: list[int] | None = None
    start: int = 0
    writes: list[tuple[int, list[int]]] = field(default_factory=list)
    pending: dict[int, int] = field(default_factory=dict)

    async def on_request(self, function_code, start_address, address, count, registers, set_values):
        self.registers, self.start = registers, start_address
        for reg, value in self.pending.items():
            registers[reg - start_address] = value
        self.pending.clear()
        if set_values is not None:
            self.writes.append((address, list(set_values)))
        return None

    def __getitem__(self, address: int) -> int:
        assert self.registers is not None, "the board was never polled"
        return self.registers[address - self.start]

    def set(self, address: int, value: int) -> None:
        """Change a register as the board would (vehicle state...); applied at the next request."""
        self.pending[address] = value


def evse_din_device(config_bits: int = 0) -> tuple[SimDevice, EvseDinRegisters]:
    hook = EvseDinRegisters()
    no_bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    holding = [
        # 1000 current, 1001 actual current, 1002 vehicle state, 1003, 1004, 1005 firmware
        SimData(1000, values=[0, 0, STATE_CODES["A"], 0, 0, 18], datatype=DataType.UINT16),
        SimData(2005, values=config_bits, datatype=DataType.UINT16),
        SimData(2007, values=32, datatype=DataType.UINT16),  # max current
    ]
    unused_inputs = [SimData(0, values=0, datatype=DataType.UINT16)]
    device = SimDevice(id=DEVICE_ID, simdata=(no_bits, list(no_bits), holding, unused_inputs),
                       action=hook.on_request)
    return device, hook


@dataclass
class Bench:
    board: EvseDinBoard
    registers: EvseDinRegisters
    server: ModbusTcpServer


@pytest.fixture
async def bench():
    benches: list[Bench] = []

    async def factory(config_bits: int = 0) -> Bench:
        device, hook = evse_din_device(config_bits)
        server = ModbusTcpServer(device, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        port = server.transport.sockets[0].getsockname()[1]
        bus = ModbusBus(TcpSettings("127.0.0.1", port, timeout_s=0.05, retries=0))
        board = EvseDinBoard(bus, DEVICE_ID, poll_period_s=POLL_S)
        await board.start()
        benches.append(Bench(board, hook, server))
        return benches[-1]

    yield factory
    for b in benches:
        await b.board.close()
        await b.server.shutdown()


async def eventually(condition, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_start_reads_state_firmware_and_config(bench):
    b = await bench()
    assert b.board.read().state is CpState.A  # start() polled once already
    assert b.board.firmware_version == 18 and b.board.config_bits == 0
    assert b.board.output.mode is PilotMode.X1


async def test_set_pwm_writes_whole_amps_and_x1_writes_zero(bench):
    b = await bench()
    b.board.set_pwm(26.67)  # 16.0 A
    await eventually(lambda: b.registers[1000] == 16)
    assert (1000, [16]) in b.registers.writes
    assert b.board.output.mode is PilotMode.PWM and b.board.output.duty_percent == 26.67

    b.board.set_pwm(30.0)  # 18.0 A
    await eventually(lambda: b.registers[1000] == 18)
    b.board.set_pwm(27.5)  # 16.5 A is offered as 16 A: rounded down, never up
    await eventually(lambda: b.registers[1000] == 16)

    b.board.set_x1()
    await eventually(lambda: b.registers[1000] == 0)
    assert b.board.output.mode is PilotMode.X1


async def test_set_f_offers_nothing_since_the_board_has_no_state_f(bench):
    b = await bench()
    b.board.set_pwm(50.0)
    await eventually(lambda: b.registers[1000] == 30)
    b.board.set_f()
    await eventually(lambda: b.registers[1000] == 0)
    assert b.board.output.mode is PilotMode.F


async def test_precise_current_bit_writes_hundredths(bench):
    b = await bench(config_bits=1 << 7)
    b.board.set_pwm(26.67)
    await eventually(lambda: b.registers[1000] == 1600)
    await eventually(lambda: b.board.offered_current_a == 16.0)


@pytest.mark.parametrize(("code", "state"), [("B", CpState.B), ("C", CpState.C), ("D", CpState.D),
                                             ("failure", CpState.E), ("A", CpState.A)])
async def test_vehicle_state_register_is_read_as_cp_state(bench, code, state):
    b = await bench()
    b.registers.set(1002, STATE_CODES[code])
    await eventually(lambda: b.board.read().state is state)


async def test_feedback_is_inferred_from_state_c_and_offered_current(bench):
    b = await bench()
    b.board.set_pwm(26.67)
    b.registers.set(1002, STATE_CODES["B"])
    await eventually(lambda: b.registers[1000] == 16 and b.board.read().state is CpState.B)
    assert not b.board.feedback_closed()  # current offered, but the EV does not ask for it

    b.registers.set(1002, STATE_CODES["C"])  # the board closes its relay by itself
    await eventually(b.board.feedback_closed)
    b.board.set_closed(True)
    assert b.board.commanded_closed

    # Opening always works, even while the pilot still offers current: the board gets 0 A.
    b.board.set_closed(False)
    await eventually(lambda: b.registers[1000] == 0 and not b.board.feedback_closed())
    await asyncio.sleep(5 * POLL_S)
    assert b.registers[1000] == 0  # stays at 0 while the EV is in C

    # The EV pauses (B): the relay is open, so the pilot's current is offered again and it can resume.
    b.registers.set(1002, STATE_CODES["B"])
    await eventually(lambda: b.registers[1000] == 16)
    assert not b.board.feedback_closed()


async def test_board_that_stops_answering_reads_as_f_and_feedback_false(bench):
    b = await bench()
    b.board.set_pwm(26.67)
    b.registers.set(1002, STATE_CODES["C"])
    await eventually(b.board.feedback_closed)

    await b.server.shutdown()
    # Up to MISSED_POLLS_FOR_F failed polls keep the last state; then F, never an exception.
    await eventually(lambda: b.board.consecutive_failures >= 1)
    assert b.board.consecutive_failures > MISSED_POLLS_FOR_F or b.board.read().state is CpState.C
    await eventually(lambda: b.board.read().state is CpState.F)
    assert b.board.consecutive_failures > MISSED_POLLS_FOR_F
    assert not b.board.feedback_closed()
    assert "127.0.0.1" in b.board.last_error and "device id 1" in b.board.last_error
    b.board.set_x1()  # commands still work (they are queued) and raise nothing


async def test_close_leaves_the_board_offering_nothing(bench):
    b = await bench()
    b.board.set_pwm(26.67)
    await eventually(lambda: b.registers[1000] == 16)
    await b.board.close()
    assert b.registers[1000] == 0
    await b.board.close()  # twice is fine


async def test_read_before_start_is_f_and_raises_nothing():
    bus = ModbusBus(TcpSettings("127.0.0.1", 1))
    board = EvseDinBoard(bus, 1)
    assert board.read().state is CpState.F and not board.feedback_closed()
    board.set_pwm(26.67)
    board.set_closed(False)


# ---- config -------------------------------------------------------------------------------------------


def pilot_table(data: dict) -> ConfigTable:
    return ConfigTable({"backend": "modbus-evse", **data}, "[[connectors]][0].pilot", CONFIG)


def test_build_evse_board():
    bus = ModbusBus(TcpSettings("127.0.0.1"))
    ctx = BuildContext(CONFIG, buses={"rs485": bus})
    board = build_evse_board(pilot_table({"bus": "rs485", "device_id": 11, "poll_period_s": 0.5}), ctx)
    assert board.bus is bus and board.device_id == 11 and board.poll_period_s == 0.5
    assert build_evse_board(pilot_table({"bus": "rs485", "device_id": 1}), ctx).poll_period_s == 0.2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bus": "evse", "device_id": 1}, r"\.bus: no bus named \"evse\" \(defined buses: \"rs485\"\)"),
        ({"bus": "rs485", "device_id": 0}, r"\.device_id: must be between 1 and 247, got 0"),
        ({"bus": "rs485", "device_id": 1, "poll_period_s": 0}, r"\.poll_period_s: must be between"),
        ({"bus": "rs485", "device_id": 1, "phases": 3}, r"\.phases: unknown key"),
    ],
)
def test_build_evse_board_rejects_bad_config_in_one_line(data, message):
    ctx = BuildContext(CONFIG, buses={"rs485": ModbusBus(TcpSettings("127.0.0.1"))})
    with pytest.raises(BoardConfigError, match=message) as err:
        build_evse_board(pilot_table(data), ctx)
    assert str(err.value).startswith(f"{CONFIG}: [[connectors]][0].pilot.")
