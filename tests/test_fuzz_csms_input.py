"""Fuzzing what a CSMS can send: random and mutated frames and payloads (hypothesis).

What the station must do with any frame (OCPP-J 1.6 §4):
* a CALL (message type 2 with a string message id) gets exactly one answer, with the same id: a
  CALLRESULT, or the CALLERROR OCPP-J 1.6 prescribes (Table 7): unknown action -> NotImplemented,
  known but not supported -> NotSupported, a payload that breaks the schema -> one of the schema codes
  in their 1.6 spellings (FormationViolation, OccurenceConstraintViolation; never the library's
  "FormatViolation" or "OccurrenceConstraintViolation");
* anything else (not JSON, not a list, an unknown message type, a CALLRESULT/CALLERROR nobody waits
  for) is ignored: no answer;
* nothing escapes the receive path, the connection stays up, and no contactor moves because of it.

Two layers:
1. In-process, thousands of frames a second: `agent.ocpp.v16.client._ChargePoint.route_message` is called
   directly with a fake connection, on a real `agent.station.station.Station` built on the simulated board with
   a manual clock. Connector 1 is charging (contactor closed), connector 2 idle (open); after every
   frame both must be as they were, unless the frame was a valid command that may legitimately end a
   session (Reset, UnlockConnector, RemoteStopTransaction), after which the station is rebuilt.
2. End to end: the agent process, mid-session, receives a few hundred generated frames over its real
   WebSocket from the bundled CSMS; the connection, the session and the answers are checked.

Hypothesis runs derandomized without an example database: the same commit and the same pytest command
see the same frames. (Hypothesis also mixes in literals it finds in the project's own modules, so edits
elsewhere in the code can change which frames are drawn; what the fuzz found is pinned in HOSTILE_FRAMES.)
"""

from __future__ import annotations

import asyncio
import copy
import decimal
import json
import math
import re
import string
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ocpp.messages
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from ocpp.messages import get_validator
from ocpp.routing import create_route_map
from ocpp.v16 import call
from ocpp.v16.enums import Action

from agent.config import load_config
from agent.core import controller as ctl
from agent.ocpp.v16.client import OcppClient, _ChargePoint
from agent.ocpp.v16.config import KEYS as CONFIGURATION_KEYS
from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.station.journal import Journal
from agent.station.station import Station
from hal.board import load_board
from hil.csms import LocalCsms, _describe_frame
from tests.agent_harness import STATION_ID, TAG_OK, calls_since, charge, wait_call, write_config

CALL_TYPE, CALLRESULT, CALLERROR = 2, 3, 4

# OCPP-J 1.6 §4.2.3 Table 7, in the 1.6 spellings
OCPP_J_16_ERROR_CODES = frozenset({
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError", "FormationViolation",
    "PropertyConstraintViolation", "OccurenceConstraintViolation", "TypeConstraintViolation", "GenericError",
})
# the codes a payload that breaks the schema may get
SCHEMA_ERROR_CODES = frozenset({
    "FormationViolation", "TypeConstraintViolation", "ProtocolError", "OccurenceConstraintViolation",
    "PropertyConstraintViolation",
})
MAX_ERROR_DETAILS_BYTES = 1024

ACTIONS_16 = frozenset(a.value for a in Action)
# CSMS -> CP requests the agent implements (its @on handlers); other 1.6 actions are NotSupported, names
# outside the 1.6 Action enum NotImplemented.
HANDLED = frozenset(getattr(action, "value", action) for action, hooks in create_route_map(_ChargePoint).items()
                    if "_on_action" in hooks)
# valid requests of these may end a session (open a contactor) as the spec says they should
MAY_END_SESSION = frozenset({"Reset", "UnlockConnector", "RemoteStopTransaction"})
# valid requests of these change the station's state; the end-to-end run leaves them out, because
# a legitimate command is not what this test is about
STATE_CHANGING = MAY_END_SESSION | {"ChangeAvailability", "ChangeConfiguration", "SendLocalList"}
# the library validates these with Decimal floats (multipleOf 0.1); the oracle does the same
DECIMAL_ACTIONS = frozenset({"SetChargingProfile", "RemoteStartTransaction"})

# a date years ahead of the real clock, whenever the test runs: schedules, reservations and firmware
# retrievals in these requests stay in the future (a fixed date would change what they do once it passed)
WHEN = ocpp_timestamp(datetime.now(UTC).replace(microsecond=0) + timedelta(days=4 * 366))
PROFILE = {
    "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Absolute", "chargingSchedule": {
        "chargingRateUnit": "A", "duration": 3600, "startSchedule": WHEN, "minChargingRate": 6.0,
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0, "numberPhases": 3},
                                   {"startPeriod": 600, "limit": 10.5}]}}

