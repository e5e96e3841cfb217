"""One Modbus client per physical bus, shared by every device on it.

Several meters and an EVSE board often hang on one RS-485 line. They must never talk at once, and a slave
needs a silent gap (3.5 character times) between frames to see where one ends. So every request goes
through one ModbusBus: an asyncio.Lock serialises requests and the gap is kept before each one.

Every pymodbus parameter is passed explicitly: its defaults (19200 baud, 3 s timeout, 3 retries) fit
none of our meters and would make a dead device block the bus for 12 s.

Errors are HardwareError subclasses whose message a technician can act on: which port or host, which
device id, which register, what happened and what to check. pymodbus drops a reply it cannot use (bad CRC,
another device id, noise) and then reports only that no response came; so the bus records the bytes that
did arrive for each request and tells apart: no answer at all (ModbusTimeoutError), a CRC error
(ModbusCrcError), a garbled or short frame (ModbusGarbledReplyError), a reply from another device id
(ModbusWrongDeviceError), and a Modbus exception code (ModbusExceptionResponse, named).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU

from hal.board import ConfigTable
from hal.build import BuildContext, Lifecycle
from hal.interfaces import HardwareError

log = logging.getLogger(__name__)

BAUDRATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES = ("N", "E", "O")
RTU_BYTESIZE = 8  # Modbus RTU frames are always 8 data bits (7 bits is Modbus ASCII)
DEFAULT_TIMEOUT_S = 0.5
DEFAULT_RETRIES = 1
# Modbus over serial line spec: above 19200 baud t3.5 is fixed at 1.75 ms instead of 3.5 char times.
FIXED_T35_ABOVE_BAUD = 19200
FIXED_T35_S = 0.00175
# Margin on top of t3.5: USB-RS485 adapters buffer and slow slaves need a moment to re-arm.
SILENT_GAP_MARGIN_S = 0.005

EXCEPTION_CODES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusBusError(HardwareError):
    """A request on a Modbus bus failed; the message names the bus, device id and register."""


class ModbusTimeoutError(ModbusBusError):
    """The device did not answer."""


class ModbusCrcError(ModbusBusError):
    """A frame arrived for the request but its CRC is wrong (noise, termination, a second master)."""


class ModbusGarbledReplyError(ModbusBusError):
    """Bytes arrived that are no complete Modbus reply: noise, wrong baud rate or parity, a cut-off frame."""


class ModbusWrongDeviceError(ModbusBusError):
    """A well-formed reply came from another device id than the one asked (address clash or wrong id)."""

    def __init__(self, message: str, replied_device_id: int):
        super().__init__(message)
        self.replied_device_id = replied_device_id


class ModbusNotConnectedError(ModbusBusError):
    """The serial port cannot be opened or the TCP connection cannot be made."""


class ModbusExceptionResponse(ModbusBusError):
    """The device answered with a Modbus exception code (2 = no such register, ...)."""

    def __init__(self, message: str, exception_code: int):
        super().__init__(message)
        self.exception_code = exception_code


@dataclass(frozen=True)
class RtuSettings:
    port: str  # /dev/ttyUSB0, /dev/serial0, or a pyserial URL
    baudrate: int
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = RTU_BYTESIZE
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    silent_gap_s: float | None = None  # None: 3.5 character times + 5 ms

    def char_time_s(self) -> float:
        """Time on the wire of one character: start bit, data bits, parity bit, stop bits."""
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    def effective_silent_gap_s(self) -> float:
        if self.silent_gap_s is not None:
            return self.silent_gap_s
        t35 = FIXED_T35_S if self.baudrate > FIXED_T35_ABOVE_BAUD else 3.5 * self.char_time_s()
        return t35 + SILENT_GAP_MARGIN_S

    def describe(self) -> str:
        return f"Modbus RTU {self.port} ({self.baudrate} {self.bytesize}{self.parity}{self.stopbits})"


@dataclass(frozen=True)
class TcpSettings:
    host: str
    port: int = 502
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    silent_gap_s: float = 0.0  # TCP frames are delimited by the MBAP header; a gateway does its own timing

    def effective_silent_gap_s(self) -> float:
        return self.silent_gap_s

    def describe(self) -> str:
        return f"Modbus TCP {self.host}:{self.port}"


class ModbusBus(Lifecycle):
    """A shared, lazily (re)connecting Modbus client with request serialisation and inter-frame gap.

    Devices call `acquire()` in their start() and `await release()` in their close(); the client is
    closed when the last device has released the bus, so a device can still write its safe state
    (e.g. "no current") while the board shuts down.
    """

    def __init__(self, settings: RtuSettings | TcpSettings):
        self.settings = settings
        self.silent_gap_s = settings.effective_silent_gap_s()
        self._lock = asyncio.Lock()
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._quiet_since = 0.0  # time.monotonic() when the last frame on the line ended
        self._users = 0
        self._received = bytearray()  # every byte that arrived during the current request (all its tries)
        self._receive_buffer_seen = b""  # pymodbus' receive buffer as last traced, to tell the new bytes
        self.requests = 0  # requests sent, for diagnostics
        self.failures = 0  # requests that failed

    def describe(self) -> str:
        return self.settings.describe()

    @property
    def is_rtu(self) -> bool:
        return isinstance(self.settings, RtuSettings)

    # ---- lifecycle ------------------------------------------------------------------------------

    def acquire(self) -> None:
        self._users += 1

    async def release(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0:
            await self.close()

    async def start(self) -> None:
        """Nothing to do: the port is opened by the first request, so a missing adapter is reported
        by the device that needs it, and re-opened after it comes back."""

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ---- requests -------------------------------------------------------------------------------

    async def read_input(self, address: int, count: int, device_id: int) -> list[int]:
        """Read input registers (FC 4). `address` is the 0-based PDU address."""
        return await self._read(4, address, count, device_id)

    async def read_holding(self, address: int, count: int, device_id: int) -> list[int]:
        """Read holding registers (FC 3). `address` is the 0-based PDU address."""
        return await self._read(3, address, count, device_id)

    async def read_registers(self, function_code: int, address: int, count: int, device_id: int) -> list[int]:
        """Read with FC 3 (holding) or FC 4 (input)."""
        if function_code not in (3, 4):
            raise ValueError(f"can only read registers with function code 3 or 4, got {function_code}")
        return await self._read(function_code, address, count, device_id)

    async def write_register(self, address: int, value: int, device_id: int) -> None:
        """Write one holding register (FC 6)."""
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"register value must be 0..65535, got {value}")
        what = f"write holding register {_register_span(address, 1)} = {value}"
        await self._request(what, device_id, 6,
                            lambda c: c.write_register(address, value, device_id=device_id))

    async def _read(self, function_code: int, address: int, count: int, device_id: int) -> list[int]:
        kind = "input" if function_code == 4 else "holding"
        what = f"read {kind} registers {_register_span(address, count)}"

        def call(client):
            if function_code == 4:
                return client.read_input_registers(address, count=count, device_id=device_id)
            return client.read_holding_registers(address, count=count, device_id=device_id)

        response = await self._request(what, device_id, function_code, call)
        registers = list(response.registers)
        if len(registers) != count:
            raise ModbusBusError(
                f"{self._where(device_id, what)}: answered {len(registers)} registers instead of {count}"
            )
        return registers

    async def _request(self, what: str, device_id: int, function_code: int, call):
        async with self._lock:
            await self._keep_silent_gap()
            try:
                client = await self._connected_client(what, device_id)
                self.requests += 1
                self._received.clear()
                self._receive_buffer_seen = b""
                try:
                    response = await call(client)
                except ConnectionException as exc:
                    raise self._not_connected(what, device_id, f"connection lost ({exc})") from exc
                except ModbusIOException as exc:  # pymodbus: no usable response after N retries
                    raise self._no_usable_reply(what, device_id, function_code) from exc
                except ModbusException as exc:
                    raise ModbusBusError(f"{self._where(device_id, what)}: {exc}") from exc
            except ModbusBusError:
                self.failures += 1
                raise
            finally:
                self._quiet_since = time.monotonic()
        if response.isError():
            self.failures += 1
            code = getattr(response, "exception_code", 0)
            raise ModbusExceptionResponse(self._exception_message(what, device_id, code), code)
        return response

    async def _keep_silent_gap(self) -> None:
        wait = self._quiet_since + self.silent_gap_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _connected_client(self, what: str, device_id: int):
        if self._client is None:
            self._client = self._make_client()
        if not self._client.connected:
            if isinstance(self.settings, RtuSettings) and self.settings.port.startswith("/") and not os.path.exists(self.settings.port):
                raise self._not_connected(
                    what, device_id, f"{self.settings.port} does not exist: is the RS-485 adapter plugged in?"
                )
            if not await self._client.connect():
                raise self._not_connected(what, device_id, self._connect_hint())
            log.info("%s: connected", self.describe())
        return self._client

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus hook, called with each frame sent and with its whole receive buffer whenever bytes
        arrive: keep the bytes that arrived, which pymodbus throws away when it cannot use them."""
        if sending:  # a new try: pymodbus starts with an empty receive buffer
            self._receive_buffer_seen = b""
        else:
            seen = self._receive_buffer_seen
            self._received += data[len(seen):] if data.startswith(seen) else data
            self._receive_buffer_seen = data
        return data

    def _make_client(self):
        settings = self.settings
        # reconnect_delay=0: no background reconnect loop; we reconnect on the next request instead.
        if isinstance(settings, RtuSettings):
            return AsyncModbusSerialClient(
                settings.port,
                baudrate=settings.baudrate,
                bytesize=settings.bytesize,
                parity=settings.parity,
                stopbits=settings.stopbits,
                timeout=settings.timeout_s,
                retries=settings.retries,
                reconnect_delay=0,
                trace_packet=self._trace_packet,
            )
        return AsyncModbusTcpClient(
            settings.host,
            port=settings.port,
            timeout=settings.timeout_s,
            retries=settings.retries,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
        )

    # ---- messages -------------------------------------------------------------------------------

    def _where(self, device_id: int, what: str) -> str:
        return f"{self.describe()}: device id {device_id}: {what}"

    def _connect_hint(self) -> str:
        if self.is_rtu:
            return "cannot open the serial port: is it in use, or is the user missing from the dialout group?"
        return "cannot connect: check the address, the network and that the gateway is powered"

    def _not_connected(self, what: str, device_id: int, reason: str) -> ModbusNotConnectedError:
        return ModbusNotConnectedError(f"{self._where(device_id, what)}: not connected: {reason}")

    def _no_usable_reply(self, what: str, device_id: int, function_code: int) -> ModbusBusError:
        """What became of a request that got no reply pymodbus could use, from the bytes that arrived."""
        received = bytes(self._received)
        if not received:
            return self._timeout(what, device_id)
        where = self._where(device_id, what)
        diagnose = diagnose_rtu_reply if self.is_rtu else diagnose_tcp_reply
        problem = diagnose(received, device_id, function_code)
        excerpt = _hex_excerpt(received)
        if problem.kind == "wrong device":
            return ModbusWrongDeviceError(
                f"{where}: reply from device id {problem.other_device_id} instead of {device_id} ({excerpt}): "
                "two devices on the line share an address, or the configured device_id is wrong",
                problem.other_device_id,
            )
        if problem.kind == "crc":
            return ModbusCrcError(
                f"{where}: CRC error: a {problem.frame_size}-byte reply arrived with a wrong checksum "
                f"({excerpt}): noise on the line; check the termination (120 Ohm at both ends), the A/B "
                "wiring and shield, and that no second master talks on the bus"
            )
        if problem.kind == "short":
            return ModbusGarbledReplyError(
                f"{where}: short frame: {len(received)}{f' of {problem.frame_size}' if problem.frame_size else ''}"
                f" bytes arrived within {self.settings.timeout_s:g} s ({excerpt}): the reply was cut off; check the "
                "wiring and termination, or raise timeout_s for a slow device or gateway"
            )
        hint = ("check the baud rate, parity and stop bits against the device, and that only one master "
                "drives the line" if self.is_rtu else "is this port a Modbus TCP server?")
        return ModbusGarbledReplyError(
            f"{where}: garbled reply: {len(received)} bytes that are no Modbus reply ({excerpt}): {hint}"
        )

    def _timeout(self, what: str, device_id: int) -> ModbusTimeoutError:
        tries = self.settings.retries + 1
        if self.is_rtu:
            hint = "check the A/B wiring, the device id, baud rate and parity"
        else:
            hint = "check the device (unit) id and that the gateway reaches the device"
        return ModbusTimeoutError(
            f"{self._where(device_id, what)}: timeout, no answer within {self.settings.timeout_s:g} s "
            f"({tries} {'try' if tries == 1 else 'tries'}): {hint}"
        )

    def _exception_message(self, what: str, device_id: int, code: int) -> str:
        name = EXCEPTION_CODES.get(code, "unknown exception")
        hint = {
            1: ": the device does not support this function; wrong model?",
            2: ": the device has no such register; wrong model or firmware?",
            4: ": the device reports an internal failure (a gateway or simulator also answers this for an unknown device id)",
            11: ": the gateway got no answer; check the device id and the RS-485 side of the gateway",
        }.get(code, "")
        return f"{self._where(device_id, what)}: exception code {code} ({name}){hint}"


