"""OCPP 1.6 security (Security Whitepaper edition 2): profiles 0-3, credentials, TLS, security events,
certificate management. The OCPP handlers live in agent.ocpp.v16.security; this module holds the logic.

Profiles (the `SecurityProfile` key, [ocpp] security_profile at first start):
* 0: no security profile: the url as written, Basic auth if a password is set (legacy);
* 1: ws:// + HTTP Basic auth `base64(<station id>:<AuthorizationKey>)`;
* 2: wss:// (server certificate checked against the installed CentralSystemRootCertificates, host name
  checked) + Basic auth;
* 3: wss:// with the charge point certificate (mutual TLS), no Basic auth.
TLS is 1.2 or newer with ECDHE + AES-GCM / ChaCha20 suites and no compression. Profiles 2 and 3 connect to
[ocpp] tls_url if set, else to [ocpp] url with the scheme wss://.

Over OCPP the profile can only be raised (ChangeConfiguration with a value <= the current one is
Rejected, TC_084); a raise is Accepted only when its prerequisites are met (key for 1 and 2, a CSMS root
for 2 and 3, a charge point certificate for 3), then the agent reconnects with it. If the new profile
fails to connect PROFILE_FALLBACK_ATTEMPTS times in a row before it ever connected, the previous one is
restored and a ReconfigurationOfSecurityParameters event is raised.

AuthorizationKey is write-only and never logged. The Basic-auth password is the key decoded from hex when
it is 32-40 hexadecimal digits ([ocpp] authorization_key_encoding = "hex-decoded", the default, as OCPP-J
1.6 §6.2.2 and OCTT TC_085 describe), else its UTF-8 bytes; "string" always sends the text as is.

Local edits win: when [ocpp] security_profile, password, csms_ca_file or the client certificate files
change in the config file (someone with access to the station edited them), they replace what the CSMS
set earlier; otherwise the CSMS's values (stored in the journal's settings and the certificate store)
are kept across restarts.

Security events go to the security log (`security_log_files()`, for GetLog SecurityLog) and, through the
journal, to the CSMS as SecurityEventNotification, so none is lost offline. Connection failures raise one
event per kind until the next successful connection.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidMessage, InvalidStatus

from agent.core.clock import WallClock, utc_now
from agent.logs import StationLogs
from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.station.journal import JournalError


class _LazyCerts:
    """agent.ocpp.security_certs, imported on first use: it loads `cryptography` (~8 MB of memory), which a
    station on security profile 0 or 1 without certificate operations never needs."""

    def __getattr__(self, name: str):
        from agent.ocpp import security_certs

        return getattr(security_certs, name)


certs = _LazyCerts()

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.ocpp.v16.config import OcppConfiguration
    from agent.station.journal import Journal

log = logging.getLogger("evse.security")

PROFILE_FALLBACK_ATTEMPTS = 3
CERTIFICATE_CLOCK_LEEWAY = timedelta(minutes=10)
RENEWAL_RETRY = timedelta(days=1)  # a renewal the CSMS has not answered with a certificate is asked again
SECURITY_LOG_MAX_BYTES = 256 * 1024  # two files of this size are kept (rolling, as the whitepaper advises)
# TLS 1.2 suites; TLS 1.3 suites are OpenSSL's (all AEAD). ECDHE only: forward secrecy, and the whitepaper's
# TLS_ECDHE_ECDSA_WITH_AES_128/256_GCM set is covered.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
AUTHORIZATION_KEY_ENCODINGS = ("hex-decoded", "string")
AUTHORIZATION_KEY_MIN_LENGTH = 16  # characters: 16-20 byte keys, plain or as 32-40 hex digits (OCTT TC_073)
AUTHORIZATION_KEY_MAX_LENGTH = 40
_HEX = re.compile(r"[0-9A-Fa-f]+")

# Security events of the whitepaper (appendix 1); all are logged, all are sent (critical or not).
FIRMWARE_UPDATED = "FirmwareUpdated"
FAILED_TO_AUTHENTICATE = "FailedToAuthenticateAtCentralSystem"
CSMS_FAILED_TO_AUTHENTICATE = "CentralSystemFailedToAuthenticate"
SETTING_SYSTEM_TIME = "SettingSystemTime"
STARTUP = "StartupOfTheDevice"
RESET_OR_REBOOT = "ResetOrReboot"
SECURITY_LOG_CLEARED = "SecurityLogWasCleared"
RECONFIGURATION = "ReconfigurationOfSecurityParameters"
MEMORY_EXHAUSTION = "MemoryExhaustion"
INVALID_MESSAGES = "InvalidMessages"
REPLAY_ATTACK = "AttemptedReplayAttacks"
TAMPER_DETECTION = "TamperDetectionActivated"
INVALID_FIRMWARE_SIGNATURE = "InvalidFirmwareSignature"
INVALID_FIRMWARE_SIGNING_CERTIFICATE = "InvalidFirmwareSigningCertificate"
INVALID_CSMS_CERTIFICATE = "InvalidCentralSystemCertificate"
INVALID_CP_CERTIFICATE = "InvalidChargePointCertificate"
INVALID_TLS_VERSION = "InvalidTLSVersion"
INVALID_TLS_CIPHER_SUITE = "InvalidTLSCipherSuite"


class SecurityConfigError(Exception):
    """The current profile cannot connect: a prerequisite (key, root, certificate) is missing. `event`:
    the security event this amounts to, if any."""

    def __init__(self, message: str, event: str | None = None):
        super().__init__(message)
        self.event = event


# ---- credentials -------------------------------------------------------------------------------------


def authorization_key_bytes(key: str, encoding: str = "hex-decoded") -> bytes:
    """The Basic-auth password for an AuthorizationKey (see the module docstring for the encoding)."""
    if (
        encoding == "hex-decoded"
        and 2 * AUTHORIZATION_KEY_MIN_LENGTH <= len(key) <= AUTHORIZATION_KEY_MAX_LENGTH
        and len(key) % 2 == 0
        and _HEX.fullmatch(key)
    ):
        return bytes.fromhex(key)
    return key.encode()


def basic_auth_header(station_id: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(station_id.encode() + b":" + password).decode("ascii")


def authorization_key_problem(value: str) -> str | None:
    """Why a new AuthorizationKey is refused, or None. The reason never quotes the value."""
    if not AUTHORIZATION_KEY_MIN_LENGTH <= len(value) <= AUTHORIZATION_KEY_MAX_LENGTH:
        return (
            f"must be {AUTHORIZATION_KEY_MIN_LENGTH} to {AUTHORIZATION_KEY_MAX_LENGTH} characters, "
            f"got {len(value)}"
        )
    if any(not char.isprintable() for char in value):
        return "must not contain control characters"
    return None


# ---- TLS ---------------------------------------------------------------------------------------------


def tls_context(ca_pem: str | None, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """Client context: TLS >= 1.2, ECDHE AEAD suites, no compression, the server certificate checked
    against `ca_pem` (the system's roots if None) and the host name checked (SNI is sent by default)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem)
    else:
        context.load_default_certs()
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    return context


_TLS_VERSION_REASONS = {
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "WRONG_VERSION_NUMBER",
    "NO_PROTOCOLS_AVAILABLE",
    "VERSION_TOO_LOW",
}
_TLS_CIPHER_REASONS = {"NO_SHARED_CIPHER", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_SIGNATURE_ALGORITHM"}
_CLIENT_CERTIFICATE_REASONS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "TLSV1_ALERT_ACCESS_DENIED",
    "TLSV1_ALERT_DECRYPT_ERROR",
}


class TlsAwareConnection(ClientConnection):
    """websockets reports a TLS alert that arrives during the opening handshake as "did not receive a valid
    HTTP response" (under TLS 1.3 a refused client certificate is signalled after the client finished its
    TLS handshake). This connection raises the TLS error itself, so the log and the security event say
    what happened. Pass it as websockets.connect(create_connection=...)."""

    async def handshake(self, *args, **kwargs) -> None:
        try:
            await super().handshake(*args, **kwargs)
        except Exception as exc:
            if not self.connection_lost_waiter.done():  # the alert closes the connection right away
                await asyncio.wait([self.connection_lost_waiter], timeout=0.5)
            if isinstance(self.connection_exc, ssl.SSLError):
                raise self.connection_exc from exc
            raise


def _causes(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify_connection_failure(exc: BaseException, client_certificate: bool = False) -> tuple[str | None, str]:
    """(security event type or None, short technical info) for a failed connection attempt;
    `client_certificate`: one was presented (profile 3)."""
    for cause in _causes(exc):
        if isinstance(cause, SecurityConfigError):
            return cause.event, str(cause)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return INVALID_CSMS_CERTIFICATE, f"server certificate refused: {cause.verify_message}"
        if isinstance(cause, InvalidStatus):
            status = cause.response.status_code
            if status in (401, 403):
                return FAILED_TO_AUTHENTICATE, f"CSMS answered HTTP {status} to the connection request"
            return None, f"HTTP {status}"
        if isinstance(cause, ssl.SSLError):
            reason = cause.reason or ""
            if reason in _TLS_VERSION_REASONS:
                return INVALID_TLS_VERSION, f"TLS version refused ({reason})"
            if reason in _TLS_CIPHER_REASONS:
                return INVALID_TLS_CIPHER_SUITE, f"no common TLS cipher suite ({reason})"
            if reason in _CLIENT_CERTIFICATE_REASONS:
                return FAILED_TO_AUTHENTICATE, f"CSMS refused the TLS client certificate ({reason})"
            if reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
                return FAILED_TO_AUTHENTICATE, "TLS handshake failure (no common cipher suite, or client certificate refused)"
            return None, f"TLS error ({reason or cause})"
        if isinstance(cause, InvalidMessage) and isinstance(cause.__cause__, EOFError) and client_certificate:
            # a CSMS that drops a refused client certificate without a TLS alert looks like this
            return FAILED_TO_AUTHENTICATE, ("CSMS closed the TLS connection without an HTTP answer "
                                            "(client certificate refused?)")
    return None, f"{type(exc).__name__}: {exc}"


# ---- keeping secrets out of logs -------------------------------------------------------------------------

_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.S)
# a "value" member in JSON or in a Python repr (the library logs requests as dict reprs)
_VALUE_MEMBER = re.compile(r"""(["']value["']\s*:\s*)(["'])(?:(?!\2)[^\\]|\\.)*\2""")
_PEM_FIELDS = ("certificate", "certificateChain", "csr")


def redact_text(text: str) -> str:
    text = _PEM_BLOCK.sub(lambda m: f"<{m.group(1)}>", text)
    if "authorizationkey" in text.lower():
        text = _VALUE_MEMBER.sub(r"\1\2<hidden>\2", text)
    return text


def redact_frame(text):
    """An OCPP-J frame for the log: the AuthorizationKey value hidden, certificates and CSRs summarised."""
    if not isinstance(text, str):
        return text
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return redact_text(text)
    payload = None
    if isinstance(frame, list) and len(frame) >= 3:
        payload = frame[3] if frame[0] == 2 and len(frame) > 3 else frame[2] if frame[0] == 3 else None
    if not isinstance(payload, dict):
        return redact_text(text)
    changed = False
    if str(payload.get("key", "")).lower() == "authorizationkey" and "value" in payload:
        payload["value"] = "<hidden>"
        changed = True
    for name in _PEM_FIELDS:
        if isinstance(payload.get(name), str):
            payload[name] = f"<PEM, {len(payload[name])} characters>"
            changed = True
    if not changed:
        return redact_text(text)
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def _one_line(text: str | None, limit: int = 255) -> str | None:
    if text is None:
        return None
    return " ".join(text.split())[:limit]


# ---- security log ----------------------------------------------------------------------------------------


class SecurityLog:
    """Rolling text log of security events: `<UTC timestamp> <type> <techInfo>` per line; when the file
    would exceed `max_bytes` it becomes `<name>.1` (the previous `.1` is dropped)."""

    def __init__(self, path: Path, max_bytes: int = SECURITY_LOG_MAX_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes

    def write(self, timestamp: str, kind: str, tech_info: str | None) -> None:
        line = f"{timestamp} {kind}{' ' + tech_info if tech_info else ''}\n".encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                self.path.replace(self.rotated_path)
            with open(self.path, "ab") as file:
                file.write(line)
        except OSError as exc:
            log.error("cannot write the security log %s: %s", self.path, exc)

    @property
    def rotated_path(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def files(self) -> list[Path]:
        """The log's files, oldest first (what GetLog SecurityLog uploads)."""
        return [path for path in (self.rotated_path, self.path) if path.exists()]


# ---- the manager -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    url: str
    profile: int
    headers: dict = dataclasses.field(repr=False)  # holds the Basic-auth credentials: never printed
    ssl: ssl.SSLContext | None = dataclasses.field(default=None, repr=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _with_scheme(url: str, scheme: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


class SecurityManager:
    """Security state of one station: see the module docstring. Create it before the OcppConfiguration
    (apply_local_settings() must run before the stored settings are read), then attach() that."""

    def __init__(self, config: AgentConfig, journal: Journal, wall_clock: WallClock = utc_now,
                 logs: StationLogs | None = None):
        self.logger = logs.logger(log.name) if logs is not None else log  # self.log: the security event log
        self._config = config
        self._journal = journal
        self._wall_clock = wall_clock  # UTC: certificate validity, event timestamps
        state_dir = Path(journal.path).parent
        self._certs_dir = state_dir / "certs"
        self._store = None
        self.log = SecurityLog(state_dir / "security.log")
        self.configuration: OcppConfiguration | None = None
        self.on_event_queued: Callable[[], None] = lambda: None  # wakes the OCPP journal sender
        self._reconnect_requested = False
        self._failure_kinds: set[str] = set()  # events raised since the last successful connection
        self._pending_failures = 0  # failed attempts of a raised profile that has not connected yet
        self._roots_in_use: set[str] = set()  # fingerprints of CSMS roots anchoring the open connection
        self._internal_change = False
        self._profile_seen = 0  # the SecurityProfile before a change (on_change gets only the new value)
        # the CSMS used a whitepaper message: it understands SecurityEventNotification even on profile 0
        self._extension_seen = journal.settings("security.").get("csms_extension") == "1"

    @property
    def store(self):
        """The certificate store (agent.ocpp.security_certs.CertificateStore), opened on first use."""
        if self._store is None:
            self._store = certs.CertificateStore(self._certs_dir)
        return self._store

    # ---- start-up ----------------------------------------------------------------------------------

    def apply_local_settings(self) -> None:
        """Let values edited in the config file since the last start replace what the CSMS set. What the
        file held is recorded (one commit, and none when nothing changed) to notice the next edit."""
        ocpp = self._config.ocpp
        recorded = self._journal.settings("security.")
        updates: dict[str, str] = {}
        notes: list[tuple[str, bool]] = []  # (techInfo, send) of ReconfigurationOfSecurityParameters events
        file_profile = str(ocpp.security_profile)
        if recorded.get("file_profile") != file_profile:
            if "file_profile" in recorded:
                notes.append((f"SecurityProfile set to {file_profile} in the config file", True))
            updates.update({"ocpp.SecurityProfile": file_profile, "security.previous_profile": "",
                            "security.file_profile": file_profile})
        digest = _sha256(ocpp.password.encode())
        if recorded.get("file_password_sha256") != digest:
            if "file_password_sha256" in recorded:
                notes.append(("AuthorizationKey ([ocpp] password) changed in the config file", True))
            updates.update({"ocpp.AuthorizationKey": ocpp.password, "security.file_password_sha256": digest})
        self._import_file_roots(recorded, updates, notes)
        self._import_file_client_certificate(recorded, updates, notes)
        if updates:
            try:
                with self._journal.write() as db:
                    db.executemany(
                        "INSERT INTO settings (key, value) VALUES (?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        list(updates.items()),
                    )
            except JournalError as exc:
                self.logger.error("cannot record the security settings of the config file: %s", exc)
        for info, send in notes:
            self.event(RECONFIGURATION, info, send=send)

    def _import_file_roots(self, recorded: dict[str, str], updates: dict, notes: list) -> None:
        path = self._config.ocpp.csms_ca_file
        try:
            data = path.read_bytes() if path is not None else b""
        except OSError as exc:
            self.logger.error("cannot read [ocpp] csms_ca_file: %s", exc)
            return
        digest = _sha256(data)
        if recorded.get("file_csms_ca_sha256") == digest:
            return
        if not data and not recorded.get("file_csms_roots"):  # nothing configured, nothing to remove
            updates["security.file_csms_ca_sha256"] = digest
            return
        try:
            new = certs.load_pem_certificates(data) if data else []
            old = set(filter(None, recorded.get("file_csms_roots", "").split(",")))
            for _, cert in self.store.roots(certs.CSMS_ROOT):
                if certs.fingerprint(cert) in old and cert not in new:
                    self.store.remove_root(certs.CSMS_ROOT, cert)
            for cert in new:
                self.store.add_root(certs.CSMS_ROOT, cert)
        except (OSError, certs.CertificateError) as exc:
            self.logger.error("cannot install [ocpp] csms_ca_file %s in the certificate store: %s", path, exc)
            return
        updates["security.file_csms_roots"] = ",".join(certs.fingerprint(c) for c in new)
        updates["security.file_csms_ca_sha256"] = digest
        if new:
            notes.append((f"{len(new)} CentralSystemRootCertificate(s) from the config file",
                          "file_csms_ca_sha256" in recorded))

    def _import_file_client_certificate(self, recorded: dict[str, str], updates: dict, notes: list) -> None:
        ocpp = self._config.ocpp
        if ocpp.client_cert_file is None or ocpp.client_key_file is None:
            return
        try:
            cert_data = ocpp.client_cert_file.read_bytes()
            key_data = ocpp.client_key_file.read_bytes()
        except OSError as exc:
            self.logger.error("cannot read the [ocpp] client certificate: %s", exc)
            return
        digest = _sha256(cert_data + b"\0" + key_data)
        if recorded.get("file_client_sha256") == digest:
            return
        try:
            chain = certs.load_pem_certificates(cert_data)
            self.store.install_client(chain, certs.load_private_key(key_data))
        except (OSError, certs.CertificateError) as exc:
            self.logger.error("cannot install the [ocpp] client certificate in the certificate store: %s", exc)
            return
        updates["security.file_client_sha256"] = digest
        notes.append(("charge point certificate from the config file", "file_client_sha256" in recorded))

    def attach(self, configuration: OcppConfiguration) -> None:
        self.configuration = configuration
        self._profile_seen = configuration.get_int("SecurityProfile")

    def _attached(self) -> OcppConfiguration:
        """The station's configuration, for what only happens after attach() (a connection, a CSMS call)."""
        assert self.configuration is not None, "SecurityManager used before attach()"
        return self.configuration

    # ---- profile and credentials ---------------------------------------------------------------------

    @property
    def profile(self) -> int:
        if self.configuration is None:  # before attach(): the config file's
            return self._config.ocpp.security_profile
        return self.configuration.get_int("SecurityProfile")

    @property
    def endpoint(self) -> str:
        return self._url_for(self.profile)

    def _url_for(self, profile: int) -> str:
        ocpp = self._config.ocpp
        base = ocpp.url
        if profile >= 2:
            base = ocpp.tls_url or _with_scheme(ocpp.url, "wss")
        return base.rstrip("/") + "/" + quote(self._config.station.id, safe="")

    def _authorization_key(self) -> str:
        return self.configuration.get("AuthorizationKey") if self.configuration else self._config.ocpp.password

    def _client_problem(self) -> str | None:
        chain = self.store.client_chain()
        key = self.store.client_key()
        if not chain or key is None:
            return "no charge point certificate installed"
        if not certs.same_public_key(chain[0].public_key(), key.public_key()):
            return "the charge point certificate does not match its key"
        try:
            certs.check_validity(chain[0], self._wall_clock())
        except certs.CertificateError as exc:
            return f"the charge point certificate is not valid: {exc}"
        return None

    def missing_prerequisite(self, profile: int) -> str | None:
        """Why `profile` cannot be used now, or None."""
        if profile in (1, 2) and not self._authorization_key():
            return f"profile {profile} needs an AuthorizationKey ([ocpp] password)"
        if profile == 1 and urlsplit(self._config.ocpp.url).scheme.lower() == "wss":
            return "profile 1 is unsecured transport, but [ocpp] url is wss://"
        if profile >= 2 and not self.store.root_certificates(certs.CSMS_ROOT):
            return f"profile {profile} needs an installed CentralSystemRootCertificate"
        if profile == 3:
            return self._client_problem()
        return None

    def connection_settings(self) -> ConnectionSettings:
        """URL, headers and TLS context of the next connection attempt. Raises SecurityConfigError."""
        profile = self.profile
        problem = self.missing_prerequisite(profile)
        if problem is not None:
            raise SecurityConfigError(problem, INVALID_CP_CERTIFICATE if profile == 3 else None)
        url = self._url_for(profile)
        headers = {}
        key = self._authorization_key()
        if key and profile != 3:
            password = authorization_key_bytes(key, self._config.ocpp.authorization_key_encoding)
            headers["Authorization"] = basic_auth_header(self._config.station.id, password)
        context = None
        if urlsplit(url).scheme.lower() == "wss":
            roots = self.store.root_certificates(certs.CSMS_ROOT)
            client = self.store.client_paths() if profile == 3 else None
            try:
                context = tls_context(certs.to_pem(roots) if roots else None, client)
            except (ssl.SSLError, OSError) as exc:
                raise SecurityConfigError(f"cannot set up TLS: {exc}") from None
        return ConnectionSettings(url, profile, headers, context)

    def check_change(self, name: str, old: str, new: str) -> str | None:
        """OcppConfiguration guard: why a ChangeConfiguration of a security key is Rejected, or None."""
        if name in ("SecurityProfile", "AuthorizationKey", "CpoName"):
            self.csms_uses_security_extension()
        if name == "SecurityProfile":
            if int(new) <= int(old):
                return f"the security profile can only be raised over OCPP (current {old})"
            return self.missing_prerequisite(int(new))
        if name == "AuthorizationKey":
            return authorization_key_problem(new)
        if name == "CpoName" and len(new) > certs.MAX_ORGANIZATION_NAME:
            return f"at most {certs.MAX_ORGANIZATION_NAME} characters (X.509 organizationName)"
        return None

    def configuration_changed(self, name: str, value: str) -> None:
        """After an accepted ChangeConfiguration (called by the station)."""
        if name == "SecurityProfile":
            old, self._profile_seen = self._profile_seen, int(value)
            if self._internal_change:
                return
            self._journal.set_setting("security.previous_profile", str(old))
            self._pending_failures = 0
            self._reconnect_requested = True
            self.event(RECONFIGURATION, f"SecurityProfile raised from {old} to {value} by the CSMS")
        elif name == "AuthorizationKey":
            self._reconnect_requested = True
            self.event(RECONFIGURATION, "AuthorizationKey changed by the CSMS")
        elif name == "CpoName":
            self.event(RECONFIGURATION, "CpoName changed by the CSMS", send=False)

    def take_reconnect_request(self) -> bool:
        """True once after a change that needs a new connection (new key, profile or certificate)."""
        requested, self._reconnect_requested = self._reconnect_requested, False
        return requested

    # ---- connection outcome ----------------------------------------------------------------------------

    def connection_failed(self, exc: BaseException) -> None:
        kind, info = classify_connection_failure(exc, client_certificate=self.profile == 3)
        if kind is not None:
            self.event(kind, info, send=kind not in self._failure_kinds)
            self._failure_kinds.add(kind)
        previous = self._journal.settings("security.").get("previous_profile", "")
        if not previous:
            return
        self._pending_failures += 1
        if self._pending_failures >= PROFILE_FALLBACK_ATTEMPTS:
            self._fall_back(int(previous))

    def _fall_back(self, previous: int) -> None:
        current = self.profile
        self._internal_change = True
        try:
            self._attached().set_internal("SecurityProfile", str(previous))
        finally:
            self._internal_change = False
        self._journal.set_setting("security.previous_profile", "")
        self._pending_failures = 0
        self.logger.error("security profile %d failed to connect %d times: back to profile %d",
                          current, PROFILE_FALLBACK_ATTEMPTS, previous)
        self.event(RECONFIGURATION, f"SecurityProfile {current} failed to connect "
                                    f"{PROFILE_FALLBACK_ATTEMPTS} times: back to {previous}")

    def connection_succeeded(self, websocket) -> None:
        self._failure_kinds.clear()
        if self._journal.settings("security.").get("previous_profile"):
            self._journal.set_setting("security.previous_profile", "")
            self.logger.info("security profile %d connected: the upgrade is confirmed", self.profile)
        self._pending_failures = 0
        self._roots_in_use = self._anchors_of(websocket)

    def _anchors_of(self, websocket) -> set[str]:
        transport = getattr(websocket, "transport", None)
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return set()
        from cryptography import x509  # only on TLS connections, where cryptography is needed anyway

        chain: list[x509.Certificate] = []
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_verified_chain", None)
        try:
            if getter is not None:  # Python 3.11's private API (public from 3.13)
                chain = [x509.load_der_x509_certificate(c.public_bytes(2)) for c in getter()]
            else:
                chain = [x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))]
        except (ValueError, TypeError, AttributeError, ssl.SSLError):
            return set()
        return {
            certs.fingerprint(root)
            for root in self.store.root_certificates(certs.CSMS_ROOT)
            if any(cert == root or certs.issued_by(cert, root) for cert in chain)
        }

    # ---- events --------------------------------------------------------------------------------------

    def csms_uses_security_extension(self) -> None:
        """The CSMS sent a whitepaper message: from now on events are sent even on profile 0."""
        if not self._extension_seen:
            self._extension_seen = True
            try:
                self._journal.set_setting("security.csms_extension", "1")
            except JournalError as exc:
                self.logger.error("cannot record that the CSMS uses the security extension: %s", exc)

    @property
    def sends_events(self) -> bool:
        """SecurityEventNotification goes out on profiles 1-3, or once the CSMS used the security extension:
        a plain OCPP 1.6 CSMS on profile 0 would refuse it (the event is still in the security log)."""
        return self.profile >= 1 or self._extension_seen

    def event(self, kind: str, tech_info: str | None = None, *, send: bool = True) -> None:
        """Log a security event and (send=True) queue its SecurityEventNotification in the journal."""
        send = send and self.sends_events
        timestamp = ocpp_timestamp(self._wall_clock())
        tech_info = _one_line(tech_info)
        self.log.write(timestamp, kind, tech_info)
        (self.logger.warning if send else self.logger.info)("security event %s%s", kind, f": {tech_info}" if tech_info else "")
        if not send:
            return
        payload = {"type": kind, "timestamp": timestamp}
        if tech_info:
            payload["techInfo"] = tech_info
        try:
            self._journal.enqueue("SecurityEventNotification", payload)
        except JournalError as exc:
            self.logger.error("cannot queue the security event %s: %s", kind, exc)
            return
        self.on_event_queued()

    @property
    def security_log_path(self) -> Path:
        return self.log.path

    def security_log_files(self) -> list[Path]:
        """Files of the security log, oldest first, for GetLog SecurityLog."""
        return self.log.files()

    # ---- certificates --------------------------------------------------------------------------------

    def install_certificate(self, kind: str, pem: str) -> str:
        """InstallCertificate: Accepted, Rejected (invalid, or the store is full) or Failed."""
        try:
            found = certs.load_pem_certificates(pem)
            if len(found) != 1:
                raise certs.CertificateError(f"expected one certificate, got {len(found)}")
            cert = found[0]
            certs.check_root(cert, self._wall_clock())
        except certs.CertificateError as exc:
            self._certificate_refused(kind, f"InstallCertificate {kind} rejected: {exc}")
            return "Rejected"
        if self.store.has_root(kind, cert):
            return "Accepted"
        if self.store.count_roots() >= self._attached().get_int("CertificateStoreMaxLength"):
            self.logger.warning("InstallCertificate %s rejected: the certificate store is full", kind)
            return "Rejected"
        try:
            self.store.add_root(kind, cert)
        except OSError as exc:
            self.logger.error("InstallCertificate %s failed: %s", kind, exc)
            return "Failed"
        self.event(RECONFIGURATION, f"{kind} installed: {certs.describe(cert)}", send=False)
        return "Accepted"

    def _certificate_refused(self, kind: str, reason: str) -> None:
        if kind == certs.CSMS_ROOT:
            self.event(INVALID_CSMS_CERTIFICATE, reason)
        else:
            self.logger.warning("%s", reason)
            self.log.write(ocpp_timestamp(self._wall_clock()), "InvalidManufacturerRootCertificate",
                           _one_line(reason))

    def delete_certificate(self, wanted: dict) -> str:
        """DeleteCertificate: Accepted, Failed (the CSMS root of the open connection) or NotFound."""
        for kind in certs.ROOT_KINDS:
            for _, cert in self.store.roots(kind):
                if not certs.matches_hash_data(cert, cert.public_key(), wanted):
                    continue
                if kind == certs.CSMS_ROOT and certs.fingerprint(cert) in self._roots_in_use:
                    self.logger.warning("DeleteCertificate refused: %s validates the current connection",
                                        certs.describe(cert))
                    return "Failed"
                try:
                    self.store.remove_root(kind, cert)
                except OSError as exc:
                    self.logger.error("DeleteCertificate failed: %s", exc)
                    return "Failed"
                self.event(RECONFIGURATION, f"{kind} deleted: {certs.describe(cert)}", send=False)
                return "Accepted"
        return "NotFound"

    def installed_certificate_ids(self, kind: str) -> list[dict]:
        """certificateHashData (SHA256) of the installed roots of `kind`."""
        return [certs.hash_data(cert, cert.public_key()) for _, cert in self.store.roots(kind)]

    def certificate_renewal_due(self, now: datetime | None = None) -> str | None:
        """Why the charge point certificate should be renewed now, or None: it expires within [ocpp]
        certificate_renewal_days and no renewal was asked for within RENEWAL_RETRY (the CSMS may be slow
        to sign, or offline)."""
        days = self._config.ocpp.certificate_renewal_days
        if days <= 0 or (self._store is None and not self._certs_dir.is_dir()):
            return None  # no certificate store: `cryptography` is not even loaded
        chain = self.store.client_chain()
        if not chain:
            return None
        now = now or self._wall_clock()
        expires = chain[0].not_valid_after_utc
        if expires - now > timedelta(days=days):
            return None
        asked = self._journal.settings("security.").get("renewal_requested_at")
        with contextlib.suppress(ValueError):
            if asked and now - datetime.fromisoformat(asked) < RENEWAL_RETRY:
                return None
        state = "expired" if expires <= now else "expires"
        return f"the charge point certificate {state} on {expires:%Y-%m-%d %H:%M}Z"

    def certificate_renewal_requested(self, now: datetime | None = None) -> None:
        """Remember the renewal request (a restart does not ask again at once). Raises JournalError."""
        self._journal.set_setting("security.renewal_requested_at", (now or self._wall_clock()).isoformat())

    def new_csr(self) -> str:
        """Generate a key pair (kept on the station) and the CSR for SignCertificate. Raises OSError."""
        key = certs.new_private_key()
        self.store.save_pending_key(key)
        organization = self.configuration.get("CpoName") if self.configuration else ""
        if not organization:
            self.logger.warning("CpoName is not set: the CSR has no organization (O) in its subject")
        identity = self._config.station.serial or self._config.station.id
        self.log.write(ocpp_timestamp(self._wall_clock()), "CertificateSigningRequest",
                       f"new key pair, CSR for CN={identity} O={organization}")
        return certs.make_csr(key, identity, organization)

    def certificate_signed(self, chain_pem: str) -> str:
        """CertificateSigned: Accepted if the chain is valid, leads to an installed CentralSystemRoot and
        belongs to the pending (or current) key; else Rejected with an InvalidChargePointCertificate event."""
        try:
            limit = self._attached().get_int("CertificateSignedMaxChainSize")
            if len(chain_pem) > limit:
                raise certs.CertificateError(f"chain of {len(chain_pem)} characters exceeds {limit}")
            chain = certs.load_pem_certificates(chain_pem)
            leaf = chain[0]
            if certs.is_ca(leaf):
                raise certs.CertificateError(f"the leaf is a CA certificate ({certs.describe(leaf)})")
            key = next(
                (k for k in (self.store.pending_key(), self.store.client_key())
                 if k is not None and certs.same_public_key(k.public_key(), leaf.public_key())),
                None,
            )
            if key is None:
                raise certs.CertificateError(f"does not match the key of the last CSR ({certs.describe(leaf)})")
            # checked as of a few minutes ahead: a certificate the CA dated "now" is accepted despite a clock
            # a little behind, one about to expire is not
            soon = self._wall_clock() + CERTIFICATE_CLOCK_LEEWAY
            certs.verify_chain(chain, self.store.root_certificates(certs.CSMS_ROOT), soon)
        except certs.CertificateError as exc:
            self.event(INVALID_CP_CERTIFICATE, f"CertificateSigned rejected: {exc}")
            return "Rejected"
        try:
            self.store.install_client(chain, key)
        except OSError as exc:
            self.logger.error("cannot store the charge point certificate: %s", exc)
            self.event(INVALID_CP_CERTIFICATE, f"CertificateSigned: cannot store it: {exc}")
            return "Rejected"
        self.event(RECONFIGURATION, f"charge point certificate installed: {certs.describe(leaf)}", send=False)
        if self.profile == 3:
            self._reconnect_requested = True  # TC_074: reconnect with the new certificate
        return "Accepted"
