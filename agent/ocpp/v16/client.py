"""OCPP 1.6J client: the connection, registration, message flow and CSMS-initiated commands.

Built on the `ocpp` library for framing, dataclasses and schema validation; this module owns the
session around it:
* connect to `<url>/<station id>` with subprotocol ocpp1.6 (verified), back off and retry forever;
* BootNotification until Accepted, honouring the interval of Pending/Rejected answers; nothing else
  is sent before that;
* transaction-related messages come only from the journal, one at a time and in order; a
  CALLERROR or a timeout on a live connection counts as an attempt (TransactionMessageAttempts,
  TransactionMessageRetryInterval x attempt), a lost connection does not;
* other messages (StatusNotification, Authorize, Heartbeat, triggered messages) go through an
  in-memory queue and may overtake the journal;
* CSMS calls are answered through the station's CsmsPort (agent.station.csms_link); this module never
  touches hardware. It is the station's CsmsLink: the station receives it and calls only that interface.

Library pitfalls handled here (see ocpp-notes 1.5-1.7): NotImplemented/NotSupported are swapped by
the library and FormatViolation is spelt FormationViolation in OCPP-J 1.6, so errors are mapped
here; `call()` inside an @on handler would deadlock, so follow-up calls are queued; a dropped
connection does not wake a pending `call()`, so the session's tasks are cancelled together.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

import websockets
from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.exceptions import (
    OCPPError,
    SecurityError,
)
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _LibChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from agent.config import AgentConfig
from agent.core.authorization import TokenInfo, valid_id_token
from agent.core.controller import ConnectorStatus, Fault
from agent.logs import StationLogs
from agent.ocpp.rpc import GuardedRouting, short
from agent.ocpp.security import TlsAwareConnection, redact_frame, redact_text
from agent.ocpp.v16 import transactions as v16_transactions
from agent.ocpp.v16.firmware import FirmwareHandlers
from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.ocpp.v16.reservation import ReservationHandlers
from agent.ocpp.v16.security import SecurityHandlers
from agent.ocpp.v16.settings import V16Settings
from agent.ocpp.v16.smart_charging import SmartChargingHandlers, tolerate_limits
from agent.ocpp.v16.transactions import TRANSACTION_ACTIONS
from agent.ocpp.v16.vocabulary import (
    CONTROL_LOST_ERROR_CODES,
    connector_status,
    error_codes,
    local_list_entries,
    token_info,
)
from agent.station.csms_link import CsmsPort, LocalListEntry, StatusReport
from agent.station.journal import Journal, JournalError, JournalValueError, QueuedMessage

log = logging.getLogger("evse.ocpp")
frame_log = logging.getLogger("evse.ocpp.frames")
# the library logs every frame at INFO; _LoggedConnection already logs them once, at DEBUG
library_log = logging.getLogger("evse.ocpp.library")
library_log.setLevel(logging.WARNING)


class _RedactingFilter(logging.Filter):
    """The library logs a request whole when its handler fails: no AuthorizationKey or certificate in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


library_log.addFilter(_RedactingFilter())

SUBPROTOCOL = "ocpp1.6"
CERTIFICATE_RENEWAL_CHECK_S = 3600  # how often the charge point certificate's expiry is looked at
# a card holder waits at most this long for Authorize.conf; then the offline rules decide (a CSMS that is
# slow or stuck, or a call ahead of it that waits for its MessageTimeout)
AUTHORIZE_DEADLINE_S = 5.0
# non-transaction messages waiting to be sent (statuses, triggered messages, follow-ups); beyond it the
# oldest is dropped: they describe a present state that a later message describes again
MAX_PENDING_OUTGOING = 200
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the transactionIds the station accepts (see _check_usable)



@dataclasses.dataclass
class _Outgoing:
    payload: Any
    done: asyncio.Future | None = None
    key: tuple | None = None  # what it reports on (see _report_key): one triggered message per key waits


def _report_key(payload: Any) -> tuple | None:
    """What a message reports on, so that a trigger for something already waiting to be sent adds nothing:
    a connector's status or meter values, the heartbeat, the boot, a firmware/diagnostics/log status."""
    name = type(payload).__name__
    if isinstance(payload, call.StatusNotification | call.MeterValues):
        return (name, payload.connector_id)
    if isinstance(payload, call.Heartbeat | call.BootNotification | call.DiagnosticsStatusNotification
                  | call.FirmwareStatusNotification | call.LogStatusNotification
                  | call.SignedFirmwareStatusNotification):
        return (name,)
    return None


