"""Pure helpers every RFID back-end shares: debouncing, the dropped-frame counter and the retry back-off.

No I/O and no event loop here, and the clock is injected, so all of it is unit-tested directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from hal.build import Clock

DEFAULT_HOLD_OFF_S = 2.0


class TagDebouncer:
    """Lets a UID through once per presentation.

    Readers report a card over and over while it stays in the field (the RDM6300 repeats its frame,
    the PN532 finds it again on every poll). A sighting of the same UID less than `hold_off_s` after
    the previous sighting is a repeat. Every sighting restarts the hold-off, so a card held on the
    reader for minutes still gives one id; it counts as presented again only after it was away for
    the hold-off. A different UID always passes. hold_off_s = 0 turns debouncing off.
    """

    def __init__(self, hold_off_s: float, clock: Clock):
        self.hold_off_s = hold_off_s
        self._clock = clock
        self._last_uid: str | None = None
        self._last_seen = 0.0
        self.repeats_suppressed = 0

    def accept(self, uid: str) -> bool:
        """Record a sighting of `uid`; True when it is a new presentation that should be reported."""
        now = self._clock()
        repeat = uid == self._last_uid and now - self._last_seen < self.hold_off_s
        self._last_uid, self._last_seen = uid, now
        if repeat:
            self.repeats_suppressed += 1
        return not repeat


@dataclass
class ReaderStats:
    """What went wrong on the line, for diagnostics (status pages, logs, tests)."""

    frames_dropped: int = 0  # frames that arrived but were unusable: bad checksum, truncated, garbage, NACK
    timeouts: int = 0  # answers that never arrived
    reconnects: int = 0  # times the device was lost or could not be opened
    last_error: str | None = None
    logger: logging.Logger | None = None

    def drop(self, reason: str) -> None:
        """A frame is thrown away; it never becomes an id."""
        self.frames_dropped += 1
        self._note(reason)

    def timeout(self, reason: str) -> None:
        self.timeouts += 1
        self._note(reason)

    def _note(self, reason: str) -> None:
        self.last_error = reason
        if self.logger is not None:
            # debug only: a noisy line would flood the log; frames_dropped and last_error show it
            self.logger.debug("%s", reason)


class RetryBackoff:
    """Delays between attempts to reopen a lost device: initial, doubling, capped."""

    def __init__(self, initial_s: float = 0.5, maximum_s: float = 30.0):
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.maximum_s)
        return delay

    def reset(self) -> None:
        """The device answered properly: the next loss starts again from the initial delay."""
        self._next = self.initial_s
