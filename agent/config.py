"""The agent's TOML configuration file.

`load_config()` checks everything up front, so a typo stops the agent at start with one line that names
the file and the key, instead of surfacing as a strange failure later. Unknown sections and keys are
errors for the same reason.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

from agent.ocpp.v16 import config as ocpp_config
from hal.schema import OMITTED, Boolean, Integer, Number, Schema, String, TableReader, did_you_mean, show

DEFAULT_BOARD_FILE = "board-configs/sim.toml"
DEFAULT_JOURNAL_PATH = "/var/lib/evse-agent/journal.sqlite"
DEFAULT_CONTROL_SOCKET = "/run/evse-agent/control.sock"
DEFAULT_CONTROL_GROUP = "evse"
LOG_LEVELS = ("debug", "info", "warning", "error")
SUPPORTED_OCPP_VERSIONS = ("1.6",)

# Field lengths of BootNotification.req (OCPP 1.6 CiString20/25/50): longer values would fail schema
# validation on every boot, so refuse them here.
MAX_VENDOR_LENGTH = 20
MAX_MODEL_LENGTH = 20
MAX_SERIAL_LENGTH = 25
MAX_FIRMWARE_VERSION_LENGTH = 50
MAX_STATION_ID_LENGTH = 48
# Linux sun_path is 108 bytes including the terminating NUL; bind() fails with a vague error beyond that.
MAX_SOCKET_PATH_BYTES = 107


class ConfigError(Exception):
    """An invalid config file. str() is one line naming the file and, where there is one, the key."""


def package_version() -> str:
    try:
        return importlib.metadata.version("evse-agent")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"  # running from a source tree that was never installed


@dataclass(frozen=True)
class StationConfig:
    id: str
    vendor: str = "evse-agent"
    model: str = "sim"
    serial: str = ""
    firmware_version: str = field(default_factory=package_version)


@dataclass(frozen=True)
class OcppConfig:
    url: str
    version: str = "1.6"
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    password: str = field(default="", repr=False)  # HTTP Basic auth; kept out of repr so it is never logged
    # OCPP 1.6 security (agent.ocpp.security): the initial SecurityProfile, how the AuthorizationKey becomes the
    # Basic-auth password, the TLS endpoint of profiles 2-3 and the certificates (absolute paths)
    security_profile: int = 0
    authorization_key_encoding: str = "hex-decoded"
    tls_url: str = ""
    csms_ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    # Renew the charge point certificate (SignCertificate) this many days before it expires; 0 = never
    certificate_renewal_days: float = 30.0
    # Station maker's initial OCPP configuration values, validated and in canonical string form.
    configuration: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class BoardConfig:
    file: Path


@dataclass(frozen=True)
class JournalConfig:
    path: Path = Path(DEFAULT_JOURNAL_PATH)
    max_messages: int = 100_000  # queued messages kept during an outage (see agent.station.journal for the policy)


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = Path(DEFAULT_CONTROL_SOCKET)
    # members of this group may use the socket (agent.cli.control_socket); "" = only root and the agent's own user
    group: str = DEFAULT_CONTROL_GROUP


@dataclass(frozen=True)
class ChargingConfig:
    max_current_a: float = 32.0  # caps the offered current together with the board and the cable rating
    stop_on_shutdown: bool = False  # whether SIGTERM stops running transactions
    resume_after_power_loss: bool = False  # continue an interrupted transaction if the EV is still plugged
    reservations: bool = True  # accept OCPP ReserveNow (false: every reservation is answered Rejected)
    meter_failure: str = "stop"  # "stop": a dead meter ends the session; "continue": charge on, report it
    control_period_s: float = 0.01
    meter_poll_s: float = 1.0


@dataclass(frozen=True)
class TransferConfig:
    """Bounds of firmware downloads and diagnostics/log uploads (agent.ocpp.transfer): each runs in a worker of
    its own and ends by its total deadline whatever the server does (a trickle cannot hold it)."""

    firmware_deadline_s: float = 0.0  # 0: 10 min, or longer for a large size limit (agent.station.firmware)
    upload_deadline_s: float = 300.0
    read_timeout_s: float = 30.0  # no byte for this long ends a transfer before its deadline


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class AgentConfig:
    path: Path  # the config file, absolute
    station: StationConfig
    ocpp: OcppConfig
    board: BoardConfig
    journal: JournalConfig = field(default_factory=JournalConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    charging: ChargingConfig = field(default_factory=ChargingConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def ocpp_configuration(self) -> Mapping[str, str]:
        """Shortcut for `ocpp.configuration`: the initial values for OcppConfiguration."""
        return self.ocpp.configuration

    @property
    def ocpp_endpoint(self) -> str:
        """The WebSocket URL to connect to: the CSMS url plus the percent-encoded station id (OCPP-J §3.1)."""
        return self.ocpp.url.rstrip("/") + "/" + quote(self.station.id, safe="")


_SECTIONS = ("station", "ocpp", "board", "journal", "control", "charging", "transfer", "log")


class _Section(TableReader):
    """One [section] of the agent's config file: errors read "file: [section] key: reason"."""

    error_type = ConfigError
    separator = " "

    def __init__(self, data: dict[str, Any], where: str, path: Path, base_dir: Path) -> None:
        super().__init__(data, where, path)
        self.base_dir = base_dir  # relative paths are relative to the config file's directory


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file at `path`. Raises ConfigError."""
    path = Path(path)
    document = _parse_toml(path)
    base_dir = Path(os.path.abspath(path)).parent

    for name, value in document.items():
        if name not in _SECTIONS:
            if isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}]: unknown section{did_you_mean(name, _SECTIONS)}")
            raise ConfigError(f"{path}: {name}: unknown key (keys belong in a [section])")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {name}: expected a table [{name}], got {show(value)}")

    def section(name: str, schema: Schema, *, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        return _Section(document.get(name, {}), f"[{name}]", path, base_dir).read(schema, extra_keys=extra_keys)

    return AgentConfig(
        path=Path(os.path.abspath(path)),
        station=StationConfig(**section("station", STATION_SECTION)),
        ocpp=OcppConfig(**section("ocpp", OCPP_SECTION, extra_keys=("configuration",))),
        board=BoardConfig(**section("board", BOARD_SECTION)),
        journal=JournalConfig(**section("journal", JOURNAL_SECTION)),
        control=ControlConfig(**section("control", CONTROL_SECTION)),
        charging=ChargingConfig(**section("charging", CHARGING_SECTION)),
        transfer=TransferConfig(**section("transfer", TRANSFER_SECTION)),
        log=LogConfig(**section("log", LOG_SECTION)),
    )


def _parse_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad_line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}: line {bad_line}: invalid TOML: not valid UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # Python 3.11's TOMLDecodeError has no lineno attribute; the position is only in the message.
        message = str(error)
        position = re.search(r" \(at line (\d+), column (\d+)\)$", message)
        if position is None:
            raise ConfigError(f"{path}: invalid TOML: {message}") from None
        reason = message[: position.start()]
        line, column = position.groups()
        raise ConfigError(f"{path}: line {line}: invalid TOML: {reason} (column {column})") from None


def _check_station_id(value: str) -> str:
    if not 1 <= len(value) <= MAX_STATION_ID_LENGTH:
        raise ValueError(f"must be 1 to {MAX_STATION_ID_LENGTH} characters, got {len(value)}")
    # The id becomes a URL path segment and the Basic auth user name, where these are ambiguous.
    for char in value:
        if char in "/:" or char.isspace() or not char.isprintable():
            raise ValueError(f"must not contain {json.dumps(char)}, got {json.dumps(value)}")
    return value


def _max_length(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"at most {limit} characters (OCPP BootNotification), got {len(value)}")
        return value

    return check


def _check_websocket_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("ws", "wss"):
        raise ValueError(f"must start with ws:// or wss://, got {json.dumps(value)}")
    if not parts.hostname:
        raise ValueError(f"has no host name, got {json.dumps(value)}")
    _ = parts.port  # raises ValueError for a port that is not a number or out of range
    # The station id is appended as the last path segment, which a query or fragment would swallow.
    if parts.query or parts.fragment:
        raise ValueError(
            "must not have a query (?) or fragment (#) part: the station id is appended to the path"
        )
    # Credentials in the URL would end up in logs; they belong in [ocpp] password.
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials, put the password in [ocpp] password")
    return value


def _check_tls_url(value: str) -> str:
    if value and urlsplit(value).scheme.lower() != "wss":
        raise ValueError(f"must start with wss://, got {json.dumps(value)}")
    return _check_websocket_url(value) if value else value


def _absolute_paths(*keys: str) -> Callable[[_Section, dict[str, Any]], None]:
    """A check that makes the paths under `keys` absolute, relative ones taken from the config file's directory."""

    def check(section: _Section, values: dict[str, Any]) -> None:
        for key in keys:
            if key in values:
                values[key] = Path(os.path.abspath(section.base_dir / values[key]))

    return check


