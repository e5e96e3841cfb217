"""Modbus meters against real pymodbus servers (SimDevice) over TCP loopback and RTU through a pty pair.

The served register images are written from the vendors' documented maps (hardware-notes.md 3.1), not
derived from hal.modbus.meter_profiles, so a wrong address, type, word order or scale in a profile fails.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from hal.board import BoardConfigError, ConfigTable
from hal.build import BuildContext
from hal.interfaces import MeterError
from hal.modbus import PROFILES, ModbusBus, ModbusMeter, RtuSettings, TcpSettings, build_bus, build_meter
from tests.simulated_devices import PtyBridge

FAST_TCP = {"timeout_s": 0.1, "retries": 0}
CONFIG = Path("board-configs/test.toml")

# ---- a Modbus line without hardware ----------------------------------------------------------------


@pytest.fixture
def pty_line():
    try:
        bridge = PtyBridge()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminals on this machine: {exc}")
    yield bridge
    bridge.close()


# ---- served devices -----------------------------------------------------------------------------------


@dataclass
class Request:
    device_id: int
    function_code: int
    address: int
    count: int
    entered: float
    left: float = 0.0


@dataclass
class DeviceHook:
    """SimDevice action: records every request, applies register changes, can refuse bulk reads."""

    device_id: int
    log: list[Request] = field(default_factory=list)
    refuse_reads_longer_than: int | None = None  # answer exception 2, like a meter with a short buffer
    hold_s: float = 0.0  # time the "device" takes to answer
    _pending: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def set_registers(self, space: str, address: int, words: list[int]) -> None:
        """Change registers ("input" or "holding"); applied before the next request to that space."""
        self._pending[(space, address)] = words

    async def on_request(self, function_code, start_address, address, count, registers, set_values):
        request = Request(self.device_id, function_code, address, count, time.monotonic())
        self.log.append(request)
        space = "input" if function_code == 4 else "holding"
        for (pending_space, first), words in list(self._pending.items()):
            if pending_space == space:
                registers[first - start_address : first - start_address + len(words)] = words
                del self._pending[(pending_space, first)]
        if self.hold_s:
            await asyncio.sleep(self.hold_s)
        request.left = time.monotonic()
        if self.refuse_reads_longer_than is not None and count > self.refuse_reads_longer_than:
            return ExcCodes.ILLEGAL_ADDRESS
        return None


def sim_device(device_id: int, *, inputs=(), holding=(), hook: DeviceHook | None = None) -> SimDevice:
    """A device with separate input and holding register spaces, as real meters have."""
    no_bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    unused = [SimData(0xFF00, values=0, datatype=DataType.UINT16)]  # a space must not be empty
    return SimDevice(
        id=device_id,
        simdata=(no_bits, list(no_bits), list(holding) or unused, list(inputs) or list(unused)),
        action=hook.on_request if hook is not None else None,
    )


async def start_tcp_server(devices) -> tuple[ModbusTcpServer, int]:
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    return server, server.transport.sockets[0].getsockname()[1]


async def start_rtu_server(devices, port: str) -> ModbusSerialServer:
    server = ModbusSerialServer(devices, port=port, baudrate=115200, timeout=0.1)
    await server.serve_forever(background=True)
    return server


def words(value: int | float, data_type: str, *, low_word_first: bool = False) -> list[int]:
    """Registers of a value as the meter puts them on the wire (independent of pymodbus' converters)."""
    fmt = {"float32": ">f", "int32": ">i", "uint32": ">I", "uint64": ">Q", "int16": ">h", "uint16": ">H"}
    raw = struct.pack(fmt[data_type], value)
    regs = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    return regs[::-1] if low_word_first else regs


def f32(address: int, *values: float) -> SimData:
    return SimData(address, values=list(values), datatype=DataType.FLOAT32)  # high word first


def raw_registers(address: int, regs: list[int]) -> SimData:
    return SimData(address, values=regs, datatype=DataType.REGISTERS)


def em340_int32(address: int, *values: int) -> SimData:
    """Carlo Gavazzi: INT32 with the low word first."""
    return raw_registers(address, [w for v in values for w in words(v, "int32", low_word_first=True)])


# ---- documented register images, one per model ---------------------------------------------------------


@dataclass(frozen=True)
class MeterImage:
    inputs: tuple[SimData, ...] = ()
    holding: tuple[SimData, ...] = ()
    energy_wh: float = 0.0
    power_w: float = 0.0
    current_a: tuple[float, ...] = ()
    voltage_v: tuple[float, ...] = ()
    requests_per_reading: int = 0


def eastron_3p_image(requests_per_reading: int) -> MeterImage:
    return MeterImage(
        inputs=(
            f32(0x0000, 230.1, 231.2, 229.8),  # 30001.. V L-N
            f32(0x0006, 16.01, 15.98, 16.05),  # 30007.. A
            f32(0x0034, 11040.5),  # 30053 total system power, W
            f32(0x0048, 1234.567),  # 30073 import active energy, kWh
        ),
        energy_wh=1234567,
        power_w=11040.5,
        current_a=(16.01, 15.98, 16.05),
        voltage_v=(230.1, 231.2, 229.8),
        requests_per_reading=requests_per_reading,
    )


ABB_IMAGE = MeterImage(
    holding=(
        SimData(0x5000, values=123456, datatype=DataType.UINT64),  # import energy, 0.01 kWh
        SimData(0x5B00, values=[2301, 2312, 2298], datatype=DataType.UINT32),  # 0.1 V
        SimData(0x5B0C, values=[1601, 1598, 1605], datatype=DataType.UINT32),  # 0.01 A
        SimData(0x5B14, values=1104050, datatype=DataType.INT32),  # total power, 0.01 W
    ),
    energy_wh=1234560,
    power_w=11040.5,
    current_a=(16.01, 15.98, 16.05),
    voltage_v=(230.1, 231.2, 229.8),
    requests_per_reading=4,
)

IMAGES = {
    "sdm630": eastron_3p_image(requests_per_reading=3),  # V+I in one request, power, energy
    "sdm72d": eastron_3p_image(requests_per_reading=4),  # 10 registers per request split V+I
    "sdm120": MeterImage(
        inputs=(
            f32(0x0000, 229.5),
            f32(0x0006, 7.25),
            f32(0x000C, 1663.9),  # 30013 active power (no total-system register on a 1-phase meter)
            f32(0x0048, 42.125),
        ),
        energy_wh=42125,
        power_w=1663.9,
        current_a=(7.25,),
        voltage_v=(229.5,),
        requests_per_reading=4,
    ),
    "abb-b23": ABB_IMAGE,
    "abb-b24": ABB_IMAGE,
    "em340": MeterImage(
        inputs=(
            em340_int32(0x0000, 2301, 2312, 2298),  # 0.1 V
            em340_int32(0x000C, 16010, 15980, 16050),  # 0.001 A
            em340_int32(0x0028, 110405),  # total power, 0.1 W
            em340_int32(0x0034, 12345),  # kWh(+) total, 0.1 kWh
        ),
        energy_wh=1234500,
        power_w=11040.5,
        current_a=(16.01, 15.98, 16.05),
        voltage_v=(230.1, 231.2, 229.8),
        requests_per_reading=4,  # V, I, power and energy are not adjacent
    ),
}


def test_every_profile_has_a_served_image():
    assert set(IMAGES) == set(PROFILES)


@dataclass
class Served:
    meter: ModbusMeter
    hook: DeviceHook
    server: ModbusTcpServer | ModbusSerialServer
    bus: ModbusBus


@pytest.fixture
async def serve():
    """Factory: serve a model's image over TCP and return a started meter on it."""
    started: list[Served] = []

    async def factory(model: str, *, image: MeterImage | None = None, device_id: int = 1,
                      meter_device_id: int | None = None, **hook_args) -> Served:
        image = image or IMAGES[model]
        hook = DeviceHook(device_id, **hook_args)
        server, port = await start_tcp_server(
            sim_device(device_id, inputs=image.inputs, holding=image.holding, hook=hook)
        )
        bus = ModbusBus(TcpSettings("127.0.0.1", port, **FAST_TCP))
        meter = ModbusMeter(PROFILES[model], bus, meter_device_id or device_id)
        await meter.start()
        served = Served(meter, hook, server, bus)
        started.append(served)
        return served

    yield factory
    for served in started:
        await served.meter.close()
        await served.server.shutdown()


# ---- every model over TCP -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(PROFILES))
async def test_reads_documented_registers_of_each_model(serve, model):
    served = await serve(model, device_id=7)
    image = IMAGES[model]
    reading = await served.meter.read()

    assert reading.energy_wh == pytest.approx(image.energy_wh, abs=1)
    assert reading.power_w == pytest.approx(image.power_w, abs=0.01)
    assert reading.current_a == pytest.approx(image.current_a, abs=1e-3)
    assert reading.voltage_v == pytest.approx(image.voltage_v, abs=1e-3)
    assert len(reading.current_a) == PROFILES[model].phases
    assert served.meter.last_good_at == reading.taken_at
    assert served.meter.consecutive_errors == 0 and served.meter.error_count == 0
    requests = served.hook.log
    assert len(requests) == image.requests_per_reading  # contiguous registers grouped
    assert max(r.count for r in requests) <= PROFILES[model].max_registers_per_read
    assert {r.function_code for r in requests} == {3 if model.startswith("abb") else 4}


async def test_signed_power_low_word_first_reads_negative(serve):
    """A meter wired upside down reports negative power; the word swap must keep the sign."""
    served = await serve("em340")
    served.hook.set_registers("input", 0x0028, words(-110405, "int32", low_word_first=True))
    assert (await served.meter.read()).power_w == pytest.approx(-11040.5)


# ---- failures -----------------------------------------------------------------------------------------


async def test_server_gone_over_tcp_raises_naming_host_and_device_and_keeps_no_zero(serve):
    served = await serve("sdm630", device_id=3)
    good = await served.meter.read()
    await served.server.shutdown()

    for attempt in (1, 2):
        with pytest.raises(MeterError) as err:
            await served.meter.read()
        message = str(err.value)
        assert f"127.0.0.1:{served.bus.settings.port}" in message and "device id 3" in message
        assert served.meter.consecutive_errors == attempt
    assert served.meter.error_count == 2
    assert served.meter.last_good_at == good.taken_at
    assert served.meter.last_reading == good  # nothing replaced the last good reading
    assert served.meter.last_error == message


async def test_wrong_device_id_raises_naming_it(serve):
    served = await serve("sdm630", device_id=1, meter_device_id=2)
    with pytest.raises(MeterError, match="device id 2"):
        await served.meter.read()
    assert served.meter.error_count == 1


async def test_bulk_read_refused_with_exception_2_falls_back_to_single_reads(serve):
    served = await serve("sdm630", refuse_reads_longer_than=2)
    reading = await served.meter.read()
    assert reading.voltage_v == pytest.approx((230.1, 231.2, 229.8), abs=1e-3)
    assert served.meter.error_count == 0

    served.hook.log.clear()
    await served.meter.read()  # remembers: no more refused bulk requests
    assert [r.count for r in served.hook.log] == [2] * 8


async def test_nan_energy_is_an_error_not_a_reading(serve):
    served = await serve("sdm630")
    served.hook.set_registers("input", 0x0048, words(math.nan, "float32"))
    with pytest.raises(MeterError, match=r"energy import \(input register 0x0048\).*not a number"):
        await served.meter.read()
    assert served.meter.last_reading is None and served.meter.error_count == 1


async def test_infinite_voltage_is_an_error(serve):
    served = await serve("sdm120")
    served.hook.set_registers("input", 0x0000, words(math.inf, "float32"))
    with pytest.raises(MeterError, match="voltage L1"):
        await served.meter.read()


async def test_abb_not_available_marker_on_unused_phases_keeps_energy_and_the_used_phase(serve):
    """A B23 on a single-phase outlet answers 0xFFFFFFFF for L2/L3 voltage and current: the reading is good,
    those values are absent, the energy and L1 are the meter's."""
    served = await serve("abb-b23")
    for address in (0x5B02, 0x5B04, 0x5B0E, 0x5B10):  # voltage L2, L3; current L2, L3 (UINT32)
        served.hook.set_registers("holding", address, [0xFFFF, 0xFFFF])
    reading = await served.meter.read()
    assert reading.energy_wh == pytest.approx(1234560, abs=1)
    assert reading.power_w == pytest.approx(11040.5)
    assert reading.voltage_v[0] == pytest.approx(230.1) and reading.voltage_v[1:] == (None, None)
    assert reading.current_a[0] == pytest.approx(16.01) and reading.current_a[1:] == (None, None)
    assert served.meter.error_count == 0 and served.meter.consecutive_errors == 0
    assert served.meter.last_reading == reading


async def test_abb_signed_not_available_marker_leaves_power_absent(serve):
    served = await serve("abb-b23")
    served.hook.set_registers("holding", 0x5B14, [0x7FFF, 0xFFFF])  # INT32 total power: 0x7FFFFFFF
    reading = await served.meter.read()
    assert reading.power_w is None and reading.energy_wh == pytest.approx(1234560, abs=1)


async def test_abb_not_available_energy_is_a_failed_read_naming_the_marker(serve):
    served = await serve("abb-b23")
    served.hook.set_registers("holding", 0x5000, [0xFFFF] * 4)  # UINT64 import energy
    with pytest.raises(MeterError, match=r"energy import \(holding register 0x5000\): not available "
                                         r"\(the meter answered its 'not available' marker 0xFFFFFFFFFFFFFFFF\)"):
        await served.meter.read()
    assert served.meter.last_reading is None and served.meter.error_count == 1


async def test_eastron_nan_voltage_of_an_unused_phase_is_absent_not_a_failed_read(serve):
    served = await serve("sdm630")
    served.hook.set_registers("input", 0x0004, words(math.nan, "float32"))  # voltage L3
    served.hook.set_registers("input", 0x000A, words(math.nan, "float32"))  # current L3
    reading = await served.meter.read()
    assert reading.energy_wh == pytest.approx(1234567, abs=1)
    assert reading.voltage_v[:2] == pytest.approx((230.1, 231.2), abs=1e-3) and reading.voltage_v[2] is None
    assert reading.current_a[2] is None and served.meter.error_count == 0


async def test_a_value_that_is_not_the_marker_is_read_as_a_value(serve):
    """0xFFFFFFFE is a (large) number, not the marker: the plausibility check still catches it."""
    served = await serve("abb-b23")
    served.hook.set_registers("holding", 0x5B02, [0xFFFF, 0xFFFE])
    with pytest.raises(MeterError, match=r"voltage L2 \(holding register 0x5B02\): implausible"):
        await served.meter.read()


async def test_energy_going_backwards_is_an_error_and_counted(serve):
    served = await serve("em340")
    first = await served.meter.read()
    served.hook.set_registers("input", 0x0034, words(12000, "int32", low_word_first=True))
    with pytest.raises(MeterError, match="went backwards from 1234500 Wh to 1200000 Wh"):
        await served.meter.read()
    assert served.meter.consecutive_errors == 1 and served.meter.last_reading == first

    served.hook.set_registers("input", 0x0034, words(12346, "int32", low_word_first=True))
    assert (await served.meter.read()).energy_wh == 1234600
    assert served.meter.consecutive_errors == 0 and served.meter.error_count == 1


async def test_negative_energy_and_implausible_voltage_are_errors(serve):
    served = await serve("em340")
    served.hook.set_registers("input", 0x0034, words(-5, "int32", low_word_first=True))
    with pytest.raises(MeterError, match="negative energy"):
        await served.meter.read()
    served.hook.set_registers("input", 0x0034, words(5, "int32", low_word_first=True))
    served.hook.set_registers("input", 0x0002, words(5010, "int32", low_word_first=True))  # 501.0 V
    with pytest.raises(MeterError, match="voltage L2.*implausible 501 V"):
        await served.meter.read()
    assert served.meter.error_count == 2


# ---- RTU through a pty pair ------------------------------------------------------------------------------


async def test_rtu_read_and_timeout_when_the_meter_goes_silent(pty_line):
    hook = DeviceHook(105)
    image = IMAGES["sdm630"]
    server = await start_rtu_server(sim_device(105, inputs=image.inputs, hook=hook), pty_line.server_port)
    bus = ModbusBus(RtuSettings(pty_line.client_port, baudrate=115200, timeout_s=0.1, retries=0))
    meter = ModbusMeter(PROFILES["sdm630"], bus, 105)
    await meter.start()
    try:
        reading = await meter.read()
        assert reading.energy_wh == pytest.approx(1234567, abs=1)
        assert reading.voltage_v == pytest.approx((230.1, 231.2, 229.8), abs=1e-3)

        await server.shutdown()
        with pytest.raises(MeterError) as err:
            await meter.read()
        message = str(err.value)
        assert pty_line.client_port in message and "device id 105" in message and "timeout" in message
        assert "check the A/B wiring" in message
        assert meter.consecutive_errors == 1 and meter.last_reading == reading
    finally:
        await meter.close()
        await server.shutdown()


async def test_two_meters_on_one_rtu_bus_never_talk_at_once(pty_line):
    hooks = {11: DeviceHook(11, hold_s=0.003), 12: DeviceHook(12, hold_s=0.003)}
    devices = [
        sim_device(11, inputs=IMAGES["sdm630"].inputs, hook=hooks[11]),
        sim_device(12, inputs=IMAGES["em340"].inputs, hook=hooks[12]),
    ]
    server = await start_rtu_server(devices, pty_line.server_port)
    gap_s = 0.01
    bus = ModbusBus(RtuSettings(pty_line.client_port, baudrate=115200, timeout_s=0.2, retries=0,
                                silent_gap_s=gap_s))
    sdm = ModbusMeter(PROFILES["sdm630"], bus, 11)
    em = ModbusMeter(PROFILES["em340"], bus, 12)
    await sdm.start()
    await em.start()
    try:
        for _ in range(3):
            sdm_reading, em_reading = await asyncio.gather(sdm.read(), em.read())
            assert sdm_reading.energy_wh == pytest.approx(1234567, abs=1)
            assert em_reading.energy_wh == 1234500
    finally:
        await sdm.close()
        await em.close()
        await server.shutdown()

    requests = sorted(hooks[11].log + hooks[12].log, key=lambda r: r.entered)
    assert len(requests) == 3 * (3 + 4)
    assert {r.device_id for r in requests[:4]} == {11, 12}  # the two meters did interleave their reads
    for before, after in zip(requests, requests[1:], strict=False):
        assert after.entered >= before.left  # one request at a time on the line
        assert after.entered - before.left >= gap_s  # and the silent gap between frames
    assert bus.requests == len(requests) and bus.failures == 0


# ---- bus settings and config ---------------------------------------------------------------------------


def test_silent_gap_is_three_and_a_half_characters_plus_margin():
    assert RtuSettings("/dev/x", 9600).effective_silent_gap_s() == pytest.approx(3.5 * 10 / 9600 + 0.005)
    assert RtuSettings("/dev/x", 9600, parity="E").effective_silent_gap_s() == pytest.approx(
        3.5 * 11 / 9600 + 0.005
    )
    assert RtuSettings("/dev/x", 115200).effective_silent_gap_s() == pytest.approx(0.00175 + 0.005)
    assert RtuSettings("/dev/x", 9600, silent_gap_s=0.1).effective_silent_gap_s() == 0.1
    assert TcpSettings("h").effective_silent_gap_s() == 0.0


def table(data: dict, where: str = "[buses.rs485]") -> ConfigTable:
    return ConfigTable(data, where, CONFIG)


def test_build_bus_rtu_and_tcp():
    rtu = build_bus(table({"type": "modbus-rtu", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "E",
                           "timeout_s": 0.3, "retries": 2, "silent_gap_ms": 20}))
    assert rtu.settings == RtuSettings("/dev/ttyUSB0", 9600, parity="E", timeout_s=0.3, retries=2,
                                       silent_gap_s=0.02)
    assert rtu.describe() == "Modbus RTU /dev/ttyUSB0 (9600 8E1)"
    tcp = build_bus(table({"type": "modbus-tcp", "host": "10.0.0.5", "tcp_port": 5020}))
    assert tcp.settings == TcpSettings("10.0.0.5", 5020, timeout_s=0.5, retries=1)
    assert tcp.silent_gap_s == 0.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "modbus-rtu", "port": "/dev/ttyUSB0"}, r"\[buses.rs485\].baudrate: required key is missing"),
        ({"type": "modbus-rtu", "port": "/dev/x", "baudrate": 9601}, r"baudrate: must be 1200, .* or 115200"),
        ({"type": "modbus-rtu", "port": "/dev/x", "baudrate": 9600, "parity": "X"}, r"parity: must be one of"),
        ({"type": "modbus-rtu", "port": "/dev/x", "baudrate": 9600, "host": "h"},
         r"\.host: does not apply to type = \"modbus-rtu\""),
        ({"type": "modbus-tcp", "host": "h", "speed": 1}, r"\.speed: unknown key"),
        ({"type": "modbus-ascii"}, r"\.type: must be one of \"modbus-rtu\", \"modbus-tcp\""),
        ({"type": "modbus-tcp", "host": "h", "timeout_s": 30}, r"timeout_s: must be between"),
    ],
)
def test_build_bus_rejects_bad_config_in_one_line(data, message):
    with pytest.raises(BoardConfigError, match=message) as err:
        build_bus(table(data))
    assert str(err.value).startswith(f"{CONFIG}: [buses.rs485].") and "\n" not in str(err.value)


