"""The connector lock in the pure session controller, driven with an injected clock: lock before the
transaction starts (OCTT TC_024_CS), the lock-feedback deadline, UnlockConnector (TC_017/TC_018/TC_030) and
UnlockConnectorOnEVSideDisconnect (TC_005_1/TC_005_2), plus the status-LED mapping."""

from __future__ import annotations

import pytest

from agent.core.controller import (
    AuthorizationResult,
    BeginTransaction,
    ConnectorController,
    ConnectorStatus,
    ContactorFeedback,
    DiodeChecked,
    EndTransaction,
    Fault,
    LockFeedback,
    Notice,
    PilotChanged,
    RequestAuthorization,
    ResetLatchedFaults,
    ResumeTransaction,
    SessionSettings,
    SetContactor,
    SetLock,
    SetPilot,
    StatusChanged,
    StopReason,
    Tick,
    TokenPresented,
    UnlockRequested,
    indicator_for,
    route_id_token,
)
from agent.core.transaction_policy import plugged_and_authorized
from hal.interfaces import CpState, IndicatorState, PilotMode
from tests.test_controller import Bench

STEP = 0.010  # s, the agent's control period


def of(commands, kind):
    return [c for c in commands if isinstance(c, kind)]


class LockBench(Bench):
    """A controller on an outlet with a lock whose feedback follows the command one control step later,
    unless `jammed`; the contactor's mirror contact follows likewise. It starts with the station's first
    control step: the first pilot sample (nothing plugged in), then a Tick."""

    def __init__(self, **settings):
        super().__init__(has_lock=True, **settings)
        self.jammed = False
        self.send(PilotChanged(CpState.A))
        self.send(Tick())

    def step(self, seconds: float = STEP):
        """One control step: the devices' feedback as the station would read it, then a Tick."""
        self.now = round(self.now + seconds, 6)
        out = []
        view = self.c.view()
        if self.c.feedback_closed != view.contactor_closed:
            out += self.send(ContactorFeedback(view.contactor_closed))
        if not self.jammed and self.c.lock_feedback != view.lock_commanded:
            out += self.send(LockFeedback(view.lock_commanded))
        if self.c.awaiting_diode_check:
            out += self.send(DiodeChecked(self.ev_diode_ok))
        out += self.send(Tick())
        return out

    def run(self, seconds: float):
        out = []
        end = round(self.now + seconds, 6)
        while self.now < end - 1e-9:
            out += self.step()
        return out

    def statuses(self):
        return [c for _, c in self.log if isinstance(c, StatusChanged)]

    def start(self, tag="TAG1", parent=None):
        self.send(PilotChanged(CpState.B))
        self.send(TokenPresented(tag))
        return self.send(AuthorizationResult(tag, True, parent))


def test_first_pilot_reading_commands_the_lock_open_and_nothing_before_it():
    """After a restart the controller does not know where a motor lock stands: once the first pilot reading
    says nothing is plugged in, it commands it open; before that reading it commands nothing."""
    c = ConnectorController(has_lock=True)
    assert not of(c.handle(Tick(), 0.0), SetLock), "no lock command before the pilot is seen"
    assert of(c.handle(PilotChanged(CpState.A), 0.01), SetLock) == [SetLock(False)]
    assert [c for _, c in LockBench().log if isinstance(c, SetLock)] == [SetLock(False)]


def test_transaction_starts_only_once_the_lock_confirms():
    b = LockBench()
    out = b.start()
    assert of(out, SetLock) == [SetLock(True)]
    assert not of(out, BeginTransaction), "no transaction before the plug is locked"
    assert b.c.view().status is ConnectorStatus.OCCUPIED

    out = b.step()  # the feedback arrives one step later
    assert of(out, BeginTransaction) == [BeginTransaction("TAG1")]
    b.send(PilotChanged(CpState.C))
    b.step()
    assert b.c.view().contactor_closed


