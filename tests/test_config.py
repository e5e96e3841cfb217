import re
import tomllib
from pathlib import Path

import pytest

from agent.config import (
    AgentConfig,
    BoardConfig,
    ChargingConfig,
    ConfigError,
    ControlConfig,
    JournalConfig,
    LogConfig,
    OcppConfig,
    StationConfig,
    dump_example_config,
    load_config,
    package_version,
)
from agent.ocpp.v16 import config as ocpp_config

MINIMAL = """\
[station]
id = "CP-1"

[ocpp]
url = "ws://csms.example:9000/ocpp"
"""


def write(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(directory: Path, text: str) -> AgentConfig:
    return load_config(write(directory, text))


def error_of(directory: Path, text: str) -> str:
    path = write(directory, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert "\n" not in message
    prefix = f"{path}: "
    assert message.startswith(prefix)
    return message.removeprefix(prefix)


# --- defaults and paths ----------------------------------------------------------------------------------


def test_minimal_config_gets_every_default(tmp_path):
    config = load_text(tmp_path, MINIMAL)
    assert config.path == tmp_path / "config.toml"
    assert config.station == StationConfig(
        id="CP-1", vendor="evse-agent", model="sim", serial="", firmware_version=package_version()
    )
    assert config.ocpp == OcppConfig(
        url="ws://csms.example:9000/ocpp",
        version="1.6",
        reconnect_min_s=1.0,
        reconnect_max_s=60.0,
        password="",
        configuration={},
    )
    assert config.board == BoardConfig(file=tmp_path / "board-configs" / "sim.toml")
    assert config.journal == JournalConfig(path=Path("/var/lib/evse-agent/journal.sqlite"))
    assert config.control == ControlConfig(socket=Path("/run/evse-agent/control.sock"))
    assert config.charging == ChargingConfig(
        max_current_a=32.0, stop_on_shutdown=False, control_period_s=0.01, meter_poll_s=1.0
    )
    assert config.log == LogConfig(level="info")


def test_every_value_can_be_set(tmp_path):
    config = load_text(
        tmp_path,
        """\
[station]
id = "CP-7"
vendor = "ACME"
model = "Wallbox 22"
serial = "SN-0001"
firmware_version = "1.2.3"

[ocpp]
version = "1.6"
url = "wss://csms.example/ocpp/"
reconnect_min_s = 2
reconnect_max_s = 120.5
password = "s3cret-s3cret-s3cret"

[ocpp.configuration]
HeartbeatInterval = 600
LocalPreAuthorize = true
MeterValuesSampledData = "Voltage, Current.Import"

[board]
file = "/etc/evse-agent/board.toml"

[journal]
path = "/data/journal.sqlite"

[control]
socket = "/run/evse/control.sock"

[charging]
max_current_a = 16
stop_on_shutdown = true
control_period_s = 0.005
meter_poll_s = 0.5

[log]
level = "DEBUG"
""",
    )
    assert config.station == StationConfig("CP-7", "ACME", "Wallbox 22", "SN-0001", "1.2.3")
    assert config.ocpp.url == "wss://csms.example/ocpp/"
    assert (config.ocpp.reconnect_min_s, config.ocpp.reconnect_max_s) == (2.0, 120.5)
    assert isinstance(config.ocpp.reconnect_min_s, float)  # int accepted where a float is expected
    assert config.ocpp.password == "s3cret-s3cret-s3cret"
    assert dict(config.ocpp.configuration) == {
        "HeartbeatInterval": "600",
        "LocalPreAuthorize": "true",
        "MeterValuesSampledData": "Voltage,Current.Import",
    }
    assert config.board.file == Path("/etc/evse-agent/board.toml")
    assert config.journal.path == Path("/data/journal.sqlite")
    assert config.control.socket == Path("/run/evse/control.sock")
    assert config.charging == ChargingConfig(16.0, True, control_period_s=0.005, meter_poll_s=0.5)
    assert config.log.level == "debug"


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(
        config_dir,
        MINIMAL
        + """
[board]
file = "boards/../boards/mine.toml"
[journal]
path = "state/journal.sqlite"
[control]
socket = "control.sock"
""",
    )
    config = load_config(Path("../etc/config.toml"))
    assert config.path == config_dir / "config.toml"
    assert config.board.file == config_dir / "boards" / "mine.toml"
    assert config.journal.path == config_dir / "state" / "journal.sqlite"
    assert config.control.socket == config_dir / "control.sock"
    assert all(
        p.is_absolute() for p in (config.path, config.board.file, config.journal.path, config.control.socket)
    )


def test_config_is_frozen(tmp_path):
    config = load_text(tmp_path, MINIMAL)
    with pytest.raises(AttributeError):
        config.station.id = "other"  # type: ignore[misc]


def test_password_is_not_in_repr(tmp_path):
    config = load_text(tmp_path, MINIMAL.replace("[ocpp]\n", '[ocpp]\npassword = "top-secret-value"\n'))
    assert config.ocpp.password == "top-secret-value"
    assert "top-secret-value" not in repr(config)


# --- ocpp_endpoint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "station_id", "endpoint"),
    [
        ("ws://csms.example:9000/ocpp", "CP-1", "ws://csms.example:9000/ocpp/CP-1"),
        ("ws://csms.example:9000/ocpp/", "CP-1", "ws://csms.example:9000/ocpp/CP-1"),
        ("wss://csms.example", "CP-1", "wss://csms.example/CP-1"),
        ("ws://csms.example/ocpp", "Wallbox#1?a&b", "ws://csms.example/ocpp/Wallbox%231%3Fa%26b"),
        ("ws://csms.example/ocpp", "Ladesäule%1", "ws://csms.example/ocpp/Lades%C3%A4ule%251"),
        ("ws://csms.example/ocpp", "a.b_c~d-e", "ws://csms.example/ocpp/a.b_c~d-e"),
    ],
)
def test_ocpp_endpoint_appends_the_percent_encoded_station_id(tmp_path, url, station_id, endpoint):
    config = load_text(tmp_path, f'[station]\nid = "{station_id}"\n[ocpp]\nurl = "{url}"\n')
    assert config.ocpp_endpoint == endpoint


# --- errors name the file and the key --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # required keys
        ("", '[station] id: required, e.g. id = "CP-1"'),
        ('[station]\nid = "CP-1"\n', '[ocpp] url: required, e.g. url = "ws://127.0.0.1:9000/ocpp"'),
        # unknown sections and keys
        (MINIMAL + "[stations]\n", '[stations]: unknown section (did you mean "station"?)'),
        ("colour = 1\n" + MINIMAL, "colour: unknown key (keys belong in a [section])"),
        ('[station]\nid = "CP-1"\ncolour = "red"\n', "[station] colour: unknown key"),
        ('[station]\nidd = "CP-1"\n', '[station] idd: unknown key (did you mean "id"?)'),
        (
            MINIMAL + "[charging]\nmax_current = 16\n",
            '[charging] max_current: unknown key (did you mean "max_current_a"?)',
        ),
        (MINIMAL + "[log]\nfile = 'x'\n", "[log] file: unknown key (known keys: level)"),
        (
            MINIMAL + "[journal]\nmax_messages = 1000.0\n",
            "[journal] max_messages: expected an integer, got 1000.0",
        ),
        ('station = "CP-1"\n', 'station: expected a table [station], got "CP-1"'),
        # types
        ('[station]\nid = "CP-1"\n[ocpp]\nurl = 42\n', "[ocpp] url: expected a string, got 42"),
        ("[station]\nid = true\n", "[station] id: expected a string, got true"),
        ("[station]\nid = [1]\n", "[station] id: expected a string, got an array"),
        ("[station]\nid = {a = 1}\n", "[station] id: expected a string, got a table"),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nreconnect_min_s = true\n"),
            "[ocpp] reconnect_min_s: expected a number, got true",
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nreconnect_max_s = inf\n"),
            "[ocpp] reconnect_max_s: expected a finite number, got inf",
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\npassword = 1234\n"),
            "[ocpp] password: expected a string, got 1234",
        ),
        (
            MINIMAL + "[charging]\nstop_on_shutdown = 1\n",
            "[charging] stop_on_shutdown: expected true or false, got 1",
        ),
        (
            MINIMAL + "[charging]\nstop_on_shutdown = 'yes'\n",
            '[charging] stop_on_shutdown: expected true or false, got "yes"',
        ),
        (MINIMAL + "[journal]\npath = 1979-05-27\n", "[journal] path: expected a string, got a date/time"),
        (MINIMAL + "[board]\nfile = ''\n", "[board] file: must not be empty"),
        # station
        ('[station]\nid = ""\n', "[station] id: must be 1 to 48 characters, got 0"),
        (f'[station]\nid = "{"x" * 49}"\n', "[station] id: must be 1 to 48 characters, got 49"),
        ('[station]\nid = "CP/1"\n', '[station] id: must not contain "/", got "CP/1"'),
        ('[station]\nid = "CP:1"\n', '[station] id: must not contain ":", got "CP:1"'),
        ('[station]\nid = "CP 1"\n', '[station] id: must not contain " ", got "CP 1"'),
        ('[station]\nid = "CP\\t1"\n', '[station] id: must not contain "\\t", got "CP\\t1"'),
        ('[station]\nid = "CP-1"\nvendor = ""\n', "[station] vendor: must not be empty"),
        (
            f'[station]\nid = "CP-1"\nmodel = "{"m" * 21}"\n',
            "[station] model: at most 20 characters (OCPP BootNotification), got 21",
        ),
        (
            f'[station]\nid = "CP-1"\nserial = "{"s" * 26}"\n',
            "[station] serial: at most 25 characters (OCPP BootNotification), got 26",
        ),
        # ocpp
        (
            MINIMAL.replace("[ocpp]\n", '[ocpp]\nversion = "2.0.1"\n'),
            '[ocpp] version: must be one of "1.6", got "2.0.1"',
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nversion = 1.6\n"),
            "[ocpp] version: expected a string, got 1.6",
        ),
        (
            MINIMAL.replace("ws://csms.example:9000/ocpp", "http://csms.example/ocpp"),
            '[ocpp] url: must start with ws:// or wss://, got "http://csms.example/ocpp"',
        ),
        (
            MINIMAL.replace("ws://csms.example:9000/ocpp", "ws:///ocpp"),
            '[ocpp] url: has no host name, got "ws:///ocpp"',
        ),
        (
            MINIMAL.replace("ws://csms.example:9000/ocpp", "ws://csms.example:x/ocpp"),
            "[ocpp] url: Port could not be cast",
        ),
        (
            MINIMAL.replace("ws://csms.example:9000/ocpp", "ws://csms.example/ocpp?a=1"),
            "[ocpp] url: must not have a query",
        ),
        (
            MINIMAL.replace("ws://csms.example:9000/ocpp", "ws://u:p@csms.example/ocpp"),
            "[ocpp] url: must not contain credentials",
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nreconnect_min_s = 0\n"),
            "[ocpp] reconnect_min_s: must be greater than 0, got 0",
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nreconnect_min_s = 10\nreconnect_max_s = 5\n"),
            "[ocpp] reconnect_max_s: must be >= reconnect_min_s (10), got 5",
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nreconnect_min_s = 100\n"),
            "[ocpp] reconnect_min_s: must be <= reconnect_max_s (60, the default), got 100",
        ),
        (
            MINIMAL.replace("[ocpp]\n", "[ocpp]\nconfiguration = 5\n"),
            "[ocpp] configuration: expected a table [ocpp.configuration], got 5",
        ),
        # ocpp.configuration: keys and values checked against the OCPP key table
        (
            MINIMAL + "[ocpp.configuration]\nHeartbeatIntervall = 60\n",
            "[ocpp.configuration] HeartbeatIntervall: unknown OCPP configuration key",
        ),
        (
            MINIMAL + "[ocpp.configuration]\nheartbeatinterval = 60\n",
            "[ocpp.configuration] heartbeatinterval: unknown OCPP configuration key",
        ),
        (
            MINIMAL + "[ocpp.configuration]\nNumberOfConnectors = 2\n",
            "[ocpp.configuration] NumberOfConnectors: read-only key",
        ),
        (
            MINIMAL + "[ocpp.configuration]\nHeartbeatInterval = -1\n",
            "[ocpp.configuration] HeartbeatInterval: must be >= 0, got -1",
        ),
        (
            MINIMAL + "[ocpp.configuration]\nHeartbeatInterval = 1.5\n",
            "[ocpp.configuration] HeartbeatInterval: expected a string, integer or boolean, got 1.5",
        ),
        (
            MINIMAL + "[ocpp.configuration]\nHeartbeatInterval = true\n",
            "[ocpp.configuration] HeartbeatInterval: expected an integer, got true",
        ),
        (
            MINIMAL + "[ocpp.configuration]\nLocalPreAuthorize = 'ja'\n",
            '[ocpp.configuration] LocalPreAuthorize: expected "true" or "false", got "ja"',
        ),
        (
            MINIMAL + "[ocpp.configuration]\nStopTxnSampledData = 'SoC'\n",
            '[ocpp.configuration] StopTxnSampledData: unsupported value "SoC"',
        ),
        (
            MINIMAL + "[ocpp.configuration]\nStopTxnSampledData = ['Voltage']\n",
            "[ocpp.configuration] StopTxnSampledData: expected a string, integer or boolean, got an array",
        ),
        # charging and log
        (
            MINIMAL + "[charging]\nmax_current_a = 5.9\n",
            "[charging] max_current_a: must be between 6 and 80, got 5.9",
        ),
        (
            MINIMAL + "[charging]\nmax_current_a = 81\n",
            "[charging] max_current_a: must be between 6 and 80, got 81",
        ),
        (
            MINIMAL + "[charging]\ncontrol_period_s = 0.5\n",
            "[charging] control_period_s: must be between 0.001 and 0.1, got 0.5",
        ),
        (
            MINIMAL + "[charging]\nmeter_poll_s = 0\n",
            "[charging] meter_poll_s: must be greater than 0, got 0",
        ),
        (
            MINIMAL + "[log]\nlevel = 'verbose'\n",
            '[log] level: must be one of debug, info, warning, error, got "verbose"',
        ),
        # paths
        (MINIMAL + f"[control]\nsocket = '/run/{'s' * 120}.sock'\n", "[control] socket: /run/"),
    ],
)
def test_error_names_the_key(tmp_path, text, message):
    assert error_of(tmp_path, text).startswith(message)


