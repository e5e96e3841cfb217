"""Reservations in the pure session controller (OCPP 1.6 §5.13), driven with an injected clock."""

from __future__ import annotations

from agent.core.controller import (
    AuthorizationResult,
    AvailabilityChanged,
    BeginTransaction,
    ConnectorController,
    ConnectorStatus,
    Fault,
    FaultChanged,
    Notice,
    PilotChanged,
    RemoteStart,
    RequestAuthorization,
    ReservationCancelled,
    ReservationEnded,
    ReservationMade,
    SessionSettings,
    StatusChanged,
    Tick,
    TokenPresented,
    reserve_any_connector,
    route_id_token,
    station_reservation_used,
)
from hal.interfaces import CpState

TAG = "04AABBCC"
OTHER = "04DDEEFF"


def controller(**settings) -> ConnectorController:
    return ConnectorController(settings=SessionSettings(**{"min_close_interval_s": 0.0, **settings}))


def reserve(c: ConnectorController, now: float = 0.0, *, reservation_id: int = 7, tag: str = TAG,
            parent: str | None = None, expires_at: float = 100.0, any_connector: bool = False) -> list:
    assert c.reservation_answer(reservation_id) == "Accepted"
    return c.handle(ReservationMade(reservation_id, tag, parent, expires_at, any_connector), now)


def statuses(commands) -> list[ConnectorStatus]:
    return [c.status for c in commands if isinstance(c, StatusChanged)]


def of(kind, commands) -> list:
    return [c for c in commands if isinstance(c, kind)]


def test_a_reservation_makes_the_connector_reserved():
    c = controller()
    c.handle(Tick(), 0.0)
    assert statuses(reserve(c)) == [ConnectorStatus.RESERVED]
    assert c.view().status is ConnectorStatus.RESERVED
    assert c.view().reservation.reservation_id == 7


def test_expiry_to_the_millisecond_returns_the_connector_to_available():
    """TC_047: not used before expiryDate: the reservation ends and the connector is Available again."""
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c, expires_at=30.0)
    assert c.handle(Tick(), 29.999) == []
    out = c.handle(Tick(), 30.0)
    assert of(ReservationEnded, out) == [ReservationEnded(7, "expired")]
    assert statuses(out) == [ConnectorStatus.AVAILABLE]
    assert c.reservation is None


def test_the_reserved_card_starts_and_the_start_carries_the_reservation_id():
    """TC_046_1: swipe the reserved card (Preparing), plug in: StartTransaction with the reservationId."""
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c)
    assert of(RequestAuthorization, c.handle(TokenPresented(TAG), 1.0)) == [RequestAuthorization(TAG)]
    out = c.handle(AuthorizationResult(TAG, True), 1.1)
    assert statuses(out) == [ConnectorStatus.OCCUPIED]
    out = c.handle(PilotChanged(CpState.B), 2.0)
    assert of(BeginTransaction, out) == [BeginTransaction(TAG, 7)]
    assert of(ReservationEnded, out) == [ReservationEnded(7, "used")]
    assert c.reservation is None


def test_a_reserved_id_compares_case_insensitively():
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c, tag="04aabbcc")
    c.handle(TokenPresented(TAG), 1.0)
    c.handle(AuthorizationResult(TAG, True), 1.1)
    assert of(BeginTransaction, c.handle(PilotChanged(CpState.B), 2.0)) == [BeginTransaction(TAG, 7)]


def test_another_card_is_refused_without_asking_the_csms():
    """TC_046_1 step 5: a card that is not the reserved one: no Authorize.req, no transaction."""
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c)
    out = c.handle(TokenPresented(OTHER), 1.0)
    assert of(RequestAuthorization, out) == []
    assert any("reserved" in n.text for n in of(Notice, out))
    out = c.handle(PilotChanged(CpState.B), 2.0)  # an EV plugs in: still reserved, nothing starts
    assert of(BeginTransaction, out) == []
    assert c.view().status is ConnectorStatus.RESERVED


def test_a_card_of_the_reservations_parent_may_use_it():
    """TC_053: the reservation names a parent id; a card whose Authorize answer has that parent starts,
    with the reservationId."""
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c, parent="FLEET-1")
    assert of(RequestAuthorization, c.handle(TokenPresented(OTHER), 1.0)) == [RequestAuthorization(OTHER)]
    c.handle(AuthorizationResult(OTHER, True, parent_id_token="FLEET-1"), 1.1)
    assert of(BeginTransaction, c.handle(PilotChanged(CpState.B), 2.0)) == [BeginTransaction(OTHER, 7)]


def test_a_card_of_another_parent_is_refused():
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c, parent="FLEET-1")
    c.handle(TokenPresented(OTHER), 1.0)
    out = c.handle(AuthorizationResult(OTHER, True, parent_id_token="FLEET-2"), 1.1)
    assert any("reserved" in n.text for n in of(Notice, out))
    assert of(BeginTransaction, c.handle(PilotChanged(CpState.B), 2.0)) == []
    assert c.view().status is ConnectorStatus.RESERVED


