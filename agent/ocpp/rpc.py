"""The two places where evse-agent overrides the `ocpp` library's ChargePoint, in one module.

Everything else uses the library's public API. Each difference from the library is commented here, and
docs/ocpp-library-overrides.md proposes them upstream; once the library has them, this module goes and the
adapters subclass the library's ChargePoint directly. Shared by every protocol version's adapter: a version
says which actions it knows, which carry secrets, how it spells error codes, and whether it answers calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import ocpp.messages
from ocpp.exceptions import (
    FormatViolationError,
    NotSupportedError,
    OCPPError,
    ProtocolError,
    TypeConstraintViolationError,
)
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.messages import Call, CallError, unpack

from agent.logs import excerpt
from agent.ocpp.security import redact_frame

log = logging.getLogger("evse.ocpp")

MAX_UNREAD_ANSWERS = 16  # CALLRESULT/CALLERROR frames waiting for the call in flight to read them


def validate_inline() -> None:
    """The library validates each message's schema inline, not in a thread pool (ocpp-notes 1.7 #9): for the
    whole process, which owns its stations' event loop."""
    ocpp.messages.ASYNC_VALIDATION = False


class GuardedRouting:
    """Mixed in before the library's ChargePoint: `route_message` and `_get_specific_response` that a hostile
    or broken CSMS cannot crash, flood or make answer with the wrong error code."""

    protocol_actions: frozenset[str] = frozenset()  # every action the version defines (NotImplemented vs NotSupported)
    secret_actions: frozenset[str] = frozenset()  # their CALLERRORs and log lines never quote the payload
    error_code_spellings: dict[str, str] = {}  # the version's spelling of a library error code

    # provided by the library's ChargePoint (declared for type checkers only: defining them here would
    # shadow the library's, which comes after this mixin)
    route_map: dict
    _call_lock: asyncio.Lock
    _response_queue: asyncio.Queue
    if TYPE_CHECKING:
        async def _send(self, message: str) -> None: ...

        async def _handle_call(self, msg: Any) -> None: ...

    @property
    def rpc_log(self) -> logging.Logger | logging.LoggerAdapter:
        """Where routing says what it refused; a version's adapter gives its station's logger."""
        return log

    def _accepting_calls(self) -> bool:
        """False while the CSMS's CALLs must go unanswered (1.6: registration Rejected)."""
        return True

    def _prepare_call(self, action: str, payload: dict) -> None:
        """A last tolerant touch on a CALL's payload before the library validates it."""

    def _call_error(self, unique_id: str, error: OCPPError) -> str:
        code = self.error_code_spellings.get(error.code, error.code)
        cause = error.details.get("cause") if isinstance(error.details, dict) else None
        details = {"cause": short(str(cause))} if cause else {}  # the library's cause can hold a schema dump
        return CallError(unique_id, code, error.description or "", details).to_json()

    async def _get_specific_response(self, unique_id, timeout):
        """The answer to our CALL `unique_id`; answers with other ids (late, unknown) are dropped (OCPP-J).
        Replaces the library's version, which recursed once per dropped frame (a CSMS sending ~1000 of them
        while a call waited raised RecursionError and ended the session) and timed with the wall clock."""
        deadline = time.monotonic() + timeout
        while True:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):  # not wait_for (3.11 cancel bug)
                response = await self._response_queue.get()
            if response.unique_id == unique_id:
                return response
            self.rpc_log.info("ignoring an answer to no open call: %s", excerpt(str(response), 100))

    async def route_message(self, raw_msg) -> None:
        """The library's routing, with: a CALLERROR for a frame it cannot unpack; answers queued only while a
        call waits (bounded); the frame's shape checked before routing; NotImplemented for an unknown action and
        NotSupported for a known one without a handler (OCPP-J 1.6 Table 7, 2.0.1 Part 4 §4.2.3); NaN and
        Decimal overflow answered as the errors they are; a CALLERROR's cause cut to an excerpt."""
        try:
            msg = unpack(raw_msg)
        except OCPPError as error:
            unique_id = _unique_id_of(raw_msg)
            self.rpc_log.warning("malformed frame from CSMS (%s): %s", excerpt(error.description, 100),
                        excerpt(redact_frame(raw_msg)))
            if unique_id is not None and self._accepting_calls():
                await self._send(self._call_error(unique_id, error))
            return
        except (ValueError, RecursionError) as error:  # JSON beyond the parser: > 4300 digits, deep nesting
            self.rpc_log.warning("unreadable frame from CSMS (%s): %s", type(error).__name__, excerpt(raw_msg))
            return
        if msg.message_type_id != Call.message_type_id:
            # only a call in flight (it holds the lock until its answer or timeout) takes answers: others
            # would pile up in the queue until the next call (a CSMS flooding CALLRESULTs grew the RSS)
            if self._call_lock.locked():
                if self._response_queue.qsize() >= MAX_UNREAD_ANSWERS:  # a flood: the oldest goes, so the
                    dropped = self._response_queue.get_nowait()  # answer that comes after it still gets in
                    self.rpc_log.info("ignoring an answer to no open call: %s", excerpt(str(dropped), 100))
                self._response_queue.put_nowait(msg)
            else:
                self.rpc_log.info("ignoring an answer to no open call: %s", excerpt(str(raw_msg), 100))
            return
        if not self._accepting_calls():
            self.rpc_log.info("ignoring %s: registration was rejected", excerpt(str(msg.action), 60))
            return
        if (
            not isinstance(msg.unique_id, str)
            or not isinstance(msg.action, str)
            or not isinstance(msg.payload, dict)
        ):
            await self._send(
                self._call_error(
                    msg.unique_id if isinstance(msg.unique_id, str) else str(msg.unique_id)[:36],
                    ProtocolError(
                        details={"cause": "CALL needs a string id, a string action and an object payload"}
                    ),
                )
            )
            return
        handlers = self.route_map.get(msg.action, {})
        if "_on_action" not in handlers:
            error_type = NotSupportedError if msg.action in self.protocol_actions else OcppNotImplemented
            await self._send(
                self._call_error(msg.unique_id, error_type(details={"cause": f"{msg.action} is not supported"}))
            )
            return
        if not _finite(msg.payload):
            await self._send(self._call_error(msg.unique_id, FormatViolationError(
                details={"cause": "NaN and Infinity are not JSON numbers"})))
            return
        try:
            self._prepare_call(msg.action, msg.payload)
            await self._handle_call(msg)
        except OCPPError as error:
            # the error's details can quote the payload: not for a key or a certificate
            # (and the library's cause can quote all of a 1 MB payload: an excerpt)
            shown = f"{error.code}: {excerpt(error.description, 100)}"
            if msg.action not in self.secret_actions and isinstance(error.details, dict) and error.details.get("cause"):
                shown += f" ({excerpt(str(error.details['cause']))})"
            self.rpc_log.warning("rejected %s from CSMS: %s", msg.action, shown)
            await self._send(self._call_error(msg.unique_id, error))
        except ArithmeticError:  # the library's Decimal multipleOf check, on a number like 1e300 or 10**30
            self.rpc_log.warning("rejected %s from CSMS: a number beyond Decimal precision", msg.action)
            out_of_range = TypeConstraintViolationError(details={"cause": "a number is out of range"})
            await self._send(self._call_error(msg.unique_id, out_of_range))
        except Exception:
            self.rpc_log.exception("error handling %s", msg.action)
            await self._send(
                CallError(msg.unique_id, "InternalError", "An unexpected error occurred.", {}).to_json()
            )


def _unique_id_of(raw: str) -> str | None:
    """The message id of a CALL frame that the library could not unpack, to answer it with a CALLERROR."""
    try:
        frame = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if (
        isinstance(frame, list)
        and len(frame) >= 2
        and frame[0] == Call.message_type_id
        and isinstance(frame[1], str)
    ):
        return frame[1]  # echoed as sent, even beyond 36 characters: the answer's id must equal it
    return None


def _finite(payload: Any) -> bool:
    """False if a number in the payload is NaN or +-Infinity: not JSON (RFC 8259), though Python reads them
    (1e400 becomes inf), and they crash the library's multipleOf check."""
    try:
        json.dumps(payload, allow_nan=False)
    except (ValueError, RecursionError):
        return False
    return True


def short(text: str, limit: int = 400) -> str:
    """At most 200 characters, and fewer if their JSON form on the wire (non-ASCII escaped, up to 12
    bytes a character) would exceed `limit` bytes."""
    text = text[:200]
    while len(json.dumps(text)) > limit:
        text = text[: len(text) // 2]
    return text
