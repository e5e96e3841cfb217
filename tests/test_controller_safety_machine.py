"""The session controller's safety invariants under random event sequences (issue 9: "never closed without C/D,
authorization, recorded transaction, no fault, diode checked, lock confirmed; never unlocked while live").

A hypothesis RuleBasedStateMachine drives one ConnectorController (with or without a lock, with or without
mirror-contact supervision, with or without ventilation) through what a station and an EV can do: pilot states
A-F, a diode that is there or not, a contactor that follows its command unless welded or stuck open, a lock
that follows unless jammed, faults, cards, authorization answers, StartTransaction recorded, confirmed or
refused, stop requests, availability, charging limits, and control steps after random time advances.

The station is modelled as the protocol asks it to behave: it journals each StartTransaction and says so with
TransactionRecorded (or a storage fault), its control step samples the devices first and then dispatches
what changed (the first pilot reading always), and it reports the diode (DiodeChecked) with the first sample
taken while the PWM it drives runs.

The invariants are checked after every handle() call from the commands the controller emitted and what the
station told it, not from its internals.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from agent.core.controller import (
    AuthorizationResult,
    AvailabilityChanged,
    BeginTransaction,
    CableDetected,
    ChargingLimitChanged,
    ConnectorController,
    ContactorFeedback,
    DiodeChecked,
    EndTransaction,
    Fault,
    FaultChanged,
    LockFeedback,
    PilotChanged,
    RemoteStart,
    RequestAuthorization,
    ResetLatchedFaults,
    ResumeTransaction,
    SessionSettings,
    SetContactor,
    SetLock,
    SetPilot,
    StopReason,
    StopRequested,
    Tick,
    TokenPresented,
    TransactionConfirmed,
    TransactionRecorded,
    UnlockRequested,
)
from hal.interfaces import CpState, PilotMode

STOP_UNDER_LOAD_S = 6.0
TAGS = ("TAG1", "TAG2", "TAG3")
PARENTS = (None, "FLEET", "OTHER")
INJECTED_FAULTS = (Fault.RCD, Fault.METER, Fault.DEVICE, Fault.STORAGE)


class ControllerSafety(RuleBasedStateMachine):
    @initialize(
        has_lock=st.booleans(),
        supervised=st.booleans(),
        ventilation=st.booleans(),
        min_close_interval_s=st.sampled_from([0.0, 0.0, 1.0]),
        resume=st.sampled_from([None, None, CpState.A, CpState.B, CpState.C]),
        lock_locked_at_start=st.booleans(),
        welded_at_start=st.sampled_from([False, False, False, True]),
    )
    def start(self, has_lock, supervised, ventilation, min_close_interval_s, resume, lock_locked_at_start,
              welded_at_start):
        self.settings = SessionSettings(feedback_supervised=supervised, ventilation_available=ventilation,
                                        min_close_interval_s=min_close_interval_s,
                                        stop_under_load_timeout_s=STOP_UNDER_LOAD_S)
        self.c = ConnectorController(settings=self.settings, has_lock=has_lock)
        self.now = 0.0
        self.first_step_done = False
        # the world
        self.ev_state = resume or CpState.A
        self.ev_diode_ok = True
        self.contacts_closed = welded_at_start and supervised  # a weld from before the restart
        self.welded = welded_at_start and supervised
        self.stuck_open = False
        self.lock_locked = has_lock and lock_locked_at_start
        self.lock_jammed = False
        # what the controller commanded (from its commands) and what the station told it (from its events)
        self.cmd_closed = False
        self.pilot_mode = PilotMode.X1
        self.pwm_epoch = 0  # counts PWM starts: a diode sample counts only for the PWM it was taken under
        self.diode_ok_under_pwm: bool | None = None  # what a sample under the current PWM said
        self.lock_cmd = False
        self.told_cp = CpState.A
        self.told_feedback = False
        self.told_lock = False
        self.injected: set[Fault] = set()
        self.tx_running = False
        self.tx_recorded = False
        self.start_pending = False  # a StartTransaction the journal has not committed yet
        self.journal_stalled = False  # the journal commits a start by the next control step unless stalled
        self.authorizing: str | None = None  # the id of the last RequestAuthorization
        self.wind_down_since: float | None = None
        if resume is not None:
            self.tell(ResumeTransaction("TAG1"))
            assert self.tx_running and self.tx_recorded

    # ---- the station ---------------------------------------------------------------------------------

    def handle(self, event) -> list:
        was_closed = self.cmd_closed
        out = self.c.handle(event, self.now)
        pwm_started_here = False
        for command in out:
            match command:
                case SetContactor(closed):
                    if closed:
                        self.check_close_allowed(event, pwm_started_here)
                    self.cmd_closed = closed
                case SetPilot(mode):
                    if mode is PilotMode.PWM and self.pilot_mode is not PilotMode.PWM:
                        pwm_started_here = True
                        self.pwm_epoch += 1
                        self.diode_ok_under_pwm = None
                    self.pilot_mode = mode
                case SetLock(locked):
                    if not locked:
                        assert not self.cmd_closed, f"{event}: SetLock(False) while the contactor is commanded closed"
                        assert not (self.settings.feedback_supervised and self.told_feedback), (
                            f"{event}: SetLock(False) while the mirror contact reads closed")
                    self.lock_cmd = locked
                case RequestAuthorization(id_tag):
                    self.authorizing = id_tag
                case BeginTransaction():
                    assert not self.tx_running, f"{event}: a second StartTransaction"
                    self.tx_running, self.tx_recorded, self.start_pending = True, False, True
                case EndTransaction():
                    assert self.tx_running, f"{event}: StopTransaction without a transaction"
                    self.tx_running, self.tx_recorded, self.start_pending = False, False, False
        assert self.c.transaction_active == self.tx_running
        self.check_after_call(event, was_closed)
        return out

    def tell(self, event):
        """An event from the station: note what it told the controller, then hand it over."""
        match event:
            case PilotChanged(state):
                self.told_cp = state
            case ContactorFeedback(closed):
                self.told_feedback = closed
            case LockFeedback(locked):
                self.told_lock = locked
            case FaultChanged(fault, active) if fault in INJECTED_FAULTS:
                if active:
                    self.injected.add(fault)
                else:
                    self.injected.discard(fault)
            case TransactionRecorded():
                if self.tx_running:
                    self.tx_recorded = True
                self.start_pending = False
            case ResumeTransaction():
                if not self.tx_running:
                    self.tx_running, self.tx_recorded = True, True
        return self.handle(event)

    def pilot_reading(self) -> CpState:
        if self.ev_state is CpState.E:
            return CpState.E
        if self.ev_state is CpState.F or self.pilot_mode is PilotMode.F:
            return CpState.F
        return self.ev_state

    def feedback_reading(self) -> bool:
        if not self.settings.feedback_supervised:
            return self.cmd_closed  # the board infers it from its own command
        return self.contacts_closed

    # ---- invariants --------------------------------------------------------------------------------

    def ev_draws(self) -> bool:
        return self.told_cp is CpState.C or (self.told_cp is CpState.D and self.settings.ventilation_available)

    def blocking_faults(self) -> set:
        return set(self.c.faults) | self.injected

    def lock_confirmed(self) -> bool:
        return not self.c.has_lock or (self.lock_cmd and self.told_lock)

    def safety_cause(self) -> str | None:
        if self.blocking_faults():
            return f"fault {sorted(self.blocking_faults())}"
        if not self.ev_draws():
            return f"pilot {self.told_cp}"
        if not self.lock_confirmed():
            return "lock not confirmed"
        return None

    def energy_granted(self) -> bool:
        return (self.tx_running and self.tx_recorded and self.pilot_mode is PilotMode.PWM
                and self.diode_ok_under_pwm is True and self.c.operative and self.safety_cause() is None)

    def check_close_allowed(self, event, pwm_started_here: bool):
        assert not pwm_started_here, f"{event}: close in the same call that started the PWM"
        assert self.ev_draws(), f"{event}: close with the pilot in {self.told_cp}"
        assert self.tx_running, f"{event}: close without a transaction"
        assert self.tx_recorded, f"{event}: close before the journal recorded the start"
        assert not self.blocking_faults(), f"{event}: close with faults {self.blocking_faults()}"
        assert self.pilot_mode is PilotMode.PWM, f"{event}: close without PWM"
        assert self.diode_ok_under_pwm is True, f"{event}: close before the diode was checked under this PWM"
        assert self.lock_confirmed(), f"{event}: close without the lock commanded and reading locked"
        assert not (self.settings.feedback_supervised and self.told_feedback), (
            f"{event}: close while the mirror contact reads closed (weld)")

    def check_after_call(self, event, was_closed: bool):
        cause = self.safety_cause()
        if was_closed and cause is not None:
            assert not self.cmd_closed, f"{event}: {cause} but the contactor stays closed"
        if not self.cmd_closed or self.energy_granted():
            self.wind_down_since = None
            return
        # closed although energy is no longer granted: only an orderly stop's wind-down, EV still drawing
        assert cause is None, f"{event}: closed with {cause}"
        if self.wind_down_since is None:
            self.wind_down_since = self.now
        assert self.now - self.wind_down_since < STOP_UNDER_LOAD_S, (
            f"{event}: closed {self.now - self.wind_down_since:.3f} s after energy stopped being granted")

    @invariant()
    def transaction_bookkeeping_agrees(self):
        assert self.c.transaction_active == self.tx_running
        assert self.c.view().contactor_closed == self.cmd_closed

    # ---- rules: time and the station's control step -------------------------------------------------

    @rule(steps=st.integers(1, 8),
          dt=st.sampled_from([0.001, 0.01, 0.01, 0.01, 0.2, 0.25, 0.5, 1.0, 2.0, 2.999, 3.0, 5.999, 6.0]))
    def control_steps(self, steps, dt):
        for _ in range(steps):
            self.control_step(dt)

    def control_step(self, dt):
        """Time passes; the devices move toward their commands; the station samples them, then dispatches."""
        self.now = round(self.now + dt, 6)
        if not self.stuck_open and self.cmd_closed:
            self.contacts_closed = True
        elif not self.cmd_closed and not self.welded:
            self.contacts_closed = False
        if self.c.has_lock and not self.lock_jammed:
            self.lock_locked = self.lock_cmd
        reading = self.pilot_reading()
        sampled_epoch = self.pwm_epoch if self.pilot_mode is PilotMode.PWM else None
        diode = self.ev_diode_ok or self.ev_state is CpState.A
        feedback = self.feedback_reading()
        if reading != self.c.cp_state or not self.first_step_done:
            self.tell(PilotChanged(reading))
        self.first_step_done = True
        if sampled_epoch == self.pwm_epoch and self.pilot_mode is PilotMode.PWM and (
                self.c.awaiting_diode_check or diode != self.c.diode_ok):
            self.diode_ok_under_pwm = diode
            self.tell(DiodeChecked(diode))
        if feedback != self.c.feedback_closed:
            self.tell(ContactorFeedback(feedback))
        if self.c.has_lock and self.lock_locked != self.c.lock_feedback:
            self.tell(LockFeedback(self.lock_locked))
        if self.start_pending and not self.journal_stalled:
            self.tell(TransactionRecorded())
        self.tell(Tick())

    @rule()
    def tick(self):
        self.tell(Tick())

    # ---- rules: the EV and the hardware ------------------------------------------------------------

    @rule(state=st.sampled_from([CpState.A, CpState.B, CpState.B, CpState.C, CpState.C, CpState.C, CpState.D,
                                 CpState.E, CpState.F]), event_driven=st.booleans())
    def ev_moves(self, state, event_driven):
        """The EV (or the cable, or a short) changes the pilot; an event-driven back-end reports it at once."""
        self.ev_state = state
        if event_driven and self.first_step_done:
            reading = self.pilot_reading()
            if reading != self.c.cp_state:
                self.tell(PilotChanged(reading))

    RARELY = st.sampled_from([False, False, False, True])
    MOSTLY = st.sampled_from([True, True, True, False])

    @rule(ok=MOSTLY)
    def ev_diode(self, ok):
        self.ev_diode_ok = ok

    @rule(welded=RARELY)
    def contactor_welds(self, welded):
        self.welded = welded and self.settings.feedback_supervised

    @rule(stuck=RARELY)
    def contactor_drops_out(self, stuck):
        """The contactor opens by itself (coil supply lost) and stays open, or works again."""
        self.stuck_open = stuck
        if stuck:
            self.contacts_closed = False

    @rule(jammed=RARELY, position=st.sampled_from([None, False, True]))
    def lock_jams(self, jammed, position):
        """The lock stops following its command, where it is or forced open/closed; or works again."""
        self.lock_jammed = jammed
        if jammed and position is not None:
            self.lock_locked = position

    @precondition(lambda self: self.cmd_closed)
    @rule(failure=st.sampled_from(["weld", "weld, EV back in C", "drop-out", "lock springs open", "diode fails",
                                   "RCD trips"]),
          then_steps=st.integers(0, 30))
    def hardware_fails_under_load(self, failure, then_steps):
        """What the safety path is for, while the contactor is closed; then the station's control steps."""
        match failure:
            case "weld" | "weld, EV back in C":
                self.contactor_welds(True)
            case "drop-out":
                self.contactor_drops_out(True)
            case "lock springs open":
                self.lock_jams(True, False)
            case "diode fails":
                self.ev_diode(False)
            case "RCD trips":
                self.tell(FaultChanged(Fault.RCD, True))
        if failure.startswith("weld"):
            self.ev_moves(CpState.B, event_driven=True)  # an open command, that the contacts do not follow
            self.control_step(0.01)  # the mirror contact still reads closed
        if failure == "weld, EV back in C":
            self.ev_moves(CpState.C, event_driven=True)  # asks again before the weld is detected (0.25 s)
        for _ in range(then_steps):
            self.control_step(0.01)

    @rule(fault=st.sampled_from(INJECTED_FAULTS), active=RARELY)
    def fault(self, fault, active):
        self.tell(FaultChanged(fault, active))

    @rule(ampacity=st.sampled_from([None, 13.0, 20.0, 32.0, 5.0]))
    def cable(self, ampacity):
        self.tell(CableDetected(ampacity))

    @rule()
    def reset_latched_faults(self):
        self.tell(ResetLatchedFaults())

    # ---- rules: driver, CSMS, journal ---------------------------------------------------------------

    @rule(tag=st.sampled_from(TAGS))
    def card(self, tag):
        self.tell(TokenPresented(tag))

    @rule(tag=st.sampled_from(TAGS), accepted=st.booleans(), parent=st.sampled_from(PARENTS))
    def authorization_answer(self, tag, accepted, parent):
        self.tell(AuthorizationResult(tag, accepted, parent))

    @precondition(lambda self: self.authorizing is not None)
    @rule(accepted=MOSTLY, parent=st.sampled_from(PARENTS))
    def csms_answers_the_authorization(self, accepted, parent):
        tag, self.authorizing = self.authorizing, None
        self.tell(AuthorizationResult(tag, accepted, parent))

    @rule(tag=st.sampled_from(TAGS), parent=st.sampled_from(PARENTS), then_steps=st.integers(0, 4))
    def driver_starts_a_session(self, tag, parent, then_steps):
        """The common path in one go: the EV asks for power, a card, an accepted Authorize, control steps."""
        self.ev_moves(CpState.C, event_driven=True)
        self.tell(TokenPresented(tag))
        if self.authorizing == tag:
            self.csms_answers_the_authorization(True, parent)
        for _ in range(then_steps):
            self.control_step(0.01)

    @rule(tag=st.sampled_from(TAGS))
    def remote_start(self, tag):
        self.tell(RemoteStart(tag))

    @rule(stalled=RARELY)
    def journal_stalls(self, stalled):
        self.journal_stalled = stalled

    @precondition(lambda self: self.start_pending)
    @rule()
    def journal_records_the_start(self):
        self.tell(TransactionRecorded())

    @precondition(lambda self: self.start_pending)
    @rule()
    def journal_fails_to_record_the_start(self):
        self.tell(FaultChanged(Fault.STORAGE, True))

    @rule(accepted=MOSTLY, parent=st.sampled_from(PARENTS))
    def start_transaction_answer(self, accepted, parent):
        self.tell(TransactionConfirmed(accepted, parent))

    @rule(reason=st.sampled_from([StopReason.REMOTE, StopReason.SOFT_RESET, StopReason.HARD_RESET,
                                  StopReason.LOCAL]))
    def stop_requested(self, reason):
        self.tell(StopRequested(reason))

    @rule()
    def unlock_requested(self):
        self.tell(UnlockRequested())

    @rule(operative=st.booleans())
    def availability(self, operative):
        self.tell(AvailabilityChanged(operative))

    @rule(limit=st.sampled_from([None, 0.0, 5.9, 6.0, 10.0, 32.0]))
    def charging_limit(self, limit):
        self.tell(ChargingLimitChanged(limit))


ControllerSafety.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    derandomize=True,  # the same sequences on every run: CI does not flake
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_controller_safety_invariants = ControllerSafety.TestCase
