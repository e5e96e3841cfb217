"""Simulated field devices for the shipped-board and technician-command tests, all on this PC.

* Modbus: pymodbus servers (TCP on 127.0.0.1, or RTU through a pty null-modem) serving a meter's profile
  registers and an EVSE-DIN board with an EV behind it.
* Co-processor: hal.coproc.sim_mcu.SimMcu on a pty (UART) or a python-can `virtual` bus.
* RFID: an RDM6300 and a PN532 played on the master side of a pty.
* Linux pilot: gpiozero MockFactory pins with an MCP3008 on its SPI pins, a fake /sys/class/pwm, and the
  IEC 61851 EV model of hal.sim behind the CP; relay coil, mirror contact, lock and RCD pins wired together.
* A board config rewritten to point at them, and an agent run in this process (for the devices that only
  exist in this process: mock GPIO pins, a python-can virtual bus).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import struct
import threading
import time
import tomllib
import tty
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin, MockSPIDevice
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hal.interfaces import CpState, PilotMode, PilotOutput
from hal.modbus.meter_profiles import PROFILES, Register
from hal.pilot_math import PP_NOMINAL_OHMS
from hal.sim.connector import SimConnector, SimConnectorSpec, SimEvSpec

# ---- serial lines without hardware ---------------------------------------------------------------------


class PtyDevice:
    """A serial device on the master side of a pty; the program under test opens `path` like a UART."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo or line editing before the program configures the port
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyBridge:
    """Two pty pairs joined by a thread: a null-modem cable between `client_port` and `server_port`."""

    def __init__(self) -> None:
        self._pairs = [os.openpty(), os.openpty()]
        for _master, slave in self._pairs:
            tty.setraw(slave)  # the slave fds stay open, so a client closing its side causes no hang-up
        self.client_port = os.ttyname(self._pairs[0][1])
        self.server_port = os.ttyname(self._pairs[1][1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True, name="pty-bridge")
        self._thread.start()

    def _pump(self) -> None:
        a, b = self._pairs[0][0], self._pairs[1][0]
        peer = {a: b, b: a}
        while not self._stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.02)
            for fd in ready:
                try:
                    os.write(peer[fd], os.read(fd, 4096))
                except OSError:
                    pass  # one side was closed and reopened; it comes back

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        for master, slave in self._pairs:
            for fd in (master, slave):
                with contextlib.suppress(OSError):
                    os.close(fd)


# ---- Modbus devices ------------------------------------------------------------------------------------

_NO_BITS = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
_UNUSED = [SimData(0xFF00, values=0, datatype=DataType.UINT16)]  # a register space must not be empty


def register_words(reg: Register, value: float) -> list[int]:
    """The registers a meter puts on the wire for `value` (in the register's unit), per its profile entry."""
    raw = value / reg.scale
    fmt = {"float32": ">f", "int32": ">i", "uint32": ">I", "uint64": ">Q", "int16": ">h", "uint16": ">H"}
    packed = struct.pack(fmt[reg.data_type], raw if reg.data_type == "float32" else round(raw))
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return words[::-1] if reg.word_order == "little" else words


class SimMeter:
    """A meter of a profile's model: its registers hold `energy_wh`, `power_w`, the phase currents and
    voltages, which the test may change while it is served. `silent` makes it stop answering."""

    def __init__(self, model: str, device_id: int, *, energy_wh: float = 1_234_500.0, power_w: float = 0.0,
                 voltage_v: float = 230.0, current_a: float = 0.0):
        self.profile = PROFILES[model]
        self.device_id = device_id
        self.energy_wh = energy_wh
        self.power_w = power_w
        self.voltage_v = voltage_v
        self.current_a = current_a
        self.requests = 0
        self.silent = False
        holding, inputs = [], []
        for reg, value in self._values():
            space = inputs if reg.function_code == 4 else holding
            space.append(SimData(reg.address, values=register_words(reg, value), datatype=DataType.REGISTERS))
        self.device = SimDevice(
            id=device_id,
            simdata=(_NO_BITS, list(_NO_BITS), holding or _UNUSED, inputs or _UNUSED),
            action=self._on_request,
        )

    def _values(self) -> list[tuple[Register, float]]:
        p = self.profile
        values = [(p.energy_import, self.energy_wh), (p.power_total, self.power_w)]
        values += [(reg, self.current_a) for reg in p.currents]
        values += [(reg, self.voltage_v) for reg in p.voltages]
        return values

    async def _on_request(self, function_code, start_address, address, count, registers, set_values):
        if self.silent:
            import asyncio

            await asyncio.sleep(5)  # longer than any client timeout: the request goes unanswered
        self.requests += 1
        for reg, value in self._values():
            if reg.function_code == function_code:
                words = register_words(reg, value)
                registers[reg.address - start_address : reg.address - start_address + len(words)] = words
        return None


