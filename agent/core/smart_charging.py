"""OCPP 1.6 Smart Charging: charging profiles, their validation and stacking, and the composite schedule.

Pure logic: no I/O, no `ocpp` import; the time is always passed in (timezone-aware UTC datetimes).
The station (agent.station.station) owns the installed profiles, persists them and turns the composite limit
into a controller event; the OCPP layer (agent.ocpp.v16.smart_charging) translates messages and reads and
writes the chargingProfile wire object.

Rules held here (OCPP 1.6 §3.13, §5.5, §5.7, §5.16 and the errata):
* ChargePointMaxProfile only on connector 0 and never Relative; TxDefaultProfile on connector 0 (every
  connector) or one connector (overrides connector 0); TxProfile only on a connector with a running
  transaction (and its transaction id, if given).
* Within a purpose the valid profile with the highest stackLevel wins at each instant; a profile that is
  not valid yet (validFrom), no more (validTo) or whose schedule has ended (duration, also within each
  recurrence) falls back to lower stack levels, then to "no limit" (errata 3.43/3.44).
* A new profile replaces one with the same chargingProfileId, or the same connector, purpose and
  stackLevel.
* The first period starts at 0 (errata 3.45); numberPhases above what the connector has is used as the
  connector's phases (errata 3.34).
* Composite = min(ChargePointMaxProfile, TxProfile or else TxDefaultProfile) per interval, in A or W.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CHARGE_POINT_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX_PROFILE = "TxProfile"
PURPOSES = (CHARGE_POINT_MAX, TX_DEFAULT, TX_PROFILE)
KINDS = ("Absolute", "Recurring", "Relative")
RECURRENCY = {"Daily": 86400, "Weekly": 7 * 86400}
UNITS = ("A", "W")
UNIT_NAMES = {"A": "Current", "W": "Power"}  # ChargingScheduleAllowedChargingRateUnit spells them so

NOMINAL_VOLTAGE_V = 230.0  # L-N, when no measured voltage is known
HORIZON_S = 8 * 86400  # how far ahead the next limit change is looked for (a weekly recurrence and a day)


class ProfileError(ValueError):
    """A chargingProfile that is malformed or not acceptable here; the message says why (for the log)."""


# ---- model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchedulePeriod:
    start_period: int  # seconds from the start of the schedule
    limit: float  # in the schedule's unit
    number_phases: int | None = None


@dataclass(frozen=True)
class ChargingSchedule:
    rate_unit: str  # "A" or "W"
    periods: tuple[SchedulePeriod, ...]
    duration: int | None = None  # seconds; None: the last period lasts until the profile ends
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None


@dataclass(frozen=True)
class ChargingProfile:
    id: int
    connector_id: int
    stack_level: int
    purpose: str
    kind: str
    schedule: ChargingSchedule
    recurrency_kind: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: int | None = None


@dataclass(frozen=True)
class Limits:
    """The station's Smart Charging capabilities (the read-only OCPP keys)."""

    max_stack_level: int = 10  # ChargeProfileMaxStackLevel
    max_periods: int = 48  # ChargingScheduleMaxPeriods
    max_profiles: int = 20  # MaxChargingProfilesInstalled
    allowed_units: tuple[str, ...] = UNITS  # ChargingScheduleAllowedChargingRateUnit (A = Current, W = Power)


@dataclass(frozen=True)
class Electrical:
    """What converts W to A for one connector: the phases it is wired with and the L-N voltage."""

    phases: int = 3
    voltage_v: float = NOMINAL_VOLTAGE_V

    def phases_for(self, number_phases: int | None) -> int:
        if number_phases is None:
            return self.phases
        return max(1, min(number_phases, self.phases))  # more than we have: use what we have (errata 3.34)

    def to_amps(self, limit: float, unit: str, number_phases: int | None) -> float:
        if unit == "A":
            return limit
        return limit / (self.voltage_v * self.phases_for(number_phases))

    def from_amps(self, amps: float, unit: str, number_phases: int | None) -> float:
        if unit == "A":
            return amps
        return amps * self.voltage_v * self.phases_for(number_phases)


