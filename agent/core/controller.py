"""The charging-session controller for one connector: pure, deterministic, no I/O.

Events go in (`handle(event, now)`), commands come out. `now` is a monotonic time in seconds that
the caller injects, so every timer here is testable to the millisecond.

Safety rules held here:
* the contactor closes only while the EV asks for power (state C, or D where ventilation is
  available), a transaction is running and allowed to draw energy, no fault is active, the
  contactor's mirror contact agrees, and the minimum time since the last close has passed;
* it opens in the same call that sees any reason to open (C->B, unplug, fault, stop, PWM off);
* a contactor whose mirror contact stays closed after an open command is welded: the fault
  latches and the contactor is never closed again until a technician resets it;
* on an outlet with a lock, the transaction starts only once the lock's feedback confirms it locked,
  and the contactor closes only while it does; a lock that does not follow a command within
  `lock_timeout_s` is a lock fault (Fault.LOCK).

The connector status is derived from the same state, so the CSMS sees what the hardware does.
Everything here is protocol-neutral: each protocol adapter renders statuses, fault kinds and stop
reasons in its own words (OCPP 1.6: agent.ocpp.v16.vocabulary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

from agent.core.transaction_policy import (
    PLUGGED_AND_AUTHORIZED,
    SessionConditions,
    TransactionPolicy,
    TxPoint,
)
from hal.interfaces import CpState, IndicatorState, PilotMode
from hal.pilot_math import duty_for_current


class ConnectorStatus(StrEnum):
    AVAILABLE = "available"
    OCCUPIED = "occupied"  # plugged in or authorized, no transaction (yet)
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"  # a transaction runs, the EV draws nothing
    SUSPENDED_EVSE = "suspended_evse"  # a transaction runs, the station offers nothing
    FINISHED = "finished"  # the transaction is over, the cable is still in
    RESERVED = "reserved"
    UNAVAILABLE = "unavailable"
    FAULTED = "faulted"


class Fault(StrEnum):
    WELD = "weld"  # mirror contact closed while the contactor is commanded open (latched)
    CONTACTOR = "contactor"  # mirror contact did not follow a close, or opened by itself (latched)
    RCD = "rcd"  # residual current monitor tripped
    DIODE = "diode"  # EV diode missing/shorted (latched until unplug)
    PILOT = "pilot"  # CP shorted (E) or reads -12 V while not driven to F
    METER = "meter"  # energy meter not answering
    DEVICE = "device"  # another device (pilot link, PP, RCD input, mirror contact) cannot be read
    STORAGE = "storage"  # the journal cannot be written: no session may run unrecorded
    LOCK = "lock"  # lock feedback did not follow a lock/unlock command in time (until unplugged and agreeing)
    SUPERVISION = "supervision"  # the agent process is gone or stalled: nothing may charge unrecorded


LATCHED_FAULTS = frozenset({Fault.WELD, Fault.CONTACTOR})
# faults that open the contactor but leave the transaction running: it resumes once the cause is gone (a
# stalled agent answers again; a dead one restarts and stops it (StopReason.POWER_LOSS), or resumes it)
SUSPENDING_FAULTS = frozenset({Fault.SUPERVISION})


class StopReason(StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    EV_DISCONNECTED = "ev_disconnected"
    DEAUTHORIZED = "deauthorized"
    SOFT_RESET = "soft_reset"
    HARD_RESET = "hard_reset"
    UNLOCK_COMMAND = "unlock_command"
    POWER_LOSS = "power_loss"
    REBOOT = "reboot"
    EMERGENCY_STOP = "emergency_stop"
    OTHER = "other"
    TIMEOUT = "timeout"  # started at authorization, no EV plugged in within the connection timeout
    STOPPED_BY_EV = "stopped_by_ev"  # the policy ends transactions when the EV stops drawing energy


@dataclass(frozen=True)
class SessionSettings:
    """Everything configurable that the controller's decisions depend on."""

    max_current_a: float = 16.0  # min of the configured limit and the outlet's rating
    connection_timeout_s: float = 60.0  # OCPP 1.6 ConnectionTimeOut (2.0.1 TxCtrlr.EVConnectionTimeOut): authorization waits this long for a plug
    # when a session becomes a transaction and when it ends (agent.core.transaction_policy); the protocol adapter
    # sets it: 1.6 plugged-in + authorized (StopTransactionOnEVSideDisconnect: unplugging ends it), 2.0.1
    # TxStartPoint/TxStopPoint
    transaction_policy: TransactionPolicy = PLUGGED_AND_AUTHORIZED
    stop_on_invalid_id: bool = True  # OCPP 1.6 StopTransactionOnInvalidId (2.0.1 TxCtrlr.StopTxOnInvalidId)
    authorize_remote_tx: bool = True  # OCPP 1.6 AuthorizeRemoteTxRequests (2.0.1 AuthCtrlr.AuthorizeRemoteStart)
    ventilation_available: bool = False  # state D may charge only with ventilation
    feedback_timeout_s: float = 0.25  # mirror contact must follow a command within this time
    feedback_supervised: bool = True  # False when the board infers feedback (no mirror contact to trust)
    meter_failure_stops: bool = True  # False: a dead meter is reported (warning) but charging goes on
    min_close_interval_s: float = 1.0  # protects the contactor from chattering EVs
    ev_response_grace_s: float = 3.0  # IEC 61851-1: the EV answers a pilot change within 3 s
    # IEC 61851-1:2017 Annex A, Table A.6 sequence 10.2: after an orderly stop switched the PWM off (x1), an EV
    # still in C gets this long to open S2 before the contactor opens under load (EVerest uses 6 s too)
    stop_under_load_timeout_s: float = 6.0
    lock_timeout_s: float = 1.0  # the lock's feedback must follow a command within this time
    unlock_on_ev_side_disconnect: bool = True  # OCPP 1.6 UnlockConnectorOnEVSideDisconnect (2.0.1 TxCtrlr.StopTxOnEVSideDisconnect)


