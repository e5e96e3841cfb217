"""A contactor driven by one GPIO, with one or two mirror (auxiliary) contacts read back.

The back-end reports debounced truth; the session controller decides what it means (weld, feedback
timeout, minimum close interval).

Mirror contacts are normally closed by default ("NC"): a mirror contact in the sense of IEC 60947-4-1
Annex F is an NC auxiliary contact that cannot be closed while a main contact is welded, so the feedback
input is active (conducting) while the contactor is OPEN. A broken wire or a lost contact then reads
"closed" and the controller refuses to close and reports a weld or feedback fault, instead of reading
"open" and hiding a weld, which is what normally-open wiring does. "NO" remains for boards whose feedback
contact closes with the main contacts (input active = contactor closed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalOutputDevice

from hal.build import Lifecycle
from hal.gpio.inputs import DebouncedInput, InputSpec
from hal.interfaces import Contactor, HardwareError

log = logging.getLogger(__name__)

MIRROR_TYPES = ("NC", "NO")
DEFAULT_MIRROR_TYPE = "NC"  # IEC 60947-4-1 Annex F mirror contact: input active = contactor open
DEFAULT_DEBOUNCE_S = 0.010  # chargebyte Tarragon's relay feedback debounce


class GpioContactor(Contactor, Lifecycle):
    """Coil on `pin`; `mirror` is the L1 mirror contact, `mirror_2` an optional L2/L3 mirror.

    `mirror_type` "NC" (default) conducts while the main contacts are open, "NO" while they are closed;
    `mirror` says how the input reads a conducting contact (pull, active_low). When two mirrors disagree,
    feedback_closed() reports the opposite of the command: a mirror that stays closed after an open
    command then reads as a weld, and one that stays open after a close as a feedback fault, so the
    controller's existing checks catch a failed pole either way. `mirrors_agree` tells which happened.
    """

    def __init__(
        self,
        pin: int | str,
        *,
        mirror: InputSpec,
        mirror_2: InputSpec | None = None,
        mirror_type: str = DEFAULT_MIRROR_TYPE,
        active_high: bool = True,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        clock: Callable[[], float] = time.monotonic,
        pin_factory: Any = None,
    ):
        if mirror_type not in MIRROR_TYPES:
            raise ValueError(f"mirror_type must be one of {MIRROR_TYPES}, got {mirror_type!r}")
        self._mirror_type = mirror_type
        self._commanded = False
        self._mirrors: list[DebouncedInput] = []
        self._coil: DigitalOutputDevice | None = None
        self.mirrors_agree = True
        try:
            self._coil = DigitalOutputDevice(
                pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
            )
            for spec in (mirror, mirror_2):
                if spec is not None:
                    self._mirrors.append(
                        DebouncedInput(spec, hold_s=debounce_s, clock=clock, pin_factory=pin_factory)
                    )
        except Exception:
            self._release()
            raise

    def set_closed(self, closed: bool) -> None:
        self._commanded = bool(closed)
        if self._coil is not None:
            self._coil.value = self._commanded

    @property
    def commanded_closed(self) -> bool:
        return self._commanded

    def feedback_closed(self) -> bool:
        if not self._mirrors:
            raise HardwareError("GPIO contactor is closed: its pins were released")
        closed = [self._main_contacts_closed(mirror.level()) for mirror in self._mirrors]
        agree = all(closed) or not any(closed)
        if agree != self.mirrors_agree:
            self.mirrors_agree = agree
            if not agree:
                log.warning("contactor mirrors disagree: %s", self._describe(closed))
        return closed[0] if agree else not self._commanded

    def _main_contacts_closed(self, mirror_conducting: bool) -> bool:
        return mirror_conducting if self._mirror_type == "NO" else not mirror_conducting

    def _describe(self, closed: list[bool]) -> str:
        return ", ".join(
            f"{mirror.pin_name} {'closed' if c else 'open'}"
            for mirror, c in zip(self._mirrors, closed, strict=True)
        )

    async def close(self) -> None:
        self._release()

    def _release(self) -> None:
        # Leave the coil off before releasing the pin; the board's pull resistor must keep it off afterwards.
        if self._coil is not None:
            self._coil.off()
            self._coil.close()
            self._coil = None
        for mirror in self._mirrors:
            mirror.close()
        self._mirrors = []
