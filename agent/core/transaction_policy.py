"""When a charging session becomes a transaction, and when that transaction ends: a policy, not code paths.

A protocol version configures it; the session controller only asks it. OCPP 1.6 has one fixed rule (a
transaction starts once the EV is plugged in and the driver is authorized, and ends when the driver or the
CSMS stops it, or, with StopTransactionOnEVSideDisconnect, when the cable is unplugged). OCPP 2.0.1 makes
the same decisions configurable (TxStartPoint / TxStopPoint, OCPP 2.0.1 Part 2 E01-E07); its adapter maps
those lists onto the points below.

The points are conditions over the session, each true or false at any moment:
- EV_CONNECTED: the cable is plugged in to an EV (pilot B, C or D);
- AUTHORIZED: the session holds a valid authorization (a token accepted, a remote start);
- POWER_PATH_CLOSED: both of the above: everything the station needs before it may offer energy;
- ENERGY_TRANSFER: the contactor is closed and the EV asks for power (C, or D with ventilation).
A transaction starts when ANY start point becomes true, and ends when ANY stop point, having been true
during the transaction, becomes false. Energy never depends on the policy: it always needs an authorized,
connected, recorded transaction (the controller's safety rules).

What the session controller does with it today: every transaction carries the token that authorized it, so
a start point is honoured once an authorization is there (AUTHORIZED: at once, even before the EV is plugged
in, ending with reason timeout if no EV comes within the connection timeout; EV_CONNECTED and
POWER_PATH_CLOSED: when the EV is plugged in and authorized). A transaction that starts at EV_CONNECTED before
any authorization, and receives its token later, is left for the OCPP 2.0.1 adapter's work. Explicit stops
(local, remote, deauthorized, reset, unlock) keep their own reasons; the policy adds the stops by condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class TxPoint(StrEnum):
    EV_CONNECTED = "ev_connected"
    AUTHORIZED = "authorized"
    POWER_PATH_CLOSED = "power_path_closed"
    ENERGY_TRANSFER = "energy_transfer"


@dataclass(frozen=True)
class SessionConditions:
    """What the controller knows of a session at one moment."""

    ev_connected: bool
    authorized: bool
    energy_transfer: bool = False

    def holds(self, point: TxPoint) -> bool:
        match point:
            case TxPoint.EV_CONNECTED:
                return self.ev_connected
            case TxPoint.AUTHORIZED:
                return self.authorized
            case TxPoint.POWER_PATH_CLOSED:
                return self.ev_connected and self.authorized
            case TxPoint.ENERGY_TRANSFER:
                return self.energy_transfer
        raise ValueError(f"unknown transaction point {point!r}")  # pragma: no cover - exhaustive above


class PolicyError(ValueError):
    """A start/stop point list that cannot be honoured; the message names the point and why."""


@dataclass(frozen=True)
class TransactionPolicy:
    start_points: tuple[TxPoint, ...]
    stop_points: tuple[TxPoint, ...]

    def __post_init__(self) -> None:
        if not self.start_points:
            raise PolicyError("a transaction needs at least one start point")
        if TxPoint.ENERGY_TRANSFER in self.start_points:
            # energy flows only inside a recorded transaction (issue 9): a transaction cannot start from it
            raise PolicyError("energy_transfer cannot start a transaction: energy flows only inside a recorded one")
        for points in (self.start_points, self.stop_points):
            if len(set(points)) != len(points):
                raise PolicyError(f"a point is listed twice: {', '.join(p.value for p in points)}")

    def starts(self, now: SessionConditions) -> bool:
        """Whether a session with no transaction becomes one now."""
        return any(now.holds(point) for point in self.start_points)

    def ends(self, now: SessionConditions, seen: frozenset[TxPoint]) -> TxPoint | None:
        """The stop point that ends the running transaction now, if any. `seen` holds the stop points that were
        true at some moment of this transaction: a point never reached cannot end it (an EV that has not drawn
        energy yet does not end a transaction stopped at ENERGY_TRANSFER)."""
        for point in self.stop_points:
            if point in seen and not now.holds(point):
                return point
        return None

    def reached(self, now: SessionConditions, seen: frozenset[TxPoint]) -> frozenset[TxPoint]:
        """`seen` with the stop points that hold now (`seen` itself when none is new: asked every control step)."""
        new = [point for point in self.stop_points if point not in seen and now.holds(point)]
        return seen | frozenset(new) if new else seen

    @classmethod
    def parse(cls, start: str, stop: str) -> TransactionPolicy:
        """From comma-separated point names (configuration files, a CSMS's variables), with a clear error."""
        return cls(_points(start, "start"), _points(stop, "stop"))


def _points(text: str, which: str) -> tuple[TxPoint, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    known = ", ".join(p.value for p in TxPoint)
    points = []
    for name in names:
        try:
            points.append(TxPoint(name))
        except ValueError:
            raise PolicyError(f"unknown transaction {which} point {name[:40]!r} (known: {known})") from None
    return tuple(points)


# the rule of OCPP 1.6: a transaction is plugged-in + authorized; it ends when the authorization ends (local or
# remote stop, deauthorization) and, with StopTransactionOnEVSideDisconnect, when the cable is unplugged
def plugged_and_authorized(stop_on_unplug: bool = True) -> TransactionPolicy:
    stop = (TxPoint.EV_CONNECTED, TxPoint.AUTHORIZED) if stop_on_unplug else (TxPoint.AUTHORIZED,)
    return TransactionPolicy((TxPoint.POWER_PATH_CLOSED,), stop)


PLUGGED_AND_AUTHORIZED = plugged_and_authorized()
