"""The pure session controller: IEC 61851 safety rules and OCPP status, driven with an injected clock."""

from __future__ import annotations

import pytest

from agent.core.controller import (
    AuthorizationResult,
    AvailabilityChanged,
    BeginTransaction,
    CableDetected,
    ChargingLimitChanged,
    ConnectorController,
    ConnectorStatus,
    ContactorFeedback,
    DiodeChecked,
    EndTransaction,
    Fault,
    FaultChanged,
    PilotChanged,
    RemoteStart,
    RequestAuthorization,
    ResetLatchedFaults,
    SessionSettings,
    SetContactor,
    SetPilot,
    StatusChanged,
    StopReason,
    StopRequested,
    Tick,
    TokenPresented,
    TransactionConfirmed,
    TransactionRecorded,
    route_id_token,
)
from agent.core.transaction_policy import plugged_and_authorized
from hal.interfaces import CpState, PilotMode

CONTROL_PERIOD = 0.010  # s, the agent's default control step


class Bench:
    """A controller wired to an ideal station: the journal commits every StartTransaction at once and says so
    (TransactionRecorded, unless `records_starts` is False), the pilot's next sample under a new PWM tells the
    EV's diode (`ev_diode_ok`), and the contactor's mirror contact follows the command one step later."""

    def __init__(self, *, has_lock: bool = False, records_starts: bool = True, **settings):
        self.now = 0.0
        self.c = ConnectorController(settings=SessionSettings(**{"min_close_interval_s": 0.0, **settings}),
                                     has_lock=has_lock)
        self.records_starts = records_starts
        self.ev_diode_ok = True
        self.log: list[tuple[float, object]] = []

    def send(self, event, at: float | None = None):
        """One event; then, as the station does, TransactionRecorded once the journal holds a start it caused.
        Returns the commands of both, in order."""
        if at is not None:
            self.now = at
        commands = self.c.handle(event, self.now)
        self.log += [(self.now, c) for c in commands]
        if self.records_starts and any(isinstance(c, BeginTransaction) for c in commands):
            commands += self.send(TransactionRecorded())
        return commands

    def step(self, seconds: float = CONTROL_PERIOD):
        """Advance one control step: the contactor's mirror contact follows the command, a pilot sample
        under a PWM that started since tells the diode, then a Tick."""
        self.now += seconds
        out = []
        if self.c.feedback_closed != self.c.view().contactor_closed:
            out += self.send(ContactorFeedback(self.c.view().contactor_closed))
        if self.c.awaiting_diode_check:
            out += self.send(DiodeChecked(self.ev_diode_ok))
        out += self.send(Tick())
        return out

    def statuses(self):
        return [c.status for _, c in self.log if isinstance(c, StatusChanged)]

    def charging_session(self, tag="TAG1"):
        self.send(PilotChanged(CpState.B))
        self.send(TokenPresented(tag))
        self.send(AuthorizationResult(tag, True))
        self.send(PilotChanged(CpState.C))
        self.step()  # the diode is checked under the PWM: the contactor closes
        self.step()  # its mirror contact follows
        assert self.c.view().contactor_closed and self.c.feedback_closed


def of(commands, kind):
    return [c for c in commands if isinstance(c, kind)]


def test_plug_first_session_closes_only_after_authorization_recorded_start_diode_check_and_state_c():
    b = Bench(records_starts=False)
    out = b.send(PilotChanged(CpState.B))
    assert of(out, StatusChanged)[0].status is ConnectorStatus.OCCUPIED
    assert not of(out, SetContactor)

    out = b.send(PilotChanged(CpState.C))  # EV asks for power before anyone authorized it
    assert not of(out, SetContactor), "no contactor without authorization"
    b.send(PilotChanged(CpState.B))

    out = b.send(TokenPresented("TAG1"))
    assert of(out, RequestAuthorization) == [RequestAuthorization("TAG1")]
    out = b.send(AuthorizationResult("TAG1", True))
    assert of(out, BeginTransaction) == [BeginTransaction("TAG1")]
    assert not of(out, SetPilot) and not of(out, SetContactor), "no energy before the journal holds the start"
    assert b.c.view().status is ConnectorStatus.OCCUPIED

    out = b.send(TransactionRecorded())
    assert of(out, SetPilot) == [SetPilot(PilotMode.PWM, 26.67)]  # 16 A -> 16/0.6 %
    assert not of(out, SetContactor), "EV still in B: no power yet"

    out = b.send(PilotChanged(CpState.C))
    assert not of(out, SetContactor), "the diode is not known yet under this PWM"
    out = b.send(DiodeChecked(True))
    assert of(out, SetContactor) == [SetContactor(True)]
    assert b.c.view().status is ConnectorStatus.CHARGING