@dataclass(frozen=True)
class Transaction:
    """The transaction a connector runs, as far as schedules care."""

    started_at: datetime
    transaction_id: int | None = None  # the CSMS's id; None until the CSMS answered the start


@dataclass(frozen=True)
class CompositePeriod:
    start_period: int  # seconds from the composite's start
    limit: float | None  # None: no limit from any profile
    number_phases: int | None = None


@dataclass(frozen=True)
class CompositeSchedule:
    start: datetime
    duration: int
    rate_unit: str
    periods: tuple[CompositePeriod, ...]

    def to_ocpp(self, default_limit: float) -> dict:
        """The chargingSchedule of GetCompositeSchedule.conf; periods without a limit get `default_limit`
        (what the connector offers anyway); limits are rounded down to the schema's 0.1 step."""
        periods: list[dict[str, Any]] = []
        for p in self.periods:
            limit = default_limit if p.limit is None else min(p.limit, default_limit)
            entry: dict[str, Any] = {"startPeriod": p.start_period, "limit": floor_tenths(limit)}
            if p.number_phases is not None:
                entry["numberPhases"] = p.number_phases
            if periods and periods[-1]["limit"] == entry["limit"] \
                    and periods[-1].get("numberPhases") == entry.get("numberPhases"):
                continue
            periods.append(entry)
        return {"duration": self.duration, "startSchedule": format_time(self.start),
                "chargingRateUnit": self.rate_unit, "chargingSchedulePeriod": periods}


@dataclass(frozen=True)
class LiveLimit:
    """What a connector may offer now and until when that holds."""

    limit_a: float | None  # None: no profile limits it
    next_change: datetime  # re-evaluate at (or after) this instant


# ---- parsing and validation ----------------------------------------------------------------------


def parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ProfileError(f"{name} must be a date-time string")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ProfileError(f"{name} is not a date-time: {value[:40]!r}") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def format_time(moment: datetime) -> str:
    """Whole seconds as "...:05Z"; a moment with a fraction keeps its milliseconds ("...:05.250Z")."""
    timespec = "milliseconds" if moment.microsecond // 1000 else "seconds"
    return moment.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def floor_tenths(value: float) -> float:
    """Down to the schema's multipleOf 0.1 (never above the limit the CSMS gave)."""
    return math.floor(value * 10 + 1e-9) / 10


def check_profile(profile: ChargingProfile, installed: Iterable[ChargingProfile], *, limits: Limits,
                  transaction: Transaction | None, for_remote_start: bool = False) -> str | None:
    """Why SetChargingProfile must answer Rejected, or None to accept. `transaction` is the one running
    on the profile's connector. `for_remote_start`: the TxProfile of a RemoteStartTransaction (errata
    3.41), which comes before its transaction."""
    if profile.purpose == CHARGE_POINT_MAX and profile.connector_id != 0:
        return "a ChargePointMaxProfile belongs on connector 0"
    if profile.purpose == TX_PROFILE:
        if profile.connector_id == 0:
            return "a TxProfile needs a connector"
        if for_remote_start:
            if profile.transaction_id is not None:
                return "the chargingProfile of a RemoteStartTransaction may not name a transaction id"
        elif transaction is None:
            return f"no transaction runs on connector {profile.connector_id}"
        elif profile.transaction_id is not None and profile.transaction_id != transaction.transaction_id:
            return f"transaction {profile.transaction_id} does not run on connector {profile.connector_id}"
    elif for_remote_start:
        return f"the chargingProfile of a RemoteStartTransaction must be a TxProfile, not {profile.purpose}"
    if profile.stack_level > limits.max_stack_level:
        return f"stackLevel {profile.stack_level} above ChargeProfileMaxStackLevel {limits.max_stack_level}"
    if profile.schedule.rate_unit not in limits.allowed_units:
        return f"chargingRateUnit {profile.schedule.rate_unit} not supported"
    if len(profile.schedule.periods) > limits.max_periods:
        return f"{len(profile.schedule.periods)} periods, ChargingScheduleMaxPeriods is {limits.max_periods}"
    if len(install(tuple(installed), profile)) > limits.max_profiles:
        return f"MaxChargingProfilesInstalled ({limits.max_profiles}) reached"
    return None


