"""A small local OCPP 1.6J central system (CSMS) for the demo and the end-to-end tests.

It is built on `ocpp.v16.ChargePoint` (server side) and the websockets asyncio server, and behaves
like a strict but ordinary CSMS: it validates every message against the OCPP schemas, answers
exactly what the configuration says, and takes no shortcut that would let a broken charge point
pass. Everything a station sends is recorded, so tests can assert on the exchange afterwards.

In-process use (asyncio)::

    csms = LocalCsms(authorized_tags={"TAG-1": "Accepted", "TAG-2": "Blocked"},
                     boot_statuses=("Pending", "Accepted"), record_path=Path("frames.jsonl"))
    port = await csms.start()                      # host="127.0.0.1", port=0 -> a free port
    # the station connects to f"{csms.url}/{station_id}" with subprotocol "ocpp1.6"
    await csms.wait_connected("CP-1")
    answer = await csms.call("CP-1", "RemoteStartTransaction", {"idTag": "TAG-1", "connectorId": 1})
    start = await csms.wait_frame(lambda f: f.action == "StartTransaction", since=0)
    await csms.stop()

Public API of `LocalCsms`
-------------------------
Configuration (constructor, keyword-only):
    authorized_tags     dict tag -> idTagInfo status ("Accepted", "Blocked", "Expired", "Invalid",
                        "ConcurrentTx"), or an iterable of tags that are all "Accepted". Unknown tags
                        get "Invalid". Tags match case-insensitively (IdToken is a CiString in 1.6).
    boot_statuses       answers to successive BootNotifications of one station; the last repeats.
    boot_interval       `interval` of every BootNotification.conf (heartbeat interval when Accepted,
                        retry delay when Pending/Rejected).
    record_path         JSON-lines file; every frame in and out is appended (opened in append mode).
    first_transaction_id, parent_id_tags, echo (called with one human-readable line per frame and
                        per connect/disconnect).
    assume_booted       treat a station that has not sent a BootNotification to this instance as
                        Accepted (default False). Models a CSMS that was restarted but keeps its
                        registrations in a database: a station that merely reconnects does not boot
                        again (OCPP 1.6 §4.2 requires BootNotification after a (re)boot only), so a
                        fresh LocalCsms on the old port would otherwise answer it with SecurityError.

Control:
    await start(host="127.0.0.1", port=0) -> int     bound port
    url                                              "ws://127.0.0.1:<port>/ocpp"
    await stop()
    await start_control_socket(path)                 JSON-lines operator socket (see below)

Fault injection (for testing a station's error handling):
    fail_next(action, count=1, error_code="InternalError", description="injected failure")
        the next `count` CALLs of `action` from any station are answered with that CALLERROR
        instead of being handled (nothing is recorded as a transaction); later ones are handled.
    ssl_context         serve wss:// with this server-side ssl.SSLContext (its certificate can be
                        replaced while running, with load_cert_chain; set verify_mode to ask for client
                        certificates, OCPP security profile 3). `url` is then wss://.
    basic_auth          dict station id -> password (str: its UTF-8 bytes, or bytes: a binary key as
                        OCPP 1.6 security profiles 1-2 use it); when given, a handshake without the
                        matching `Authorization: Basic base64(<id>:<password>)` header is refused with
                        HTTP 401, as are stations not in the dict. The dict is `basic_auth`, mutable.
                        A verified TLS client certificate whose CN is the station id replaces the
                        Basic header (profile 3).
    sign_certificate_status                          attribute, default "Accepted": the answer to
        SignCertificate; the CSR is recorded in `frames`, a test signs it and calls CertificateSigned.
    unanswered_actions                               attribute, a set of actions, default empty: CALLs of
        these actions are recorded but never answered (a CSMS that hangs), so the station's call times out.
    refuse_connections                               attribute, default False; while True every new
        WebSocket handshake is answered with HTTP 503 (open connections are not touched), so a
        station stays offline after `disconnect()` until it is set back to False.

Stations:
    is_connected(station_id) -> bool, stations() -> list[str]
    await wait_connected(station_id, timeout=10.0), await wait_disconnected(station_id, timeout=10.0)
    await disconnect(station_id)                     close with code 1001 (the CSMS going away)
    await call(station_id, action, payload, timeout=10.0, *, validate=True) -> dict
        camelCase payload in, CALLRESULT payload out. Raises CsmsCallError on CALLERROR,
        InvalidStationResponse if the answer breaks the schema, StationNotConnected if the station
        is not (or no longer) connected, TimeoutError. The request is checked against the schema
        first (an invalid one raises the library's OCPPError and is not sent); validate=False sends
        it unchecked, to test how a station handles bad requests.
    await send_raw(station_id, text)                 any text frame, recorded like the others

Observations (all in memory, in arrival order):
    frames: list[Frame]                              every frame in and out, all stations
    calls(action, station_id=None) -> list[Frame]    incoming CALLs of that action
    await wait_frame(predicate, timeout=10.0, since=0) -> Frame
        first frame at index >= `since` for which predicate(frame) is true. Pass
        `since=len(csms.frames)` to wait for a new frame. A predicate that raises counts as False.
    await wait_until(condition, timeout=10.0)        wait until condition() is true (re-checked on
                                                     every frame, connect, disconnect)
    transactions: dict[int, TransactionRecord]       by CSMS transactionId
    unknown_stops: list[Frame]                       StopTransaction CALLs with an unknown transactionId
    other_meter_values: list[Frame]                  MeterValues CALLs without a known transactionId
    connector_statuses: dict[str, dict[int, str]]    last StatusNotification status per connector
    handshakes: list[Handshake]                      every handshake that reached the endpoint check: TLS
                                                     or not, the client certificate's subject, Basic auth
    violations: list[Violation]                      protocol violations by stations, kinds:
        "call_before_accepted"  a CALL other than BootNotification while the station's last boot
                                answer was not Accepted (answered with SecurityError, errata 3.8);
                                while Pending, a message the CSMS asked for with TriggerMessage or
                                ExtendedTriggerMessage is allowed (OCPP 1.6 §4.2)
        "invalid_call"          a CALL that failed schema validation (answered with a CALLERROR)
        "invalid_response"      a CALLRESULT to a CSMS call that failed schema validation
        "unexpected_response"   a CALLRESULT/CALLERROR whose id matches no open CSMS call
        "malformed_frame"       not an OCPP-J message (bad JSON, wrong shape)
        "binary_frame"          a binary WebSocket frame (OCPP-J uses text frames only)

`Frame.payload` is the CALL or CALLRESULT payload; for a CALLERROR it is
{"errorCode", "errorDescription", "errorDetails"}; None when the frame is not an OCPP message.
`Frame.action` of a CALLRESULT/CALLERROR is the action of the CALL it answers, when known.

Endpoint: only the path "/ocpp/<station id>" (percent-decoded id) and only subprotocol "ocpp1.6"
are accepted; anything else is refused during the handshake (HTTP 404 / 400), as a real CSMS would.

Control socket (`--control-socket PATH`, or `start_control_socket`): a Unix socket speaking JSON
lines, one request per line, one reply per line:
    {"cmd": "call", "station": "CP-1", "action": "...", "payload": {...}, "timeout": 10}
    {"cmd": "stations"}  {"cmd": "transactions"}  {"cmd": "disconnect", "station": "CP-1"}
    -> {"ok": true, "result": ...} or {"ok": false, "error": "..."}

CLI: python -m hil.csms --host 127.0.0.1 --port 9000 --tags TAG1,TAG2:Blocked --record frames.jsonl
     --boot-status Pending,Accepted --heartbeat 300 --control-socket /tmp/csms.sock
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from ocpp.exceptions import OCPPError, SecurityError
from ocpp.messages import Call, CallError, CallResult, unpack, validate_payload
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call_result, datatypes
from ocpp.v16.enums import Action, AuthorizationStatus, DataTransferStatus, RegistrationStatus
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger("hil.csms")  # not __name__: that is "__main__" under python -m

OCPP_VERSION = "1.6"
SUBPROTOCOL = "ocpp1.6"
ENDPOINT_PATH = "/ocpp"

MESSAGE_CALL, MESSAGE_RESULT, MESSAGE_ERROR = 2, 3, 4
# OCPP-J message length per type: [2, id, action, payload], [3, id, payload], [4, id, code, text, details]
_FRAME_LENGTH = {MESSAGE_CALL: 4, MESSAGE_RESULT: 3, MESSAGE_ERROR: 5}

# ErrorCode values of OCPP-J 1.6 §4.2.3 (with the spec's own spelling mistakes), for fail_next().
_OCPP_J_ERROR_CODES = {
    "NotImplemented",
    "NotSupported",
    "InternalError",
    "ProtocolError",
    "SecurityError",
    "FormationViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
    "TypeConstraintViolation",
    "GenericError",
}

# (trigger action, requestedMessage) -> the action of the CALL it asks for, where the two differ
_TRIGGERED_ACTIONS = {
    ("ExtendedTriggerMessage", "SignChargePointCertificate"): "SignCertificate",
    ("ExtendedTriggerMessage", "FirmwareStatusNotification"): "SignedFirmwareStatusNotification",
}

# CALLERROR codes the library uses when a CALL fails schema validation: the station's fault.
_SCHEMA_ERROR_CODES = {
    "FormatViolation",
    "FormationViolation",
    "ProtocolError",
    "TypeConstraintViolation",
    "PropertyConstraintViolation",
    "OccurenceConstraintViolation",
}


class CsmsCallError(Exception):
    """The station answered a CSMS call with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any = None):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details


