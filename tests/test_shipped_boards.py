"""Every shipped board config loads, and the agent runs on each real one against simulated devices.

Real-hardware configs are built as a dry run here (GPIO on a MockFactory, nothing opened). Then, for each
of them, the devices it names are simulated on this PC (pymodbus servers, the SimMcu twin on a pty or a
python-can virtual bus, RFID readers on ptys, mock GPIO with a simulated MCP3008), a copy of the config is
rewritten to point at them (ports and hosts only: the device sections, models, ids and pins stay as
shipped), and the agent starts on it against the bundled CSMS: it boots, reports Available, reads the meter
register, and runs a plug / authorize / charge / unplug session end to end.

Boards whose simulated devices can only live in this process (mock GPIO pins, a python-can virtual bus)
run the agent in this process, assembled like agent/app.py does; the others run it as a process.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path

import pytest

from hal.board import BoardConfigError, load_board
from hal.coproc.mcu_ports import CanPort, PtyPort
from hal.coproc.sim_mcu import SimMcu
from hal.devices_board import DevicesBoard
from hal.interfaces import HardwareError
from hal.sim.connector import SimConnectorSpec, SimEvSpec
from hil.csms import LocalCsms
from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, Agent, write_config
from tests.conftest import TAGS
from tests.simulated_devices import (
    EvseDinSim,
    GpioBench,
    InProcessAgent,
    Pn532Pty,
    PtyBridge,
    Rdm6300Pty,
    SimMeter,
    modbus_bus_to_tcp,
    rewrite_board,
    start_rtu_server,
    start_tcp_server,
)

BOARDS = Path(__file__).resolve().parent.parent / "board-configs"
SHIPPED = sorted(p.name for p in BOARDS.glob("*.toml"))
PN532_CARD = "04A1B2C3D4E5F6"  # a 7-byte ISO 14443-A UID


def board_path(name: str) -> Path:
    return BOARDS / name


# ---- every shipped config loads ------------------------------------------------------------------------


# name -> (connectors, pilot class, contactor class, meter model, has PP, has lock, has RCD, reader class)
EXPECTED = {
    "sim.toml": (1, "SimControlPilot", "SimContactor", None, True, True, True, "SimRfidReader"),
    "sim-2.toml": (2, "SimControlPilot", "SimContactor", None, True, True, True, "SimRfidReader"),
    "pi-relay-mcp3008-sdm630-pn532.toml": (
        1, "LinuxPilot", "GpioContactor", "sdm630", True, True, True, "Pn532Reader"),
    "pi-modbus-evse-sdm120-hid.toml": (
        1, "EvseDinBoard", "EvseDinBoard", "sdm120", False, False, False, "HidReader"),
    "coproc-uart-b23-rdm6300.toml": (
        1, "CoprocessorPilot", "CoprocessorContactor", "abb-b23", True, True, True, "Rdm6300Reader"),
    "coproc-can-2x-sdm630-tcp.toml": (
        2, "CoprocessorPilot", "CoprocessorContactor", "sdm630", True, True, True, None),
}


def test_every_shipped_config_is_known_here():
    assert set(SHIPPED) == set(EXPECTED), "describe the new board config in EXPECTED and SIMULATED"
    assert {name for name in SHIPPED if not name.startswith("sim")} == set(SIMULATED)


@pytest.mark.parametrize("name", SHIPPED)
async def test_shipped_config_loads(name):
    """Sim configs build for real; hardware configs are validated and built as a dry run."""
    count, pilot, contactor, model, has_pp, has_lock, has_rcd, reader = EXPECTED[name]
    board = load_board(board_path(name), dry_run=not name.startswith("sim"))
    try:
        assert len(board.connectors) == count
        for conn in board.connectors:
            assert type(conn.pilot).__name__ == pilot
            assert type(conn.contactor).__name__ == contactor
            if model is not None:
                assert conn.meter.profile.model == model
            assert (conn.proximity is not None, conn.lock is not None, conn.rcd is not None) == (
                has_pp, has_lock, has_rcd)
        assert (type(board.rfid).__name__ if board.rfid is not None else None) == reader
        if isinstance(board, DevicesBoard):
            with pytest.raises(HardwareError, match="dry run"):
                await board.start()  # a dry-run board must never drive anything
    finally:
        await board.close()


@pytest.mark.parametrize("name", [n for n in SHIPPED if not n.startswith("sim")])
def test_each_hardware_config_has_its_wiring_table(name):
    wiring = (BOARDS / name).with_suffix(".md")
    assert wiring.exists(), f"add {wiring.name}: which pin, port and address goes where"
    assert "|" in wiring.read_text()  # a table
    assert name in (BOARDS / "README.md").read_text()


def test_board_configs_and_their_wiring_tables_are_installed():
    import tomllib

    config = tomllib.loads((BOARDS.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["evse_board_configs"] == "board-configs"
    assert {"*.toml", "*.md"} <= set(config["package-data"]["evse_board_configs"])


def test_evse_board_and_meter_share_one_rs485_bus():
    board = load_board(board_path("pi-modbus-evse-sdm120-hid.toml"), dry_run=True)
    conn = board.connectors[0]
    assert conn.pilot is conn.contactor  # one EVSE-DIN object is pilot and contactor
    assert conn.meter.bus is conn.pilot.bus is board.buses["rs485"]
    assert "rs485" not in board.extras  # buses are acquired by their devices, not started by the board


def test_coprocessor_link_is_shared_by_both_connectors():
    board = load_board(board_path("coproc-can-2x-sdm630-tcp.toml"), dry_run=True)
    link = board.extras["coprocessor"]
    one, two = board.connectors
    assert board.start_list([one.pilot, two.contactor, one.meter]) == [link, one.meter]
    assert one.meter.bus is two.meter.bus and (one.meter.device_id, two.meter.device_id) == (1, 2)


def test_hardware_config_without_its_gpio_library_is_a_one_line_config_error():
    try:
        import lgpio  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("lgpio is installed here")
    with pytest.raises(BoardConfigError, match=r'\[gpio\]\.factory: "lgpio" needs the lgpio package') as info:
        load_board(board_path("pi-relay-mcp3008-sdm630-pn532.toml"))
    assert "\n" not in str(info.value)


# ---- the devices back-end rejects bad configs in one line ------------------------------------------------

PI = "pi-relay-mcp3008-sdm630-pn532.toml"
EVSE = "pi-modbus-evse-sdm120-hid.toml"
COPROC = "coproc-uart-b23-rdm6300.toml"


@pytest.mark.parametrize(
    ("name", "old", "new", "expected"),
    [
        (PI, 'feedback = "NC"', 'feedback = "NC"\nfeedbak_pull = "up"',
         r"\[\[connectors\]\]\[0\]\.contactor\.feedbak_pull: unknown key"),
        (PI, 'bus = "rs485"', 'bus = "rs458"',
         r'\[\[connectors\]\]\[0\]\.meter\.bus: no bus named "rs458" \(defined buses: "rs485"\)'),
        (PI, "[rfid]", '[buses.spare]\ntype = "modbus-tcp"\nhost = "10.0.0.1"\n\n[rfid]',
         r"\[buses\.spare\]: no device uses this bus"),
        (PI, "[rfid]", "[modbus]\nport = 1\n\n[rfid]",
         r'modbus: unknown table or key; back-end tables for backend = "devices": \[buses\], \[gpio\]'),
        (PI, 'factory = "lgpio"', 'factory = "pigpio"', r'\[gpio\]\.factory: must be one of "lgpio"'),
        (PI, 'factory = "lgpio"', 'factory = "rpigpio"\nchip = 4',
         r'\[gpio\]\.chip: only applies to factory = "lgpio"'),
        (PI, 'backend = "linux-pwm"', 'backend = "linux_pwm"',
         r'\[\[connectors\]\]\[0\]\.pilot\.backend: must be one of "coprocessor", "modbus-evse", "linux-pwm"'),
        (PI, 'backend = "gpio"\npin = 17', 'backend = "coprocessor"',
         r'\[\[connectors\]\]\[0\]\.contactor\.backend: must be "gpio" with a "linux-pwm" pilot'),
        (PI, 'model = "sdm630"', 'model = "sdm120"',
         r"\[\[connectors\]\]\[0\]\.meter\.model: \"sdm120\" measures 1 phase\(s\), the connector has phases = 3"),
        (PI, "lock_pin = 5", "lock_pin = 17", r"\[\[connectors\]\]\[0\]\.lock: cannot set up the GPIO device"),
        (PI, "pp_channel = 2\n", "",
         r"\[\[connectors\]\]\[0\]\.pilot\.pp_pullup_ohms: only applies with a pp_channel"),
        (PI, "[connectors.lock]\nbackend = \"gpio\"", "[connectors.lck]\nbackend = \"gpio\"",
         r"\[\[connectors\]\]\[0\]\.lck: unknown key"),
        (EVSE, "device_id = 2 ", "device_id = 1 ",
         r'\[\[connectors\]\]\[0\]\.meter\.device_id: device id 1 on bus "rs485" is already used by '
         r"\[\[connectors\]\]\[0\]\.pilot"),
        (EVSE, 'cable = "fixed"', 'cable = "socket"\nlock = false',
         r'\[\[connectors\]\]\[0\]\.proximity: a socket needs the PP reading, and a "modbus-evse" pilot has none'),
        (EVSE, 'cable = "fixed"', 'cable = "socket"\nlock = false\n\n[connectors.proximity]\nbackend = "none"',
         r"\[\[connectors\]\]\[0\]\.proximity\.backend: \"none\": .* max_current_a must be at most 13 A"),
        (EVSE, '[connectors.contactor]\nbackend = "modbus-evse"', "",
         r"\[\[connectors\]\]\[0\]\.contactor: required table is missing"),
        (COPROC, "[coprocessor]", "[coprocessorr]", r"coprocessorr: unknown table or key"),
        (COPROC, '[connectors.lock]\nbackend = "coprocessor"\n', "",
         r"\[\[connectors\]\]\[0\]\.lock: a socket locks the plug: describe the lock actuator"),
        (COPROC, '[connectors.proximity]\nbackend = "coprocessor"',
         '[connectors.proximity]\nbackend = "coprocessor"\nchannel = 2',
         r"\[\[connectors\]\]\[0\]\.proximity\.channel: unknown key"),
        (COPROC, 'transport = "uart"', 'transport = "rs232"', r'\[coprocessor\]\.transport: must be one of'),
    ],
)
def test_bad_devices_config_is_one_line_naming_file_and_key(tmp_path, name, old, new, expected):
    text = board_path(name).read_text()
    assert old in text, f"test case does not apply to {name}: {old!r}"
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(BoardConfigError) as info:
        load_board(path, dry_run=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert re.search(expected, message), message


def test_coprocessor_devices_without_a_coprocessor_table(tmp_path):
    text = board_path(COPROC).read_text()
    start, end = text.index("[coprocessor]"), text.index("[buses.rs485]")
    path = tmp_path / "b.toml"
    path.write_text(text[:start] + text[end:])
    with pytest.raises(BoardConfigError, match=r'pilot\.backend: "coprocessor" needs a \[coprocessor\] table'):
        load_board(path, dry_run=True)


def test_gpio_device_without_a_gpio_table(tmp_path):
    path = tmp_path / "b.toml"
    path.write_text(board_path(PI).read_text().replace('[gpio]\nfactory = "lgpio"', ""))
    with pytest.raises(BoardConfigError, match=r'pilot\.backend: uses GPIO, but the board has no \[gpio\] table'):
        load_board(path)


# ---- the agent on each real board, against simulated devices -------------------------------------------


@pytest.fixture
async def csms(tmp_path):
    server = LocalCsms(authorized_tags={**TAGS, PN532_CARD: "Accepted"}, boot_interval=60,
                       record_path=tmp_path / "csms.jsonl")
    await server.start()
    yield server
    await server.stop()


async def wait_for(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def boots_available_and_reads_meter(agent: Agent, csms: LocalCsms, meters: dict[int, SimMeter]) -> None:
    await csms.wait_connected(STATION_ID)
    for cid, meter in meters.items():
        conn = await agent.wait_connector(
            lambda c, m=meter: c["status"] == "Available" and c["energy_wh"] == m.energy_wh, cid,
            what=f"connector {cid} Available with the meter's {meter.energy_wh} Wh")
        assert conn["faults"] == [] and conn["meter_ok"]
        await wait_for(lambda c=cid: csms.connector_statuses.get(STATION_ID, {}).get(c) == "Available",
                       f"StatusNotification Available for connector {cid}")


async def charges(agent: Agent, csms: LocalCsms, meter: SimMeter, *, plug, present_card, unplug,
                  tag: str, power_flows=None, connector: int = 1) -> None:
    """Plug, present the card, charge, let the meter advance, unplug; check the transaction the CSMS saw."""
    start_wh = meter.energy_wh
    plug()
    await agent.wait_connector(lambda c: c["status"] == "Preparing", connector, what="Preparing")
    present_card()
    await agent.wait_connector(lambda c: c["status"] == "Charging" and c["contactor_closed"], connector,
                               what="Charging")
    if power_flows is not None:
        await wait_for(power_flows, "the contactor to close on the device side")
    # meterStart is read when the transaction is journaled, which may be just after Charging shows
    await wait_for(lambda: any(t.connector_id == connector for t in csms.transactions.values()),
                   "StartTransaction")
    meter.energy_wh = start_wh + 1500.0
    await agent.wait_connector(lambda c: c["energy_wh"] == start_wh + 1500.0, connector, what="meter advancing")
    unplug()
    await agent.wait_connector(lambda c: c["status"] == "Available" and not c["transaction_active"], connector,
                               what="Available again after unplugging")
    await wait_for(lambda: any(t.stopped for t in csms.transactions.values()), "StopTransaction")
    (tx,) = [t for t in csms.transactions.values() if t.connector_id == connector]
    assert (tx.id_tag, tx.meter_start, tx.meter_stop, tx.stop_reason) == (
        tag, round(start_wh), round(start_wh + 1500.0), "EVDisconnected")


def agent_config(tmp_path: Path, csms: LocalCsms) -> Path:
    return write_config(tmp_path, csms.url)  # its board.toml is replaced by the rewritten copy


@pytest.fixture
async def run_process_agent():
    agents: list[Agent] = []

    async def start(tmp_path: Path, config: Path) -> Agent:
        agent = Agent(tmp_path, config)
        agent.start()
        agents.append(agent)
        await agent.ready()
        return agent

    yield start
    for agent in agents:
        assert await agent.terminate() == 0, agent.log_tail()


@pytest.mark.parametrize("name", ["sim.toml", "sim-2.toml"])
async def test_sim_boards(tmp_path, csms, run_process_agent, name):
    """The simulated boards as shipped: the agent boots on them and reports every connector Available."""
    config = agent_config(tmp_path, csms)
    (tmp_path / "board.toml").write_text(board_path(name).read_text())
    agent = await run_process_agent(tmp_path, config)
    await csms.wait_connected(STATION_ID)
    for cid in range(1, EXPECTED[name][0] + 1):
        await agent.wait_connector(lambda c: c["status"] == "Available" and c["energy_wh"] is not None, cid,
                                   what=f"connector {cid} Available")


async def test_pi_modbus_evse_board(tmp_path, csms, run_process_agent):
    """EVSE-DIN board and SDM120 on one RS-485 line, served over Modbus RTU through a pty null-modem."""
    bridge = PtyBridge()
    evse, meter = EvseDinSim(device_id=1), SimMeter("sdm120", 2)
    server = await start_rtu_server([evse.device, meter.device], bridge.server_port)
    try:
        config = agent_config(tmp_path, csms)
        rewrite_board(board_path(EVSE), tmp_path / "board.toml",
                      lambda c: c["buses"]["rs485"].update(port=bridge.client_port))
        agent = await run_process_agent(tmp_path, config)
        await boots_available_and_reads_meter(agent, csms, {1: meter})

        def plug():
            evse.plugged = True

        def unplug():
            evse.plugged = False

        # No USB keyboard can be emulated here (no /dev/uinput): the reader keeps looking for its device in
        # the background, and the card is presented through the control socket, as the reader would.
        await charges(agent, csms, meter, plug=plug, unplug=unplug, tag=TAG_OK,
                      present_card=lambda: asyncio.ensure_future(agent.cmd("swipe", tag=TAG_OK)),
                      power_flows=lambda: evse.relay_closed)
        assert (1000, [16]) in evse.writes  # 16 A offered: min(board 16 A, [charging] max_current_a 16)
        assert evse.writes[-1] == (1000, [0])
    finally:
        await server.shutdown()
        bridge.close()


async def test_coproc_uart_board(tmp_path, csms, run_process_agent):
    """SimMcu on a pty as the co-processor, the ABB B23 over Modbus TCP, an RDM6300 on a pty."""
    mcu = SimMcu(PtyPort(), [SimConnectorSpec(1)], ev=SimEvSpec(response_s=0.1)).start()
    reader = Rdm6300Pty()
    meter = SimMeter("abb-b23", 1, energy_wh=987_650.0)
    server, port = await start_tcp_server([meter.device])
    try:
        def edit(c):
            c["coprocessor"]["port"] = mcu.port.host_path
            c["rfid"]["port"] = reader.path
            modbus_bus_to_tcp(c, "rs485", port)

        config = agent_config(tmp_path, csms)
        rewrite_board(board_path(COPROC), tmp_path / "board.toml", edit)
        agent = await run_process_agent(tmp_path, config)
        await boots_available_and_reads_meter(agent, csms, {1: meter})
        await charges(agent, csms, meter, plug=mcu.plug, unplug=mcu.unplug, tag=TAG_OK,
                      present_card=lambda: reader.present(TAG_OK),
                      power_flows=lambda: mcu.snapshot()["contacts_closed"])
        assert not mcu.snapshot()["coil"]
    finally:
        await server.shutdown()
        reader.close()
        mcu.stop()


async def test_pi_relay_mcp3008_board(tmp_path, csms):
    """Mock GPIO pins with a simulated MCP3008 and an EV model behind the pilot: a mock pin factory cannot
    be shared with another process, so this agent runs in this process (see the module docstring)."""
    bench = GpioBench(board_path(PI), tmp_path)
    reader = Pn532Pty()
    meter = SimMeter("sdm630", 1, energy_wh=5_000.0)
    server, port = await start_tcp_server([meter.device])
    inproc = None
    try:
        def edit(c):
            bench.edit(c)
            c["rfid"]["port"] = reader.path
            modbus_bus_to_tcp(c, "rs485", port)

        config = agent_config(tmp_path, csms)
        rewrite_board(board_path(PI), tmp_path / "board.toml", edit)
        inproc = InProcessAgent(config, pin_factory=bench.factory)
        await inproc.start()
        agent = Agent(tmp_path, config)  # the control-socket helpers
        await agent.ready()
        await boots_available_and_reads_meter(agent, csms, {1: meter})
        await charges(agent, csms, meter, plug=bench.front_end.plug, unplug=bench.front_end.unplug,
                      tag=PN532_CARD, present_card=lambda: reader.present(PN532_CARD),
                      power_flows=lambda: bench.coil.state and bench.front_end.world.power_w() > 0)
        assert not bench.coil.state
        assert (bench.pwm_dir / "duty_cycle").read_text().strip() == "1000000"  # back at X1 (+12 V)
    finally:
        if inproc is not None:
            await inproc.stop()
        await server.shutdown()
        reader.close()
        bench.close()


async def test_coproc_can_board(tmp_path, csms):
    """Two connectors on one SimMcu over a python-can virtual bus (process-local: the agent runs in this
    process), two SDM630 behind one simulated Modbus TCP gateway."""
    channel = f"evse-test-{uuid.uuid4().hex[:8]}"
    mcu = SimMcu(CanPort("virtual", channel, base_id=0x100), [SimConnectorSpec(1), SimConnectorSpec(2)],
                 ev=SimEvSpec(response_s=0.1)).start()
    meters = {1: SimMeter("sdm630", 1, energy_wh=100_000.0), 2: SimMeter("sdm630", 2, energy_wh=200_000.0)}
    server, port = await start_tcp_server([m.device for m in meters.values()])
    inproc = None
    try:
        def edit(c):
            c["coprocessor"].update(can_interface="virtual", can_channel=channel)
            c["buses"]["gateway"].update(host="127.0.0.1", tcp_port=port)

        config = agent_config(tmp_path, csms)
        rewrite_board(board_path("coproc-can-2x-sdm630-tcp.toml"), tmp_path / "board.toml", edit)
        inproc = InProcessAgent(config)
        await inproc.start()
        agent = Agent(tmp_path, config)
        await agent.ready()
        await boots_available_and_reads_meter(agent, csms, meters)
        await charges(agent, csms, meters[2], connector=2, tag=TAG_2,
                      plug=lambda: mcu.plug(2), unplug=lambda: mcu.unplug(2),
                      present_card=lambda: asyncio.ensure_future(agent.cmd("swipe", tag=TAG_2)),
                      power_flows=lambda: mcu.snapshot(2)["contacts_closed"])
        assert not mcu.snapshot(1)["coil"] and not mcu.snapshot(2)["coil"]
    finally:
        if inproc is not None:
            await inproc.stop()
        await server.shutdown()
        mcu.stop()


SIMULATED = {
    "pi-modbus-evse-sdm120-hid.toml": test_pi_modbus_evse_board,
    "coproc-uart-b23-rdm6300.toml": test_coproc_uart_board,
    "pi-relay-mcp3008-sdm630-pn532.toml": test_pi_relay_mcp3008_board,
    "coproc-can-2x-sdm630-tcp.toml": test_coproc_can_board,
}