def test_lock_failure_at_start_faults_without_transaction_or_energy():
    """TC_024_CS: the lock does not confirm within lock_timeout_s: Faulted with ConnectorLockFailure, no
    StartTransaction, the contactor never closes, the authorization is gone, the lock is commanded open."""
    b = LockBench(lock_timeout_s=1.0)
    b.jammed = True
    b.start()
    locked_at = b.now
    b.send(PilotChanged(CpState.C))  # the EV asks for power while the lock is still moving
    b.run(0.99)
    assert b.now - locked_at == pytest.approx(0.99)
    assert b.c.view().status is ConnectorStatus.OCCUPIED and Fault.LOCK not in b.c.faults

    out = b.step()  # 1.00 s after the lock command
    assert b.now - locked_at == pytest.approx(1.0)
    assert Fault.LOCK in b.c.faults
    assert of(out, StatusChanged) == [StatusChanged(ConnectorStatus.FAULTED, Fault.LOCK)]
    assert of(out, SetLock) == [SetLock(False)]
    assert any("dropped" in n.text for n in of(out, Notice))
    assert not [c for _, c in b.log if isinstance(c, BeginTransaction | SetContactor)]
    assert b.c.view().authorized_id_token is None

    b.jammed = False  # even if the lock works again, the fault stays while the EV is plugged in
    b.run(0.5)
    assert b.c.view().status is ConnectorStatus.FAULTED
    b.send(PilotChanged(CpState.A))
    b.step()
    assert b.c.view().status is ConnectorStatus.AVAILABLE and not b.c.faults


def test_lock_opening_while_charging_opens_the_contactor_at_once_then_faults():
    b = LockBench(lock_timeout_s=1.0)
    b.start()
    b.step()
    b.send(PilotChanged(CpState.C))
    b.step()
    assert b.c.view().contactor_closed
    b.jammed = True
    out = b.send(LockFeedback(False), at=b.now + 0.003)  # the lock switch opens under load
    assert of(out, SetContactor) == [SetContactor(False)], "the contactor opens in the same step"
    b.run(0.5)
    assert b.c.transaction_active and Fault.LOCK not in b.c.faults
    out = b.run(0.6)  # the deadline counts from the lock command: 1 s after it, the open lock is a fault
    assert Fault.LOCK in b.c.faults
    assert of(out, EndTransaction) == [EndTransaction(StopReason.OTHER)]


def test_lock_failure_is_not_raised_while_the_lock_moves():
    b = LockBench(lock_timeout_s=1.0)
    b.jammed = True
    b.start()
    b.run(0.5)
    b.jammed = False  # a slow actuator that gets there at 0.5 s
    out = b.step()
    assert of(out, BeginTransaction) == [BeginTransaction("TAG1")]
    b.run(2.0)
    assert not b.c.faults


def test_unlock_command_stops_the_transaction_and_commands_the_lock_open():
    """TC_018_1_CS in the controller: UnlockCommand is an orderly stop (x1 at once, the contactor opens when
    the EV leaves C); the lock is released once the mirror contact reads open (never while the outlet may
    carry mains)."""
    b = LockBench()
    b.start()
    b.step()
    b.send(PilotChanged(CpState.C))
    b.run(0.02)
    assert b.c.view().contactor_closed and b.c.feedback_closed
    out = b.send(UnlockRequested())
    assert of(out, EndTransaction) == [EndTransaction(StopReason.UNLOCK_COMMAND)]
    assert of(out, SetPilot) == [SetPilot(PilotMode.X1, 100.0)]
    assert SetContactor(False) not in out and SetLock(False) not in out  # the EV still draws
    out = b.step()
    assert SetLock(False) not in out and b.c.view().lock_commanded
    out = b.send(PilotChanged(CpState.B))  # the EV answers the x1
    assert out[0] == SetContactor(False) and SetLock(False) not in out  # contacts not yet read open
    out += b.step()  # the mirror contact reads open
    assert out.index(SetContactor(False)) < out.index(SetLock(False))
    b.step()
    assert not b.c.view().lock_feedback and not b.c.faults


def test_unlock_failure_is_a_lock_fault_after_the_deadline():
    """TC_030_CS in the controller: the lock stays locked after the unlock command: ConnectorLockFailure
    1 s later; a new UnlockRequested is a retry (a new SetLock(False) and a new deadline)."""
    b = LockBench(lock_timeout_s=1.0)
    b.start()
    b.step()
    b.jammed = True
    unlocked_at = b.now
    b.send(UnlockRequested())
    b.run(0.99)
    assert Fault.LOCK not in b.c.faults
    b.run(0.01)
    assert b.now - unlocked_at == pytest.approx(1.0) and Fault.LOCK in b.c.faults
    assert b.c.view().status is ConnectorStatus.FAULTED

    b.jammed = False
    out = b.send(UnlockRequested())  # the help desk tries again
    assert of(out, SetLock) == [SetLock(False)]
    b.step()
    assert not b.c.view().lock_feedback
    b.send(ResetLatchedFaults())
    assert not b.c.faults


