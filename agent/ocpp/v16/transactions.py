"""The journal's transaction events in OCPP 1.6 words, and back (pure).

The journal (agent.station.journal) keeps neutral transaction events; this module renders the queued one as
the 1.6 message the station sends (StartTransaction, MeterValues, StopTransaction with the integer
transactionId, -1 when the StartTransaction could never be delivered, as errata 3.18 prescribes), reads the
CSMS's answer back in neutral terms, and reads release 0.1's 1.6 payloads as neutral events (its journal's
migration, agent.station.journal_migration).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from agent.core.controller import StopReason
from agent.ocpp.v16.vocabulary import (
    AUTHORIZATION_STATUS,
    STOP_REASON,
    stop_reason,
    stop_reason_from_ocpp,
    token_info,
)
from agent.station.journal import MESSAGE, Delivery, QueuedMessage, TransactionRecord, read_queue

PROTOCOL = "ocpp1.6"  # a queued message kept as a 1.6 wire payload (QueuedMessage.protocol)
TRANSACTION_ID_UNKNOWN = -1  # OCPP 1.6 errata 3.18
TRANSACTION_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})  # §3.7, one at a time

# 1.6 AuthorizationStatus -> the journal's neutral word (an unknown word is kept as it came)
TOKEN_STATUSES = {word: status.value for status, word in AUTHORIZATION_STATUS.items()}
# a sampledValue's keys in the order the station has always sent them (agent.ocpp.v16.meter_values)
_SAMPLE_KEYS = ("value", "context", "format", "measurand", "phase", "location", "unit")
_SAMPLE_ORDER = ("value", "context", "format", "measurand", "location", "unit", "phase")


_NEUTRAL_REASONS = frozenset(reason.value for reason in StopReason)


def stop_reason_to_v16(reason: str) -> str:
    """The 1.6 Reason of a neutral stop reason; a value that is already a 1.6 word passes through."""
    try:
        return stop_reason(StopReason(reason))
    except ValueError:
        return reason


def stop_reason_from_v16(reason: str) -> str:
    """The neutral stop reason of a 1.6 Reason; a value that is already neutral passes through."""
    if reason in _NEUTRAL_REASONS:
        return reason
    return stop_reason_from_ocpp(reason).value if reason in STOP_REASON.values() else reason


def transaction_id(record: TransactionRecord | None) -> int:
    """The 1.6 transactionId of a journaled transaction: the CSMS's id, -1 if its start was never answered."""
    if record is None or record.csms_tx_id is None:
        return TRANSACTION_ID_UNKNOWN
    try:
        return int(record.csms_tx_id)
    except ValueError:  # not a 1.6 id (no 1.6 CSMS gives one): the CSMS cannot know it either
        return TRANSACTION_ID_UNKNOWN


def meter_value_to_v16(meter_value: dict[str, Any]) -> dict[str, Any]:
    samples = [{key: sample[key] for key in _SAMPLE_ORDER if key in sample} for sample in meter_value["samples"]]
    return {"timestamp": meter_value["timestamp"], "sampledValue": samples}


def meter_value_from_v16(entry: dict[str, Any]) -> dict[str, Any]:
    """A 1.6 meterValue entry as a neutral meter value; ValueError for one that has more than that form holds."""
    if not isinstance(entry, dict) or set(entry) != {"timestamp", "sampledValue"}:
        raise ValueError(f"meterValue with keys {sorted(entry) if isinstance(entry, dict) else entry!r}")
    samples = []
    for sample in entry["sampledValue"]:
        if not isinstance(sample, dict) or "value" not in sample or not set(sample) <= set(_SAMPLE_KEYS):
            raise ValueError(f"sampledValue {sample!r}")
        samples.append({key: sample[key] for key in _SAMPLE_KEYS if key in sample})
    return {"timestamp": entry["timestamp"], "samples": samples}


def render(message: QueuedMessage) -> tuple[str, dict[str, Any]]:
    """The 1.6 action and camelCase payload of a queued event or message, its transactionId filled in."""
    tx = message.transaction
    if message.kind == MESSAGE:
        assert message.action is not None and message.payload is not None
        payload = dict(message.payload)
        if message.local_tx is not None and message.action in ("MeterValues", "StopTransaction"):
            payload["transactionId"] = transaction_id(tx)  # a 1.6 message of a transaction kept verbatim
        return message.action, payload
    assert tx is not None, "a transaction event outlives its transaction's row"
    if message.kind == "started":
        payload = {"connectorId": tx.connector_id, "idTag": tx.id_token, "meterStart": round(tx.meter_start),
                   "timestamp": tx.started_at}
        if tx.reservation_id is not None:
            payload["reservationId"] = tx.reservation_id
        return "StartTransaction", payload
    if message.kind == "updated":
        return "MeterValues", {"connectorId": tx.connector_id,
                               "meterValue": [meter_value_to_v16(mv) for mv in message.meter_values],
                               "transactionId": transaction_id(tx)}
    assert tx.meter_stop is not None and tx.stopped_at is not None
    payload = {"meterStop": round(tx.meter_stop), "timestamp": tx.stopped_at,
               "reason": stop_reason_to_v16(tx.stop_reason or "local")}
    if tx.stop_id_token:
        payload["idTag"] = tx.stop_id_token
    if message.meter_values:
        payload["transactionData"] = [meter_value_to_v16(mv) for mv in message.meter_values]
    payload["transactionId"] = transaction_id(tx)
    return "StopTransaction", payload


def read_answer(action: str, payload: dict[str, Any], response: dict[str, Any]) -> Delivery:
    """The CSMS's answer (camelCase) to a sent transaction message, in neutral terms."""
    info = response.get("idTagInfo") or {}
    token = token_info(info) if info else None
    started = action == "StartTransaction"
    transaction = response.get("transactionId") if started else None
    status = info.get("status")
    return Delivery(csms_tx_id=str(transaction) if transaction is not None else None,
                    token_status=TOKEN_STATUSES.get(status, status) if started and status is not None else None,
                    id_token=payload.get("idTag"), token=token, started=started)


def queued_wire_messages(db: sqlite3.Connection) -> list[tuple[int, str, dict[str, Any]]]:
    """(seq, action, payload) of everything a journal holds, in send order, as this adapter would send it now:
    for tools that read a copy of a stopped agent's journal (hil.chaos, the resilience tests)."""
    return [(message.seq, *render(message)) for message in read_queue(db)]
