"""Safety co-processor link protocol: message layouts, CRC-32, COBS framing and robust decoders.

Pure functions and classes, no I/O: the UART and CAN transports, the host link and the simulated MCU all
share this one copy. docs/coprocessor-protocol.md is the normative description; the constants here are
what it documents.

A *payload* is `type:u8 seq:u8 connector:u8` followed by the message's fixed little-endian fields.
A *body* is `payload ‖ CRC-32(payload)` (little-endian). On a UART a body travels COBS-encoded and
terminated by 0x00; on CAN it is cut into segments (hal.coproc.can).
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

HEADER = struct.Struct("<BBB")  # type, sequence number, connector
CRC_SIZE = 4
MAX_PAYLOAD = 64  # bytes; every message of version 1.0 is far below this
MAX_BODY = MAX_PAYLOAD + CRC_SIZE
MAX_ENCODED_FRAME = MAX_BODY + MAX_BODY // 254 + 1  # COBS adds one byte per started 254-byte block
FRAME_DELIMITER = b"\x00"

LINK_CONNECTOR = 0  # connector field of link-level messages (Hello, KeepAlive)
HOST_TO_MCU_TYPES = range(0x01, 0x80)
MCU_TO_HOST_TYPES = range(0x80, 0x100)


class ProtocolError(ValueError):
    """A body that cannot be a valid message; `kind` names the LinkStats counter it belongs to."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# --- CRC and COBS ----------------------------------------------------------------------------------------


def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (the zlib/Ethernet CRC): poly 0x04C11DB7 reflected, init and xorout 0xFFFFFFFF.

    Check value: crc32(b"123456789") == 0xCBF43926.
    """
    return zlib.crc32(data) & 0xFFFFFFFF


def seal(payload: bytes) -> bytes:
    """Payload followed by its CRC-32, little-endian: the body that a transport carries."""
    return payload + struct.pack("<I", crc32(payload))


def unseal(body: bytes) -> bytes:
    """The payload of a body whose CRC matches; ProtocolError otherwise."""
    if len(body) < HEADER.size + CRC_SIZE:
        raise ProtocolError("bad_length", f"body of {len(body)} bytes is shorter than header + CRC")
    if len(body) > MAX_BODY:
        raise ProtocolError("oversize", f"body of {len(body)} bytes exceeds {MAX_BODY}")
    payload, (received,) = body[:-CRC_SIZE], struct.unpack("<I", body[-CRC_SIZE:])
    if crc32(payload) != received:
        raise ProtocolError(
            "crc_errors", f"CRC mismatch: got {received:#010x}, computed {crc32(payload):#010x}"
        )
    return payload


class CobsError(ValueError):
    pass


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing (Cheshire & Baker 1999): the result contains no 0x00.

    A block that reaches 254 data bytes exactly at the end of the input is not followed by an empty block,
    as in the reference implementation (254 non-zero bytes encode to 0xFF + the bytes).
    """
    out = bytearray([0])
    code_at, code = 0, 1
    for index, byte in enumerate(data):
        if byte:
            out.append(byte)
            code += 1
            if code < 0xFF or index + 1 == len(data):
                continue
        out[code_at] = code  # a zero byte, or a full 254-byte block, ends the block
        code_at, code = len(out), 1
        out.append(0)
    out[code_at] = code
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    out = bytearray()
    index = 0
    while index < len(data):
        code = data[index]
        if code == 0:
            raise CobsError(f"0x00 inside a COBS frame at offset {index}")
        end = index + code
        if end > len(data):
            raise CobsError(f"COBS block at offset {index} runs {end - len(data)} bytes past the frame end")
        block = data[index + 1 : end]
        if 0 in block:
            raise CobsError("0x00 inside a COBS block")
        out += block
        index = end
        if code != 0xFF and index < len(data):
            out.append(0)
    return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    """UART frame: COBS(payload ‖ CRC-32) followed by the 0x00 delimiter."""
    return cobs_encode(seal(payload)) + FRAME_DELIMITER


# --- field codes -------------------------------------------------------------------------------------------


class CpCode(enum.IntEnum):
    A = 0
    B = 1
    C = 2
    D = 3
    E = 4
    F = 5
    INVALID = 0xFF  # the positive plateau is outside every state window


class PilotCode(enum.IntEnum):
    X1 = 0  # constant +12 V
    PWM = 1  # 1 kHz PWM at the given duty
    F = 2  # constant -12 V


class LockState(enum.IntEnum):
    UNLOCKED = 0
    LOCKED = 1
    MOVING = 2
    NOT_FITTED = 3


class HelloReason(enum.IntEnum):
    BOOT = 0  # sent unsolicited after the MCU (re)started
    REPLY = 1  # answer to the host's Hello


