"""The transaction start/stop policy (agent/core/transaction_policy.py): OCPP 1.6's rule is one setting of it,
and OCPP 2.0.1's TxStartPoint/TxStopPoint lists are others."""

from __future__ import annotations

import pytest

from agent.core.transaction_policy import (
    PolicyError,
    SessionConditions,
    TransactionPolicy,
    TxPoint,
    plugged_and_authorized,
)

IDLE = SessionConditions(ev_connected=False, authorized=False)
PLUGGED = SessionConditions(ev_connected=True, authorized=False)
AUTHORIZED = SessionConditions(ev_connected=False, authorized=True)
READY = SessionConditions(ev_connected=True, authorized=True)
CHARGING = SessionConditions(ev_connected=True, authorized=True, energy_transfer=True)


def test_the_ocpp16_rule_starts_only_once_plugged_in_and_authorized():
    policy = plugged_and_authorized()
    assert [policy.starts(c) for c in (IDLE, PLUGGED, AUTHORIZED, READY)] == [False, False, False, True]


def test_the_ocpp16_rule_ends_at_unplug_only_with_stop_on_ev_side_disconnect():
    seen = plugged_and_authorized().reached(READY, frozenset())
    unplugged = SessionConditions(ev_connected=False, authorized=True)
    assert plugged_and_authorized(stop_on_unplug=True).ends(unplugged, seen) is TxPoint.EV_CONNECTED
    keep = plugged_and_authorized(stop_on_unplug=False)
    assert keep.ends(unplugged, keep.reached(READY, frozenset())) is None
    assert keep.ends(PLUGGED, keep.reached(READY, frozenset())) is TxPoint.AUTHORIZED  # deauthorized


def test_2_0_1_start_at_ev_connected_starts_before_authorization():
    policy = TransactionPolicy.parse("ev_connected", "ev_connected")
    assert policy.starts(PLUGGED) and not policy.starts(AUTHORIZED)


def test_any_start_point_starts_and_any_reached_stop_point_ends():
    policy = TransactionPolicy.parse("authorized, ev_connected", "energy_transfer")
    assert policy.starts(PLUGGED) and policy.starts(AUTHORIZED)
    not_yet = policy.reached(READY, frozenset())
    assert policy.ends(READY, not_yet) is None  # energy never flowed: energy_transfer cannot have ended
    seen = policy.reached(CHARGING, not_yet)
    assert policy.ends(READY, seen) is TxPoint.ENERGY_TRANSFER  # the EV stopped drawing energy


@pytest.mark.parametrize("start, stop, words", [
    ("", "ev_connected", "at least one start point"),
    ("energy_transfer", "ev_connected", "energy_transfer cannot start"),
    ("ev_connected,ev_connected", "authorized", "listed twice"),
    ("parking_bay", "authorized", "unknown transaction start point 'parking_bay'"),
    ("authorized", "sometimes", "unknown transaction stop point 'sometimes'"),
])
def test_a_policy_that_cannot_be_honoured_is_refused_with_the_reason(start, stop, words):
    with pytest.raises(PolicyError, match=words):
        TransactionPolicy.parse(start, stop)