# ---- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PilotChanged:
    state: CpState


@dataclass(frozen=True)
class DiodeChecked:
    ok: bool


@dataclass(frozen=True)
class ContactorFeedback:
    closed: bool


@dataclass(frozen=True)
class LockFeedback:
    locked: bool  # the lock's position switch


@dataclass(frozen=True)
class UnlockRequested:
    """UnlockConnector (OCPP §5.18): stop a running transaction (UNLOCK_COMMAND), release a cable held after
    an EV-side disconnect, and command the lock open again, even if it already is commanded open (a retry
    of a lock that failed to open)."""


@dataclass(frozen=True)
class CableDetected:
    ampacity_a: float | None  # None: no cable / fixed cable


@dataclass(frozen=True)
class FaultChanged:
    fault: Fault
    active: bool


@dataclass(frozen=True)
class TokenPresented:
    id_token: str


@dataclass(frozen=True)
class AuthorizationResult:
    id_token: str
    accepted: bool
    parent_id_token: str | None = None


@dataclass(frozen=True)
class RemoteStart:
    id_token: str


@dataclass(frozen=True)
class ResumeTransaction:
    """A transaction the journal says was running before a restart continues (the EV is still plugged)."""

    id_token: str


@dataclass(frozen=True)
class StopRequested:
    reason: StopReason
    id_token: str | None = None


@dataclass(frozen=True)
class TransactionRecorded:
    """The journal committed (ok) or refused (not ok) the oldest BeginTransaction it had not answered yet;
    starts are journaled in order. Until its own start is committed a transaction offers no energy (no PWM,
    no close): a start that is not durable must not charge. A late answer for a start that was stopped
    before its commit grants nothing to the next transaction. A refused start ends its transaction (a
    journal that cannot be written at all arrives as FaultChanged(STORAGE))."""

    ok: bool = True


@dataclass(frozen=True)
class TransactionConfirmed:
    """The CSMS answered the transaction's start; `accepted` is its verdict on the id token."""

    accepted: bool
    parent_id_token: str | None = None


@dataclass(frozen=True)
class AvailabilityChanged:
    operative: bool


@dataclass(frozen=True)
class ReservationMade:
    """ReserveNow for this connector (or a reservation of connector 0 held on it), after
    `reservation_answer` said Accepted. It replaces the reservation the connector holds. Until it ends
    only `id_token`, or an id whose parent is `parent_id_token`, may start here. `expires_at` is on the
    clock of `now`."""

    reservation_id: int
    id_token: str
    parent_id_token: str | None
    expires_at: float
    any_connector: bool = False  # a reservation of connector 0 (the station), held on this connector


@dataclass(frozen=True)
class ReservationCancelled:
    """CancelReservation (or the reservation moved, or was used on another connector)."""

    reservation_id: int
    reason: str = "cancelled"


@dataclass(frozen=True)
class SettingsChanged:
    settings: SessionSettings


@dataclass(frozen=True)
class ResetLatchedFaults:
    """A technician cleared latched faults (only those whose cause is gone are cleared)."""


@dataclass(frozen=True)
class ChargingLimitChanged:
    """The Smart Charging limit in force (agent.core.smart_charging's composite schedule); None: no limit.
    Below 6 A nothing can be offered: the pilot stops offering (X1) and a transaction is suspended by the EVSE."""

    limit_a: float | None


@dataclass(frozen=True)
class Tick:
    """Time passed; evaluates timers."""


Event = (
    PilotChanged
    | DiodeChecked
    | ContactorFeedback
    | LockFeedback
    | UnlockRequested
    | CableDetected
    | FaultChanged
    | TokenPresented
    | AuthorizationResult
    | RemoteStart
    | ResumeTransaction
    | StopRequested
    | TransactionRecorded
    | TransactionConfirmed
    | AvailabilityChanged
    | ReservationMade
    | ReservationCancelled
    | SettingsChanged
    | ResetLatchedFaults
    | ChargingLimitChanged
    | Tick
)


# ---- commands -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetContactor:
    closed: bool


@dataclass(frozen=True)
class SetPilot:
    mode: PilotMode
    duty_percent: float = 100.0


@dataclass(frozen=True)
class SetLock:
    locked: bool


@dataclass(frozen=True)
class RequestAuthorization:
    id_token: str


@dataclass(frozen=True)
class BeginTransaction:
    id_token: str
    reservation_id: int | None = None  # the reservation this transaction uses (and so ends)


@dataclass(frozen=True)
class EndTransaction:
    reason: StopReason
    id_token: str | None = None


@dataclass(frozen=True)
class StatusChanged:
    status: ConnectorStatus
    fault: Fault | None = None  # the most severe active fault (a warning when the status is not FAULTED)
    info: str | None = None