class ErrorFlag(enum.IntFlag):
    """Status.error_flags. The MCU keeps the contactor open while any flag is set."""

    HOST_TIMEOUT = 1 << 0  # latched: the host's keep-alive stopped; cleared by ResetFaults
    MCU_RESTARTED = 1 << 1  # latched from boot until ResetFaults
    RCD_TRIPPED = 1 << 2  # latched; ResetFaults clears it only while RCD_INPUT_ACTIVE is clear
    RCD_SELFTEST_FAILED = 1 << 3  # latched; cleared by ResetFaults
    DIODE_FAULT = 1 << 4  # latched until the CP returns to state A (the EV left)
    CP_INVALID = 1 << 5  # live: CP voltage outside every state window
    PP_FAULT = 1 << 6  # live: PP resistance below 75 Ohm or otherwise invalid
    RELAY_FAULT = 1 << 7  # latched: mirror contact disagrees with the coil; ResetFaults once they agree
    LOCK_FAULT = 1 << 8  # live: the lock did not reach the commanded position in time
    RCD_INPUT_ACTIVE = 1 << 9  # live: the RCD module's fault output is asserted right now


HOST_RESETTABLE = (
    ErrorFlag.HOST_TIMEOUT
    | ErrorFlag.MCU_RESTARTED
    | ErrorFlag.RCD_TRIPPED
    | ErrorFlag.RCD_SELFTEST_FAILED
    | ErrorFlag.RELAY_FAULT
)
MCU_WITHDREW_POWER = ErrorFlag.HOST_TIMEOUT | ErrorFlag.MCU_RESTARTED  # the MCU reset the host's commands


class EventCode(enum.IntEnum):
    EV_PLUGGED = 1  # A -> B/C/D
    EV_UNPLUGGED = 2  # any -> A
    EV_REQUESTS_POWER = 3  # -> C/D
    EV_STOPS_POWER = 4  # C/D -> B
    POWER_ON = 5  # coil on and mirror contact confirmed closed
    POWER_OFF = 6  # coil off; detail = OffReason
    FAULT_RAISED = 7  # detail = ErrorFlag bits newly set
    FAULT_CLEARED = 8  # detail = ErrorFlag bits cleared
    RCD_SELFTEST_PASSED = 9
    RCD_SELFTEST_FAILED = 10
    COMMAND_REJECTED = 11  # detail = message type that was refused


class OffReason(enum.IntEnum):
    HOST_WITHDREW = 1  # AllowPower(false)
    EV_STOPPED = 2  # C/D -> B
    EV_UNPLUGGED = 3  # -> A
    PILOT_E_OR_F = 4  # CP short (E) or -12 V (F)
    FAULT = 5  # an error flag is set
    PWM_STOPPED = 6  # the pilot left PWM and the EV still drew power 6 s later
    HOST_TIMEOUT = 7  # keep-alive lost


class Capability(enum.IntFlag):
    PROXIMITY = 1 << 0
    LOCK = 1 << 1
    RCD = 1 << 2
    RCD_SELFTEST = 1 << 3
    RELAY_MIRROR = 1 << 4


# --- messages ----------------------------------------------------------------------------------------------
#
# Each message is a frozen dataclass whose fields, in order, are the payload fields after the header. The
# field's metadata holds its struct code and, for enums and flags, the type to convert to.


def _u8(kind: Any = int) -> Any:
    return field(metadata={"fmt": "B", "kind": kind})


def _u16(kind: Any = int) -> Any:
    return field(metadata={"fmt": "H", "kind": kind})


def _i16() -> Any:
    return field(metadata={"fmt": "h", "kind": int})


def _u32() -> Any:
    return field(metadata={"fmt": "I", "kind": int})


def _flag() -> Any:
    return field(metadata={"fmt": "B", "kind": bool})


def _text(size: int) -> Any:
    return field(metadata={"fmt": f"{size}s", "kind": str})


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[int]
    LAYOUT: ClassVar[struct.Struct]  # fields after the header, filled in by _register

    connector: int


MESSAGE_TYPES: dict[int, type[Message]] = {}


def _register(cls: type[Message]) -> type[Message]:
    if cls.TYPE in MESSAGE_TYPES:
        raise AssertionError(f"message type {cls.TYPE:#04x} used twice")
    fmt = "".join(f.metadata["fmt"] for f in _body_fields(cls))
    cls.LAYOUT = struct.Struct("<" + fmt)
    MESSAGE_TYPES[cls.TYPE] = cls
    return cls


def _body_fields(cls: type[Message]) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name != "connector"]


# Host -> MCU


