"""OCPP 1.6 Reservation profile handlers: ReserveNow, CancelReservation.

A mixin of agent.ocpp.v16.client._ChargePoint (the `ocpp` library finds @on handlers on any base class). The
station decides (agent.station.csms_facade.CsmsFacade.reserve_now / cancel_reservation, with the session controllers
holding the reservations, agent.core.controller); this module only checks what it can tell from the request
itself and never touches hardware. The Reserved StatusNotification follows the answer: the controller's
status change is queued behind the CALLRESULT this handler returns.
"""

from __future__ import annotations

from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from agent.ocpp.v16.mixin_base import ChargePointMixin
from agent.station.csms_link import ReservationRequest


class ReservationHandlers(ChargePointMixin):
    """Mixin: ReserveNow, CancelReservation (OCPP 1.6 §5.13, §5.3)."""

    @on(Action.reserve_now)
    def on_reserve_now(self, connector_id: int, expiry_date: str, id_tag: str, reservation_id: int,
                       parent_id_tag: str | None = None, **_):
        if self._client.registration != "Accepted" or not (connector_id == 0 or self._known_connector(connector_id)):
            return call_result.ReserveNow(status="Rejected")
        status = self._station.reserve_now(
            ReservationRequest(connector_id, expiry_date, id_tag, reservation_id, parent_id_tag))
        return call_result.ReserveNow(status=status)

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int, **_):
        status = self._station.cancel_reservation(reservation_id)
        return call_result.CancelReservation(status=status)