# One valid request of every CSMS -> CP action of OCPP 1.6 (with the security whitepaper's), with
# every optional field, so that mutations have something to work on.
EXAMPLES: dict[str, dict] = {
    "CancelReservation": {"reservationId": 7},
    "CertificateSigned": {"certificateChain": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"},
    "ChangeAvailability": {"connectorId": 2, "type": "Inoperative"},
    "ChangeConfiguration": {"key": "HeartbeatInterval", "value": "60"},
    "ClearCache": {},
    "ClearChargingProfile": {"id": 1, "connectorId": 1, "chargingProfilePurpose": "TxProfile", "stackLevel": 0},
    "DataTransfer": {"vendorId": "com.example", "messageId": "hello", "data": "{\"a\": 1}"},
    "DeleteCertificate": {"certificateHashData": {"hashAlgorithm": "SHA256", "issuerNameHash": "ab",
                                                  "issuerKeyHash": "cd", "serialNumber": "01"}},
    "ExtendedTriggerMessage": {"requestedMessage": "Heartbeat", "connectorId": 1},
    "GetCompositeSchedule": {"connectorId": 1, "duration": 3600, "chargingRateUnit": "A"},
    "GetConfiguration": {"key": ["HeartbeatInterval", "MeterValueSampleInterval", "NoSuchKey"]},
    "GetDiagnostics": {"location": "ftp://example.com/diag", "retries": 1, "retryInterval": 10,
                       "startTime": WHEN, "stopTime": WHEN},
    "GetInstalledCertificateIds": {"certificateType": "CentralSystemRootCertificate"},
    "GetLocalListVersion": {},
    "GetLog": {"logType": "DiagnosticsLog", "requestId": 1, "retries": 1, "retryInterval": 5,
               "log": {"remoteLocation": "ftp://example.com/log", "oldestTimestamp": WHEN,
                       "latestTimestamp": WHEN}},
    "InstallCertificate": {"certificateType": "ManufacturerRootCertificate", "certificate": "-----BEGIN"},
    "RemoteStartTransaction": {"connectorId": 2, "idTag": TAG_OK,
                               "chargingProfile": {**PROFILE, "chargingProfilePurpose": "TxProfile"}},
    "RemoteStopTransaction": {"transactionId": 1},
    "ReserveNow": {"connectorId": 1, "expiryDate": WHEN, "idTag": TAG_OK, "parentIdTag": "P", "reservationId": 3},
    "Reset": {"type": "Soft"},
    "SendLocalList": {"listVersion": 2, "updateType": "Full", "localAuthorizationList": [
        {"idTag": TAG_OK, "idTagInfo": {"status": "Accepted", "expiryDate": WHEN, "parentIdTag": "P"}}]},
    "SetChargingProfile": {"connectorId": 1, "csChargingProfiles": PROFILE},
    "SignedUpdateFirmware": {"requestId": 1, "retries": 1, "retryInterval": 5, "firmware": {
        "location": "https://example.com/fw.bin", "retrieveDateTime": WHEN, "installDateTime": WHEN,
        "signingCertificate": "-----BEGIN", "signature": "c2ln"}},
    "TriggerMessage": {"requestedMessage": "StatusNotification", "connectorId": 1},
    "UnlockConnector": {"connectorId": 1},
    "UpdateFirmware": {"location": "https://example.com/fw.bin", "retrieveDate": WHEN, "retries": 1,
                       "retryInterval": 10},
}


# ---- the oracle: what the answer to a frame must be -----------------------------------------------


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def schema_valid(action: str, payload: dict, message_type: int = CALL_TYPE) -> bool:
    """Whether `payload` is a valid `action` request (or response), read as the library reads it."""
    try:
        json.dumps(payload, allow_nan=False)  # NaN and Infinity are not JSON numbers (RFC 8259)
    except (ValueError, RecursionError):
        return False
    # as the library parses them; careful: get_validator caches one validator per schema, whatever
    # parse_float it was first asked with, so asking for a Decimal schema with floats would change what
    # the agent under test validates against
    decimal_call = action in DECIMAL_ACTIONS and message_type == CALL_TYPE
    decimal_result = action == "GetCompositeSchedule" and message_type != CALL_TYPE  # the library's rule too
    parse_float = decimal.Decimal if decimal_call or decimal_result else float
    validator = get_validator(message_type, action, "1.6", parse_float=parse_float)
    try:
        if parse_float is decimal.Decimal:
            payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
        return validator.is_valid(payload)
    except (ValueError, TypeError, ArithmeticError, RecursionError):
        return False


@dataclass
class Expected:
    answer: str  # "none", "one" (exactly one, same id) or "at_most_one"
    unique_id: str | None = None
    action: str | None = None  # of a well-formed CALL
    codes: frozenset[str] | None = None  # a CALLERROR with one of these; None: CALLRESULT or CALLERROR
    result: bool = False  # a CALLRESULT is expected

    @property
    def may_end_session(self) -> bool:
        return self.result and self.action in MAY_END_SESSION


def expected(raw: str | bytes, registration: str = "Accepted") -> Expected:
    try:
        frame = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or JSON this parser cannot hold (deep, huge numbers)
        return Expected("none")
    if not isinstance(frame, list) or not frame or isinstance(frame[0], bool) or frame[0] != CALL_TYPE:
        return Expected("none")  # not a CALL: not OCPP, an unknown type, or a response nobody waits for
    if registration == "Rejected":
        return Expected("none")  # OCPP 1.6 §4.2: a rejected charge point does not answer the CSMS
    if len(frame) < 2 or not isinstance(frame[1], str):
        return Expected("at_most_one", codes=frozenset({"ProtocolError"}))  # no id to answer to
    unique_id = frame[1]
    if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
        return Expected("one", unique_id, codes=frozenset({"ProtocolError", "FormationViolation"}))
    action, payload = frame[2], frame[3]
    if action not in ACTIONS_16:
        return Expected("one", unique_id, action, frozenset({"NotImplemented"}))
    if action not in HANDLED:
        return Expected("one", unique_id, action, frozenset({"NotSupported"}))
    if not schema_valid(action, payload):
        return Expected("one", unique_id, action, SCHEMA_ERROR_CODES)
    return Expected("one", unique_id, action, result=True)


def check_answers(raw: str | bytes, replies: list[str], registration: str = "Accepted") -> Expected:
    """Assert the station's replies to one frame are what OCPP-J 1.6 prescribes; returns the oracle."""
    want = expected(raw, registration)
    shown = repr(raw)[:300]
    assert len(replies) <= 1, f"{len(replies)} answers to one frame {shown}: {replies}"
    if want.answer == "none":
        assert replies == [], f"answered a frame that must be ignored: {shown} -> {replies}"
        return want
    if want.answer == "one":
        assert len(replies) == 1, f"no answer to the CALL {shown}"
    if not replies:
        return want
    reply = json.loads(replies[0], parse_constant=_reject_constant)  # valid JSON, no NaN
    assert isinstance(reply, list) and reply and reply[0] in (CALLRESULT, CALLERROR), f"{shown} -> {reply}"
    if want.unique_id is not None:
        assert reply[1] == want.unique_id, f"answer with another id: {shown} -> {replies[0][:300]}"
    if reply[0] == CALLERROR:
        assert len(reply) == 5, reply
        _, _, code, description, details = reply
        assert code in OCPP_J_16_ERROR_CODES, f"not an OCPP-J 1.6 error code: {code} (to {shown})"
        assert isinstance(description, str) and len(description) < 1024, reply
        assert isinstance(details, dict), reply
        assert len(json.dumps(details).encode()) < MAX_ERROR_DETAILS_BYTES, f"errorDetails too big: {details}"
        assert not want.result, f"valid {want.action} refused with {code}: {shown} -> {reply}"
        if want.codes is not None:
            assert code in want.codes, f"{code} where {sorted(want.codes)} was due: {shown} -> {reply}"
    else:
        assert len(reply) == 3 and isinstance(reply[2], dict), reply
        assert want.result, f"CALLRESULT where a CALLERROR ({sorted(want.codes or ())}) was due: {shown}"
        assert schema_valid(want.action, reply[2], CALLRESULT), f"invalid {want.action}.conf: {reply[2]}"
    return want


# ---- strategies ---------------------------------------------------------------------------------------

# Parts of a frame the JSON encoder cannot produce (or that would make the oracle's own parse depend on
# its stack depth) are spliced in as text: sentinel strings stand for them in the JSON value.
_DEEP = "\x00deep:"
_BIGINT = "\x00bigint:"
_SPLICED = re.compile(r'"\\u0000(deep|bigint):(\d+)"')


def _splice(text: str) -> str:
    def spliced(match: re.Match) -> str:
        n = int(match[2])
        return "[" * n + "]" * n if match[1] == "deep" else "9" * n

    return _SPLICED.sub(spliced, text)


def to_frame(value) -> str:
    return _splice(json.dumps(value))


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
edge_numbers = st.sampled_from([
    -1, 0, 1, 2, 3, 99, 2**31 - 1, 2**31, -(2**31) - 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30,
    1.0, 1.5, -0.0, 6.25, 1e-9, 1e308, math.inf, -math.inf, math.nan,
])
deep_values = st.sampled_from([2, 30, 300, 3_000, 20_000]).map(lambda n: f"{_DEEP}{n}")
big_ints = st.sampled_from([25, 400, 4_301, 10_000]).map(lambda n: f"{_BIGINT}{n}")
huge_strings = st.tuples(st.sampled_from([21, 37, 51, 256, 501, 10_000, 100_000]),
                         st.sampled_from("x0é€\U0001f600\x00\\\"")).map(lambda t: t[1] * t[0])
unique_ids = st.one_of(
    st.uuids().map(str),
    st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=36),
    st.text(max_size=36),  # any unicode, lone surrogates and the empty id included
    st.text(min_size=37, max_size=120),  # longer than OCPP-J's 36
)
action_names = st.one_of(
    st.sampled_from(sorted(HANDLED)),
    st.sampled_from(sorted(ACTIONS_16)),
    st.tuples(st.sampled_from(sorted(HANDLED)), st.sampled_from([str.lower, str.upper, "{}.req".format])).map(
        lambda t: t[1](t[0])),
    st.text(max_size=30),
)