class _OutgoingQueue:
    """The non-transaction messages waiting for the connection. User-facing calls (Authorize) go first;
    a triggered message whose subject already waits is not queued again (a CSMS repeating TriggerMessage
    cannot grow the queue); at MAX_PENDING_OUTGOING the oldest other message is dropped."""

    def __init__(self, limit: int = MAX_PENDING_OUTGOING):
        self._limit = limit
        self._urgent: deque[_Outgoing] = deque()
        self._normal: deque[_Outgoing] = deque()
        self._waiting_keys: Counter[tuple] = Counter()
        self._available = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._urgent) + len(self._normal)

    def empty(self) -> bool:
        return not self._urgent and not self._normal

    def put(self, item: _Outgoing, *, urgent: bool = False, triggered: bool = False) -> bool:
        """Queue `item`; False if it was coalesced (triggered, and its subject already waits)."""
        item.key = _report_key(item.payload)
        if triggered and item.done is None and item.key is not None and self._waiting_keys[item.key]:
            return False
        if urgent:
            self._urgent.append(item)
        else:
            if len(self._normal) >= self._limit:
                self._drop(self._normal.popleft())
            self._normal.append(item)
        if item.key is not None:
            self._waiting_keys[item.key] += 1
        self._available.set()
        return True

    def _drop(self, item: _Outgoing) -> None:
        self._forget(item)
        self.dropped += 1
        if item.done is not None and not item.done.done():
            item.done.set_exception(ConnectionError("too many messages waiting to be sent"))
        log.warning("%d messages wait to be sent: dropped a %s", self._limit, type(item.payload).__name__)

    def _forget(self, item: _Outgoing) -> None:
        if item.key is not None:
            self._waiting_keys[item.key] -= 1
            if self._waiting_keys[item.key] <= 0:
                del self._waiting_keys[item.key]

    put_nowait = put

    def get_nowait(self) -> _Outgoing:
        lane = self._urgent or self._normal
        if not lane:
            raise asyncio.QueueEmpty
        item = lane.popleft()
        self._forget(item)
        return item

    async def get(self) -> _Outgoing:
        while self.empty():
            self._available.clear()
            await self._available.wait()
        return self.get_nowait()

    def discard(self, item: _Outgoing) -> None:
        """Take `item` out if it still waits (an Authorize whose card holder no longer waits)."""
        for lane in (self._urgent, self._normal):
            if item in lane:
                lane.remove(item)
                self._forget(item)
                return


class _UnusableAnswer(Exception):
    """A CALLRESULT that passed the schema but holds a value the station cannot store or use."""


class _ReRegister(Exception):
    """Ends the session so that the next connection starts with BootNotification."""


class _LoggedConnection:
    """Logs every frame at debug (one line each) and remembers when traffic last flowed."""

    def __init__(self, ws, on_traffic: Callable[[], None], frame_log: logging.Logger | logging.LoggerAdapter):
        self._ws = ws
        self.frame_log = frame_log
        self._on_traffic = on_traffic

    async def send(self, message: str) -> None:
        if self.frame_log.isEnabledFor(logging.DEBUG):
            self.frame_log.debug("> %s", redact_frame(message))  # no AuthorizationKey, no certificate
        await self._ws.send(message)
        self._on_traffic()

    async def recv(self) -> str:
        message = await self._ws.recv()
        if self.frame_log.isEnabledFor(logging.DEBUG):
            self.frame_log.debug("< %s", redact_frame(message))
        return message