def test_authorize_first_then_plug_starts_transaction():
    b = Bench()
    b.send(TokenPresented("TAG1"))
    out = b.send(AuthorizationResult("TAG1", True))
    assert of(out, StatusChanged)[0].status is ConnectorStatus.OCCUPIED
    assert not of(out, BeginTransaction), "no transaction before the EV is plugged in"
    out = b.send(PilotChanged(CpState.B))
    assert of(out, BeginTransaction) == [BeginTransaction("TAG1")]
    out = b.send(PilotChanged(CpState.C))
    assert not of(out, SetContactor), "the diode is not known yet under this PWM"
    out = b.step()
    assert of(out, SetContactor) == [SetContactor(True)]


def test_authorization_expires_after_connection_timeout():
    b = Bench(connection_timeout_s=30)
    b.send(TokenPresented("TAG1"), at=0.0)
    b.send(AuthorizationResult("TAG1", True), at=0.1)
    b.send(Tick(), at=30.05)
    assert b.c.view().status is ConnectorStatus.OCCUPIED  # 29.95 s after authorization
    out = b.send(Tick(), at=30.1)
    assert of(out, StatusChanged)[0].status is ConnectorStatus.AVAILABLE
    out = b.send(PilotChanged(CpState.B), at=31)
    assert not of(out, BeginTransaction)


def test_rejected_card_never_closes_the_contactor():
    b = Bench()
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("BAD"))
    out = b.send(AuthorizationResult("BAD", False))
    assert not of(out, BeginTransaction)
    out = b.send(PilotChanged(CpState.C))
    for _ in range(50):
        out += b.step()
    assert not of(out, SetContactor)
    assert b.c.view().pilot_mode is PilotMode.X1
    assert b.c.view().status is ConnectorStatus.OCCUPIED


def test_c_to_b_opens_the_contactor_in_the_same_control_step():
    b = Bench()
    b.charging_session()
    for _ in range(10):
        b.step()
    t_b = b.now + CONTROL_PERIOD
    out = b.send(PilotChanged(CpState.B), at=t_b)
    opens = [(t, c) for t, c in b.log if c == SetContactor(False)]
    assert opens and opens[0][0] == t_b, "open command issued at the instant the step saw state B"
    assert out[0] == SetContactor(False), "opening goes before every other command"
    assert opens[0][0] - t_b <= 0.100  # IEC 61851-1 Table A.6 seq. 8.1 allows 100 ms
    assert b.c.view().status is ConnectorStatus.SUSPENDED_EV
    assert b.c.transaction_active, "C->B pauses the session, it does not end it"


@pytest.mark.parametrize("event,reason", [
    (PilotChanged(CpState.A), StopReason.EV_DISCONNECTED),
    (FaultChanged(Fault.RCD, True), StopReason.OTHER),
    (FaultChanged(Fault.STORAGE, True), StopReason.OTHER),
    (PilotChanged(CpState.E), StopReason.OTHER),
])
def test_every_safety_stop_cause_opens_at_once_and_stops_the_transaction(event, reason):
    b = Bench()
    b.charging_session()
    out = b.send(event)
    assert out[0] == SetContactor(False)
    stops = of(out, EndTransaction)
    assert len(stops) == 1 and stops[0].reason is reason
    assert b.c.view().pilot_mode is not PilotMode.PWM