def _check_reconnect_bounds(section: _Section, values: dict[str, Any]) -> None:
    reconnect_min_s = values.get("reconnect_min_s", OcppConfig.reconnect_min_s)
    reconnect_max_s = values.get("reconnect_max_s", OcppConfig.reconnect_max_s)
    if reconnect_max_s >= reconnect_min_s:
        return
    # Blame the key the user wrote; if both are written, the maximum.
    if "reconnect_max_s" in section.data:
        raise section.error(
            "reconnect_max_s", f"must be >= reconnect_min_s ({reconnect_min_s:g}), got {reconnect_max_s:g}"
        )
    raise section.error(
        "reconnect_min_s",
        f"must be <= reconnect_max_s ({reconnect_max_s:g}, the default), got {reconnect_min_s:g}",
    )


def _read_ocpp_configuration(section: _Section, values: dict[str, Any]) -> None:
    if "configuration" not in section.data:
        return
    table = section.data["configuration"]
    if not isinstance(table, dict):
        raise section.error("configuration", f"expected a table [ocpp.configuration], got {show(table)}")
    configuration: dict[str, str] = {}
    for name, value in table.items():
        where = f"{section.path}: [ocpp.configuration] {name}"
        if not isinstance(value, str | int | bool):
            raise ConfigError(f"{where}: expected a string, integer or boolean, got {show(value)}")
        try:
            # The connector count is the board's, unknown here; OcppConfiguration checks it against the board.
            configuration[name] = ocpp_config.normalise_initial_value(name, value)
        except ValueError as reason:
            raise ConfigError(f"{where}: {reason}") from None
    values["configuration"] = MappingProxyType(configuration)


