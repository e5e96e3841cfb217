"""Board configs: the shipped ones load, and every kind of mistake is reported with file and key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hal.board import BACKENDS, BoardConfigError, load_board
from hal.interfaces import CpState
from hal.sim import SimBoard

CONFIG_DIR = Path(__file__).resolve().parent.parent / "board-configs"

GOOD = """
[board]
name = "Test station"
backend = "sim"

[[connectors]]
id = 1
max_current_a = 32.0
phases = 3
cable = "socket"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "board.toml"
    path.write_text(text)
    return path


def test_sim_toml_loads_one_32a_socket():
    board = load_board(CONFIG_DIR / "sim.toml")
    assert isinstance(board.simulator, SimBoard)
    assert board.name == "Simulated AC station, one Type 2 socket"
    assert board.reboot_command is None
    (conn,) = board.connectors
    assert (conn.connector_id, conn.max_current_a, conn.phases) == (1, 32.0, 3)
    assert conn.proximity is not None and conn.lock is not None
    board.simulator.plug()
    assert conn.proximity.read_ampacity() == 32.0
    assert conn.pilot.read().state is CpState.B


def test_sim_2_toml_loads_two_16a_sockets():
    board = load_board(CONFIG_DIR / "sim-2.toml")
    assert [(c.connector_id, c.max_current_a) for c in board.connectors] == [(1, 16.0), (2, 16.0)]


def test_board_configs_directory_is_an_importable_package():
    assert (CONFIG_DIR / "__init__.py").exists()


def test_defaults_and_optional_keys(tmp_path):
    path = write(
        tmp_path, GOOD.replace('backend = "sim"', 'backend = "sim"\nreboot_command = ["systemctl", "reboot"]')
    )
    board = load_board(path)
    assert board.reboot_command == ["systemctl", "reboot"]
    assert board.connectors[0].lock is not None  # a socket locks by default


def test_fixed_cable_has_no_proximity_and_no_lock_by_default(tmp_path):
    board = load_board(write(tmp_path, GOOD.replace('"socket"', '"fixed"')))
    assert board.connectors[0].proximity is None
    assert board.connectors[0].lock is None


def test_sim_section_configures_the_virtual_ev(tmp_path):
    text = GOOD + "\n[sim]\nev_response_s = 0\nev_max_current_a = 10\nvoltage_v = 120\n"
    board = load_board(write(tmp_path, text))
    sim, conn = board.simulator, board.connectors[0]
    sim.plug()
    conn.pilot.set_pwm(50)  # offers 30 A; response_s = 0 so the EV closes S2 at once
    conn.contactor.set_closed(True)
    snap = sim.snapshot()["connectors"][0]
    assert snap["ev_state"] == "C"
    assert snap["current_a"] == [10.0, 10.0, 10.0]


def test_connectors_may_be_listed_out_of_order(tmp_path):
    text = (
        GOOD.replace("id = 1", "id = 2")
        + '\n[[connectors]]\nid = 1\nmax_current_a = 16\nphases = 1\ncable = "fixed"\n'
    )
    board = load_board(write(tmp_path, text))
    assert [c.connector_id for c in board.connectors] == [1, 2]


def test_state_dir_holds_the_sim_state_file(tmp_path):
    board = load_board(CONFIG_DIR / "sim.toml", state_dir=tmp_path)
    board.simulator.plug()
    assert json.loads((tmp_path / "sim-board.json").read_text())["connectors"]["1"]["plugged"] is True
    again = load_board(CONFIG_DIR / "sim.toml", state_dir=tmp_path)
    assert again.simulator.snapshot()["connectors"][0]["plugged"] is True


def test_clock_is_passed_to_the_simulator(tmp_path):
    now = [0.0]
    board = load_board(CONFIG_DIR / "sim.toml", clock=lambda: now[0])
    board.simulator.plug()
    board.connectors[0].pilot.set_pwm(26.67)
    now[0] = 0.1
    assert board.connectors[0].pilot.read().state is CpState.B
    now[0] = 0.2
    assert board.connectors[0].pilot.read().state is CpState.C


def test_registered_backends():
    assert set(BACKENDS) == {"sim", "devices"}  # "devices": tests/test_shipped_boards.py


# --- errors ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(BoardConfigError, match="nope.toml: cannot read"):
        load_board(path)


