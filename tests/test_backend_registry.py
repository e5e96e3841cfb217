"""HAL back-ends from other packages: a board maker's distribution registers them under the entry-point
groups evse_agent.backends.<kind> (hal/registry.py, docs/hal-backends.md), and a board config names them.

The "installed package" is real: a package directory and a *.dist-info directory with METADATA and
entry_points.txt, put on sys.path; importlib.metadata finds it the way it finds a pip-installed one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path

import pytest

from agent.control.link import ProcessLink
from hal import registry
from hal.board import BACKENDS, BoardConfigError, load_board
from hal.device_backends import METERS

BOARDS = Path(__file__).resolve().parent.parent / "board-configs"

PLUGIN = '''
"""ACME's back-ends: a board (the simulated station in an enclosure that caps every connector's current)
and a pulse-output energy meter."""

from hal.board import BoardBackend, ConfigTable, build_sim_board
from hal.interfaces import EnergyMeter, MeterReading


def build_enclosure_board(config, path, options):
    acme = ConfigTable(config.get("acme", {}), "[acme]", path)
    acme.reject_unknown(("enclosure_max_current_a",))
    cap = acme.number("enclosure_max_current_a", minimum=6, maximum=80, unit="A")
    board = build_sim_board(config, path, options)
    for hardware in board.connectors:
        hardware.max_current_a = min(hardware.max_current_a, cap)
    return board


ENCLOSURE_BOARD = BoardBackend(build_enclosure_board, tables=("acme", "sim"), connector_keys=("cable_ampacity_a",))


class PulseMeter(EnergyMeter):
    phases = 1

    def __init__(self, pin, pulses_per_kwh):
        self.pin = pin
        self.pulses_per_kwh = pulses_per_kwh

    async def read(self):
        return MeterReading(energy_wh=0.0, power_w=None, current_a=(None,), voltage_v=(None,))


def build_pulse_meter(table, ctx):
    table.reject_unknown(("backend", "pin", "pulses_per_kwh"))
    return PulseMeter(table.integer("pin", minimum=0), table.integer("pulses_per_kwh", minimum=1))
'''


def install_distribution(site: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """What `pip install --target site` leaves: the modules and NAME-VERSION.dist-info."""
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    dist_info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path for this test's distributions (the control process inherits sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    registry.forget_entry_points()
    yield site
    registry.forget_entry_points()


@pytest.fixture
def acme(site):
    install_distribution(site, "acme-evse", """
        [evse_agent.backends.board]
        acme-enclosure = acme_evse_backends:ENCLOSURE_BOARD

        [evse_agent.backends.meter]
        acme-pulse = acme_evse_backends:build_pulse_meter
    """, {"acme_evse_backends": PLUGIN})
    return site


def enclosure_board_file(tmp_path: Path) -> Path:
    text = (BOARDS / "sim.toml").read_text()
    assert 'backend = "sim"' in text and "[sim]" in text
    text = text.replace('backend = "sim"', 'backend = "acme-enclosure"').replace(
        "[sim]", "[acme]\nenclosure_max_current_a = 20.0\n\n[sim]")
    path = tmp_path / "acme.toml"
    path.write_text(text)
    return path


def test_a_board_backend_from_an_installed_package_builds_the_board(acme, tmp_path):
    assert "acme-enclosure" in BACKENDS
    board = load_board(enclosure_board_file(tmp_path), state_dir=tmp_path)
    assert [hw.max_current_a for hw in board.connectors] == [20.0]  # 32 A in the file, capped by ACME's table
    assert board.simulator is not None


def test_a_device_backend_from_an_installed_package_is_used_by_the_devices_board(acme, tmp_path):
    text = (BOARDS / "pi-modbus-evse-sdm120-hid.toml").read_text()
    sdm120 = 'backend = "modbus"\nmodel = "sdm120"\nbus = "rs485"\ndevice_id = 2'
    assert sdm120 in text
    path = tmp_path / "pulse-meter.toml"
    path.write_text(text.replace(sdm120, 'backend = "acme-pulse"\npin = 24\npulses_per_kwh = 1000'))

    board = load_board(path, dry_run=True)
    meter = board.connectors[0].meter
    assert type(meter).__module__ == "acme_evse_backends"
    assert (meter.pin, meter.pulses_per_kwh) == (24, 1000)


def test_the_control_process_finds_a_board_backend_from_an_installed_package(acme, tmp_path):
    """The control process runs `python -S` (no site module): it gets the agent's sys.path, and with it
    the package's dist-info."""

    async def start_and_stop():
        link = ProcessLink(enclosure_board_file(tmp_path), tmp_path)
        try:
            return await link.start()
        finally:
            await link.close()

    info = asyncio.run(start_and_stop())
    assert [c.max_current_a for c in info.connectors] == [20.0]
    assert info.simulated


