"""What the link needs from a transport: open with a message callback, send a payload, close."""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable

from hal.coproc.protocol import LinkStats, Message
from hal.interfaces import HardwareError

log = logging.getLogger(__name__)

MessageHandler = Callable[[int, Message], None]  # (sequence number, message), called in the event loop


class TransportError(HardwareError):
    """The port could not be opened or written; the message names the port."""


class Transport(abc.ABC):
    description: str  # for log and error messages, e.g. "/dev/ttyUSB0" or "CAN can0 (socketcan)"
    stats: LinkStats  # frames the receiver accepted and dropped
    failure: str | None = None  # why the port stopped working; None while it works

    @abc.abstractmethod
    async def open(self, on_message: MessageHandler) -> None:
        """Open the port and deliver every good message to on_message. Raises TransportError."""

    @abc.abstractmethod
    def send(self, payload: bytes) -> None:
        """Frame and write one payload now; thread-safe. Raises TransportError."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the port; safe to call twice."""

    def _deliver(self, handler: MessageHandler, seq: int, message: Message) -> None:
        """Call the link without letting a bug in it stop the reader."""
        try:
            handler(seq, message)
        except Exception:
            log.exception("%s: handling %s failed", self.description, type(message).__name__)
