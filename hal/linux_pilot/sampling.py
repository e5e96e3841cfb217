"""How the CP plateaus are measured through an ADC (hardware-notes.md section 0, back-ends b and c).

Both strategies block (ADC transfers, the peak-detector reset) and run on the pilot's sampling thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from gpiozero import DigitalOutputDevice

from hal.linux_pilot.adc import Adc

PEAK_RESET_S = 0.0015  # chargebyte Tarragon: hold the detectors in reset 1.5 ms,
PEAK_SETTLE_S = 0.002  # then let them charge to the plateaus for 2 ms before reading
MIN_MAX_READS = 100  # OpenEVSE takes 100 reads over ~11 ms: several PWM periods at any phase


@dataclass(frozen=True)
class CpScaling:
    """ADC volts -> CP volts for the board's front end (a divider with an offset: CP = adc * gain + offset)."""

    gain: float
    offset_v: float = 0.0

    def to_cp(self, adc_volts: float) -> float:
        return adc_volts * self.gain + self.offset_v


class CpSampling(Protocol):
    def sample(self) -> tuple[float, float]:
        """(positive plateau, negative plateau) in CP volts."""

    def close(self) -> None: ...


class PeakDetectorSampling:
    """Boards with positive and negative peak detectors on the CP (chargebyte Tarragon style): Linux only
    reads two slow channels, no timing locked to the PWM. An optional reset pin discharges the detectors
    before each sample so a falling plateau shows at once."""

    def __init__(
        self,
        adc: Adc,
        *,
        high_channel: int,
        low_channel: int,
        high_scaling: CpScaling,
        low_scaling: CpScaling,
        reset: DigitalOutputDevice | None = None,
        reset_s: float = PEAK_RESET_S,
        settle_s: float = PEAK_SETTLE_S,
    ):
        self._adc = adc
        self._high_channel, self._low_channel = high_channel, low_channel
        self._high_scaling, self._low_scaling = high_scaling, low_scaling
        self._reset = reset
        self._reset_s, self._settle_s = reset_s, settle_s

    def sample(self) -> tuple[float, float]:
        if self._reset is not None:
            self._reset.on()
            time.sleep(self._reset_s)
            self._reset.off()
            time.sleep(self._settle_s)
        high = self._high_scaling.to_cp(self._adc.read_volts(self._high_channel))
        low = self._low_scaling.to_cp(self._adc.read_volts(self._low_channel))
        return high, low

    def close(self) -> None:
        if self._reset is not None:
            self._reset.close()


class MinMaxSampling:
    """Development boards with only a scaled copy of the raw CP: `reads` reads at whatever phase they
    land (not synchronised to the PWM); the highest is the positive plateau, the lowest the negative.
    Needs a fast ADC (MCP3008). At low duty cycles a burst can miss the high phase; the classifier's
    2-sample confirmation absorbs a single miss, but this is no substitute for peak detectors."""

    def __init__(self, adc: Adc, *, channel: int, scaling: CpScaling, reads: int = MIN_MAX_READS):
        if reads < 2:
            raise ValueError(f"min/max sampling needs at least 2 reads, got {reads}")
        self._adc = adc
        self._channel = channel
        self._scaling = scaling
        self._reads = reads

    def sample(self) -> tuple[float, float]:
        volts = [self._scaling.to_cp(self._adc.read_volts(self._channel)) for _ in range(self._reads)]
        return max(volts), min(volts)

    def close(self) -> None:
        pass
