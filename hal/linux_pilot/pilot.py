"""The "Linux PWM + ADC" control pilot: sysfs hardware PWM out, CP plateaus and PP sampled through an ADC.

The pilot has a thread of its own (SamplerThread): it samples every `sample_period_s`, feeds
hal.pilot_math.PilotClassifier, and runs every other blocking call of the pilot (opening the PWM, releasing
the ADC). Nothing else shares it: not the default asyncio executor, where a download trickling one byte at
a time holds workers for hours, and not the event loop. read() returns the classifier's confirmed state.

When the confirmed CP state or the diode result changes (or sampling starts or stops failing), the thread
calls the on_change() listeners at once, so the control loop reacts within one sample instead of waiting
for its next period. Safety timing that Linux cannot guarantee (opening on C->B within 100 ms when the
agent hangs) belongs in hardware; see hardware-notes.md section 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import queue
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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

_STOP = object()  # SamplerThread queue markers
_SAMPLE_NOW = object()


class SamplerThread:
    """One dedicated thread: runs submitted blocking calls one at a time and, once `start_periodic()` was
    called, `tick()` every `period_s` in between (late ticks are not caught up: a busy system samples less
    often, never in bursts)."""

    def __init__(self, name: str, period_s: float, tick: Callable[[], None]):
        self._period_s = period_s
        self._tick = tick
        self._periodic = False
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self._thread.name

    def submit(self, call: Callable[[], Any]) -> asyncio.Future:
        """Run `call` on this thread; await the result in the event loop."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((call, future))
        return asyncio.wrap_future(future)

    def start_periodic(self) -> None:
        self._periodic = True
        self._jobs.put(_SAMPLE_NOW)

    def stop_periodic(self) -> None:
        self._periodic = False

    def stop(self) -> None:
        """Finish the calls already submitted, then end the thread."""
        self._periodic = False
        self._jobs.put(_STOP)

    def _run(self) -> None:
        next_at = time.monotonic()
        while True:
            timeout = None
            if self._periodic:
                now = time.monotonic()
                if now >= next_at:
                    self._tick()
                    next_at += self._period_s
                    now = time.monotonic()
                    next_at = max(next_at, now)  # fell behind: sample now, do not try to catch up
                timeout = next_at - now
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                continue
            if job is _STOP:
                return
            if job is _SAMPLE_NOW:
                next_at = time.monotonic()
                continue
            call, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # handed to the awaiting coroutine
                    future.set_exception(exc)


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
        # written by the sampler thread, read by the event loop: replaced whole, never changed in place
        self._pp_volts: tuple[float, ...] = ()
        self._last_sample_at = -math.inf
        self._error: str | None = None
        self._hardware_lock = threading.Lock()  # one ADC transfer at a time; close() waits for it
        self._pwm_open = False
        self._closed = False
        self._running = False
        self._sampler: SamplerThread | None = None  # the pilot's own thread, made on first use
        self._listeners: list[Callable[[], None]] = []
        self._reported: tuple = (None, None, False)  # (state, diode_ok, failing) as last told to the listeners

    # ---- ControlPilot --------------------------------------------------------------------------------

    def on_change(self, callback: Callable[[], None]) -> None:
        """`callback` is called from the sampler thread when the confirmed CP state or the diode result
        changes, or sampling starts or stops failing."""
        self._listeners.append(callback)

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
        volts = statistics.median(self._pp_volts)  # a tuple: the sampler replaces it, never edits it
        try:
            return pp_voltage_to_ampacity(volts, self._pp.divider)
        except ValueError as exc:
            raise HardwareError(f"PP at {volts:.3f} V: {exc}") from exc

    # ---- sampling ------------------------------------------------------------------------------------

    async def sample(self) -> PilotReading | None:
        """Take one sample now and classify it, on the pilot's own thread (which also samples every period
        once started)."""
        if self._closed:
            raise HardwareError("the pilot is closed")
        return await self._sampler_thread().submit(self._sample_and_classify)

    def _sampler_thread(self) -> SamplerThread:
        if self._sampler is None:
            self._sampler = SamplerThread(f"linux-pilot-{self._pwm.chip_dir.name}-pwm{self._pwm.channel}",
                                          self.sample_period_s, self._periodic_sample)
        return self._sampler

    def _sample_and_classify(self) -> PilotReading | None:
        """One sample (runs on the sampler thread)."""
        changes_before = self._output_changes
        duty = self._output.duty_percent
        try:
            high, low, pp_volts = self._read_hardware()
        except HardwareError as exc:
            self._record_error(str(exc))
            self._tell_listeners_if_changed()
            raise
        if self._output_changes != changes_before:
            return self._classifier.reading  # the output changed mid-sample: the plateaus may be mixed
        self._error = None
        self._last_sample_at = self._clock()
        if pp_volts is not None:
            self._pp_volts = (*self._pp_volts[1 - PP_MEDIAN_OF :], pp_volts)
        reading = self._classifier.update(high, low, duty)
        self._tell_listeners_if_changed()
        return reading

    def _periodic_sample(self) -> None:
        try:
            self._sample_and_classify()
        except HardwareError:
            pass  # recorded; read() reports it until a sample succeeds
        except Exception as exc:  # a bug must not silently stop the sampling: read() reports it
            self._record_error(f"{type(exc).__name__}: {exc}")
            self._tell_listeners_if_changed()

    def _tell_listeners_if_changed(self) -> None:
        reading = self._classifier.reading
        failing = self._error is not None
        seen = (None, None, failing) if reading is None else (reading.state, reading.diode_ok, failing)
        if seen == self._reported:
            return
        self._reported = seen
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # a listener's bug must not stop the sampling
                log.exception("control pilot: change listener failed")

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

    # ---- Lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the PWM at the current output, start sampling, and wait (briefly) for the first state."""
        if self._running:
            return
        sampler = self._sampler_thread()
        duty = self._output.duty_percent
        await sampler.submit(lambda: self._pwm.open(duty))
        self._pwm_open = True
        if self._output.duty_percent != duty:  # commanded while the PWM was being opened
            self._pwm.set_duty_percent(self._output.duty_percent)
        self._running = True
        loop = asyncio.get_running_loop()
        first_state = asyncio.Event()

        def confirmed() -> None:
            if self._classifier.reading is not None:
                loop.call_soon_threadsafe(first_state.set)

        self._listeners.append(confirmed)
        try:
            sampler.start_periodic()
            if self._classifier.reading is None:
                timeout_s = 1.0 + 2 * self._classifier.invalid_fault_samples * self.sample_period_s
                try:
                    await asyncio.wait_for(first_state.wait(), timeout_s)
                except TimeoutError:
                    log.error("control pilot: no CP state within %.1f s; read() reports the error", timeout_s)
        finally:
            self._listeners.remove(confirmed)

    async def close(self) -> None:
        """Stop sampling and leave the CP at X1 (+12 V: no current offered) for whatever runs next."""
        self._running = False
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop_periodic()
        if self._pwm_open:
            try:
                self._pwm.set_duty_percent(X1_OUTPUT.duty_percent)
            except HardwareError as exc:
                log.error("control pilot: cannot leave the CP at X1: %s", exc)
            self._pwm_open = False
        if sampler is None:
            self._release_hardware()  # no thread ever ran: nothing to wait for
            return
        try:
            await sampler.submit(self._release_hardware)  # after a sample still running on it
        finally:
            sampler.stop()

    def _release_hardware(self) -> None:
        with self._hardware_lock:  # waits for a transfer still running on the sampling thread
            if self._closed:
                return
            self._closed = True
            self._cp_sampling.close()
            self._adc.close()