@_register
@dataclass(frozen=True)
class Hello(Message):
    TYPE = 0x01
    protocol_major: int = _u8()
    protocol_minor: int = _u8()
    keepalive_timeout_ms: int = _u16()  # the MCU clamps it to 1000..10000


@_register
@dataclass(frozen=True)
class KeepAlive(Message):
    TYPE = 0x02
    host_time_ms: int = _u32()  # host monotonic clock, wraps; echoed back for the round-trip time


@_register
@dataclass(frozen=True)
class SetPilot(Message):
    TYPE = 0x10
    mode: PilotCode = _u8(PilotCode)
    duty_centi_percent: int = _u16()  # 0..10000 = 0.00..100.00 %; 10000 for X1, 0 for F


@_register
@dataclass(frozen=True)
class AllowPower(Message):
    TYPE = 0x11
    allow: bool = _flag()


@_register
@dataclass(frozen=True)
class SetLock(Message):
    TYPE = 0x12
    locked: bool = _flag()


@_register
@dataclass(frozen=True)
class RcdTest(Message):
    TYPE = 0x13


@_register
@dataclass(frozen=True)
class ResetFaults(Message):
    TYPE = 0x14
    flags: ErrorFlag = _u16(ErrorFlag)  # which latched flags to clear (only HOST_RESETTABLE ones act)


# MCU -> host


@_register
@dataclass(frozen=True)
class McuHello(Message):
    TYPE = 0x81
    protocol_major: int = _u8()
    protocol_minor: int = _u8()
    reason: HelloReason = _u8(HelloReason)
    connector_count: int = _u8()
    capabilities: Capability = _u16(Capability)
    keepalive_timeout_ms: int = _u16()  # in effect after clamping the host's request
    status_period_ms: int = _u16()
    firmware: str = _text(16)  # ASCII, NUL-padded


@_register
@dataclass(frozen=True)
class McuKeepAlive(Message):
    TYPE = 0x82
    host_time_ms: int = _u32()  # copied from the KeepAlive being answered
    uptime_ms: int = _u32()


@_register
@dataclass(frozen=True)
class Status(Message):
    TYPE = 0x90
    cp_state: CpCode = _u8(CpCode)
    cp_high_mv: int = _i16()
    cp_low_mv: int = _i16()
    diode_ok: bool = _flag()
    pp_ampacity_a: int = _u8()  # 0 = no cable, 13/20/32/63, 255 = PP fault
    pilot_mode: PilotCode = _u8(PilotCode)  # echo of the applied SetPilot
    duty_centi_percent: int = _u16()
    allow_power: bool = _flag()  # the host's AllowPower as the MCU holds it
    relay_commanded: bool = _flag()  # the MCU drives the coil
    relay_feedback: bool = _flag()  # mirror contact: main contacts closed
    lock_commanded: bool = _flag()  # echo of SetLock
    lock_state: LockState = _u8(LockState)
    error_flags: ErrorFlag = _u16(ErrorFlag)


@_register
@dataclass(frozen=True)
class Event(Message):
    TYPE = 0x91
    code: EventCode = _u8(EventCode)
    detail: int = _u16()


PP_NO_CABLE = 0
PP_FAULT_CODE = 255


# --- payload encode / decode --------------------------------------------------------------------------------


def encode_payload(message: Message, seq: int) -> bytes:
    values = []
    for f in _body_fields(type(message)):
        value = getattr(message, f.name)
        if f.metadata["kind"] is str:
            value = value.encode("ascii")
        values.append(int(value) if isinstance(value, int) else value)  # IntEnum, IntFlag, bool -> int
    try:
        return HEADER.pack(message.TYPE, seq & 0xFF, message.connector) + message.LAYOUT.pack(*values)
    except (struct.error, UnicodeEncodeError) as exc:
        raise ValueError(f"cannot encode {message!r}: {exc}") from exc


def decode_payload(payload: bytes) -> tuple[int, Message]:
    """(sequence number, message). Longer payloads are accepted (fields a newer minor version appended)."""
    if len(payload) < HEADER.size:
        raise ProtocolError("bad_length", f"payload of {len(payload)} bytes has no complete header")
    type_id, seq, connector = HEADER.unpack_from(payload)
    cls = MESSAGE_TYPES.get(type_id)
    if cls is None:
        raise ProtocolError("unknown_type", f"unknown message type {type_id:#04x}")
    if len(payload) < HEADER.size + cls.LAYOUT.size:
        raise ProtocolError(
            "bad_length",
            f"{cls.__name__} needs {HEADER.size + cls.LAYOUT.size} payload bytes, got {len(payload)}",
        )
    raw = cls.LAYOUT.unpack_from(payload, HEADER.size)
    values = {"connector": connector}
    for f, value in zip(_body_fields(cls), raw, strict=True):
        values[f.name] = _convert(cls, f, value)
    return seq, cls(**values)