STATE_CODES = {CpState.A: 1, CpState.B: 2, CpState.C: 3, CpState.D: 4}


class EvseDinSim:
    """An EVSE-DIN style board (registers 1000..1005, 2005) with an EV behind it: unplugged = A, plugged
    = B, and C while the board offers current (the EV wants to charge); the relay is closed in C with
    current offered, as the real board does."""

    def __init__(self, device_id: int = 1, *, firmware: int = 18):
        self.device_id = device_id
        self.plugged = False
        self.writes: list[tuple[int, list[int]]] = []
        holding = [
            SimData(1000, values=[0, 0, 1, 0, 0, firmware], datatype=DataType.UINT16),
            SimData(2005, values=0, datatype=DataType.UINT16),
        ]
        self.device = SimDevice(
            id=device_id, simdata=(_NO_BITS, list(_NO_BITS), holding, _UNUSED), action=self._on_request
        )
        self.offered_a = 0
        self.state = CpState.A

    @property
    def relay_closed(self) -> bool:
        return self.state is CpState.C and self.offered_a > 0

    async def _on_request(self, function_code, start_address, address, count, registers, set_values):
        if set_values is not None:
            self.writes.append((address, list(set_values)))
            if address == 1000:
                self.offered_a = set_values[0]
        else:
            self.offered_a = registers[1000 - start_address]
        if not self.plugged:
            self.state = CpState.A
        else:
            self.state = CpState.C if self.offered_a > 0 else CpState.B
        registers[1001 - start_address] = self.offered_a
        registers[1002 - start_address] = STATE_CODES[self.state]
        return None


async def start_tcp_server(devices: list[SimDevice]) -> tuple[ModbusTcpServer, int]:
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    return server, server.transport.sockets[0].getsockname()[1]


async def start_rtu_server(devices: list[SimDevice], port: str) -> ModbusSerialServer:
    server = ModbusSerialServer(devices, port=port, baudrate=9600, timeout=0.1)
    await server.serve_forever(background=True)
    return server


# ---- RFID readers on a pty -----------------------------------------------------------------------------


class Rdm6300Pty(PtyDevice):
    """An RDM6300: a card in the field is a 14-byte frame, repeated like the module does."""

    def present(self, hex5: str, repeats: int = 3) -> None:
        data = bytes.fromhex(hex5)
        checksum = 0
        for byte in data:
            checksum ^= byte
        frame = b"\x02" + data.hex().upper().encode() + f"{checksum:02X}".encode() + b"\x03"
        self.write(frame * repeats)


def _pn532_frame(*payload: int | bytes) -> bytes:
    body = bytearray([0xD5])
    for part in payload:
        body += part if isinstance(part, bytes) else bytes([part])
    return b"\x00\x00\xff" + bytes([len(body), -len(body) & 0xFF]) + bytes(body) + bytes([-sum(body) & 0xFF, 0])