def load_in_subprocess(path: Path) -> subprocess.CompletedProcess:
    """load_board in a child: a reader that hangs or reads /dev/zero forever is killed, not the suite."""
    code = ("import sys\nfrom hal.board import BoardConfigError, load_board\n"
            "try:\n    load_board(sys.argv[1])\nexcept BoardConfigError as exc:\n    print(exc)\n    sys.exit(2)\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=CONFIG_DIR.parent)


def test_board_file_dev_zero_is_refused_in_one_line_instead_of_read_forever():
    result = load_in_subprocess(Path("/dev/zero"))
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == "/dev/zero: not a regular file (a character device): give the path of a " \
                                    "board config TOML file"


def test_board_file_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "board.toml"
    os.mkfifo(fifo)
    result = load_in_subprocess(fifo)
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip().startswith(f"{fifo}: not a regular file (a FIFO)")


def test_board_file_directory_is_refused_naming_it(tmp_path):
    with pytest.raises(BoardConfigError, match=r"board-configs: not a regular file \(a directory\)") as info:
        load_board(CONFIG_DIR)
    assert "\n" not in str(info.value)


def test_board_file_over_one_mib_is_refused_naming_file_and_size(tmp_path):
    path = write(tmp_path, GOOD + "#" * (1024 * 1024) + "\n")
    with pytest.raises(BoardConfigError) as info:
        load_board(path)
    assert str(info.value) == (f"{path}: {path.stat().st_size} bytes is too large for a board config "
                               "(at most 1024 KiB): wrong file?")


def test_board_file_just_under_the_limit_still_loads(tmp_path):
    path = write(tmp_path, GOOD)
    with path.open("a") as extra:
        extra.write("#" * (1024 * 1024 - path.stat().st_size - 1) + "\n")
    assert path.stat().st_size == 1024 * 1024
    assert len(load_board(path).connectors) == 1


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, "[board\nname = 1\n")
    with pytest.raises(BoardConfigError, match="board.toml: TOML syntax error") as info:
        load_board(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # wrong types
        (
            "max_current_a = 32.0",
            'max_current_a = "abc"',
            r'\[\[connectors\]\]\[0\]\.max_current_a: expected a number, got "abc"',
        ),
        ("phases = 3", "phases = 3.0", r"\[\[connectors\]\]\[0\]\.phases: expected an integer, got 3.0"),
        ("id = 1", "id = true", r"\[\[connectors\]\]\[0\]\.id: expected an integer, got true"),
        ('name = "Test station"', "name = 5", r"\[board\]\.name: expected a string, got 5"),
        (
            'cable = "socket"',
            'cable = "socket"\nlock = "yes"',
            r'\[\[connectors\]\]\[0\]\.lock: expected true or false, got "yes"',
        ),
        (
            'backend = "sim"',
            'backend = "sim"\nreboot_command = "reboot"',
            r"\[board\]\.reboot_command: expected a non-empty array",
        ),
        # out of range
        (
            "max_current_a = 32.0",
            "max_current_a = 5",
            r"\[\[connectors\]\]\[0\]\.max_current_a: must be between 6 and 80 A, got 5",
        ),
        (
            "max_current_a = 32.0",
            "max_current_a = 100",
            r"\[\[connectors\]\]\[0\]\.max_current_a: must be between 6 and 80 A, got 100",
        ),
        ("phases = 3", "phases = 2", r"\[\[connectors\]\]\[0\]\.phases: must be 1 or 3, got 2"),
        ("id = 1", "id = 0", r"\[\[connectors\]\]\[0\]\.id: must be at least 1, got 0"),
        (
            "id = 1",
            "id = 2",
            r"\[\[connectors\]\]\[0\]\.id: connector ids must be 1\.\.1 without gaps, got 2",
        ),
        (
            'cable = "socket"',
            'cable = "tethered"',
            r'\[\[connectors\]\]\[0\]\.cable: must be one of "socket", "fixed"',
        ),
        (
            'cable = "socket"',
            'cable = "socket"\ncable_ampacity_a = 16',
            r"\[\[connectors\]\]\[0\]\.cable_ampacity_a: must be one of 13, 20, 32, 63",
        ),
        (
            'cable = "socket"',
            'cable = "fixed"\ncable_ampacity_a = 32',
            r"\[\[connectors\]\]\[0\]\.cable_ampacity_a: only applies to cable = \"socket\"",
        ),
        ('backend = "sim"', 'backend = "gpio"', r'\[board\]\.backend: unknown back-end "gpio"'),
        # missing required keys
        ("phases = 3", "", r"\[\[connectors\]\]\[0\]\.phases: required key is missing"),
        ('backend = "sim"', "", r"\[board\]\.backend: required key is missing"),
        ('name = "Test station"', "", r"\[board\]\.name: required key is missing"),
        # unknown keys
        (
            "phases = 3",
            "phases = 3\nmax_curent_a = 16",
            r'\[\[connectors\]\]\[0\]\.max_curent_a: unknown key \(did you mean "max_current_a"\?\)',
        ),
        ('backend = "sim"', 'backend = "sim"\nmodel = "x"', r"\[board\]\.model: unknown key \(known keys: backend, "),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path, old, new, expected):
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(BoardConfigError, match=r"board\.toml: " + expected) as info:
        load_board(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("\n[sim]\nev_phases = 4\n", r"\[sim\]\.ev_phases: must be 1, 2 or 3, got 4"),
        ("\n[sim]\ninitial_soc = 1.5\n", r"\[sim\]\.initial_soc: must be between 0 and 1, got 1.5"),
        ("\n[sim]\nbattery = 60\n", r"\[sim\]\.battery: unknown key"),
        ('\n[sim]\nvoltage_v = "230"\n', r'\[sim\]\.voltage_v: expected a number, got "230"'),
        ("\n[modbus]\nport = 1\n", r"board\.toml: modbus: unknown table or key"),
        (
            '\n[[connectors]]\nid = 1\nmax_current_a = 16\nphases = 3\ncable = "socket"\n',
            r"\[\[connectors\]\]\[1\]\.id: duplicate connector id 1",
        ),
        (
            '\n[[connectors]]\nid = 3\nmax_current_a = 16\nphases = 3\ncable = "socket"\n',
            r"\[\[connectors\]\]\[1\]\.id: connector ids must be 1\.\.2 without gaps, got 3",
        ),
    ],
)
def test_bad_sections_name_the_key(tmp_path, extra, expected):
    with pytest.raises(BoardConfigError, match=expected):
        load_board(write(tmp_path, GOOD + extra))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[board]\nname = "x"\nbackend = "sim"\n', r"\[\[connectors\]\]: at least one connector is required"),
        ("[[connectors]]\nid = 1\n", r"\[board\]: required table is missing"),
        ("board = 5\n", r"\[board\]: expected a table, got 5"),
        (
            'connectors = [1]\n[board]\nname = "x"\nbackend = "sim"\n',
            r"\[\[connectors\]\]\[0\]: expected a table, got 1",
        ),
    ],
)
def test_missing_or_misshapen_tables(tmp_path, text, expected):
    with pytest.raises(BoardConfigError, match=expected):
        load_board(write(tmp_path, text))