class OcppClient:
    open_settings = V16Settings.open  # the station's settings provider under 1.6 (agent.station.settings)

    def __init__(self, config: AgentConfig, station: CsmsPort, journal: Journal, *,
                 logs: StationLogs | None = None, clock: Callable[[], float] = time.monotonic):
        # the station's loggers (tagged with its id, its secrets redacted: agent.logs.StationLogs)
        self.logs = logs if logs is not None else StationLogs(config.station.id)
        self.log = self.logs.logger(log.name)
        self.security_log = self.logs.logger("evse.security.ocpp")
        self._clock = clock  # monotonic: when traffic last flowed (heartbeat)
        self._config = config
        self._station = station
        self._journal = journal
        self.connected = False
        self.registration: str | None = None  # last BootNotification answer
        self._accepted_once = False  # Accepted since this process started
        self._outgoing = _OutgoingQueue()
        self.authorize_deadline_s = AUTHORIZE_DEADLINE_S
        self._heartbeat_changed = asyncio.Event()  # HeartbeatInterval changed: the heartbeat task wakes
        self._security_event_timeouts: dict[str, int] = {}  # event payload -> timeouts (in memory only)
        self._refused_security_events = False  # logged once per connection
        self._journal_wakeup = asyncio.Event()
        self._last_traffic = self._clock()
        self._cp: _ChargePoint | None = None
        self._ws = None
        self._stopping = False
        self.dropped_messages = 0  # transaction messages given up after TransactionMessageAttempts
        self.last_error: str | None = None
        self._endpoint = config.ocpp_endpoint  # of the last connection attempt (the security profile's)
        self._reconnect_now = False  # reconnect() closed the connection: connect again without back-off
        self._closing: asyncio.Task | None = None
        self._registered = False  # the current connection got past BootNotification
        # open while this connection may send more than BootNotification: registration Pending (only what
        # the CSMS triggers can be queued then) or Accepted (OCPP 1.6 §4.2)
        self._may_send = asyncio.Event()
        self._boot_now = asyncio.Event()  # TriggerMessage(BootNotification) while Pending: boot again now

    # ---- API for the station ------------------------------------------------------------------

    def apply_config(self, config: AgentConfig) -> None:
        """SIGHUP: a reloaded config; only the reconnect back-off differs (agent.app.reload_config)."""
        self._config = config

    @property
    def accepted(self) -> bool:
        return self.connected and self.registration == "Accepted"

    def journal_changed(self) -> None:
        self._journal_wakeup.set()

    def send_status(
        self,
        connector_id: int,
        status: ConnectorStatus,
        fault: Fault | None = None,
        info: str | None = None,
        *,
        control_lost: bool = False,
    ) -> None:
        """StatusNotifications are not queued while offline: the current ones go out after reconnect.
        `control_lost`: the agent lost its control process (reported with its own error code)."""
        if self.accepted:
            self._outgoing.put_nowait(
                _Outgoing(_status_payload(connector_id, status, fault, info,
                                          timestamp=ocpp_timestamp(self._station.wall_clock()),
                                          codes=CONTROL_LOST_ERROR_CODES if control_lost else None))
            )

    async def authorize(self, id_token: str) -> TokenInfo | None:
        """What the CSMS says about the id token (Authorize), or None when it cannot be asked (offline, error,
        no answer within authorize_deadline_s): then the offline rules decide. An id that cannot be sent at
        all (not an IdToken: more than 20 characters, not printable ASCII) is refused here, never None:
        it must not reach the offline rules (AllowOfflineTxForUnknownId)."""
        if not valid_id_token(id_token):
            self.log.warning("card id %.40r cannot be sent to the CSMS (not an OCPP IdToken): refused", id_token)
            return token_info({"status": "Invalid"})
        if not self.accepted:
            return None
        answered = asyncio.get_running_loop().create_future()
        item = _Outgoing(call.Authorize(id_tag=id_token), answered)
        self._outgoing.put(item, urgent=True)  # a card holder waits: before statuses and triggered messages
        try:
            async with asyncio.timeout(self.authorize_deadline_s):
                result = await asyncio.shield(answered)
        except TimeoutError:
            self._outgoing.discard(item)  # not sent yet: nobody waits for its answer any more
            if not answered.done():
                answered.cancel()
            self.log.warning("Authorize: no answer within %ss: the offline rules decide", self.authorize_deadline_s)
            return None
        except (OCPPError, ConnectionError, websockets.ConnectionClosed):
            return None
        return token_info(snake_to_camel_case(result.id_tag_info)) if result else None

    async def run(self) -> None:
        """Connect, serve, reconnect with back-off; forever, until stop()."""
        failures = 0
        while not self._stopping:
            self._registered = False  # set by _work once this connection is past BootNotification
            try:
                async with self._connect() as ws:
                    if ws.subprotocol != SUBPROTOCOL:
                        raise ConnectionError(
                            f"CSMS did not agree to subprotocol {SUBPROTOCOL} (answered {ws.subprotocol!r})"
                        )
                    self.last_error = None
                    self._station.security.connection_succeeded(ws)
                    await self._serve(ws)
                    if not self._registered and not self._stopping:
                        self.last_error = (f"CSMS closed the connection before registration "
                                           f"(code {ws.close_code}, reason {ws.close_reason!r})")
                        self.log.warning("OCPP connection to %s: %s", self._endpoint, self.last_error)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every network or protocol failure leads to a retry, never to exit
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.log.warning("OCPP connection to %s failed: %s", self._endpoint, self.last_error)
                self._station.security.connection_failed(exc)  # security event, profile fallback
            finally:
                self.connected = False
                self._ws = None
                self._cp = None
            if self._stopping:
                break
            if self._reconnect_now:  # new credentials or profile: no reason to wait
                self._reconnect_now = False
                continue
            # only a connection that got the station registered resets the back-off: a CSMS that
            # accepts the WebSocket and hangs up at once is not hammered at reconnect_min_s
            failures = 1 if self._registered else failures + 1
            await asyncio.sleep(self._backoff(failures))

    def reconnect(self, reason: str) -> None:
        """Close the connection and connect again at once with the current security settings (new
        AuthorizationKey, SecurityProfile or certificate). Call it after the CSMS's command was answered."""
        if self._ws is None or self._stopping:
            return
        self.log.info("reconnecting to apply %s", reason)
        self._reconnect_now = True
        self._closing = asyncio.ensure_future(self._ws.close(code=1000, reason="reconnecting"))

    async def stop(self) -> None:
        self._stopping = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()

    # ---- connection -----------------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        base = min(self._config.ocpp.reconnect_max_s, self._config.ocpp.reconnect_min_s * 2 ** (failures - 1))
        return base * random.uniform(0.75, 1.0)  # jitter keeps a fleet from reconnecting in lockstep

    def _connect(self):
        # URL, Basic auth and TLS of the current security profile (agent.ocpp.security); raises
        # SecurityConfigError when a prerequisite is missing, which counts as a failed attempt
        settings = self._station.security.connection_settings()
        self._endpoint = settings.url
        ping = self._station.configuration.get_int("WebSocketPingInterval")
        return websockets.connect(
            settings.url,
            subprotocols=[SUBPROTOCOL],
            additional_headers=settings.headers,
            ssl=settings.ssl,
            create_connection=TlsAwareConnection,  # TLS alerts reported as such
            ping_interval=ping or None,
            ping_timeout=ping or None,
            # after a ping timeout (a half-open link) no close handshake can come back: hang up after 2 s,
            # not websockets' default 10 s, so the reconnect starts right away; a live CSMS answers in ms
            close_timeout=2,
            proxy=None,
            compression=None,
            open_timeout=20,
            max_size=2**20,
            # frames received but not yet routed: the CSMS's calls are handled one at a time anyway; 16 (the
            # default) frames of up to 1 MiB each is memory a flooding CSMS could keep the agent holding
            max_queue=4,
        )

    async def _serve(self, ws) -> None:
        self._ws = ws
        cp = _ChargePoint(
            self._config.station.id,
            _LoggedConnection(ws, self._touch, self.logs.logger(frame_log.name)),
            client=self,
            response_timeout=self._station.configuration.get_int("MessageTimeout"),
        )
        self._cp = cp
        self.connected = True
        self.log.info("connected to %s (security profile %d)", self._endpoint, self._station.security.profile)
        reader = asyncio.create_task(cp.start(), name="ocpp-reader")
        worker = asyncio.create_task(self._work(cp), name="ocpp-worker")
        try:
            done, _ = await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, worker):
                task.cancel()  # aborts an in-flight call(): its journal row stays queued
            await asyncio.gather(reader, worker, return_exceptions=True)
            self.connected = False
            self._fail_pending_outgoing()
        for task in done:
            exc = task.exception()
            if isinstance(exc, BaseExceptionGroup):
                if exc.subgroup(_ReRegister) is not None:
                    return
                exc = exc.exceptions[0]
            if exc is not None and not isinstance(exc, websockets.ConnectionClosed):
                raise exc
        self.log.warning("OCPP connection closed")

    def _touch(self) -> None:
        self._last_traffic = self._clock()

    def _fail_pending_outgoing(self) -> None:
        while not self._outgoing.empty():
            item = self._outgoing.get_nowait()
            if item.done and not item.done.done():
                item.done.set_exception(ConnectionError("connection lost"))

    # ---- the session ----------------------------------------------------------------------------

    async def _work(self, cp: _ChargePoint) -> None:
        self._fail_pending_outgoing()  # queued while there was no connection: the statuses below replace it
        async with asyncio.TaskGroup() as group:  # one failing sender cancels the others
            # serves what the CSMS triggers while Pending; everything else only once Accepted
            group.create_task(self._send_outgoing(cp))
            if not self._accepted_once or self.registration != "Accepted":
                self._may_send.clear()
                await self._register(cp)
            self._may_send.set()
            self._registered = True
            # what the CSMS sees first: the current status of the station and every connector
            for status in self._station.statuses():
                timestamp = ocpp_timestamp(self._station.wall_clock())
                self._outgoing.put_nowait(_Outgoing(_report_payload(status, timestamp)))
            self._station.firmware.connected()  # the latest firmware/diagnostics status, if the CSMS may lack it
            self._journal_wakeup.set()
            group.create_task(self._send_journal(cp))
            group.create_task(self._heartbeat(cp))
            group.create_task(self._renew_certificate(cp))

    async def _renew_certificate(self, cp: _ChargePoint) -> None:
        """Ask the CSMS to sign a new charge point certificate before the installed one expires (the
        whitepaper's A02 renewal, initiated by the station); checked after each registration and hourly."""
        security = self._station.security
        while True:
            try:
                reason = security.certificate_renewal_due()
                if reason is not None:
                    security.certificate_renewal_requested()
                    self.log.warning("%s: asking the CSMS to sign a new one (SignCertificate)", reason)
                    cp.send_sign_certificate()
            except JournalError as exc:
                self._station.journal_failed(exc)
            await asyncio.sleep(CERTIFICATE_RENEWAL_CHECK_S)

    async def _register(self, cp: _ChargePoint) -> None:
        cfg = self._config.station
        while True:
            boot = call.BootNotification(
                charge_point_vendor=cfg.vendor,
                charge_point_model=cfg.model,
                charge_point_serial_number=cfg.serial or None,
                # deprecated in 1.6, but many central systems read only this one
                charge_box_serial_number=cfg.serial or None,
                firmware_version=cfg.firmware_version or None,
            )
            self._boot_now.clear()  # a trigger from now on asks for the next BootNotification
            try:
                result = await cp.call(boot, suppress=False)
            except (TimeoutError, OCPPError) as exc:
                self.log.warning("BootNotification failed: %s; retrying", exc)
                await asyncio.sleep(self._config.ocpp.reconnect_min_s * 10)
                continue
            self.registration = result.status
            interval = max(int(result.interval), 1) if result.interval else 60
            self.log.info("BootNotification: %s (interval %ss)", result.status, interval)
            if result.status == "Accepted":
                self._accepted_once = True
                self._station.configuration.set_internal("HeartbeatInterval", str(int(result.interval)))
                return
            # Pending: answers the CSMS and sends what it triggers meanwhile; Rejected: silent
            if result.status == "Pending":
                self._may_send.set()
            else:
                self._may_send.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._boot_now.wait()
                self.log.info("BootNotification triggered by the CSMS")
            self._may_send.clear()

    async def _send_outgoing(self, cp: _ChargePoint) -> None:
        while True:
            item = await self._outgoing.get()
            if item.done is not None and item.done.done():
                continue  # nobody waits for it any more (an Authorize past its deadline)
            if isinstance(item.payload, call.BootNotification):  # triggered while Pending
                self._boot_now.set()  # the registration loop sends it, and acts on its answer
                if item.done and not item.done.done():
                    item.done.cancel()
                continue
            try:
                await self._may_send.wait()
                result = await cp.call(item.payload, suppress=False)
            except SecurityError as exc:
                if item.done and not item.done.done():
                    item.done.set_exception(exc)
                self._registration_lost(exc)
            except (TimeoutError, OCPPError) as exc:
                self.log.warning("%s failed: %s", type(item.payload).__name__, exc)
                if item.done and not item.done.done():
                    item.done.set_exception(exc)
                continue
            except BaseException as exc:
                if item.done and not item.done.done():
                    item.done.set_exception(ConnectionError("connection lost"))
                raise exc
            if item.done and not item.done.done():
                item.done.set_result(result)

    async def _send_journal(self, cp: _ChargePoint) -> None:
        while True:
            try:
                await self._send_next_journal_message(cp)
            except JournalError as exc:
                self._station.journal_failed(exc)
                await asyncio.sleep(60)  # the fault is raised; retry rarely, the log says what is wrong

    async def _send_next_journal_message(self, cp: _ChargePoint) -> None:
        message = self._journal.next_message()
        if message is None:
            self._journal_wakeup.clear()
            await self._journal_wakeup.wait()
            return
        action, payload = v16_transactions.render(message)  # the 1.6 words of the journal's neutral event
        if action not in _JOURNAL_CALLS:  # only from a journal of another version: nothing can send it
            self.log.error("queued %s (seq %d) is no message this station sends: dropped", action, message.seq)
            self._journal.drop_message(message)
            return
        if action not in TRANSACTION_ACTIONS:
            await self._send_journaled_event(cp, message, action, payload)
            return
        try:
            result = await cp.call(_JOURNAL_CALLS[action](**camel_to_snake_case(payload)), suppress=False)
        except SecurityError as exc:
            self._registration_lost(exc)  # not the message's fault: no attempt is counted
        except (TimeoutError, OCPPError) as exc:
            await self._failed_attempt(message, action, exc)
            return
        response = snake_to_camel_case(dataclasses.asdict(result))
        try:
            _check_usable(action, response)
            delivery = v16_transactions.read_answer(action, payload, response)
            self._journal.message_delivered(message, delivery)
        except (_UnusableAnswer, OverflowError, JournalValueError) as exc:
            # an answer the station cannot keep is no answer: an attempt, as for a CALLERROR; after
            # TransactionMessageAttempts the message is dropped and the rest of the transaction is
            # sent with transactionId -1 (errata 3.18)
            self.log.error("%s (seq %d): unusable answer from the CSMS: %s", action, message.seq, exc)
            await self._failed_attempt(message, action, exc)
            return
        try:
            self._station.transaction_message_delivered(message, delivery)
        except JournalError:
            raise
        except Exception:  # delivered and recorded: a station-side failure must not end the session
            self.log.exception("%s (seq %d): applying the CSMS's answer failed", action, message.seq)
        await asyncio.sleep(0)  # let heartbeats and commands through during a long replay

    async def _send_journaled_event(self, cp: _ChargePoint, message: QueuedMessage, action: str,
                                    payload: dict) -> None:
        """A journaled message that is not transaction-related (SecurityEventNotification): sent once per
        turn, and it never holds up the transaction messages queued behind it. A CALLERROR is final (a
        CSMS without the security extension answers NotImplemented, NotSupported or InternalError, and
        would do so forever); after a timeout it goes behind the messages queued meanwhile, and is given
        up after TransactionMessageAttempts timeouts."""
        try:
            await cp.call(_JOURNAL_CALLS[action](**camel_to_snake_case(payload)), suppress=False)
        except SecurityError as exc:
            self._registration_lost(exc)
        except OCPPError as exc:
            level = logging.INFO if self._refused_security_events else logging.WARNING
            self._refused_security_events = True  # said once per connection; each event is dropped
            self.log.log(level, "CSMS refused %s (%s: %s): dropped, not sent again", action, exc.code,
                         short(str(exc.description or ""), 100))
            self._journal.drop_message(message)
            return
        except TimeoutError as exc:
            key = json.dumps(payload, sort_keys=True)  # the same event after it was queued again
            timeouts = self._security_event_timeouts.pop(key, 0) + 1
            if timeouts >= self._station.configuration.get_int("TransactionMessageAttempts"):
                self.log.error("%s (seq %d) dropped after %d timeouts", action, message.seq, timeouts)
                self._journal.drop_message(message)
                return
            self.log.warning("%s (seq %d) not answered (%s): sent again after the queued messages",
                             action, message.seq, exc)
            self._journal.enqueue(action, payload, message.protocol)  # first the copy: a crash loses nothing
            self._journal.drop_message(message)
            if len(self._security_event_timeouts) < MAX_PENDING_OUTGOING:
                self._security_event_timeouts[key] = timeouts
            return
        self._security_event_timeouts.pop(json.dumps(payload, sort_keys=True), None)
        self._journal.message_delivered(message)

    def _registration_lost(self, exc: BaseException) -> None:
        """The CSMS no longer knows us as registered (errata 3.8: it answers SecurityError before
        Accepted, e.g. after losing its state): boot again on a fresh connection."""
        self.log.warning("CSMS answered SecurityError (%s): registering again with BootNotification", exc)
        self.registration = None
        raise _ReRegister()

    async def _failed_attempt(self, message: QueuedMessage, action: str, exc: BaseException) -> None:
        cfg = self._station.configuration
        attempts = self._journal.message_failed(message)
        if attempts >= cfg.get_int("TransactionMessageAttempts"):
            self._journal.drop_message(message)
            self.dropped_messages += 1
            self.log.error(
                "dropped %s (seq %d) after %d failed attempts: %s", action, message.seq, attempts, exc
            )
            return
        delay = cfg.get_int("TransactionMessageRetryInterval") * attempts
        self.log.warning(
            "%s (seq %d) attempt %d failed: %s; retrying in %ss",
            action,
            message.seq,
            attempts,
            exc,
            delay,
        )
        await asyncio.sleep(delay)

    async def _heartbeat(self, cp: _ChargePoint) -> None:
        while True:
            interval = self._station.configuration.get_int("HeartbeatInterval") or 86400
            idle = self._clock() - self._last_traffic
            if idle < interval:
                # woken at once when the CSMS changes HeartbeatInterval: the new interval applies now
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval - idle):
                        await self._heartbeat_changed.wait()
                self._heartbeat_changed.clear()
                continue
            self._outgoing.put(_Outgoing(call.Heartbeat()), triggered=True)  # one waiting heartbeat is enough
            self._touch()

    def heartbeat_interval_changed(self) -> None:
        self._heartbeat_changed.set()

    def send_meter_values(self, connector_id: int, meter_value: list[dict]) -> None:
        """MeterValues outside a transaction: not transaction-related, so not queued while offline."""
        if self.accepted:
            self._outgoing.put_nowait(_Outgoing(call.MeterValues(connector_id=connector_id, meter_value=meter_value)))

    def queue_follow_up(self, payload: Any, done: asyncio.Future | None = None, *, triggered: bool = False) -> None:
        """A message a CSMS command asked for (TriggerMessage, status notifications); sent after the answer.
        `done`, if given, gets the CSMS's answer or the exception (CALLERROR, timeout, connection lost).
        `triggered`: asked for by (Extended)TriggerMessage; not queued again while one on the same subject
        (the connector's status, the heartbeat...) still waits, so a CSMS repeating triggers adds nothing."""
        if not self._outgoing.put(_Outgoing(payload, done), triggered=triggered):
            self.log.debug("triggered %s: one already waits to be sent", type(payload).__name__)


