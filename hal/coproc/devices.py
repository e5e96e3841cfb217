"""HAL devices of one co-processor connector: thin views on the link's latest Status and command senders.

Reads never wait for the MCU: they return what the last Status said, or raise HardwareError when that
Status is missing or too old (CoprocessorLink.fresh_status). Commands never raise: they are sent at once
and re-sent by the link until the MCU's echo confirms them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hal.coproc.protocol import PP_FAULT_CODE, PP_NO_CABLE, CpCode, ErrorFlag, LockState
from hal.interfaces import (
    ConnectorLock,
    Contactor,
    ControlPilot,
    CpState,
    HardwareError,
    PilotMode,
    PilotOutput,
    PilotReading,
    ProximityPilot,
    ResidualCurrentMonitor,
)

if TYPE_CHECKING:
    from hal.coproc.link import CoprocessorLink


class _ConnectorDevice:
    def __init__(self, link: CoprocessorLink, connector_id: int):
        self._link = link
        self.connector_id = connector_id

    def _where(self) -> str:
        return f"{self._link.description}: connector {self.connector_id}"


class CoprocessorPilot(_ConnectorDevice, ControlPilot):
    def read(self) -> PilotReading:
        status = self._link.fresh_status(self.connector_id)
        high_v, low_v = status.cp_high_mv / 1000.0, status.cp_low_mv / 1000.0
        if status.cp_state is CpCode.INVALID or status.error_flags & ErrorFlag.CP_INVALID:
            raise HardwareError(
                f"{self._where()}: CP reads {high_v:.2f} V / {low_v:.2f} V, outside every state window"
            )
        return PilotReading(CpState(status.cp_state.name), high_v, low_v, status.diode_ok)

    def set_pwm(self, duty_percent: float) -> None:
        if isinstance(duty_percent, bool) or math.isnan(duty_percent) or not 0.0 <= duty_percent <= 100.0:
            raise ValueError(f"PWM duty must be between 0 and 100 %, got {duty_percent!r}")
        self._link.command_pilot(self.connector_id, PilotOutput(PilotMode.PWM, round(float(duty_percent), 2)))

    def set_x1(self) -> None:
        self._link.command_pilot(self.connector_id, PilotOutput(PilotMode.X1, 100.0))

    def set_f(self) -> None:
        self._link.command_pilot(self.connector_id, PilotOutput(PilotMode.F, 0.0))

    @property
    def output(self) -> PilotOutput:
        return self._link.commanded(self.connector_id).pilot


class CoprocessorProximity(_ConnectorDevice, ProximityPilot):
    def read_ampacity(self) -> float | None:
        code = self._link.fresh_status(self.connector_id).pp_ampacity_a
        if code == PP_FAULT_CODE:
            raise HardwareError(
                f"{self._where()}: PP fault (resistance below 75 Ohm or invalid cable coding)"
            )
        return None if code == PP_NO_CABLE else float(code)


class CoprocessorContactor(_ConnectorDevice, Contactor):
    """set_closed() is the "allow power" handshake: the MCU closes only when it also sees C/D and no fault."""

    def set_closed(self, closed: bool) -> None:
        self._link.command_allow_power(self.connector_id, bool(closed))

    @property
    def commanded_closed(self) -> bool:
        return self._link.commanded(self.connector_id).allow_power

    def feedback_closed(self) -> bool:
        return self._link.fresh_status(self.connector_id).relay_feedback

    def reset_fault(self) -> None:
        """Ask the MCU to clear a latched RELAY_FAULT (it does so only once the mirror contact agrees)."""
        self._link.reset_faults(self.connector_id, ErrorFlag.RELAY_FAULT)


class CoprocessorLock(_ConnectorDevice, ConnectorLock):
    def set_locked(self, locked: bool) -> None:
        self._link.command_lock(self.connector_id, bool(locked))

    def is_locked(self) -> bool:
        return self._link.fresh_status(self.connector_id).lock_state is LockState.LOCKED


class CoprocessorRcd(_ConnectorDevice, ResidualCurrentMonitor):
    def tripped(self) -> bool:
        return bool(self._link.fresh_status(self.connector_id).error_flags & ErrorFlag.RCD_TRIPPED)

    def reset(self) -> bool:
        """Sends ResetFaults; True when the RCD module's fault output is clear, so the latch will clear.

        The Status confirming it follows within milliseconds; tripped() reports the MCU's view until then.
        """
        flags = self._link.fresh_status(self.connector_id).error_flags
        self._link.reset_faults(self.connector_id, ErrorFlag.RCD_TRIPPED | ErrorFlag.RCD_SELFTEST_FAILED)
        return not flags & ErrorFlag.RCD_INPUT_ACTIVE

    def start_self_test(self) -> None:
        """Run the RCD self-test (relay open only); the result arrives as an event and a flag."""
        self._link.request_rcd_self_test(self.connector_id)


class CoprocessorConnector:
    """The HAL devices of one connector, all served by one CoprocessorLink."""

    def __init__(self, link: CoprocessorLink, connector_id: int):
        self.connector_id = connector_id
        self.pilot = CoprocessorPilot(link, connector_id)
        self.proximity = CoprocessorProximity(link, connector_id)
        self.contactor = CoprocessorContactor(link, connector_id)
        self.lock = CoprocessorLock(link, connector_id)
        self.rcd = CoprocessorRcd(link, connector_id)
