"""NXP PN532 NFC controller over its UART (HSU), polling for ISO 14443-A cards (NXP UM0701-02).

Information frame: 00 | 00 FF | LEN | LCS | TFI | PD0..PDn | DCS | 00
    LEN = bytes in TFI + PD, LCS = -LEN & 0xFF, DCS = -(TFI + sum(PD)) & 0xFF
    TFI = 0xD4 host -> PN532, 0xD5 PN532 -> host; the response code is the command code + 1.
Extended frame (LEN > 255): 00 | 00 FF | FF FF | LENM LENL | LCS | TFI ... (never needed for our
commands, parsed so it cannot derail the framing). ACK = 00 00 FF 00 FF 00, NACK = 00 00 FF FF 00 00,
application error = 00 00 FF 01 FF 7F 81 00.

Every command is answered by an ACK and then a response frame. A poll is InListPassiveTarget for one
106 kbps type A target; the id is the NFCID1 (4, 7 or 10 bytes) in the order the anticollision gave it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import TypeVar

from hal.build import Clock
from hal.interfaces import HardwareError
from hal.rfid.background import BackgroundTagReader, DeviceLost
from hal.rfid.common import DEFAULT_HOLD_OFF_S, ReaderStats, RetryBackoff
from hal.rfid.serial_link import SerialLink

DEFAULT_BAUDRATE = 115200
DEFAULT_POLL_INTERVAL_S = 0.2

HOST_TO_PN532 = 0xD4
PN532_TO_HOST = 0xD5
ERROR_TFI = 0x7F
START_CODE = b"\x00\xff"
ACK_FRAME = bytes.fromhex("0000FF00FF00")
NACK_FRAME = bytes.fromhex("0000FFFF0000")
# HSU wake-up from power-down: 0x55 0x55 then a long preamble, sent right before the first command
WAKE_UP = b"\x55\x55" + bytes(14)

GET_FIRMWARE_VERSION = 0x02
SAM_CONFIGURATION = 0x14
RF_CONFIGURATION = 0x32
IN_LIST_PASSIVE_TARGET = 0x4A

SAM_NORMAL_MODE = bytes([0x01, 0x00, 0x01])  # normal mode, no virtual-card timeout, use IRQ
# RFConfiguration item 5 (MaxRetries): ATR 0xFF, PSL 0x01, passive activation 0x02. The default
# passive activation retries forever, so InListPassiveTarget would not answer until a card comes and
# every empty poll would end in a timeout; a few retries make "no card" a quick NbTg = 0 answer.
MAX_RETRIES_CONFIG = bytes([0x05, 0xFF, 0x01, 0x02])
ONE_TYPE_A_TARGET = bytes([0x01, 0x00])  # MaxTg = 1, BrTy = 106 kbps ISO/IEC 14443 type A
UID_LENGTHS = (4, 7, 10)  # single, double, triple size NFCID1

MAX_FAILED_POLLS = 3  # in a row: the chip may have been reset and lost its configuration; start over


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Nack:
    pass


@dataclass(frozen=True)
class ErrorFrame:
    """The PN532 could not understand the host's frame (application level error)."""


@dataclass(frozen=True)
class Response:
    code: int  # command code + 1
    data: bytes


Frame = Ack | Nack | ErrorFrame | Response
_F = TypeVar("_F", Ack, Response)  # what _expect() waits for


def build_frame(command: int, params: bytes = b"") -> bytes:
    """A normal information frame from the host to the PN532."""
    body = bytes([HOST_TO_PN532, command]) + params
    length = len(body)
    return bytes([0x00, 0x00, 0xFF, length, -length & 0xFF]) + body + bytes([-sum(body) & 0xFF, 0x00])


def parse_target_uid(data: bytes) -> bytes | None:
    """The NFCID1 from an InListPassiveTarget answer, None when no card was found.

    data = NbTg | Tg | SENS_RES (2) | SEL_RES | NFCIDLength | NFCID1 | [ATS]. Raises ValueError when it
    does not have that shape.
    """
    if not data:
        raise ValueError("InListPassiveTarget answer is empty")
    if data[0] == 0:
        return None
    if len(data) < 6:
        raise ValueError(f"InListPassiveTarget answer too short: {data.hex()}")
    uid_length = data[5]
    uid = data[6 : 6 + uid_length]
    if uid_length not in UID_LENGTHS or len(uid) != uid_length:
        raise ValueError(f"InListPassiveTarget: bad NFCID1 length {uid_length}: {data.hex()}")
    return uid


