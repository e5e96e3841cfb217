"""OCPP 1.6 Smart Charging handlers: SetChargingProfile, ClearChargingProfile, GetCompositeSchedule.

A mixin of agent.ocpp.v16.client._ChargePoint (the `ocpp` library finds @on handlers on any base class). The
handlers translate messages and ask the station (CsmsPort.set_charging_profile, ...); the rules are in
agent.core.smart_charging, the profile store and the limit that reaches the pilot in agent.station.station. The
chargingProfile of a RemoteStartTransaction goes to CsmsPort.remote_start with the request.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

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


class SmartChargingHandlers:
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
