"""Debounced digital inputs: a pure, clock-driven debouncer and the gpiozero input it filters.

gpiozero's own `bounce_time` only suppresses edge callbacks and cannot be tested against a clock, so the
filtering is done here: every edge (gpiozero calls back from its own thread) and every poll feeds the
raw level with a timestamp from the injected clock, and the debounced level follows the raw level only
once that has held for `hold_s`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero import DigitalInputDevice

PULLS = ("up", "down", "none")


class Debouncer:
    """A level that follows its raw input once the input has kept a new value for `hold_s` seconds."""

    def __init__(self, hold_s: float, level: bool = False):
        if hold_s < 0:
            raise ValueError(f"debounce time must not be negative, got {hold_s}")
        self.hold_s = hold_s
        self._stable = level
        self._raw = level
        self._raw_since = -math.inf
        self.rises = 0  # debounced False -> True transitions, so a pulse between two polls is not lost
        self.raw_rises = 0  # raw False -> True transitions, glitches included

    @property
    def raw(self) -> bool:
        return self._raw

    def feed(self, raw: bool, now: float) -> bool:
        """Record the raw level seen at `now`; return the debounced level."""
        self._settle(now)  # a level that held long enough before this edge counts, even if nobody asked
        if raw != self._raw:
            if raw:
                self.raw_rises += 1
            self._raw, self._raw_since = raw, now
        self._settle(now)  # hold_s == 0 follows at once
        return self._stable

    def level(self, now: float) -> bool:
        """The debounced level at `now`."""
        self._settle(now)
        return self._stable

    def _settle(self, now: float) -> None:
        if self._raw != self._stable and now - self._raw_since >= self.hold_s:
            self._stable = self._raw
            if self._stable:
                self.rises += 1


@dataclass(frozen=True)
class InputSpec:
    """One digital input. "Active" means the condition its name says (contact conducting, RCD tripped,
    connector locked). `pull` is the SoC's internal resistor: with "up" the contact switches the pin to
    GND, so it is active low unless `active_low` says otherwise; "none" (external pull or an opto-coupler)
    needs `active_low`."""

    pin: int | str
    pull: str = "up"
    active_low: bool | None = None

    def __post_init__(self):
        if self.pull not in PULLS:
            raise ValueError(f"pull must be one of {PULLS}, got {self.pull!r}")
        if self.pull == "none" and self.active_low is None:
            raise ValueError("an input without internal pull needs active_low")

    @property
    def is_active_low(self) -> bool:
        return self.active_low if self.active_low is not None else self.pull == "up"


class DebouncedInput:
    """A gpiozero input filtered by a Debouncer; thread-safe (edges arrive on gpiozero's thread)."""

    def __init__(
        self, spec: InputSpec, *, hold_s: float, clock: Callable[[], float], pin_factory: Any = None
    ):
        self.spec = spec
        self._clock = clock
        self._lock = threading.RLock()
        # gpiozero is told the pull only; the polarity is applied here so every pull/polarity combination works
        pull_up = {"up": True, "down": False, "none": None}[spec.pull]
        self._device = DigitalInputDevice(
            spec.pin,
            pull_up=pull_up,
            active_state=True if pull_up is None else None,
            pin_factory=pin_factory,
        )
        self._debouncer = Debouncer(hold_s, level=self._read_raw())
        self._device.when_activated = self._on_edge
        self._device.when_deactivated = self._on_edge

    @property
    def pin_name(self) -> str:
        return str(self._device.pin)

    def _read_raw(self) -> bool:
        high = bool(self._device.pin.state)  # the electrical level; gpiozero's .value already applies pull_up
        return not high if self.spec.is_active_low else high

    def _on_edge(self) -> None:
        with self._lock:
            self._debouncer.feed(self._read_raw(), self._clock())

    def level(self) -> bool:
        """Debounced: True once the input has been active for the hold time."""
        with self._lock:
            return self._debouncer.feed(self._read_raw(), self._clock())

    def raw(self) -> bool:
        """Unfiltered: the input as it is now."""
        with self._lock:
            self._debouncer.feed(self._read_raw(), self._clock())
            return self._debouncer.raw

    @property
    def rises(self) -> int:
        with self._lock:
            self._debouncer.level(self._clock())
            return self._debouncer.rises

    @property
    def raw_rises(self) -> int:
        with self._lock:
            return self._debouncer.raw_rises

    def close(self) -> None:
        self._device.close()
