"""The device back-end registries of the "devices" board, and the built-in factories they point to.

One registry per device table; each maps `backend = "name"` to `build(table, ctx) -> device` (hal/build.py)
and reads the entry-point group `evse_agent.backends.<kind>` for back-ends of other packages
(hal/registry.py, docs/hal-backends.md). Every device module is imported only when a board names it.

A factory validates its own keys (table.reject_unknown) and may return None (no device, e.g. proximity
"none"). The board checks what concerns several devices: pilot/contactor pairings, Modbus addresses,
buses and the co-processor being used (hal/devices_board.py).
"""

from __future__ import annotations

from typing import Any

from hal.board import ConfigTable
from hal.build import BuildContext
from hal.registry import BackendRegistry

# With no PP reading the agent cannot know the plugged cable's rating: offer at most the smallest coding.
MAX_CURRENT_WITHOUT_PP_A = 13.0

_HERE = "hal.device_backends"

PILOTS = BackendRegistry("pilot", {
    "coprocessor": f"{_HERE}:coprocessor_pilot",
    "modbus-evse": "hal.modbus.evse_board:build_evse_board",
    "linux-pwm": f"{_HERE}:linux_pwm_pilot",
})
CONTACTORS = BackendRegistry("contactor", {
    "gpio": f"{_HERE}:gpio_contactor",
    "coprocessor": f"{_HERE}:coprocessor_contactor",
    "modbus-evse": f"{_HERE}:pilot_is_contactor",
})
METERS = BackendRegistry("meter", {"modbus": "hal.modbus.meter:build_meter"})
# With no [connectors.proximity] table a socket's PP is read by the pilot's back-end of the same name.
PROXIMITY = BackendRegistry("proximity", {
    "coprocessor": f"{_HERE}:coprocessor_proximity",
    "linux-pwm": f"{_HERE}:pilot_reads_pp",
    "none": f"{_HERE}:no_proximity",
})
LOCKS = BackendRegistry("lock", {"gpio": f"{_HERE}:gpio_lock", "coprocessor": f"{_HERE}:coprocessor_lock"})
RCDS = BackendRegistry("rcd", {"gpio": f"{_HERE}:gpio_rcd", "coprocessor": f"{_HERE}:coprocessor_rcd"})
LEDS = BackendRegistry("leds", {"gpio": f"{_HERE}:gpio_status_leds"})


# ---- co-processor: the devices of this connector come from the board's one link ------------------------


def _coprocessor_devices(table: ConfigTable, ctx: BuildContext) -> Any:
    """The co-processor's devices of this connector; the table may say nothing but its backend."""
    table.reject_unknown(("backend",))
    if ctx.coprocessor is None:
        raise table.error(
            "backend", '"coprocessor" needs a [coprocessor] table (transport, port...) in the board config'
        )
    return ctx.coprocessor.connector(ctx.connector_id)


def _served(device: Any, ctx: BuildContext) -> Any:
    """Record that `device` works only while the co-processor link runs."""
    ctx.served_by[id(device)] = ctx.coprocessor
    return device


def coprocessor_pilot(table: ConfigTable, ctx: BuildContext) -> Any:
    return _served(_coprocessor_devices(table, ctx).pilot, ctx)


def coprocessor_contactor(table: ConfigTable, ctx: BuildContext) -> Any:
    return _served(_coprocessor_devices(table, ctx).contactor, ctx)


def coprocessor_proximity(table: ConfigTable, ctx: BuildContext) -> Any:
    return _served(_coprocessor_devices(table, ctx).proximity, ctx)


def coprocessor_lock(table: ConfigTable, ctx: BuildContext) -> Any:
    return _served(_coprocessor_devices(table, ctx).lock, ctx)


def coprocessor_rcd(table: ConfigTable, ctx: BuildContext) -> Any:
    return _served(_coprocessor_devices(table, ctx).rcd, ctx)


# ---- GPIO (gpiozero on the board's pin factory) --------------------------------------------------------


def gpio_contactor(table: ConfigTable, ctx: BuildContext) -> Any:
    from hal.gpio import build_contactor

    ctx.need_gpio(table)
    return build_contactor(table, ctx)


def gpio_lock(table: ConfigTable, ctx: BuildContext) -> Any:
    from hal.gpio import build_lock

    ctx.need_gpio(table)
    return build_lock(table, ctx)


def gpio_rcd(table: ConfigTable, ctx: BuildContext) -> Any:
    from hal.gpio import build_rcd

    ctx.need_gpio(table)
    return build_rcd(table, ctx)


def gpio_status_leds(table: ConfigTable, ctx: BuildContext) -> Any:
    from hal.gpio import build_status_leds

    ctx.need_gpio(table)
    return build_status_leds(table, ctx)


# ---- Linux PWM + ADC pilot -----------------------------------------------------------------------------


def linux_pwm_pilot(table: ConfigTable, ctx: BuildContext) -> Any:
    from hal.linux_pilot import build_linux_pilot

    if table.data.get("adc") == "mcp3008" or "peak_reset_pin" in table.data:
        ctx.need_gpio(table)
    return build_linux_pilot(table, ctx, open_i2c_bus=_unopened_i2c_bus if ctx.dry_run else None)


def pilot_reads_pp(table: ConfigTable, ctx: BuildContext) -> Any:
    """PP through the connector's linux-pwm pilot (its pp_channel)."""
    table.reject_unknown(("backend",))
    if ctx.pilot_backend != "linux-pwm":
        raise table.error(
            "backend",
            f'"linux-pwm" reads PP through a linux-pwm pilot; this connector\'s pilot is "{ctx.pilot_backend}"',
        )
    if not ctx.pilot.has_proximity:
        raise table.error(
            "backend",
            "the pilot has no pp_channel: add pp_channel (and the PP divider keys) to [connectors.pilot]",
        )
    return ctx.pilot


# ---- no device -----------------------------------------------------------------------------------------


def pilot_is_contactor(table: ConfigTable, ctx: BuildContext) -> Any:
    """The EVSE board switches its own relay: one object, pilot and contactor."""
    table.reject_unknown(("backend",))
    return ctx.pilot


def no_proximity(table: ConfigTable, ctx: BuildContext) -> None:
    table.reject_unknown(("backend",))
    max_current_a = ctx.connector["max_current_a"]
    if max_current_a > MAX_CURRENT_WITHOUT_PP_A:
        raise table.error(
            "backend",
            f'"none": without a PP reading the agent cannot see the plugged cable\'s rating, so '
            f"max_current_a must be at most {MAX_CURRENT_WITHOUT_PP_A:g} A (the smallest Type 2 "
            f"cable), got {max_current_a:g}",
        )
    return None


class _UnopenedI2cBus:
    """Stands in for /dev/i2c-N in a dry run: building needs a bus object, reading it is an error."""

    def __init__(self, number: int):
        self.number = number

    def write_i2c_block_data(self, *args: Any) -> None:
        from hal.interfaces import HardwareError

        raise HardwareError(f"/dev/i2c-{self.number} is not opened in a dry run")

    def read_i2c_block_data(self, *args: Any) -> list[int]:
        from hal.interfaces import HardwareError

        raise HardwareError(f"/dev/i2c-{self.number} is not opened in a dry run")


def _unopened_i2c_bus(number: int) -> _UnopenedI2cBus:
    return _UnopenedI2cBus(number)
