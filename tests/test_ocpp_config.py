import logging

import pytest

from agent.ocpp.v16.config import (
    INT32_MAX,
    KEYS,
    SUPPORTED_MEASURANDS,
    OcppConfiguration,
    normalise_initial_value,
    normalise_value,
)

READ_ONLY_KEYS = sorted(name for name, key in KEYS.items() if key.access == "R")
MEASURAND_KEYS = [
    "MeterValuesAlignedData",
    "MeterValuesSampledData",
    "StopTxnAlignedData",
    "StopTxnSampledData",
]


class Recorder:
    """on_change callback that remembers its calls."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def __call__(self, name: str, value: str) -> None:
        self.calls.append((name, value))


@pytest.fixture
def changes() -> Recorder:
    return Recorder()


@pytest.fixture
def config(changes: Recorder) -> OcppConfiguration:
    return OcppConfiguration(number_of_connectors=2, on_change=changes)


# --- key table -------------------------------------------------------------------------------------------


def test_table_access_and_types_follow_the_spec():
    expected = {
        "AllowOfflineTxForUnknownId": ("RW", "bool", "false"),
        "AuthorizationCacheEnabled": ("RW", "bool", "true"),
        "AuthorizeRemoteTxRequests": ("RW", "bool", "true"),
        "ClockAlignedDataInterval": ("RW", "int", "0"),
        "ConnectionTimeOut": ("RW", "int", "60"),
        "ConnectorPhaseRotation": ("RW", "csl", "0.Unknown"),
        "GetConfigurationMaxKeys": ("R", "int", "50"),
        "HeartbeatInterval": ("RW", "int", "300"),
        "LocalAuthListEnabled": ("RW", "bool", "true"),
        "LocalAuthListMaxLength": ("R", "int", "10000"),
        "LocalAuthorizeOffline": ("RW", "bool", "true"),
        "LocalPreAuthorize": ("RW", "bool", "false"),
        "MeterValuesAlignedData": ("RW", "csl", "Energy.Active.Import.Register"),
        "MeterValuesAlignedDataMaxLength": ("R", "int", "8"),
        "MeterValuesSampledData": (
            "RW",
            "csl",
            "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage",
        ),
        "MeterValuesSampledDataMaxLength": ("R", "int", "8"),
        "MeterValueSampleInterval": ("RW", "int", "60"),
        "MinimumStatusDuration": ("RW", "int", "0"),
        "NumberOfConnectors": ("R", "int", "1"),
        "ReserveConnectorZeroSupported": ("R", "bool", "true"),  # the station maker may set it
        "ResetRetries": ("RW", "int", "1"),
        "SendLocalListMaxLength": ("R", "int", "1000"),
        "StopTransactionOnEVSideDisconnect": ("RW", "bool", "true"),
        "StopTransactionOnInvalidId": ("RW", "bool", "true"),
        "StopTxnAlignedData": ("RW", "csl", ""),
        "StopTxnAlignedDataMaxLength": ("R", "int", "8"),
        "StopTxnSampledData": ("RW", "csl", "Energy.Active.Import.Register"),
        "StopTxnSampledDataMaxLength": ("R", "int", "8"),
        "SupportedFeatureProfiles": ("R", "csl",
                                     "Core,FirmwareManagement,LocalAuthListManagement,Reservation,RemoteTrigger,"
                                     "SmartCharging"),
        "SupportedFileTransferProtocols": ("R", "csl", "FTP,HTTP,HTTPS"),
        "TransactionMessageAttempts": ("RW", "int", "3"),
        "TransactionMessageRetryInterval": ("RW", "int", "60"),
        "UnlockConnectorOnEVSideDisconnect": ("RW", "bool", "true"),
        "WebSocketPingInterval": ("RW", "int", "60"),
        "MessageTimeout": ("RW", "int", "30"),
        # security whitepaper edition 2
        "AuthorizationKey": ("W", "str", ""),
        "SecurityProfile": ("RW", "int", "0"),
        "CpoName": ("RW", "str", ""),
        "CertificateSignedMaxChainSize": ("R", "int", "10000"),
        "CertificateStoreMaxLength": ("R", "int", "20"),
        "AdditionalRootCertificateCheck": ("R", "bool", "false"),
        # Smart Charging
        "ChargeProfileMaxStackLevel": ("R", "int", "10"),
        "ChargingScheduleAllowedChargingRateUnit": ("R", "csl", "Current,Power"),
        "ChargingScheduleMaxPeriods": ("R", "int", "48"),
        "MaxChargingProfilesInstalled": ("R", "int", "20"),
    }
    assert {name: (key.access, key.kind, key.default) for name, key in KEYS.items()} == expected


@pytest.mark.parametrize("name", list(KEYS))
def test_every_default_is_valid(name):
    key = KEYS[name]
    assert normalise_value(key, key.default, number_of_connectors=1) == key.default


def test_no_key_needs_a_reboot_yet():
    # WebSocketPingInterval applies on the next connection, which is not a reboot.
    assert not any(key.reboot_required for key in KEYS.values())


# --- construction ----------------------------------------------------------------------------------------


def test_defaults_and_number_of_connectors(config):
    assert config.get("HeartbeatInterval") == "300"
    assert config.get_int("HeartbeatInterval") == 300
    assert config.get_bool("AuthorizeRemoteTxRequests") is True
    assert config.get_list("StopTxnAlignedData") == []
    assert config.get_list("MeterValuesSampledData") == [
        "Energy.Active.Import.Register",
        "Power.Active.Import",
        "Current.Import",
        "Voltage",
    ]
    assert config.get("NumberOfConnectors") == "2"


@pytest.mark.parametrize("count", [0, -1])
def test_number_of_connectors_must_be_positive(count):
    with pytest.raises(ValueError, match="number_of_connectors"):
        OcppConfiguration(count)


def test_initial_values_are_normalised():
    config = OcppConfiguration(
        1,
        initial={
            "HeartbeatInterval": 120,
            "MeterValueSampleInterval": "015",
            "LocalPreAuthorize": True,
            "AuthorizeRemoteTxRequests": "FALSE",
            "MeterValuesSampledData": "Voltage, Current.Import",
        },
    )
    assert config.get("HeartbeatInterval") == "120"
    assert config.get("MeterValueSampleInterval") == "15"
    assert config.get("LocalPreAuthorize") == "true"
    assert config.get("AuthorizeRemoteTxRequests") == "false"
    assert config.get("MeterValuesSampledData") == "Voltage,Current.Import"


@pytest.mark.parametrize(
    ("initial", "message"),
    [
        ({"HeartbeatIntervall": 60}, "HeartbeatIntervall: unknown OCPP configuration key"),
        ({"NumberOfConnectors": 3}, "NumberOfConnectors: read-only key"),
        ({"HeartbeatInterval": True}, "HeartbeatInterval: expected an integer, got true"),
        ({"HeartbeatInterval": -5}, "HeartbeatInterval: must be >= 0, got -5"),
        ({"LocalPreAuthorize": 1}, "LocalPreAuthorize: expected true or false, got 1"),
        ({"LocalPreAuthorize": "yes"}, 'LocalPreAuthorize: expected "true" or "false", got "yes"'),
        ({"StopTxnSampledData": 5}, "StopTxnSampledData: expected a string, got 5"),
        ({"StopTxnSampledData": "SoC"}, 'StopTxnSampledData: unsupported value "SoC"'),
        ({"ConnectorPhaseRotation": "3.RST"}, "ConnectorPhaseRotation: connector 3 does not exist"),
    ],
)
def test_invalid_initial_value_raises_naming_the_key(initial, message):
    with pytest.raises(ValueError) as raised:
        OcppConfiguration(2, initial=initial)
    assert str(raised.value).startswith(message)


def test_stored_values_win_over_initial_values():
    config = OcppConfiguration(
        1, initial={"HeartbeatInterval": 120, "LocalPreAuthorize": True}, stored={"HeartbeatInterval": "900"}
    )
    assert config.get("HeartbeatInterval") == "900"
    assert config.get("LocalPreAuthorize") == "true"


def test_invalid_stored_values_are_ignored_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="agent.ocpp.v16.config")
    config = OcppConfiguration(
        1,
        initial={"HeartbeatInterval": 120},
        stored={
            "HeartbeatInterval": "soon",  # invalid: the initial value stays
            "NoSuchKey": "1",  # e.g. a key a later version dropped
            "NumberOfConnectors": "4",  # read-only keys are never stored by a CSMS change
            "MeterValueSampleInterval": "30",  # valid: applied
        },
    )
    assert config.get("HeartbeatInterval") == "120"
    assert config.get("NumberOfConnectors") == "1"
    assert config.get("MeterValueSampleInterval") == "30"
    warnings = caplog.text
    assert "HeartbeatInterval" in warnings
    assert "NoSuchKey" in warnings
    assert "NumberOfConnectors" in warnings
    assert "MeterValueSampleInterval" not in warnings


# --- typed getters ---------------------------------------------------------------------------------------


def test_unknown_key_in_getter_is_a_programming_error(config):
    with pytest.raises(KeyError, match="NoSuchKey"):
        config.get("NoSuchKey")


def test_typed_getter_of_the_wrong_kind_is_a_programming_error(config):
    with pytest.raises(TypeError, match="HeartbeatInterval is of kind .int., not .bool."):
        config.get_bool("HeartbeatInterval")


# --- ChangeConfiguration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", READ_ONLY_KEYS)
def test_read_only_keys_are_rejected(config, changes, name):
    before = config.get(name)
    assert config.change(name, "5") == "Rejected"
    assert config.get(name) == before
    assert changes.calls == []


@pytest.mark.parametrize("name", ["NoSuchKey", "heartbeatinterval", "HEARTBEATINTERVAL"])
def test_unknown_keys_are_not_supported_and_names_are_case_sensitive(config, changes, name):
    assert config.change(name, "60") == "NotSupported"
    assert config.get("HeartbeatInterval") == "300"
    assert changes.calls == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HeartbeatInterval", "abc"),
        ("HeartbeatInterval", ""),
        ("HeartbeatInterval", "1.5"),
        ("HeartbeatInterval", "0x10"),
        ("HeartbeatInterval", "1_000"),
        ("HeartbeatInterval", " 60"),
        ("HeartbeatInterval", "-1"),
        ("HeartbeatInterval", str(INT32_MAX + 1)),
        ("ConnectionTimeOut", "0"),
        ("TransactionMessageAttempts", "0"),
        ("MessageTimeout", "0"),
        ("WebSocketPingInterval", "-1"),
        ("AuthorizeRemoteTxRequests", "yes"),
        ("AuthorizeRemoteTxRequests", "1"),
        ("AuthorizeRemoteTxRequests", ""),
        ("LocalPreAuthorize", "true "),
    ],
)
def test_invalid_int_or_bool_is_rejected_and_the_old_value_kept(config, changes, name, value):
    before = config.get(name)
    assert config.change(name, value) == "Rejected"
    assert config.get(name) == before
    assert changes.calls == []


@pytest.mark.parametrize("name", MEASURAND_KEYS)
@pytest.mark.parametrize(
    "value",
    [
        "Frequency",
        "Energy.Active.Import.Register,SoC",  # one unsupported member rejects the whole list
        "energy.active.import.register",  # measurands are case-sensitive
        "Voltage,,Current.Import",
        "Voltage,",
        "Voltage,Voltage",
        ",".join(sorted(SUPPORTED_MEASURANDS)) + ",Power.Offered",
    ],
)
def test_invalid_measurand_list_is_rejected_without_partial_change(config, changes, name, value):
    before = config.get(name)
    assert config.change(name, value) == "Rejected"
    assert config.get(name) == before
    assert changes.calls == []


@pytest.mark.parametrize(
    "value", ["RST", "0.XYZ", "0.rst", "a.RST", "3.RST", "0.RST,0.RTS", "0.RST;1.RST", "-1.RST"]
)
def test_invalid_phase_rotation_is_rejected(config, value):
    assert config.change("ConnectorPhaseRotation", value) == "Rejected"
    assert config.get("ConnectorPhaseRotation") == "0.Unknown"


def test_value_longer_than_cistring500_is_rejected(config):
    assert config.change("HeartbeatInterval", "0" * 501) == "Rejected"


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("HeartbeatInterval", "60", "60"),
        ("HeartbeatInterval", "0060", "60"),
        ("HeartbeatInterval", "0", "0"),
        ("WebSocketPingInterval", "0", "0"),
        ("AuthorizeRemoteTxRequests", "FALSE", "false"),
        ("AuthorizeRemoteTxRequests", "True", "true"),
        ("MeterValuesSampledData", "Voltage , Current.Offered", "Voltage,Current.Offered"),
        ("StopTxnSampledData", "", ""),
        ("ConnectorPhaseRotation", "0.RST,1.RTS,2.NotApplicable", "0.RST,1.RTS,2.NotApplicable"),
        ("ConnectorPhaseRotation", "1.Unknown", "1.Unknown"),
    ],
)
def test_valid_change_is_accepted_stored_and_reported_normalised(config, changes, name, value, stored):
    assert config.change(name, value) == "Accepted"
    assert config.get(name) == stored
    assert changes.calls == [(name, stored)]


def test_every_supported_measurand_is_accepted(config):
    all_measurands = ",".join(sorted(SUPPORTED_MEASURANDS))
    for name in MEASURAND_KEYS:
        assert config.change(name, all_measurands) == "Accepted"
        assert config.get_list(name) == sorted(SUPPORTED_MEASURANDS)


def test_on_change_sees_the_new_value():
    seen = []
    config = OcppConfiguration(1, on_change=lambda name, value: seen.append(config.get_int(name)))
    config.change("HeartbeatInterval", "42")
    assert seen == [42]


def test_failing_on_change_leaves_the_value_unchanged():
    def fail_to_persist(name, value):
        raise OSError("disk full")

    config = OcppConfiguration(1, on_change=fail_to_persist)
    with pytest.raises(OSError):
        config.change("HeartbeatInterval", "42")
    assert config.get("HeartbeatInterval") == "300"


def test_change_without_callback_works():
    config = OcppConfiguration(1)
    assert config.change("HeartbeatInterval", "42") == "Accepted"
    assert config.get_int("HeartbeatInterval") == 42


# --- GetConfiguration ------------------------------------------------------------------------------------


def test_get_configuration_known_and_unknown_keys(config):
    entries, unknown = config.get_configuration(
        ["HeartbeatInterval", "Nope", "NumberOfConnectors", "heartbeatinterval"]
    )
    assert entries == [
        {"key": "HeartbeatInterval", "readonly": False, "value": "300"},
        {"key": "NumberOfConnectors", "readonly": True, "value": "2"},
    ]
    assert unknown == ["Nope", "heartbeatinterval"]


@pytest.mark.parametrize("keys", [None, []])
def test_get_configuration_without_keys_returns_every_readable_key(config, keys):
    entries, unknown = config.get_configuration(keys)
    assert [entry["key"] for entry in entries] == [name for name, key in KEYS.items() if key.readable]
    assert "AuthorizationKey" not in [entry["key"] for entry in entries]  # write-only
    assert unknown == []
    assert all(isinstance(entry["value"], str) for entry in entries)


def test_get_configuration_reports_changed_values_once(config):
    config.change("HeartbeatInterval", "60")
    entries, _ = config.get_configuration(["HeartbeatInterval", "HeartbeatInterval"])
    assert entries == [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}]


# --- initial values as the config file gives them ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("HeartbeatInterval", 60, "60"),
        ("HeartbeatInterval", "60", "60"),
        ("LocalPreAuthorize", False, "false"),
        ("LocalPreAuthorize", "TRUE", "true"),
        ("StopTxnAlignedData", "Energy.Active.Import.Register", "Energy.Active.Import.Register"),
    ],
)
def test_normalise_initial_value_accepts_toml_types_and_ocpp_strings(name, value, expected):
    assert normalise_initial_value(name, value) == expected


def test_normalise_initial_value_checks_connector_ids_only_when_the_count_is_known():
    assert normalise_initial_value("ConnectorPhaseRotation", "7.RST") == "7.RST"
    with pytest.raises(ValueError, match="connector 7 does not exist"):
        normalise_initial_value("ConnectorPhaseRotation", "7.RST", number_of_connectors=2)


# --- values the agent sets itself ----------------------------------------------------------------------


def test_set_internal_applies_and_persists_a_valid_value(config, changes):
    assert config.set_internal("HeartbeatInterval", "0900") is True
    assert config.get_int("HeartbeatInterval") == 900
    assert changes.calls == [("HeartbeatInterval", "900")]


def test_set_internal_ignores_an_invalid_value_with_a_warning(config, changes, caplog):
    caplog.set_level(logging.WARNING, logger="agent.ocpp.v16.config")
    assert config.set_internal("HeartbeatInterval", "-5") is False
    assert config.get_int("HeartbeatInterval") == 300
    assert changes.calls == []
    assert "HeartbeatInterval" in caplog.text


def test_set_internal_may_set_read_only_keys_without_persisting_them(config, changes):
    assert config.set_internal("GetConfigurationMaxKeys", "20") is True
    assert config.get_int("GetConfigurationMaxKeys") == 20
    assert changes.calls == []


def test_set_internal_of_an_unknown_key_is_a_programming_error(config):
    with pytest.raises(KeyError, match="NoSuchKey"):
        config.set_internal("NoSuchKey", "1")