@pytest.mark.parametrize("event,reason", [
    (StopRequested(StopReason.REMOTE), StopReason.REMOTE),
    (TokenPresented("TAG1"), StopReason.LOCAL),
    (StopRequested(StopReason.SOFT_RESET), StopReason.SOFT_RESET),
    (StopRequested(StopReason.HARD_RESET), StopReason.HARD_RESET),
    (TransactionConfirmed(False), StopReason.DEAUTHORIZED),
])
def test_every_orderly_stop_drops_the_pwm_at_once_and_opens_when_the_ev_leaves_c(event, reason):
    """IEC 61851-1 Annex A, Table A.6 seq. 10.2: x1 first, the contactor opens once the EV stops drawing (C->B)
    rather than breaking its current (the 6 s bound: tests/test_controller_orderly_stop.py)."""
    b = Bench()
    b.charging_session()
    out = b.send(event)
    stops = of(out, EndTransaction)
    assert len(stops) == 1 and stops[0].reason is reason
    assert of(out, SetPilot) == [SetPilot(PilotMode.X1, 100.0)] and not of(out, SetContactor)
    assert b.c.contactor_commanded, "the EV is still in C: it gets its time to open S2 first"
    out = b.send(PilotChanged(CpState.B), at=b.now + 0.5)
    assert out[0] == SetContactor(False)


def test_unplug_keeps_transaction_when_stop_on_ev_side_disconnect_is_false():
    b = Bench(transaction_policy=plugged_and_authorized(stop_on_unplug=False))
    b.charging_session()
    out = b.send(PilotChanged(CpState.A))
    assert out[0] == SetContactor(False)
    assert not of(out, EndTransaction)
    status = of(out, StatusChanged)[0]
    assert status.status is ConnectorStatus.SUSPENDED_EV and status.info == "EV side disconnected"


def test_finishing_after_local_stop_then_available_on_unplug():
    b = Bench()
    b.charging_session()
    b.send(TokenPresented("TAG1"))
    assert b.c.view().status is ConnectorStatus.FINISHED
    out = b.send(PilotChanged(CpState.B))
    assert out[0] == SetContactor(False), "the EV answered the x1: the contactor opens without load"
    out = b.send(PilotChanged(CpState.A))
    assert of(out, StatusChanged)[0].status is ConnectorStatus.AVAILABLE


def test_welded_contactor_is_detected_latched_and_never_closed_again():
    b = Bench(feedback_timeout_s=0.25)
    b.charging_session()
    b.send(PilotChanged(CpState.B), at=b.now + 0.01)  # open command; the mirror contact stays closed
    t_open = b.now
    b.send(Tick(), at=t_open + 0.24)
    assert Fault.WELD not in b.c.faults, "the contactor gets its feedback time"
    out = b.send(Tick(), at=t_open + 0.25)
    assert Fault.WELD in b.c.faults
    assert of(out, StatusChanged)[0] == StatusChanged(ConnectorStatus.FAULTED, Fault.WELD)
    assert of(out, EndTransaction), "the session ends on a weld"
    # a new session: authorized, EV asks for power - the contactor must stay open
    b.send(ContactorFeedback(False), at=t_open + 1)
    b.send(TokenPresented("TAG2"))
    b.send(AuthorizationResult("TAG2", True))
    out = b.send(PilotChanged(CpState.C))
    assert not of(out, SetContactor) and not of(out, BeginTransaction)
    # the technician clears it once the mirror contact reads open
    b.send(ResetLatchedFaults())
    assert not b.c.faults


def test_contactor_that_does_not_close_is_a_fault():
    b = Bench(feedback_timeout_s=0.25)
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("T"))
    b.send(AuthorizationResult("T", True))
    b.send(PilotChanged(CpState.C), at=1.0)
    out = b.send(DiodeChecked(True), at=1.0)
    assert of(out, SetContactor) == [SetContactor(True)]
    out = b.send(Tick(), at=1.25)  # no feedback arrived
    assert out[0] == SetContactor(False)
    assert Fault.CONTACTOR in b.c.faults


def test_closed_mirror_contact_while_open_blocks_closing():
    b = Bench()
    b.send(ContactorFeedback(True))  # mirror says closed but we never closed it
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("T"))
    b.send(AuthorizationResult("T", True))
    out = b.send(PilotChanged(CpState.C))
    assert not of(out, SetContactor)
    assert Fault.WELD in b.c.faults


def test_state_d_charges_only_with_ventilation():
    b = Bench(ventilation_available=False)
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("T"))
    b.send(AuthorizationResult("T", True))
    out = b.send(PilotChanged(CpState.D))
    for _ in range(10):
        out += b.step()
    assert not of(out, SetContactor)
    b2 = Bench(ventilation_available=True)
    b2.send(PilotChanged(CpState.B))
    b2.send(TokenPresented("T"))
    b2.send(AuthorizationResult("T", True))
    assert not of(b2.send(PilotChanged(CpState.D)), SetContactor)  # the diode is checked first
    assert of(b2.step(), SetContactor) == [SetContactor(True)]


