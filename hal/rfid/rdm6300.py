"""RDM6300 / RDM630 125 kHz (EM4100) readers: a TX-only UART module, 9600 8N1.

Frame, 14 bytes: STX 0x02 | 10 ASCII hex = 5 data bytes | 2 ASCII hex checksum = XOR of the 5 data
bytes | ETX 0x03. The module repeats the frame for as long as the card is in the field.

Which string becomes the idTag (`uid_format`):
  "hex5"  (default) all 5 data bytes as 10 hex chars: the version/customer byte plus the 4-byte tag
          number, e.g. "0F00A3B2C1". Nothing is thrown away, so two cards never share an id.
  "hex4"  the 4-byte tag number only, 8 hex chars, e.g. "00A3B2C1".
  "dec10" the 4-byte tag number in decimal, 10 digits with leading zeros, e.g. "0010728129": the
          number printed on most EM4100 cards and key fobs, for installations that registered
          cards by that number. Still a valid idTag (digits only) but not a hex encoding of the UID.
"""

from __future__ import annotations

import time

from hal.build import Clock
from hal.rfid.background import BackgroundTagReader
from hal.rfid.common import DEFAULT_HOLD_OFF_S, ReaderStats, RetryBackoff
from hal.rfid.serial_link import SerialLink

DEFAULT_BAUDRATE = 9600
UID_FORMATS = ("hex5", "hex4", "dec10")

STX = 0x02
ETX = 0x03
FRAME_LENGTH = 14
HEX_DIGITS = b"0123456789ABCDEFabcdef"


def format_uid(data: bytes, uid_format: str) -> str:
    """The idTag for the 5 data bytes of a frame, as chosen by `uid_format` (see the module docstring)."""
    if uid_format == "hex5":
        return data.hex().upper()
    if uid_format == "hex4":
        return data[1:].hex().upper()
    if uid_format == "dec10":
        return f"{int.from_bytes(data[1:], 'big'):010d}"
    raise ValueError(f"unknown uid_format {uid_format!r}")


class Rdm6300FrameParser:
    """Bytes in, the 5 data bytes of every valid frame out; anything else is dropped and counted.

    Resynchronises on the next STX: ASCII hex never contains 0x02, so an STX inside a frame means the
    frame before it was cut short. A garbage run counts as one dropped frame.
    """

    def __init__(self, stats: ReaderStats):
        self.stats = stats
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        payloads: list[bytes] = []
        while True:
            start = self._buffer.find(STX)
            if start < 0:
                if self._buffer:
                    self.stats.drop(f"RDM6300: {len(self._buffer)} bytes outside a frame")
                self._buffer.clear()
                return payloads
            if start > 0:
                self.stats.drop(f"RDM6300: {start} bytes outside a frame")
                del self._buffer[:start]
            next_start = self._buffer.find(STX, 1, FRAME_LENGTH)
            if next_start > 0:
                self.stats.drop("RDM6300: truncated frame")
                del self._buffer[:next_start]
                continue
            if len(self._buffer) < FRAME_LENGTH:
                return payloads  # the rest of the frame is still on the wire
            frame = bytes(self._buffer[:FRAME_LENGTH])
            del self._buffer[:FRAME_LENGTH]
            payload = self._check(frame)
            if payload is not None:
                payloads.append(payload)

    def _check(self, frame: bytes) -> bytes | None:
        text = frame[1:13]
        if frame[13] != ETX:
            self.stats.drop(f"RDM6300: frame does not end with ETX: {frame!r}")
            return None
        if any(c not in HEX_DIGITS for c in text):
            self.stats.drop(f"RDM6300: not hex: {frame!r}")
            return None
        data, checksum = bytes.fromhex(text[:10].decode()), int(text[10:], 16)
        computed = 0
        for byte in data:
            computed ^= byte
        if computed != checksum:
            self.stats.drop(f"RDM6300: checksum {checksum:02X}, computed {computed:02X}: {frame!r}")
            return None
        return data


class Rdm6300Reader(BackgroundTagReader):
    def __init__(
        self,
        port: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        uid_format: str = "hex5",
        hold_off_s: float = DEFAULT_HOLD_OFF_S,
        clock: Clock = time.monotonic,
        retry: RetryBackoff | None = None,
    ):
        if uid_format not in UID_FORMATS:
            raise ValueError(f"unknown uid_format {uid_format!r}")
        super().__init__(description=f"RDM6300 on {port}", hold_off_s=hold_off_s, clock=clock, retry=retry)
        self.uid_format = uid_format
        self.link = SerialLink(port, baudrate)
        self._parser = Rdm6300FrameParser(self.stats)

    async def _open(self) -> None:
        self._parser = Rdm6300FrameParser(self.stats)  # no half frame from before the loss
        self.link.open()

    async def _read_until_lost(self) -> None:
        while True:
            data = await self.link.read(timeout=None)
            for payload in self._parser.feed(data):
                self._publish(format_uid(payload, self.uid_format))

    def _release(self) -> None:
        self.link.close()