def test_invalid_toml_names_the_line(tmp_path):
    assert (
        error_of(tmp_path, '[station]\nid = "CP-1"\nurl = \n')
        == "line 3: invalid TOML: Invalid value (column 7)"
    )


def test_invalid_toml_at_end_of_document(tmp_path):
    assert error_of(tmp_path, '[station]\nid = "CP-1').startswith("invalid TOML: Unterminated string")


def test_duplicate_key_is_invalid_toml(tmp_path):
    assert "invalid TOML" in error_of(tmp_path, MINIMAL + '[station]\nid = "CP-2"\n')


def test_missing_file(tmp_path):
    path = tmp_path / "missing.toml"
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(path))}: cannot read: No such file or directory$"
    ):
        load_config(path)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b'[station]\nid = "CP-\xff"\n')
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: line 2: invalid TOML: not valid UTF-8$"):
        load_config(path)


def test_the_error_uses_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[station]\n")
    with pytest.raises(ConfigError, match=r"^config\.toml: \[station\] id: required"):
        load_config(Path("config.toml"))


# --- example config --------------------------------------------------------------------------------------


def test_example_config_loads_to_the_defaults(tmp_path):
    example = load_config(write(tmp_path, dump_example_config(), "example.toml"))
    # The example sets the required keys to these values and shows defaults for everything else.
    minimal = load_config(
        write(tmp_path, '[station]\nid = "CP-1"\n[ocpp]\nurl = "ws://127.0.0.1:9000/ocpp"\n', "minimal.toml")
    )
    assert example == AgentConfig(**{**vars(minimal), "path": example.path})


