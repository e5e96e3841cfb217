"""OCPP 1.6 Smart Charging handlers: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule.

A mixin of agent.ocpp.v16.client._ChargePoint (the `ocpp` library finds @on handlers on any base class). The
handlers translate messages and ask the station (CsmsPort.set_charging_profile, ...); the rules are in
agent.core.smart_charging, the profile store and the limit that reaches the pilot in agent.station.station. The
chargingProfile of a RemoteStartTransaction goes to CsmsPort.remote_start with the request.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, Literal, overload

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from agent.core import smart_charging as sc
from agent.ocpp.v16.mixin_base import ChargePointMixin

# ---- chargingProfile on the wire (camelCase) <-> agent.core.smart_charging.ChargingProfile ------------


def parse_profile(connector_id: int, data: Any) -> sc.ChargingProfile:
    """A csChargingProfiles / chargingProfile object (camelCase, numbers possibly Decimal) → sc.ChargingProfile.
    Raises ProfileError for anything malformed; station-specific limits are checked by check_profile()."""
    if not isinstance(data, dict):
        raise sc.ProfileError("chargingProfile must be an object")
    purpose = data.get("chargingProfilePurpose")
    if purpose not in sc.PURPOSES:
        raise sc.ProfileError(f"unknown chargingProfilePurpose {purpose!r}")
    kind = data.get("chargingProfileKind")
    if kind not in sc.KINDS:
        raise sc.ProfileError(f"unknown chargingProfileKind {kind!r}")
    recurrency = data.get("recurrencyKind")
    if kind == "Recurring":
        if recurrency not in sc.RECURRENCY:
            raise sc.ProfileError(f"a Recurring profile needs recurrencyKind Daily or Weekly, got {recurrency!r}")
    elif recurrency is not None and recurrency not in sc.RECURRENCY:
        raise sc.ProfileError(f"unknown recurrencyKind {recurrency!r}")
    else:
        recurrency = None  # only meaningful for Recurring profiles
    raw = data.get("chargingSchedule")
    if not isinstance(raw, dict):
        raise sc.ProfileError("chargingSchedule is missing")
    unit = raw.get("chargingRateUnit")
    if unit not in sc.UNITS:
        raise sc.ProfileError(f"unknown chargingRateUnit {unit!r}")
    raw_periods = raw.get("chargingSchedulePeriod")
    if not isinstance(raw_periods, list) or not raw_periods:
        raise sc.ProfileError("chargingSchedulePeriod must list at least one period")
    periods = []
    for item in raw_periods:
        if not isinstance(item, dict):
            raise sc.ProfileError("a chargingSchedulePeriod must be an object")
        phases = _int(item, "numberPhases", required=False)
        if phases is not None and not 1 <= phases <= 3:
            raise sc.ProfileError(f"numberPhases must be 1, 2 or 3, got {phases}")
        start = _int(item, "startPeriod", minimum=0)
        periods.append(sc.SchedulePeriod(start, sc.floor_tenths(_number(item, "limit")), phases))
    if periods[0].start_period != 0:
        raise sc.ProfileError("the first period must start at 0 (errata 3.45)")
    if any(b.start_period <= a.start_period for a, b in zip(periods, periods[1:], strict=False)):
        raise sc.ProfileError("startPeriod values must increase")
    start_schedule = sc.parse_time(raw["startSchedule"], "startSchedule") if raw.get("startSchedule") else None
    if kind == "Recurring" and start_schedule is None:
        raise sc.ProfileError("a Recurring profile needs startSchedule")
    schedule = sc.ChargingSchedule(
        rate_unit=unit, periods=tuple(periods), duration=_int(raw, "duration", required=False, minimum=0),
        start_schedule=start_schedule, min_charging_rate=_number(raw, "minChargingRate", required=False),
    )
    valid_from = sc.parse_time(data["validFrom"], "validFrom") if data.get("validFrom") else None
    valid_to = sc.parse_time(data["validTo"], "validTo") if data.get("validTo") else None
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        raise sc.ProfileError("validTo must be after validFrom")
    profile = sc.ChargingProfile(
        id=_int(data, "chargingProfileId"), connector_id=connector_id,
        stack_level=_int(data, "stackLevel", minimum=0), purpose=purpose, kind=kind, schedule=schedule,
        recurrency_kind=recurrency, valid_from=valid_from, valid_to=valid_to,
        transaction_id=_int(data, "transactionId", required=False),
    )
    if purpose == sc.CHARGE_POINT_MAX and kind == "Relative":
        raise sc.ProfileError("a ChargePointMaxProfile cannot be Relative")
    return profile


def profile_to_ocpp(profile: sc.ChargingProfile) -> dict:
    """The csChargingProfiles object as OCPP puts it on the wire (camelCase); also the persisted form."""
    s = profile.schedule
    schedule: dict[str, Any] = {
        "chargingRateUnit": s.rate_unit,
        "chargingSchedulePeriod": [
            {"startPeriod": p.start_period, "limit": p.limit}
            | ({"numberPhases": p.number_phases} if p.number_phases is not None else {})
            for p in s.periods
        ],
    }
    if s.duration is not None:
        schedule["duration"] = s.duration
    if s.start_schedule is not None:
        schedule["startSchedule"] = sc.format_time(s.start_schedule)
    if s.min_charging_rate is not None:
        schedule["minChargingRate"] = s.min_charging_rate
    out: dict[str, Any] = {
        "chargingProfileId": profile.id,
        "stackLevel": profile.stack_level,
        "chargingProfilePurpose": profile.purpose,
        "chargingProfileKind": profile.kind,
        "chargingSchedule": schedule,
    }
    if profile.transaction_id is not None:
        out["transactionId"] = profile.transaction_id
    if profile.recurrency_kind is not None:
        out["recurrencyKind"] = profile.recurrency_kind
    if profile.valid_from is not None:
        out["validFrom"] = sc.format_time(profile.valid_from)
    if profile.valid_to is not None:
        out["validTo"] = sc.format_time(profile.valid_to)
    return out


# a required field is there or ProfileError: the overloads tell the type checker so
@overload
def _int(data: dict, name: str, *, required: Literal[True] = True, minimum: int | None = None) -> int: ...
@overload
def _int(data: dict, name: str, *, required: Literal[False], minimum: int | None = None) -> int | None: ...
def _int(data: dict, name: str, *, required: bool = True, minimum: int | None = None) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            raise sc.ProfileError(f"{name} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float) or value != int(value):
        raise sc.ProfileError(f"{name} must be an integer")
    number = int(value)
    if minimum is not None and number < minimum:
        raise sc.ProfileError(f"{name} must be >= {minimum}, got {number}")
    return number


@overload
def _number(data: dict, name: str, *, required: Literal[True] = True) -> float: ...
@overload
def _number(data: dict, name: str, *, required: Literal[False]) -> float | None: ...
def _number(data: dict, name: str, *, required: bool = True) -> float | None:
    value = data.get(name)
    if value is None:
        if required:
            raise sc.ProfileError(f"{name} is missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise sc.ProfileError(f"{name} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise sc.ProfileError(f"{name} must be a finite number >= 0, got {value}")
    return number


# requests whose chargingSchedulePeriod limits the schema restricts to multipleOf 0.1
_PROFILE_ACTIONS = {"SetChargingProfile": "csChargingProfiles", "RemoteStartTransaction": "chargingProfile"}


def tolerate_limits(action: str, payload: Any) -> None:
    """Round the limits of a charging profile down to 0.1 before schema validation: several CSMSs send
    two decimals (6.25 A), which the schema's multipleOf 0.1 would turn into a CALLERROR (ocpp-notes §1.4).
    Rounding down never offers more than the CSMS allowed. Leaves anything malformed to the validator."""
    field = _PROFILE_ACTIONS.get(action)
    if field is None or not isinstance(payload, dict):
        return
    profile = payload.get(field)
    schedule = profile.get("chargingSchedule") if isinstance(profile, dict) else None
    periods = schedule.get("chargingSchedulePeriod") if isinstance(schedule, dict) else None
    if not isinstance(periods, list):
        return
    for period in periods:
        limit = period.get("limit") if isinstance(period, dict) else None
        if isinstance(limit, float | Decimal) and not isinstance(limit, bool) and math.isfinite(limit) \
                and limit >= 0:
            period["limit"] = math.floor(float(limit) * 10 + 1e-9) / 10


class SmartChargingHandlers(ChargePointMixin):
    """Mixin: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule (TC_056-TC_082_CS)."""

    @on(Action.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict, **_):
        if connector_id != 0 and not self._known_connector(connector_id):
            return call_result.SetChargingProfile(status="Rejected")
        profile = snake_to_camel_case(cs_charging_profiles)  # incoming nested data is snake_case
        return call_result.SetChargingProfile(status=self._station.set_charging_profile(connector_id, profile))

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(self, id: int | None = None, connector_id: int | None = None,  # noqa: A002
                                  charging_profile_purpose: str | None = None, stack_level: int | None = None, **_):
        status = self._station.clear_charging_profile(id, connector_id, charging_profile_purpose, stack_level)
        return call_result.ClearChargingProfile(status=status)

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(self, connector_id: int, duration: int, charging_rate_unit: str | None = None,
                                  **_):
        schedule = None
        if connector_id == 0 or self._known_connector(connector_id):
            schedule = self._station.composite_schedule(connector_id, duration, charging_rate_unit)
        if schedule is None:
            return call_result.GetCompositeSchedule(status="Rejected")
        return call_result.GetCompositeSchedule(status="Accepted", connector_id=connector_id,
                                                schedule_start=schedule["startSchedule"],
                                                charging_schedule=schedule)