@dataclass(frozen=True)
class ReservationEnded:
    """The connector no longer holds the reservation: "used" (a transaction started with it), "expired",
    "cancelled", "faulted", "unavailable", "replaced"."""

    reservation_id: int
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something a technician should see in the log (rejected card, ignored request...)."""

    text: str


Command = (
    SetContactor
    | SetPilot
    | SetLock
    | RequestAuthorization
    | BeginTransaction
    | EndTransaction
    | StatusChanged
    | ReservationEnded
    | Notice
)


# ---- state --------------------------------------------------------------------------------------


@dataclass
class _Authorization:
    id_token: str
    parent_id_token: str | None
    granted_at: float


@dataclass
class _Transaction:
    id_token: str
    parent_id_token: str | None
    started_at: float
    energy_blocked: bool = False  # CSMS said the id is invalid and StopTransactionOnInvalidId is false
    recorded: bool = False  # the journal holds its start (TransactionRecorded): only then may energy flow
    reached: frozenset[TxPoint] = frozenset()  # the policy's stop points that held during it (only they can end it)
    plugged_once: bool = False  # an EV was connected at some moment of it


@dataclass
class _LockHold:
    """The cable of a transaction that ended at an EV-side disconnect stays locked until its owner (the same
    id, or an id of the same parent id) presents the card, or the CSMS unlocks it
    (UnlockConnectorOnEVSideDisconnect = false)."""

    id_token: str
    parent_id_token: str | None


@dataclass(frozen=True)
class ConnectorView:
    """Read-only picture of a connector for status displays and the OCPP layer."""

    cp_state: CpState
    pilot_mode: PilotMode
    duty_percent: float
    offered_current_a: float
    contactor_closed: bool
    contactor_feedback: bool
    status: ConnectorStatus
    status_fault: Fault | None  # the fault the status reports (the most severe active one)
    faults: tuple[str, ...]
    transaction_active: bool
    id_token: str | None
    authorized_id_token: str | None
    operative: bool
    availability_scheduled: bool
    reservation: ReservationMade | None = None
    lock_commanded: bool = False
    lock_feedback: bool = False
    lock_held_for: str | None = None  # the id whose card releases the cable (UnlockConnectorOnEVSideDisconnect)


@dataclass
class ConnectorController:
    settings: SessionSettings = field(default_factory=SessionSettings)
    has_lock: bool = False

    cp_state: CpState = CpState.A
    diode_ok: bool = True
    feedback_closed: bool = False
    cable_a: float | None = None
    faults: set[Fault] = field(default_factory=set)
    operative: bool = True
    _inoperative_scheduled: bool = False

    _contactor_cmd: bool = False
    _contactor_cmd_at: float = -math.inf
    _last_close_at: float = -math.inf
    _pilot_out: SetPilot = field(default_factory=lambda: SetPilot(PilotMode.X1))
    _pwm_since: float | None = None
    _ev_answered_pwm: bool = False  # the EV went to C/D since the PWM started
    # the diode is unknown until a pilot sample taken while the PWM runs says so: no close before that
    _diode_verified: bool = False
    _pilot_seen: bool = False  # no lock command before the first pilot reading (a resumed session keeps it)
    _wind_down_since: float | None = None  # orderly stop under load: x1 sent, waiting for the EV to leave C
    _starts_unrecorded: int = 0  # transaction starts the journal has not answered yet (TransactionRecorded)
    _lock_cmd: bool = False
    _lock_cmd_at: float = -math.inf  # never commanded: the first step commands the lock open
    lock_feedback: bool = False
    _lock_hold: _LockHold | None = None
    _status: StatusChanged | None = None

    _auth: _Authorization | None = None
    _authorizing: str | None = None  # id tag waiting for an Authorize answer
    _tx: _Transaction | None = None
    _finishing: bool = False  # a transaction ended while the EV stays plugged
    _reservation: ReservationMade | None = None
    charging_limit_a: float | None = None  # Smart Charging (ChargingLimitChanged); None: no limit
    _now: float = 0.0

    # ---- public --------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Command]:
        """Apply one event at time `now` and return the commands to carry out, safety-critical first."""
        self._now = now
        out: list[Command] = []
        self._apply(event, out)
        self._check_contactor_feedback(out)
        self._check_lock_feedback(out)
        self._expire_authorization(out)
        self._expire_reservation(out)
        self._reconcile(out)
        return _safety_first(out)

    @property
    def transaction_active(self) -> bool:
        return self._tx is not None

    @property
    def transaction_id_token(self) -> str | None:
        return self._tx.id_token if self._tx else None

    @property
    def transaction_parent_id_token(self) -> str | None:
        return self._tx.parent_id_token if self._tx else None

    @property
    def plugged(self) -> bool:
        return self.cp_state in (CpState.B, CpState.C, CpState.D)

    def can_accept_remote_start(self, id_token: str | None = None) -> bool:
        """Whether a RemoteStartTransaction (for `id_token`, if given) may be accepted here. On a reserved
        connector only the reserved id may start, or any id when the reservation has a parent id (its
        Authorize tells whether the id belongs to it)."""
        r = self._reservation
        if r is not None and id_token is not None and r.parent_id_token is None and not _same_id(id_token, r.id_token):
            return False
        return (self._tx is None and self.operative and not self.faults and self._authorizing is None
                and self._lock_hold is None)

    @property
    def reservation(self) -> ReservationMade | None:
        return self._reservation

    def reservation_answer(self, reservation_id: int) -> str:
        """The ReserveNow.conf status for reserving this connector (OCPP 1.6 §5.13): a reservation with the
        id the connector already holds is replaced; another one finds the connector Occupied."""
        if self.blocking_faults:
            return "Faulted"
        if not self.operative:
            return "Unavailable"
        if self._tx is not None or self._lock_hold is not None:
            return "Occupied"
        if self._reservation is not None and self._reservation.reservation_id == reservation_id:
            return "Accepted"
        if self._reservation is not None or self.plugged or self._auth is not None or self._authorizing:
            return "Occupied"
        return "Accepted"

    def admits(self, id_token: str, parent_id_token: str | None) -> bool:
        """Whether the id (with its parent, if known) may start here: anyone without a reservation; the
        reserved id, or an id with the reservation's parent id, with one."""
        r = self._reservation
        return (
            r is None
            or _same_id(id_token, r.id_token)
            or (r.parent_id_token is not None and parent_id_token is not None
                and _same_id(parent_id_token, r.parent_id_token))
        )

    @property
    def contactor_commanded(self) -> bool:
        return self._contactor_cmd

    @property
    def awaiting_diode_check(self) -> bool:
        """The PWM runs but no pilot sample taken since has told the diode: the control loop reports the next
        one (DiodeChecked) even if it did not change."""
        return self._pilot_out.mode is PilotMode.PWM and not self._diode_verified

    @property
    def pilot_seen(self) -> bool:
        """A pilot reading was handled (lock commands wait for the first one)."""
        return self._pilot_seen

    @property
    def pwm_offered(self) -> bool:
        """The pilot is driven with PWM now (a sample taken now can tell the EV's diode)."""
        return self._pilot_out.mode is PilotMode.PWM

    @property
    def awaiting_record(self) -> bool:
        """A transaction started whose start the journal has not confirmed yet (TransactionRecorded)."""
        return self._tx is not None and not self._tx.recorded

    @property
    def lock_held_for(self) -> str | None:
        """The id whose card releases a cable held locked after an EV-side disconnect."""
        return self._lock_hold.id_token if self._lock_hold else None

    @property
    def blocking_faults(self) -> set[Fault]:
        """The active faults that forbid energy; a dead meter only does when configured to."""
        if self.settings.meter_failure_stops:
            return self.faults
        return self.faults - {Fault.METER}

    def offered_current_a(self) -> float:
        limit = self.settings.max_current_a
        if self.cable_a is not None:
            limit = min(limit, self.cable_a)
        if self.charging_limit_a is not None:
            limit = min(limit, self.charging_limit_a)
        return limit

    def view(self) -> ConnectorView:
        status = self._status or self._derive_status()
        return ConnectorView(
            cp_state=self.cp_state,
            pilot_mode=self._pilot_out.mode,
            duty_percent=self._pilot_out.duty_percent,
            offered_current_a=self.offered_current_a() if self._pilot_out.mode is PilotMode.PWM else 0.0,
            contactor_closed=self._contactor_cmd,
            contactor_feedback=self.feedback_closed,
            status=status.status,
            status_fault=status.fault,
            faults=tuple(sorted(self.faults)),
            transaction_active=self._tx is not None,
            id_token=self._tx.id_token if self._tx else None,
            authorized_id_token=self._auth.id_token if self._auth else None,
            operative=self.operative,
            availability_scheduled=self._inoperative_scheduled,
            reservation=self._reservation,
            lock_commanded=self._lock_cmd,
            lock_feedback=self.lock_feedback,
            lock_held_for=self.lock_held_for,
        )

    # ---- event handling ------------------------------------------------------------------------

    def _apply(self, event: Event, out: list[Command]) -> None:
        match event:
            case PilotChanged(state):
                self._on_pilot(state, out)
            case DiodeChecked(ok):
                self.diode_ok = ok
                if self._pilot_out.mode is PilotMode.PWM:  # a sample under PWM: the diode is known now
                    self._diode_verified = True
                if not ok and self._pilot_out.mode is PilotMode.PWM and self.plugged:
                    self._raise_fault(Fault.DIODE, out)
            case ContactorFeedback(closed):
                self.feedback_closed = closed
            case LockFeedback(locked):
                self.lock_feedback = locked
            case UnlockRequested():
                self._on_unlock_requested(out)
            case CableDetected(ampacity):
                self.cable_a = ampacity
            case FaultChanged(fault, active):
                if active:
                    self._raise_fault(fault, out)
                elif fault not in LATCHED_FAULTS and fault not in (Fault.DIODE, Fault.LOCK):
                    self.faults.discard(fault)
            case TokenPresented(id_token):
                self._on_id_token(id_token, out)
            case AuthorizationResult(id_token, accepted, parent):
                self._on_authorization(id_token, accepted, parent, out)
            case RemoteStart(id_token):
                self._on_remote_start(id_token, out)
            case ResumeTransaction(id_token):
                if self._tx is None:  # already journaled: no BeginTransaction, and recorded
                    self._tx = _Transaction(id_token, None, self._now, recorded=True)
                    self._note_start_conditions()
                    self._tx.plugged_once = True  # resumed because its EV was still plugged in
            case StopRequested(reason, id_token):
                if self._tx is not None:
                    self._stop(reason, id_token, out)
                elif reason in (StopReason.SOFT_RESET, StopReason.HARD_RESET):
                    self._auth = None
            case TransactionRecorded(ok):
                self._starts_unrecorded = max(0, self._starts_unrecorded - 1)
                if self._starts_unrecorded == 0 and self._tx is not None and not self._tx.recorded:
                    if ok:
                        self._tx.recorded = True  # the answer for the running transaction's own start
                    else:
                        out.append(Notice("the journal refused the transaction's start: it ends, no energy"))
                        self._stop(StopReason.OTHER, None, out)
            case TransactionConfirmed(accepted, parent):
                self._on_transaction_confirmed(accepted, parent, out)
            case AvailabilityChanged(operative):
                self._on_availability(operative)
            case ReservationMade() as reservation:
                if self._reservation is not None and self._reservation.reservation_id != reservation.reservation_id:
                    out.append(ReservationEnded(self._reservation.reservation_id, "replaced"))
                self._reservation = reservation
            case ReservationCancelled(reservation_id, reason):
                if self._reservation is not None and self._reservation.reservation_id == reservation_id:
                    self._end_reservation(reason, out)
            case SettingsChanged(settings):
                self.settings = settings
            case ResetLatchedFaults():
                if self.feedback_closed == self._contactor_cmd:  # only once the mirror contact agrees
                    self.faults -= LATCHED_FAULTS
                if self.lock_feedback == self._lock_cmd:  # only once the lock is where it was commanded
                    self.faults.discard(Fault.LOCK)
            case ChargingLimitChanged(limit_a):
                self.charging_limit_a = limit_a
            case Tick():
                pass

    def _on_pilot(self, state: CpState, out: list[Command]) -> None:
        was_plugged = self.plugged
        self.cp_state = state
        self._pilot_seen = True
        if state in (CpState.C, CpState.D) and self._pilot_out.mode is PilotMode.PWM:
            self._ev_answered_pwm = True
        if state is CpState.A:
            self.faults.discard(Fault.DIODE)  # a new EV gets a new diode check
        if state is CpState.E or (state is CpState.F and self._pilot_out.mode is not PilotMode.F):
            self._raise_fault(Fault.PILOT, out)
        elif Fault.PILOT in self.faults and state in (CpState.A, CpState.B, CpState.C, CpState.D):
            self.faults.discard(Fault.PILOT)
        if was_plugged and state is CpState.A:
            self._on_unplug(out)

    def _on_unplug(self, out: list[Command]) -> None:
        self._apply_stop_points(out)  # at once: the plug is out, an EV_CONNECTED stop point ends it now
        self._finishing = False

    def _conditions(self) -> SessionConditions:
        # a running transaction keeps its authorization until an explicit stop (local, remote, deauthorized,
        # invalid id with StopTransactionOnInvalidId) ends it: those decide, with their own reasons
        authorized = self._auth is not None if self._tx is None else True
        transfer = self._contactor_cmd and self.cp_state in (CpState.C, CpState.D)
        return SessionConditions(ev_connected=self.plugged, authorized=authorized, energy_transfer=transfer)

    def _note_start_conditions(self) -> None:
        assert self._tx is not None
        now = self._conditions()
        self._tx.reached = self.settings.transaction_policy.reached(now, frozenset())
        self._tx.plugged_once = now.ev_connected

    def _apply_stop_points(self, out: list[Command]) -> None:
        """End the transaction when a stop point of the policy that held during it holds no more."""
        tx = self._tx
        if tx is None:
            return
        policy = self.settings.transaction_policy
        now = self._conditions()
        tx.plugged_once |= now.ev_connected
        ended = policy.ends(now, tx.reached)
        if ended is None:
            tx.reached = policy.reached(now, tx.reached)
            # only a transaction started at authorization can lack an EV (1.6 never starts one unplugged)
            if (not tx.plugged_once and TxPoint.AUTHORIZED in policy.start_points
                    and self._now - tx.started_at >= self.settings.connection_timeout_s):
                self._stop(StopReason.TIMEOUT, None, out)  # no EV came
            return
        # `authorized` holds for as long as the transaction runs (see _conditions): what ends it here is the
        # EV, by leaving or by no longer drawing energy
        self._stop(StopReason.STOPPED_BY_EV if ended is TxPoint.ENERGY_TRANSFER else StopReason.EV_DISCONNECTED,
                   None, out)

    def _on_unlock_requested(self, out: list[Command]) -> None:
        if self._tx is not None:
            self._stop(StopReason.UNLOCK_COMMAND, None, out)
        if self._lock_hold is not None:
            out.append(Notice(f"cable held for {self._lock_hold.id_token} released by an unlock command"))
            self._lock_hold = None
        if self._auth is not None and self._lock_cmd:  # locking to start a session: the CSMS wants it open
            out.append(Notice(f"authorization for {self._auth.id_token} dropped: connector unlocked by command"))
            self._auth = None
        if self._may_be_live():
            out.append(Notice("unlock waits: the contactor is closed or its mirror contact reads closed"))
            return  # _reconcile unlocks once the contacts read open (never, if they are welded)
        self._lock_cmd = False
        self._lock_cmd_at = self._now  # a new deadline for the feedback (a retry if it failed to open)
        out.append(SetLock(False))

    def _on_id_token(self, id_token: str, out: list[Command]) -> None:
        hold = self._lock_hold
        if self._tx is None and hold is not None:
            if _same_id(id_token, hold.id_token):
                self._lock_hold = None
                out.append(Notice(f"card {id_token}: cable released"))
            elif hold.parent_id_token is not None:
                self._authorizing = id_token  # the answer tells whether the card has the owner's parent id
                out.append(RequestAuthorization(id_token))
            else:
                out.append(Notice(f"card {id_token} ignored: the cable stays locked until {hold.id_token} is presented"))
            return
        if self._tx is not None:
            if id_token == self._tx.id_token:
                self._stop(StopReason.LOCAL, id_token, out)
            else:
                # another card may stop the session if it shares the parent id: ask the CSMS
                self._authorizing = id_token
                out.append(RequestAuthorization(id_token))
            return
        if self._auth is not None and self._auth.id_token == id_token:
            self._auth = None  # second swipe before plugging in cancels
            out.append(Notice(f"authorization for {id_token} cancelled by a second swipe"))
            return
        if not self.operative or self.faults:  # a new session needs a working meter for its start reading
            out.append(
                Notice(f"card {id_token} ignored: connector {'faulted' if self.faults else 'unavailable'}")
            )
            return
        r = self._reservation
        if r is not None and r.parent_id_token is None and not _same_id(id_token, r.id_token):
            # nothing to ask the CSMS: no parent id could make this card the reserved one
            out.append(Notice(f"card {id_token} refused: connector reserved (reservation {r.reservation_id})"))
            return
        self._authorizing = id_token
        out.append(RequestAuthorization(id_token))

    def _on_remote_start(self, id_token: str, out: list[Command]) -> None:
        if not self.can_accept_remote_start():
            out.append(Notice(f"remote start for {id_token} ignored: connector busy"))
            return
        if self.settings.authorize_remote_tx or not self.admits(id_token, None):
            self._authorizing = id_token  # (on a reserved connector: the answer tells the id's parent)
            out.append(RequestAuthorization(id_token))
        else:
            self._auth = _Authorization(id_token, None, self._now)

    def _on_authorization(self, id_token: str, accepted: bool, parent: str | None, out: list[Command]) -> None:
        if self._authorizing != id_token:
            return  # stale answer (the session moved on)
        self._authorizing = None
        hold = self._lock_hold
        if self._tx is None and hold is not None:
            if accepted and parent is not None and hold.parent_id_token is not None and _same_id(parent, hold.parent_id_token):
                self._lock_hold = None
                out.append(Notice(f"card {id_token} (parent id {parent}): cable released"))
            else:
                out.append(Notice(f"card {id_token} may not release the cable held for {hold.id_token}"))
            return
        if self._tx is not None:
            same_group = parent is not None and parent == self._tx.parent_id_token
            if accepted and same_group:
                self._stop(StopReason.LOCAL, id_token, out)
            else:
                out.append(Notice(f"card {id_token} may not stop the running session"))
            return
        if not accepted:
            out.append(Notice(f"card {id_token} rejected"))
            return
        if not self.admits(id_token, parent):
            assert self._reservation is not None
            out.append(Notice(f"card {id_token} refused: connector reserved (reservation "
                              f"{self._reservation.reservation_id}) for another id and parent id"))
            return
        self._auth = _Authorization(id_token, parent, self._now)

    def _on_transaction_confirmed(self, accepted: bool, parent: str | None, out: list[Command]) -> None:
        if self._tx is None:
            return
        if parent is not None:
            self._tx.parent_id_token = parent
        if accepted:
            self._tx.energy_blocked = False
        elif self.settings.stop_on_invalid_id:
            self._stop(StopReason.DEAUTHORIZED, None, out)
        else:
            self._tx.energy_blocked = True

    def _on_availability(self, operative: bool) -> None:
        if operative:
            self.operative = True
            self._inoperative_scheduled = False
        elif self._tx is not None:
            self._inoperative_scheduled = True
        else:
            self.operative = False
            self._auth = None

    def _end_reservation(self, reason: str, out: list[Command]) -> None:
        r = self._reservation
        assert r is not None
        self._reservation = None
        out.append(ReservationEnded(r.reservation_id, reason))
        out.append(Notice(f"reservation {r.reservation_id} for {r.id_token} ended: {reason}"))

    def _raise_fault(self, fault: Fault, out: list[Command]) -> None:
        if fault in self.faults:
            return
        self.faults.add(fault)
        out.append(Notice(f"fault: {fault.value}"))
        if fault is Fault.LOCK and self._tx is None and self._auth is not None:
            out.append(Notice(f"authorization for {self._auth.id_token} dropped: the connector could not be locked"))
            self._auth = None  # no transaction without a locked plug (OCTT TC_024)
        if self._tx is not None and fault in self.blocking_faults and fault not in SUSPENDING_FAULTS:
            self._stop(StopReason.OTHER, None, out)

    def _stop(self, reason: StopReason, id_token: str | None, out: list[Command]) -> None:
        assert self._tx is not None
        tx, self._tx = self._tx, None
        self._auth = None
        if (self.has_lock and self._lock_cmd and not self.plugged and id_token is None
                and not self.settings.unlock_on_ev_side_disconnect and reason is not StopReason.UNLOCK_COMMAND):
            # EV side gone, UnlockConnectorOnEVSideDisconnect false: the cable stays locked for its owner
            self._lock_hold = _LockHold(tx.id_token, tx.parent_id_token)
            out.append(Notice(f"cable stays locked until {tx.id_token} is presented (UnlockConnectorOnEVSideDisconnect)"))
        self._finishing = self.plugged
        out.append(EndTransaction(reason, id_token))
        if self._inoperative_scheduled:
            self._inoperative_scheduled = False
            self.operative = False

    # ---- timers --------------------------------------------------------------------------------

    def _check_contactor_feedback(self, out: list[Command]) -> None:
        if not self.settings.feedback_supervised:
            return
        settled = self._now - self._contactor_cmd_at >= self.settings.feedback_timeout_s
        if not settled or self.feedback_closed == self._contactor_cmd:
            return
        self._raise_fault(Fault.CONTACTOR if self._contactor_cmd else Fault.WELD, out)

    def _may_be_live(self) -> bool:
        """The outlet may carry mains: the contactor is commanded closed or its mirror contact reads closed
        (still opening, or welded)."""
        return self._contactor_cmd or (self.settings.feedback_supervised and self.feedback_closed)

    def _check_lock_feedback(self, out: list[Command]) -> None:
        if not self.has_lock or self._lock_cmd_at == -math.inf:
            return  # never commanded yet (the first pilot reading commands it): no deadline to miss
        agrees = self.lock_feedback == self._lock_cmd
        if agrees:
            if Fault.LOCK in self.faults and not self.plugged:
                self.faults.discard(Fault.LOCK)  # nothing plugged and the lock works again: the next EV retries
                out.append(Notice("lock fault cleared: the lock follows its command again"))
            return
        if self._now - self._lock_cmd_at >= self.settings.lock_timeout_s:
            self._raise_fault(Fault.LOCK, out)

    def _expire_authorization(self, out: list[Command]) -> None:
        auth = self._auth
        if auth is None or self._tx is not None or self.plugged:
            return
        if self._now - auth.granted_at >= self.settings.connection_timeout_s:
            self._auth = None
            out.append(
                Notice(f"authorization for {auth.id_token} expired: no EV plugged in within ConnectionTimeOut")
            )

    def _expire_reservation(self, out: list[Command]) -> None:
        if self._reservation is not None and self._now >= self._reservation.expires_at:
            self._end_reservation("expired", out)

    # ---- decisions -----------------------------------------------------------------------------

    def _reconcile(self, out: list[Command]) -> None:
        if self._reservation is not None and (self.blocking_faults or not self.operative):
            # §5.13: a reservation ends when its connector becomes Faulted or Unavailable
            self._end_reservation("faulted" if self.blocking_faults else "unavailable", out)
        self._apply_stop_points(out)
        # a transaction needs an authorization (its token); the policy says whether it also waits for the EV
        ready_to_start = (
            self._tx is None
            and self._auth is not None
            and self.operative
            and not self.faults
            and self.settings.transaction_policy.starts(self._conditions())
        )
        # an outlet with a lock locks the plug first: the transaction starts once the feedback confirms it
        locking_to_start = (ready_to_start and self.plugged and self.has_lock
                            and not (self._lock_cmd and self.lock_feedback))
        if ready_to_start and not locking_to_start:
            assert self._auth is not None
            auth, self._auth = self._auth, None
            reservation_id = None
            if self._reservation is not None and self.admits(auth.id_token, auth.parent_id_token):
                reservation_id = self._reservation.reservation_id
                self._end_reservation("used", out)
            if self.admits(auth.id_token, auth.parent_id_token):
                self._tx = _Transaction(auth.id_token, auth.parent_id_token, self._now)
                self._note_start_conditions()
                self._finishing = False
                self._starts_unrecorded += 1
                out.append(BeginTransaction(auth.id_token, reservation_id))
            else:  # authorized before the connector was reserved for someone else
                out.append(Notice(f"authorization for {auth.id_token} dropped: the connector is reserved"))

        want_lock = self.has_lock and (
            self._may_be_live()  # a plug is never released while the outlet may carry mains
            or locking_to_start
            or self._lock_hold is not None
            or (self._tx is not None and (self.plugged or not self.settings.unlock_on_ev_side_disconnect))
        )
        first_lock_command = self.has_lock and self._lock_cmd_at == -math.inf
        if self._pilot_seen and (want_lock != self._lock_cmd or first_lock_command):
            self._lock_cmd = want_lock
            self._lock_cmd_at = self._now
            out.append(SetLock(want_lock))

        self._drive_pilot(out)

        want_closed = self._may_close()
        if want_closed or not self._contactor_cmd:
            self._wind_down_since = None
        elif self._may_finish_under_load():
            want_closed = True  # orderly stop: x1 is out, the EV gets its time to open S2 first
        if want_closed != self._contactor_cmd:
            if want_closed and self._now - self._last_close_at < self.settings.min_close_interval_s:
                pass  # closes on a later Tick
            else:
                self._contactor_cmd = want_closed
                self._contactor_cmd_at = self._now
                if want_closed:
                    self._last_close_at = self._now
                out.append(SetContactor(want_closed))
                self._drive_pilot(out)  # an Unavailable outlet goes from x1 to F once the contactor is open

        status = self._derive_status()
        if status != self._status:
            self._status = status
            out.append(status)

    def _drive_pilot(self, out: list[Command]) -> None:
        pilot = self._desired_pilot()
        if pilot == self._pilot_out:
            return
        if pilot.mode is not PilotMode.PWM:
            self._pwm_since = None
        elif self._pilot_out.mode is not PilotMode.PWM:
            self._pwm_since = self._now
            self._ev_answered_pwm = self._ev_requests_power()
            self._diode_verified = False  # known only from a sample taken under this PWM
        self._pilot_out = pilot
        out.append(pilot)

    def _offer_duty(self) -> float | None:
        return duty_for_current(self.offered_current_a())

    def _energy_allowed(self) -> bool:
        return (
            self._tx is not None
            and self._tx.recorded
            and not self._tx.energy_blocked
            and not self.blocking_faults
            and self.operative
            and self.plugged  # whatever the policy: energy only to a connected EV
            and self._offer_duty() is not None
        )

    def _desired_pilot(self) -> SetPilot:
        if not self.operative and self._tx is None:
            # Unavailable: state F, but only once the contactor is open; under load x1 first, so the EV can
            # answer (open S2) before the contacts break the current (an EV cannot answer under F)
            return SetPilot(PilotMode.X1, 100.0) if self._contactor_cmd else SetPilot(PilotMode.F, 0.0)
        if self._energy_allowed():
            duty = self._offer_duty()
            assert duty is not None
            return SetPilot(PilotMode.PWM, round(duty, 2))
        return SetPilot(PilotMode.X1, 100.0)

    def _ev_requests_power(self) -> bool:
        return self.cp_state is CpState.C or (
            self.cp_state is CpState.D and self.settings.ventilation_available
        )

    def _may_finish_under_load(self) -> bool:
        """Whether a closed contactor may stay closed a little longer although energy is no longer granted:
        only for an orderly stop (remote/local stop, reset, deauthorization, a limit below 6 A, unavailable),
        only while the EV still draws (C, or D with ventilation) and for at most stop_under_load_timeout_s
        (IEC 61851-1:2017 Annex A, Table A.6 seq. 10.2). Safety causes never wait: a blocking fault, an
        unplug, C->B, E/F, a lock that reads open all open the contactor in the same step."""
        if (self.blocking_faults or not self.plugged or not self._ev_requests_power()
                or (self.has_lock and not (self._lock_cmd and self.lock_feedback))):
            return False
        if self._wind_down_since is None:
            self._wind_down_since = self._now
        return self._now - self._wind_down_since < self.settings.stop_under_load_timeout_s

    def _may_close(self) -> bool:
        return (
            self._energy_allowed()
            and self._pilot_out.mode is PilotMode.PWM
            and self._ev_requests_power()
            and self.diode_ok
            and self._diode_verified  # checked under this PWM before the first close (never in its step)
            # on an outlet with a lock, only while its feedback confirms the plug locked
            and (not self.has_lock or (self._lock_cmd and self.lock_feedback))
            # a closed mirror contact while commanded open means welded contacts
            and (self._contactor_cmd or not self.feedback_closed or not self.settings.feedback_supervised)
        )

    def _derive_status(self) -> StatusChanged:
        if self.blocking_faults:
            return StatusChanged(ConnectorStatus.FAULTED, _most_severe(self.blocking_faults))
        status = self._operational_status()
        if self.faults:  # a fault that does not stop charging: the status with the fault is a warning
            return StatusChanged(status.status, _most_severe(self.faults), status.info)
        return status

    def _operational_status(self) -> StatusChanged:
        if self._tx is not None:
            if not self._tx.recorded and self.plugged:
                return StatusChanged(ConnectorStatus.OCCUPIED)  # until the journal holds the start
            if not self.plugged:
                return StatusChanged(ConnectorStatus.SUSPENDED_EV, info="EV side disconnected")
            if not self._energy_allowed():
                return StatusChanged(ConnectorStatus.SUSPENDED_EVSE)
            if self._ev_requests_power():
                return StatusChanged(ConnectorStatus.CHARGING)
            if (
                self._pwm_since is not None
                and not self._ev_answered_pwm
                and self._now - self._pwm_since < self.settings.ev_response_grace_s
            ):
                # the EV has up to 3 s to answer a new PWM; it is not "suspended" before that
                return StatusChanged(ConnectorStatus.OCCUPIED)
            return StatusChanged(ConnectorStatus.SUSPENDED_EV)
        if not self.operative:
            return StatusChanged(ConnectorStatus.UNAVAILABLE)
        if self._lock_hold is not None:  # the session is over, but its cable is still locked in the outlet
            return StatusChanged(ConnectorStatus.FINISHED)
        if self._reservation is not None and self._auth is None:
            return StatusChanged(ConnectorStatus.RESERVED)  # until the reserved id is authorized here
        if self.plugged:
            return StatusChanged(ConnectorStatus.FINISHED if self._finishing else ConnectorStatus.OCCUPIED)
        if self._auth is not None:
            return StatusChanged(ConnectorStatus.OCCUPIED)  # authorized, waiting for the plug
        return StatusChanged(ConnectorStatus.AVAILABLE)