# ---- the set of installed profiles ----------------------------------------------------------------


def _replaces(new: ChargingProfile, old: ChargingProfile) -> bool:
    return old.id == new.id or (old.connector_id == new.connector_id and old.purpose == new.purpose
                                and old.stack_level == new.stack_level)


def install(profiles: tuple[ChargingProfile, ...], new: ChargingProfile) -> tuple[ChargingProfile, ...]:
    """The installed profiles after SetChargingProfile(new): it replaces the same id or the same
    connector, purpose and stackLevel."""
    return tuple(p for p in profiles if not _replaces(new, p)) + (new,)


def clear(profiles: tuple[ChargingProfile, ...], *, profile_id: int | None = None, connector_id: int | None = None,
          purpose: str | None = None, stack_level: int | None = None
          ) -> tuple[tuple[ChargingProfile, ...], tuple[ChargingProfile, ...]]:
    """ClearChargingProfile: by id (the other criteria are then ignored), else by every criterion given
    (none: all). Returns (kept, removed); nothing removed means the answer Unknown."""
    def matches(p: ChargingProfile) -> bool:
        if profile_id is not None:
            return p.id == profile_id
        return ((connector_id is None or p.connector_id == connector_id)
                and (purpose is None or p.purpose == purpose)
                and (stack_level is None or p.stack_level == stack_level))
    kept = tuple(p for p in profiles if not matches(p))
    removed = tuple(p for p in profiles if matches(p))
    return kept, removed


def end_transaction(profiles: tuple[ChargingProfile, ...], connector_id: int) -> tuple[ChargingProfile, ...]:
    """A transaction ended: its TxProfiles go (§3.13.2)."""
    return tuple(p for p in profiles if not (p.purpose == TX_PROFILE and p.connector_id == connector_id))


# ---- schedules over time --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    start: float  # POSIX seconds
    end: float
    profile: ChargingProfile
    period: SchedulePeriod


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _tx_start(transaction: Transaction | None) -> float | None:
    """A transaction's start in whole seconds, like OCPP times and composite windows: a Relative profile
    then covers the whole second its transaction started in, with no gap before it in a composite."""
    return float(math.floor(_ts(transaction.started_at))) if transaction else None


def _schedule_starts(profile: ChargingProfile, lo: float, hi: float, tx_start: float | None) -> list[float]:
    s = profile.schedule
    if profile.kind == "Recurring":
        assert s.start_schedule is not None and profile.recurrency_kind is not None
        cycle = RECURRENCY[profile.recurrency_kind]
        anchor = _ts(s.start_schedule)
        first = anchor + math.floor((lo - anchor) / cycle) * cycle
        starts = []
        t = first
        while t < hi:
            starts.append(t)
            t += cycle
        return starts
    if profile.kind == "Absolute" and s.start_schedule is not None:
        return [_ts(s.start_schedule)]
    # Relative (or Absolute without startSchedule, "relative to the start of charging"): from the start of
    # the transaction; without one, as if charging started at the beginning of the window
    return [tx_start if tx_start is not None else lo]


def _segments(profile: ChargingProfile, lo: float, hi: float, tx_start: float | None) -> list[_Segment]:
    """The pieces of [lo, hi) in which `profile` gives a limit, each with its period."""
    s = profile.schedule
    valid_lo = _ts(profile.valid_from) if profile.valid_from else -math.inf
    valid_hi = _ts(profile.valid_to) if profile.valid_to else math.inf
    cycle = RECURRENCY[profile.recurrency_kind] if profile.kind == "Recurring" and profile.recurrency_kind else None
    out = []
    for start in _schedule_starts(profile, lo, hi, tx_start):
        end = start + s.duration if s.duration is not None else math.inf
        if cycle is not None:
            end = min(end, start + cycle)
        for i, period in enumerate(s.periods):
            p_lo = start + period.start_period
            p_hi = start + s.periods[i + 1].start_period if i + 1 < len(s.periods) else math.inf
            a = max(p_lo, lo, valid_lo)
            b = min(p_hi, end, hi, valid_hi)
            if a < b:
                out.append(_Segment(a, b, profile, period))
    return out