@dataclass(frozen=True)
class ReplyProblem:
    kind: str  # "wrong device", "crc", "short" or "garbled"
    other_device_id: int = 0  # "wrong device": who answered
    frame_size: int = 0  # "crc" and "short": how long the frame should have been


def _rtu_reply_size(frame: bytes, function_code: int) -> int | None:
    """Length of the RTU reply to `function_code` that starts at frame[0] (address), or None when frame[1]
    is no such reply or its length byte has not arrived yet."""
    if len(frame) < 2 or frame[1] not in (function_code, function_code | 0x80):
        return None
    if frame[1] & 0x80:
        return 5  # address, function | 0x80, exception code, CRC
    if function_code in (3, 4):
        return 5 + frame[2] if len(frame) >= 3 else None  # address, function, byte count, data, CRC
    if function_code == 6:
        return 8  # the request echoed: address, function, register, value, CRC
    return None


def _crc_ok(frame: bytes) -> bool:
    return FramerRTU.compute_CRC(frame[:-2]) == int.from_bytes(frame[-2:], "big")


def diagnose_rtu_reply(received: bytes, device_id: int, function_code: int) -> ReplyProblem:
    """Why the bytes that arrived for a request on an RTU line were no usable reply."""
    starts = range(len(received) - 1)
    for start in starts:  # a whole frame with a good CRC, but from another address
        size = _rtu_reply_size(received[start:], function_code)
        frame = received[start : start + size] if size else b""
        if size and len(frame) == size and _crc_ok(frame) and frame[0] != device_id:
            return ReplyProblem("wrong device", other_device_id=frame[0])
    for start in starts:  # our address and function code, complete, but the checksum does not match
        size = _rtu_reply_size(received[start:], function_code)
        frame = received[start : start + size] if size else b""
        if size and len(frame) == size and not _crc_ok(frame) and (received[start] == device_id or start == 0):
            return ReplyProblem("crc", frame_size=size)
    size = _rtu_reply_size(received, function_code)
    if received[0] == device_id and (size is None or len(received) < size):
        return ReplyProblem("short", frame_size=size or 0)
    return ReplyProblem("garbled")


