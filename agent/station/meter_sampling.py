"""Meter sampling: each connector's meter is polled through the control loop; consecutive failed reads fault
the connector (one glitch does not), periodic and clock-aligned samples of a transaction are queued for the
transaction recorder (agent.station.recorder), clock-aligned samples outside one go to the CSMS directly."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.control import channel
from agent.control.link import ControlLink, ControlLost
from agent.core import controller as ctl
from agent.core.clock import utc_now
from agent.ocpp.v16.meter_values import meter_value, ocpp_timestamp
from agent.station.connector import ConnectorRuntime, TransactionOp
from agent.station.csms_link import CsmsLink
from agent.station.settings import StationSettings
from hal.interfaces import MeterReading

log = logging.getLogger("evse.station")

METER_FAILURES_FOR_FAULT = 3  # consecutive failed polls before a meter counts as dead (one glitch is not)


class MeterSampling:
    log: logging.Logger | logging.LoggerAdapter = log  # the station hands it its own (agent.logs)

    def __init__(self, link: ControlLink, settings: StationSettings,
                 dispatch: Callable[[ConnectorRuntime, ctl.Event], None], csms: Callable[[], CsmsLink],
                 poll_s: Callable[[], float], clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = utc_now):
        """`poll_s`: the meter poll period of the config in force (a SIGHUP may change it)."""
        self._link = link
        self._settings = settings
        self._dispatch = dispatch
        self._csms = csms
        self._poll_s = poll_s
        self._clock = clock
        self._wall_clock = wall_clock

    @staticmethod
    def meter_ok(rt: ConnectorRuntime) -> bool:
        return rt.meter_answered and rt.meter_failures < METER_FAILURES_FOR_FAULT

    async def read_meter(self, rt: ConnectorRuntime) -> MeterReading | None:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
            # arrives as the read completes, and this loop would then outlive the station's shutdown
            reading = await self._link.read_meter(rt.id)
        except (channel.RequestFailed, ControlLost, TimeoutError) as exc:
            rt.meter_failures += 1
            if rt.meter_failures == METER_FAILURES_FOR_FAULT:
                self.log.error("connector %d: energy meter failed %d times: %s", rt.id, rt.meter_failures, exc)
                self._dispatch(rt, ctl.FaultChanged(ctl.Fault.METER, True))
            return None
        if rt.meter_failures >= METER_FAILURES_FOR_FAULT:
            self.log.info("connector %d: energy meter answers again", rt.id)
            self._dispatch(rt, ctl.FaultChanged(ctl.Fault.METER, False))
        rt.meter_failures = 0
        rt.meter_answered = True
        rt.last_reading = reading
        return reading

    async def run(self, rt: ConnectorRuntime) -> None:
        while True:
            reading = await self.read_meter(rt)
            interval = self._settings.meter_sample_interval_s
            now = self._clock()
            if reading and rt.local_tx is not None and interval > 0 and rt.next_sample_at is not None:
                if now >= rt.next_sample_at:
                    rt.ops.put_nowait(TransactionOp("sample", reading=reading))
                    rt.next_sample_at = max(rt.next_sample_at + interval, now)
            if reading:
                self.clock_aligned_sample(rt, reading)
            await asyncio.sleep(self._poll_s())

    def clock_aligned_sample(self, rt: ConnectorRuntime, reading: MeterReading) -> None:
        """Clock-aligned samples: one at every multiple of the interval since midnight UTC (§3.16.2).
        During a transaction it is transaction-related and goes through the journal; otherwise it is
        sent as a plain MeterValues without transactionId."""
        interval = self._settings.clock_aligned_interval_s
        if interval <= 0:
            rt.next_aligned_at = None
            return
        now = self._wall_clock().timestamp()
        if rt.next_aligned_at is None:
            rt.next_aligned_at = (now // interval + 1) * interval
            return
        if now < rt.next_aligned_at:
            return
        boundary = rt.next_aligned_at
        rt.next_aligned_at = (now // interval + 1) * interval
        timestamp = ocpp_timestamp(datetime.fromtimestamp(boundary, UTC))
        if rt.local_tx is not None:
            rt.ops.put_nowait(TransactionOp("sample", reading=reading, context="Sample.Clock", timestamp=timestamp))
        else:
            value = meter_value(reading, self._settings.aligned_measurands, "Sample.Clock",
                                timestamp, rt.controller.offered_current_a())
            self._csms().send_meter_values(rt.id, [value])

    def meter_values_now(self, rt: ConnectorRuntime) -> list[dict]:
        """TriggerMessage(MeterValues): the last reading, now."""
        if rt.last_reading is None:
            return []
        return [meter_value(rt.last_reading, self._settings.sampled_measurands, "Trigger",
                            ocpp_timestamp(self._wall_clock()), rt.controller.offered_current_a())]
