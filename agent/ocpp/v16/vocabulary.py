"""The OCPP 1.6 words for the core's protocol-neutral ones (agent.core.controller, agent.core.authorization).

The core speaks of connector statuses, fault kinds, stop reasons and authorization statuses; this module
renders them as 1.6 puts them on the wire (StatusNotification status, ChargePointErrorCode with a
vendorErrorCode, StopTransaction reason, idTagInfo) and reads the 1.6 words back. Pure: no I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agent.core.authorization import AuthorizationStatus, TokenInfo, parse_timestamp, valid_id_token
from agent.core.controller import ConnectorStatus, Fault, StopReason

STATUS: dict[ConnectorStatus, str] = {
    ConnectorStatus.AVAILABLE: "Available",
    ConnectorStatus.OCCUPIED: "Preparing",
    ConnectorStatus.CHARGING: "Charging",
    ConnectorStatus.SUSPENDED_EV: "SuspendedEV",
    ConnectorStatus.SUSPENDED_EVSE: "SuspendedEVSE",
    ConnectorStatus.FINISHED: "Finishing",
    ConnectorStatus.RESERVED: "Reserved",
    ConnectorStatus.UNAVAILABLE: "Unavailable",
    ConnectorStatus.FAULTED: "Faulted",
}

NO_ERROR = "NoError"
# Fault -> (ChargePointErrorCode, vendorErrorCode)
FAULT_ERROR_CODES: dict[Fault, tuple[str, str]] = {
    Fault.WELD: ("PowerSwitchFailure", "ContactorWelded"),
    Fault.CONTACTOR: ("PowerSwitchFailure", "ContactorFeedbackMismatch"),
    Fault.RCD: ("GroundFailure", "ResidualCurrentTrip"),
    Fault.DIODE: ("OtherError", "PilotDiodeFault"),
    Fault.PILOT: ("OtherError", "PilotShortOrFault"),
    Fault.METER: ("PowerMeterFailure", "MeterNotAnswering"),
    Fault.DEVICE: ("InternalError", "DeviceNotAnswering"),
    Fault.STORAGE: ("InternalError", "JournalNotWritable"),
    Fault.LOCK: ("ConnectorLockFailure", "LockFeedbackTimeout"),
    Fault.SUPERVISION: ("InternalError", "AgentNotResponding"),
}
# the agent lost its control process: every connector is reported Faulted (agent.station.station)
CONTROL_LOST_ERROR_CODES = ("InternalError", "ControlLoopLost")

STOP_REASON: dict[StopReason, str] = {
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.EV_DISCONNECTED: "EVDisconnected",
    StopReason.DEAUTHORIZED: "DeAuthorized",
    StopReason.SOFT_RESET: "SoftReset",
    StopReason.HARD_RESET: "HardReset",
    StopReason.UNLOCK_COMMAND: "UnlockCommand",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.REBOOT: "Reboot",
    StopReason.EMERGENCY_STOP: "EmergencyStop",
    StopReason.OTHER: "Other",
    StopReason.TIMEOUT: "Other",  # 1.6 has no word for them
    StopReason.STOPPED_BY_EV: "Other",
}
# read back, a word names its first reason ("Other" is OTHER)
_STOP_REASON_FROM_OCPP = {word: reason for reason, word in reversed(STOP_REASON.items())}

AUTHORIZATION_STATUS: dict[AuthorizationStatus, str] = {
    AuthorizationStatus.ACCEPTED: "Accepted",
    AuthorizationStatus.BLOCKED: "Blocked",
    AuthorizationStatus.EXPIRED: "Expired",
    AuthorizationStatus.INVALID: "Invalid",
    AuthorizationStatus.CONCURRENT_TX: "ConcurrentTx",
}
_AUTHORIZATION_STATUS_FROM_OCPP = {word: status for status, word in AUTHORIZATION_STATUS.items()}


def connector_status(status: ConnectorStatus) -> str:
    """The StatusNotification status."""
    return STATUS[status]


def error_codes(fault: Fault | None) -> tuple[str, str | None]:
    """StatusNotification (errorCode, vendorErrorCode) for the fault a status reports."""
    return FAULT_ERROR_CODES[fault] if fault is not None else (NO_ERROR, None)


def stop_reason(reason: StopReason) -> str:
    """The StopTransaction reason."""
    return STOP_REASON[reason]


def stop_reason_from_ocpp(word: str) -> StopReason:
    """A StopTransaction reason read back (from the journal); an unknown word is OTHER."""
    return _STOP_REASON_FROM_OCPP.get(word, StopReason.OTHER)


def authorization_status(status: AuthorizationStatus) -> str:
    """The idTagInfo status."""
    return AUTHORIZATION_STATUS[status]


def authorization_status_from_ocpp(word: Any) -> AuthorizationStatus:
    """An idTagInfo status; anything 1.6 does not define is Invalid (it never lets anyone charge)."""
    return _AUTHORIZATION_STATUS_FROM_OCPP.get(word, AuthorizationStatus.INVALID)


def token_info(info: dict) -> TokenInfo:
    """From an idTagInfo object (camelCase); an unparsable expiryDate counts as expired."""
    expiry = None
    raw = info.get("expiryDate")
    if raw:
        try:
            expiry = parse_timestamp(raw)
        except ValueError:
            expiry = datetime.min.replace(tzinfo=UTC)
    parent = info.get("parentIdTag")
    # a parentIdTag that is no IdToken (a lone surrogate cannot even be stored) is no parent at all
    return TokenInfo(authorization_status_from_ocpp(info.get("status", "Invalid")), expiry,
                     parent if valid_id_token(parent) else None)


def local_list_entries(entries: list[dict]) -> list[tuple[object, TokenInfo | None]]:
    """SendLocalList.req localAuthorizationList → (idTag, its info or None to remove it); an entry without a
    usable idTag keeps what it has, for agent.core.authorization.plan_send_local_list to refuse."""
    result: list[tuple[object, TokenInfo | None]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            result.append((None, None))
            continue
        info = entry.get("idTagInfo")
        result.append((entry.get("idTag"), token_info(info) if info is not None else None))
    return result