def _field_names(value) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_field_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_field_names(v) for v in value))
    return set()


FIELD_NAMES = sorted(_field_names(list(EXAMPLES.values())))

# (a) random text, and bytes as a binary WebSocket frame or decoded in various ways
junk_text = st.one_of(
    st.text(),
    st.binary().map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.binary().map(lambda b: b.decode("latin-1")),
    st.lists(st.sampled_from(['[', ']', '{', '}', '2', '3', '4', '"', '",', ',', ':', '"id"', '"Reset"', 'NaN',
                              '-Infinity', 'null', '1e999', ' ', '\\u0000', '"\\ud800"', '{}']),
             max_size=30).map("".join),
)
junk_frames = st.one_of(junk_text, st.binary())

# (b) random JSON values, and lists that look like OCPP-J frames
message_type_ids = st.one_of(st.sampled_from([2, 3, 4, 2.0, 0, 1, 5, -2, True, "2", None]), json_scalars)
framelike = st.builds(
    lambda t, rest: [t, *rest], message_type_ids, st.lists(json_values | unique_ids, max_size=6))
json_frames = st.one_of(json_values, framelike).map(to_frame)

# (c) well-formed CALLs: a 1.6 action name or not, any payload
call_frames = st.builds(
    lambda uid, action, payload: to_frame([CALL_TYPE, uid, action, payload]),
    unique_ids, action_names,
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=20), json_values | edge_numbers, max_size=5),
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


