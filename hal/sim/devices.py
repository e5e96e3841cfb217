"""HAL device objects backed by the simulated board.

Each call first advances the simulation to the board's clock, so readings are always current without a
background task.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from hal.interfaces import (
    ConnectorLock,
    Contactor,
    ControlPilot,
    EnergyMeter,
    IndicatorState,
    MeterError,
    MeterReading,
    PilotMode,
    PilotOutput,
    PilotReading,
    ProximityPilot,
    ResidualCurrentMonitor,
    RfidReader,
    StatusIndicator,
)
from hal.sim.connector import F_OUTPUT, X1_OUTPUT, SimConnector

if TYPE_CHECKING:
    from hal.sim.board import SimBoard


class _SimDevice:
    def __init__(self, board: SimBoard, connector: SimConnector):
        self._board = board
        self._conn = connector

    def _now(self) -> SimConnector:
        self._board.advance()
        return self._conn


class SimControlPilot(_SimDevice, ControlPilot):
    def on_change(self, callback) -> None:
        self._board.add_change_listener(callback)  # plug, unplug, pinned states and faults

    def read(self) -> PilotReading:
        self._board.take_pilot_stall(self._conn.spec.id)
        return self._now().pilot_reading()

    def set_pwm(self, duty_percent: float) -> None:
        if isinstance(duty_percent, bool) or math.isnan(duty_percent) or not 0.0 <= duty_percent <= 100.0:
            raise ValueError(f"PWM duty must be between 0 and 100 %, got {duty_percent!r}")
        self._now().drive(PilotOutput(PilotMode.PWM, float(duty_percent)))

    def set_x1(self) -> None:
        self._now().drive(X1_OUTPUT)

    def set_f(self) -> None:
        self._now().drive(F_OUTPUT)

    @property
    def output(self) -> PilotOutput:
        return self._conn.output


class SimProximityPilot(_SimDevice, ProximityPilot):
    def read_ampacity(self) -> float | None:
        return self._now().pp_ampacity()


class SimContactor(_SimDevice, Contactor):
    def set_closed(self, closed: bool) -> None:
        conn = self._now()
        if conn.contactor_commanded != bool(closed):  # a bench mark (the same clock in every process)
            conn.marks.append([time.monotonic(), "contactor", bool(closed)])
        conn.contactor_commanded = bool(closed)

    @property
    def commanded_closed(self) -> bool:
        return self._conn.contactor_commanded

    def feedback_closed(self) -> bool:
        return self._now().contacts_closed()


class SimConnectorLock(_SimDevice, ConnectorLock):
    """Feedback follows the command at once, unless `sim.fault lock` jammed the actuator where it is."""

    def set_locked(self, locked: bool) -> None:
        self._now().command_lock(bool(locked))

    def is_locked(self) -> bool:
        return self._now().locked


class SimStatusIndicator(_SimDevice, StatusIndicator):
    """The status LEDs of a simulated outlet; what they show is in the sim snapshot (`indicator`)."""

    def indicate(self, state: IndicatorState) -> None:
        self._conn.indicator = IndicatorState(state).value

    @property
    def shown(self) -> IndicatorState:
        return IndicatorState(self._conn.indicator)


class SimResidualCurrentMonitor(_SimDevice, ResidualCurrentMonitor):
    def tripped(self) -> bool:
        return self._now().rcd_latched

    def reset(self) -> bool:
        conn = self._now()
        if "rcd" in conn.faults:
            return False  # the residual current is still there: the trip re-latches at once
        conn.rcd_latched = False
        self._board.state_changed()
        return True


class SimEnergyMeter(_SimDevice, EnergyMeter):
    async def read(self) -> MeterReading:
        conn = self._now()
        if "meter" in conn.faults:
            raise MeterError(f"sim meter of connector {conn.spec.id} not answering (simulated fault)")
        currents = conn.phase_currents()
        # a real meter keeps its register when the agent dies: what the agent has seen must be on record
        # before it sees it, or a kill -9 would roll the register back below a journaled value
        self._board.register_seen()
        return MeterReading(
            energy_wh=conn.energy_wh,
            power_w=sum(amps * conn.voltage_v for amps in currents),
            current_a=currents,
            voltage_v=(conn.voltage_v,) * conn.spec.phases,
            taken_at=conn.t,
        )


class SimRfidReader(RfidReader):
    """Cards swiped with SimBoard.swipe() come out of next_tag() in order.

    A deque plus per-call futures instead of asyncio.Queue, so swipes made before anyone waits are kept
    and the reader is not tied to the event loop that first used it (tests run one loop per test).
    swipe() must be called from the thread running the waiting loop.
    """

    def __init__(self) -> None:
        self._tags: deque[str] = deque()
        self._waiters: deque[asyncio.Future[str]] = deque()

    def present(self, tag: str) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(tag)
                return
        self._tags.append(tag)

    @property
    def pending(self) -> int:
        return len(self._tags)

    async def next_tag(self) -> str:
        if self._tags:
            return self._tags.popleft()
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._tags.appendleft(waiter.result())  # handed over just as we were cancelled: keep it
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
