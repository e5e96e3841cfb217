"""agent.core.smart_charging: profile validation, stacking and the composite schedule, with time passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from agent.core import smart_charging as sc
from agent.core.controller import ChargingLimitChanged, ConnectorStatus, PilotChanged, SetContactor, SetPilot
from agent.ocpp.v16.smart_charging import parse_profile, profile_to_ocpp
from hal.interfaces import CpState, PilotMode
from tests.test_controller import Bench, of

T0 = datetime(2025, 3, 10, 12, 0, 0, tzinfo=UTC)  # a Monday
E3 = sc.Electrical(phases=3, voltage_v=230.0)


def profile(pid=1, purpose=sc.TX_DEFAULT, kind="Absolute", connector=1, stack=0, periods=((0, 16.0),),
            unit="A", start=T0, duration=None, **extra) -> dict:
    schedule = {"chargingRateUnit": unit,
                "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim} for s, lim in periods]}
    if start is not None:
        schedule["startSchedule"] = start.isoformat().replace("+00:00", "Z")
    if duration is not None:
        schedule["duration"] = duration
    schedule.update(extra.pop("schedule", {}))
    return {"chargingProfileId": pid, "stackLevel": stack, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": schedule, **extra}


def parsed(connector=1, **kw) -> sc.ChargingProfile:
    return parse_profile(connector, profile(connector=connector, **kw))


def limit_at(profiles, at, connector=1, tx=None, electrical=E3, share=1):
    return sc.live_limit(profiles, connector, at, electrical, tx, share).limit_a


# ---- validation (SetChargingProfile answers) -------------------------------------------------------


def test_round_trip_through_the_wire_form():
    p = parsed(kind="Recurring", recurrencyKind="Daily", duration=3600, validFrom="2025-03-01T00:00:00Z",
               schedule={"minChargingRate": 6})
    assert parse_profile(1, profile_to_ocpp(p)) == p


def test_decimal_limits_from_the_library_are_floats_rounded_down_to_tenths():
    p = parsed(periods=((0, Decimal("16.5")), (60, 6.29)))
    assert [x.limit for x in p.schedule.periods] == [16.5, 6.2]


@pytest.mark.parametrize("change, reason", [
    (dict(periods=((10, 16),)), "start at 0"),
    (dict(periods=((0, 16), (0, 10))), "increase"),
    (dict(periods=((0, -1),)), ">= 0"),
    (dict(kind="Recurring"), "recurrencyKind"),
    (dict(kind="Recurring", recurrencyKind="Daily", start=None), "startSchedule"),
    (dict(validFrom="2025-03-10T12:00:00Z", validTo="2025-03-10T11:00:00Z"), "validTo"),
    (dict(unit="kW"), "chargingRateUnit"),
    (dict(purpose=sc.CHARGE_POINT_MAX, kind="Relative", connector=0), "Relative"),
])
def test_malformed_profiles_are_refused_with_a_reason(change, reason):
    with pytest.raises(sc.ProfileError, match=reason):
        parsed(**change)


DEFAULT_LIMITS = sc.Limits()


def check(p, installed=(), tx=None, limits=DEFAULT_LIMITS, remote=False):
    return sc.check_profile(p, installed, limits=limits, transaction=tx, for_remote_start=remote)


def test_purpose_and_connector_rules():
    """TC_058_1_CS / TC_058_2_CS: a TxProfile needs a running transaction with that id."""
    tx = sc.Transaction(T0, transaction_id=7)
    assert "connector 0" in check(parsed(purpose=sc.CHARGE_POINT_MAX, connector=1))
    assert check(parsed(purpose=sc.CHARGE_POINT_MAX, connector=0)) is None
    assert check(parsed(purpose=sc.TX_DEFAULT, connector=0)) is None
    assert "no transaction" in check(parsed(purpose=sc.TX_PROFILE))
    assert "does not run" in check(parsed(purpose=sc.TX_PROFILE, transactionId=8), tx=tx)
    assert check(parsed(purpose=sc.TX_PROFILE, transactionId=7), tx=tx) is None
    assert check(parsed(purpose=sc.TX_PROFILE), tx=tx) is None
    assert "needs a connector" in check(parsed(purpose=sc.TX_PROFILE, connector=0), tx=tx)


def test_remote_start_profile_must_be_a_tx_profile_without_transaction_id():
    """TC_059_CS / TC_060_CS."""
    assert check(parsed(purpose=sc.TX_PROFILE), remote=True) is None
    assert "must be a TxProfile" in check(parsed(purpose=sc.TX_DEFAULT), remote=True)
    assert "transaction id" in check(parsed(purpose=sc.TX_PROFILE, transactionId=3), remote=True)


def test_station_limits_are_enforced():
    limits = sc.Limits(max_stack_level=2, max_periods=2, max_profiles=2, allowed_units=("A",))
    assert "stackLevel" in check(parsed(stack=3), limits=limits)
    assert "periods" in check(parsed(periods=((0, 6), (10, 7), (20, 8))), limits=limits)
    assert "not supported" in check(parsed(unit="W", periods=((0, 4000),)), limits=limits)
    two = (parsed(pid=1, stack=0), parsed(pid=2, stack=1))
    assert "MaxChargingProfilesInstalled" in check(parsed(pid=3, stack=2), two, limits=limits)
    assert check(parsed(pid=1, stack=2), two, limits=limits) is None  # replaces one: still two


# ---- install / clear ---------------------------------------------------------------------------


def test_same_id_or_same_connector_purpose_and_stack_level_replaces():
    a = parsed(pid=1, stack=0, periods=((0, 10),))
    b = parsed(pid=2, stack=1)
    installed = sc.install(sc.install((), a), b)
    assert sc.install(installed, parsed(pid=1, stack=5)) == (b, parsed(pid=1, stack=5))
    replaced = sc.install(installed, parsed(pid=9, stack=1, periods=((0, 8),)))
    assert [p.id for p in replaced] == [1, 9]
    other_connector = sc.install(installed, parsed(pid=10, stack=1, connector=0))
    assert [p.id for p in other_connector] == [1, 2, 10]


def test_clear_by_id_ignores_other_criteria_else_matches_all_given():
    """TC_067_CS."""
    ps = (parsed(pid=1, stack=0), parsed(pid=2, stack=1), parsed(pid=3, purpose=sc.CHARGE_POINT_MAX, connector=0),
          parsed(pid=4, connector=0, stack=1))
    kept, removed = sc.clear(ps, profile_id=2, connector_id=0)
    assert [p.id for p in removed] == [2]
    kept, removed = sc.clear(ps, connector_id=0, purpose=sc.TX_DEFAULT)
    assert [p.id for p in removed] == [4]
    kept, removed = sc.clear(ps, stack_level=1)
    assert [p.id for p in removed] == [2, 4]
    assert sc.clear(ps, profile_id=99)[1] == ()
    assert sc.clear(ps)[0] == ()


def test_end_of_transaction_removes_only_its_tx_profiles():
    ps = (parsed(pid=1, purpose=sc.TX_PROFILE), parsed(pid=2), parsed(pid=3, purpose=sc.TX_PROFILE, connector=2))
    assert [p.id for p in sc.end_transaction(ps, 1)] == [2, 3]


# ---- limits over time ----------------------------------------------------------------------------


def test_absolute_periods_change_exactly_at_their_boundaries():
    p = parsed(periods=((0, 16), (600, 10), (1200, 0)))
    assert limit_at([p], T0 - timedelta(seconds=1)) is None  # before startSchedule: no limit
    assert limit_at([p], T0) == 16
    assert limit_at([p], T0 + timedelta(seconds=599)) == 16
    assert limit_at([p], T0 + timedelta(seconds=600)) == 10
    assert limit_at([p], T0 + timedelta(seconds=1199.5)) == 10
    assert limit_at([p], T0 + timedelta(seconds=1200)) == 0
    live = sc.live_limit([p], 1, T0 + timedelta(seconds=30), E3)
    assert live.next_change == T0 + timedelta(seconds=600)


def test_duration_ends_the_schedule():
    p = parsed(periods=((0, 10),), duration=60)
    assert limit_at([p], T0 + timedelta(seconds=59)) == 10
    assert limit_at([p], T0 + timedelta(seconds=60)) is None


def test_higher_stack_level_wins_and_falls_back_when_it_ends():
    """TC_072_CS: stacking."""
    base = parsed(pid=1, stack=0, periods=((0, 16),))
    top = parsed(pid=2, stack=1, periods=((0, 8),), duration=300)
    assert limit_at([base, top], T0 + timedelta(seconds=10)) == 8
    assert limit_at([base, top], T0 + timedelta(seconds=300)) == 16
    schedule = sc.composite([base, top], 1, T0, 600, "A", E3)
    assert [(p.start_period, p.limit) for p in schedule.periods] == [(0, 8), (300, 16)]


def test_valid_from_and_valid_to_bound_a_profile():
    base = parsed(pid=1, stack=0, periods=((0, 16),))
    window = parsed(pid=2, stack=1, periods=((0, 6),), validFrom="2025-03-10T13:00:00Z",
                    validTo="2025-03-10T14:00:00Z")
    assert limit_at([base, window], T0 + timedelta(minutes=59, seconds=59)) == 16
    assert limit_at([base, window], T0 + timedelta(hours=1)) == 6
    assert limit_at([base, window], T0 + timedelta(hours=2)) == 16
    assert sc.live_limit([base, window], 1, T0, E3).next_change == T0 + timedelta(hours=1)


def test_recurring_daily_wraps_around_midnight():
    start = datetime(2025, 3, 1, 22, 0, tzinfo=UTC)  # 22:00-06:00 at 10 A, otherwise 32 A, every day
    p = parsed(kind="Recurring", recurrencyKind="Daily", start=start, periods=((0, 10), (8 * 3600, 32)))
    assert limit_at([p], datetime(2025, 3, 10, 21, 59, 59, tzinfo=UTC)) == 32
    assert limit_at([p], datetime(2025, 3, 10, 22, 0, tzinfo=UTC)) == 10
    assert limit_at([p], datetime(2025, 3, 11, 0, 30, tzinfo=UTC)) == 10
    assert limit_at([p], datetime(2025, 3, 11, 5, 59, 59, tzinfo=UTC)) == 10
    assert limit_at([p], datetime(2025, 3, 11, 6, 0, tzinfo=UTC)) == 32
    live = sc.live_limit([p], 1, datetime(2025, 3, 11, 12, 0, tzinfo=UTC), E3)
    assert live.next_change == datetime(2025, 3, 11, 22, 0, tzinfo=UTC)


def test_recurring_with_a_short_duration_falls_back_each_cycle():
    """errata 3.43/3.44: outside the duration the lower stack level (or no limit) applies."""
    base = parsed(pid=1, stack=0, periods=((0, 20),))
    daily = parsed(pid=2, stack=1, kind="Recurring", recurrencyKind="Daily", start=T0, duration=3600,
                   periods=((0, 6),))
    day2 = T0 + timedelta(days=1)
    assert limit_at([base, daily], day2 + timedelta(minutes=30)) == 6
    assert limit_at([base, daily], day2 + timedelta(hours=1)) == 20
    assert limit_at([daily], day2 + timedelta(hours=1)) is None


def test_recurring_weekly():
    p = parsed(kind="Recurring", recurrencyKind="Weekly", start=T0, duration=86400, periods=((0, 8),))
    assert limit_at([p], T0 + timedelta(days=7, hours=3)) == 8  # next Monday
    assert limit_at([p], T0 + timedelta(days=3)) is None


def test_relative_profile_counts_from_the_transaction_start():
    p = parsed(kind="Relative", start=None, periods=((0, 6), (120, 16)))
    tx = sc.Transaction(started_at=T0 + timedelta(minutes=5))
    assert limit_at([p], T0 + timedelta(minutes=6), tx=tx) == 6
    assert limit_at([p], T0 + timedelta(minutes=7), tx=tx) == 16
    assert limit_at([p], T0 + timedelta(minutes=6, seconds=59), tx=tx) == 6
    # without a transaction: as if one started now
    assert limit_at([p], T0 + timedelta(minutes=7)) == 6


def test_watts_are_converted_with_phases_and_voltage():
    p = parsed(unit="W", periods=((0, 6900),))
    assert limit_at([p], T0) == pytest.approx(10.0)  # 6900 W / (3 x 230 V)
    assert limit_at([p], T0, electrical=sc.Electrical(1, 230.0)) == pytest.approx(30.0)
    assert limit_at([p], T0, electrical=sc.Electrical(3, 220.0)) == pytest.approx(6900 / 660)
    one_phase = parsed(unit="W", periods=((0, 2300),))
    one_phase = parse_profile(1, {**profile_to_ocpp(one_phase), "chargingSchedule": {
        "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 2300, "numberPhases": 1}],
        "startSchedule": "2025-03-10T12:00:00Z"}})
    assert limit_at([one_phase], T0) == pytest.approx(10.0)
    # numberPhases above what the connector has: the connector's phases (errata 3.34)
    three_on_single = sc.Electrical(1, 230.0)
    assert three_on_single.to_amps(2300, "W", 3) == pytest.approx(10.0)


def test_composite_is_the_minimum_of_charge_point_max_and_the_transaction_limit():
    """TC_066_CS: GetCompositeSchedule merges ChargePointMaxProfile and the Tx limits per interval."""
    cp_max = parsed(pid=1, purpose=sc.CHARGE_POINT_MAX, connector=0, periods=((0, 20), (300, 8)))
    default = parsed(pid=2, connector=0, periods=((0, 16), (600, 32)))
    tx_profile = parsed(pid=3, purpose=sc.TX_PROFILE, stack=0, periods=((0, 12),), duration=900)
    tx = sc.Transaction(T0, 5)
    s = sc.composite([cp_max, default, tx_profile], 1, T0, 1200, "A", E3, tx)
    assert [(p.start_period, p.limit) for p in s.periods] == [(0, 12), (300, 8)]
    s = sc.composite([cp_max, default], 1, T0, 1200, "A", E3)
    assert [(p.start_period, p.limit) for p in s.periods] == [(0, 16), (300, 8)]
    # without a transaction a TxProfile does not count; connector 0 shows the ChargePointMaxProfile alone
    s = sc.composite([cp_max, default, tx_profile], 0, T0, 1200, "A", E3)
    assert [(p.start_period, p.limit) for p in s.periods] == [(0, 20), (300, 8)]
    # in W and shared by two connectors charging
    s = sc.composite([cp_max], 1, T0, 600, "W", E3, tx, cp_max_share=2)
    assert [(p.start_period, round(p.limit)) for p in s.periods] == [(0, 6900), (300, 2760)]


def test_connector_tx_default_overrides_connector_zero():
    zero = parsed(pid=1, connector=0, stack=3, periods=((0, 8),))
    own = parsed(pid=2, connector=1, stack=0, periods=((0, 12),))
    assert limit_at([zero, own], T0) == 12
    assert limit_at([zero, own], T0, connector=2) == 8


def test_composite_wire_form_fills_unlimited_time_and_caps_at_the_hardware():
    p = parsed(periods=((0, 10), (60, 40)), duration=120)
    s = sc.composite([p], 1, T0, 300, "A", E3)
    wire = s.to_ocpp(default_limit=32.0)
    assert wire["startSchedule"] == "2025-03-10T12:00:00Z" and wire["duration"] == 300
    assert wire["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10.0}, {"startPeriod": 60, "limit": 32.0}]


def test_min_charging_rate_pauses_instead_of_charging_inefficiently():
    p = parsed(periods=((0, 10), (60, 5)), schedule={"minChargingRate": 8})
    assert limit_at([p], T0) == 10
    assert limit_at([p], T0 + timedelta(seconds=60)) == 0


# ---- the controller's side: ChargingLimitChanged ---------------------------------------------------


def charging_bench() -> Bench:
    b = Bench(max_current_a=16.0)
    b.charging_session()
    return b


def test_controller_offers_the_lower_of_its_limit_and_the_schedule():
    b = charging_bench()
    assert b.c.view().offered_current_a == 16 and b.c.view().status is ConnectorStatus.CHARGING
    b.send(ChargingLimitChanged(10.0))
    assert b.c.view().offered_current_a == 10 and b.c.view().duty_percent == pytest.approx(16.67)
    assert b.c.contactor_commanded and b.c.view().status is ConnectorStatus.CHARGING
    b.send(ChargingLimitChanged(40.0))
    assert b.c.view().offered_current_a == 16


def test_controller_suspends_below_6_amps_and_resumes():
    """Below 6 A nothing can be offered: x1 at once, and the contactor opens when the EV stops drawing (an
    orderly stop, IEC 61851-1 Table A.6 seq. 10.2), not under its load; the session goes on."""
    b = charging_bench()
    out = b.send(ChargingLimitChanged(5.9))
    view = b.c.view()
    assert of(out, SetPilot) == [SetPilot(PilotMode.X1, 100.0)] and not of(out, SetContactor)
    assert view.status is ConnectorStatus.SUSPENDED_EVSE and view.pilot_mode is PilotMode.X1
    assert view.transaction_active and view.offered_current_a == 0
    b.step()
    out = b.send(PilotChanged(CpState.B))  # the EV sees no PWM and stops asking
    assert out[0] == SetContactor(False)
    b.step(2.0)
    b.send(ChargingLimitChanged(None))
    assert b.c.view().pilot_mode is PilotMode.PWM
    b.send(PilotChanged(CpState.C))
    b.step()  # the diode is checked under the new PWM, then the contactor closes
    assert b.c.view().status is ConnectorStatus.CHARGING and b.c.contactor_commanded


def test_relative_profile_applies_from_a_transaction_start_within_a_second():
    """A transaction that starts at x.3 s is limited at once, not only from the next whole second; its
    periods count from the whole second it started in, like OCPP times and composite windows, so a
    composite asked for right after the start shows no gap before the profile."""
    p = parsed(kind="Relative", start=None, periods=((0, 11), (60, 7)))
    started = T0 + timedelta(seconds=0.3)
    live = sc.live_limit([p], 1, started, E3, sc.Transaction(started))
    assert live.limit_a == 11 and live.next_change == T0 + timedelta(seconds=60)
    schedule = sc.composite([p], 1, started + timedelta(seconds=0.2), 120, "A", E3, sc.Transaction(started))
    assert [(c.start_period, c.limit) for c in schedule.periods] == [(0, 11), (60, 7)]