def test_build_meter_looks_up_the_bus():
    bus = ModbusBus(TcpSettings("127.0.0.1"))
    ctx = BuildContext(CONFIG, clock=lambda: 42.0, buses={"rs485": bus})
    meter = build_meter(table({"backend": "modbus", "model": "sdm630", "bus": "rs485", "device_id": 105},
                              "[[connectors]][0].meter"), ctx)
    assert meter.bus is bus and meter.device_id == 105 and meter.profile is PROFILES["sdm630"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "sdm630", "bus": "nope", "device_id": 1},
         r"\.bus: no bus named \"nope\" \(defined buses: \"rs485\"\); add a \[buses.nope\] table"),
        ({"model": "sdm999", "bus": "rs485", "device_id": 1}, r"\.model: must be one of \"sdm630\""),
        ({"model": "sdm630", "bus": "rs485", "device_id": 248}, r"\.device_id: must be between 1 and 247"),
        ({"model": "sdm630", "bus": "rs485"}, r"\.device_id: required key is missing"),
        ({"model": "sdm630", "bus": "rs485", "device_id": 1, "unit": 1}, r"\.unit: unknown key"),
    ],
)
def test_build_meter_rejects_bad_config_in_one_line(data, message):
    ctx = BuildContext(CONFIG, buses={"rs485": ModbusBus(TcpSettings("127.0.0.1"))})
    with pytest.raises(BoardConfigError, match=message) as err:
        build_meter(table({"backend": "modbus", **data}, "[[connectors]][0].meter"), ctx)
    assert str(err.value).startswith(f"{CONFIG}: [[connectors]][0].meter.")