def _set(root, path, new):
    if not path:
        return new
    parent = root
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = new
    return root


def _get(root, path):
    for part in path:
        root = root[part]
    return root


MUTATIONS = ("drop", "retype", "add_field", "enum", "huge_string", "deep", "number_as_string",
             "edge_number", "unicode", "null", "big_int", "wrap_in_list")


def _mutant(draw, kind: str, old):
    """A replacement for the value `old` (drop and add_field are done in place by the caller)."""
    match kind:
        case "retype":
            return draw(json_values)
        case "enum":
            return draw(st.text(max_size=20) | st.sampled_from(
                [str(old).lower(), str(old).upper(), f" {old}", f"{old} ", "", "Accepted", "Soft", "Hard"]))
        case "huge_string":
            return draw(huge_strings)
        case "deep":
            return draw(deep_values)
        case "number_as_string":
            return str(old) if not isinstance(old, str) else draw(edge_numbers)
        case "edge_number":
            return draw(edge_numbers)
        case "unicode":
            return draw(st.text(min_size=1, max_size=40))
        case "null":
            return None
        case "big_int":
            return draw(big_ints)
        case "wrap_in_list":
            return [old]
    raise AssertionError(kind)


@st.composite
def mutated_payloads(draw, action: str | None = None) -> tuple[str, object]:
    """(d) a valid request of a CSMS -> CP action, mutated 0..3 times anywhere in its tree."""
    # mostly the actions with a handler: the others are NotSupported whatever their payload
    action = action or draw(st.sampled_from(sorted(HANDLED)) | st.sampled_from(sorted(EXAMPLES)))
    payload = copy.deepcopy(EXAMPLES[action])
    for _ in range(draw(st.integers(0, 3))):
        # the payload itself is replaced rarely (that is always a ProtocolError), its fields often
        fields = list(_paths(payload))[1:]
        path = draw(st.sampled_from(fields)) if fields and draw(st.integers(0, 19)) != 7 else ()
        old = _get(payload, path)
        kind = draw(st.sampled_from(MUTATIONS)) if path or draw(st.integers(0, 19)) == 7 else "add_field"
        if kind == "drop":
            if not path:
                payload = {}
            else:
                parent = _get(payload, path[:-1])
                del parent[path[-1]]
            continue
        if kind == "add_field":
            target = old if isinstance(old, dict) else _get(payload, path[:-1]) if path else payload
            if isinstance(target, dict):
                target[draw(st.text(max_size=20) | st.sampled_from(["idTag", "connectorId", "type", "x"]))] = \
                    draw(json_values)
            elif isinstance(target, list):
                target.append(draw(json_values))
            continue
        payload = _set(payload, path, _mutant(draw, kind, old))
    return action, payload


