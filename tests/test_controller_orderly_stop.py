"""Orderly stops in the pure session controller (IEC 61851-1:2017 Annex A, Table A.6 sequence 10.2): a stop
that is not a safety cause switches the PWM off (x1) at once and keeps the contactor closed while the EV still
draws (state C), until the EV opens S2 (C->B) or `stop_under_load_timeout_s` (6 s) has passed; a safety cause
during that wind-down opens the contactor in the same step. Driven to the millisecond with the injected
clock."""

from __future__ import annotations

import pytest

from agent.core.controller import (
    AuthorizationResult,
    AvailabilityChanged,
    ChargingLimitChanged,
    ConnectorStatus,
    ContactorFeedback,
    EndTransaction,
    Fault,
    FaultChanged,
    LockFeedback,
    PilotChanged,
    SetContactor,
    SetPilot,
    StopReason,
    StopRequested,
    Tick,
    TokenPresented,
    TransactionConfirmed,
    UnlockRequested,
)
from hal.interfaces import CpState, PilotMode
from tests.test_controller import Bench, of
from tests.test_controller_lock import LockBench

X1 = SetPilot(PilotMode.X1, 100.0)
STOPPED_AT = 10.0  # s, when the orderly stop arrives (a value the clock can hold exactly, like 16.0)


def charging(parent: str | None = None, **settings) -> Bench:
    """A session for TAG1 (of parent id `parent`) charging at 16 A, the EV in C, the contactor closed and
    reading closed, at 10 s."""
    b = Bench(**settings)
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True, parent))
    b.send(PilotChanged(CpState.C))
    b.step()  # the diode is checked under the PWM: the contactor closes
    b.step()  # its mirror contact follows
    assert b.c.contactor_commanded and b.c.feedback_closed
    b.now = STOPPED_AT
    return b


def opens(commands) -> bool:
    return SetContactor(False) in commands


# each orderly stop cause: the settings it needs, the events that bring it, whether the transaction ends
ORDERLY = {
    "remote stop": ({}, [StopRequested(StopReason.REMOTE)], True),
    "local stop (own card)": ({}, [TokenPresented("TAG1")], True),
    "local stop (card of the same parent id)": (
        {"parent": "FLEET"}, [TokenPresented("TAG2"), AuthorizationResult("TAG2", True, "FLEET")], True),
    "soft reset": ({}, [StopRequested(StopReason.SOFT_RESET)], True),
    "hard reset": ({}, [StopRequested(StopReason.HARD_RESET)], True),
    "StartTransaction refused, StopTransactionOnInvalidId": (
        {"stop_on_invalid_id": True}, [TransactionConfirmed(False)], True),
    "StartTransaction refused, energy blocked": ({"stop_on_invalid_id": False}, [TransactionConfirmed(False)], False),
    "charging limit below 6 A": ({}, [ChargingLimitChanged(5.9)], False),
    "unlock command": ({}, [UnlockRequested()], True),
}


def charging_then_stop(cause: str) -> tuple[Bench, list]:
    settings, events, _ = ORDERLY[cause]
    b = charging(**settings)
    out = []
    for event in events:
        out += b.send(event, at=STOPPED_AT)
    return b, out


@pytest.mark.parametrize("cause", list(ORDERLY))
def test_orderly_stop_drops_the_pwm_at_once_and_keeps_the_contactor_closed(cause):
    b, out = charging_then_stop(cause)
    ends_transaction = ORDERLY[cause][2]
    assert of(out, SetPilot) == [X1], "the PWM goes off in the step that stops"
    assert not of(out, SetContactor), "the EV still draws: no break under load yet"
    assert b.c.contactor_commanded and b.c.view().pilot_mode is PilotMode.X1
    assert bool(of(out, EndTransaction)) == ends_transaction
    assert b.c.transaction_active != ends_transaction


@pytest.mark.parametrize("cause", list(ORDERLY))
def test_orderly_stop_opens_in_the_step_the_ev_leaves_c(cause):
    b, _ = charging_then_stop(cause)
    for t in (10.010, 11.0, 12.5):  # control steps while the EV reduces its current
        assert not opens(b.send(Tick(), at=t))
    out = b.send(PilotChanged(CpState.B), at=12.503)
    assert out[0] == SetContactor(False), "opens in the same step, before anything else"
    assert not b.c.contactor_commanded