def _report_payload(report: StatusReport, timestamp: str) -> call.StatusNotification:
    return _status_payload(report.connector_id, report.status, report.fault, report.info, timestamp=timestamp,
                           codes=CONTROL_LOST_ERROR_CODES if report.control_lost else None)


def _status_payload(
    connector_id: int,
    status: ConnectorStatus,
    fault: Fault | None = None,
    info: str | None = None,
    *,
    timestamp: str,
    codes: tuple[str, str | None] | None = None,
) -> call.StatusNotification:
    """`codes`: (errorCode, vendorErrorCode) instead of those of `fault`."""
    error_code, vendor_error_code = codes or error_codes(fault)
    return call.StatusNotification(
        connector_id=connector_id,
        error_code=error_code,
        status=connector_status(status),
        timestamp=timestamp,
        info=info,
        vendor_error_code=vendor_error_code,
    )


# Messages that must not be lost offline go through the journal: the transaction-related ones (§3.7)
# and the security events the whitepaper requires to be delivered after a reconnect.
_JOURNAL_CALLS = {
    "StartTransaction": call.StartTransaction,
    "StopTransaction": call.StopTransaction,
    "MeterValues": call.MeterValues,
    "SecurityEventNotification": call.SecurityEventNotification,
}


def _check_usable(action: str, response: dict) -> None:
    """Raise _UnusableAnswer for an answer the schema allows but the station cannot keep: a transactionId
    beyond signed 64 bits (the schema's "integer" has no bound; the journal keeps the id as text, but the
    station has always refused what no 1.6 CSMS can mean)."""
    if action == "StartTransaction":
        transaction_id = response.get("transactionId")
        if not isinstance(transaction_id, int) or not INT64_MIN <= transaction_id <= INT64_MAX:
            raise _UnusableAnswer(f"transactionId {short(str(transaction_id), 60)} is outside signed 64 bits")


