"""The simulated MCU's end of a transport: a pty pair (UART) or a python-can bus.

Blocking and used from the MCU thread only, like a firmware's UART/CAN driver. python-can is imported only
when a CanPort is made.
"""

from __future__ import annotations

import abc
import errno
import fcntl
import logging
import os
import pty
import select
import time
import tty

from hal.coproc.protocol import HOST_TO_MCU_TYPES, FrameDecoder, LinkStats, Message, encode_frame, seal

log = logging.getLogger(__name__)


class McuPort(abc.ABC):
    """The MCU's end of a transport, blocking, used from the MCU thread only."""

    description: str
    stats: LinkStats

    @abc.abstractmethod
    def receive(self, timeout: float) -> list[tuple[int, Message]]:
        """Messages that arrived within `timeout` seconds (possibly none)."""

    @abc.abstractmethod
    def send(self, payload: bytes) -> None: ...

    @abc.abstractmethod
    def send_raw(self, data: bytes) -> None:
        """Bytes (UART) or one raw frame's data (CAN) exactly as given: for fault injection."""

    @abc.abstractmethod
    def close(self) -> None: ...


class PtyPort(McuPort):
    """A pseudo-terminal pair: the MCU holds the master, the host opens `host_path` like a real UART."""

    def __init__(self) -> None:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)  # no echo or newline translation before the host configures the port
        flags = fcntl.fcntl(self._master, fcntl.F_GETFL)
        fcntl.fcntl(self._master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.host_path = os.ttyname(self._slave)
        self.description = self.host_path
        self._decoder = FrameDecoder(HOST_TO_MCU_TYPES)
        self.stats = self._decoder.stats
        self.dropped_bytes = 0  # written while nobody read the host side: a real UART loses them too

    def receive(self, timeout: float) -> list[tuple[int, Message]]:
        ready, _, _ = select.select([self._master], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            time.sleep(timeout)  # no host side open right now
            return []
        return self._decoder.feed(data)

    def send(self, payload: bytes) -> None:
        self.send_raw(encode_frame(payload))

    def send_raw(self, data: bytes) -> None:
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        self.dropped_bytes += len(data) - written

    def close(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass


class CanPort(McuPort):
    """The MCU on a python-can bus (the `virtual` interface in tests)."""

    def __init__(self, interface: str, channel: str, *, base_id: int | None = None, **bus_kwargs):
        import can

        from hal.coproc import can as mapping  # segmentation and ids, shared with the host side

        self._can, self._mapping = can, mapping
        self.base_id = mapping.DEFAULT_BASE_ID if base_id is None else base_id
        mapping.check_base_id(self.base_id)
        host_ids = {"can_id": self.base_id, "can_mask": 0x7F0, "extended": False}
        self._bus = can.Bus(interface=interface, channel=channel, can_filters=[host_ids], **bus_kwargs)
        self.description = f"CAN {channel} ({interface})"
        self._reassembler = mapping.Reassembler(HOST_TO_MCU_TYPES)
        self.stats = self._reassembler.stats

    def receive(self, timeout: float) -> list[tuple[int, Message]]:
        messages = []
        frame = self._bus.recv(timeout)
        while frame is not None:
            if not frame.is_extended_id and not frame.is_error_frame:
                decoded = self._reassembler.feed(frame.arbitration_id, bytes(frame.data))
                if decoded is not None:
                    messages.append(decoded)
            frame = self._bus.recv(0)
        return messages

    def send(self, payload: bytes) -> None:
        can_id = self._mapping.can_id_for(self.base_id, self._mapping.connector_of(payload), from_mcu=True)
        for data in self._mapping.segment(seal(payload)):
            self._send_frame(can_id, data)

    def send_raw(self, data: bytes) -> None:
        """One CAN frame with exactly this data, on the MCU's link-level id."""
        self._send_frame(self._mapping.can_id_for(self.base_id, 0, from_mcu=True), data)

    def _send_frame(self, can_id: int, data: bytes) -> None:
        message = self._can.Message(arbitration_id=can_id, data=data, is_extended_id=False)
        try:
            self._bus.send(message, timeout=0.1)
        except self._can.CanError as exc:
            log.warning("%s: send failed: %s", self.description, exc)

    def close(self) -> None:
        self._bus.shutdown()