@pytest.mark.parametrize("unlock_on_disconnect", [True, False])
def test_ev_side_disconnect_unlocks_or_holds_the_cable(unlock_on_disconnect):
    """TC_005_1_CS / TC_005_2_CS: StopTransactionOnEVSideDisconnect true; the cable is unlocked at once,
    or (UnlockConnectorOnEVSideDisconnect false) stays locked, status Finishing, until the owner's card."""
    b = LockBench(unlock_on_ev_side_disconnect=unlock_on_disconnect)
    b.start()
    b.step()
    b.send(PilotChanged(CpState.C))
    b.step()
    out = b.send(PilotChanged(CpState.A))
    assert of(out, EndTransaction) == [EndTransaction(StopReason.EV_DISCONNECTED)]
    out += b.run(0.1)
    if unlock_on_disconnect:
        assert SetLock(False) in out and not b.c.view().lock_feedback
        assert b.c.view().status is ConnectorStatus.AVAILABLE
        return
    assert not of(out, SetLock) and b.c.view().lock_feedback
    assert b.c.view().status is ConnectorStatus.FINISHED and b.c.lock_held_for == "TAG1"
    assert not b.c.can_accept_remote_start("TAG2")

    out = b.send(TokenPresented("TAG2"))  # someone else's card (no parent id known): refused, no Authorize
    assert not of(out, RequestAuthorization) and not of(out, SetLock)
    out = b.send(TokenPresented("tag1"))  # the owner (ids compare case-insensitively)
    assert of(out, SetLock) == [SetLock(False)]
    assert not of(out, RequestAuthorization) and not of(out, BeginTransaction)
    b.step()
    assert b.c.view().status is ConnectorStatus.AVAILABLE and b.c.lock_held_for is None


def test_held_cable_is_released_by_a_card_of_the_same_parent_or_the_csms():
    b = LockBench(unlock_on_ev_side_disconnect=False)
    b.start(parent="FLEET")
    b.step()
    b.send(PilotChanged(CpState.A))
    b.step()
    out = b.send(TokenPresented("TAG2"))
    assert of(out, RequestAuthorization) == [RequestAuthorization("TAG2")]
    out = b.send(AuthorizationResult("TAG2", True, "OTHER"))
    assert not of(out, SetLock) and b.c.lock_held_for == "TAG1"
    b.send(TokenPresented("TAG3"))
    out = b.send(AuthorizationResult("TAG3", True, "FLEET"))
    assert of(out, SetLock) == [SetLock(False)] and b.c.lock_held_for is None

    b.start(tag="TAG4")  # again, released by UnlockConnector this time
    b.step()
    b.send(PilotChanged(CpState.A))
    b.step()
    assert b.c.lock_held_for == "TAG4"
    out = b.send(UnlockRequested())
    assert of(out, SetLock) == [SetLock(False)] and not of(out, EndTransaction)
    assert b.c.lock_held_for is None


def test_stop_on_ev_side_disconnect_false_keeps_the_lock_while_the_transaction_runs():
    """TC_005_3_CS: the transaction continues (SuspendedEV); with UnlockConnectorOnEVSideDisconnect false the
    cable stays locked for it."""
    b = LockBench(transaction_policy=plugged_and_authorized(stop_on_unplug=False), unlock_on_ev_side_disconnect=False)
    b.start()
    b.step()
    out = b.send(PilotChanged(CpState.A))
    assert not of(out, EndTransaction) and not of(out, SetLock)
    assert b.c.view().status is ConnectorStatus.SUSPENDED_EV


def test_a_card_for_a_held_cable_is_routed_to_its_connector():
    held = LockBench(unlock_on_ev_side_disconnect=False)
    held.start()
    held.step()
    held.send(PilotChanged(CpState.A))
    free = ConnectorController()
    assert route_id_token({1: free, 2: held.c}, "TAG1") == 2
    assert route_id_token({1: held.c, 2: free}, "TAG9") == 2  # another driver goes to the free connector