class Pn532Pty(PtyDevice):
    """A PN532 in HSU mode, played by a thread: ACKs and answers every command; `present(uid)` puts a
    card in the field for the next `polls` InListPassiveTarget polls."""

    ACK = bytes.fromhex("0000ff00ff00")

    def __init__(self) -> None:
        super().__init__()
        self._card: bytes | None = None
        self._card_polls = 0
        self.polls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pn532-sim")
        self._thread.start()

    def present(self, uid_hex: str, polls: int = 3) -> None:
        with self._lock:
            self._card, self._card_polls = bytes.fromhex(uid_hex), polls

    def _run(self) -> None:
        rx = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.02)
            if not ready:
                continue
            try:
                rx += os.read(self.master, 1024)
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    time.sleep(0.02)  # nobody has the port open
                    continue
                raise
            while (start := rx.find(b"\x00\xff")) >= 0 and len(rx) >= start + 4:
                length = rx[start + 2]
                if (length, rx[start + 3]) == (0x00, 0xFF):  # an ACK from the host aborts a command
                    del rx[: start + 4]
                    continue
                end = start + 4 + length + 2
                if len(rx) < end:
                    break
                command = rx[start + 5]
                del rx[:end]
                with contextlib.suppress(OSError):
                    self.write(self.ACK + self._answer(command))

    def _answer(self, command: int) -> bytes:
        if command == 0x4A:  # InListPassiveTarget
            self.polls += 1
            with self._lock:
                uid = self._card if self._card_polls > 0 else None
                self._card_polls = max(0, self._card_polls - 1)
            if uid is None:
                return _pn532_frame(0x4B, 0x00)
            return _pn532_frame(0x4B, 0x01, 0x01, b"\x00\x44", 0x00, len(uid), uid)
        return {
            0x14: _pn532_frame(0x15),  # SAMConfiguration
            0x02: _pn532_frame(0x03, 0x32, 0x01, 0x06, 0x07),  # GetFirmwareVersion: PN532 1.6
            0x32: _pn532_frame(0x33),  # RFConfiguration
        }.get(command, b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        super().close()


# ---- GPIO, the MCP3008 and the pilot front end ---------------------------------------------------------


class LinkedPin(MockPin):
    """An output pin wired to an input: when it goes high the input is driven to `when_high`, when it
    goes low to `when_low` (None: left alone). Models a relay coil and its mirror contact, a lock motor
    and its switch, an RCD's test input and its trip output."""

    def __init__(self, factory, info, target=None, when_high: bool = True, when_low: bool | None = None):
        super().__init__(factory, info)
        self.target, self.when_high, self.when_low = target, when_high, when_low

    def _change_state(self, value):
        changed = super()._change_state(value)
        level = self.when_high if value else self.when_low
        if changed and self.target is not None and level is not None:
            (self.target.drive_high if level else self.target.drive_low)()
        return changed


class ContactToGround(MockPin):
    """An input with a contact to GND on it: low while the contact conducts, otherwise the level its pull
    gives. A LinkedPin moves the contact (drive_low = conducting, drive_high = open). Unlike a plain MockPin,
    the pull set when a device claims the pin does not override a contact that conducts at rest (NC)."""

    def __init__(self, factory, info, conducting: bool = False):
        self.conducting = conducting
        super().__init__(factory, info)
        self._apply()

    def drive_low(self):
        self.conducting = True
        self._apply()

    def drive_high(self):
        self.conducting = False
        self._apply()

    def _set_pull(self, value):
        conducting = self.conducting
        super()._set_pull(value)  # drives to the pull's level through the methods above
        self.conducting = conducting
        self._apply()

    def _apply(self):
        if self.conducting or self._pull != "up":
            MockPin.drive_low(self)
        else:
            MockPin.drive_high(self)


def wire(factory: MockFactory, output: int, target: int, *, when_high: bool, when_low: bool | None) -> None:
    """Make `output` a LinkedPin driving `target` (before any device claims either pin)."""
    factory.pin(output, pin_class=LinkedPin, target=factory.pin(target), when_high=when_high, when_low=when_low)


class SimulatedMcp3008(MockSPIDevice):
    """The MCP3008's SPI protocol on MockFactory's SPI0 CE0 pins; an input is a voltage or a function."""

    def __init__(self, factory: MockFactory, vref: float = 3.3):
        super().__init__(clock_pin=11, mosi_pin=10, miso_pin=9, select_pin=8, pin_factory=factory)
        self.vref = vref
        self.inputs: dict[int, Any] = dict.fromkeys(range(8), 0.0)

    def on_bit(self):
        if self.rx_bit == 12:  # 7 preamble zeros, start bit, SGL/DIFF, D2..D0
            source = self.inputs[self.rx_word() & 0b111]
            volts = source() if callable(source) else source
            self.tx_word(min(1023, max(0, round(volts / self.vref * 1023))), 12)


def fake_sysfs_pwm(root: Path, chip: int = 0, channel: int = 0) -> Path:
    """/sys/class/pwm/pwmchipN/pwmM as plain files, the channel already exported."""
    channel_dir = root / f"pwmchip{chip}" / f"pwm{channel}"
    channel_dir.mkdir(parents=True)
    (root / f"pwmchip{chip}" / "export").write_text("")
    for name, value in (("enable", "0"), ("period", "0"), ("duty_cycle", "0"), ("polarity", "normal")):
        (channel_dir / name).write_text(value + "\n")
    return channel_dir


class PilotFrontEnd:
    """The analog side of a linux_pilot board: the PWM duty the agent wrote to sysfs goes to an IEC 61851
    EV model (hal.sim), whose CP plateaus come back through the peak detectors and the MCP3008, scaled as
    the board config says (CP = ADC * cp_gain + cp_offset_v); PP is the cable's resistor on a pull-up.
    The contactor coil pin feeds the model too, so a closed contactor lets the EV draw current."""

    def __init__(self, factory: MockFactory, pwm_dir: Path, pilot: dict, *, coil_pin: int,
                 ev_response_s: float = 0.1):
        self.factory = factory
        self.pwm_dir = pwm_dir
        self.gain, self.offset = pilot["cp_gain"], pilot.get("cp_offset_v", 0.0)
        self.pp_pullup, self.pp_supply = pilot["pp_pullup_ohms"], pilot["pp_supply_v"]
        self.coil_pin = coil_pin
        self.world = SimConnector(SimConnectorSpec(1), SimEvSpec(response_s=ev_response_s), 230.0, time.monotonic())
        self._lock = threading.Lock()
        self.adc = SimulatedMcp3008(factory, vref=pilot.get("adc_vref_v", 3.3))
        self.adc.inputs[pilot["cp_high_channel"]] = lambda: self._cp_adc(high=True)
        self.adc.inputs[pilot["cp_low_channel"]] = lambda: self._cp_adc(high=False)
        self.adc.inputs[pilot["pp_channel"]] = self._pp_adc

    def plug(self) -> None:
        with self._lock:
            self.world.advance(time.monotonic())
            self.world.plug()

    def unplug(self) -> None:
        with self._lock:
            self.world.advance(time.monotonic())
            self.world.unplug()

    def _output(self) -> PilotOutput:
        try:
            duty_ns = int((self.pwm_dir / "duty_cycle").read_text())
            period_ns = int((self.pwm_dir / "period").read_text()) or 1_000_000
        except (OSError, ValueError):
            return PilotOutput(PilotMode.X1, 100.0)
        duty = 100.0 * duty_ns / period_ns
        if duty >= 100.0:
            return PilotOutput(PilotMode.X1, 100.0)
        if duty <= 0.0:
            return PilotOutput(PilotMode.F, 0.0)
        return PilotOutput(PilotMode.PWM, round(duty, 2))

    def _cp_adc(self, *, high: bool) -> float:
        with self._lock:
            self.world.advance(time.monotonic())
            output = self._output()
            if output != self.world.output:
                self.world.drive(output)
            self.world.contactor_commanded = bool(self.factory.pin(self.coil_pin).state)
            reading = self.world.pilot_reading()
        volts = reading.high_v if high else reading.low_v
        return (volts - self.offset) / self.gain

    def _pp_adc(self) -> float:
        with self._lock:
            plugged = self.world.plugged
        if not plugged:
            return self.pp_supply
        ohms = PP_NOMINAL_OHMS[32.0]
        return self.pp_supply * ohms / (ohms + self.pp_pullup)


# ---- board configs pointed at the simulated devices ---------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML here")


def dump_toml(data: dict) -> str:
    """TOML for the shape board configs have: tables, sub-tables, [[connectors]] with sub-tables."""
    lines: list[str] = []

    def table(header: str, body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        lines.append(header)
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in scalars.items())
        lines.append("")

    for name, body in data.items():
        if name == "connectors":
            continue
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        if len(nested) < len(body) or not nested:
            table(f"[{name}]", body)
        for sub, sub_body in nested.items():
            table(f"[{name}.{sub}]", sub_body)
    for conn in data.get("connectors", []):
        table("[[connectors]]", conn)
        for sub, sub_body in conn.items():
            if isinstance(sub_body, dict):
                table(f"[connectors.{sub}]", sub_body)
    return "\n".join(lines)


def rewrite_board(source: Path, target: Path, edit) -> Path:
    """Copy a board config with `edit(config_dict)` applied (ports, hosts, pin factory...)."""
    config = tomllib.loads(source.read_text())
    edit(config)
    target.write_text(dump_toml(config))
    return target


def modbus_bus_to_tcp(config: dict, name: str, port: int) -> None:
    """An RS-485 line becomes a Modbus TCP connection to the simulated devices on 127.0.0.1."""
    bus = config["buses"][name]
    for key in ("port", "baudrate", "parity", "stopbits"):
        bus.pop(key, None)
    bus.update(type="modbus-tcp", host="127.0.0.1", tcp_port=port)


# ---- the agent in this process ---------------------------------------------------------------------------


class InProcessAgent:
    """The agent assembled as agent/app.py does, but in the test's event loop, for boards whose simulated
    devices live in this process (mock GPIO pins with a simulated MCP3008, a python-can virtual bus). The
    control socket is served as usual, so tests talk to it like to an agent process."""

    def __init__(self, config_path: Path, *, pin_factory: Any = None):
        self.config_path = config_path
        self.pin_factory = pin_factory
        self.station = None
        self._control = None
        self._journal = None
        self._task = None

    async def start(self) -> None:
        import asyncio

        import ocpp.messages

        from agent.app import command_handler
        from agent.cli.control_socket import ControlServer
        from agent.config import load_config
        from agent.ocpp.v16.client import OcppClient
        from agent.station.journal import Journal
        from agent.station.station import Station
        from hal.board import load_board

        ocpp.messages.ASYNC_VALIDATION = False
        config = load_config(self.config_path)
        self.socket = config.control.socket
        board = load_board(config.board.file, state_dir=config.control.socket.parent, pin_factory=self.pin_factory)
        self._journal = Journal(config.journal.path)
        self.station = Station(config, board, self._journal, csms=OcppClient)
        self._control = ControlServer(config.control.socket, command_handler(self.station))
        await self._control.start()
        self._task = asyncio.create_task(self.station.run(), name="in-process agent")

    async def stop(self) -> None:
        if self._task is not None:
            if not self._task.done():
                await self.station.shutdown(stop_transactions=False)
            await self._task
            self._task = None
        if self._control is not None:
            await self._control.close()
        if self._journal is not None:
            self._journal.close()


class GpioBench:
    """The GPIO side of a linux_pilot board config on gpiozero's MockFactory: the relay coil drives the
    contactor's mirror contact, the lock motor its switch, the RCD test output its trip input, and a
    PilotFrontEnd with a simulated MCP3008 sits behind the CP. The mirror is wired as the board's `feedback`
    says (NC by default: it conducts while the contactor is open). `mirror=False` leaves it unwired (a broken
    wire: nothing ever conducts); `weld=True` lets the main contacts close with the coil but never open again.

    Becomes gpiozero's default factory while it lives (its software SPI needs one); call close()."""

    def __init__(self, board_config: Path, workdir: Path, *, connector: int = 0, mirror: bool = True,
                 weld: bool = False, rcd_responds: bool = True):
        from gpiozero import Device

        self.factory = MockFactory()
        self._previous = Device.pin_factory
        Device.pin_factory = self.factory
        shipped = tomllib.loads(board_config.read_text())["connectors"][connector]
        self.contactor, lock, rcd = shipped["contactor"], shipped.get("lock"), shipped.get("rcd")
        if mirror:  # a mirror contact to GND on a pulled-up input: conducting = low
            nc = self.contactor.get("feedback", "NC") == "NC"  # NC conducts while the main contacts are open
            self.factory.pin(self.contactor["feedback_pin"], pin_class=ContactToGround, conducting=nc)
            contacts_open_level = not nc  # the input level while the main contacts are open
            wire(self.factory, self.contactor["pin"], self.contactor["feedback_pin"], when_high=nc,
                 when_low=None if weld else contacts_open_level)
        if lock is not None:
            wire(self.factory, lock["lock_pin"], lock["lock_feedback_pin"], when_high=False, when_low=None)
            wire(self.factory, lock["unlock_pin"], lock["lock_feedback_pin"], when_high=True, when_low=None)
        if rcd is not None and rcd_responds:
            wire(self.factory, rcd["test_pin"], rcd["trip_pin"], when_high=False, when_low=True)
        self.sysfs_root = workdir / "sys-class-pwm"
        self.pwm_dir = fake_sysfs_pwm(self.sysfs_root)
        self.front_end = PilotFrontEnd(self.factory, self.pwm_dir, shipped["pilot"], coil_pin=self.contactor["pin"])

    @property
    def coil(self) -> MockPin:
        return self.factory.pin(self.contactor["pin"])

    def edit(self, config: dict) -> None:
        """Point a copy of the board config at this bench."""
        config["gpio"]["factory"] = "mock"
        for conn in config["connectors"]:
            if conn["pilot"]["backend"] == "linux-pwm":
                conn["pilot"]["sysfs_root"] = str(self.sysfs_root)
                # the slowest sampling a board may set: the CP reads stale only after 1 s without a sample,
                # not 0.25 s, which a loaded 2-core CI machine starved the mock ADC's sampler thread for
                # (twice); staleness itself is tested with an injected clock in test_linux_pilot.py
                conn["pilot"]["sample_period_s"] = 0.1

    def close(self) -> None:
        from gpiozero import Device

        self.front_end.adc.close()
        self.factory.reset()
        Device.pin_factory = self._previous