def _merge_ocpp_key_aliases(section: _Section, values: dict[str, Any]) -> None:
    """The OCPP keys SecurityProfile and AuthorizationKey in [ocpp.configuration] are [ocpp] security_profile
    and password under their OCPP names (agent.ocpp.security)."""
    keys = values.get("configuration", {})
    if "SecurityProfile" in keys:
        profile = int(keys["SecurityProfile"])
        if "security_profile" in values and values["security_profile"] != profile:
            raise section.error("security_profile", f"differs from [ocpp.configuration] SecurityProfile ({profile})")
        values["security_profile"] = profile
    key = keys.get("AuthorizationKey")
    if key:
        if values.get("password") and values["password"] != key:
            raise section.error("password", "differs from [ocpp.configuration] AuthorizationKey")
        values["password"] = key


def _check_certificate_files(section: _Section, values: dict[str, Any]) -> None:
    if not {"csms_ca_file", "client_cert_file", "client_key_file"} & set(values):
        return
    from agent.ocpp import (
        security_certs as certs,  # cryptography: only loaded when certificates are configured
    )

    ca_file = values.get("csms_ca_file")
    if ca_file is not None:
        for number, cert in enumerate(certs.load_pem_certificates(_read_pem(section, values, "csms_ca_file")), 1):
            if not certs.is_ca(cert) or not certs.issued_by(cert, cert):
                raise section.error(
                    "csms_ca_file",
                    f"certificate {number} is not a self-signed root CA certificate ({certs.describe(cert)})",
                )
    has_cert, has_key = "client_cert_file" in values, "client_key_file" in values
    if has_cert != has_key:
        missing = "client_key_file" if has_cert else "client_cert_file"
        raise section.error(missing, "required together with " + ("client_cert_file" if has_cert else "client_key_file"))
    if has_cert:
        chain = certs.load_pem_certificates(_read_pem(section, values, "client_cert_file"))
        try:
            key = certs.load_private_key(_read_pem(section, values, "client_key_file").encode())
        except certs.CertificateError as reason:
            raise section.error("client_key_file", str(reason)) from None
        if not certs.same_public_key(chain[0].public_key(), key.public_key()):
            raise section.error("client_key_file", "is not the key of client_cert_file's (first) certificate")


