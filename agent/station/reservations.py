"""Reservations of the station (OCPP 1.6 §5.13), the shell side.

The connectors' session controllers hold reservations and decide who may start (agent.core.controller).
This module places a reservation on a connector (for connector 0: on one free connector, moved when
that one faults), persists every active reservation in the journal's settings (`reservation.<id>`) so
that a restart keeps it, and restores them. The reservation a transaction uses leaves the journal in
the same commit as its StartTransaction (Journal.begin_transaction).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from agent.core import controller as ctl
from agent.logs import StationLogs
from agent.station.journal import Journal, JournalError

log = logging.getLogger("evse.station")

SETTING_PREFIX = "reservation."


class Reservations:
    def __init__(self, journal: Journal, controllers: dict[int, ctl.ConnectorController],
                 dispatch: Callable[[int, ctl.Event], None], clock: Callable[[], float],
                 wall_clock: Callable[[], datetime], journal_failed: Callable[[Exception], None],
                 logs: StationLogs | None = None):
        self.log = logs.logger(log.name) if logs is not None else log  # the station's (agent.logs)
        self._journal = journal
        self._controllers = controllers
        self._dispatch = dispatch  # (connector id, event): hands an event to that connector's controller
        self._clock = clock  # the controllers' clock: expiry is handed to them on it
        self._wall_clock = wall_clock
        self._journal_failed = journal_failed  # a storage fault, for failures outside a CSMS request
        # active reservations by id: {"connectorId": requested (0 = any), "heldOn": connector,
        # "idTag", "parentIdTag", "expiryDate"}, exactly as persisted
        self._active: dict[int, dict] = {}

    def reserve(self, connector_id: int, expiry_date: str, id_token: str, reservation_id: int,
                parent_id_token: str | None) -> str:
        """ReserveNow: the ReserveNow.conf status. A reservation with the id of an active one replaces it."""
        try:
            expiry = datetime.fromisoformat(expiry_date)
        except ValueError:
            self.log.warning("ReserveNow %d: unreadable expiryDate %r: Rejected", reservation_id, expiry_date)
            return "Rejected"
        if expiry.tzinfo is None:
            expiry = expiry.replace(tzinfo=UTC)  # OCPP times are UTC
        if expiry <= self._wall_clock():
            self.log.warning("ReserveNow %d: expiryDate %s has passed: Rejected", reservation_id, expiry_date)
            return "Rejected"
        if connector_id == 0:
            status, held_on = ctl.reserve_any_connector(self._controllers, reservation_id)
        else:
            status, held_on = self._controllers[connector_id].reservation_answer(reservation_id), connector_id
        self.log.info("ReserveNow %d for %s on connector %d until %s: %s", reservation_id, id_token, connector_id,
                      expiry_date, status)
        if status != "Accepted" or held_on is None:
            return status
        record = {"connectorId": connector_id, "heldOn": held_on, "idTag": id_token, "parentIdTag": parent_id_token,
                  "expiryDate": expiry.astimezone(UTC).isoformat().replace("+00:00", "Z")}
        previous = self._active.get(reservation_id)
        try:
            self._place(reservation_id, record)
        except JournalError as exc:
            self.log.error("ReserveNow %d: cannot be stored: %s: Rejected", reservation_id, exc)
            return "Rejected"
        if previous is not None and previous["heldOn"] != held_on:  # replaced by one on another connector
            self._dispatch(previous["heldOn"], ctl.ReservationCancelled(reservation_id, "replaced"))
        return "Accepted"

    def cancel(self, reservation_id: int) -> str:
        """CancelReservation: Accepted, or Rejected for an id that no reservation has (TC_052)."""
        record = self._active.get(reservation_id)
        if record is None:
            self.log.info("CancelReservation %d: no such reservation: Rejected", reservation_id)
            return "Rejected"
        self._dispatch(record["heldOn"], ctl.ReservationCancelled(reservation_id))
        return "Accepted"

    def restore(self) -> None:
        """After a restart: the reservations still valid are held again; the expired ones are forgotten."""
        for key, value in self._journal.settings(SETTING_PREFIX).items():
            try:
                reservation_id, record = int(key), json.loads(value)
                expiry = datetime.fromisoformat(record["expiryDate"])
                held_on = int(record["heldOn"])
            except (ValueError, KeyError, TypeError):
                self.log.warning("ignoring an unreadable stored reservation %s: %.100s", key, value)
                self._journal.delete_setting(SETTING_PREFIX + key)
                continue
            if expiry <= self._wall_clock() or held_on not in self._controllers:
                self.log.info("reservation %d for %s expired while the agent was down", reservation_id, record["idTag"])
                self._journal.delete_setting(SETTING_PREFIX + key)
                continue
            self.log.info("reservation %d for %s on connector %d restored (until %s)", reservation_id,
                          record["idTag"], held_on, record["expiryDate"])
            self._place(reservation_id, record)

    def ended(self, connector_id: int, reservation_id: int, reason: str) -> None:
        """A controller gave up the reservation it held (ReservationEnded)."""
        record = self._active.get(reservation_id)
        if record is None or record["heldOn"] != connector_id:
            return  # moved to another connector: that one holds it now
        del self._active[reservation_id]
        if reason != "used":  # a used one leaves the journal with its StartTransaction, in the same commit
            try:
                self._journal.delete_setting(SETTING_PREFIX + str(reservation_id))
            except JournalError as exc:  # it is dropped at the next start, once expired
                self.log.error("reservation %d: cannot be removed from the journal: %s", reservation_id, exc)
        self.log.info("connector %d: reservation %d %s", connector_id, reservation_id, reason)
        if record["connectorId"] == 0 and reason in ("faulted", "unavailable"):
            # a reservation of the station moves to another connector that can hold it, if there is one
            others = {cid: c for cid, c in self._controllers.items() if cid != connector_id}
            status, held_on = ctl.reserve_any_connector(others, reservation_id)
            if status == "Accepted" and held_on is not None:
                self.log.info("reservation %d of the station moves to connector %d", reservation_id, held_on)
                try:
                    self._place(reservation_id, {**record, "heldOn": held_on})
                except JournalError as exc:  # inside a control step: a storage fault, never a crash
                    self.log.error("reservation %d: cannot be moved to connector %d: %s", reservation_id, held_on, exc)
                    self._journal_failed(exc)

    def used_elsewhere(self, connector_id: int) -> int | None:
        """A transaction starting on `connector_id` by the id of a reservation of connector 0 held on another
        connector uses it: returns its id (for StartTransaction) and frees the other connector."""
        holder = ctl.station_reservation_used(self._controllers, connector_id)
        if holder is None:
            return None
        reservation = self._controllers[holder].reservation
        assert reservation is not None
        self._dispatch(holder, ctl.ReservationCancelled(reservation.reservation_id, "used"))
        return reservation.reservation_id

    def status(self, reservation: ctl.ReservationMade | None) -> dict | None:
        """A connector's reservation as `evse status` shows it."""
        if reservation is None:
            return None
        record = self._active.get(reservation.reservation_id, {})
        return {"id": reservation.reservation_id, "id_tag": reservation.id_token,
                "parent_id_tag": reservation.parent_id_token, "expiry_date": record.get("expiryDate"),
                "any_connector": reservation.any_connector}

    def _place(self, reservation_id: int, record: dict) -> None:
        """Persist the reservation, then hand it to the controller of the connector that holds it."""
        expiry = datetime.fromisoformat(record["expiryDate"])
        self._journal.set_setting(SETTING_PREFIX + str(reservation_id), json.dumps(record, sort_keys=True))
        self._active[reservation_id] = record
        remaining = (expiry - self._wall_clock()).total_seconds()
        self._dispatch(record["heldOn"], ctl.ReservationMade(
            reservation_id, record["idTag"], record["parentIdTag"], self._clock() + remaining,
            any_connector=record["connectorId"] == 0))