class Pn532FrameParser:
    """Bytes in, frames out. Frames with a bad LCS, DCS, postamble or TFI are dropped and counted.

    A bad LCS means LEN cannot be trusted, so the parser resumes looking for a start code right after
    the bad one; after a bad DCS the length was good, so the whole frame is skipped.
    """

    def __init__(self, stats: ReaderStats):
        self.stats = stats
        self._buffer = bytearray()
        self._resyncing = False  # after a bad LCS: the rest of that frame is not counted again as garbage

    def reset(self) -> bool:
        """Forget buffered bytes; True when they held the start of a frame (a truncated frame)."""
        partial = START_CODE in self._buffer
        self._buffer.clear()
        self._resyncing = False
        return partial

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while True:
            start = self._buffer.find(START_CODE)
            if start < 0:
                # a trailing 00 may be the first half of the next start code
                self._skip(len(self._buffer) - 1 if self._buffer.endswith(b"\x00") else len(self._buffer))
                return frames
            self._skip(start)
            self._resyncing = False
            if len(self._buffer) < 4:
                return frames
            length, lcs = self._buffer[2], self._buffer[3]
            if (length, lcs) == (0x00, 0xFF):
                frames.append(Ack())
                del self._buffer[:4]  # the postamble is skipped as the next frame's preamble
                continue
            if (length, lcs) == (0xFF, 0x00):
                frames.append(Nack())
                del self._buffer[:4]
                continue
            if (length, lcs) == (0xFF, 0xFF):  # extended frame: 16-bit length follows
                if len(self._buffer) < 7:
                    return frames
                length = self._buffer[4] << 8 | self._buffer[5]
                body_at = 7
                length_ok = (self._buffer[4] + self._buffer[5] + self._buffer[6]) & 0xFF == 0
            else:
                body_at = 4
                length_ok = (length + lcs) & 0xFF == 0
            if not length_ok:
                self.stats.drop(f"PN532: bad LCS in frame header {bytes(self._buffer[:body_at]).hex()}")
                del self._buffer[:2]
                self._resyncing = True
                continue
            end = body_at + length + 2  # body, DCS, postamble
            if len(self._buffer) < end:
                return frames
            body = bytes(self._buffer[body_at : body_at + length])
            dcs, postamble = self._buffer[end - 2], self._buffer[end - 1]
            del self._buffer[:end]
            frame = self._check(body, dcs, postamble)
            if frame is not None:
                frames.append(frame)

    def _skip(self, count: int) -> None:
        """Drop bytes before a start code; zeros are preambles and postambles, anything else garbage."""
        if count <= 0:
            return
        if any(self._buffer[:count]) and not self._resyncing:
            self.stats.drop(f"PN532: garbage outside a frame: {bytes(self._buffer[:count]).hex()}")
        del self._buffer[:count]

    def _check(self, body: bytes, dcs: int, postamble: int) -> Frame | None:
        if (sum(body) + dcs) & 0xFF != 0:
            self.stats.drop(f"PN532: bad DCS in frame {body.hex()}")
        elif postamble != 0x00:
            self.stats.drop(f"PN532: bad postamble {postamble:02x} after frame {body.hex()}")
        elif body == bytes([ERROR_TFI]):
            return ErrorFrame()
        elif len(body) < 2 or body[0] != PN532_TO_HOST:
            self.stats.drop(f"PN532: not a PN532 response: {body.hex()}")
        else:
            return Response(body[1], body[2:])
        return None


class ExchangeFailed(HardwareError):
    """A command got no usable answer (already counted in the stats)."""


