"""Everything the CSMS may ask of the station (agent.station.csms_link.CsmsPort), answered from the pieces of
the station: the controllers (through the control channel), the journal, the authorizer, reservations and
charging limits. The protocol adapter calls only these methods; it never sees a device."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from agent.core import controller as ctl
from agent.core.clock import utc_now
from agent.ocpp.security import SecurityManager
from agent.ocpp.v16.config import OcppConfiguration
from agent.station.authorizer import Authorizer
from agent.station.charging_limits import ChargingLimits
from agent.station.connector import ConnectorRuntime
from agent.station.csms_link import CsmsLink, LocalListEntry, ReservationRequest, StatusReport
from agent.station.firmware import FirmwareManager
from agent.station.journal import Delivery, Journal, QueuedMessage
from agent.station.meter_sampling import MeterSampling
from agent.station.reservations import Reservations
from agent.station.settings import StationSettings

log = logging.getLogger("evse.station")


class StationAvailability:
    """Operative or Inoperative, as the CSMS set it per connector and for the station (kept in the journal,
    it survives reboots: OCTT TC_034), and the firmware hold on top of it."""
    log: logging.Logger | logging.LoggerAdapter = log  # the station hands it its own (agent.logs)


    def __init__(self, connectors: dict[int, ConnectorRuntime], journal: Journal,
                 dispatch: Callable[[ConnectorRuntime, ctl.Event], None], csms: Callable[[], CsmsLink]):
        self._connectors = connectors
        self._journal = journal
        self._dispatch = dispatch
        self._csms = csms
        self.station_operative = journal.settings("availability.").get("0", "Operative") == "Operative"

    def _operative(self, rt: ConnectorRuntime, availability: dict[str, str]) -> bool:
        return self.station_operative and availability.get(str(rt.id), "Operative") == "Operative"

    def restore(self) -> None:
        """At start: the connectors the CSMS made Inoperative are again."""
        availability = self._journal.settings("availability.")
        for rt in self._connectors.values():
            if not self._operative(rt, availability):
                self._dispatch(rt, ctl.AvailabilityChanged(False))

    def change(self, connector_id: int, operative: bool) -> str:
        targets = list(self._connectors.values()) if connector_id == 0 else [self._connectors[connector_id]]
        value = "Operative" if operative else "Inoperative"
        self._journal.set_setting(f"availability.{connector_id}", value)  # survives reboots (OCTT TC_034)
        if connector_id == 0:
            for rt in targets:
                self._journal.set_setting(f"availability.{rt.id}", value)
            if self.station_operative != operative:
                self.station_operative = operative
                self._csms().send_status(0, ctl.ConnectorStatus.AVAILABLE if operative
                                         else ctl.ConnectorStatus.UNAVAILABLE)
        scheduled = False
        for rt in targets:
            # the controller schedules Inoperative while a transaction runs (the replica tells it now)
            scheduled |= not operative and rt.controller.transaction_active
            self._dispatch(rt, ctl.AvailabilityChanged(operative))
        return "Scheduled" if scheduled else "Accepted"

    def hold_for_firmware(self, hold: bool) -> None:
        """While a firmware update waits to install: no new session (idle connectors Unavailable, busy ones
        once their transaction ends); afterwards the availability the CSMS set. Not persisted: a restart
        ends the hold."""
        availability = self._journal.settings("availability.")
        for rt in self._connectors.values():
            self._dispatch(rt, ctl.AvailabilityChanged(not hold and self._operative(rt, availability)))


class CsmsFacade:
    log: logging.Logger | logging.LoggerAdapter = log  # the station hands it its own (agent.logs)

    def __init__(self, *, connectors: dict[int, ConnectorRuntime], journal: Journal,
                 configuration: OcppConfiguration, settings: StationSettings, security: SecurityManager,
                 firmware: FirmwareManager,
                 dispatch: Callable[[ConnectorRuntime, ctl.Event], None], availability: StationAvailability,
                 authorizer: Authorizer, metering: MeterSampling, reservations: Reservations,
                 charging_limits: ChargingLimits, journal_failed: Callable[[Exception], None],
                 reset: Callable[[str], None], closing: Callable[[], bool],
                 reservations_enabled: Callable[[], bool], wall_clock: Callable[[], datetime] = utc_now):
        """`reset(kind)`: the station restarts (Hard/Soft); `closing`: SIGTERM, no new session starts;
        `reservations_enabled`: [charging] reservations of the config in force."""
        self._connectors = connectors
        self._journal = journal
        self.configuration = configuration  # the 1.6 adapter's GetConfiguration / ChangeConfiguration
        self._settings = settings
        self.security = security
        self.firmware = firmware
        self.wall_clock = wall_clock
        self._dispatch = dispatch
        self._availability = availability
        self._authorizer = authorizer
        self._metering = metering
        self._reservations = reservations
        self._charging_limits = charging_limits
        self.journal_failed = journal_failed
        self.reset = reset
        self._closing = closing
        self._reservations_enabled = reservations_enabled

    @property
    def connector_ids(self) -> list[int]:
        return list(self._connectors)

    def statuses(self) -> list[StatusReport]:
        operative = self._availability.station_operative
        result = [StatusReport(0, ctl.ConnectorStatus.AVAILABLE if operative else ctl.ConnectorStatus.UNAVAILABLE)]
        for rt in self._connectors.values():
            view = rt.controller.view()
            # the status the controller derived, with its most severe fault
            result.append(StatusReport(rt.id, view.status, view.status_fault))
        return result

    def meter_values_now(self, connector_id: int) -> list[dict]:
        return self._metering.meter_values_now(self._connectors[connector_id])

    def remote_start(self, connector_id: int | None, id_token: str, charging_profile: dict | None = None) -> bool:
        if self._closing():
            return False
        chosen: ConnectorRuntime | None
        if connector_id is None:
            candidates = [rt for rt in self._connectors.values() if rt.controller.can_accept_remote_start(id_token)]
            # the connector reserved for this id first; a connector reserved for another id last
            reserved = [rt for rt in candidates if rt.controller.reservation is not None
                        and rt.controller.reservation.id_token.casefold() == id_token.casefold()]
            unreserved = [rt for rt in candidates if rt.controller.reservation is None]
            plugged = [rt for rt in unreserved if rt.controller.plugged]
            chosen = next(iter(reserved or plugged or unreserved or candidates), None)
        else:
            chosen = self._connectors.get(connector_id)
        if chosen is None or not chosen.controller.can_accept_remote_start(id_token):
            return False
        if charging_profile is not None and not self._charging_limits.accept_remote_start_profile(
                chosen, charging_profile):
            return False
        self._dispatch(chosen, ctl.RemoteStart(id_token))
        return True

    def remote_stop(self, transaction_id: int) -> bool:
        local_id = self._journal.local_id_for_csms_id(transaction_id)
        for rt in self._connectors.values():
            if local_id is not None and rt.local_tx == local_id and rt.controller.transaction_active:
                self._dispatch(rt, ctl.StopRequested(ctl.StopReason.REMOTE))
                return True
        return False

    def change_availability(self, connector_id: int, operative: bool) -> str:
        return self._availability.change(connector_id, operative)

    async def unlock_connector(self, connector_id: int) -> str:
        """UnlockConnector (§5.18): the controller stops a running transaction (UnlockCommand), releases a
        held cable and commands the lock open; Unlocked once the lock's feedback reads open, UnlockFailed if
        it does not within the lock deadline (the controller then also reports ConnectorLockFailure)."""
        rt = self._connectors[connector_id]
        if not rt.hw.has_lock:
            return "NotSupported"
        self._dispatch(rt, ctl.UnlockRequested())
        loop = asyncio.get_running_loop()  # a real wait for the actuator: the event loop's clock
        # the lock's feedback as the control loop reads it (a lock that cannot be read is a device fault); the
        # replica follows a moment later than the control loop: its deadline, and a step's time
        deadline = loop.time() + rt.controller.settings.lock_timeout_s + 0.1
        while True:
            c = rt.controller
            if not c.lock_feedback and ctl.Fault.DEVICE not in c.faults and not c.view().lock_commanded:
                self.log.info("connector %d: unlocked by the CSMS", rt.id)
                return "Unlocked"
            if loop.time() >= deadline:
                self.log.warning("connector %d: unlock failed: the lock still reads locked", rt.id)
                return "UnlockFailed"
            await asyncio.sleep(0.02)

    def transaction_message_delivered(self, message: QueuedMessage, delivery: Delivery) -> None:
        token = delivery.token
        if token is not None and delivery.id_token:
            self._authorizer.remember(delivery.id_token, token)  # every answer about a token updates the cache
        if not delivery.started:
            return
        for rt in self._connectors.values():
            if rt.local_tx == message.local_tx:
                accepted = token is not None and token.accepted
                if not accepted:
                    self.log.warning("connector %d: CSMS refused id %s at the transaction's start (%s)",
                                     rt.id, delivery.id_token, token.status.value if token else None)
                self._dispatch(rt, ctl.TransactionConfirmed(accepted, token.parent_id_token if token else None))

    def clear_cache(self) -> str:
        return self._authorizer.clear_cache()

    def local_list_version(self) -> int:
        return self._authorizer.local_list_version()

    def send_local_list(self, list_version: int, update_type: str, entries: list[LocalListEntry]) -> str:
        return self._authorizer.send_local_list(list_version, update_type, entries)

    # ---- Reservation (agent.station.reservations) and Smart Charging (agent.station.charging_limits) ----

    def reserve_now(self, request: ReservationRequest) -> str:
        if self._closing() or not self._reservations_enabled():
            return "Rejected"  # configured not to accept reservations (OCTT TC_048_4)
        if request.connector_id == 0 and not self._settings.reserve_any_connector:
            return "Rejected"  # TC_050_4
        return self._reservations.reserve(request.connector_id, request.expiry_date, request.id_token,
                                          request.reservation_id, request.parent_id_token)

    def cancel_reservation(self, reservation_id: int) -> str:
        return self._reservations.cancel(reservation_id)

    def set_charging_profile(self, connector_id: int, profile: dict) -> str:
        return self._charging_limits.set_profile(connector_id, profile)

    def clear_charging_profile(self, profile_id: int | None, connector_id: int | None, purpose: str | None,
                               stack_level: int | None) -> str:
        return self._charging_limits.clear(profile_id, connector_id, purpose, stack_level)

    def composite_schedule(self, connector_id: int, duration: int, rate_unit: str | None) -> dict | None:
        return self._charging_limits.composite_schedule(connector_id, duration, rate_unit)