@pytest.mark.parametrize("cause", list(ORDERLY))
def test_orderly_stop_opens_under_load_at_exactly_six_seconds_if_the_ev_stays_in_c(cause):
    b, _ = charging_then_stop(cause)
    assert not opens(b.send(Tick(), at=STOPPED_AT + 3.0))
    assert not opens(b.send(Tick(), at=15.999)), "5.999 s after the stop: the EV still has 1 ms"
    assert b.c.contactor_commanded
    out = b.send(Tick(), at=16.0)
    assert out[0] == SetContactor(False), "6.000 s after the stop: opened, even under load"
    out = b.send(Tick(), at=16.010)
    assert not of(out, SetContactor) and not b.c.contactor_commanded


def test_the_six_seconds_are_configurable():
    b = charging(stop_under_load_timeout_s=2.5)
    b.send(StopRequested(StopReason.REMOTE), at=STOPPED_AT)
    assert not opens(b.send(Tick(), at=12.499))
    assert opens(b.send(Tick(), at=12.5))


def test_a_second_orderly_cause_during_the_wind_down_does_not_extend_it():
    """A limit below 6 A, then a remote stop 3 s later: still 6 s from the first, not from the second."""
    b = charging()
    b.send(ChargingLimitChanged(5.0), at=STOPPED_AT)
    out = b.send(StopRequested(StopReason.REMOTE), at=13.0)
    assert of(out, EndTransaction) and not of(out, SetContactor)
    assert not opens(b.send(Tick(), at=15.999))
    assert opens(b.send(Tick(), at=16.0))


def test_charging_limit_below_6_amps_winds_down_and_the_session_stays_suspended():
    b = charging()
    out = b.send(ChargingLimitChanged(5.9), at=STOPPED_AT)
    assert of(out, SetPilot) == [X1] and not of(out, SetContactor) and not of(out, EndTransaction)
    assert b.c.view().status is ConnectorStatus.SUSPENDED_EVSE and b.c.view().offered_current_a == 0
    assert not opens(b.send(Tick(), at=15.999))
    assert opens(b.send(Tick(), at=16.0))
    assert b.c.transaction_active and b.c.view().status is ConnectorStatus.SUSPENDED_EVSE


# each safety cause during the wind-down, as the events that bring it, on a bench with or without a lock
SAFETY = {
    "residual current": [FaultChanged(Fault.RCD, True)],
    "journal not writable": [FaultChanged(Fault.STORAGE, True)],
    "meter dead": [FaultChanged(Fault.METER, True)],
    "device unreadable": [FaultChanged(Fault.DEVICE, True)],
    "unplugged": [PilotChanged(CpState.A)],
    "C->B": [PilotChanged(CpState.B)],
    "state D without ventilation": [PilotChanged(CpState.D)],
    "pilot shorted (E)": [PilotChanged(CpState.E)],
    "pilot reads F while not driven to F": [PilotChanged(CpState.F)],
}


@pytest.mark.parametrize("safety", list(SAFETY))
@pytest.mark.parametrize("orderly", ["remote stop", "charging limit below 6 A"])
def test_a_safety_cause_during_the_wind_down_opens_in_the_same_step(orderly, safety):
    b, _ = charging_then_stop(orderly)
    b.send(Tick(), at=12.0)
    assert b.c.contactor_commanded
    out = []
    for event in SAFETY[safety]:
        out += b.send(event, at=12.003)
    assert out[0] == SetContactor(False), f"{safety} during the wind-down opens at once"


def test_the_lock_reading_open_during_the_wind_down_opens_in_the_same_step():
    b = LockBench()
    b.start()
    b.step()
    b.send(PilotChanged(CpState.C))
    b.run(0.05)
    assert b.c.contactor_commanded and b.c.feedback_closed and b.c.lock_feedback
    b.send(StopRequested(StopReason.REMOTE), at=STOPPED_AT)
    assert b.c.contactor_commanded
    out = b.send(LockFeedback(False), at=12.003)
    assert out[0] == SetContactor(False)


def test_mirror_contact_opening_by_itself_during_the_wind_down_is_a_contactor_fault():
    b = charging(feedback_timeout_s=0.25)
    b.send(StopRequested(StopReason.REMOTE), at=STOPPED_AT)
    out = b.send(ContactorFeedback(False), at=11.0)
    assert out[0] == SetContactor(False) and Fault.CONTACTOR in b.c.faults


def test_unavailable_after_the_transaction_drops_to_x1_first_and_f_only_once_open():
    b = charging()
    b.send(AvailabilityChanged(False), at=9.0)  # scheduled: the transaction runs on
    out = b.send(StopRequested(StopReason.REMOTE), at=STOPPED_AT)
    assert of(out, SetPilot) == [X1] and not of(out, SetContactor)
    out = b.send(PilotChanged(CpState.B), at=11.0)
    assert out[0] == SetContactor(False)
    b.step()
    assert b.c.view().pilot_mode is PilotMode.F and b.c.view().status is ConnectorStatus.UNAVAILABLE