def test_remote_start_with_the_reserved_id_uses_the_reservation():
    """TC_046_2: RemoteStartTransaction with the reserved idTag: StartTransaction with the reservationId;
    another id is not accepted."""
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c)
    assert not c.can_accept_remote_start(OTHER)
    assert c.can_accept_remote_start(TAG)
    c.handle(RemoteStart(TAG), 1.0)
    c.handle(AuthorizationResult(TAG, True), 1.1)
    assert of(BeginTransaction, c.handle(PilotChanged(CpState.B), 2.0)) == [BeginTransaction(TAG, 7)]


def test_remote_start_without_authorize_remote_tx_still_learns_a_parent():
    c = controller(authorize_remote_tx=False)
    c.handle(Tick(), 0.0)
    reserve(c, parent="FLEET-1")
    assert c.can_accept_remote_start(OTHER)
    assert of(RequestAuthorization, c.handle(RemoteStart(OTHER), 1.0)) == [RequestAuthorization(OTHER)]
    c.handle(AuthorizationResult(OTHER, True, parent_id_token="FLEET-1"), 1.1)
    assert of(BeginTransaction, c.handle(PilotChanged(CpState.B), 2.0)) == [BeginTransaction(OTHER, 7)]


def test_answers_faulted_unavailable_occupied():
    """TC_048_1/2/3: a faulted, unavailable or occupied connector is not reserved."""
    faulted = controller()
    faulted.handle(FaultChanged(Fault.RCD, True), 0.0)
    assert faulted.reservation_answer(1) == "Faulted"

    unavailable = controller()
    unavailable.handle(AvailabilityChanged(False), 0.0)
    assert unavailable.reservation_answer(1) == "Unavailable"

    plugged = controller()
    plugged.handle(PilotChanged(CpState.B), 0.0)
    assert plugged.reservation_answer(1) == "Occupied"

    reserved = controller()
    reserve(reserved, reservation_id=1)
    assert reserved.reservation_answer(2) == "Occupied"  # already reserved for another reservation
    assert reserved.reservation_answer(1) == "Accepted"  # the same id: replaced


def test_the_same_reservation_id_replaces_the_reservation():
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c, tag=TAG, expires_at=10.0)
    out = reserve(c, tag=OTHER, expires_at=50.0)
    assert of(ReservationEnded, out) == []
    assert c.reservation.id_token == OTHER
    assert c.handle(Tick(), 10.0) == []  # the old expiry no longer applies
    assert of(ReservationEnded, c.handle(Tick(), 50.0)) == [ReservationEnded(7, "expired")]


def test_cancel_returns_the_connector_to_available():
    """TC_051: CancelReservation ends it; another id cancels nothing."""
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c)
    assert c.handle(ReservationCancelled(8), 1.0) == []
    out = c.handle(ReservationCancelled(7), 1.0)
    assert of(ReservationEnded, out) == [ReservationEnded(7, "cancelled")]
    assert statuses(out) == [ConnectorStatus.AVAILABLE]


def test_a_fault_or_unavailability_ends_the_reservation():
    c = controller()
    c.handle(Tick(), 0.0)
    reserve(c)
    out = c.handle(FaultChanged(Fault.RCD, True), 1.0)
    assert of(ReservationEnded, out) == [ReservationEnded(7, "faulted")]
    assert statuses(out) == [ConnectorStatus.FAULTED]

    c = controller()
    reserve(c)
    assert of(ReservationEnded, c.handle(AvailabilityChanged(False), 1.0)) == [ReservationEnded(7, "unavailable")]


def test_route_sends_the_reserved_card_to_its_connector_and_others_elsewhere():
    one, two = controller(), controller()
    reserve(two)
    controllers = {1: one, 2: two}
    assert route_id_token(controllers, TAG) == 2
    assert route_id_token(controllers, OTHER) == 1


def test_connector_zero_holds_one_free_connector_and_answers_for_the_station():
    """TC_049 / TC_050_1..3: a reservation of connector 0 is held on a free connector; with none free the
    answer says why."""
    one, two = controller(), controller()
    one.handle(PilotChanged(CpState.B), 0.0)  # occupied
    assert reserve_any_connector({1: one, 2: two}, 5) == ("Accepted", 2)
    two.handle(FaultChanged(Fault.RCD, True), 0.0)
    assert reserve_any_connector({1: one, 2: two}, 5) == ("Occupied", None)
    one.handle(FaultChanged(Fault.RCD, True), 0.0)
    assert reserve_any_connector({1: one, 2: two}, 5) == ("Faulted", None)
    off = controller()
    off.handle(AvailabilityChanged(False), 0.0)
    assert reserve_any_connector({1: off}, 5) == ("Unavailable", None)


def test_connector_zero_reservation_is_used_by_a_start_on_another_connector():
    one, two = controller(), controller()
    one.handle(Tick(), 0.0)
    two.handle(Tick(), 0.0)
    reserve(one, any_connector=True)
    two.handle(PilotChanged(CpState.B), 1.0)
    controllers = {1: one, 2: two}
    assert route_id_token(controllers, TAG) == 2  # the reserved driver's EV is waiting on connector 2
    two.handle(TokenPresented(TAG), 1.0)
    out = two.handle(AuthorizationResult(TAG, True), 1.1)
    assert of(BeginTransaction, out) == [BeginTransaction(TAG, None)]
    assert station_reservation_used(controllers, 2) == 1
