"""A pyserial port read through the event loop, so waiting for a card blocks no thread."""

from __future__ import annotations

import asyncio

import serial

READ_CHUNK = 4096


class SerialLink:
    def __init__(self, port: str, baudrate: int):
        self.port = port
        self.baudrate = baudrate
        self._serial: serial.Serial | None = None

    def open(self) -> None:
        """8N1, non-blocking reads; exclusive so a getty or a second agent cannot read our frames."""
        self._serial = serial.Serial(self.port, self.baudrate, timeout=0, exclusive=True)

    def close(self) -> None:
        port, self._serial = self._serial, None
        if port is not None:
            try:
                port.close()
            except OSError:
                pass  # the device is already gone; nothing left to release

    def _port(self) -> serial.Serial:
        if self._serial is None:
            raise serial.SerialException(f"{self.port}: not open")
        return self._serial

    def write(self, data: bytes) -> None:
        port = self._port()
        port.write(data)
        port.flush()

    def discard_input(self) -> None:
        """Forget bytes that arrived before the command we are about to send (late or stray answers)."""
        self._port().reset_input_buffer()

    async def read(self, timeout: float | None) -> bytes:
        """The bytes that arrive within `timeout` seconds (None: wait forever); b"" when none came.

        Raises serial.SerialException (an OSError) when the port is gone: a closed or unplugged device is
        reported readable by select() and then fails to read (EIO, or no data), which pyserial raises.
        """
        port = self._port()
        data = port.read(READ_CHUNK)
        if data:
            return data
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = port.fileno()
        loop.add_reader(fd, lambda: None if readable.done() else readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout)
        except TimeoutError:
            return b""
        finally:
            loop.remove_reader(fd)
        return port.read(READ_CHUNK)
