"""The station reads the settings the CSMS manages only through agent.station.settings.StationSettings, in
neutral words; OCPP 1.6's keys are read in agent.ocpp.v16.settings alone (2.0.1's device model will be the
other implementation). A ChangeConfiguration is seen through the neutral property at once."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

import agent.station
from agent.ocpp.v16.config import KEYS, OcppConfiguration
from agent.ocpp.v16.settings import V16Settings
from agent.station.settings import StationSettings
from tests.station_bench import RecordingCsmsLink, sim_station, steps

STATION_FOLDER = Path(agent.station.__file__).parent


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (they may name a key to explain something)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_station_module_reads_a_16_key_by_name():
    """A string literal that is a 1.6 key name is a key read (or written) by name: it belongs in agent.ocpp.v16.
    (Comments may still say what a 1.6 key does; a literal is what couples the code to the protocol.)"""
    found = []
    for path in sorted(STATION_FOLDER.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"), str(path))
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and node.value in KEYS):
                found.append(f"{path.relative_to(STATION_FOLDER.parent.parent)}:{node.lineno}: {node.value}")
    assert found == []


def test_no_station_module_calls_a_typed_key_getter():
    calls = re.compile(r'\.get_(bool|int|list)\("')
    found = [f"{path.name}:{number}: {line.strip()}" for path in sorted(STATION_FOLDER.rglob("*.py"))
             for number, line in enumerate(path.read_text("utf-8").splitlines(), 1) if calls.search(line)]
    assert found == []


def _settings_properties() -> list[str]:
    return sorted(name for name, member in vars(StationSettings).items() if isinstance(member, property))


def test_every_setting_names_its_16_key_and_201_variable_and_the_16_provider_has_it():
    names = _settings_properties()
    assert len(names) >= 20
    for name in names:
        doc = inspect.getdoc(vars(StationSettings)[name]) or ""
        key = re.search(r"1\.6: (\w+)", doc)
        assert key is not None and key.group(1) in KEYS, f"{name}: no 1.6 key named in {doc!r}"
        assert re.search(r"2\.0\.1: \w+Ctrlr\.\w+", doc), f"{name}: no 2.0.1 variable named in {doc!r}"
        assert isinstance(getattr(V16Settings, name, None), property), f"V16Settings lacks {name}"
    assert callable(V16Settings.on_change)


# neutral property -> (the 1.6 key its docstring names, a value to change it to, what the property then says)
CHANGES = {
    "connection_timeout_s": ("17", 17),
    "stop_on_ev_side_disconnect": ("false", False),
    "stop_on_invalid_id": ("false", False),
    "authorize_remote_tx": ("false", False),
    "unlock_on_ev_side_disconnect": ("false", False),
    "local_list_enabled": ("false", False),
    "authorization_cache_enabled": ("false", False),
    "local_authorize_offline": ("false", False),
    "local_pre_authorize": ("true", True),
    "allow_offline_tx_for_unknown_id": ("true", True),
    "local_list_max_length": ("500", 500),
    "local_list_max_update_length": ("50", 50),
    "meter_sample_interval_s": ("15", 15),
    "clock_aligned_interval_s": ("900", 900),
    "sampled_measurands": ("Voltage,Current.Import", ["Voltage", "Current.Import"]),
    "aligned_measurands": ("Power.Active.Import", ["Power.Active.Import"]),
    "stop_transaction_measurands": ("", []),
    "charging_profile_max_stack_level": ("3", 3),
    "charging_schedule_max_periods": ("24", 24),
    "max_charging_profiles": ("5", 5),
    "charging_rate_units": ("Power", ("W",)),
    "reserve_any_connector": ("false", False),
}


def _key_of(name: str) -> str:
    doc = inspect.getdoc(vars(StationSettings)[name]) or ""
    match = re.search(r"1\.6: (\w+)", doc)
    assert match is not None
    return match.group(1)


def test_every_setting_is_covered_here():
    assert sorted(CHANGES) == _settings_properties()


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_change_of_the_16_key_is_seen_through_the_neutral_property_at_once(name):
    configuration = OcppConfiguration(number_of_connectors=1)
    settings = V16Settings(configuration)
    key, (value, expected) = KEYS[_key_of(name)], CHANGES[name]
    assert getattr(settings, name) != expected  # the default differs, so the change is what shows
    if key.readonly:  # the agent's own capabilities: set on its behalf, never by the CSMS
        assert configuration.change(key.name, value) == "Rejected"
        assert configuration.set_internal(key.name, value)
    else:
        assert configuration.change(key.name, value) == "Accepted"  # as the CSMS's ChangeConfiguration
    assert getattr(settings, name) == expected


async def test_a_station_persists_a_change_and_gives_it_to_its_controllers(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    heard = []
    station.settings.on_change(lambda: heard.append(station.settings.connection_timeout_s))
    rt = station.connectors[1]
    assert rt.controller.settings.connection_timeout_s == station.settings.connection_timeout_s != 17

    assert station.csms_port.configuration.change("ConnectionTimeOut", "17") == "Accepted"
    assert station.settings.connection_timeout_s == 17 and heard == [17]
    assert station.journal.settings("ocpp.")["ConnectionTimeOut"] == "17"  # survives a restart
    await steps(station, 3)
    assert rt.controller.settings.connection_timeout_s == 17  # the controller's copy, via SettingsChanged
    await board.close()
    station.journal.close()

    # the next start: what the CSMS set wins over the default
    again, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    assert again.settings.connection_timeout_s == 17
    assert again.connectors[1].controller.settings.connection_timeout_s == 17
    await board.close()