class Pn532Reader(BackgroundTagReader):
    def __init__(
        self,
        port: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        hold_off_s: float = DEFAULT_HOLD_OFF_S,
        clock: Clock = time.monotonic,
        retry: RetryBackoff | None = None,
        ack_timeout_s: float = 0.1,  # the chip acknowledges within about 1 ms at 115200 Bd
        response_timeout_s: float = 1.0,  # polls answer in tens of ms with the MaxRetries above
    ):
        super().__init__(description=f"PN532 on {port}", hold_off_s=hold_off_s, clock=clock, retry=retry)
        self.poll_interval_s = poll_interval_s
        self.ack_timeout_s = ack_timeout_s
        self.response_timeout_s = response_timeout_s
        self.firmware: str | None = None
        self.link = SerialLink(port, baudrate)
        self._parser = Pn532FrameParser(self.stats)
        # parsed but not yet consumed: an ACK and the answer after it can arrive in one read
        self._frames: deque[Frame] = deque()
        self._drops_before_command = 0

    async def _open(self) -> None:
        self.link.open()
        await self._exchange(SAM_CONFIGURATION, SAM_NORMAL_MODE, wake_up=True)
        firmware = await self._exchange(GET_FIRMWARE_VERSION)  # IC, Ver, Rev, Support
        if len(firmware) < 4:
            raise ExchangeFailed(f"GetFirmwareVersion answer too short: {firmware.hex()}")
        self.firmware = f"PN5{firmware[0]:02X} firmware {firmware[1]}.{firmware[2]}"
        await self._exchange(RF_CONFIGURATION, MAX_RETRIES_CONFIG)
        self.log.info("%s: %s", self.description, self.firmware)
        self.retry.reset()

    async def _read_until_lost(self) -> None:
        failed_polls = 0
        while True:
            try:
                uid = await self._poll()
            except ExchangeFailed as exc:
                failed_polls += 1
                self.link.write(ACK_FRAME)  # an ACK from the host aborts a command still running
                if failed_polls >= MAX_FAILED_POLLS:
                    raise DeviceLost(f"{failed_polls} polls in a row failed, last: {exc}") from exc
            else:
                failed_polls = 0
                if uid is not None:
                    self._publish(uid)
            await asyncio.sleep(self.poll_interval_s)

    def _release(self) -> None:
        self.link.close()

    async def _poll(self) -> bytes | None:
        data = await self._exchange(IN_LIST_PASSIVE_TARGET, ONE_TYPE_A_TARGET)
        try:
            return parse_target_uid(data)
        except ValueError as exc:
            self.stats.drop(f"PN532: {exc}")
            raise ExchangeFailed(str(exc)) from exc

    async def _exchange(self, command: int, params: bytes = b"", *, wake_up: bool = False) -> bytes:
        """Send a command, wait for its ACK and its response; the response data after the code."""
        self.link.discard_input()
        self._parser.reset()
        self._frames.clear()
        self._drops_before_command = self.stats.frames_dropped
        self.link.write((WAKE_UP if wake_up else b"") + build_frame(command, params))
        name = f"command {command:#04x}"
        await self._expect(Ack, None, self.ack_timeout_s, f"ACK for {name}")
        response = await self._expect(Response, command + 1, self.response_timeout_s, f"answer to {name}")
        return response.data

    async def _expect(self, kind: type[_F], code: int | None, timeout: float, what: str) -> _F:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if isinstance(frame, kind) and (code is None or getattr(frame, "code", None) == code):
                    return frame
                if isinstance(frame, Nack | ErrorFrame):
                    self.stats.drop(f"PN532: {type(frame).__name__} instead of {what}")
                    raise ExchangeFailed(f"{type(frame).__name__} instead of {what}")
                self.stats.drop(f"PN532: unexpected {frame} while waiting for {what}")
            if self.stats.frames_dropped > self._drops_before_command:
                # what we wait for was most likely in the broken frame: fail now, not at the timeout
                raise ExchangeFailed(f"broken frame instead of {what}: {self.stats.last_error}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                if self._parser.reset():
                    self.stats.drop(f"PN532: truncated frame instead of {what}")
                    raise ExchangeFailed(f"truncated frame instead of {what}")
                self.stats.timeout(f"PN532: no {what} within {timeout:g} s")
                raise ExchangeFailed(f"no {what} within {timeout:g} s")
            self._frames.extend(self._parser.feed(await self.link.read(remaining)))
