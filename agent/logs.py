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
  (agent.security.redact_frame); this is the net under everything else.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
from typing import TextIO

TERMINAL_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words; such a password is no secret anyway
REDACTED = "[redacted]"

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


def add_secret(value: str | None) -> None:
    """Never log `value` (a password, a key): the agent's handler replaces it by [redacted]."""
    REDACTOR.add_secret(value)


def add_basic_auth_secret(user: str, password: str | None) -> None:
    """A password or AuthorizationKey, and the `Authorization: Basic` tokens built from it: from its text
    and, for a hex key, from the bytes it encodes (agent.security's "hex-decoded" encoding)."""
    if not password:
        return
    add_secret(password)
    candidates = [password.encode()]
    try:
        candidates.append(bytes.fromhex(password))
    except ValueError:
        pass
    for raw in candidates:
        add_secret(base64.b64encode(user.encode() + b":" + raw).decode("ascii"))


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
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("websockets").setLevel(logging.WARNING)
    return handler