mutated_calls = st.builds(
    lambda uid, mutated: to_frame([CALL_TYPE, uid, *mutated]),
    st.one_of(st.uuids().map(str), unique_ids), mutated_payloads(),
)

any_frame = st.one_of(junk_text, json_frames, call_frames, mutated_calls, mutated_calls)


# ---- layer 1: route_message on a real Station, in process ---------------------------------------------


class FakeConnection:
    """The WebSocket as `ChargePoint` sees it (ocpp-notes 1.2): async send(str) and recv()."""

    def __init__(self):
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        assert isinstance(message, str)
        self.sent.append(message)

    async def recv(self) -> str:
        await asyncio.Event().wait()  # never: the tests call route_message themselves
        raise AssertionError("unreachable")


@dataclass
class Rig:
    """A real Station on the simulated board with a manual clock: connector 1 charging (contactor
    closed), connector 2 idle (open); its OCPP client registered, the CP object on a fake connection."""

    workdirs: object  # pytest's tmp_path_factory
    registration: str = "Accepted"
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    loop_errors: list[str] = field(default_factory=list)
    now: float = 1_000.0
    rebuilds: int = 0
    frames: int = 0

    def __post_init__(self):
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(str(context)))
        self.station: Station | None = None
        self.build()

    def clock(self) -> float:
        return self.now

    def build(self) -> None:
        self.dispose()
        self.loop.run_until_complete(self._build())
        self.rebuilds += 1

    async def _build(self) -> None:
        workdir: Path = self.workdirs.mktemp("rig")
        config = load_config(write_config(workdir, "ws://127.0.0.1:9/ocpp", connectors=2))
        config.journal.path.parent.mkdir(parents=True, exist_ok=True)
        board = load_board(config.board.file, state_dir=config.journal.path.parent, clock=self.clock)
        self.station = station = Station(config, board, Journal(config.journal.path), csms=OcppClient, clock=self.clock)
        self.sim = board.simulator
        await station.start_control()
        for rt in station.connectors.values():  # the journal's work (TransactionRecorded), as Station.run() has it
            station.tasks.start(station.recorder.worker(rt), f"tx-{rt.id}")
        await self._steps(3)
        self.sim.plug(1)
        await self._steps(5)
        assert station.present_id_token(TAG_OK) == 1
        # the CSMS's answer, given before the Authorize the station asks for could go out
        station.channel.dispatch(station.connectors[1], ctl.AuthorizationResult(TAG_OK, True, None))
        await self._steps(20)
        assert self.contactors() == (True, False), station.status()
        assert station.connectors[1].controller.view().status.value == "charging"
        station.ocpp.connected = True
        station.ocpp.registration = self.registration
        self.connection = FakeConnection()
        self.cp = _ChargePoint(STATION_ID, self.connection, client=station.ocpp, response_timeout=5)

    def step(self, n: int = 1) -> None:
        self.loop.run_until_complete(self._steps(n))

    async def _steps(self, n: int) -> None:
        for _ in range(n):
            self.now += 0.2
            self.station.control_step()
            for _ in range(5):
                await asyncio.sleep(0)  # the journal worker records a start (TransactionRecorded)

    def contactors(self) -> tuple[bool, bool]:
        snap = self.sim.snapshot()["connectors"]
        views = [rt.controller.view().contactor_closed for rt in self.station.connectors.values()]
        commanded = tuple(c["contactor_commanded"] for c in snap)
        assert tuple(views) == commanded, (views, commanded)
        return commanded

    def feed(self, raw: str | bytes) -> list[str]:
        """route_message(raw) as the receive loop would; returns what the station sent back."""
        self.connection.sent.clear()
        self.frames += 1

        async def run():
            await self.cp.route_message(raw)  # an exception escaping here fails the test
            for _ in range(3):
                await asyncio.sleep(0)  # @after hooks and spawned tasks

        self.loop.run_until_complete(run())
        self.step()
        return list(self.connection.sent)

    def check(self, raw: str | bytes) -> Expected:
        before = self.contactors()
        want = check_answers(raw, self.feed(raw), self.registration)
        assert self.loop_errors == [], self.loop_errors
        after = self.contactors()
        if after != before:
            assert want.may_end_session, f"contactors {before} -> {after} after {raw!r:.300}"
        if want.may_end_session and (after != before or self.station.connectors[1].controller.view()
                                     .status.value != "charging"):
            self.build()  # a valid Reset/Unlock ended the session, as it should: start a new one
        return want

    def dispose(self) -> None:
        if self.station is None:
            return
        station, self.station = self.station, None
        self.loop.run_until_complete(station.tasks.cancel())
        station.journal.close()

    def close(self) -> None:
        self.dispose()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture(scope="module")
def sync_validation():
    previous = ocpp.messages.ASYNC_VALIDATION
    ocpp.messages.ASYNC_VALIDATION = False  # as agent.app sets it
    yield
    ocpp.messages.ASYNC_VALIDATION = previous


