"""A residual current monitor (e.g. a 6 mA DC RDC-DD module) on GPIO: a trip input and a test output.

The module's own fault output must open the contactor in hardware (hardware-notes.md section 1.6); this
back-end only reports the trip to the agent and runs the self-test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalOutputDevice

from hal.build import Lifecycle
from hal.gpio.inputs import DebouncedInput, InputSpec
from hal.interfaces import ResidualCurrentMonitor

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_S = 0.001  # rejects sub-millisecond spikes, as SmartEVSE's re-read after 1 ms does
SELF_TEST_PULSE_S = 0.1  # esp32-evse and Yeti drive the test input for 100 ms
SELF_TEST_TIMEOUT_S = 1.0
_POLL_S = 0.005


class GpioRcd(ResidualCurrentMonitor, Lifecycle):
    """Trip input latched in software: tripped() stays True until reset() is called while the input is clear.

    self_test() pulses the test output for `self_test_pulse_s` and passes when the trip input goes active
    within `self_test_timeout_s` of the pulse start and clears again within `self_test_timeout_s` after
    that. The trip the test causes is not latched. `last_error` says why a trip or a test failed.
    """

    def __init__(
        self,
        trip: InputSpec,
        *,
        test_pin: int | str | None = None,
        test_active_high: bool = True,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        self_test_pulse_s: float = SELF_TEST_PULSE_S,
        self_test_timeout_s: float = SELF_TEST_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        pin_factory: Any = None,
    ):
        self._pulse_s = self_test_pulse_s
        self._timeout_s = self_test_timeout_s
        self._test: DigitalOutputDevice | None = None
        self._trip = DebouncedInput(trip, hold_s=debounce_s, clock=clock, pin_factory=pin_factory)
        try:
            if test_pin is not None:
                self._test = DigitalOutputDevice(
                    test_pin, active_high=test_active_high, initial_value=False, pin_factory=pin_factory
                )
        except Exception:
            self._trip.close()
            raise
        self._latched = False
        self._testing = False
        self._rises_seen = self._trip.rises
        self.last_error: str | None = None

    @property
    def can_self_test(self) -> bool:
        return self._test is not None

    def tripped(self) -> bool:
        self._poll()
        return self._latched

    def reset(self) -> bool:
        self._poll()
        if self._trip.level() or self._trip.raw():
            self.last_error = f"RCD trip input {self._trip.pin_name} is still active; cannot reset"
            return False
        self._latched = False
        self.last_error = None
        return True

    def _poll(self) -> None:
        active = self._trip.level()
        rises = self._trip.rises
        if not self._testing and (active or rises > self._rises_seen) and not self._latched:
            self._latched = True
            self.last_error = f"residual current trip on {self._trip.pin_name}"
            log.error("RCD: %s", self.last_error)
        self._rises_seen = rises

    async def self_test(self) -> bool:
        """Pulse the test output and check that the trip input follows; False with `last_error` set if not."""
        if self._test is None:
            self.last_error = "RCD self-test impossible: no test pin configured"
            return False
        if self.tripped():
            self.last_error = "RCD self-test refused: the trip is latched"
            return False
        loop = asyncio.get_running_loop()
        self._testing = True
        rises_before = self._trip.raw_rises
        try:
            self._test.on()
            started = loop.time()
            while (remaining := started + self._pulse_s - loop.time()) > 0:
                await asyncio.sleep(remaining)  # a sleep may end a clock tick early: the pulse must not
            self._test.off()
            responded = await self._wait_until(
                lambda: self._trip.raw_rises > rises_before or self._trip.raw(), started + self._timeout_s
            )
            if not responded:
                self.last_error = (
                    f"RCD self-test failed: trip input {self._trip.pin_name} did not respond within "
                    f"{self._timeout_s:g} s of a {self._pulse_s * 1000:g} ms test pulse"
                )
                return False
            released = await self._wait_until(lambda: not self._trip.level(), loop.time() + self._timeout_s)
            if not released:
                self.last_error = (
                    f"RCD self-test failed: trip input {self._trip.pin_name} stayed active after the test"
                )
                return False
            self.last_error = None
            return True
        finally:
            self._test.off()
            self._rises_seen = self._trip.rises  # the trip the test caused is no fault
            self._testing = False

    @staticmethod
    async def _wait_until(condition: Callable[[], bool], deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            if condition():
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)

    async def close(self) -> None:
        if self._test is not None:
            self._test.off()
            self._test.close()
            self._test = None
        self._trip.close()