def test_cable_ampacity_and_configured_limit_cap_the_offered_current():
    b = Bench(max_current_a=32)
    b.send(CableDetected(20.0))
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("T"))
    out = b.send(AuthorizationResult("T", True))
    assert of(out, SetPilot) == [SetPilot(PilotMode.PWM, round(20 / 0.6, 2))]
    out = b.send(CableDetected(13.0))
    assert of(out, SetPilot) == [SetPilot(PilotMode.PWM, round(13 / 0.6, 2))]
    assert b.c.view().offered_current_a == 13.0


def test_rcd_trip_faults_and_clears():
    b = Bench()
    b.charging_session()
    out = b.send(FaultChanged(Fault.RCD, True))
    assert out[0] == SetContactor(False)
    assert b.c.view().status is ConnectorStatus.FAULTED and b.c.view().status_fault is Fault.RCD
    out = b.send(FaultChanged(Fault.RCD, False))
    assert of(out, StatusChanged)[0].status is ConnectorStatus.FINISHED


def test_diode_fault_stops_and_latches_until_unplug():
    b = Bench()
    b.charging_session()
    out = b.send(DiodeChecked(False))
    assert out[0] == SetContactor(False) and Fault.DIODE in b.c.faults
    b.send(DiodeChecked(True))  # PWM off: nothing to check any more
    assert Fault.DIODE in b.c.faults
    b.send(PilotChanged(CpState.A))
    assert not b.c.faults and b.c.view().status is ConnectorStatus.AVAILABLE


def test_pilot_short_is_a_fault():
    b = Bench()
    b.charging_session()
    out = b.send(PilotChanged(CpState.E))
    assert out[0] == SetContactor(False)
    assert b.c.view().status is ConnectorStatus.FAULTED


def test_meter_failure_stops_charging_and_is_reported():
    b = Bench()
    b.charging_session()
    out = b.send(FaultChanged(Fault.METER, True))
    assert out[0] == SetContactor(False)
    assert of(out, StatusChanged)[0].fault is Fault.METER


def test_invalid_id_in_start_transaction_conf():
    """A refused id is an orderly stop: x1 at once, the contactor opens when the EV leaves C (or after
    stop_under_load_timeout_s)."""
    stop = Bench(stop_on_invalid_id=True)
    stop.charging_session()
    out = stop.send(TransactionConfirmed(False))
    assert of(out, SetPilot) == [SetPilot(PilotMode.X1, 100.0)] and not of(out, SetContactor)
    assert of(out, EndTransaction) == [EndTransaction(StopReason.DEAUTHORIZED)]
    assert stop.send(PilotChanged(CpState.B))[0] == SetContactor(False)

    keep = Bench(stop_on_invalid_id=False)
    keep.charging_session()
    out = keep.send(TransactionConfirmed(False))
    assert of(out, SetPilot) == [SetPilot(PilotMode.X1, 100.0)] and not of(out, SetContactor)
    assert not of(out, EndTransaction)
    assert keep.c.view().status is ConnectorStatus.SUSPENDED_EVSE
    assert keep.c.view().pilot_mode is PilotMode.X1
    out = keep.send(Tick(), at=keep.now + 6.0)  # the EV ignores the x1: opened under load after 6 s
    assert out[0] == SetContactor(False) and keep.c.transaction_active


def test_remote_start_authorizes_when_configured():
    b = Bench(authorize_remote_tx=True)
    out = b.send(RemoteStart("R1"))
    assert of(out, RequestAuthorization) == [RequestAuthorization("R1")]
    b.send(AuthorizationResult("R1", True))
    assert of(b.send(PilotChanged(CpState.B)), BeginTransaction) == [BeginTransaction("R1")]

    direct = Bench(authorize_remote_tx=False)
    out = direct.send(RemoteStart("R1"))
    assert not of(out, RequestAuthorization)
    assert of(direct.send(PilotChanged(CpState.B)), BeginTransaction) == [BeginTransaction("R1")]


