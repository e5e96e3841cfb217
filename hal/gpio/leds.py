"""Optional status LEDs (ready / charging / fault) on GPIO."""

from __future__ import annotations

from typing import Any

from gpiozero import DigitalOutputDevice

from hal.build import Lifecycle
from hal.interfaces import IndicatorState, StatusIndicator


class StatusLeds(StatusIndicator, Lifecycle):
    """Each LED is optional; show() sets the ones that exist. As a StatusIndicator, indicate() lights the
    one LED named by the state (none for OFF)."""

    def __init__(
        self,
        *,
        ready_pin: int | str | None = None,
        charging_pin: int | str | None = None,
        fault_pin: int | str | None = None,
        active_high: bool = True,
        pin_factory: Any = None,
    ):
        self._leds: dict[str, DigitalOutputDevice] = {}
        self._shown = IndicatorState.OFF
        try:
            for name, pin in (("ready", ready_pin), ("charging", charging_pin), ("fault", fault_pin)):
                if pin is not None:
                    self._leds[name] = DigitalOutputDevice(
                        pin, active_high=active_high, initial_value=False, pin_factory=pin_factory
                    )
        except Exception:
            self._release()
            raise

    def show(self, *, ready: bool = False, charging: bool = False, fault: bool = False) -> None:
        for name, on in (("ready", ready), ("charging", charging), ("fault", fault)):
            if name in self._leds:
                self._leds[name].value = on

    def indicate(self, state: IndicatorState) -> None:
        state = IndicatorState(state)
        self.show(ready=state is IndicatorState.READY, charging=state is IndicatorState.CHARGING,
                  fault=state is IndicatorState.FAULT)
        self._shown = state

    @property
    def shown(self) -> IndicatorState:
        return self._shown

    def lit(self) -> dict[str, bool]:
        """Which LEDs are on, by name."""
        return {name: bool(led.value) for name, led in self._leds.items()}

    async def close(self) -> None:
        self._release()

    def _release(self) -> None:
        for led in self._leds.values():
            led.off()
            led.close()
        self._leds = {}
