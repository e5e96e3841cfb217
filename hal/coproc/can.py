"""Co-processor link over classic CAN (python-can): the same bodies as on the UART, cut into segments.

Mapping (docs/coprocessor-protocol.md, "CAN transport"):
* 11-bit identifiers: host -> MCU = base_id + connector, MCU -> host = base_id + 0x10 + connector, where
  connector 0 carries the link-level messages (Hello, KeepAlive). base_id is a multiple of 0x20.
* A body (payload ‖ CRC-32) is sent as 1..16 frames: byte 0 = segment header (bits 0-3 segment index,
  bit 7 = last segment), bytes 1..7 = the next up to 7 body bytes. The segments of one body are sent back
  to back on one identifier; the receiver reassembles per identifier.
CAN's own CRC protects each frame; the body CRC-32 also catches a lost or repeated segment.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import can

from hal.coproc.protocol import (
    HEADER,
    MAX_BODY,
    MCU_TO_HOST_TYPES,
    LinkStats,
    Message,
    MessageReader,
    seal,
)
from hal.coproc.transport import MessageHandler, Transport, TransportError

log = logging.getLogger(__name__)

SEGMENT_DATA = 7  # body bytes per CAN frame after the segment header
LAST_SEGMENT = 0x80
INDEX_MASK = 0x0F
MAX_SEGMENTS = INDEX_MASK + 1
MCU_TO_HOST_OFFSET = 0x10
MAX_CONNECTOR = 0x0F
DEFAULT_BASE_ID = 0x100

assert MAX_SEGMENTS * SEGMENT_DATA >= MAX_BODY


def can_id_for(base_id: int, connector: int, *, from_mcu: bool) -> int:
    if not 0 <= connector <= MAX_CONNECTOR:
        raise ValueError(f"connector {connector} cannot be mapped to a CAN id (0..{MAX_CONNECTOR})")
    return base_id + (MCU_TO_HOST_OFFSET if from_mcu else 0) + connector


def check_base_id(base_id: int) -> None:
    if not 0 <= base_id <= 0x7E0 or base_id % 0x20:
        raise ValueError(f"CAN base id must be a multiple of 0x20 between 0 and 0x7E0, got {base_id:#x}")


def segment(body: bytes) -> list[bytes]:
    """CAN data fields for one body."""
    chunks = [body[i : i + SEGMENT_DATA] for i in range(0, len(body), SEGMENT_DATA)] or [b""]
    if len(chunks) > MAX_SEGMENTS:
        raise ValueError(f"body of {len(body)} bytes needs more than {MAX_SEGMENTS} segments")
    last = len(chunks) - 1
    return [
        bytes([index | (LAST_SEGMENT if index == last else 0)]) + chunk for index, chunk in enumerate(chunks)
    ]


def connector_of(payload: bytes) -> int:
    return payload[HEADER.size - 1]


class Reassembler:
    """CAN frames -> messages, one partial body per identifier; counts and drops broken sequences."""

    def __init__(self, accept: range, stats: LinkStats | None = None):
        self.reader = MessageReader(accept, stats)
        self.stats = self.reader.stats
        self._partial: dict[int, bytearray] = {}
        self._next_index: dict[int, int] = {}

    def feed(self, can_id: int, data: bytes) -> tuple[int, Message] | None:
        if not data:
            self.stats.framing_errors += 1
            return None
        header, chunk = data[0], data[1:]
        index = header & INDEX_MASK
        if index == 0:
            if can_id in self._partial:
                self.stats.framing_errors += 1  # the previous body never got its last segment
            self._partial[can_id] = bytearray()
            self._next_index[can_id] = 0
        if can_id not in self._partial or index != self._next_index[can_id]:
            self.stats.framing_errors += 1  # a segment went missing: wait for the next index 0
            self._partial.pop(can_id, None)
            return None
        self._partial[can_id] += chunk
        self._next_index[can_id] = index + 1
        if not header & LAST_SEGMENT:
            if index + 1 == MAX_SEGMENTS:
                self.stats.oversize += 1
                self._partial.pop(can_id, None)
            return None
        body = bytes(self._partial.pop(can_id))
        return self.reader.read_body(body)


class CanTransport(Transport):
    """Host side. python-can delivers frames on its Notifier thread; they are handed to the event loop."""

    def __init__(self, interface: str, channel: str, *, base_id: int = DEFAULT_BASE_ID, **bus_kwargs):
        check_base_id(base_id)
        self.interface = interface
        self.channel = channel
        self.base_id = base_id
        self.bus_kwargs = bus_kwargs  # e.g. bitrate for interfaces that set it themselves
        self.description = f"CAN {channel} ({interface}) ids {base_id:#05x}..{base_id + 0x1F:#05x}"
        self.stats = LinkStats()
        self.failure: str | None = None
        self._reassembler = Reassembler(MCU_TO_HOST_TYPES, self.stats)
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._on_message: MessageHandler | None = None
        self._send_lock = threading.Lock()

    async def open(self, on_message: MessageHandler) -> None:
        await self.close()
        self._on_message = on_message
        mcu_ids = {"can_id": self.base_id + MCU_TO_HOST_OFFSET, "can_mask": 0x7F0, "extended": False}
        try:
            self._bus = can.Bus(
                interface=self.interface, channel=self.channel, can_filters=[mcu_ids], **self.bus_kwargs
            )
        except (can.CanError, OSError, ValueError, ImportError) as exc:
            self.failure = f"cannot open CAN {self.channel} ({self.interface}): {exc}"
            raise TransportError(self.failure) from exc
        self.failure = None
        self._reassembler.reader.forget_sequence()
        self._notifier = can.Notifier(
            self._bus, [_FrameListener(self)], timeout=0.1, loop=asyncio.get_running_loop()
        )

    def send(self, payload: bytes) -> None:
        can_id = can_id_for(self.base_id, connector_of(payload), from_mcu=False)
        with self._send_lock:  # the segments of one body must not interleave with another body's
            bus = self._bus
            if bus is None:
                raise TransportError(
                    f"{self.description}: not open" + (f" ({self.failure})" if self.failure else "")
                )
            try:
                for data in segment(seal(payload)):
                    bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False), timeout=0.1)
            except (can.CanError, OSError) as exc:
                raise TransportError(f"{self.description}: send failed: {exc}") from exc

    async def close(self) -> None:
        notifier, self._notifier = self._notifier, None
        bus, self._bus = self._bus, None
        if notifier is not None:
            notifier.stop(timeout=1.0)
        if bus is not None:
            bus.shutdown()

    def _on_receive_error(self, exc: Exception) -> None:
        """python-can's reader thread died (interface down, adapter unplugged): the link reopens later."""
        self.failure = f"receive failed: {exc}"
        log.error("%s: %s", self.description, self.failure)
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.shutdown()

    def _on_frame(self, frame: can.Message) -> None:
        if frame.is_extended_id or frame.is_remote_frame or frame.is_error_frame:
            return
        decoded = self._reassembler.feed(frame.arbitration_id, bytes(frame.data))
        if decoded is not None and self._on_message is not None:
            self._deliver(self._on_message, *decoded)


class _FrameListener(can.Listener):
    """Hands frames and reader errors to the transport (in the event loop, via the Notifier)."""

    def __init__(self, transport: CanTransport):
        self._transport = transport

    def on_message_received(self, msg: can.Message) -> None:
        self._transport._on_frame(msg)

    def on_error(self, exc: Exception) -> None:
        self._transport._on_receive_error(exc)