_FAULT_SEVERITY = [
    Fault.WELD, Fault.RCD, Fault.CONTACTOR, Fault.LOCK, Fault.STORAGE, Fault.SUPERVISION, Fault.DEVICE, Fault.PILOT, Fault.DIODE,
    Fault.METER,
]


def indicator_for(status: ConnectorStatus) -> IndicatorState:
    """What the connector's status LEDs show for a connector status."""
    match status:
        case ConnectorStatus.FAULTED:
            return IndicatorState.FAULT
        case ConnectorStatus.UNAVAILABLE:
            return IndicatorState.OFF
        case ConnectorStatus.CHARGING | ConnectorStatus.SUSPENDED_EV | ConnectorStatus.SUSPENDED_EVSE:
            return IndicatorState.CHARGING
        case _:  # available, occupied, reserved, finished: the outlet is there for its driver
            return IndicatorState.READY


def _same_id(a: str, b: str) -> bool:
    """IdTokens compare case-insensitively (OCPP 1.6 §7.28)."""
    return a.casefold() == b.casefold()


def _most_severe(faults: set[Fault]) -> Fault:
    return next(f for f in _FAULT_SEVERITY if f in faults)


def _safety_first(commands: list[Command]) -> list[Command]:
    """Opening the contactor goes before anything else the same event caused."""
    opens = [c for c in commands if isinstance(c, SetContactor) and not c.closed]
    return opens + [c for c in commands if c not in opens]