def _read_pem(section: _Section, values: dict[str, Any], key: str) -> str:
    """The text of a PEM file named by [ocpp] `key`; checks that a certificate file holds certificates."""
    from agent.ocpp import security_certs as certs

    path = values[key]
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a PEM text file"
        raise section.error(key, f"cannot read {path}: {reason}") from None
    if key != "client_key_file":
        try:
            certs.load_pem_certificates(text)
        except certs.CertificateError as reason:
            raise section.error(key, f"{path}: {reason}") from None
    return text


def _check_profile_prerequisites(section: _Section, values: dict[str, Any]) -> None:
    profile = values.get("security_profile", 0)
    if profile == 0:
        return
    where = f"security_profile {profile}"
    scheme = urlsplit(values.get("url", "")).scheme.lower()
    if profile in (1, 2) and not values.get("password"):
        raise section.error("password", f"required by {where} (HTTP Basic auth)")
    if profile == 1 and scheme == "wss":
        raise section.error("url", f"{where} is unsecured transport (ws://); use security_profile 2 for wss://")
    if profile >= 2:
        if scheme != "wss" and not values.get("tls_url"):
            raise section.error("url", f"{where} uses TLS: give a wss:// url (or tls_url)")
        if "csms_ca_file" not in values:
            raise section.error("csms_ca_file", f"required by {where} (the CSMS root certificate(s))")
    if profile == 3 and "client_cert_file" not in values:
        raise section.error("client_cert_file", f"required by {where} (the charge point certificate and key)")


def _check_socket_length(section: _Section, values: dict[str, Any]) -> None:
    if len(os.fsencode(values["socket"])) > MAX_SOCKET_PATH_BYTES:
        raise section.error(
            "socket", f"{values['socket']} is longer than the {MAX_SOCKET_PATH_BYTES} bytes a Unix socket path allows"
        )


