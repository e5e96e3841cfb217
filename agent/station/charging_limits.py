"""Smart Charging in the station (OCPP 1.6 §3.13), the shell side.

The rules (validation, stacking, composite schedules) are pure in agent.core.smart_charging; the OCPP
messages in agent.ocpp.v16.smart_charging. This module owns the installed profiles (persisted by
agent.station.profile_store), re-evaluates each connector's limit when a schedule period boundary passes or
something it depends on changes, and hands the limit to the connector's session controller
(ChargingLimitChanged), which turns it into the pilot's duty cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from agent.core import controller as ctl
from agent.core import smart_charging as sc
from agent.logs import StationLogs
from agent.ocpp.v16.smart_charging import parse_profile
from agent.station.journal import Journal, JournalError
from agent.station.profile_store import ProfileStore
from agent.station.settings import StationSettings

if TYPE_CHECKING:
    from agent.station.connector import ConnectorRuntime

CHARGING_LIMITS_PERIOD_S = 0.25  # how often schedule period boundaries are looked for

log = logging.getLogger("evse.smart_charging")

# GetCompositeSchedule answers for at most this window (its cost grows with it, and it is computed on the
# event loop that also runs the control loop); the answer's duration says how far it reaches
MAX_COMPOSITE_DURATION_S = 7 * 86400


REMOTE_START_TAKE_UP_S = 5.0  # a remote start the controller never took up (connector busy) drops its TxProfile


@dataclass
class _ConnectorSchedule:
    tx_started_at: datetime | None = None  # Relative profiles count from the transaction's start
    live: sc.LiveLimit | None = None  # the limit in force until live.next_change
    dirty: bool = True  # re-evaluate at the next look (Station's schedule loop) or change
    pending_tx_profile: sc.ChargingProfile | None = None  # a RemoteStartTransaction's, until its transaction
    # the controller took up that remote start (the control loop runs apart: its state arrives a moment after
    # the RemoteStart went down, and until then the connector still looks free)
    pending_taken_up: bool = False
    pending_since: datetime | None = None


class ChargingLimits:
    def __init__(self, settings: StationSettings, journal: Journal,
                 connectors: Mapping[int, ConnectorRuntime], dispatch: Callable[[int, ctl.Event], None],
                 wall_clock: Callable[[], datetime], journal_failed: Callable[[Exception], None],
                 logs: StationLogs | None = None):
        self.log = logs.logger(log.name) if logs is not None else log  # the station's (agent.logs)
        self._settings = settings
        self._journal = journal
        self._connectors = connectors
        self._dispatch = dispatch
        self._wall_clock = wall_clock  # UTC: charging schedules are in wall-clock time
        self._journal_failed = journal_failed
        self._store = ProfileStore(journal)
        self.profiles = sc.ProfileSet(self._store.load(), self._limits())
        self._schedules: dict[int, _ConnectorSchedule] = {cid: _ConnectorSchedule() for cid in connectors}

    # ---- the control loop and the transactions ------------------------------------------------------

    async def run(self) -> None:
        """Smart-charging schedules change at their period boundaries (and validFrom/validTo): look for one
        every CHARGING_LIMITS_PERIOD_S; a change of profile or transaction re-evaluates at once."""
        while True:
            self.update_all()
            await asyncio.sleep(CHARGING_LIMITS_PERIOD_S)

    def update_all(self) -> None:
        for rt in self._connectors.values():
            self.update(rt)

    def update(self, rt: ConnectorRuntime) -> None:
        """Each control step: re-evaluate the composite limit when a period boundary (or validFrom/validTo)
        has passed or something it depends on changed, and feed a new limit to the controller."""
        s = self._schedules[rt.id]
        now = self._wall_clock()
        c = rt.controller
        waiting = (s.pending_tx_profile is not None and not c.transaction_active
                   and c.view().authorized_id_token is None and c.can_accept_remote_start())
        if s.pending_tx_profile is not None and not waiting:
            s.pending_taken_up = True
        if waiting and (s.pending_taken_up or s.pending_since is None
                        or (now - s.pending_since).total_seconds() > REMOTE_START_TAKE_UP_S):
            assert s.pending_tx_profile is not None  # waiting
            self.log.info("connector %d: the remote start did not lead to a transaction: its TxProfile %d is dropped",
                          rt.id, s.pending_tx_profile.id)
            s.pending_tx_profile, s.dirty = None, True
        if not s.dirty and s.live is not None and now < s.live.next_change:
            return
        s.dirty = False
        profiles = self.profiles.profiles
        tx = self._transaction(rt, now)
        if s.pending_tx_profile is not None and tx is None:
            profiles += (s.pending_tx_profile,)
            tx = sc.Transaction(now)  # the limit the transaction will start with
        s.live = sc.live_limit(profiles, rt.id, now, self._electrical(rt), tx, self._cp_max_share())
        limit = s.live.limit_a
        if limit is not None:  # down, never above what the CSMS allowed (5.98 A is below the 6 A minimum)
            limit = sc.floor_tenths(limit)
        if limit != c.charging_limit_a:
            self.log.info("connector %d: charging limit %s", rt.id, "none" if limit is None else f"{limit:g} A")
            self._dispatch(rt.id, ctl.ChargingLimitChanged(limit))

    def transaction_started(self, rt: ConnectorRuntime) -> None:
        s = self._schedules[rt.id]
        s.tx_started_at = self._wall_clock()
        pending, s.pending_tx_profile = s.pending_tx_profile, None
        if pending is not None:  # the RemoteStartTransaction's TxProfile now governs its transaction
            self.profiles.profiles = sc.install(self.profiles.profiles, pending)
            self._save_or_report()
        self._all_dirty()

    def transaction_resumed(self, rt: ConnectorRuntime, started_at: str) -> None:
        with contextlib.suppress(ValueError):
            self._schedules[rt.id].tx_started_at = sc.parse_time(started_at, "started_at")

    def transaction_ended(self, rt: ConnectorRuntime) -> None:
        """Its TxProfiles end with it; the ChargePointMaxProfile share of the others grows."""
        self._schedules[rt.id].tx_started_at = None
        removed = self.profiles.end_transaction(rt.id)
        if removed:
            self.log.info("connector %d: transaction ended, TxProfile(s) %s cleared", rt.id,
                          ", ".join(str(p.id) for p in removed))
            self._save_or_report()
        self._all_dirty()

    # ---- the CSMS's requests (CsmsPort, agent.station.csms_link) -------------------------------------------------------

    def accept_remote_start_profile(self, rt: ConnectorRuntime, data: dict) -> bool:
        """RemoteStartTransaction with a chargingProfile: only a TxProfile without transactionId (errata
        3.41, TC_059/TC_060); it governs the transaction from its start."""
        try:
            profile = parse_profile(rt.id, data)
        except sc.ProfileError as exc:
            self.log.warning("RemoteStartTransaction: chargingProfile rejected: %s", exc)
            return False
        reason = sc.check_profile(profile, self.profiles.profiles, limits=self.profiles.limits,
                                  transaction=None, for_remote_start=True)
        if reason is not None:
            self.log.warning("RemoteStartTransaction: chargingProfile %d rejected: %s", profile.id, reason)
            return False
        s = self._schedules[rt.id]
        s.pending_tx_profile, s.dirty = profile, True
        s.pending_taken_up, s.pending_since = False, self._wall_clock()
        self.update(rt)  # the session's first PWM already honours it
        return True

    def set_profile(self, connector_id: int, data: dict) -> str:
        """SetChargingProfile: the SetChargingProfile.conf status."""
        try:
            profile = parse_profile(connector_id, data)
        except sc.ProfileError as exc:
            self.log.warning("SetChargingProfile on connector %d: Rejected: %s", connector_id, exc)
            return "Rejected"
        rt = self._connectors.get(connector_id)
        tx = self._transaction(rt, self._wall_clock()) if rt is not None else None
        before = self.profiles.profiles
        reason = self.profiles.set(profile, tx)
        if reason is not None:
            self.log.warning("SetChargingProfile %d on connector %d: Rejected: %s", profile.id, connector_id, reason)
            return "Rejected"
        try:
            self._save()
        except JournalError as exc:
            self.profiles.profiles = before
            self.log.error("SetChargingProfile %d: cannot be stored: %s", profile.id, exc)
            return "Rejected"
        self.log.info("charging profile %d installed: %s on connector %d, stack level %d", profile.id, profile.purpose,
                      connector_id, profile.stack_level)
        return "Accepted"

    def clear(self, profile_id: int | None, connector_id: int | None, purpose: str | None,
              stack_level: int | None) -> str:
        """ClearChargingProfile: Accepted when a profile matched, else Unknown."""
        before = self.profiles.profiles
        removed = self.profiles.clear(profile_id=profile_id, connector_id=connector_id, purpose=purpose,
                                      stack_level=stack_level)
        if not removed:
            return "Unknown"
        try:
            self._save()
        except JournalError as exc:
            self.profiles.profiles = before
            self.log.error("ClearChargingProfile: cannot be stored: %s", exc)
            return "Unknown"
        self.log.info("charging profile(s) %s cleared", ", ".join(str(p.id) for p in removed))
        return "Accepted"

    def composite_schedule(self, connector_id: int, duration: int, rate_unit: str | None) -> dict | None:
        """GetCompositeSchedule: the limits from now for `duration` s, in A unless W is asked for; intervals
        no profile limits show what the connector offers anyway (config, outlet and cable limits).
        None: Rejected (unknown connector or unit)."""
        unit = rate_unit or "A"
        if unit not in sc.UNITS or duration < 0 or (connector_id != 0 and connector_id not in self._connectors):
            return None
        if duration > MAX_COMPOSITE_DURATION_S:
            self.log.info("GetCompositeSchedule: %d s asked, answering for %d s", duration, MAX_COMPOSITE_DURATION_S)
            duration = MAX_COMPOSITE_DURATION_S
        now = self._wall_clock()
        if connector_id == 0:
            electrical = sc.Electrical(max(rt.hw.phases for rt in self._connectors.values()))
            ceiling_a = sum(_unlimited_current(rt) for rt in self._connectors.values())
            tx = None
        else:
            rt = self._connectors[connector_id]
            electrical, ceiling_a = self._electrical(rt), _unlimited_current(rt)
            tx = self._transaction(rt, now)
        schedule = sc.composite(self.profiles.profiles, connector_id, now, duration, unit, electrical, tx,
                                self._cp_max_share() if connector_id else 1)
        return schedule.to_ocpp(electrical.from_amps(ceiling_a, unit, None))

    def status(self) -> dict:
        return {"profiles": [{"id": p.id, "connector_id": p.connector_id, "purpose": p.purpose,
                              "stack_level": p.stack_level} for p in self.profiles.profiles]}

    # ---- internals ----------------------------------------------------------------------------------

    def _limits(self) -> sc.Limits:
        cfg = self._settings
        return sc.Limits(
            max_stack_level=cfg.charging_profile_max_stack_level,
            max_periods=cfg.charging_schedule_max_periods,
            max_profiles=cfg.max_charging_profiles,
            allowed_units=cfg.charging_rate_units,
        )

    def _electrical(self, rt: ConnectorRuntime) -> sc.Electrical:
        """W to A with the connector's phases and the measured L-N voltage (nominal 230 V until known)."""
        volts = [v for v in (rt.last_reading.voltage_v if rt.last_reading else ()) if v is not None and v > 50.0]
        return sc.Electrical(rt.hw.phases, sum(volts) / len(volts) if volts else sc.NOMINAL_VOLTAGE_V)

    def _transaction(self, rt: ConnectorRuntime, now: datetime) -> sc.Transaction | None:
        if not rt.controller.transaction_active:
            return None
        record = self._journal.transaction(rt.local_tx) if rt.local_tx is not None else None
        return sc.Transaction(self._schedules[rt.id].tx_started_at or now, record.csms_tx_number if record else None)

    def _cp_max_share(self) -> int:
        """A ChargePointMaxProfile limits the station: the connectors in a transaction share it equally."""
        return max(1, sum(1 for rt in self._connectors.values() if rt.controller.transaction_active))

    def _all_dirty(self) -> None:
        """Something every limit depends on changed: re-evaluate now, so the new limits reach the control loop
        before anything decided after this change (a start's TransactionRecorded, a RemoteStart)."""
        for s in self._schedules.values():
            s.dirty = True
        for rt in self._connectors.values():
            self.update(rt)

    def _save(self) -> None:
        self._store.save(self.profiles.profiles)
        self._all_dirty()

    def _save_or_report(self) -> None:
        try:
            self._save()
        except JournalError as exc:
            self._journal_failed(exc)


def _unlimited_current(rt: ConnectorRuntime) -> float:
    c = rt.controller
    return min(c.settings.max_current_a, c.cable_a) if c.cable_a is not None else c.settings.max_current_a