def test_an_unknown_backend_names_the_known_ones_including_installed(acme, tmp_path):
    path = enclosure_board_file(tmp_path)
    path.write_text(path.read_text().replace('"acme-enclosure"', '"acme-enclosur"'))
    with pytest.raises(BoardConfigError, match=r'\[board\]\.backend: unknown back-end "acme-enclosur" '
                                               r'\(known: "sim", "devices", "acme-enclosure"\)'):
        load_board(path, state_dir=tmp_path)
    assert METERS.names() == ("modbus", "acme-pulse")


def test_a_package_cannot_replace_a_builtin_backend(site, tmp_path, caplog):
    install_distribution(site, "sneaky-evse", """
        [evse_agent.backends.board]
        sim = sneaky_board:ENCLOSURE_BOARD
    """, {"sneaky_board": PLUGIN})
    with caplog.at_level(logging.WARNING, logger="hal.registry"):
        board = load_board(BOARDS / "sim.toml", dry_run=True)  # how the agent checks the file
    assert [hw.max_current_a for hw in board.connectors] == [32.0]  # the built-in sim board
    assert 'board back-end "sim" is built in, and sneaky-evse 1.0 (sneaky_board:ENCLOSURE_BOARD) registers it' \
        in caplog.text
    assert "sneaky_board" not in sys.modules  # never even imported


def test_two_packages_registering_one_name_is_a_config_error_naming_both(site, tmp_path):
    for name in ("acme-evse", "other-evse"):
        install_distribution(site, name, f"""
            [evse_agent.backends.board]
            acme-enclosure = {name.replace('-', '_')}_backends:ENCLOSURE_BOARD
        """, {f"{name.replace('-', '_')}_backends": PLUGIN})
    with pytest.raises(BoardConfigError, match=r'registered by acme-evse 1.0 .* and by other-evse 1.0'):
        load_board(enclosure_board_file(tmp_path), state_dir=tmp_path)


def test_a_backend_whose_module_is_missing_is_a_config_error(site, tmp_path):
    install_distribution(site, "broken-evse", """
        [evse_agent.backends.board]
        acme-enclosure = not_installed_anywhere:BOARD
    """, {})
    with pytest.raises(BoardConfigError, match=r'\[board\]\.backend: board back-end "acme-enclosure" needs '
                                               r"not_installed_anywhere, which is not installed"):
        load_board(enclosure_board_file(tmp_path), state_dir=tmp_path)


def test_a_board_of_builtin_backends_does_not_read_the_installed_distributions(tmp_path):
    """The control process stays lean: finding "sim" needs no scan of site-packages (importlib.metadata
    alone is some 50 ms and MB at start-up on a Pi)."""
    import subprocess

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hal.board import load_board\n"
        f"load_board(Path({str(BOARDS / 'sim.toml')!r}), state_dir=Path({str(tmp_path)!r}))\n"
        "print('importlib.metadata' in sys.modules)\n"
    )
    env_path = ":".join(p for p in sys.path if p)
    out = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=BOARDS.parent, env={"PYTHONPATH": f"{BOARDS.parent}:{env_path}"}, check=True).stdout
    assert out.split() == ["False"]