@pytest.fixture(scope="module")
def rig(tmp_path_factory, sync_validation):
    rig = Rig(tmp_path_factory)
    yield rig
    rig.close()


@pytest.fixture(scope="module")
def rejected_rig(tmp_path_factory, sync_validation):
    rig = Rig(tmp_path_factory, registration="Rejected")
    yield rig
    rig.close()


FUZZ = settings(deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])


def test_every_base_example_is_a_valid_request():
    """The mutations start from valid requests, one per CSMS -> CP action of OCPP 1.6."""
    csms_to_cp = ACTIONS_16 - {
        "Authorize", "BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
        "Heartbeat", "LogStatusNotification", "MeterValues", "SecurityEventNotification", "SignCertificate",
        "SignedFirmwareStatusNotification", "StartTransaction", "StatusNotification", "StopTransaction"}
    assert set(EXAMPLES) == csms_to_cp | {"DataTransfer"}
    for action, payload in EXAMPLES.items():
        assert schema_valid(action, payload), action


@settings(FUZZ, max_examples=400)
@given(raw=junk_frames)
def test_random_text_and_bytes_are_ignored(rig, raw):
    rig.check(raw)


@settings(FUZZ, max_examples=400)
@given(raw=json_frames)
def test_random_json_values_are_ignored_or_answered(rig, raw):
    rig.check(raw)


@settings(FUZZ, max_examples=800)
@given(raw=call_frames)
def test_calls_of_any_action_with_any_payload_are_answered_once(rig, raw):
    rig.check(raw)


@settings(FUZZ, max_examples=3_000)
@given(raw=mutated_calls)
def test_mutated_requests_of_every_csms_action_get_the_prescribed_answer(rig, raw):
    rig.check(raw)


@settings(FUZZ, max_examples=150)
@given(raw=any_frame)
def test_a_rejected_station_answers_nothing(rejected_rig, raw):
    """OCPP 1.6 §4.2: after BootNotification Rejected the station does not answer the CSMS."""
    rejected_rig.check(raw)


# Frames the fuzz found (or that are known to hurt JSON parsers), kept as fixed examples; the end-to-end
# test sends them too.
HOSTILE_FRAMES = {
    "deep-frame":
        "[" * 100_000 + "]" * 100_000,  # nesting deeper than any JSON parser's stack
    "deep-payload":
        '[2,"deep","DataTransfer",{"vendorId":"v","data":' + "[" * 50_000 + "]" * 50_000 + "}]",
    "huge-int-payload":
        '[2,"num","Reset",{"type":' + "1" * 5_000 + "}]",  # more digits than Python converts to an int
    "huge-int-result":
        '[3,"res",' + "9" * 5_000 + "]",
    "nan-limit":
        '[2,"nan","RemoteStartTransaction",{"idTag":"X","chargingProfile":{"chargingProfileId":1,"stackLevel":0,'
        '"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute","chargingSchedule":{'
        '"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,"limit":NaN}]}}}]',
    "inf-limit":
        '[2,"inf","RemoteStartTransaction",{"idTag":"X","chargingProfile":{"chargingProfileId":1,"stackLevel":0,'
        '"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute","chargingSchedule":{'
        '"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,"limit":1e400}]}}}]',
    "huge-limit":
        '[2,"hl","RemoteStartTransaction",{"idTag":"X","chargingProfile":{"chargingProfileId":1,"stackLevel":0,'
        '"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute","chargingSchedule":{'
        '"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,"limit":1e300}]}}}]',
    "huge-integer-limit":
        '[2,"hil","RemoteStartTransaction",{"idTag":"X","chargingProfile":{"chargingProfileId":1,"stackLevel":0,'
        '"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute","chargingSchedule":{'
        '"chargingRateUnit":"A","minChargingRate":' + "9" * 40 + ',"chargingSchedulePeriod":[{"startPeriod":0,'
        '"limit":6}]}}}]',
    "huge-transaction-id":
        '[2,"big","RemoteStopTransaction",{"transactionId":' + "9" * 30 + "}]",
    "huge-negative-transaction-id":
        '[2,"neg","RemoteStopTransaction",{"transactionId":-' + "9" * 30 + "}]",
    "long-id-malformed":
        '[2,"' + "L" * 100 + '","Reset"]',  # malformed CALL with an id longer than 36
    "long-id":
        '[2,"' + "L" * 100 + '","GetConfiguration",{}]',
    "long-id-list-payload":
        '[2,"' + "L" * 100 + '","Reset",[]]',  # long id, payload not an object
    "emoji-error-details":
        '[2,"emoji","Reset",{"type":"' + "\U0001f600" * 1_000 + '"}]',  # 12 bytes a character in errorDetails
    "lone-surrogates":
        '[2,"sur\\ud800","ChangeConfiguration",{"key":"HeartbeatInterval","value":"\\udfff"}]',
    "lone-surrogate-key":
        '[2,"surkey","ChangeConfiguration",{"key":"\\udfffX","value":"1"}]',
    "binary-frame":
        b'[2,"bin","GetConfiguration",{}]',
    "utf16-bytes":
        b'\xff\xfe[\x002\x00]\x00',
}


