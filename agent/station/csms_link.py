"""The seam between the station and its CSMS protocol adapter (today agent.ocpp.v16.client.OcppClient).

Two typed interfaces, one each way:
* CsmsPort: what the CSMS may ask of the station (implemented by agent.station.csms_facade.CsmsFacade);
* CsmsLink: what the station may ask of the adapter (send a status, wake the sender of queued
  transaction messages, authorize an id, is it registered?, the firmware/security event sinks).
The station receives its adapter through a CsmsLinkFactory (agent.app passes OcppClient) and never builds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from agent.core.authorization import TokenInfo
from agent.core.controller import ConnectorStatus, Fault

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.logs import StationLogs
    from agent.ocpp.security import SecurityManager
    from agent.ocpp.v16.config import OcppConfiguration
    from agent.station.firmware import FirmwareManager
    from agent.station.journal import Delivery, Journal, QueuedMessage
    from agent.station.settings import StationSettings


@dataclass(frozen=True)
class StatusReport:
    """The status of the station (connector 0) or of one connector, in neutral words: the adapter renders it."""

    connector_id: int
    status: ConnectorStatus
    fault: Fault | None = None  # why it is faulted (or the warning a working connector reports)
    info: str | None = None
    control_lost: bool = False  # the agent lost its control process (no Fault of a controller says it)


class LocalListEntry(NamedTuple):
    """One entry of a local authorization list update, as the adapter read it; no info: remove the id
    (Differential). An id token that is no non-empty string makes the update fail (plan_send_local_list)."""

    id_token: object
    info: TokenInfo | None


@dataclass(frozen=True)
class ReservationRequest:
    connector_id: int  # 0: any connector
    expiry_date: str  # as the CSMS sent it: the station parses it and logs it unparsed when it cannot
    id_token: str
    reservation_id: int
    parent_id_token: str | None = None


class CsmsPort(Protocol):
    """What the CSMS may ask of the station."""

    configuration: OcppConfiguration
    firmware: FirmwareManager  # firmware updates, diagnostics and log uploads (agent.station.firmware)
    security: SecurityManager  # security profile, credentials, TLS, certificates, events (agent.ocpp.security)
    wall_clock: Callable[[], datetime]  # UTC: the timestamps of the messages the adapter sends

    @property
    def connector_ids(self) -> list[int]: ...

    def remote_start(self, connector_id: int | None, id_token: str, charging_profile: dict | None = None) -> bool: ...

    def remote_stop(self, transaction_id: int) -> bool: ...

    def change_availability(self, connector_id: int, operative: bool) -> str: ...

    async def unlock_connector(self, connector_id: int) -> str: ...

    def reset(self, kind: str) -> None: ...

    def statuses(self) -> list[StatusReport]: ...

    def meter_values_now(self, connector_id: int) -> list[dict]: ...

    def transaction_message_delivered(self, message: QueuedMessage, delivery: Delivery) -> None: ...

    def journal_failed(self, exc: Exception) -> None: ...

    def clear_cache(self) -> str: ...

    def local_list_version(self) -> int: ...

    def send_local_list(self, list_version: int, update_type: str, entries: list[LocalListEntry]) -> str: ...

    def reserve_now(self, request: ReservationRequest) -> str: ...

    def cancel_reservation(self, reservation_id: int) -> str: ...

    # Smart Charging: profiles are camelCase dicts as on the wire (agent.core.smart_charging reads them)
    def set_charging_profile(self, connector_id: int, profile: dict) -> str: ...

    def clear_charging_profile(self, profile_id: int | None, connector_id: int | None, purpose: str | None,
                               stack_level: int | None) -> str: ...

    def composite_schedule(self, connector_id: int, duration: int, rate_unit: str | None) -> dict | None: ...


class CsmsLink(Protocol):
    """What the station may ask of its protocol adapter."""

    connected: bool
    registration: str | None  # the last registration answer (BootNotification)
    last_error: str | None
    dropped_messages: int  # transaction messages given up after their attempts

    @property
    def accepted(self) -> bool:
        """Connected and registered: messages can be sent now."""

    def send_status(self, connector_id: int, status: ConnectorStatus, fault: Fault | None = None,
                    info: str | None = None, *, control_lost: bool = False) -> None: ...

    def send_meter_values(self, connector_id: int, meter_value: list[dict]) -> None:
        """Meter values outside a transaction (clock-aligned); those of a transaction go through the journal."""

    def journal_changed(self) -> None:
        """Queued transaction messages (or security events) wait in the journal: wake the sender."""

    async def authorize(self, id_token: str) -> TokenInfo | None:
        """The CSMS's answer, or None when it cannot be asked (then the offline rules decide)."""

    def queue_follow_up(self, payload: Any, done: asyncio.Future | None = None, *,
                        triggered: bool = False) -> None:
        """The firmware/diagnostics status sink: a message sent when registered; `done` tells its fate."""

    def apply_config(self, config: AgentConfig) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class CsmsLinkFactory(Protocol):
    """Builds a station's protocol adapter, e.g. agent.ocpp.v16.client.OcppClient, and opens the settings
    provider of its protocol (1.6: the configuration keys; 2.0.1: the device model)."""

    def open_settings(self, config: AgentConfig, journal: Journal, security: SecurityManager, logs: StationLogs,
                      number_of_connectors: int, /) -> StationSettings: ...

    def __call__(self, config: AgentConfig, port: CsmsPort, journal: Journal, /, *,
                 logs: StationLogs, clock: Callable[[], float]) -> CsmsLink: ...  # the first three by position
