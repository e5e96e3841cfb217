"""What a device back-end gets when the board loader builds it from a board config.

Every device back-end is a factory `build(table: ConfigTable, ctx: BuildContext) -> <device>`; the
"devices" board (hal/devices_board.py) picks it by the `backend` key of the device's table in the
registry of that device kind (hal/device_backends.py), the way python-can picks a bus class by `interface=`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Clock = Callable[[], float]


@dataclass
class BuildContext:
    path: Path  # the board config file, for error messages and relative paths
    clock: Clock = time.monotonic
    # gpiozero pin factory for every GPIO device of the board; None = gpiozero's default for the
    # machine (lgpio on a Pi 5). Tests pass gpiozero.pins.mock.MockFactory().
    pin_factory: Any = None
    # shared buses by name, from the board config's [buses.<name>] tables, opened once and shared by
    # every device on them (several Modbus devices on one RS-485 line must not talk at once)
    buses: dict[str, Any] = field(default_factory=dict)
    connector_id: int | None = None  # the connector being built, when the device belongs to one
    # The rest is set by the "devices" board while it builds one connector's devices:
    # the validated [[connectors]] entry (id, max_current_a, phases, cable, lock)
    connector: dict[str, Any] = field(default_factory=dict)
    pilot: Any = None  # this connector's pilot once built: a contactor or PP back-end may be the pilot itself
    pilot_backend: str | None = None
    coprocessor: Any = None  # the board's CoprocessorLink, when it has a [coprocessor] table
    # id(device) -> the shared object that must run for the device to work (the co-processor link)
    served_by: dict[int, object] = field(default_factory=dict)
    dry_run: bool = False  # build without touching hardware (hal.board.LoadOptions.dry_run)
    # A back-end that uses GPIO calls need_gpio(table) first: it sets pin_factory (made from the board's
    # [gpio] table on first use), or raises a config error naming `table` when the board has none.
    need_gpio: Callable[[Any], None] = lambda table: None


class Lifecycle:
    """Devices that own a port or a background task implement these; the Board calls them."""

    async def start(self) -> None:
        """Open ports, start background readers."""

    async def close(self) -> None:
        """Release ports and tasks; must be safe to call twice."""
