"""OCPP 1.6 configuration keys: the key table and the GetConfiguration / ChangeConfiguration rules.

Pure logic: no I/O and no `ocpp` import. The owner persists accepted changes through `on_change` and hands
them back as `stored` on the next start.

Values are kept as the strings OCPP puts on the wire, in canonical form: booleans "true"/"false", integers
without leading zeros, comma-separated lists without blanks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

log = logging.getLogger(__name__)

Access = Literal["R", "RW", "W"]
Kind = Literal["bool", "int", "csl", "str"]
ChangeStatus = Literal["Accepted", "Rejected", "NotSupported", "RebootRequired"]

# GetConfiguration.conf and ChangeConfiguration.req carry values as CiString500.
MAX_VALUE_LENGTH = 500
# OCPP integers are 32-bit in every implementation we talk to; the cap also keeps timers sane.
INT32_MAX = 2**31 - 1

# The measurands our meter model can supply (OCPP 1.6 §7.31). Anything else is Rejected (§3.16.4).
SUPPORTED_MEASURANDS = frozenset(
    {
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
        "Current.Offered",
        "Voltage",
    }
)
MEASURAND_LIST_MAX_LENGTH = 8

PHASE_ROTATIONS = ("RST", "RTS", "SRT", "STR", "TRS", "TSR", "Unknown", "NotApplicable")
_PHASE_ROTATION_ITEM = re.compile(r"([0-9]+)\.(" + "|".join(PHASE_ROTATIONS) + r")")
_DECIMAL_INTEGER = re.compile(r"-?[0-9]+")  # not int(): that also takes "1_000", " 5" and non-ASCII digits


@dataclass(frozen=True)
class KeyDef:
    name: str
    access: Access
    kind: Kind
    default: str
    minimum: int | None = None
    maximum: int | None = None
    allowed: frozenset[str] | None = None  # permitted members of a CSL
    reboot_required: bool = False
    max_items: int | None = None  # longest accepted CSL
    maker_settable: bool = False  # read-only to the CSMS, but the station maker may choose it (config file)

    @property
    def readonly(self) -> bool:
        return self.access == "R"

    @property
    def readable(self) -> bool:
        return self.access != "W"


def _measurand_list(name: str, default: str) -> KeyDef:
    return KeyDef(
        name, "RW", "csl", default, allowed=SUPPORTED_MEASURANDS, max_items=MEASURAND_LIST_MAX_LENGTH
    )


_MAX_LENGTH = str(MEASURAND_LIST_MAX_LENGTH)

_KEY_TABLE = (
    KeyDef("AllowOfflineTxForUnknownId", "RW", "bool", "false"),
    KeyDef("AuthorizationCacheEnabled", "RW", "bool", "true"),
    KeyDef("AuthorizeRemoteTxRequests", "RW", "bool", "true"),
    KeyDef("ClockAlignedDataInterval", "RW", "int", "0", minimum=0),
    KeyDef("ConnectionTimeOut", "RW", "int", "60", minimum=1),
    # Installer-provided wiring facts; "Unknown" until the station maker or the CSMS says otherwise.
    KeyDef("ConnectorPhaseRotation", "RW", "csl", "0.Unknown"),
    KeyDef("GetConfigurationMaxKeys", "R", "int", "50"),
    KeyDef("HeartbeatInterval", "RW", "int", "300", minimum=0),
    KeyDef("LocalAuthListEnabled", "RW", "bool", "true"),
    KeyDef("LocalAuthListMaxLength", "R", "int", "10000"),
    KeyDef("LocalAuthorizeOffline", "RW", "bool", "true"),
    KeyDef("LocalPreAuthorize", "RW", "bool", "false"),
    _measurand_list("MeterValuesAlignedData", "Energy.Active.Import.Register"),
    KeyDef("MeterValuesAlignedDataMaxLength", "R", "int", _MAX_LENGTH),
    _measurand_list(
        "MeterValuesSampledData", "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage"
    ),
    KeyDef("MeterValuesSampledDataMaxLength", "R", "int", _MAX_LENGTH),
    KeyDef("MeterValueSampleInterval", "RW", "int", "60", minimum=0),
    KeyDef("MinimumStatusDuration", "RW", "int", "0", minimum=0),
    # The real value comes from the board and is set by OcppConfiguration.__init__.
    KeyDef("NumberOfConnectors", "R", "int", "1", minimum=1),
    KeyDef("ReserveConnectorZeroSupported", "R", "bool", "true", maker_settable=True),  # Reservation profile
    KeyDef("ResetRetries", "RW", "int", "1", minimum=0),
    KeyDef("SendLocalListMaxLength", "R", "int", "1000"),
    KeyDef("StopTransactionOnEVSideDisconnect", "RW", "bool", "true"),
    KeyDef("StopTransactionOnInvalidId", "RW", "bool", "true"),
    _measurand_list("StopTxnAlignedData", ""),
    KeyDef("StopTxnAlignedDataMaxLength", "R", "int", _MAX_LENGTH),
    _measurand_list("StopTxnSampledData", "Energy.Active.Import.Register"),
    KeyDef("StopTxnSampledDataMaxLength", "R", "int", _MAX_LENGTH),
    KeyDef("SupportedFeatureProfiles", "R", "csl",
           "Core,FirmwareManagement,LocalAuthListManagement,Reservation,RemoteTrigger,SmartCharging"),
    KeyDef("SupportedFileTransferProtocols", "R", "csl", "FTP,HTTP,HTTPS"),  # errata; agent.ocpp.transfer
    KeyDef("TransactionMessageAttempts", "RW", "int", "3", minimum=1),
    KeyDef("TransactionMessageRetryInterval", "RW", "int", "60", minimum=0),
    KeyDef("UnlockConnectorOnEVSideDisconnect", "RW", "bool", "true"),
    # A change takes effect on the next connection, which needs no reboot.
    KeyDef("WebSocketPingInterval", "RW", "int", "60", minimum=0),
    KeyDef("MessageTimeout", "RW", "int", "30", minimum=1),  # errata 3.82
    # Security whitepaper edition 2 (agent.ocpp.security checks changes of these beyond their type).
    KeyDef("AuthorizationKey", "W", "str", ""),  # write-only: never reported, never logged
    KeyDef("SecurityProfile", "RW", "int", "0", minimum=0, maximum=3),  # raised only, never lowered
    KeyDef("CpoName", "RW", "str", ""),
    KeyDef("CertificateSignedMaxChainSize", "R", "int", "10000"),  # characters, the schema's limit
    KeyDef("CertificateStoreMaxLength", "R", "int", "20"),  # root certificates, both kinds together
    KeyDef("AdditionalRootCertificateCheck", "R", "bool", "false"),
    # Smart Charging (agent.core.smart_charging): what the station can hold and compute
    KeyDef("ChargeProfileMaxStackLevel", "R", "int", "10"),
    KeyDef("ChargingScheduleAllowedChargingRateUnit", "R", "csl", "Current,Power"),
    KeyDef("ChargingScheduleMaxPeriods", "R", "int", "48"),
    KeyDef("MaxChargingProfilesInstalled", "R", "int", "20"),
)

# Every key we know, in the order GetConfiguration reports them. Names are case-sensitive, as in the spec.
KEYS: Mapping[str, KeyDef] = MappingProxyType({key.name: key for key in _KEY_TABLE})


def normalise_value(key: KeyDef, value: str, number_of_connectors: int | None = None) -> str:
    """Return `value` in canonical form, or raise ValueError saying why it is invalid for `key`.

    The message does not name the key; callers prefix it. With `number_of_connectors` None, connector ids
    in ConnectorPhaseRotation are checked for form only.
    """
    if len(value) > MAX_VALUE_LENGTH:
        raise ValueError(f"longer than {MAX_VALUE_LENGTH} characters")
    match key.kind:
        case "bool":
            return _normalise_bool(value)
        case "int":
            return _normalise_int(key, value)
        case "csl":
            return _normalise_list(key, value, number_of_connectors)
        case _:
            return value


def normalise_initial_value(
    name: str, value: str | int | bool, number_of_connectors: int | None = None
) -> str:
    """Validate a station maker's initial value (from TOML) and return its canonical OCPP string.

    Accepts the OCPP string form, or the matching TOML type: a bool for boolean keys, an integer for
    integer keys. Read-only keys describe what the agent can do, so they cannot be set. Raises ValueError
    with a message that does not name the key.
    """
    key = KEYS.get(name)
    if key is None:
        raise ValueError("unknown OCPP configuration key")
    if key.readonly and not key.maker_settable:
        raise ValueError("read-only key, its value is fixed by the agent")
    if isinstance(value, bool):
        if key.kind != "bool":
            raise ValueError(f"expected {_expected_toml_type(key)}, got {str(value).lower()}")
        return "true" if value else "false"
    if isinstance(value, int):
        if key.kind != "int":
            raise ValueError(f"expected {_expected_toml_type(key)}, got {value}")
        return normalise_value(key, str(value), number_of_connectors)
    if isinstance(value, str):
        return normalise_value(key, value, number_of_connectors)
    raise ValueError(f"expected {_expected_toml_type(key)}, got {type(value).__name__}")


def _expected_toml_type(key: KeyDef) -> str:
    return {"bool": "true or false", "int": "an integer"}.get(key.kind, "a string")


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # double quotes, as the value would be written in TOML


def _shown(key: KeyDef, value: str) -> str:
    """A value for the log. Write-only keys hold secrets (AuthorizationKey), so theirs are hidden."""
    return _quoted(value) if key.readable else "<hidden>"


def _normalise_bool(value: str) -> str:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise ValueError(f'expected "true" or "false", got {_quoted(value)}')
    return lowered


def _normalise_int(key: KeyDef, value: str) -> str:
    if not _DECIMAL_INTEGER.fullmatch(value):
        raise ValueError(f"expected a decimal integer, got {_quoted(value)}")
    number = int(value)
    if key.minimum is not None and number < key.minimum:
        raise ValueError(f"must be >= {key.minimum}, got {number}")
    maximum = INT32_MAX if key.maximum is None else key.maximum
    if number > maximum:
        raise ValueError(f"must be <= {maximum}, got {number}")
    return str(number)


def split_list(value: str) -> list[str]:
    """Items of a comma-separated list; "" is the empty list."""
    return [item.strip() for item in value.split(",")] if value.strip() else []


def _normalise_list(key: KeyDef, value: str, number_of_connectors: int | None) -> str:
    items = split_list(value)
    if "" in items:
        raise ValueError(f"empty item in list {_quoted(value)}")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise ValueError(f"duplicate item {_quoted(duplicates[0])}")
    if key.max_items is not None and len(items) > key.max_items:
        raise ValueError(f"at most {key.max_items} items allowed, got {len(items)}")
    if key.allowed is not None:
        # One bad member rejects the whole list: no partial change (§3.16.4).
        unsupported = [item for item in items if item not in key.allowed]
        if unsupported:
            raise ValueError(
                f"unsupported value {_quoted(unsupported[0])}, supported: {', '.join(sorted(key.allowed))}"
            )
    if key.name == "ConnectorPhaseRotation":
        _check_phase_rotation(items, number_of_connectors)
    return ",".join(items)


def _check_phase_rotation(items: list[str], number_of_connectors: int | None) -> None:
    seen_connectors: set[int] = set()
    for item in items:
        match = _PHASE_ROTATION_ITEM.fullmatch(item)
        if match is None:
            raise ValueError(
                f'expected items like "0.RST" (connectorId.{"|".join(PHASE_ROTATIONS)}), got {_quoted(item)}'
            )
        connector_id = int(match.group(1))
        if number_of_connectors is not None and connector_id > number_of_connectors:
            raise ValueError(
                f"connector {connector_id} does not exist (NumberOfConnectors is {number_of_connectors})"
            )
        if connector_id in seen_connectors:
            raise ValueError(f"connector {connector_id} is listed twice")
        seen_connectors.add(connector_id)


_NO_VALUES: Mapping[str, str] = MappingProxyType({})


class OcppConfiguration:
    """The live OCPP configuration of one charge point.

    Precedence, lowest first: the table's defaults, the station maker's `initial` values (config file),
    and `stored` values that the CSMS set earlier. `on_change(name, value)` is called after every accepted
    ChangeConfiguration with the canonical value; the caller persists it and applies side effects.
    `check_change(name, old, new)` may refuse a well-formed ChangeConfiguration by returning the reason
    (rules beyond a key's type, e.g. SecurityProfile can only be raised); it must not quote secrets.
    """

    def __init__(
        self,
        number_of_connectors: int,
        initial: Mapping[str, str | int | bool] = _NO_VALUES,
        stored: Mapping[str, str] = _NO_VALUES,
        on_change: Callable[[str, str], None] | None = None,
        check_change: Callable[[str, str, str], str | None] | None = None,
    ) -> None:
        if isinstance(number_of_connectors, bool) or not isinstance(number_of_connectors, int):
            raise TypeError(f"number_of_connectors must be an int, got {number_of_connectors!r}")
        if number_of_connectors < 1:
            raise ValueError(f"number_of_connectors must be >= 1, got {number_of_connectors}")
        self.number_of_connectors = number_of_connectors
        self._on_change = on_change
        self._check_change = check_change
        self._values = {key.name: key.default for key in _KEY_TABLE}
        self._values["NumberOfConnectors"] = str(number_of_connectors)

        for name, value in initial.items():
            try:
                self._values[name] = normalise_initial_value(name, value, number_of_connectors)
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None

        for name, value in stored.items():
            try:
                self._values[name] = self._normalise_stored(name, value)
            except ValueError as error:
                # A stale database must not stop the station from booting; fall back to the lower layers.
                log.warning("ignoring stored OCPP configuration %s: %s", name, error)

    def _normalise_stored(self, name: str, value: str) -> str:
        key = KEYS.get(name)
        if key is None:
            raise ValueError("unknown key")
        if key.readonly:
            raise ValueError("read-only key")
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return normalise_value(key, value, self.number_of_connectors)

    def _key(self, name: str, kind: Kind | None = None) -> KeyDef:
        key = KEYS.get(name)
        if key is None:
            raise KeyError(f"unknown OCPP configuration key {name!r}")
        if kind is not None and key.kind != kind:
            raise TypeError(f"{name} is of kind {key.kind!r}, not {kind!r}")
        return key

    def get(self, name: str) -> str:
        """The raw (canonical) string value of a key, write-only keys included."""
        self._key(name)
        return self._values[name]

    def get_int(self, name: str) -> int:
        self._key(name, "int")
        return int(self._values[name])

    def get_bool(self, name: str) -> bool:
        self._key(name, "bool")
        return self._values[name] == "true"

    def get_list(self, name: str) -> list[str]:
        self._key(name, "csl")
        return split_list(self._values[name])

    def set_internal(self, name: str, value: str) -> bool:
        """Set a key on the agent's own behalf, e.g. HeartbeatInterval from BootNotification.conf (§4.2).

        Unlike change(), read-only keys may be set. The value usually comes from the CSMS, so an invalid
        one is ignored with a warning instead of raising; returns whether it was applied. `on_change` is
        called as for change(), except for read-only keys, which are never persisted.
        """
        key = self._key(name)
        try:
            new_value = normalise_value(key, value, self.number_of_connectors)
        except ValueError as error:
            log.warning("ignoring %s=%s: %s", name, _shown(key, value), error if key.readable else "invalid")
            return False
        self._store(key, new_value)
        return True

    def get_configuration(self, keys: Iterable[str] | None = None) -> tuple[list[dict], list[str]]:
        """Answer GetConfiguration: (configurationKey entries, unknownKey names).

        No keys (None or empty) means every readable key. Write-only keys are never reported, not even
        as unknown. Duplicates in the request are answered once.
        """
        requested = list(dict.fromkeys(keys or ())) or [key.name for key in _KEY_TABLE]
        entries: list[dict] = []
        unknown: list[str] = []
        for name in requested:
            key = KEYS.get(name)
            if key is None:
                unknown.append(name)
            elif key.readable:
                entries.append({"key": name, "readonly": key.readonly, "value": self._values[name]})
        return entries, unknown

    def change(self, name: str, value: str) -> ChangeStatus:
        """Apply ChangeConfiguration and return its status (OCPP 1.6 §5.3, §9.1)."""
        key = KEYS.get(name)
        if key is None:
            log.info("ChangeConfiguration %s: NotSupported (unknown key)", name)
            return "NotSupported"
        if key.readonly:
            log.info("ChangeConfiguration %s: Rejected (read-only)", name)
            return "Rejected"
        try:
            new_value = normalise_value(key, value, self.number_of_connectors)
        except ValueError as error:
            reason = error if key.readable else "invalid"  # the reason may quote a secret value
            log.info("ChangeConfiguration %s=%s: Rejected (%s)", name, _shown(key, value), reason)
            return "Rejected"
        refusal = self._check_change(name, self._values[name], new_value) if self._check_change else None
        if refusal is not None:
            log.info("ChangeConfiguration %s=%s: Rejected (%s)", name, _shown(key, value), refusal)
            return "Rejected"
        self._store(key, new_value)
        status: ChangeStatus = "RebootRequired" if key.reboot_required else "Accepted"
        log.info("ChangeConfiguration %s=%s: %s", name, _shown(key, value), status)
        return status

    def _store(self, key: KeyDef, value: str) -> None:
        """Set a canonical value and report it to on_change; if that fails, the change is undone."""
        old_value = self._values[key.name]
        self._values[key.name] = value  # before the callback, so it sees the new value through get()
        if self._on_change is None or key.readonly:  # read-only values are the agent's, never persisted
            return
        try:
            self._on_change(key.name, value)
        except BaseException:
            self._values[key.name] = old_value  # not persisted, so not changed
            raise