def _winner(segments: list[_Segment], t: float, rank) -> _Segment | None:
    covering = [seg for seg in segments if seg.start <= t < seg.end]
    return max(covering, key=rank) if covering else None


def _merge(periods: list[tuple[float, float | None, int | None]], start: float) -> tuple[CompositePeriod, ...]:
    """Whole-second periods from `start`: a change at a fraction of a second counts from the nearest second
    (half up); a period that would last no whole second gives way to the one after it (no zero-length
    period, and no period starts twice)."""
    out: list[CompositePeriod] = []
    for t, limit, phases in periods:
        offset = math.floor(t - start + 0.5)
        if out and out[-1].start_period == offset:
            out.pop()  # shorter than half a second: the later limit holds from here
        if out and out[-1].limit == limit and out[-1].number_phases == phases:
            continue
        out.append(CompositePeriod(offset, limit, phases))
    return tuple(out) if out else (CompositePeriod(0, None),)


def composite(profiles: Iterable[ChargingProfile], connector_id: int, start: datetime, duration_s: int,
              unit: str, electrical: Electrical, transaction: Transaction | None = None,
              cp_max_share: int = 1) -> CompositeSchedule:
    """The composite schedule of a connector over [start, start + duration_s) in `unit` (A or W), from
    `start` itself, to the millisecond (§5.7: the schedule starts when the request is received; truncating
    to the second made a zero-length first period and moved every period): per interval the minimum of the ChargePointMaxProfile (divided by
    `cp_max_share`, the connectors that share it) and the TxProfile, or else the TxDefaultProfile (a
    connector's own over connector 0's). Connector 0 gives the ChargePointMaxProfile alone. Intervals no
    profile limits have limit None."""
    start = start.replace(microsecond=start.microsecond // 1000 * 1000)  # what scheduleStart can say
    lo = _ts(start)
    hi = lo + max(int(duration_s), 0)
    raw = _limits(tuple(profiles), connector_id, lo, hi, unit, electrical, transaction, cp_max_share)
    return CompositeSchedule(start.astimezone(UTC), max(int(duration_s), 0), unit, _merge(raw, lo))


def _limits(profiles: tuple[ChargingProfile, ...], connector_id: int, lo: float, hi: float, unit: str,
            electrical: Electrical, transaction: Transaction | None, cp_max_share: int
            ) -> list[tuple[float, float | None, int | None]]:
    """(from, limit, numberPhases) at every instant in [lo, hi) where a limit may change."""
    tx_start = _tx_start(transaction)
    cp_max: list[_Segment] = []
    tx: list[_Segment] = []
    default: list[_Segment] = []
    for p in profiles:
        if p.purpose == CHARGE_POINT_MAX:
            cp_max += _segments(p, lo, hi, tx_start)
        elif connector_id == 0:
            continue
        elif p.purpose == TX_PROFILE and p.connector_id == connector_id and transaction is not None:
            if p.transaction_id is None or p.transaction_id == transaction.transaction_id:
                tx += _segments(p, lo, hi, tx_start)
        elif p.purpose == TX_DEFAULT and p.connector_id in (0, connector_id):
            default += _segments(p, lo, hi, tx_start)
    cuts = {lo, hi}
    for seg in (*cp_max, *tx, *default):
        cuts.update((seg.start, seg.end))
    points = sorted(t for t in cuts if lo <= t < hi)
    by_level = lambda seg: seg.profile.stack_level  # noqa: E731
    by_connector_then_level = lambda seg: (seg.profile.connector_id != 0, seg.profile.stack_level)  # noqa: E731
    raw: list[tuple[float, float | None, int | None]] = []
    for t in points:
        limit: float | None = None
        phases: int | None = None
        chosen = _winner(tx, t, by_level) or _winner(default, t, by_connector_then_level)
        if chosen is not None:
            phases = chosen.period.number_phases
            limit = electrical.to_amps(chosen.period.limit, chosen.profile.schedule.rate_unit, phases)
        ceiling = _winner(cp_max, t, by_level)
        if ceiling is not None:
            amps = electrical.to_amps(ceiling.period.limit, ceiling.profile.schedule.rate_unit,
                                      ceiling.period.number_phases) / max(cp_max_share, 1)
            limit = amps if limit is None else min(limit, amps)
            if phases is None:
                phases = ceiling.period.number_phases
        if limit is not None:
            limit = electrical.from_amps(limit, unit, phases)
        if raw and raw[-1][1:] == (limit, phases):
            continue
        raw.append((t, limit, phases))
    return raw


def live_limit(profiles: Iterable[ChargingProfile], connector_id: int, now: datetime, electrical: Electrical,
               transaction: Transaction | None = None, cp_max_share: int = 1) -> LiveLimit:
    """The current a connector may offer at `now` (None: unlimited) and the instant it next changes (exact,
    not rounded to the second). A limit below the minChargingRate of the Tx/TxDefault profile in force
    counts as 0: the EV would charge inefficiently, so it is paused instead."""
    profiles = tuple(profiles)
    lo = _ts(now)
    raw = _limits(profiles, connector_id, lo, lo + HORIZON_S, "A", electrical, transaction, cp_max_share)
    limit = raw[0][1]
    if limit is not None:
        minimum = _min_rate_a(profiles, connector_id, now, electrical, transaction)
        if minimum is not None and 0 < limit < minimum:
            limit = 0.0
    next_at = raw[1][0] if len(raw) > 1 else lo + HORIZON_S
    return LiveLimit(limit, datetime.fromtimestamp(next_at, UTC))


def _min_rate_a(profiles: tuple[ChargingProfile, ...], connector_id: int, now: datetime, electrical: Electrical,
                transaction: Transaction | None) -> float | None:
    t = _ts(now)
    tx_start = _tx_start(transaction)
    candidates = [p for p in profiles if p.connector_id in (0, connector_id) and p.purpose != CHARGE_POINT_MAX
                  and p.schedule.min_charging_rate is not None
                  and (p.purpose != TX_PROFILE or transaction is not None)]
    segs = [seg for p in candidates for seg in _segments(p, t, t + 1, tx_start)]
    tx = [seg for seg in segs if seg.profile.purpose == TX_PROFILE]
    chosen = _winner(tx or segs, t, lambda seg: (seg.profile.connector_id != 0, seg.profile.stack_level))
    if chosen is None:
        return None
    s = chosen.profile.schedule
    assert s.min_charging_rate is not None
    return electrical.to_amps(s.min_charging_rate, s.rate_unit, chosen.period.number_phases)


@dataclass
class ProfileSet:
    """The installed profiles with the operations SetChargingProfile / ClearChargingProfile need; a
    convenience over the functions above for the station (still pure: the caller persists `profiles`)."""

    profiles: tuple[ChargingProfile, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def set(self, profile: ChargingProfile, transaction: Transaction | None, for_remote_start: bool = False) -> str | None:
        reason = check_profile(profile, self.profiles, limits=self.limits, transaction=transaction,
                               for_remote_start=for_remote_start)
        if reason is None:
            self.profiles = install(self.profiles, profile)
        return reason

    def clear(self, **criteria) -> tuple[ChargingProfile, ...]:
        self.profiles, removed = clear(self.profiles, **criteria)
        return removed

    def end_transaction(self, connector_id: int) -> tuple[ChargingProfile, ...]:
        kept = end_transaction(self.profiles, connector_id)
        removed = tuple(p for p in self.profiles if p not in kept)
        self.profiles = kept
        return removed