@pytest.mark.parametrize("raw", HOSTILE_FRAMES.values(), ids=HOSTILE_FRAMES.keys())
def test_regressions(rig, raw):
    """Frames the fuzz found (or that are known to hurt JSON parsers), kept as fixed examples."""
    rig.check(raw)


@pytest.mark.parametrize("raw", ['[2,"m1","Reset"]', '[2,"m2","Reset",{"type":"Soft"},1]', '[2,"m3",7,{}]'])
def test_a_rejected_station_does_not_answer_malformed_calls_either(rejected_rig, raw):
    rejected_rig.check(raw)


def test_a_flood_of_unknown_responses_during_a_call_neither_breaks_it_nor_the_loop(rig):
    """OCPP-J §4: CALLRESULT/CALLERROR with an unknown id are ignored. The library drops them while a call
    waits, recursing once per frame: a CSMS sending ~1000 of them made the call die with RecursionError,
    which ended the session task and so the connection."""
    cp, sent = rig.cp, rig.connection.sent

    async def flood():
        sent.clear()
        pending = asyncio.ensure_future(cp.call(call.Heartbeat(), suppress=False))
        await asyncio.sleep(0)
        for i in range(3_000):
            junk = [CALLRESULT, f"junk-{i}", {}] if i % 2 else [CALLERROR, f"junk-{i}", "GenericError", "", {}]
            await cp.route_message(json.dumps(junk))
        assert not pending.done()
        request = json.loads(sent[0])
        await cp.route_message(json.dumps([CALLRESULT, request[1], {"currentTime": WHEN}]))
        result = await asyncio.wait_for(pending, 5)
        assert result.current_time == WHEN
        assert len(sent) == 1  # the Heartbeat; nothing answered the junk

    rig.loop.run_until_complete(flood())
    assert rig.loop_errors == []


# ---- layer 2: the agent process over its real WebSocket --------------------------------------------------

E2E_FRAMES = 300
LOGGING_ERROR = re.compile(r"^--- Logging error ---$.*?(?=^\d{4}-\d\d-\d\d |\Z)", re.MULTILINE | re.DOTALL)


def generate_frames(n: int) -> list[str]:
    """`n` frames drawn from the strategies above: deterministic (derandomized), distinct, not tied to
    any example of the in-process tests."""
    drawn: list[str] = []

    @settings(FUZZ, max_examples=n, phases=[Phase.generate])
    @given(raw=any_frame)
    def collect(raw):
        drawn.append(raw)

    collect()
    return drawn[:n]


def prepare_for_the_wire(frames: list[str | bytes], prefix: str = "fz") -> list[tuple[str, Expected]]:
    """Text a CSMS can put on a WebSocket (valid UTF-8, under the agent's 1 MiB frame limit), with
    unique ids for CALLs, and without valid commands that legitimately change the station."""
    out = []
    for i, raw in enumerate(frames):
        if isinstance(raw, bytes):
            continue
        raw = raw.encode("utf-8", "replace").decode("utf-8")
        try:
            frame = json.loads(raw)
            if (isinstance(frame, list) and len(frame) >= 2 and frame[0] == CALL_TYPE
                    and not isinstance(frame[0], bool) and isinstance(frame[1], str)):
                frame[1] = f"{prefix}{i:03d}"
                raw = json.dumps(frame)
        except (ValueError, RecursionError):
            pass
        want = expected(raw)
        if (want.answer == "at_most_one"  # a CALL without a string id: checked in process
                or want.result and changes_the_station(want.action, json.loads(raw)[3])
                or len(raw.encode()) > 900_000):
            continue
        out.append((raw, want))
    return out


async def send_frame(csms: LocalCsms, raw: str) -> None:
    """csms.send_raw, except for frames the CSMS's own recorder cannot describe (hil.csms._describe_frame
    raises on a first element that is a list or an object, and on nesting too deep for json.loads):
    those go out on the WebSocket unrecorded."""
    try:
        _describe_frame(raw)
    except (TypeError, RecursionError):
        await csms._session(STATION_ID).websocket.send(raw)
        return
    await csms.send_raw(STATION_ID, raw)


def changes_the_station(action: str, payload: dict) -> bool:
    """Whether a valid request is a command that legitimately changes the station (ChangeConfiguration
    of a key it does not know is answered NotSupported and changes nothing)."""
    if action == "ChangeConfiguration":
        return payload["key"] in CONFIGURATION_KEYS
    return action in STATE_CHANGING


