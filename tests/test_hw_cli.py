"""`evse hw ...` against simulated devices: directly on the board's devices, and through a running agent.

Devices: a pymodbus server for the meter, the SimMcu twin on a pty for the co-processor's pilot, contactor
and RCD, RFID readers on ptys, and gpiozero mock pins (relay coil wired to its mirror contact, a simulated
MCP3008 behind the pilot) for the GPIO contactor test. Board configs are the shipped ones with their ports
pointed at the simulated devices. The CLI runs in a worker thread (its own event loop) so the servers in
the test's loop keep answering; one check runs it as a process, like a technician does.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest

from agent.cli import hw as hw_cli
from agent.cli.main import build_parser
from hal.coproc.mcu_ports import PtyPort
from hal.coproc.sim_mcu import SimMcu
from hal.sim.connector import SimConnectorSpec, SimEvSpec
from tests.agent_harness import REPO, STATION_ID, TAG_OK, Agent, charge, write_config
from tests.simulated_devices import (
    EvseDinSim,
    GpioBench,
    InProcessAgent,
    Pn532Pty,
    PtyDevice,
    Rdm6300Pty,
    SimMeter,
    modbus_bus_to_tcp,
    rewrite_board,
    start_tcp_server,
)

BOARDS = REPO / "board-configs"
COPROC = BOARDS / "coproc-uart-b23-rdm6300.toml"
PI = BOARDS / "pi-relay-mcp3008-sdm630-pn532.toml"


def run_hw(argv: list[str], pin_factory=None) -> int:
    return hw_cli.run(build_parser().parse_args(["hw", *argv]), pin_factory=pin_factory)


@pytest.fixture
def hw(capsys):
    """`code, out, err = await hw("meter", "--board", path)`: the CLI in a worker thread."""

    async def call(*argv: str, pin_factory=None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(run_hw, list(argv), pin_factory)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture
def hw_sync(capsys):
    def call(*argv: str, pin_factory=None) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_hw(list(argv), pin_factory)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


# ---- a co-processor board: SimMcu on a pty, the B23 on Modbus TCP, an RDM6300 on a pty -----------------


class CoprocBench:
    def __init__(self, tmp_path: Path):
        self.mcu = SimMcu(PtyPort(), [SimConnectorSpec(1)], ev=SimEvSpec(response_s=0.1)).start()
        self.meter = SimMeter("abb-b23", 1, energy_wh=987_650.0, voltage_v=231.5, current_a=0.0)
        self.reader = Rdm6300Pty()
        self.board = tmp_path / "board.toml"
        self.server = None

    async def start(self, **edits) -> CoprocBench:
        self.server, self.port = await start_tcp_server([self.meter.device])

        def edit(c):
            c["coprocessor"]["port"] = edits.get("coprocessor_port", self.mcu.port.host_path)
            c["rfid"]["port"] = edits.get("rfid_port", self.reader.path)
            modbus_bus_to_tcp(c, "rs485", self.port)

        rewrite_board(COPROC, self.board, edit)
        return self

    async def close(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
        self.reader.close()
        self.mcu.stop()


@pytest.fixture
async def coproc(tmp_path):
    bench = CoprocBench(tmp_path)
    yield bench
    await bench.close()


async def test_meter_reading(coproc, hw):
    await coproc.start()
    code, out, err = await hw("meter", "--board", str(coproc.board))
    assert (code, err) == (0, "")
    assert "ABB B23 (A/B series) meter, device id 1 on Modbus TCP 127.0.0.1:" in out
    assert "987.650 kWh (987650 Wh)" in out and "L3 231.5 V 0.00 A" in out


async def test_meter_watch_prints_one_line_per_reading(coproc, hw):
    await coproc.start()
    code, out, _ = await hw("meter", "--board", str(coproc.board), "--watch", "--count", "3", "--interval", "0.05")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3 and all("987.650 kWh" in line for line in lines)


async def test_meter_that_does_not_answer_names_host_device_and_register(coproc, hw):
    await coproc.start()
    coproc.meter.silent = True
    code, out, err = await hw("meter", "--board", str(coproc.board))
    assert (code, out) == (1, "")
    assert f"Modbus TCP 127.0.0.1:{coproc.port}: device id 1: read holding registers" in err
    assert "timeout, no answer within 0.5 s (2 tries)" in err
    assert err.count("\n") == 1


async def test_meter_on_a_missing_rs485_adapter(tmp_path, hw):
    board = rewrite_board(COPROC, tmp_path / "b.toml",
                          lambda c: c["buses"]["rs485"].update(port=str(tmp_path / "ttyUSB9")))
    code, _, err = await hw("meter", "--board", str(board))
    assert code == 1
    assert f"Modbus RTU {tmp_path}/ttyUSB9 (9600 8E1): device id 1" in err
    assert "does not exist: is the RS-485 adapter plugged in?" in err


async def test_usage_and_config_errors_exit_2(tmp_path, coproc, hw):
    await coproc.start()
    code, _, err = await hw("meter", "--board", str(coproc.board), "--connector", "2")
    assert (code, err) == (2, "evse hw: no connector 2; this board has 1\n")
    code, _, err = await hw("meter", "--board", str(tmp_path / "nope.toml"))
    assert code == 2 and "config error:" in err and "nope.toml: cannot read board config" in err
    code, _, err = await hw("pilot", "--socket", str(tmp_path / "none.sock"))
    assert code == 2 and "no agent answers on" in err
    code, _, err = await hw("rfid", "--board", str(BOARDS / "coproc-can-2x-sdm630-tcp.toml"))
    assert (code, err) == (2, "evse hw: the board has no card reader ([rfid] table)\n")


async def test_pilot_state_voltages_and_cable_from_the_coprocessor(coproc, hw):
    await coproc.start()
    code, out, _ = await hw("pilot", "--board", str(coproc.board))
    assert code == 0
    assert "CP state A  (+12.00 V / +12.00 V, diode ok)" in out and "no cable plugged" in out
    coproc.mcu.plug()
    code, out, _ = await hw("pilot", "--board", str(coproc.board))
    assert code == 0
    assert "CP state B  (+8.79 V / +8.79 V, diode ok)" in out and "cable rated 32 A" in out


MODBUS_EVSE = BOARDS / "pi-modbus-evse-sdm120-hid.toml"


@pytest.fixture
async def modbus_evse_board(tmp_path):
    """The shipped EVSE-DIN board config with its RS-485 line served over TCP: (EvseDinSim, board file)."""
    evse, meter = EvseDinSim(device_id=1), SimMeter("sdm120", 2)
    server, port = await start_tcp_server([evse.device, meter.device])
    board = rewrite_board(MODBUS_EVSE, tmp_path / "board.toml", lambda c: modbus_bus_to_tcp(c, "rs485", port))
    yield evse, board
    await server.shutdown()


async def test_pilot_on_a_modbus_evse_board_prints_no_invented_voltages_or_diode(modbus_evse_board, hw):
    """The EVSE-DIN board reports only the vehicle state: no plateau voltages, no diode check."""
    evse, board = modbus_evse_board
    evse.plugged = True
    code, out, err = await hw("pilot", "--board", str(board))
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == ("connector 1: CP state B  (plateau voltages not reported by this board, "
                                   "diode check not reported by this board)")
    assert " V " not in out and "diode ok" not in out


async def test_pilot_json_on_a_modbus_evse_board_has_null_voltages_and_diode(modbus_evse_board, hw):
    evse, board = modbus_evse_board
    code, out, _ = await hw("pilot", "--board", str(board), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True and report["state"] == "A"
    assert (report["high_v"], report["low_v"], report["diode_ok"]) == (None, None, None)


async def test_pilot_json_from_a_coprocessor_keeps_the_measured_voltages(coproc, hw):
    await coproc.start()
    code, out, _ = await hw("pilot", "--board", str(coproc.board), "--json")
    report = json.loads(out)
    assert code == 0 and report["state"] == "A" and report["diode_ok"] is True
    assert report["high_v"] == pytest.approx(12.0) and report["pp"] == "no cable"


def test_meter_report_shows_values_the_meter_marks_not_available_as_n_a():
    report = {"connector": 1, "meter": "ABB B23 (A/B series) meter", "energy_wh": 1234560.0, "power_w": None,
              "current_a": [16.01, None, None], "voltage_v": [230.1, None, None]}
    text = hw_cli.format_meter(report)
    assert "  power   n/a" in text
    assert "  phases  L1 230.1 V 16.01 A  L2 n/a n/a  L3 n/a n/a" in text
    assert "1234.560 kWh  n/a  L1 230.1 V" in hw_cli.format_meter(report, line=True)


async def test_pilot_with_a_silent_coprocessor(coproc, hw):
    dead = PtyDevice()  # a UART with nobody on the other end
    try:
        await coproc.start(coprocessor_port=dead.path)
        code, out, err = await hw("pilot", "--board", str(coproc.board))
    finally:
        dead.close()
    assert (code, out) == (1, "")
    assert f"coprocessor on {dead.path}: no status from the MCU for connector 1 yet" in err


async def test_contactor_test_is_not_possible_on_a_coprocessor(coproc, hw):
    await coproc.start()
    code, _, err = await hw("contactor", "test", "--board", str(coproc.board))
    assert code == 2
    assert "the co-processor closes the contactor only while an EV asks for power" in err
    assert not coproc.mcu.snapshot()["coil"]


async def test_rcd_self_test_through_the_coprocessor(coproc, hw):
    await coproc.start()
    code, out, _ = await hw("rcd", "test", "--board", str(coproc.board))
    assert code == 0 and "RCD self-test passed: the co-processor reports the self-test passed" in out
    coproc.mcu.set_fault("rcd_selftest", True)
    code, _, err = await hw("rcd", "test", "--board", str(coproc.board))
    assert code == 1 and "RCD self-test FAILED (reported by the coprocessor on" in err


def presenting(present, stop: threading.Event) -> threading.Thread:
    """Keep a card on the reader (every 50 ms) until `stop`, like a technician holding it there."""

    def run():
        while not stop.wait(0.05):
            present()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_rfid_rdm6300_prints_the_card_id(coproc, hw):
    await coproc.start()
    stop = threading.Event()
    presenting(lambda: coproc.reader.present(TAG_OK, repeats=1), stop)
    try:
        code, out, _ = await hw("rfid", "--board", str(coproc.board), "--timeout", "5")
    finally:
        stop.set()
    assert (code, out) == (0, f"{TAG_OK}\n")


async def test_rfid_pn532_prints_the_card_id(gpio, hw):
    reader = Pn532Pty()
    reader.present("04A1B2C3D4E5F6", polls=10_000)
    bench, board = gpio(rfid_port=reader.path)
    try:
        code, out, _ = await hw("rfid", "--board", str(board), "--timeout", "5", pin_factory=bench.factory)
    finally:
        reader.close()
    assert (code, out) == (0, "04A1B2C3D4E5F6\n")


async def test_rfid_reader_that_cannot_be_opened(coproc, hw, tmp_path):
    await coproc.start(rfid_port=str(tmp_path / "ttyAMA7"))
    code, _, err = await hw("rfid", "--board", str(coproc.board), "--timeout", "0.5")
    assert code == 1
    assert f"RDM6300 on {tmp_path}/ttyAMA7: not answering within 0.5 s:" in err and "No such file" in err


# ---- a GPIO contactor with its mirror contact, on mock pins --------------------------------------------


@pytest.fixture
def gpio(tmp_path):
    benches = []

    def make(rfid_port: str | None = None, feedback: str | None = None, **options) -> tuple[GpioBench, Path]:
        source = PI
        if feedback is not None:  # the shipped board with its mirror wired the other way
            source = rewrite_board(PI, tmp_path / "rewired.toml",
                                   lambda c: c["connectors"][0]["contactor"].update(feedback=feedback))
        bench = GpioBench(source, tmp_path, **options)
        benches.append(bench)

        def edit(c):
            bench.edit(c)
            c["connectors"][0]["rcd"]["self_test_timeout_ms"] = 200
            if rfid_port is not None:
                c["rfid"]["port"] = rfid_port

        return bench, rewrite_board(source, tmp_path / "board.toml", edit)

    yield make
    for bench in benches:
        bench.close()


def test_gpio_contactor_test_passes_and_reports_timing(gpio, hw_sync):
    bench, board = gpio()
    code, out, err = hw_sync("contactor", "test", "--board", str(board), pin_factory=bench.factory)
    assert (code, err) == (0, "")
    assert out.startswith("connector 1: contactor test passed: closed in ") and "(mirror contact confirmed" in out
    assert [s.state for s in bench.coil.states][-2:] == [True, False]  # closed once, left open


def test_gpio_contactor_with_a_broken_nc_mirror_wire_is_never_closed(gpio, hw_sync):
    """The shipped board wires the mirror NC: a broken wire reads "closed" with the coil off, so the test
    refuses to close at all (NO wiring would have closed first and only then missed the feedback)."""
    bench, board = gpio(mirror=False)
    code, out, err = hw_sync("contactor", "test", "--board", str(board), pin_factory=bench.factory)
    assert (code, out) == (1, "")
    assert ("the mirror contact reports the contactor closed while it is commanded open: welded contacts or "
            "a mirror wiring fault; not closing it") in err
    assert [s.state for s in bench.coil.states] == [False]  # never energised


def test_gpio_contactor_with_no_wiring_whose_mirror_never_closes(gpio, hw_sync):
    bench, board = gpio(mirror=False, feedback="NO")
    code, out, err = hw_sync("contactor", "test", "--board", str(board), pin_factory=bench.factory)
    assert (code, out) == (1, "")
    assert "contactor test FAILED: the mirror contact did not report closed within 1000 ms of closing" in err
    assert not bench.coil.state


def test_gpio_contactor_that_welds(gpio, hw_sync):
    bench, board = gpio(weld=True)
    code, _, err = hw_sync("contactor", "test", "--board", str(board), pin_factory=bench.factory)
    assert code == 1
    assert "FAILED: the mirror contact still reports closed 1000 ms after opening: welded contacts" in err
    assert not bench.coil.state


def test_gpio_contactor_test_refused_with_an_ev_plugged_in(gpio, hw_sync):
    bench, board = gpio()
    bench.front_end.plug()
    code, _, err = hw_sync("contactor", "test", "--board", str(board), pin_factory=bench.factory)
    assert code == 2 and "refused: the control pilot reads state B, not A: unplug the EV" in err
    assert [s.state for s in bench.coil.states] == [False]  # never energised


def test_gpio_pilot_and_rcd(gpio, hw_sync):
    bench, board = gpio()
    bench.front_end.plug()
    code, out, _ = hw_sync("pilot", "--board", str(board), pin_factory=bench.factory)
    assert code == 0 and "CP state B" in out and "cable rated 32 A" in out
    code, out, _ = hw_sync("rcd", "test", "--board", str(board), pin_factory=bench.factory)
    assert code == 0 and "the trip input followed the test pulse and cleared again" in out


def test_gpio_rcd_that_does_not_trip(gpio, hw_sync):
    bench, board = gpio(rcd_responds=False)
    code, _, err = hw_sync("rcd", "test", "--board", str(board), pin_factory=bench.factory)
    assert code == 1 and "RCD self-test failed: trip input GPIO22 did not respond within 0.2 s" in err


# ---- through a running agent ----------------------------------------------------------------------------


async def started(agent: Agent, csms, station_id: str = STATION_ID) -> None:
    """The agent has started its devices: it reports Available to the CSMS (which it does only after)."""
    await csms.wait_until(lambda: csms.connector_statuses.get(station_id, {}).get(1) == "Available", 10.0,
                          "StatusNotification Available")
    await agent.wait_connector(lambda c: c["status"] == "Available", what="Available")


async def test_through_the_agent_on_the_sim_board(tmp_path, csms, run_agent, hw):
    agent = await run_agent(csms)
    config = str(agent.config)
    code, out, _ = await hw("pilot", "--config", config)
    assert code == 0 and "CP state A" in out

    code, out, err = await hw("contactor", "test", "--config", config)
    assert (code, err) == (0, ""), err
    assert "contactor test passed" in out
    await asyncio.sleep(0.5)  # longer than the controller's feedback timeout: no false weld/contactor fault
    conn = await agent.connector()
    assert (conn["faults"], conn["contactor_closed"], conn["status"]) == ([], False, "Available")
    assert "contactor test requested by a technician" in agent.log_tail()
    code, _, err = await hw("rcd", "test", "--config", config)
    assert code == 2 and "SimResidualCurrentMonitor has no self-test" in err
    code, _, err = await hw("rfid", "--config", config)
    assert code == 2 and "owns the card reader" in err

    await charge(agent, csms, TAG_OK)
    code, _, err = await hw("contactor", "test", "--config", config)
    assert code == 2
    assert "connector 1: contactor test refused: a transaction is running (stop it first: evse stop)" in err
    await agent.cmd("stop", connector=1)
    # stopped and journaled: the final register is read once the contactor opened (an orderly stop waits
    # for the EV to leave C first)
    await agent.wait_connector(lambda c: not c["transaction_active"] and c["transaction_id"] is None
                               and not c["contactor_closed"], what="stopped and journaled")
    energy = (await agent.connector())["energy_wh"]
    assert energy > 0  # a meter opened directly would be a fresh simulated one at 0 Wh
    code, out, _ = await hw("meter", "--config", config)
    assert code == 0 and f"({energy:.0f} Wh)" in out
    code, _, err = await hw("contactor", "test", "--config", config)
    assert code == 2 and "contactor test refused: the control pilot reads state " in err and "unplug the EV" in err


async def test_cli_process_through_the_agent(csms, run_agent):
    agent = await run_agent(csms)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "hw", "meter", "--config", str(agent.config), "--watch", "--count", "2",
        "--interval", "0.05", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert len(out.decode().splitlines()) == 2


async def test_through_the_agent_on_a_coprocessor_board(tmp_path, csms, coproc, hw):
    config = write_config(tmp_path, csms.url)
    await coproc.start()  # replaces its board.toml with the bench's copy of the shipped board
    agent = Agent(tmp_path, config)
    agent.start()
    try:
        await agent.ready()
        await started(agent, csms)
        code, out, _ = await hw("rcd", "test", "--config", str(config))
        assert code == 0 and "the co-processor reports the self-test passed" in out
        code, _, err = await hw("contactor", "test", "--config", str(config))
        assert code == 2 and "the co-processor closes the contactor only while an EV asks" in err
        coproc.meter.silent = True
        code, out, err = await hw("meter", "--config", str(config))
        assert code == 1 and "timeout, no answer within 0.5 s" in err
    finally:
        assert await agent.terminate() == 0


async def test_gpio_contactor_test_through_the_agent(tmp_path, csms, hw):
    """The station suspends supervision for the test and resumes it after: a good contactor leaves no fault,
    one that welds during the test is a latched weld fault once the agent looks again."""
    for weld in (False, True):
        workdir = tmp_path / ("weld" if weld else "good")
        workdir.mkdir()
        bench = GpioBench(PI, workdir, weld=weld)
        meter = SimMeter("sdm630", 1)
        server, port = await start_tcp_server([meter.device])
        inproc = None
        try:
            config = write_config(workdir, csms.url, station_id=f"CP-{workdir.name}")

            def edit(c, bench=bench, port=port):
                bench.edit(c)
                c.pop("rfid")
                modbus_bus_to_tcp(c, "rs485", port)

            rewrite_board(PI, workdir / "board.toml", edit)
            inproc = InProcessAgent(config, pin_factory=bench.factory)
            await inproc.start()
            agent = Agent(workdir, config)
            await started(agent, csms, f"CP-{workdir.name}")
            code, out, err = await hw("contactor", "test", "--config", str(config))
            if not weld:
                assert (code, err) == (0, "") and "contactor test passed" in out
                await asyncio.sleep(0.5)
                conn = await agent.connector()
                assert (conn["faults"], conn["status"]) == ([], "Available")
            else:
                assert code == 1 and "still reports closed 1000 ms after opening: welded" in err
                conn = await agent.wait_connector(lambda c: "weld" in c["faults"], what="weld fault")
                assert conn["status"] == "Faulted"
            assert not bench.coil.state
        finally:
            if inproc is not None:
                await inproc.stop()
            await server.shutdown()
            bench.close()
