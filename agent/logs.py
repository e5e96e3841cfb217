"""The agent's logging: one line per record on stdout, levels journald understands, no secrets.

* On a terminal (or a file): `time level logger: message`.
* Under systemd, when stdout is the journal stream ($JOURNAL_STREAM names stdout's device and inode), no
  timestamp (journald adds its own) and an sd-daemon(3) `<N>` syslog priority prefix on every line, so
  `journalctl -u evse-agent -p warning` shows warnings and worse: <2> critical, <3> error, <4> warning,
  <6> info, <7> debug.
* `RedactSecrets`, a filter on the agent's handler, removes what must never reach a log, whoever logs it
  (the agent, a device library, the OCPP library, a traceback): HTTP Basic credentials
  (`Authorization: Basic ...`), PEM blocks (certificates, CSRs, keys), the value of an AuthorizationKey in
  an OCPP frame or a library's repr of one, and every secret value registered with `add_secret()` (the
  [ocpp] password and its Basic-auth token). The OCPP frame log already hides these itself
  (agent.ocpp.security.redact_frame); this is the net under everything else.
* `StationLogs`, one per station: its loggers (`StationLogger`, a LoggerAdapter) give every record the
  attribute `station_id` and redact it with that station's own secrets before any handler sees it, so
  many stations can share one process (agent.fleet): no station registers its secrets in a process-wide
  filter, and none installs a handler. In a fleet (`tag_lines`) every message also starts with `[<id>] `.
* `FloodGuard`, after it, keeps a hostile peer from filling the disk through the log: every message is cut
  to MAX_MESSAGE_CHARS (tracebacks to MAX_TRACEBACK_CHARS) with the full length noted, and an info,
  warning or error that repeats (same logger, level and format string) is written at most RATE_LIMIT_COUNT times per
  RATE_LIMIT_WINDOW_S; then one "suppressed K similar messages" line says how many were left out.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import time
import types
from collections.abc import Callable
from typing import TextIO

TERMINAL_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words; such a password is no secret anyway
REDACTED = "[redacted]"
MAX_MESSAGE_CHARS = 2000  # one log line; a frame excerpt (excerpt()) is far shorter
MAX_TRACEBACK_CHARS = 8000
RATE_LIMIT_COUNT = 20  # of one kind of message per window, then a summary
RATE_LIMIT_WINDOW_S = 60.0
_MAX_TRACKED_KINDS = 1000  # a bound on the guard's own memory

# credentials after "Authorization:" (any scheme), and a bare "Basic <base64 of user:password>"
_AUTHORIZATION = re.compile(r"""(?i)(authorization['"]?\s*[:=]\s*['"]?\s*[a-z]+\s+)[^\s'",}]+""")
_BASIC_TOKEN = re.compile(r"\b(Basic\s+)([A-Za-z0-9+/]{6,}={0,2})")
# a whole PEM block, or one whose end was cut off (a message shortened with %.200s)
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?(?:-----END \1-----|\Z)", re.S)
# the value next to an AuthorizationKey: {"key": "AuthorizationKey", "value": "..."} in JSON (either
# order) and key='AuthorizationKey', value='...' in a Python repr
_KEY_THEN_VALUE = re.compile(
    r"""(AuthorizationKey['"]?\s*,\s*['"]?value['"]?\s*[:=]\s*)(['"])(?:(?!\2)[^\\]|\\.)*\2""")
_VALUE_THEN_KEY = re.compile(
    r"""(['"]value['"]\s*[:=]\s*)(['"])(?:(?!\2)[^\\]|\\.)*\2(?=\s*,\s*['"]key['"]\s*[:=]\s*['"]AuthorizationKey)""")


def _is_basic_token(token: str) -> bool:
    try:
        return b":" in base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except ValueError:
        return False


def syslog_priority(levelno: int) -> int:
    """sd-daemon(3) / syslog priority of a logging level."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """No timestamp; `<N>` before every line (a traceback's lines keep the record's priority)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (and traceback) with secrets replaced by [redacted]."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add_secret(self, value: str | None) -> None:
        if value and len(value) >= MIN_SECRET_LENGTH:
            self._secrets.add(value)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _PEM.sub(lambda m: f"[{m.group(1).lower()} redacted]", text)
        text = _AUTHORIZATION.sub(lambda m: m.group(1) + REDACTED, text)
        text = _BASIC_TOKEN.sub(lambda m: m.group(1) + REDACTED if _is_basic_token(m.group(2)) else m.group(0), text)
        if "AuthorizationKey" in text:
            text = _KEY_THEN_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED + m.group(2), text)
            text = _VALUE_THEN_KEY.sub(lambda m: m.group(1) + m.group(2) + REDACTED + m.group(2), text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it (handleError)
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


REDACTOR = RedactSecrets()


def excerpt(text: object, limit: int = 200) -> str:
    """At most `limit` characters of `text` (a frame from the network), with its length if it was cut:
    a rejected 1 MB frame is logged as 200 characters and "... (1048576 chars)"."""
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    return f"{text[:head]} ... [{len(text) - limit} of {len(text)} chars left out] ... {text[-(limit - head):]}"


class _Kind:
    __slots__ = ("window_start", "count", "suppressed", "name", "levelno", "template")

    def __init__(self, now: float, record: logging.LogRecord, template: str):
        self.window_start, self.count, self.suppressed = now, 0, 0
        self.name, self.levelno, self.template = record.name, record.levelno, template


class FloodGuard(logging.Filter):
    """Bounds what one handler writes (see the module docstring). `handler` receives the summary lines."""

    def __init__(self, handler: logging.Handler | None = None, *, count: int = RATE_LIMIT_COUNT,
                 window_s: float = RATE_LIMIT_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._handler = handler
        self._count, self._window_s, self._clock = count, window_s, clock
        self._kinds: dict[tuple, _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        self._summarize_expired(now)
        # debug (the frame log) is what an operator asked for: cut, never thinned; critical always passes
        limited = logging.INFO <= record.levelno < logging.CRITICAL
        if limited:
            template = str(record.msg)[:200]
            key = (record.name, record.levelno, template)
            kind = self._kinds.get(key)
            if kind is None:
                if len(self._kinds) >= _MAX_TRACKED_KINDS:
                    self._summarize_expired(now, everything=True)
                kind = self._kinds[key] = _Kind(now, record, template)
            kind.count += 1
            if kind.count > self._count:
                kind.suppressed += 1
                return False
        self._bound(record, note=limited and kind is not None and kind.count == self._count)
        return True

    def _bound(self, record: logging.LogRecord, note: bool) -> None:
        try:
            message = record.getMessage()
        except Exception:
            return  # the handler reports a broken format string
        cut = _cut(message, MAX_MESSAGE_CHARS)
        if note:
            cut += f" (more like this in the next {self._window_s:.0f} s are suppressed)"
        if cut != message:
            record.msg, record.args = cut, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _cut(record.exc_text, MAX_TRACEBACK_CHARS)

    def _summarize_expired(self, now: float, everything: bool = False) -> None:
        expired = [key for key, kind in self._kinds.items()
                   if everything or now - kind.window_start >= self._window_s]
        for key in expired:
            kind = self._kinds.pop(key)
            if kind.suppressed and self._handler is not None:
                summary = logging.LogRecord(
                    kind.name, max(kind.levelno, logging.WARNING), __file__, 0,
                    "suppressed %d similar messages in %.0f s: %s",
                    (kind.suppressed, now - kind.window_start, excerpt(kind.template, 120)), None)
                REDACTOR.filter(summary)
                self._handler.acquire()
                try:
                    self._handler.emit(summary)
                finally:
                    self._handler.release()


def add_secret(value: str | None) -> None:
    """Never log `value` (a password, a key): the agent's handler replaces it by [redacted]."""
    REDACTOR.add_secret(value)


def basic_auth_secrets(user: str, password: str | None) -> list[str]:
    """A password or AuthorizationKey, and the `Authorization: Basic` tokens built from it: from its text
    and, for a hex key, from the bytes it encodes (agent.ocpp.security's "hex-decoded" encoding)."""
    if not password:
        return []
    candidates = [password.encode()]
    try:
        candidates.append(bytes.fromhex(password))
    except ValueError:
        pass
    return [password, *(base64.b64encode(user.encode() + b":" + raw).decode("ascii") for raw in candidates)]


def add_basic_auth_secret(user: str, password: str | None) -> None:
    """basic_auth_secrets(user, password), never logged by the agent's handler (the process-wide net)."""
    for secret in basic_auth_secrets(user, password):
        add_secret(secret)


_LOGGING_FILES = {os.path.normcase(logging.__file__), os.path.normcase(__file__)}


class StationLogger(logging.LoggerAdapter):
    """A logger of one station (StationLogs.logger): each record gets `station_id`, in a fleet the `[<id>] `
    prefix, and is redacted with the station's secrets as it is made, whichever handler receives it."""

    def __init__(self, logger: logging.Logger, station: StationLogs):
        super().__init__(logger, {"station_id": station.station_id})
        self.station = station

    def log(self, level, msg, *args, exc_info=None, stack_info=False, stacklevel=1, extra=None, **_):
        if not self.logger.isEnabledFor(level):
            return
        if self.station.tag_lines:  # a message with no args is not %-formatted: nothing to escape then
            msg = (self.station.prefix if args else f"[{self.station.station_id}] ") + str(msg)
        if exc_info and not isinstance(exc_info, tuple):
            exc_info = ((type(exc_info), exc_info, exc_info.__traceback__) if isinstance(exc_info, BaseException)
                        else sys.exc_info())
        pathname, lineno, function, stack = self._caller(stack_info, stacklevel)
        record = self.logger.makeRecord(self.logger.name, level, pathname, lineno, msg, args, exc_info or None,
                                        function, {**(extra or {}), **self.extra}, stack)
        self.station.redactor.filter(record)
        self.logger.handle(record)

    @staticmethod
    def _caller(stack_info: bool, stacklevel: int) -> tuple[str, int, str, str | None]:
        """Where the station's code logged from (the frames of logging and of this module left out)."""
        frame: types.FrameType | None = sys._getframe(1)
        while frame is not None and os.path.normcase(frame.f_code.co_filename) in _LOGGING_FILES:
            frame = frame.f_back
        for _ in range(stacklevel - 1):
            if frame is not None and frame.f_back is not None:
                frame = frame.f_back
        if frame is None:
            return "(unknown file)", 0, "(unknown function)", None
        stack = None
        if stack_info:
            import traceback
            stack = "Stack (most recent call last):\n" + "".join(traceback.format_stack(frame)).rstrip("\n")
        return frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, stack


class StationLogs:
    """One station's logging identity: its id, its loggers and its secrets.

    `process_redactor`: a station that owns its process (`evse run`) also registers its secrets in the
    agent handler's filter (REDACTOR), the net for lines that libraries log outside the station's loggers;
    in a fleet it is None and one station's secrets stay its own."""

    def __init__(self, station_id: str, *, tag_lines: bool = False,
                 process_redactor: RedactSecrets | None = None):
        self.station_id = station_id
        self.tag_lines = tag_lines
        self.prefix = f"[{station_id}] ".replace("%", "%%")
        self.redactor = RedactSecrets()
        self._process_redactor = process_redactor
        self._loggers: dict[str, StationLogger] = {}

    def logger(self, name: str) -> StationLogger:
        """The station's view of the logger `name` (one per name)."""
        if name not in self._loggers:
            self._loggers[name] = StationLogger(logging.getLogger(name), self)
        return self._loggers[name]

    def add_secret(self, value: str | None) -> None:
        self.redactor.add_secret(value)
        if self._process_redactor is not None:
            self._process_redactor.add_secret(value)

    def add_basic_auth_secret(self, user: str, password: str | None) -> None:
        for secret in basic_auth_secrets(user, password):
            self.add_secret(secret)

    def redact(self, text: str) -> str:
        return self.redactor.redact(text)


def under_journald(stream: TextIO) -> bool:
    """True when `stream` is the journal stream systemd connected ($JOURNAL_STREAM = "device:inode")."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        status = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def setup_logging(level: str, stream: TextIO = sys.stdout) -> logging.Handler:
    """The agent's root handler: on `stream`, journald-style if it is the journal, secrets redacted."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if under_journald(stream) else logging.Formatter(TERMINAL_FORMAT))
    handler.addFilter(REDACTOR)
    handler.addFilter(FloodGuard(handler))  # after redaction: a secret is never cut in half unredacted
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return handler
