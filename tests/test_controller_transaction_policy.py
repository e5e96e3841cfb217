"""The session controller under other transaction policies than 1.6's (agent.core.transaction_policy): the
same controller starts and ends transactions where 2.0.1's TxStartPoint/TxStopPoint say, and the safety rules
do not move: energy only to a connected EV with a recorded, authorized transaction."""

from __future__ import annotations

from agent.core.controller import (
    AuthorizationResult,
    BeginTransaction,
    EndTransaction,
    PilotChanged,
    ResumeTransaction,
    SetContactor,
    StopReason,
    TokenPresented,
)
from agent.core.transaction_policy import TransactionPolicy
from hal.interfaces import CpState, PilotMode
from tests.test_controller import Bench, of


def authorized_without_ev(policy: TransactionPolicy, **settings) -> tuple[Bench, list]:
    b = Bench(transaction_policy=policy, **settings)
    b.send(PilotChanged(CpState.A))
    b.send(TokenPresented("TAG1"))
    return b, b.send(AuthorizationResult("TAG1", True))


def test_start_at_authorized_begins_the_transaction_before_the_ev_is_plugged_in_and_offers_nothing():
    b, out = authorized_without_ev(TransactionPolicy.parse("authorized", "ev_connected, authorized"))
    assert of(out, BeginTransaction) == [BeginTransaction("TAG1", None)]
    b.step()
    assert b.c.view().pilot_mode is not PilotMode.PWM and not b.c.view().contactor_closed
    b.send(PilotChanged(CpState.B))
    b.step()
    assert b.c.view().pilot_mode is PilotMode.PWM  # connected now: the same transaction offers energy
    b.send(PilotChanged(CpState.C))
    b.step()
    b.step()
    assert b.c.view().contactor_closed and b.c.transaction_active
    assert len(of([c for _, c in b.log], BeginTransaction)) == 1


def test_a_transaction_started_at_authorization_ends_when_no_ev_comes_within_the_connection_timeout():
    b, _ = authorized_without_ev(TransactionPolicy.parse("authorized", "ev_connected"), connection_timeout_s=30.0)
    assert not of(b.step(29.0), EndTransaction)
    out = b.step(1.0)
    assert of(out, EndTransaction) == [EndTransaction(StopReason.TIMEOUT, None)]
    assert not b.c.transaction_active


def test_stop_at_energy_transfer_ends_when_the_ev_stops_drawing_but_not_before_it_ever_drew():
    b = Bench(transaction_policy=TransactionPolicy.parse("power_path_closed", "energy_transfer"))
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True))
    for _ in range(3):
        assert not of(b.step(), EndTransaction)  # plugged, authorized, no energy yet: it has not ended
    b.send(PilotChanged(CpState.C))
    b.step()
    b.step()
    assert b.c.view().contactor_closed
    out = b.send(PilotChanged(CpState.B))  # the EV is full and opens S2
    assert out[0] == SetContactor(False)
    assert of(out, EndTransaction) == [EndTransaction(StopReason.STOPPED_BY_EV, None)]


def test_the_1_6_rule_is_one_setting_of_the_policy_unplugging_ends_it_with_ev_disconnected():
    b = Bench()  # the default: plugged-in + authorized, StopTransactionOnEVSideDisconnect
    b.charging_session()
    out = b.send(PilotChanged(CpState.A))
    assert of(out, EndTransaction) == [EndTransaction(StopReason.EV_DISCONNECTED, None)]


def test_a_resumed_transaction_is_not_ended_by_the_connection_timeout_while_the_pilot_is_not_yet_known():
    b = Bench(connection_timeout_s=30.0)  # the 1.6 rule
    b.send(ResumeTransaction("TAG1"))  # after a restart, before the first pilot sample
    assert not of(b.step(31.0), EndTransaction) and b.c.transaction_active
    b.send(PilotChanged(CpState.B))
    assert b.c.transaction_active
    assert of(b.send(PilotChanged(CpState.A)), EndTransaction) == [EndTransaction(StopReason.EV_DISCONNECTED, None)]
