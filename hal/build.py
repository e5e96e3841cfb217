"""What a device back-end gets when the board loader builds it from a board config.

Each real back-end module exposes `build(table: ConfigTable, ctx: BuildContext) -> <device>`; the board
loader (hal/board.py) picks the module by the `backend` key of the device's table, the way python-can
picks a bus class by `interface=`.
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


class Lifecycle:
    """Devices that own a port or a background task implement these; the Board calls them."""

    async def start(self) -> None:
        """Open ports, start background readers."""

    async def close(self) -> None:
        """Release ports and tasks; must be safe to call twice."""
