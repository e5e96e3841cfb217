"""What a Modbus request that gets no usable reply reports: no answer, a CRC error, a garbled or short frame,
a reply from another device id, or a named exception code, each with the port (or host) and device id.

The device is a raw responder on the far end of a pty null-modem (RTU) or of a TCP socket on 127.0.0.1: it
answers each request with exactly the bytes the test gives, which a pymodbus server cannot be made to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import struct
import threading
from collections.abc import Callable

import pytest
from pymodbus.framer import FramerRTU

from hal.interfaces import MeterError
from hal.modbus import (
    PROFILES,
    ModbusBus,
    ModbusCrcError,
    ModbusExceptionResponse,
    ModbusGarbledReplyError,
    ModbusMeter,
    ModbusTimeoutError,
    ModbusWrongDeviceError,
    RtuSettings,
    TcpSettings,
)
from tests.simulated_devices import PtyBridge

DEVICE_ID = 5
REQUEST_SIZE = 8  # RTU read request: address, function, start, count, CRC


def rtu(*payload: int) -> bytes:
    """An RTU frame with its correct CRC."""
    frame = bytes(payload)
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def holding_reply(device_id: int, *registers: int) -> bytes:
    data = b"".join(struct.pack(">H", r) for r in registers)
    return rtu(device_id, 3, len(data), *data)


class RawRtuDevice:
    """Reads each request from the server end of the pty line and answers `reply(request)` (None: silence)."""

    def __init__(self, port: str, reply: Callable[[bytes], bytes | None]):
        self.reply = reply
        self.requests: list[bytes] = []
        self._fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="raw-rtu-device")
        self._thread.start()

    def _serve(self) -> None:
        pending = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.02)
            if not ready:
                continue
            pending += os.read(self._fd, 256)
            while len(pending) >= REQUEST_SIZE:
                request, pending = pending[:REQUEST_SIZE], pending[REQUEST_SIZE:]
                self.requests.append(request)
                answer = self.reply(request)
                if answer:
                    os.write(self._fd, answer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        os.close(self._fd)


@pytest.fixture
def rtu_line():
    """`bus = rtu_line(reply)`: a ModbusBus on a pty whose other end answers with `reply(request)`."""
    try:
        bridge = PtyBridge()
    except OSError as exc:
        pytest.skip(f"no pseudo-terminals on this machine: {exc}")
    devices: list[RawRtuDevice] = []

    def make(reply: Callable[[bytes], bytes | None]) -> ModbusBus:
        """The test closes the bus (in its own event loop)."""
        devices.append(RawRtuDevice(bridge.server_port, reply))
        return ModbusBus(RtuSettings(bridge.client_port, baudrate=115200, timeout_s=0.2, retries=0))

    make.port = bridge.client_port
    yield make
    for device in devices:
        device.close()
    bridge.close()


async def read_error(bus: ModbusBus, address: int = 0x5000, count: int = 2) -> Exception:
    try:
        await bus.read_holding(address, count, DEVICE_ID)
    except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    finally:
        await bus.close()
    raise AssertionError("the read succeeded")


def where(port: str) -> str:
    return f"Modbus RTU {port} (115200 8N1): device id {DEVICE_ID}: read holding registers 0x5000..0x5001: "


# ---- RTU ---------------------------------------------------------------------------------------------------


async def test_rtu_silent_device_is_reported_as_no_answer(rtu_line):
    error = await read_error(rtu_line(lambda request: None))
    assert type(error) is ModbusTimeoutError
    assert str(error).startswith(where(rtu_line.port) + "timeout, no answer within 0.2 s (1 try)")


async def test_rtu_reply_with_a_bad_crc_is_a_crc_error_not_no_answer(rtu_line):
    def corrupt(request: bytes) -> bytes:
        frame = bytearray(holding_reply(DEVICE_ID, 0x0001, 0xE240))
        frame[-1] ^= 0x5A
        return bytes(frame)

    error = await read_error(rtu_line(corrupt))
    assert type(error) is ModbusCrcError
    message = str(error)
    assert message.startswith(where(rtu_line.port) + "CRC error: a 9-byte reply arrived with a wrong checksum (05 03 04")
    assert "check the termination" in message and "no answer" not in message


async def test_rtu_reply_from_another_device_id_names_both_ids(rtu_line):
    error = await read_error(rtu_line(lambda request: holding_reply(7, 0x0001, 0xE240)))
    assert type(error) is ModbusWrongDeviceError and error.replied_device_id == 7
    assert str(error).startswith(where(rtu_line.port) + f"reply from device id 7 instead of {DEVICE_ID} (07 03 04")
    assert "share an address" in str(error)


async def test_rtu_garbage_is_a_garbled_reply(rtu_line):
    noise = bytes([0x00, 0xFF, 0xFE, 0x55, 0xAA, 0x12, 0x34])
    error = await read_error(rtu_line(lambda request: noise))
    assert type(error) is ModbusGarbledReplyError
    assert str(error).startswith(where(rtu_line.port) + "garbled reply: 7 bytes that are no Modbus reply "
                                                        "(00 ff fe 55 aa 12 34): check the baud rate, parity")


async def test_rtu_frame_cut_off_is_a_short_frame(rtu_line):
    error = await read_error(rtu_line(lambda request: holding_reply(DEVICE_ID, 0x0001, 0xE240)[:5]))
    assert type(error) is ModbusGarbledReplyError
    assert str(error).startswith(where(rtu_line.port) + "short frame: 5 of 9 bytes arrived within 0.2 s "
                                                        "(05 03 04 00 01): the reply was cut off")


async def test_rtu_exception_reply_names_the_code(rtu_line):
    error = await read_error(rtu_line(lambda request: rtu(DEVICE_ID, 0x83, 0x04)))
    assert type(error) is ModbusExceptionResponse and error.exception_code == 4
    assert str(error).startswith(where(rtu_line.port) + "exception code 4 (device failure)")


async def test_rtu_good_reply_after_the_errors_reads_and_the_classification_does_not_stick(rtu_line):
    replies = iter([rtu(DEVICE_ID, 0x83, 0x02)[:3], holding_reply(DEVICE_ID, 0x0001, 0xE240)])
    bus = rtu_line(lambda request: next(replies))
    with pytest.raises(ModbusGarbledReplyError, match="short frame"):
        await bus.read_holding(0x5000, 2, DEVICE_ID)
    assert await bus.read_holding(0x5000, 2, DEVICE_ID) == [0x0001, 0xE240]
    assert (bus.requests, bus.failures) == (2, 1)
    await bus.close()


async def test_meter_error_says_crc_error_with_port_and_device_id(rtu_line):
    def corrupt(request: bytes) -> bytes:
        count = request[5]
        frame = bytearray(holding_reply(DEVICE_ID, *([0] * count)))
        frame[3] ^= 0x01
        return bytes(frame)

    bus = rtu_line(corrupt)
    meter = ModbusMeter(PROFILES["abb-b23"], bus, DEVICE_ID)
    await meter.start()
    try:
        with pytest.raises(MeterError) as err:
            await meter.read()
    finally:
        await meter.close()
    message = str(err.value)
    assert f"Modbus RTU {rtu_line.port} (115200 8N1): device id {DEVICE_ID}: read holding registers" in message
    assert ": CRC error: " in message and meter.last_error == message


# ---- TCP ---------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_tcp_device(reply: Callable[[bytes], bytes]):
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                request = await reader.readexactly(12)  # MBAP (7) + function, address, count
                writer.write(reply(request))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def mbap_reply(request: bytes, unit_id: int, pdu: bytes) -> bytes:
    return request[:4] + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit_id]) + pdu


async def test_tcp_reply_from_another_unit_id_is_named():
    pdu = bytes([3, 4, 0x00, 0x01, 0xE2, 0x40])
    async with raw_tcp_device(lambda request: mbap_reply(request, 9, pdu)) as port:
        bus = ModbusBus(TcpSettings("127.0.0.1", port, timeout_s=0.2, retries=0))
        error = await read_error(bus)
    assert type(error) is ModbusWrongDeviceError
    assert str(error).startswith(f"Modbus TCP 127.0.0.1:{port}: device id {DEVICE_ID}: read holding registers "
                                 f"0x5000..0x5001: reply from device id 9 instead of {DEVICE_ID}")


async def test_tcp_peer_that_is_no_modbus_server_is_a_garbled_reply():
    async with raw_tcp_device(lambda request: b"HTTP/1.1 400 Bad Request\r\n\r\n") as port:
        bus = ModbusBus(TcpSettings("127.0.0.1", port, timeout_s=0.2, retries=0))
        error = await read_error(bus)
    assert type(error) is ModbusGarbledReplyError
    assert f"Modbus TCP 127.0.0.1:{port}: device id {DEVICE_ID}" in str(error)
    assert "garbled reply: 28 bytes that are no Modbus reply (48 54 54 50" in str(error)
    assert "is this port a Modbus TCP server?" in str(error)