def route_id_token(controllers: dict[int, ConnectorController], id_token: str) -> int | None:
    """Which connector a card swiped at the station's single reader is meant for."""
    for cid, ctl in controllers.items():
        if ctl.transaction_id_token == id_token:
            return cid  # stopping one's own session
        if ctl.lock_held_for is not None and _same_id(ctl.lock_held_for, id_token) and not ctl.transaction_active:
            return cid  # releasing one's own cable (UnlockConnectorOnEVSideDisconnect = false)
    for cid, ctl in controllers.items():
        reservation = ctl.reservation
        if reservation is not None and _same_id(reservation.id_token, id_token) and not ctl.transaction_active:
            if reservation.any_connector:  # the station is reserved: an EV already plugged in elsewhere first
                for other_cid, other in controllers.items():
                    if (other.reservation is None and other.plugged and not other.transaction_active
                            and other.operative and not other.faults):
                        return other_cid
            return cid  # the driver who reserved this connector (or the station)
    # a connector reserved for someone else is the last choice: only the reservation's parent id may let the
    # card in there (the connector's controller refuses the card, without asking the CSMS, if it has none)
    for reserved_too in (False, True):
        candidates = {cid: ctl for cid, ctl in controllers.items()
                      if (reserved_too or ctl.reservation is None) and ctl.lock_held_for is None}
        for cid, ctl in candidates.items():
            if ctl.plugged and not ctl.transaction_active and ctl.operative and not ctl.faults:
                return cid  # EV waiting for authorization
        for cid, ctl in candidates.items():
            if not ctl.transaction_active and ctl.operative and not ctl.faults and not ctl.plugged:
                return cid  # authorize first, plug in afterwards
    running = [cid for cid, ctl in controllers.items() if ctl.transaction_active]
    if len(running) == 1:
        return running[0]
    for cid, ctl in controllers.items():
        if ctl.lock_held_for is not None:
            return cid  # a card that may share the held cable's parent id: that connector asks the CSMS
    return None