@pytest.mark.slow
async def test_the_agent_survives_hundreds_of_fuzzed_frames_mid_session(csms, run_agent, csms_events):
    frames = prepare_for_the_wire(generate_frames(E2E_FRAMES))
    assert len(frames) >= E2E_FRAMES * 2 // 3
    frames = prepare_for_the_wire(list(HOSTILE_FRAMES.values()), "hostile") + frames
    # answers nobody waits for: the library dropped them recursively, one stack frame each
    flood = [json.dumps([CALLRESULT, f"junk{i}", {}] if i % 2 else [CALLERROR, f"junk{i}", "GenericError", "", {}])
             for i in range(1_500)]

    agent = await run_agent(csms)
    await wait_call(csms, "StatusNotification", where=lambda p: p["connectorId"] == 1)
    await charge(agent, csms, TAG_OK)
    tx_id = (await agent.wait_connector(lambda c: c["transaction_id"] is not None))["transaction_id"]
    mark = len(csms.frames)
    started = time.monotonic()

    polls = 0
    pause = 3.0 / (len(frames) / 10)  # spread over 3 s: at least two MeterValueSampleIntervals
    for batch in range(0, len(frames), 10):
        for raw, _ in frames[batch:batch + 10]:
            await send_frame(csms, raw)
        connector = await agent.connector()
        sim = (await agent.cmd("sim.snapshot"))["connectors"][0]
        assert connector["contactor_closed"] and sim["contactor_commanded"], (batch, connector, sim)
        assert connector["status"] == "Charging" and connector["transaction_id"] == tx_id, connector
        polls += 1
        if batch == len(frames) // 20 * 10:
            for raw in flood:
                await csms.send_raw(STATION_ID, raw)
        await asyncio.sleep(pause)

    # every CALL got exactly its answer, and nothing else was answered
    calls = [(raw, want) for raw, want in frames if want.unique_id is not None]
    for _, want in calls:
        await csms.wait_frame(lambda f, uid=want.unique_id: f.direction == "in" and f.unique_id == uid
                              and f.message_type in (CALLRESULT, CALLERROR), timeout=10, since=mark)
    await asyncio.sleep(0.5)  # late or duplicate answers would show up now
    answers = [f for f in csms.frames[mark:] if f.direction == "in" and f.message_type in (CALLRESULT, CALLERROR)]
    by_id: dict[str, list] = {}
    for frame in answers:
        by_id.setdefault(frame.unique_id, []).append(frame)
    for raw, want in calls:
        check_answers(raw, [f.raw for f in by_id.pop(want.unique_id)])
    assert by_id == {}, f"answers to frames that must be ignored: {list(by_id)[:5]}"
    fuzz_seconds = time.monotonic() - started

    # the session went on undisturbed, on the same connection
    during = calls_since(csms, "MeterValues", mark, lambda p: p.get("transactionId") == tx_id)
    assert len(during) >= 2, f"{len(during)} MeterValues in {fuzz_seconds:.1f} s of fuzzing"
    await wait_call(csms, "MeterValues", len(csms.frames), lambda p: p.get("transactionId") == tx_id)
    connector = await agent.connector()
    assert connector["contactor_closed"] and connector["status"] == "Charging", connector
    assert calls_since(csms, "StopTransaction", mark) == []
    assert len(csms.calls("BootNotification")) == 1
    assert len([line for line in csms_events if f"{STATION_ID} connected" in line]) == 1
    assert not [line for line in csms_events if "disconnected" in line]
    status = await agent.status()
    assert status["ocpp"]["connected"] and status["ocpp"]["last_error"] is None, status["ocpp"]
    answer = await csms.call(STATION_ID, "GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert answer["configurationKey"][0]["value"] == "60"

    # only answers the CSMS could not pair with a call it recorded (to malformed CALLs, or to frames sent
    # unrecorded) are flagged by it
    ours = {want.unique_id for _, want in calls}
    assert [v for v in csms.violations
            if not (v.kind == "unexpected_response" and v.frame and v.frame.unique_id in ours)] == []
    # Nothing went wrong inside the agent, except (known, outside agent/ocpp/v16/client.py) that a string the CSMS
    # sent with a lone surrogate (a legal JSON escape such as "\\udfff") cannot be written to the UTF-8 log:
    # logging reports "--- Logging error ---" with a traceback and drops that line.
    log = agent.log_path.read_text(errors="replace")
    logging_errors = LOGGING_ERROR.findall(log)
    assert all("surrogates not allowed" in block for block in logging_errors), logging_errors
    assert "Traceback" not in LOGGING_ERROR.sub("", log), agent.log_tail(80)
    print(f"\n{len(frames)} frames + {len(flood)} unknown answers, {len(calls)} CALLs, {polls} status polls "
          f"in {fuzz_seconds:.1f} s; {len(logging_errors)} log lines lost to lone surrogates")