def test_other_card_with_same_parent_stops_the_session():
    b = Bench()
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True, parent_id_token="FLEET"))
    b.send(PilotChanged(CpState.C))
    out = b.send(TokenPresented("TAG2"))
    assert of(out, RequestAuthorization) == [RequestAuthorization("TAG2")]
    out = b.send(AuthorizationResult("TAG2", True, parent_id_token="OTHER"))
    assert not of(out, EndTransaction)
    b.send(TokenPresented("TAG3"))
    out = b.send(AuthorizationResult("TAG3", True, parent_id_token="FLEET"))
    assert of(out, EndTransaction) == [EndTransaction(StopReason.LOCAL, "TAG3")]


def test_unavailable_is_scheduled_during_a_transaction():
    b = Bench()
    b.charging_session()
    b.send(AvailabilityChanged(False))
    view = b.c.view()
    assert view.availability_scheduled and view.status is ConnectorStatus.CHARGING
    b.send(StopRequested(StopReason.REMOTE))
    assert b.c.view().status is ConnectorStatus.UNAVAILABLE
    assert b.c.view().pilot_mode is PilotMode.X1  # under load x1 first: the EV gets to open S2
    b.send(PilotChanged(CpState.B))  # it does: the contactor opens, then the pilot goes to F
    assert not b.c.view().contactor_closed and b.c.view().pilot_mode is PilotMode.F
    b.send(TokenPresented("T"))
    assert not b.c.view().authorized_id_token


def test_min_close_interval_protects_the_contactor():
    b = Bench(min_close_interval_s=2.0)
    b.charging_session()
    t0 = b.now
    b.send(PilotChanged(CpState.B), at=t0 + 0.5)
    b.step()
    out = b.send(PilotChanged(CpState.C), at=t0 + 1.0)
    assert not of(out, SetContactor)
    out = b.send(Tick(), at=t0 + 2.0)
    assert of(out, SetContactor) == [SetContactor(True)]


def test_status_stays_preparing_while_ev_answers_pwm_then_suspended_ev():
    b = Bench(ev_response_grace_s=3.0)
    b.send(PilotChanged(CpState.B), at=0)
    b.send(TokenPresented("T"))
    b.send(AuthorizationResult("T", True), at=1.0)
    b.send(Tick(), at=3.9)
    assert b.c.view().status is ConnectorStatus.OCCUPIED
    b.send(Tick(), at=4.0)
    assert b.c.view().status is ConnectorStatus.SUSPENDED_EV


def test_no_pwm_below_six_amps():
    b = Bench(max_current_a=16)
    b.send(CableDetected(5.0))
    b.send(PilotChanged(CpState.B))
    b.send(TokenPresented("T"))
    out = b.send(AuthorizationResult("T", True))
    assert of(out, BeginTransaction)
    assert b.c.view().pilot_mode is PilotMode.X1
    assert b.c.view().status is ConnectorStatus.SUSPENDED_EVSE


def test_card_routing_between_connectors():
    one, two = ConnectorController(), ConnectorController()
    two.handle(PilotChanged(CpState.B), 0)
    assert route_id_token({1: one, 2: two}, "X") == 2  # the EV waiting for a card
    two.handle(TokenPresented("X"), 0)
    two.handle(AuthorizationResult("X", True), 0)
    assert route_id_token({1: one, 2: two}, "X") == 2  # its own card stops it
    assert route_id_token({1: one, 2: two}, "Y") == 1  # a new card goes to the free connector


def test_inferred_feedback_is_not_supervised():
    """A board that switches its own relay (EVSE-DIN) reports feedback by inference: no weld from it."""
    b = Bench(feedback_supervised=False, min_close_interval_s=1.0)
    b.charging_session()
    b.send(PilotChanged(CpState.B), at=b.now + 0.01)
    b.send(ContactorFeedback(True), at=b.now + 0.5)  # the board closed by itself when the EV came back
    out = b.send(Tick(), at=b.now + 1.0)
    assert Fault.WELD not in b.c.faults and not of(out, EndTransaction)