def diagnose_tcp_reply(received: bytes, device_id: int, function_code: int) -> ReplyProblem:
    """Why the bytes that arrived for a Modbus TCP request were no usable reply."""
    if len(received) < 8 or received[2:4] != b"\0\0":  # shorter than an MBAP header, or not protocol 0
        return ReplyProblem("garbled")
    size = 6 + int.from_bytes(received[4:6], "big")
    if len(received) < size:
        return ReplyProblem("short", frame_size=size)
    if received[6] != device_id and received[7] in (function_code, function_code | 0x80):
        return ReplyProblem("wrong device", other_device_id=received[6])
    return ReplyProblem("garbled")


def _hex_excerpt(data: bytes, limit: int = 16) -> str:
    shown = data[:limit].hex(" ")
    return f"{shown} ..." if len(data) > limit else shown


def _register_span(address: int, count: int) -> str:
    """0x0048 or 0x0000..0x000B (0-based PDU addresses, as in the profiles)."""
    if count == 1:
        return f"0x{address:04X}"
    return f"0x{address:04X}..0x{address + count - 1:04X}"


# ---- config -------------------------------------------------------------------------------------------

BUS_TYPES = ("modbus-rtu", "modbus-tcp")
RTU_KEYS = ("port", "baudrate", "parity", "stopbits")
TCP_KEYS = ("host", "tcp_port")
COMMON_KEYS = ("type", "timeout_s", "retries", "silent_gap_ms")


