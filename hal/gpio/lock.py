"""The Type 2 socket's connector lock on GPIO: a solenoid held by one pin, or a motor pulsed by two."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalOutputDevice

from hal.build import Lifecycle
from hal.gpio.inputs import DebouncedInput, InputSpec
from hal.interfaces import ConnectorLock

DEFAULT_PULSE_S = 0.3  # typical motor actuator travel time; a motor must not be driven continuously
DEFAULT_DEBOUNCE_S = 0.010
TRAVEL_MARGIN_S = 0.5  # a motor's feedback may follow its pulse this much later by default


class GpioLock(ConnectorLock, Lifecycle):
    """With only `lock_pin`, the pin is held active while locked (solenoid). With `unlock_pin` too, a
    motor actuator is driven by a `pulse_s` pulse on the pin for the wanted direction, the other pin off
    first (an H-bridge must never have both on). is_locked() is the debounced feedback switch, never the
    command."""

    def __init__(
        self,
        lock_pin: int | str,
        *,
        feedback: InputSpec,
        unlock_pin: int | str | None = None,
        active_high: bool = True,
        pulse_s: float = DEFAULT_PULSE_S,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        travel_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        pin_factory: Any = None,
    ):
        self._pulse_s = pulse_s
        if travel_timeout_s is None:  # a motor is still moving during its pulse: never a fault before it ends
            travel_timeout_s = max(ConnectorLock.travel_timeout_s,
                                   pulse_s + TRAVEL_MARGIN_S if unlock_pin is not None else 0.0)
        self.travel_timeout_s = travel_timeout_s
        self._commanded = False
        self._outputs: list[DigitalOutputDevice] = []
        self._feedback: DebouncedInput | None = None
        try:
            for pin in (lock_pin, unlock_pin):
                if pin is not None:
                    self._outputs.append(
                        DigitalOutputDevice(
                            pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
                        )
                    )
            self._feedback = DebouncedInput(feedback, hold_s=debounce_s, clock=clock, pin_factory=pin_factory)
        except Exception:
            self._release()
            raise

    @property
    def is_motor(self) -> bool:
        return len(self._outputs) == 2

    @property
    def commanded_locked(self) -> bool:
        return self._commanded

    def set_locked(self, locked: bool) -> None:
        self._commanded = bool(locked)
        if not self._outputs:
            return
        if not self.is_motor:
            self._outputs[0].value = self._commanded
            return
        lock_out, unlock_out = self._outputs
        drive, other = (lock_out, unlock_out) if self._commanded else (unlock_out, lock_out)
        other.off()  # also stops a pulse still running in the other direction
        drive.blink(on_time=self._pulse_s, off_time=0, n=1, background=True)

    def is_locked(self) -> bool:
        return self._feedback.level() if self._feedback is not None else False

    async def close(self) -> None:
        self._release()

    def _release(self) -> None:
        for output in self._outputs:
            output.off()
            output.close()
        self._outputs = []
        if self._feedback is not None:
            self._feedback.close()
            self._feedback = None
