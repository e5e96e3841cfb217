"""Builders for the GPIO devices from their board-config tables, e.g.

    [connectors.contactor]                 [connectors.rcd]                [connectors.lock]
    backend = "gpio"                       backend = "gpio"                backend = "gpio"
    pin = 17                               trip_pin = 22                   lock_pin = 5
    feedback_pin = 27                      test_pin = 23                   unlock_pin = 6
    feedback = "NC"                                                        lock_feedback_pin = 13

The contactor's `feedback` is how its mirror contact is wired: "NC" (the default: a mirror contact per
IEC 60947-4-1 Annex F, conducting while the contactor is open, so a broken wire reads as closed and is
caught) or "NO" (conducting while the contactor is closed; a broken wire then looks like "open").

Pins are BCM numbers or gpiozero pin names ("GPIO17", "BOARD11"). Every input has `<name>_pull`
("up" | "down" | "none") and `<name>_active_low` (default: true with a pull-up, false with a pull-down;
required with "none"). Unknown keys are rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar, overload

from gpiozero.exc import GPIOZeroError

from hal.board import BoardConfigError, ConfigTable
from hal.build import BuildContext
from hal.gpio.contactor import DEFAULT_MIRROR_TYPE, MIRROR_TYPES, GpioContactor
from hal.gpio.inputs import PULLS, InputSpec
from hal.gpio.leds import StatusLeds
from hal.gpio.lock import GpioLock
from hal.gpio.rcd import GpioRcd

BACKEND = "gpio"

CONTACTOR_KEYS = (
    "backend", "pin", "active_high", "feedback_pin", "feedback", "feedback_pull", "feedback_active_low",
    "feedback_pin_2", "debounce_ms",
)  # fmt: skip
RCD_KEYS = (
    "backend", "trip_pin", "trip_pull", "trip_active_low", "test_pin", "test_active_high", "debounce_ms",
    "self_test_pulse_ms", "self_test_timeout_ms",
)  # fmt: skip
LOCK_KEYS = (
    "backend", "lock_pin", "unlock_pin", "active_high", "pulse_ms", "lock_feedback_pin",
    "lock_feedback_pull", "lock_feedback_active_low", "debounce_ms", "travel_timeout_ms",
)  # fmt: skip
LED_KEYS = ("backend", "ready_pin", "charging_pin", "fault_pin", "active_high")

Device = TypeVar("Device")


@overload
def config_pin(table: ConfigTable, key: str, *, required: Literal[True] = True) -> int | str: ...
@overload
def config_pin(table: ConfigTable, key: str, *, required: bool) -> int | str | None: ...
def config_pin(table: ConfigTable, key: str, *, required: bool = True) -> int | str | None:
    """A GPIO given as a BCM number or a gpiozero pin name."""
    if key not in table.data:
        if required:
            raise table.error(key, "required key is missing")
        return None
    value = table.data[key]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise table.error(key, f'expected a GPIO number or a pin name like "GPIO17", got {value!r}')
    if isinstance(value, int) and value < 0:
        raise table.error(key, f"must be at least 0, got {value}")
    if isinstance(value, str) and not value.strip():
        raise table.error(key, "must not be empty")
    return value


@overload
def config_input(table: ConfigTable, prefix: str, *, required: Literal[True] = True) -> InputSpec: ...
@overload
def config_input(table: ConfigTable, prefix: str, *, required: bool) -> InputSpec | None: ...
def config_input(table: ConfigTable, prefix: str, *, required: bool = True) -> InputSpec | None:
    """`<prefix>_pin` with `<prefix>_pull` and `<prefix>_active_low`."""
    pin = config_pin(table, f"{prefix}_pin", required=required)
    if pin is None:
        return None
    pull = table.string(f"{prefix}_pull", default="up", choices=PULLS)
    active_low = table.boolean(f"{prefix}_active_low", default=None)
    if pull == "none" and active_low is None:
        raise table.error(f"{prefix}_active_low", f'required when {prefix}_pull = "none"')
    return InputSpec(pin, pull, active_low)


def check_distinct_pins(table: ConfigTable, keys: tuple[str, ...]) -> None:
    seen: dict[object, str] = {}
    for key in keys:
        pin = table.data.get(key)
        if pin is None:
            continue
        if pin in seen:
            raise table.error(key, f"pin {pin} is already used by {seen[pin]}")
        seen[pin] = key


def check_backend(table: ConfigTable, backend: str) -> None:
    table.string("backend", default=backend, choices=(backend,))


def open_gpio(table: ConfigTable, make: Callable[[], Device]) -> Device:
    """Construct a gpiozero-based device; a pin that is invalid or in use becomes a config error."""
    try:
        return make()
    except GPIOZeroError as exc:
        raise BoardConfigError(f"{table.path}: {table.where}: cannot set up the GPIO device: {exc}") from exc


def _seconds(
    table: ConfigTable, key: str, default_s: float, *, minimum_ms: float, maximum_ms: float
) -> float:
    ms = table.number(key, default=default_s * 1000, minimum=minimum_ms, maximum=maximum_ms, unit="ms")
    return ms / 1000


def build_contactor(table: ConfigTable, ctx: BuildContext) -> GpioContactor:
    table.reject_unknown(CONTACTOR_KEYS)
    check_backend(table, BACKEND)
    check_distinct_pins(table, ("pin", "feedback_pin", "feedback_pin_2"))
    pin = config_pin(table, "pin")
    mirror = config_input(table, "feedback")
    mirror_2 = None
    if "feedback_pin_2" in table.data:  # the second mirror is wired like the first
        mirror_2 = InputSpec(config_pin(table, "feedback_pin_2"), mirror.pull, mirror.active_low)
    options: dict[str, Any] = dict(
        mirror=mirror,
        mirror_2=mirror_2,
        mirror_type=table.string("feedback", default=DEFAULT_MIRROR_TYPE, choices=MIRROR_TYPES),
        active_high=table.boolean("active_high", default=True),
        debounce_s=_seconds(table, "debounce_ms", 0.010, minimum_ms=0, maximum_ms=1000),
    )
    return open_gpio(
        table, lambda: GpioContactor(pin, **options, clock=ctx.clock, pin_factory=ctx.pin_factory)
    )


def build_rcd(table: ConfigTable, ctx: BuildContext) -> GpioRcd:
    table.reject_unknown(RCD_KEYS)
    check_backend(table, BACKEND)
    check_distinct_pins(table, ("trip_pin", "test_pin"))
    trip = config_input(table, "trip")
    test_pin = config_pin(table, "test_pin", required=False)
    if test_pin is None:
        for key in ("test_active_high", "self_test_pulse_ms", "self_test_timeout_ms"):
            if key in table.data:
                raise table.error(key, "only applies with a test_pin")
    options: dict[str, Any] = dict(
        test_pin=test_pin,
        test_active_high=table.boolean("test_active_high", default=True),
        debounce_s=_seconds(table, "debounce_ms", 0.001, minimum_ms=0, maximum_ms=100),
        self_test_pulse_s=_seconds(table, "self_test_pulse_ms", 0.1, minimum_ms=10, maximum_ms=1000),
        self_test_timeout_s=_seconds(table, "self_test_timeout_ms", 1.0, minimum_ms=50, maximum_ms=15000),
    )
    return open_gpio(table, lambda: GpioRcd(trip, **options, clock=ctx.clock, pin_factory=ctx.pin_factory))


def build_lock(table: ConfigTable, ctx: BuildContext) -> GpioLock:
    table.reject_unknown(LOCK_KEYS)
    check_backend(table, BACKEND)
    check_distinct_pins(table, ("lock_pin", "unlock_pin", "lock_feedback_pin"))
    lock_pin = config_pin(table, "lock_pin")
    unlock_pin = config_pin(table, "unlock_pin", required=False)
    if unlock_pin is None and "pulse_ms" in table.data:
        raise table.error("pulse_ms", "only applies to a motor lock (lock_pin and unlock_pin)")
    options: dict[str, Any] = dict(
        feedback=config_input(table, "lock_feedback"),
        unlock_pin=unlock_pin,
        active_high=table.boolean("active_high", default=True),
        pulse_s=_seconds(table, "pulse_ms", 0.3, minimum_ms=10, maximum_ms=5000),
        debounce_s=_seconds(table, "debounce_ms", 0.010, minimum_ms=0, maximum_ms=1000),
    )
    if "travel_timeout_ms" in table.data:
        travel_s = _seconds(table, "travel_timeout_ms", 1.0, minimum_ms=100, maximum_ms=10000)
        if unlock_pin is not None and travel_s < options["pulse_s"]:
            raise table.error("travel_timeout_ms", f"must be at least pulse_ms ({options['pulse_s'] * 1000:g}): "
                              "the motor is still moving during its pulse")
        options["travel_timeout_s"] = travel_s
    return open_gpio(
        table, lambda: GpioLock(lock_pin, **options, clock=ctx.clock, pin_factory=ctx.pin_factory)
    )


def build_status_leds(table: ConfigTable, ctx: BuildContext) -> StatusLeds:
    table.reject_unknown(LED_KEYS)
    check_backend(table, BACKEND)
    check_distinct_pins(table, ("ready_pin", "charging_pin", "fault_pin"))
    pins = {key: config_pin(table, key, required=False) for key in ("ready_pin", "charging_pin", "fault_pin")}
    active_high = table.boolean("active_high", default=True)
    return open_gpio(table, lambda: StatusLeds(**pins, active_high=active_high, pin_factory=ctx.pin_factory))