def _convert(cls: type[Message], f: dataclasses.Field, value: Any) -> Any:
    kind = f.metadata["kind"]
    try:
        if kind is bool:
            if value not in (0, 1):
                raise ValueError(f"{value} is not 0 or 1")
            return bool(value)
        if kind is str:
            return value.rstrip(b"\x00").decode("ascii")
        if isinstance(kind, type) and issubclass(kind, enum.IntFlag):
            return kind(value)  # unknown bits of a newer minor version are kept, never refused
        return kind(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_field", f"{cls.__name__}.{f.name}: {exc}") from exc


# --- receiving side ------------------------------------------------------------------------------------------


@dataclass
class LinkStats:
    """What a receiver dropped, by reason, and what it accepted. Never reset; read for diagnostics."""

    frames_ok: int = 0
    framing_errors: int = 0  # malformed COBS, or a CAN segment out of order
    crc_errors: int = 0
    oversize: int = 0
    bad_length: int = 0
    unknown_type: int = 0  # includes messages of the wrong direction
    bad_field: int = 0  # enum or boolean value out of range
    sequence_gaps: int = 0  # frames lost between two accepted ones (by sequence number)

    @property
    def dropped(self) -> int:
        return (
            self.framing_errors
            + self.crc_errors
            + self.oversize
            + self.bad_length
            + self.unknown_type
            + self.bad_field
        )

    def count(self, kind: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)


class MessageReader:
    """Turns bodies into messages for one direction; counts and drops the bad ones, tracks sequence gaps."""

    def __init__(self, accept: range, stats: LinkStats | None = None):
        self.accept = accept  # HOST_TO_MCU_TYPES on the MCU, MCU_TO_HOST_TYPES on the host
        self.stats = stats if stats is not None else LinkStats()
        self._last_seq: int | None = None
        self.last_error: str | None = None

    def read_body(self, body: bytes) -> tuple[int, Message] | None:
        try:
            seq, message = decode_payload(unseal(body))
            if message.TYPE not in self.accept:
                raise ProtocolError("unknown_type", f"{type(message).__name__} travels the other way")
        except ProtocolError as exc:
            self.stats.count(exc.kind)
            self.last_error = str(exc)
            return None
        self.stats.frames_ok += 1
        if isinstance(message, McuHello) and message.reason is HelloReason.BOOT:
            self._last_seq = None  # the MCU restarted its counter
        if self._last_seq is not None:
            self.stats.sequence_gaps += (seq - self._last_seq - 1) & 0xFF
        self._last_seq = seq
        return seq, message

    def forget_sequence(self) -> None:
        """The stream was interrupted on purpose (port reopened): the next frame starts a new count."""
        self._last_seq = None


class FrameDecoder:
    """Byte stream -> messages. Resynchronises on every 0x00; feed it whatever a read returned."""

    def __init__(self, accept: range, stats: LinkStats | None = None):
        self.reader = MessageReader(accept, stats)
        self.stats = self.reader.stats
        self._buffer = bytearray()
        self._overflowed = False

    def feed(self, data: bytes) -> list[tuple[int, Message]]:
        messages = []
        for chunk_end, chunk in _split_keep_end(data):
            if not self._overflowed:
                self._buffer += chunk
                if len(self._buffer) > MAX_ENCODED_FRAME:
                    self._overflowed = True  # drop everything up to the next delimiter
                    self._buffer.clear()
            if chunk_end:
                decoded = self._end_of_frame()
                if decoded is not None:
                    messages.append(decoded)
        return messages

    def _end_of_frame(self) -> tuple[int, Message] | None:
        frame, overflowed = bytes(self._buffer), self._overflowed
        self._buffer.clear()
        self._overflowed = False
        if overflowed:
            self.stats.oversize += 1
            return None
        if not frame:
            return None  # back-to-back delimiters are allowed and mean nothing
        try:
            body = cobs_decode(frame)
        except CobsError as exc:
            self.stats.framing_errors += 1
            self.reader.last_error = str(exc)
            return None
        return self.reader.read_body(body)


def _split_keep_end(data: bytes) -> list[tuple[bool, bytes]]:
    """Split at 0x00: [(ends_a_frame, bytes before the delimiter)]; the last piece may not end a frame."""
    pieces = data.split(FRAME_DELIMITER)
    last = len(pieces) - 1
    return [(index < last, piece) for index, piece in enumerate(pieces) if piece or index < last]


# --- unit conversions shared by the host and the MCU twin -------------------------------------------------------


def duty_to_centi(duty_percent: float) -> int:
    return round(duty_percent * 100)


def centi_to_duty(centi: int) -> float:
    return centi / 100.0
