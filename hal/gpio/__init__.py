"""GPIO device back-ends (gpiozero, with the board's pin factory): contactor, RCD, connector lock, LEDs."""

from hal.gpio.config import build_contactor, build_lock, build_rcd, build_status_leds
from hal.gpio.contactor import GpioContactor
from hal.gpio.inputs import DebouncedInput, Debouncer, InputSpec
from hal.gpio.leds import StatusLeds
from hal.gpio.lock import GpioLock
from hal.gpio.rcd import GpioRcd

__all__ = [
    "DebouncedInput",
    "Debouncer",
    "GpioContactor",
    "GpioLock",
    "GpioRcd",
    "InputSpec",
    "StatusLeds",
    "build_contactor",
    "build_lock",
    "build_rcd",
    "build_status_leds",
]
