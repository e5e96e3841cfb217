"""What the station shell keeps of one connector: the replica of its controller and the bookkeeping of its
running transaction, shared by the pieces of the station (agent.station.station builds one per connector)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from agent.config import ChargingConfig
from agent.control import channel
from agent.core import controller as ctl
from agent.core.transaction_policy import plugged_and_authorized
from agent.station.settings import StationSettings
from hal.interfaces import MeterReading


def session_settings(charging: ChargingConfig, settings: StationSettings,
                     hw: channel.ConnectorInfo) -> ctl.SessionSettings:
    """A connector's controller settings: the agent's [charging] config, the settings the CSMS manages and
    what the board says of the connector."""
    cfg = settings
    return ctl.SessionSettings(
        max_current_a=min(charging.max_current_a, hw.max_current_a),
        connection_timeout_s=cfg.connection_timeout_s,
        transaction_policy=plugged_and_authorized(stop_on_unplug=cfg.stop_on_ev_side_disconnect),
        stop_on_invalid_id=cfg.stop_on_invalid_id,
        authorize_remote_tx=cfg.authorize_remote_tx,
        feedback_supervised=hw.has_mirror_contact,
        meter_failure_stops=charging.meter_failure == "stop",
        unlock_on_ev_side_disconnect=cfg.unlock_on_ev_side_disconnect,
        lock_timeout_s=hw.lock_timeout_s,
    )


@dataclass
class TransactionOp:
    """One step of a connector's transaction bookkeeping, done in order by agent.station.recorder."""

    kind: str  # "start" | "stop" | "sample"
    id_token: str | None = None
    reason: str | None = None
    reading: MeterReading | None = None
    context: str = "Sample.Periodic"  # or "Sample.Clock" for clock-aligned values
    timestamp: str | None = None
    reservation_id: int | None = None  # of a start that uses a reservation


@dataclass
class ConnectorRuntime:
    hw: channel.ConnectorInfo  # what the board says of the connector; the devices are the control loop's
    controller: ctl.ConnectorController  # replica of the control loop's controller (read-only here)
    ops: asyncio.Queue = field(default_factory=asyncio.Queue)
    local_tx: int | None = None
    tx_begin: tuple[float, str] | None = None  # (meter start Wh, timestamp)
    next_sample_at: float | None = None
    next_aligned_at: float | None = None  # wall-clock time of the next clock-aligned sample
    last_reading: MeterReading | None = None
    meter_failures: int = 0
    meter_answered: bool = False  # the meter gave one good reading since the start
    indicator: str | None = None  # what the status LEDs show (the control loop reports it)

    @property
    def id(self) -> int:
        return self.hw.connector_id