@pytest.mark.parametrize(("status", "shown"), [
    (ConnectorStatus.AVAILABLE, IndicatorState.READY),
    (ConnectorStatus.OCCUPIED, IndicatorState.READY),
    (ConnectorStatus.RESERVED, IndicatorState.READY),
    (ConnectorStatus.FINISHED, IndicatorState.READY),
    (ConnectorStatus.CHARGING, IndicatorState.CHARGING),
    (ConnectorStatus.SUSPENDED_EV, IndicatorState.CHARGING),
    (ConnectorStatus.SUSPENDED_EVSE, IndicatorState.CHARGING),
    (ConnectorStatus.FAULTED, IndicatorState.FAULT),
    (ConnectorStatus.UNAVAILABLE, IndicatorState.OFF),
])
def test_indicator_for_every_status(status, shown):
    assert indicator_for(status) is shown


def _charging_then_weld():
    b = LockBench(lock_timeout_s=1.0)
    b.start()
    b.step()
    b.send(PilotChanged(CpState.C))
    b.run(0.05)
    assert b.c.view().contactor_closed and b.c.feedback_closed and b.c.lock_feedback
    return b


def test_session_end_with_welded_contactor_keeps_the_plug_locked():
    """A plug is never released while its outlet may carry mains: welded contacts keep it locked, and an
    UnlockConnector then leaves it locked too (the station answers UnlockFailed)."""
    b = _charging_then_weld()
    out = b.send(TokenPresented("TAG1"))  # the driver ends the session
    out += b.send(PilotChanged(CpState.B))  # the EV answers the x1: open command; the contacts are welded
    assert SetContactor(False) in out
    out += b.send(ContactorFeedback(True))  # mirror contact still closed
    for _ in range(50):  # 0.5 s: the weld is detected after feedback_timeout_s
        b.now = round(b.now + 0.01, 6)
        out += b.send(ContactorFeedback(True))
        if not b.jammed and b.c.lock_feedback != b.c.view().lock_commanded:
            out += b.send(LockFeedback(b.c.view().lock_commanded))
    assert Fault.WELD in b.c.faults
    assert SetLock(False) not in out, "plug unlocked while the contactor's mirror contact reads closed (welded)"
    out = b.send(UnlockRequested())
    assert SetLock(False) not in out and b.c.view().lock_commanded


def test_resumed_session_never_unlocks_before_the_pilot_is_seen():
    """After a power loss the journal resumes the session with the plug still locked: no SetLock(False) for
    a step before the first pilot reading (issue 9 C.11); that reading (EV in C) commands the lock closed, and
    the contactor closes once the diode is checked under the PWM."""
    c = ConnectorController(has_lock=True, settings=SessionSettings(min_close_interval_s=0.0))
    out = c.handle(ResumeTransaction("TAG1"), 0.0)
    out += c.handle(Tick(), 0.0)
    out += c.handle(Tick(), 0.010)
    assert not of(out, SetLock) and not of(out, SetContactor)
    out = c.handle(PilotChanged(CpState.C), 0.020)  # the station's first control step: pilot, then lock
    assert of(out, SetLock) == [SetLock(True)] and not of(out, SetContactor)
    out += c.handle(LockFeedback(True), 0.020)
    out += c.handle(Tick(), 0.020)
    assert not of(out, SetContactor), "the diode is not known under this PWM yet"
    out = c.handle(DiodeChecked(True), 0.030)
    assert of(out, SetContactor) == [SetContactor(True)]
    assert c.transaction_active and not c.faults


def test_resumed_session_lock_reading_locked_before_the_first_pilot_reading_is_not_a_lock_fault():
    c = ConnectorController(has_lock=True, settings=SessionSettings(unlock_on_ev_side_disconnect=False,
                                                                    transaction_policy=plugged_and_authorized(stop_on_unplug=False)))
    c.handle(ResumeTransaction("TAG1"), 0.0)
    out = c.handle(LockFeedback(True), 0.0)  # read before any pilot reading
    assert Fault.LOCK not in c.faults and not of(out, EndTransaction)
    assert c.transaction_active