# CSMS calls whose payload may hold a secret (AuthorizationKey) or a certificate: never quoted in a log


class _ChargePoint(SecurityHandlers, FirmwareHandlers, SmartChargingHandlers, ReservationHandlers, GuardedRouting,
                  _LibChargePoint):
    """Routing and the Core/LocalAuthList/RemoteTrigger handlers; security, firmware, smart charging and
    reservation handlers come from their mixins."""

    def __init__(self, station_id: str, connection, *, client: OcppClient, response_timeout: int):
        # the library's own lines, as the station's (its id, its secrets); library_log's filter still applies
        super().__init__(station_id, connection, response_timeout=response_timeout,
                         logger=client.logs.logger(library_log.name))
        self._client = client
        self._station = client._station
        self._follow_ups: set[asyncio.Task] = set()

    async def start(self) -> None:
        while True:
            message = await self._connection.recv()
            await self.route_message(message)
            # frames already buffered come without a pause: yield, so a flood cannot starve the agent's
            # other tasks (the heartbeat to the control process, the journal workers, the CLI)
            await asyncio.sleep(0)

    protocol_actions = frozenset(a.value for a in Action)
    secret_actions = frozenset({"ChangeConfiguration", "InstallCertificate", "CertificateSigned", "DeleteCertificate"})
    # OCPP-J 1.6 spellings of the codes the library names differently (errata §5.2: "will not be fixed")
    error_code_spellings = {
        "FormatViolation": "FormationViolation",
        "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    }

    @property
    def rpc_log(self):
        return self._client.log  # tagged with the station's id, its secrets redacted

    def _accepting_calls(self) -> bool:
        return self._client.registration != "Rejected"  # OCPP 1.6 §4.2: a rejected station answers nothing

    def _prepare_call(self, action: str, payload: dict) -> None:
        tolerate_limits(action, payload)  # 2-decimal charging limits, before schema validation

    def _follow_up(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._follow_ups.add(task)  # keep a reference: the library's @after tasks can be collected
        task.add_done_callback(self._follow_ups.discard)

    def _known_connector(self, connector_id: int | None) -> bool:
        return connector_id is not None and connector_id in self._station.connector_ids

    # ---- Core profile handlers ------------------------------------------------------------------

    @on(Action.remote_start_transaction)
    def on_remote_start(self, id_tag: str, connector_id: int | None = None, charging_profile=None, **_):
        if self._client.registration != "Accepted" or connector_id == 0:
            return call_result.RemoteStartTransaction(status="Rejected")
        if connector_id is not None and not self._known_connector(connector_id):
            return call_result.RemoteStartTransaction(status="Rejected")
        profile = snake_to_camel_case(charging_profile) if charging_profile is not None else None  # TC_059/060
        accepted = self._station.remote_start(connector_id, id_tag, profile)
        return call_result.RemoteStartTransaction(status="Accepted" if accepted else "Rejected")

    @on(Action.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int, **_):
        # an id beyond SQLite's 64-bit integers cannot be one of ours (and the journal cannot look it up)
        accepted = (
            self._client.registration == "Accepted"
            and -(2**63) <= transaction_id < 2**63
            and self._station.remote_stop(transaction_id)
        )
        return call_result.RemoteStopTransaction(status="Accepted" if accepted else "Rejected")

    @on(Action.reset)
    def on_reset(self, type: str, **_):  # noqa: A002 - the OCPP field is called "type"
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    def after_reset(self, type: str, **_):  # noqa: A002
        self._station.reset(type)

    @on(Action.change_availability)
    def on_change_availability(self, connector_id: int, type: str, **_):  # noqa: A002
        if connector_id != 0 and not self._known_connector(connector_id):
            return call_result.ChangeAvailability(status="Rejected")
        status = self._station.change_availability(connector_id, type == "Operative")
        return call_result.ChangeAvailability(status=status)

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **_):
        entries, unknown = self._station.configuration.get_configuration(key)
        return call_result.GetConfiguration(configuration_key=entries, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_):
        status = self._station.configuration.change(key, value)
        if status == "Accepted" and key.casefold() == "heartbeatinterval":
            self._client.heartbeat_interval_changed()  # not after the old interval's sleep
        return call_result.ChangeConfiguration(status=status)

    @on(Action.unlock_connector)
    async def on_unlock_connector(self, connector_id: int, **_):
        if not self._known_connector(connector_id):
            return call_result.UnlockConnector(status="NotSupported")  # errata 3.85
        # waits (at most the lock deadline, about 1 s) for the lock's feedback to read open
        return call_result.UnlockConnector(status=await self._station.unlock_connector(connector_id))

    @on(Action.clear_cache)
    def on_clear_cache(self, **_):
        return call_result.ClearCache(status=self._station.clear_cache())

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_):
        return call_result.GetLocalListVersion(list_version=self._station.local_list_version())

    @on(Action.send_local_list)
    def on_send_local_list(self, list_version: int, update_type: str, local_authorization_list=None, **_):
        entries = snake_to_camel_case(local_authorization_list or [])  # incoming nested data is snake_case
        status = self._station.send_local_list(list_version, update_type, [
            LocalListEntry(token, info) for token, info in local_list_entries(entries)])
        return call_result.SendLocalList(status=status)

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_):
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.trigger_message)
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **_):
        if connector_id is not None and not self._known_connector(connector_id):
            return call_result.TriggerMessage(status="Rejected")
        if requested_message == "BootNotification" and self._client.registration == "Accepted":
            return call_result.TriggerMessage(status="Rejected")  # errata 3.35
        if requested_message not in (
            "BootNotification",
            "Heartbeat",
            "StatusNotification",
            "MeterValues",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
        ):
            return call_result.TriggerMessage(status="NotImplemented")
        return call_result.TriggerMessage(status="Accepted")

    @after(Action.trigger_message)
    def after_trigger_message(self, requested_message: str, connector_id: int | None = None, **_):
        if requested_message == "BootNotification" and self._client.registration == "Accepted":
            return
        queue = functools.partial(self._client.queue_follow_up, triggered=True)  # coalesced: see _OutgoingQueue
        if requested_message == "Heartbeat":
            queue(call.Heartbeat())
        elif requested_message == "BootNotification":
            cfg = self._client._config.station
            queue(call.BootNotification(charge_point_vendor=cfg.vendor, charge_point_model=cfg.model))
        elif requested_message == "StatusNotification":
            for status in self._station.statuses():
                if connector_id is None or status.connector_id == connector_id:
                    queue(_report_payload(status, ocpp_timestamp(self._station.wall_clock())))
        elif requested_message == "MeterValues":
            for cid in self._station.connector_ids:
                if connector_id in (None, cid):
                    values = self._station.meter_values_now(cid)
                    if values:
                        queue(call.MeterValues(connector_id=cid, meter_value=values))
        elif requested_message == "DiagnosticsStatusNotification":
            queue(self._station.firmware.diagnostics_status_notification())
        elif requested_message == "FirmwareStatusNotification":
            queue(self._station.firmware.firmware_status_notification())
