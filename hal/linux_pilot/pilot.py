"""The "Linux PWM + ADC" control pilot: sysfs hardware PWM out, CP plateaus and PP sampled through an ADC.

A background task samples every `sample_period_s` (the blocking ADC work runs in a worker thread so the
event loop never waits on SPI/I2C) and feeds hal.pilot_math.PilotClassifier; read() returns its
confirmed state. Safety timing that Linux cannot guarantee (opening on C->B within 100 ms when the agent
hangs) belongs in hardware; see hardware-notes.md section 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hal.build import Lifecycle
from hal.interfaces import (
    ControlPilot,
    HardwareError,
    PilotMode,
    PilotOutput,
    PilotReading,
    ProximityPilot,
)
from hal.linux_pilot.adc import Adc
from hal.linux_pilot.sampling import CpSampling
from hal.linux_pilot.sysfs_pwm import SysfsPwm
from hal.pilot_math import PilotClassifier, PpDivider, invalid_fault_samples, pp_voltage_to_ampacity

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_PERIOD_S = 0.01
PP_MEDIAN_OF = 3  # the median of the last 3 PP samples rejects one bad read without blending plug-in steps
X1_OUTPUT = PilotOutput(PilotMode.X1, 100.0)
F_OUTPUT = PilotOutput(PilotMode.F, 0.0)


@dataclass(frozen=True)
class PpChannel:
    channel: int
    divider: PpDivider
    gain: float = 1.0  # ADC volts -> PP node volts (an input divider in front of the ADC)


class LinuxPilot(ControlPilot, ProximityPilot, Lifecycle):
    """Output starts as X1 (+12 V, no current offered), the state the session controller assumes."""

    def __init__(
        self,
        pwm: SysfsPwm,
        adc: Adc,
        cp_sampling: CpSampling,
        *,
        pp: PpChannel | None = None,
        sample_period_s: float = DEFAULT_SAMPLE_PERIOD_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not 0 < sample_period_s <= 1:
            raise ValueError(f"sample_period_s must be in (0, 1] s, got {sample_period_s}")
        self._pwm = pwm
        self._adc = adc
        self._cp_sampling = cp_sampling
        self._pp = pp
        self.sample_period_s = sample_period_s
        self._clock = clock
        self._classifier = PilotClassifier(invalid_fault_samples=invalid_fault_samples(sample_period_s))
        # a reading older than this means the sampler is stuck; generous, so a busy Pi is no false fault
        self.stale_after_s = max(0.25, 10 * sample_period_s)
        self._output = X1_OUTPUT
        self._output_changes = 0
        self._pp_volts: deque[float] = deque(maxlen=PP_MEDIAN_OF)
        self._last_sample_at = -math.inf
        self._error: str | None = None
        self._hardware_lock = threading.Lock()  # one ADC transfer at a time; close() waits for it
        self._pwm_open = False
        self._closed = False
        self._task: asyncio.Task | None = None
        self._first_state = asyncio.Event()

    # ---- ControlPilot --------------------------------------------------------------------------------

    def read(self) -> PilotReading:
        if self._error is not None:
            raise HardwareError(f"CP sampling failed: {self._error}")
        reading = self._classifier.reading
        if reading is None:
            raise HardwareError("no CP state confirmed yet (has the pilot been started?)")
        age = self._clock() - self._last_sample_at
        if age > self.stale_after_s:
            raise HardwareError(f"CP not sampled for {age:.3f} s (limit {self.stale_after_s:g} s)")
        return reading

    def set_pwm(self, duty_percent: float) -> None:
        if isinstance(duty_percent, bool) or math.isnan(duty_percent) or not 0.0 <= duty_percent <= 100.0:
            raise ValueError(f"PWM duty must be between 0 and 100 %, got {duty_percent!r}")
        self._drive(PilotOutput(PilotMode.PWM, float(duty_percent)))

    def set_x1(self) -> None:
        self._drive(X1_OUTPUT)

    def set_f(self) -> None:
        self._drive(F_OUTPUT)

    @property
    def output(self) -> PilotOutput:
        return self._output

    def _drive(self, output: PilotOutput) -> None:
        if self._pwm_open:
            self._pwm.set_duty_percent(output.duty_percent)
        self._output = output  # before start() it is applied when the PWM is opened
        self._output_changes += 1

    # ---- ProximityPilot ------------------------------------------------------------------------------

    @property
    def has_proximity(self) -> bool:
        return self._pp is not None

    def read_ampacity(self) -> float | None:
        if self._pp is None:
            raise HardwareError("this pilot has no PP channel configured")
        if not self._pp_volts:
            raise HardwareError("PP not sampled yet (has the pilot been started?)")
        volts = statistics.median(self._pp_volts)
        try:
            return pp_voltage_to_ampacity(volts, self._pp.divider)
        except ValueError as exc:
            raise HardwareError(f"PP at {volts:.3f} V: {exc}") from exc

    # ---- sampling ------------------------------------------------------------------------------------

    async def sample(self) -> PilotReading | None:
        """Take one sample now and classify it; the background task calls this every sample period."""
        changes_before = self._output_changes
        duty = self._output.duty_percent
        try:
            high, low, pp_volts = await asyncio.to_thread(self._read_hardware)
        except HardwareError as exc:
            self._record_error(str(exc))
            raise
        if self._output_changes != changes_before:
            return self._classifier.reading  # the output changed mid-sample: the plateaus may be mixed
        self._error = None
        self._last_sample_at = self._clock()
        if pp_volts is not None:
            self._pp_volts.append(pp_volts)
        reading = self._classifier.update(high, low, duty)
        if reading is not None:
            self._first_state.set()
        return reading

    def _read_hardware(self) -> tuple[float, float, float | None]:
        with self._hardware_lock:
            if self._closed:
                raise HardwareError("the pilot is closed")
            high, low = self._cp_sampling.sample()
            pp_volts = None
            if self._pp is not None:
                pp_volts = self._adc.read_volts(self._pp.channel) * self._pp.gain
            return high, low, pp_volts

    def _record_error(self, message: str) -> None:
        if message != self._error:
            log.error("control pilot: %s", message)
        self._error = message

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await self.sample()
            except HardwareError:
                pass  # recorded; read() reports it until a sample succeeds
            except Exception as exc:  # a bug must not silently stop the sampling: read() reports it
                self._record_error(f"{type(exc).__name__}: {exc}")
            next_at += self.sample_period_s
            now = loop.time()
            if next_at < now:  # fell behind (a busy system): sample now, do not try to catch up
                next_at = now
            await asyncio.sleep(next_at - now)

    # ---- Lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the PWM at the current output, start sampling, and wait (briefly) for the first state."""
        if self._task is not None:
            return
        await asyncio.to_thread(self._pwm.open, self._output.duty_percent)
        self._pwm_open = True
        self._task = asyncio.create_task(self._run(), name="linux-pilot-sampler")
        timeout_s = 1.0 + 2 * self._classifier.invalid_fault_samples * self.sample_period_s
        try:
            await asyncio.wait_for(self._first_state.wait(), timeout_s)
        except TimeoutError:
            log.error("control pilot: no CP state within %.1f s; read() reports the error", timeout_s)

    async def close(self) -> None:
        """Stop sampling and leave the CP at X1 (+12 V: no current offered) for whatever runs next."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pwm_open:
            try:
                self._pwm.set_duty_percent(X1_OUTPUT.duty_percent)
            except HardwareError as exc:
                log.error("control pilot: cannot leave the CP at X1: %s", exc)
            self._pwm_open = False
        await asyncio.to_thread(self._release_hardware)

    def _release_hardware(self) -> None:
        with self._hardware_lock:  # waits for a transfer still running on the sampling thread
            if self._closed:
                return
            self._closed = True
            self._cp_sampling.close()
            self._adc.close()
