"""The technician's view of the station (`evse status`, the diagnostics archive): one dict, from the public
state of the station's pieces."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.ocpp.v16.vocabulary import connector_status, error_codes
from agent.station.meter_sampling import MeterSampling

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.ocpp.security import SecurityManager
    from agent.station.charging_limits import ChargingLimits
    from agent.station.connector import ConnectorRuntime
    from agent.station.control_channel import ControlChannel
    from agent.station.csms_facade import StationAvailability
    from agent.station.csms_link import CsmsLink
    from agent.station.journal import Journal
    from agent.station.recorder import TransactionRecorder
    from agent.station.reservations import Reservations


class StatusView:
    def __init__(self, *, config: Callable[[], AgentConfig], connectors: dict[int, ConnectorRuntime],
                 journal: Journal, channel: ControlChannel, recorder: TransactionRecorder,
                 availability: StationAvailability, reservations: Reservations, charging_limits: ChargingLimits,
                 security: SecurityManager, csms: Callable[[], CsmsLink], firmware_status: Callable[[], dict]):
        """`firmware_status`: of the firmware manager, which is built after this view (its diagnostics hold it)."""
        self._config = config
        self._connectors = connectors
        self._journal = journal
        self._channel = channel
        self._recorder = recorder
        self._availability = availability
        self._reservations = reservations
        self._charging_limits = charging_limits
        self._security = security
        self._csms = csms
        self._firmware_status = firmware_status

    def connector(self, rt: ConnectorRuntime) -> dict:
        view = rt.controller.view()
        record = self._journal.transaction(rt.local_tx) if rt.local_tx is not None else None
        reading = rt.last_reading
        return {
            "id": rt.id,
            "cp_state": view.cp_state.value,
            "pilot_mode": view.pilot_mode.value,
            "pwm_duty": view.duty_percent,
            "offered_current_a": view.offered_current_a,
            "contactor_closed": view.contactor_closed,
            "contactor_feedback": view.contactor_feedback,
            # the technician sees what the CSMS is told (agent.ocpp.v16.vocabulary); `faults` are the kinds
            "status": connector_status(view.status),
            "error_code": error_codes(view.status_fault)[0],
            "faults": list(view.faults),
            # until its StopTransaction is in the journal, the transaction is not over
            "transaction_active": view.transaction_active or rt.local_tx is not None,
            "transaction_id": record.csms_tx_number if record else None,
            "id_tag": view.id_token,
            "reservation": self._reservations.status(view.reservation),
            "energy_wh": reading.energy_wh if reading else None,
            "power_w": reading.power_w if reading else None,
            "session_energy_wh": (reading.energy_wh - record.meter_start) if reading and record else None,
            "meter_ok": MeterSampling.meter_ok(rt),
            "charging_limit_a": rt.controller.charging_limit_a,  # Smart Charging; None: no limit
            "lock": None if not rt.hw.has_lock else {
                "commanded": view.lock_commanded, "locked": view.lock_feedback,
                "held_for": view.lock_held_for},
            "indicator": rt.indicator if rt.hw.has_indicator else None,
        }

    def status(self) -> dict:
        csms = self._csms()
        control_lost = self._channel.control_lost
        return {
            "station": {"id": self._config().station.id, "pid": os.getpid(),
                        "control_pid": getattr(self._channel.link, "pid", None),
                        "operative": self._availability.station_operative,
                        "control_loop": "lost: " + control_lost if control_lost else "running"},
            "ocpp": {"connected": csms.connected,
                     "registration": csms.registration,
                     "url": self._security.endpoint,
                     "security_profile": self._security.profile,
                     "last_error": csms.last_error},
            "journal": {"pending": self._journal.pending_count(), "path": str(self._journal.path),
                        "dropped": csms.dropped_messages,
                        "dropped_for_space": self._journal.dropped_for_space,
                        "error": self._recorder.storage_error},
            "firmware": self._firmware_status(),
            "smart_charging": self._charging_limits.status(),
            "connectors": [self.connector(rt) for rt in self._connectors.values()],
        }
