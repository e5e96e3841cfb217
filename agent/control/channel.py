"""The message channel between the agent process and the control process (docs/architecture.md).

The control process owns the devices, the session controllers and the control loop; the agent process owns
OCPP, the journal, authorization and the CLI. They exchange small messages, one JSON object per line:

* down (agent -> control): `setup` (per connector settings and the initial events), `event` (a controller
  event: a grant such as AuthorizationResult or TransactionRecorded, a stop, a setting), `request` (a device
  operation that answers: meter read, technician's test, simulator command), `alive` (heartbeat), `stop`.
* up (control -> agent): `hello` (what the board has), `output` (the commands of a controller that the
  agent carries out: StartTransaction, StopTransaction, StatusChanged, RequestAuthorization, ...) with the
  controller's state, `state` (the state alone, when it changed), `tag` (a card at the reader), `reply`,
  `alive` (heartbeat with the control loop's figures).

Every message carries `"v": PROTOCOL_VERSION`; a side that reads another version refuses the peer. Controller
events, commands and state travel as tagged dicts (`encode`/`decode`): only the dataclasses and enums
registered here can be decoded, so a message can never build an arbitrary object.

This module is imported by both processes: it depends on the controller and the HAL's value types only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

from agent.core import controller as ctl
from agent.core.transaction_policy import TransactionPolicy, TxPoint
from hal.interfaces import CpState, IndicatorState, MeterReading, PilotMode

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20  # a message is a few hundred bytes; anything near this is a broken peer

# down
SETUP, EVENT, REQUEST, ALIVE, STOP = "setup", "event", "request", "alive", "stop"
# up
HELLO, OUTPUT, STATE, TAG, REPLY = "hello", "output", "state", "tag", "reply"
START_FAILED = "error"  # instead of the hello: the board could not be started (the text says why)


class ChannelError(Exception):
    """A message that does not decode, or a peer that speaks another protocol version."""


def _registry() -> dict[str, type]:
    types: dict[str, type] = {}
    for value in vars(ctl).values():
        if isinstance(value, type) and value.__module__ == ctl.__name__ and (
                dataclasses.is_dataclass(value) or issubclass(value, Enum)):
            types[value.__name__] = value
    for extra in (CpState, PilotMode, IndicatorState, MeterReading, TransactionPolicy, TxPoint):
        types[extra.__name__] = extra
    return types


_TYPES = _registry()


def encode(value: Any) -> Any:
    """A controller event, command, state value or MeterReading as plain JSON data."""
    if isinstance(value, Enum):
        return {"$e": type(value).__name__, "v": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        data["$t"] = type(value).__name__
        return data
    if isinstance(value, set | frozenset):
        return {"$s": [encode(item) for item in sorted(value, key=str)]}
    if isinstance(value, tuple | list):
        return [encode(item) for item in value]
    if isinstance(value, float) and math.isinf(value):
        return {"$f": "inf" if value > 0 else "-inf"}
    return value


def decode(data: Any) -> Any:
    """The inverse of encode(); raises ChannelError for a type that is not registered."""
    if isinstance(data, list):
        return tuple(decode(item) for item in data)
    if not isinstance(data, dict):
        return data
    try:
        if "$e" in data:
            return _TYPES[data["$e"]](data["v"])
        if "$s" in data:
            return {decode(item) for item in data["$s"]}
        if "$f" in data:
            return math.inf if data["$f"] == "inf" else -math.inf
        if "$t" in data:
            cls = _TYPES[data["$t"]]
            fields = {k: decode(v) for k, v in data.items() if k != "$t"}
            return cls(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise ChannelError(f"undecodable value {str(data)[:200]}: {exc!r}") from exc
    return {k: decode(v) for k, v in data.items()}


# The controller state crosses the channel whole: the agent keeps a replica whose read-only methods
# (view(), can_accept_remote_start(), reservation_answer(), route_id_tag()) answer as the original would.
_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(ctl.ConnectorController))


def controller_state(controller: ctl.ConnectorController) -> dict[str, Any]:
    return {name: encode(getattr(controller, name)) for name in _STATE_FIELDS}


def apply_controller_state(replica: ctl.ConnectorController, state: dict[str, Any]) -> None:
    for name in _STATE_FIELDS:
        if name in state:
            value = decode(state[name])
            setattr(replica, name, set(value) if name == "faults" else value)


@dataclass(frozen=True)
class ConnectorInfo:
    """What the agent process needs to know of a connector's hardware (it never sees the devices)."""

    connector_id: int
    max_current_a: float
    phases: int
    has_lock: bool
    lock_timeout_s: float
    has_mirror_contact: bool
    has_proximity: bool
    has_indicator: bool
    has_rcd: bool


@dataclass(frozen=True)
class BoardInfo:
    name: str
    connectors: tuple[ConnectorInfo, ...]
    has_rfid: bool
    simulated: bool
    reboot_command: tuple[str, ...] | None
    firmware_install_command: tuple[str, ...] | None
    firmware_max_download_bytes: int
    pilot_states: dict[int, str]  # connector -> CP state read at start ("" when unreadable)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["pilot_states"] = {str(k): v for k, v in self.pilot_states.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoardInfo:
        try:
            return cls(
                name=str(data["name"]),
                connectors=tuple(ConnectorInfo(**c) for c in data["connectors"]),
                has_rfid=bool(data["has_rfid"]), simulated=bool(data["simulated"]),
                reboot_command=tuple(data["reboot_command"]) if data["reboot_command"] else None,
                firmware_install_command=(tuple(data["firmware_install_command"])
                                          if data["firmware_install_command"] else None),
                firmware_max_download_bytes=int(data["firmware_max_download_bytes"]),
                pilot_states={int(k): str(v) for k, v in data["pilot_states"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChannelError(f"bad hello: {exc!r}") from exc


def message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "kind": kind, **fields}


def dumps(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def loads(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ChannelError(f"not a JSON message: {line[:200]!r}") from exc
    if not isinstance(msg, dict) or "kind" not in msg:
        raise ChannelError(f"not a channel message: {line[:200]!r}")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ChannelError(f"peer speaks channel version {msg.get('v')!r}, this side {PROTOCOL_VERSION}")
    return msg


class RequestFailed(Exception):
    """A request the control process could not carry out (the error text says why)."""