class InvalidStationResponse(Exception):
    """The station's CALLRESULT to a CSMS call does not match the OCPP 1.6 schema."""


class StationNotConnected(LookupError):
    """No open connection for that station (or it closed while a call was waiting)."""


@dataclass(frozen=True)
class Frame:
    index: int  # position in LocalCsms.frames
    station_id: str
    direction: str  # "in": station -> CSMS, "out": CSMS -> station
    message_type: int | None  # 2 CALL, 3 CALLRESULT, 4 CALLERROR, None if not an OCPP message
    unique_id: str | None
    action: str | None
    payload: Any
    raw: str
    time: datetime  # UTC


@dataclass
class TransactionRecord:
    transaction_id: int
    station_id: str
    connector_id: int
    id_tag: str
    meter_start: int
    start_timestamp: str  # as sent by the station
    start_id_tag_status: str  # what the CSMS answered in StartTransaction.conf
    reservation_id: int | None = None
    meter_stop: int | None = None
    stop_timestamp: str | None = None
    stop_reason: str | None = None  # None when the station omitted it (which means "Local")
    stop_id_tag: str | None = None
    transaction_data: list[dict] | None = None  # camelCase, as received
    meter_values: list[dict] = field(default_factory=list)  # meterValue entries, camelCase, in order
    stop_count: int = 0  # > 1 means the station resent StopTransaction; the first one is kept

    @property
    def stopped(self) -> bool:
        return self.stop_count > 0


