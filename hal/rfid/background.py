"""The part of every RFID back-end that is not about the wire format.

A background task opens the device, reads until the device is lost, and then reopens it with back-off.
Ids go through the debouncer into a queue that next_tag() waits on. A lost or missing device is logged
and retried, never raised to the agent: next_tag() simply keeps waiting until a card is read.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time

from hal.build import Clock, Lifecycle
from hal.interfaces import HardwareError, RfidReader, normalise_uid
from hal.rfid.common import DEFAULT_HOLD_OFF_S, ReaderStats, RetryBackoff, TagDebouncer

log = logging.getLogger(__name__)

MAX_QUEUED_TAGS = 16  # nobody reading next_tag(): keep the newest cards, not an unbounded backlog


class DeviceLost(HardwareError):
    """The device stopped answering; the reader closes it and opens it again after a back-off."""


class BackgroundTagReader(RfidReader, Lifecycle, abc.ABC):
    def __init__(
        self,
        *,
        description: str,
        hold_off_s: float = DEFAULT_HOLD_OFF_S,
        clock: Clock = time.monotonic,
        retry: RetryBackoff | None = None,
    ):
        self.description = description  # e.g. "PN532 on /dev/ttyS0", for log lines
        self.log = logging.getLogger(type(self).__module__)
        self.stats = ReaderStats(logger=self.log)
        self.debouncer = TagDebouncer(hold_off_s, clock)
        self.retry = retry or RetryBackoff()
        self.connected = False  # the device is open and initialised
        self._tags: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUED_TAGS)
        self._task: asyncio.Task | None = None

    # ---- what a back-end implements ------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None:
        """Open and initialise the device; raise OSError or HardwareError when that fails."""

    @abc.abstractmethod
    async def _read_until_lost(self) -> None:
        """Read frames and call _publish() for each UID; return or raise when the device is lost."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Close the device; must work after a failed or partial _open()."""

    # ---- shared -----------------------------------------------------------------------------------

    @property
    def frames_dropped(self) -> int:
        return self.stats.frames_dropped

    @property
    def last_error(self) -> str | None:
        return self.stats.last_error

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"rfid: {self.description}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._release()
        self.connected = False

    async def next_tag(self) -> str:
        return await self._tags.get()

    def _publish(self, uid: bytes | str) -> None:
        """A UID read correctly from the device: report it unless it is a repeat of the card in the field."""
        tag = normalise_uid(uid)
        self.retry.reset()  # a correct read proves the device works
        if not self.debouncer.accept(tag):
            return
        if self._tags.full():
            dropped = self._tags.get_nowait()
            self.log.warning("%s: nobody is taking cards; forgot %s", self.description, dropped)
        self._tags.put_nowait(tag)

    async def _run(self) -> None:
        while True:
            try:
                await self._open()
                self.connected = True
                self.log.info("%s: reading cards", self.description)
                await self._read_until_lost()
                raise DeviceLost("device closed")
            except (OSError, HardwareError) as exc:  # pyserial's SerialException is an OSError
                problem = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug in a back-end must not end the reader for good
                self.log.exception("%s: unexpected error", self.description)
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                self.connected = False
                self._release()
            self.stats.reconnects += 1
            self.stats.last_error = problem
            delay = self.retry.next_delay()
            self.log.warning("%s: %s; retrying in %.3g s", self.description, problem, delay)
            await asyncio.sleep(delay)