def test_dead_meter_with_continue_policy_keeps_charging_and_warns():
    """[charging] meter_failure = "continue": the session goes on, the status carries PowerMeterFailure as a
    warning; a new session waits for a working meter."""
    b = Bench(meter_failure_stops=False)
    b.charging_session()
    out = b.send(FaultChanged(Fault.METER, True))
    assert not of(out, SetContactor) and not of(out, EndTransaction)
    assert of(out, StatusChanged) == [StatusChanged(ConnectorStatus.CHARGING, Fault.METER)]
    b.send(TokenPresented("TAG1"))  # the driver stops: Finishing, still with the warning
    assert b.c.view().status is ConnectorStatus.FINISHED and b.c.view().status_fault is Fault.METER
    b.send(PilotChanged(CpState.A))
    b.send(PilotChanged(CpState.B))
    out = b.send(TokenPresented("TAG2"))
    assert not of(out, RequestAuthorization)  # no new session without a meter
    out = b.send(FaultChanged(Fault.METER, False))
    assert of(out, StatusChanged)[0] == StatusChanged(ConnectorStatus.OCCUPIED)


# ---- energy only after the journal recorded the start, the diode checked under the PWM (issue 9 B.2, B.4) ----


def test_no_pwm_nor_close_before_the_journal_records_the_start():
    """The EV waits in C with a started transaction whose start the journal has not committed: no PWM, no
    close, Preparing, however long it takes; the PWM comes in the call that brings TransactionRecorded."""
    b = Bench(records_starts=False)
    b.send(PilotChanged(CpState.C), at=0.0)
    b.send(TokenPresented("TAG1"), at=0.5)
    out = b.send(AuthorizationResult("TAG1", True), at=1.0)
    assert of(out, BeginTransaction) == [BeginTransaction("TAG1")] and b.c.awaiting_record
    while b.now < 4.0:
        out += b.step()
    assert not of(out, SetPilot) and not of(out, SetContactor)
    assert b.c.view().pilot_mode is PilotMode.X1 and b.c.view().status is ConnectorStatus.OCCUPIED
    assert not b.c.awaiting_diode_check

    out = b.send(TransactionRecorded(), at=4.005)
    assert of(out, SetPilot) == [SetPilot(PilotMode.PWM, 26.67)]
    assert not of(out, SetContactor) and not b.c.awaiting_record


def test_storage_fault_before_the_start_is_recorded_means_no_energy_ever_for_that_transaction():
    """The journal cannot commit the start: the transaction ends, and neither a late TransactionRecorded nor
    the journal recovering brings energy back to it."""
    b = Bench(records_starts=False)
    b.send(PilotChanged(CpState.C), at=0.0)
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True), at=0.1)
    out = b.send(FaultChanged(Fault.STORAGE, True), at=0.15)
    assert of(out, EndTransaction) == [EndTransaction(StopReason.OTHER)]
    assert b.c.view().status is ConnectorStatus.FAULTED
    b.send(TransactionRecorded(), at=0.2)  # a commit that lands after all
    b.send(FaultChanged(Fault.STORAGE, False), at=1.0)
    while b.now < 10.0:
        b.step()
    energy = [c for _, c in b.log if c == SetContactor(True) or (isinstance(c, SetPilot) and c.mode is PilotMode.PWM)]
    assert energy == [] and not b.c.transaction_active
    assert b.c.view().status is ConnectorStatus.FINISHED


def test_ev_already_in_c_gets_no_close_with_the_first_pwm_and_a_close_with_the_next_diode_check():
    b = Bench(records_starts=False)
    b.send(PilotChanged(CpState.C), at=0.0)
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True), at=0.5)
    b.send(DiodeChecked(True), at=0.6)  # a sample under x1 says nothing about the diode under PWM
    out = b.send(TransactionRecorded(), at=1.000)
    assert of(out, SetPilot) == [SetPilot(PilotMode.PWM, 26.67)] and not of(out, SetContactor)
    assert b.c.awaiting_diode_check
    assert not of(b.send(Tick(), at=1.005), SetContactor), "no sample under the PWM yet"
    out = b.send(DiodeChecked(True), at=1.010)
    assert of(out, SetContactor) == [SetContactor(True)] and not b.c.awaiting_diode_check


def test_pwm_that_starts_again_needs_a_new_diode_check_before_the_contactor_closes_again():
    b = Bench(max_current_a=16.0)
    b.charging_session()
    b.send(ChargingLimitChanged(5.0), at=1.0)
    b.send(PilotChanged(CpState.B), at=1.5)  # the EV stops drawing: open
    b.step()
    b.send(ChargingLimitChanged(None), at=3.0)
    assert b.c.view().pilot_mode is PilotMode.PWM and b.c.awaiting_diode_check
    assert not of(b.send(PilotChanged(CpState.C), at=3.1), SetContactor)
    assert of(b.send(DiodeChecked(True), at=3.11), SetContactor) == [SetContactor(True)]