def test_example_config_mentions_every_key():
    example = dump_example_config()
    sections = {
        "station": StationConfig,
        "ocpp": OcppConfig,
        "board": BoardConfig,
        "journal": JournalConfig,
        "control": ControlConfig,
        "charging": ChargingConfig,
        "log": LogConfig,
    }
    for section, cls in sections.items():
        assert f"[{section}]" in example
        for name in cls.__dataclass_fields__:
            if name != "configuration":  # the [ocpp.configuration] table
                assert f"\n{name} = " in example or f"\n# {name} = " in example, f"[{section}] {name}"
    assert "[ocpp.configuration]" in example
    for key in ocpp_config.KEYS.values():
        if not key.readonly:
            assert f"\n# {key.name} = " in example, key.name


def test_example_ocpp_configuration_lines_are_valid_when_uncommented(tmp_path):
    example = dump_example_config()
    uncommented = "\n".join(
        line.removeprefix("# ") if line.removeprefix("# ").split(" = ")[0] in ocpp_config.KEYS else line
        for line in example.splitlines()
    )
    config = load_text(tmp_path, uncommented)
    settable = {name: key.default for name, key in ocpp_config.KEYS.items() if not key.readonly}
    assert dict(config.ocpp.configuration) == settable


def test_example_is_valid_toml():
    assert tomllib.loads(dump_example_config())["station"]["id"] == "CP-1"


def test_ocpp_configuration_shortcut(tmp_path):
    config = load_text(tmp_path, MINIMAL + "[ocpp.configuration]\nHeartbeatInterval = 60\n")
    assert config.ocpp_configuration is config.ocpp.configuration
    assert dict(config.ocpp_configuration) == {"HeartbeatInterval": "60"}