def _check_group_name(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*\$?", value):
        raise ValueError(f"not a group name: {json.dumps(value)}")
    return value


def _check_log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, got {json.dumps(value)}")
    return value.lower()


# The sections' keys. Their defaults are the dataclasses' above (OMITTED: an absent key is left to them),
# except paths, whose defaults are made absolute like the values.
STATION_SECTION = Schema({
    "id": String(example="CP-1", empty_ok=True, check=_check_station_id),
    "vendor": String(default=OMITTED, check=_max_length(MAX_VENDOR_LENGTH)),
    "model": String(default=OMITTED, check=_max_length(MAX_MODEL_LENGTH)),
    "serial": String(default=OMITTED, empty_ok=True, check=_max_length(MAX_SERIAL_LENGTH)),
    "firmware_version": String(default=OMITTED, empty_ok=True, check=_max_length(MAX_FIRMWARE_VERSION_LENGTH)),
})  # fmt: skip
OCPP_SECTION = Schema({
    "version": String(default=OMITTED, choices=SUPPORTED_OCPP_VERSIONS),
    "url": String(example="ws://127.0.0.1:9000/ocpp", check=_check_websocket_url),
    "reconnect_min_s": Number(default=OMITTED, above=0),
    "reconnect_max_s": Number(default=OMITTED, above=0),
    "password": String(default=OMITTED, empty_ok=True),
    "security_profile": Integer(default=OMITTED, choices=(0, 1, 2, 3)),
    "authorization_key_encoding": String(default=OMITTED, choices=("hex-decoded", "string")),
    "tls_url": String(default=OMITTED, empty_ok=True, check=_check_tls_url),
    "certificate_renewal_days": Number(default=OMITTED, minimum=0, maximum=3650),
    "csms_ca_file": String(default=OMITTED),
    "client_cert_file": String(default=OMITTED),
    "client_key_file": String(default=OMITTED),
    # and [ocpp.configuration], read by _read_ocpp_configuration
}, checks=(
    _check_reconnect_bounds, _read_ocpp_configuration, _absolute_paths("csms_ca_file", "client_cert_file", "client_key_file"),
    _merge_ocpp_key_aliases, _check_certificate_files, _check_profile_prerequisites,
))  # fmt: skip
BOARD_SECTION = Schema({"file": String(default=DEFAULT_BOARD_FILE)}, checks=(_absolute_paths("file"),))
JOURNAL_SECTION = Schema({
    "path": String(default=DEFAULT_JOURNAL_PATH),
    "max_messages": Integer(default=OMITTED, minimum=100, maximum=10_000_000),
}, checks=(_absolute_paths("path"),))  # fmt: skip
CONTROL_SECTION = Schema({
    "socket": String(default=DEFAULT_CONTROL_SOCKET),
    "group": String(default=OMITTED, empty_ok=True, check=_check_group_name),
}, checks=(_absolute_paths("socket"), _check_socket_length))  # fmt: skip
CHARGING_SECTION = Schema({
    # IEC 61851-1: 6 A is the lowest current the PWM duty cycle can announce, 80 A the highest.
    "max_current_a": Number(default=OMITTED, minimum=6, maximum=80),
    "stop_on_shutdown": Boolean(default=OMITTED),
    "resume_after_power_loss": Boolean(default=OMITTED),
    "reservations": Boolean(default=OMITTED),
    "meter_failure": String(default=OMITTED, choices=("stop", "continue")),
    "control_period_s": Number(default=OMITTED, minimum=0.001, maximum=0.1),
    "meter_poll_s": Number(default=OMITTED, above=0),
})  # fmt: skip
TRANSFER_SECTION = Schema({
    "firmware_deadline_s": Number(default=OMITTED, minimum=0, maximum=24 * 3600),
    "upload_deadline_s": Number(default=OMITTED, minimum=1, maximum=24 * 3600),
    "read_timeout_s": Number(default=OMITTED, minimum=1, maximum=600),
})  # fmt: skip
LOG_SECTION = Schema({"level": String(default=OMITTED, check=_check_log_level)})


def _ocpp_configuration_example_lines() -> list[str]:
    """One commented line per settable OCPP key, with its default, so the example never drifts."""
    lines = []
    for key in ocpp_config.KEYS.values():
        if key.readonly:
            continue
        match key.kind:
            case "bool" | "int":
                value = key.default
            case _:
                value = json.dumps(key.default)
        lines.append(f"# {key.name} = {value}")
    return lines


_EXAMPLE_TEMPLATE = """\
# evse-agent configuration (TOML).
# Only [station] id and [ocpp] url are required; every other value shown is the default.
# Relative paths are relative to the directory of this file.

[station]
# Charge point identity, sent as the last path segment of the OCPP URL:
# 1 to 48 characters, no "/", ":" or whitespace.
id = "CP-1"
# Reported in BootNotification. OCPP 1.6 limits: vendor and model 20 characters, serial 25, firmware 50.
vendor = "evse-agent"
model = "sim"
serial = ""
# firmware_version = "{firmware_version}"  # default: the installed evse-agent version

[ocpp]
# Protocol version; only "1.6" (OCPP 1.6J) for now.
version = "1.6"
# CSMS endpoint (ws:// or wss://). The agent connects to <url>/<percent-encoded station id>.
url = "ws://127.0.0.1:9000/ocpp"
# Bounds of the reconnect back-off, in seconds.
reconnect_min_s = 1.0
reconnect_max_s = 60.0
# The response timeout and the WebSocket ping interval are the OCPP keys MessageTimeout and
# WebSocketPingInterval in [ocpp.configuration].
# HTTP Basic auth password (the user name is the station id); empty = no auth. Never logged. It is the
# initial OCPP AuthorizationKey: the CSMS can replace it (ChangeConfiguration), and editing it here later
# replaces the CSMS's value again.
password = ""
# OCPP 1.6 security profile at first start (the CSMS can raise it, never lower it; editing it here later
# replaces the CSMS's value): 0 none, 1 Basic auth over ws://, 2 TLS + Basic auth, 3 TLS with the charge
# point certificate (mutual TLS).
security_profile = 0
# How the AuthorizationKey becomes the Basic-auth password: "hex-decoded" sends the bytes of a key of 32
# to 40 hexadecimal digits (OCPP-J 1.6 §6.2.2, OCTT) and any other key as text; "string" always the text.
authorization_key_encoding = "hex-decoded"
# Endpoint for profiles 2 and 3 if the CSMS serves TLS elsewhere; default: url with wss://.
# tls_url = "wss://csms.example/ocpp"
# CSMS root certificate(s) (PEM, self-signed CA) that TLS trusts; required for profiles 2 and 3. They are
# copied into the certificate store under the journal's directory, where the CSMS manages them.
# csms_ca_file = "csms-root.pem"
# Charge point certificate (PEM, leaf first) and its unencrypted key for profile 3; the CSMS can renew
# them (SignCertificate), the key is generated on the station then.
# client_cert_file = "cp-cert.pem"
# client_key_file = "cp-key.pem"
# Ask the CSMS for a new charge point certificate (SignCertificate with a CSR made here) this many days
# before the installed one expires, once a day until a new one is installed; 0 = only when the CSMS asks.
certificate_renewal_days = 30

[ocpp.configuration]
# Initial values of OCPP configuration keys, set by the station maker. Values the CSMS sets with
# ChangeConfiguration are stored and win over these. Booleans and integers may be written as TOML values
# or as the OCPP strings ("true", "300"). Uncomment to change:
{ocpp_configuration}

[board]
# Board description: which hardware back-end to use and its limits.
file = "{board_file}"

[journal]
# SQLite database of queued OCPP messages and transaction state.
path = "{journal_path}"
# Most messages kept queued during an outage. Beyond it the oldest queued MeterValues are dropped
# first; StartTransaction and StopTransaction are never dropped.
max_messages = 100000

[control]
# Unix socket of the local control interface (mode 0660).
socket = "{control_socket}"
# Group whose members may use it (the `evse` CLI: status, stop, availability, tests...), besides root
# and the agent's own user; "" = nobody else. Create it and add technicians: usermod -aG evse NAME.
group = "{control_group}"

[charging]
# Upper limit of the offered current in amperes (6 to 80); the board and the cable can lower it further.
max_current_a = 32.0
# Whether stopping the agent (SIGTERM) also stops running transactions.
stop_on_shutdown = false
# After a crash or power cut: continue the interrupted transaction when the EV is still plugged in
# (false: close it with reason PowerLoss and its last journaled meter value).
resume_after_power_loss = false
# Whether the CSMS may reserve connectors (OCPP ReserveNow); false answers every reservation Rejected.
# Reserving "any connector" (connector 0) is the OCPP key ReserveConnectorZeroSupported in [ocpp.configuration].
reservations = true
# A meter that fails 3 polls in a row: "stop" ends the session (status Faulted, PowerMeterFailure);
# "continue" keeps charging and reports PowerMeterFailure as a warning (the energy of the outage is not
# metered; meterStop is the last good reading). New sessions wait for a working meter either way.
meter_failure = "stop"
# Period of the control loop in seconds (0.001 to 0.1).
control_period_s = 0.01
# How often to read the meter, in seconds.
meter_poll_s = 1.0

[transfer]
# Firmware downloads, diagnostics and log uploads run in workers of their own, each within a total
# deadline in seconds, whatever the server does (one that sends a byte now and then cannot hold them).
# Firmware: 0 = 10 minutes, longer when the board's size limit needs it at 256 KiB/s.
firmware_deadline_s = 0
upload_deadline_s = 300
# No byte received for this long ends a transfer early.
read_timeout_s = 30

[log]
# debug, info, warning or error.
level = "info"
"""


def dump_example_config(board_file: str = DEFAULT_BOARD_FILE) -> str:
    """A commented example config covering every key, for `evse config example`, the README and the
    skeleton `evse install-service` writes (with its own board file)."""
    return _EXAMPLE_TEMPLATE.format(
        firmware_version=package_version(),
        ocpp_configuration="\n".join(_ocpp_configuration_example_lines()),
        board_file=board_file,
        control_group=DEFAULT_CONTROL_GROUP,
        journal_path=DEFAULT_JOURNAL_PATH,
        control_socket=DEFAULT_CONTROL_SOCKET,
    )