def reserve_any_connector(controllers: dict[int, ConnectorController], reservation_id: int) -> tuple[str, int | None]:
    """ReserveNow for connector 0 (ReserveConnectorZeroSupported): the answer, and the connector that
    holds the reservation. Holding it on one free connector keeps that connector available to the
    reserved id while the others stay open to anyone; the reserved id may still start on any connector
    (`station_reservation_used`). No free connector: Occupied if one is in use, else Unavailable, else
    Faulted."""
    answers = {cid: ctl.reservation_answer(reservation_id) for cid, ctl in controllers.items()}
    for cid, ctl in controllers.items():  # the same reservation again: it stays where it is
        if ctl.reservation is not None and ctl.reservation.reservation_id == reservation_id and answers[cid] == "Accepted":
            return "Accepted", cid
    free = [cid for cid, answer in answers.items() if answer == "Accepted"]
    if free:
        return "Accepted", free[0]
    for answer in ("Occupied", "Unavailable", "Faulted"):
        if answer in answers.values():
            return answer, None
    return "Rejected", None


def station_reservation_used(controllers: dict[int, ConnectorController], connector_id: int) -> int | None:
    """The connector holding a reservation of connector 0 that the transaction just started on
    `connector_id` (another connector) uses: the reserved id, or an id of the same parent id."""
    started = controllers[connector_id]
    id_token = started.transaction_id_token
    if id_token is None:
        return None
    for cid, ctl in controllers.items():
        reservation = ctl.reservation
        if (cid != connector_id and reservation is not None and reservation.any_connector
                and ctl.admits(id_token, started.transaction_parent_id_token)):
            return cid
    return None