@dataclass(frozen=True)
class Handshake:
    """One WebSocket handshake that reached the endpoint check (LocalCsms.handshakes)."""

    station_id: str
    tls: bool
    client_cert: dict | None  # subject of the verified TLS client certificate, e.g. {"commonName": ...}
    auth: str | None  # None (not required), "ok", "missing", "wrong" or "certificate" (see basic_auth)
    accepted: bool


@dataclass(frozen=True)
class Violation:
    station_id: str
    kind: str
    detail: str
    frame: Frame | None = None


def utc_now_iso() -> str:
    """OCPP date-time: UTC, milliseconds, "Z" suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe_frame(raw: str) -> tuple[Any, int | None, str | None, str | None, Any]:
    """Split a raw text frame into (parsed JSON, message type, unique id, action, payload).

    Fields that cannot be read are None; `message_type` is None unless the frame is a well-formed
    OCPP-J message.
    """
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None, None, None, None, None
    first = parsed[0] if isinstance(parsed, list) and parsed else None
    if not (isinstance(first, int) and not isinstance(first, bool) and first in _FRAME_LENGTH):
        return parsed, None, None, None, None
    message_type = parsed[0]
    if len(parsed) != _FRAME_LENGTH[message_type] or not isinstance(parsed[1], str):
        return parsed, None, None, None, None
    unique_id = parsed[1]
    if message_type == MESSAGE_CALL:
        action, payload = parsed[2], parsed[3]
        if not isinstance(action, str) or not isinstance(payload, dict):
            return parsed, None, unique_id, None, None
        return parsed, message_type, unique_id, action, payload
    if message_type == MESSAGE_RESULT:
        return parsed, message_type, unique_id, None, parsed[2]
    error = {"errorCode": parsed[2], "errorDescription": parsed[3], "errorDetails": parsed[4]}
    return parsed, message_type, unique_id, None, error


def _echo_line(frame: Frame) -> str:
    clock = frame.time.strftime("%H:%M:%S.%f")[:-3]
    arrow = f"{frame.station_id} -> CSMS" if frame.direction == "in" else f"CSMS -> {frame.station_id}"
    if frame.message_type is None:
        return f"{clock} {arrow}  (not OCPP) {frame.raw}"
    action = frame.action or "?"
    if frame.message_type == MESSAGE_CALL:
        text = f"{action} {json.dumps(frame.payload, separators=(',', ':'))}"
    elif frame.message_type == MESSAGE_RESULT:
        text = f"{action}.conf {json.dumps(frame.payload, separators=(',', ':'))}"
    else:  # errorDetails can be several KB of schema dump; code and description say enough
        text = f"{action} CALLERROR {frame.payload['errorCode']} {frame.payload['errorDescription']!r}"
    return f"{clock} {arrow}  {text}"


class _RecordingConnection:
    """The websocket as `ChargePoint` sees it: every frame in and out goes through LocalCsms._record."""

    def __init__(self, websocket: ServerConnection, csms: LocalCsms, station_id: str):
        self.websocket = websocket
        self._csms = csms
        self._station_id = station_id
        # unique id -> action of CALLs still waiting for an answer, per direction of the CALL,
        # so CALLRESULT/CALLERROR frames can be labelled with the action they answer.
        self._open_calls: dict[tuple[str, str], str] = {}
        self.last_received: Frame | None = None  # the frame `ChargePoint` is handling now

    async def recv(self) -> str:
        while True:
            data = await self.websocket.recv()
            if isinstance(data, str):
                self.last_received = self._track("in", data)
                return data
            # OCPP-J is text only; a binary frame is a violation, not something to route.
            text = data.decode("utf-8", errors="replace")
            self._track("in", text, binary=True)

    async def send(self, text: str) -> None:
        self._track("out", text)
        await self.websocket.send(text)

    def _track(self, direction: str, raw: str, binary: bool = False) -> Frame:
        parsed, message_type, unique_id, action, payload = _describe_frame(raw)
        peer = "out" if direction == "in" else "in"
        unexpected_response = False
        if message_type == MESSAGE_CALL:
            self._open_calls[(direction, unique_id)] = action
        elif message_type in (MESSAGE_RESULT, MESSAGE_ERROR):
            action = self._open_calls.pop((peer, unique_id), None)
            unexpected_response = action is None and direction == "in"
        frame = self._csms._record(
            self._station_id, direction, raw, parsed, message_type, unique_id, action, payload
        )
        if direction == "in":
            if binary:
                self._csms._add_violation(self._station_id, "binary_frame", "binary WebSocket frame", frame)
            elif message_type is None:
                self._csms._add_violation(self._station_id, "malformed_frame", "not an OCPP-J message", frame)
            elif unexpected_response:
                self._csms._add_violation(
                    self._station_id, "unexpected_response", f"no open CSMS call with id {unique_id!r}", frame
                )
        return frame


class _StationHandler(ChargePoint):
    """The CSMS side of one station connection: answers the station's CALLs, sends CSMS calls."""

    def __init__(self, station_id: str, connection: _RecordingConnection, csms: LocalCsms):
        super().__init__(station_id, connection)
        self._csms = csms
        self._recorder = connection
        self._answers: dict[str, asyncio.Future] = {}  # unique id of a CSMS call -> its answer
        self._csms_call_lock = asyncio.Lock()  # one outstanding CSMS call at a time (OCPP-J 4.1.1)

    # --- receiving -------------------------------------------------------------------------

    async def route_message(self, raw_msg: str) -> None:
        # Bad input from a station must never end the receive loop: log it and read on.
        try:
            await self._route(raw_msg)
        except ConnectionClosed:
            raise
        except Exception:
            log.exception("%s: error while handling %r", self.id, raw_msg)

    async def _route(self, raw_msg: str) -> None:
        try:
            message = unpack(raw_msg)
        except OCPPError as error:
            # Already recorded as a violation; OCPP 1.6 defines no answer to an unparseable frame.
            log.warning("%s: ignoring malformed frame %r (%s)", self.id, raw_msg, error)
            return
        if isinstance(message, Call):
            await self._answer_call(message)
            return
        answer = self._answers.get(message.unique_id)
        if answer is not None and not answer.done():
            answer.set_result(message)
        else:
            log.warning("%s: answer to no open call (late or unknown): %r", self.id, raw_msg)

    async def _answer_call(self, message: Call) -> None:
        if (message.action != Action.boot_notification and not self._csms._is_accepted(self.id)
                and not self._csms._triggered_while_pending(self.id, message.action)):
            self._csms._add_violation(
                self.id,
                "call_before_accepted",
                f"{message.action} while the last BootNotification answer was "
                f"{self._csms._boot_status.get(self.id, 'not given')}",
                self._recorder.last_received,
            )
            error = SecurityError(description="BootNotification not accepted yet")
            await self._connection.send(message.create_call_error(error).to_json())
            return
        if message.action in self._csms.unanswered_actions:
            return  # recorded, never answered: the station's call runs into its timeout
        injected = self._csms._take_injected_failure(message.action)
        if injected is not None:
            code, description = injected
            await self._connection.send(CallError(message.unique_id, code, description, {}).to_json())
            return
        try:
            await self._handle_call(message)  # the library: validate, run the @on handler, answer
        except OCPPError as error:
            if error.code in _SCHEMA_ERROR_CODES:
                self._csms._add_violation(
                    self.id,
                    "invalid_call",
                    f"{message.action}: {error.code} {error.details}",
                    self._recorder.last_received,
                )
            await self._connection.send(message.create_call_error(error).to_json())

    # --- CSMS-initiated calls ----------------------------------------------------------------

    async def send_call(self, action: str, payload: dict, timeout: float, validate: bool) -> dict:
        request = Call(unique_id=str(uuid.uuid4()), action=action, payload=payload)
        if validate:
            await validate_payload(request, OCPP_VERSION)
        # noted before sending: the triggered message can arrive before this coroutine sees the answer
        self._csms._note_trigger(self.id, action, payload)
        async with self._csms_call_lock:
            answer = asyncio.get_running_loop().create_future()
            self._answers[request.unique_id] = answer
            try:
                await self.send_text(request.to_json())
                try:
                    async with asyncio.timeout(timeout):
                        response = await answer
                except TimeoutError:
                    raise TimeoutError(f"{self.id} did not answer {action} within {timeout} s") from None
            finally:
                del self._answers[request.unique_id]
        if isinstance(response, CallError):
            raise CsmsCallError(response.error_code, response.error_description, response.error_details)
        return await self._checked_result(response, action)

    async def _checked_result(self, response: CallResult, action: str) -> dict:
        payload = response.payload  # validation may replace it with a Decimal-parsed copy
        response.action = action
        try:
            await validate_payload(response, OCPP_VERSION)
        except OCPPError as error:
            detail = f"{action}.conf: {error.code} {error.details}"
            self._csms._add_violation(self.id, "invalid_response", detail, None)
            raise InvalidStationResponse(f"{self.id}: {detail}") from None
        return payload

    async def send_text(self, text: str) -> None:
        try:
            await self._connection.send(text)
        except ConnectionClosed:
            raise StationNotConnected(f"{self.id} disconnected") from None

    def fail_open_calls(self) -> None:
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(StationNotConnected(f"{self.id} disconnected before answering"))

    # --- handlers for the station's CALLs (OCPP 1.6 Core) -------------------------------------
    # Nested data (meterValue, transactionData) is taken from the received frame, so it is stored
    # camelCase exactly as sent, not as the library's snake_case conversion.

    def _received_payload(self) -> dict:
        return self._recorder.last_received.payload

    @on(Action.boot_notification)
    def on_boot_notification(self, **_):
        status = self._csms._next_boot_status(self.id)
        return call_result.BootNotification(
            current_time=utc_now_iso(), interval=self._csms.boot_interval, status=status
        )

    @on(Action.heartbeat)
    def on_heartbeat(self):
        return call_result.Heartbeat(current_time=utc_now_iso())

    @on(Action.status_notification)
    def on_status_notification(self, connector_id, status, **_):
        self._csms.connector_statuses.setdefault(self.id, {})[connector_id] = status
        self._csms._notify()
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag):
        return call_result.Authorize(id_tag_info=self._csms._id_tag_info(id_tag))

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id, id_tag, meter_start, timestamp, reservation_id=None):
        id_tag_info = self._csms._id_tag_info(id_tag)
        transaction_id = self._csms._new_transaction_id()
        self._csms.transactions[transaction_id] = TransactionRecord(
            transaction_id=transaction_id,
            station_id=self.id,
            connector_id=connector_id,
            id_tag=id_tag,
            meter_start=meter_start,
            start_timestamp=timestamp,
            start_id_tag_status=id_tag_info.status,
            reservation_id=reservation_id,
        )
        self._csms._notify()
        return call_result.StartTransaction(transaction_id=transaction_id, id_tag_info=id_tag_info)

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop, timestamp, transaction_id, reason=None, id_tag=None, **_):
        record = self._csms.transactions.get(transaction_id)
        if record is None or record.station_id != self.id:
            self._csms.unknown_stops.append(self._recorder.last_received)
        else:
            if record.stop_count == 0:
                record.meter_stop = meter_stop
                record.stop_timestamp = timestamp
                record.stop_reason = reason
                record.stop_id_tag = id_tag
                record.transaction_data = self._received_payload().get("transactionData")
            record.stop_count += 1
        self._csms._notify()
        id_tag_info = self._csms._id_tag_info(id_tag) if id_tag is not None else None
        return call_result.StopTransaction(id_tag_info=id_tag_info)

    @on(Action.meter_values)
    def on_meter_values(self, connector_id, meter_value, transaction_id=None):
        record = self._csms.transactions.get(transaction_id) if transaction_id is not None else None
        if record is None or record.station_id != self.id:
            self._csms.other_meter_values.append(self._recorder.last_received)
        else:
            record.meter_values.extend(self._received_payload()["meterValue"])
        self._csms._notify()
        return call_result.MeterValues()

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id, **_):
        return call_result.DataTransfer(status=DataTransferStatus.unknown_vendor_id)

    @on(Action.diagnostics_status_notification)
    def on_diagnostics_status_notification(self, status):
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification)
    def on_firmware_status_notification(self, status):
        return call_result.FirmwareStatusNotification()

    # --- security whitepaper (edition 2) notifications ---------------------------------------------

    @on(Action.signed_firmware_status_notification)
    def on_signed_firmware_status_notification(self, status, request_id=None):
        return call_result.SignedFirmwareStatusNotification()

    @on(Action.log_status_notification)
    def on_log_status_notification(self, status, request_id=None):
        return call_result.LogStatusNotification()

    @on(Action.security_event_notification)
    def on_security_event_notification(self, type, timestamp, tech_info=None):  # noqa: A002 - OCPP's name
        return call_result.SecurityEventNotification()

    @on(Action.sign_certificate)
    def on_sign_certificate(self, csr):
        # the CSR is in `frames`: a test plays the CA and answers with call("CertificateSigned", ...)
        return call_result.SignCertificate(status=self._csms.sign_certificate_status)


