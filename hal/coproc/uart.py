"""Co-processor link over a UART (pyserial): COBS frames delimited by 0x00.

Reading runs on the asyncio loop (`add_reader` on the port's file descriptor), so received messages reach
the link in the loop's thread without locks. Writes are serialised by a lock, so a frame is never
interleaved with another one even if a second thread sends.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import serial

from hal.coproc.protocol import FRAME_DELIMITER, MCU_TO_HOST_TYPES, FrameDecoder, LinkStats, encode_frame
from hal.coproc.transport import MessageHandler, Transport, TransportError

log = logging.getLogger(__name__)

READ_CHUNK = 4096


class UartTransport(Transport):
    def __init__(self, port: str, baudrate: int = 115200, *, write_timeout_s: float = 0.2):
        self.port = port
        self.baudrate = baudrate
        self.description = port
        self.write_timeout_s = write_timeout_s  # a stuck port must not block the event loop for long
        self.stats = LinkStats()
        self.failure: str | None = None
        self._decoder = FrameDecoder(MCU_TO_HOST_TYPES, self.stats)
        self._serial: serial.Serial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_message: MessageHandler | None = None
        self._write_lock = threading.Lock()

    async def open(self, on_message: MessageHandler) -> None:
        await self.close()
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        try:
            port = serial.Serial(
                self.port, self.baudrate, timeout=0, write_timeout=self.write_timeout_s, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            self.failure = f"cannot open {self.port}: {exc}"
            raise TransportError(self.failure) from exc
        port.reset_input_buffer()  # whatever waited in the kernel buffer is from before: act on fresh frames
        self._serial = port
        self.failure = None
        self._decoder.reader.forget_sequence()
        self._loop.add_reader(port.fileno(), self._on_readable)
        self.write(FRAME_DELIMITER)  # ends whatever partial frame the MCU's receiver holds

    def send(self, payload: bytes) -> None:
        self.write(encode_frame(payload))

    def write(self, data: bytes) -> None:
        """Raw bytes onto the line (send() frames a payload; this is also used for fault injection)."""
        with self._write_lock:
            port = self._serial
            if port is None:
                raise TransportError(
                    f"{self.port}: not open" + (f" ({self.failure})" if self.failure else "")
                )
            try:
                port.write(data)
            except serial.SerialTimeoutException as exc:
                raise TransportError(f"{self.port}: write timed out after {self.write_timeout_s} s") from exc
            except (serial.SerialException, OSError) as exc:
                self._fail(f"write failed: {exc}")
                raise TransportError(f"{self.port}: {self.failure}") from exc

    async def close(self) -> None:
        port, self._serial = self._serial, None
        if port is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(port.fileno())
        port.close()

    def _on_readable(self) -> None:
        port = self._serial
        if port is None:
            return
        try:
            data = port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as exc:  # USB adapter unplugged, pty closed, ...
            self._fail(f"read failed: {exc}")
            return
        assert self._on_message is not None
        for seq, message in self._decoder.feed(data):
            self._deliver(self._on_message, seq, message)

    def _fail(self, reason: str) -> None:
        """The port is unusable: stop reading; the link reopens it later."""
        self.failure = reason
        log.error("%s: %s", self.port, reason)
        port, self._serial = self._serial, None
        if port is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(port.fileno())
            try:
                port.close()
            except (serial.SerialException, OSError):
                pass