def test_diode_missing_under_the_first_pwm_is_a_fault_and_the_contactor_never_closes():
    b = Bench()
    b.ev_diode_ok = False
    b.send(PilotChanged(CpState.C), at=0.0)
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True), at=0.5)
    assert b.c.view().pilot_mode is PilotMode.PWM
    out = b.step()  # the next sample: no diode
    assert Fault.DIODE in b.c.faults
    assert of(out, EndTransaction) == [EndTransaction(StopReason.OTHER)]
    assert b.c.view().status is ConnectorStatus.FAULTED and b.c.view().pilot_mode is not PilotMode.PWM
    while b.now < 5.0:
        b.step()
    assert SetContactor(True) not in [c for _, c in b.log]


def test_mirror_contact_still_closed_after_an_open_blocks_a_new_close_before_the_weld_is_declared():
    """The EV goes C->B->C within the weld detection time while the contacts stay welded: no new close on a
    mirror contact that reads closed, and the weld latches at feedback_timeout_s."""
    b = Bench(feedback_timeout_s=0.25)
    b.charging_session()
    t_open = b.now + CONTROL_PERIOD
    assert b.send(PilotChanged(CpState.B), at=t_open)[0] == SetContactor(False)
    b.send(ContactorFeedback(True), at=t_open + 0.01)  # the contacts did not open
    out = b.send(PilotChanged(CpState.C), at=t_open + 0.05)
    out += b.send(DiodeChecked(True), at=t_open + 0.06)
    out += b.send(Tick(), at=t_open + 0.24)
    assert SetContactor(True) not in out, "closed onto welded contacts"
    b.send(Tick(), at=t_open + 0.25)
    assert Fault.WELD in b.c.faults


def test_late_record_of_a_stopped_start_does_not_grant_energy_to_the_next_transaction():
    b = Bench(records_starts=False)
    b.send(PilotChanged(CpState.C), at=0.0)
    b.send(TokenPresented("TAG1"))
    b.send(AuthorizationResult("TAG1", True), at=0.1)  # start 1: the journal stalls
    b.send(TokenPresented("TAG1"), at=0.2)  # the driver cancels before it is committed
    b.send(TokenPresented("TAG2"), at=0.3)
    out = b.send(AuthorizationResult("TAG2", True), at=0.35)  # start 2, behind start 1 in the journal
    assert of(out, BeginTransaction) == [BeginTransaction("TAG2")]
    out = b.send(TransactionRecorded(), at=0.5)  # start 1 committed at last
    assert not of(out, SetPilot), "energy for start 2 before the journal holds it"
    out = b.send(TransactionRecorded(), at=0.6)  # start 2 committed
    assert of(out, SetPilot) == [SetPilot(PilotMode.PWM, 26.67)]


def test_a_stalled_agent_opens_the_contactor_at_once_and_the_transaction_resumes_after():
    """Fault.SUPERVISION (the agent process silent past its deadline) is a safety cause: the contactor opens
    in the same call, not after an orderly wind-down. It suspends the transaction instead of ending it: the
    same session charges again once the agent answers. Any other blocking fault meanwhile ends it."""
    b = Bench()
    b.charging_session()
    out = b.send(FaultChanged(Fault.SUPERVISION, True))
    assert out[0] == SetContactor(False)
    assert not of(out, EndTransaction) and b.c.transaction_active
    assert b.c.view().status is ConnectorStatus.FAULTED and b.c.view().pilot_mode is not PilotMode.PWM
    b.step()
    out = b.send(FaultChanged(Fault.SUPERVISION, False))
    out += b.step() + b.step()
    assert SetContactor(True) in out and b.c.view().status is ConnectorStatus.CHARGING
    assert not of(out, BeginTransaction)  # the same transaction

    b.send(FaultChanged(Fault.SUPERVISION, True))
    out = b.send(FaultChanged(Fault.RCD, True))
    assert of(out, EndTransaction) == [EndTransaction(StopReason.OTHER)] and not b.c.transaction_active