@dataclass
class _Session:
    station_id: str
    websocket: ServerConnection
    handler: _StationHandler


class LocalCsms:
    """See the module docstring for the public API."""

    def __init__(
        self,
        *,
        authorized_tags: Mapping[str, str] | Iterable[str] = (),
        boot_statuses: Sequence[str] = (RegistrationStatus.accepted,),
        boot_interval: int = 300,
        record_path: Path | None = None,
        first_transaction_id: int = 100,
        parent_id_tags: Mapping[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
        assume_booted: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        basic_auth: Mapping[str, str | bytes] | None = None,
    ):
        if isinstance(authorized_tags, Mapping):
            tag_statuses = dict(authorized_tags)
        else:
            tag_statuses = dict.fromkeys(authorized_tags, AuthorizationStatus.accepted.value)
        for tag, status in tag_statuses.items():
            if status not in {known.value for known in AuthorizationStatus}:
                raise ValueError(f"tag {tag!r}: {status!r} is not an OCPP 1.6 AuthorizationStatus")
        if not boot_statuses:
            raise ValueError("boot_statuses must not be empty")
        for status in boot_statuses:
            if status not in {known.value for known in RegistrationStatus}:
                raise ValueError(f"{status!r} is not an OCPP 1.6 RegistrationStatus")

        self._tag_statuses = {tag.casefold(): status for tag, status in tag_statuses.items()}
        self._parent_id_tags = {tag.casefold(): parent for tag, parent in (parent_id_tags or {}).items()}
        self._boot_statuses = [str(status) for status in boot_statuses]
        self.boot_interval = boot_interval
        self._record_path = record_path
        self._next_transaction_id = first_transaction_id
        self._echo = echo
        self._assume_booted = assume_booted
        self._injected_failures: dict[str, list[tuple[str, str]]] = {}  # action -> CALLERRORs to answer
        self.refuse_connections = False
        self.unanswered_actions: set[str] = set()
        self._ssl_context = ssl_context
        self.basic_auth: dict[str, str | bytes] | None = dict(basic_auth) if basic_auth is not None else None
        self.handshakes: list[Handshake] = []
        self.sign_certificate_status = "Accepted"  # answer to SignCertificate (the CSR is in `frames`)

        self.frames: list[Frame] = []
        self.transactions: dict[int, TransactionRecord] = {}
        self.unknown_stops: list[Frame] = []
        self.other_meter_values: list[Frame] = []
        self.connector_statuses: dict[str, dict[int, str]] = {}
        self.violations: list[Violation] = []

        self._sessions: dict[str, _Session] = {}
        self._boot_count: dict[str, int] = {}
        self._boot_status: dict[str, str] = {}  # last BootNotification answer per station
        self._triggered: dict[str, set[str]] = {}  # actions asked for by (Extended)TriggerMessage, per station
        self._changed = asyncio.Event()  # replaced on every change; waiters wake and re-check
        self._server: Server | None = None
        self._control_server: asyncio.Server | None = None
        self._control_path: Path | None = None
        self._record_file: IO[str] | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if self._record_path is not None:
            self._record_file = open(self._record_path, "a", encoding="utf-8")
        self._server = await serve(
            self._serve_station,
            host,
            port,
            subprotocols=[SUBPROTOCOL],
            process_request=self._check_path,
            ssl=self._ssl_context,
        )
        self._host = host
        self._port = self._server.sockets[0].getsockname()[1]
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        scheme = "wss" if self._ssl_context is not None else "ws"
        return f"{scheme}://{host}:{self._port}{ENDPOINT_PATH}"

    async def stop(self) -> None:
        if self._control_server is not None:
            self._control_server.close()
            await self._control_server.wait_closed()
            self._control_server = None
            with contextlib.suppress(FileNotFoundError):
                self._control_path.unlink()
        if self._server is not None:
            self._server.close()  # closes open connections with 1001 and waits for the handlers
            await self._server.wait_closed()
            self._server = None
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    # --- fault injection -----------------------------------------------------------------------

    def fail_next(
        self, action: str, count: int = 1, error_code: str = "InternalError", description: str = "injected failure"
    ) -> None:
        if error_code not in _OCPP_J_ERROR_CODES:
            raise ValueError(f"{error_code!r} is not an OCPP-J 1.6 error code")
        self._injected_failures.setdefault(action, []).extend([(error_code, description)] * count)

    def _take_injected_failure(self, action: str) -> tuple[str, str] | None:
        pending = self._injected_failures.get(action)
        return pending.pop(0) if pending else None

    # --- stations ------------------------------------------------------------------------------

    def is_connected(self, station_id: str) -> bool:
        return station_id in self._sessions

    def stations(self) -> list[str]:
        return sorted(self._sessions)

    async def wait_connected(self, station_id: str, timeout: float = 10.0) -> None:
        await self.wait_until(lambda: self.is_connected(station_id), timeout, f"{station_id} to connect")

    async def wait_disconnected(self, station_id: str, timeout: float = 10.0) -> None:
        await self.wait_until(
            lambda: not self.is_connected(station_id), timeout, f"{station_id} to disconnect"
        )

    async def disconnect(self, station_id: str) -> None:
        session = self._session(station_id)
        await session.websocket.close(code=1001, reason="CSMS going away")
        await self.wait_until(lambda: self._sessions.get(station_id) is not session, 10.0, "cleanup")

    async def call(
        self, station_id: str, action: str, payload: dict, timeout: float = 10.0, *, validate: bool = True
    ) -> dict:
        return await self._session(station_id).handler.send_call(action, payload, timeout, validate)

    async def send_raw(self, station_id: str, text: str) -> None:
        await self._session(station_id).handler.send_text(text)

    # --- observations ---------------------------------------------------------------------------

    def calls(self, action: str, station_id: str | None = None) -> list[Frame]:
        return [
            frame
            for frame in self.frames
            if frame.direction == "in"
            and frame.message_type == MESSAGE_CALL
            and frame.action == action
            and (station_id is None or frame.station_id == station_id)
        ]

    async def wait_frame(
        self, predicate: Callable[[Frame], bool], timeout: float = 10.0, since: int = 0
    ) -> Frame:
        next_index = since
        found: list[Frame] = []

        def scan_new_frames() -> bool:
            nonlocal next_index
            while next_index < len(self.frames):
                frame = self.frames[next_index]
                next_index += 1
                try:
                    matches = predicate(frame)
                except Exception:  # e.g. KeyError on a frame of another action
                    matches = False
                if matches:
                    found.append(frame)
                    return True
            return False

        await self.wait_until(scan_new_frames, timeout, "a matching frame")
        return found[0]

    async def wait_until(
        self, condition: Callable[[], bool], timeout: float = 10.0, description: str = "condition"
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if condition():
                        return
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(f"timed out after {timeout} s waiting for {description}") from None

    # --- control socket --------------------------------------------------------------------------

    async def start_control_socket(self, path: str | os.PathLike) -> None:
        self._control_path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            self._control_path.unlink()  # a stale socket from a previous run
        self._control_server = await asyncio.start_unix_server(self._serve_control_client, path=path)

    async def _serve_control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while line := await reader.readline():
                if not line.strip():
                    continue
                reply = await self._control_command(line)
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _control_command(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            command = request.get("cmd")
            if command == "call":
                result = await self.call(
                    request["station"],
                    request["action"],
                    request.get("payload", {}),
                    float(request.get("timeout", 10.0)),
                )
            elif command == "stations":
                result = self.stations()
            elif command == "transactions":
                result = [asdict(record) for record in self.transactions.values()]
            elif command == "disconnect":
                await self.disconnect(request["station"])
                result = None
            else:
                raise ValueError(f"unknown cmd {command!r} (call, stations, transactions, disconnect)")
        except KeyError as missing:
            return {"ok": False, "error": f"missing field {missing}"}
        except Exception as error:  # every failure is reported to the operator, none ends the socket
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}
        return {"ok": True, "result": result}

    # --- internals ---------------------------------------------------------------------------------

    def _session(self, station_id: str) -> _Session:
        try:
            return self._sessions[station_id]
        except KeyError:
            raise StationNotConnected(f"{station_id} is not connected") from None

    @staticmethod
    def _station_id_from_path(request_path: str) -> str | None:
        path = urlsplit(request_path).path
        prefix = ENDPOINT_PATH + "/"
        if not path.startswith(prefix) or "/" in path[len(prefix) :]:
            return None
        return unquote(path[len(prefix) :]) or None

    def _check_path(self, connection: ServerConnection, request: Request) -> Response | None:
        if self._station_id_from_path(request.path) is None:
            return connection.respond(HTTPStatus.NOT_FOUND, f"use {ENDPOINT_PATH}/<station id>\n")
        if self.refuse_connections:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "refusing connections (test)\n")
        station_id = self._station_id_from_path(request.path)
        auth = self._check_basic_auth(station_id, request.headers.get("Authorization"))
        ssl_object = connection.transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert() if ssl_object is not None else None
        client_cert = None
        if peer:  # verified by the context (verify_mode): it authenticates the station (profile 3)
            client_cert = {k: v for rdn in peer.get("subject", ()) for k, v in rdn}
            client_cert["serialNumber"] = peer.get("serialNumber")
            if auth == "missing" and client_cert.get("commonName") == station_id:
                auth = "certificate"
        accepted = auth in (None, "ok", "certificate")
        self.handshakes.append(Handshake(station_id, ssl_object is not None, client_cert, auth, accepted))
        self._notify()
        if not accepted:
            self._say(f"{station_id} refused: Basic auth {auth}")
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "HTTP Basic auth required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="ocpp", charset="UTF-8"'
            return response
        return None

    def _check_basic_auth(self, station_id: str, header: str | None) -> str | None:
        """None when no auth is required, else "ok", "missing" or "wrong"."""
        if self.basic_auth is None:
            return None
        if not header or not header.startswith("Basic "):
            return "missing"
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return "wrong"
        expected = self.basic_auth.get(station_id)
        if expected is None or user != station_id.encode():
            return "wrong"
        expected = expected.encode() if isinstance(expected, str) else expected
        return "ok" if password == expected else "wrong"

    async def _serve_station(self, websocket: ServerConnection) -> None:
        station_id = self._station_id_from_path(websocket.request.path)
        previous = self._sessions.get(station_id)
        if previous is not None:
            # The station reconnected before we noticed the old connection died: the newest wins.
            log.warning("%s: new connection replaces the open one", station_id)
            await previous.websocket.close(code=1000, reason="replaced by a new connection")
        handler = _StationHandler(station_id, _RecordingConnection(websocket, self, station_id), self)
        session = _Session(station_id, websocket, handler)
        self._sessions[station_id] = session
        self._say(f"{station_id} connected from {websocket.remote_address}")
        self._notify()
        try:
            await handler.start()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("%s: connection handler failed", station_id)
        finally:
            handler.fail_open_calls()
            if self._sessions.get(station_id) is session:
                del self._sessions[station_id]
            code = websocket.close_code
            self._say(f"{station_id} disconnected (code {code})")
            self._notify()

    def _record(
        self,
        station_id: str,
        direction: str,
        raw: str,
        parsed: Any,
        message_type: int | None,
        unique_id: str | None,
        action: str | None,
        payload: Any,
    ) -> Frame:
        frame = Frame(
            index=len(self.frames),
            station_id=station_id,
            direction=direction,
            message_type=message_type,
            unique_id=unique_id,
            action=action,
            payload=payload,
            raw=raw,
            time=datetime.now(UTC),
        )
        self.frames.append(frame)
        if self._record_file is not None:
            line = {
                "time": frame.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "station": station_id,
                "dir": direction,
                "frame": parsed,
                "raw": raw,
            }
            self._record_file.write(json.dumps(line) + "\n")
            self._record_file.flush()
        self._say(_echo_line(frame))
        self._notify()
        return frame

    def _add_violation(self, station_id: str, kind: str, detail: str, frame: Frame | None) -> None:
        log.warning("%s: protocol violation %s: %s", station_id, kind, detail)
        self.violations.append(Violation(station_id, kind, detail, frame))
        self._notify()

    def _say(self, line: str) -> None:
        if self._echo is None:
            return
        try:
            self._echo(line)
        except Exception:
            log.exception("echo callback failed")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _next_boot_status(self, station_id: str) -> str:
        count = self._boot_count.get(station_id, 0)
        self._boot_count[station_id] = count + 1
        status = self._boot_statuses[min(count, len(self._boot_statuses) - 1)]
        self._boot_status[station_id] = status
        self._triggered.pop(station_id, None)  # triggers asked for before this boot answer are spent
        return status

    def _note_trigger(self, station_id: str, action: str, payload: dict) -> None:
        if action in ("TriggerMessage", "ExtendedTriggerMessage") and isinstance(payload, dict):
            requested = payload.get("requestedMessage")
            triggered = _TRIGGERED_ACTIONS.get((action, requested), requested)
            self._triggered.setdefault(station_id, set()).add(triggered)

    def _triggered_while_pending(self, station_id: str, action: str) -> bool:
        """A CALL the CSMS asked for with a trigger, from a station whose registration is Pending."""
        return (self._boot_status.get(station_id) == RegistrationStatus.pending
                and action in self._triggered.get(station_id, set()))

    def _is_accepted(self, station_id: str) -> bool:
        status = self._boot_status.get(station_id)
        if status is None:
            return self._assume_booted
        return status == RegistrationStatus.accepted

    def _id_tag_info(self, id_tag: str) -> datatypes.IdTagInfo:
        key = id_tag.casefold()
        return datatypes.IdTagInfo(
            status=self._tag_statuses.get(key, AuthorizationStatus.invalid.value),
            parent_id_tag=self._parent_id_tags.get(key),
        )

    def _new_transaction_id(self) -> int:
        transaction_id = self._next_transaction_id
        self._next_transaction_id += 1
        return transaction_id


# --- CLI -------------------------------------------------------------------------------------------


def _parse_tags(text: str) -> dict[str, str]:
    """Parse "TAG1,TAG2:Blocked" into {"TAG1": "Accepted", "TAG2": "Blocked"}."""
    tags = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tag, _, status = item.partition(":")
        tags[tag] = status or AuthorizationStatus.accepted.value
    return tags


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m hil.csms", description="Local OCPP 1.6J CSMS")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--tags", default="", help="authorized idTags: TAG1,TAG2:Blocked (default Accepted)")
    parser.add_argument("--parent-tags", default="", help="parentIdTag per tag: TAG1:GROUP,TAG2:GROUP")
    parser.add_argument("--record", type=Path, help="append every frame to this JSON-lines file")
    parser.add_argument(
        "--boot-status", default="Accepted", help="answers to successive BootNotifications: Pending,Accepted"
    )
    parser.add_argument("--heartbeat", type=int, default=300, help="interval in BootNotification.conf (s)")
    parser.add_argument("--first-transaction-id", type=int, default=100)
    parser.add_argument("--control-socket", type=Path, help="Unix socket for operator commands (JSON lines)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the ocpp library too")
    return parser