def build_bus(table: ConfigTable) -> ModbusBus:
    """A ModbusBus from a `[buses.<name>]` table (see the module docstring of hal.modbus)."""
    table.reject_unknown(COMMON_KEYS + RTU_KEYS + TCP_KEYS)
    bus_type = table.string("type", choices=BUS_TYPES)
    own_keys, other_keys = (RTU_KEYS, TCP_KEYS) if bus_type == "modbus-rtu" else (TCP_KEYS, RTU_KEYS)
    for key in other_keys:
        if key in table.data:
            raise table.error(key, f"does not apply to type = \"{bus_type}\" (its keys: {', '.join(own_keys)})")

    timeout_s = table.number("timeout_s", default=DEFAULT_TIMEOUT_S, minimum=0.02, maximum=10, unit="s")
    retries = table.integer("retries", default=DEFAULT_RETRIES, minimum=0, maximum=5)
    gap_ms = table.number("silent_gap_ms", default=None, minimum=0, maximum=1000, unit="ms")
    gap_s = None if gap_ms is None else gap_ms / 1000

    if bus_type == "modbus-rtu":
        settings: RtuSettings | TcpSettings = RtuSettings(
            port=table.string("port"),
            baudrate=table.integer("baudrate", choices=BAUDRATES),
            parity=table.string("parity", default="N", choices=PARITIES),
            stopbits=table.integer("stopbits", default=1, choices=(1, 2)),
            timeout_s=timeout_s,
            retries=retries,
            silent_gap_s=gap_s,
        )
    else:
        settings = TcpSettings(
            host=table.string("host"),
            port=table.integer("tcp_port", default=502, minimum=1, maximum=65535),
            timeout_s=timeout_s,
            retries=retries,
            silent_gap_s=0.0 if gap_s is None else gap_s,
        )
    bus = ModbusBus(settings)
    log.info("%s: timeout %g s, %d retries, silent gap %.1f ms", bus.describe(), timeout_s, retries,
             bus.silent_gap_s * 1000)
    return bus


def lookup_bus(table: ConfigTable, ctx: BuildContext, key: str = "bus") -> ModbusBus:
    """The shared bus a device table names, with an error naming the key when it does not exist."""
    name = table.string(key)
    bus = ctx.buses.get(name)
    if bus is None:
        known = ", ".join(f'"{n}"' for n in ctx.buses) or "none"
        raise table.error(key, f'no bus named "{name}" (defined buses: {known}); add a [buses.{name}] table')
    if not isinstance(bus, ModbusBus):
        raise table.error(key, f'bus "{name}" is not a Modbus bus (type = "modbus-rtu" or "modbus-tcp")')
    return bus