async def _run(csms: LocalCsms, args: argparse.Namespace) -> None:
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop_requested.set)
    await csms.start(args.host, args.port)
    try:
        if args.control_socket is not None:
            await csms.start_control_socket(args.control_socket)
        _print_line(f"CSMS listening on {csms.url}/<station id> (OCPP 1.6J)")
        if args.control_socket is not None:
            _print_line(f"control socket: {args.control_socket}")
        await stop_requested.wait()
    finally:
        await csms.stop()
    _print_line("CSMS stopped")


def _print_line(line: str) -> None:
    print(line, flush=True)  # flushed so a pipe (demo, tests) sees each frame as it happens


def main(argv: Sequence[str] | None = None) -> int:
    args = _argument_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("ocpp").setLevel(logging.ERROR)  # it logs every frame; the echo does that
    try:
        csms = LocalCsms(
            authorized_tags=_parse_tags(args.tags),
            boot_statuses=[status.strip() for status in args.boot_status.split(",")],
            boot_interval=args.heartbeat,
            record_path=args.record,
            first_transaction_id=args.first_transaction_id,
            parent_id_tags=_parse_tags(args.parent_tags) if args.parent_tags else None,
            echo=_print_line,
        )
    except ValueError as error:  # bad --tags / --boot-status values
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(csms, args))
    except OSError as error:  # e.g. the port is taken
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
