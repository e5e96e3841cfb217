"""Board config loader: a TOML file names a back-end and describes the connectors; we build the Board.

Back-ends are looked up by `[board] backend` in BACKENDS (a hal.registry.BackendRegistry: built-ins plus
the entry-point group evse_agent.backends.board), the way python-can maps `interface=` to a bus class:
    "sim"      the simulated station (hal.sim), configured by a [sim] table
    "devices"  real hardware, each device of each connector chosen by its own table (hal.devices_board)
The loader validates what every back-end shares ([board] and the common [[connectors]] keys) and
checks that no table or key is unknown; a back-end (BoardBackend) names the top-level tables and the
connector keys it accepts besides those, and its builder validates them, using ConfigTable so errors
look the same.

Every error is a BoardConfigError with a one-line message naming the file and the key, e.g.
    board-configs/x.toml: [[connectors]][0].max_current_a: expected a number, got "abc"
"""

from __future__ import annotations

import json
import math
import os
import stat
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.interfaces import Board
from hal.registry import BackendClash, BackendLoadError, BackendRegistry

Clock = Callable[[], float]


@dataclass(frozen=True)
class LoadOptions:
    """How load_board() was asked to build the board; every builder gets it."""

    state_dir: Path | None = None  # where a back-end may keep state across restarts (the sim board's EV)
    clock: Clock = time.monotonic
    # A gpiozero pin factory to use instead of the one the board's [gpio] table names; the caller owns
    # it. Tests pass a MockFactory with simulated devices attached to its pins.
    pin_factory: Any = None
    # Build every device without touching hardware (GPIO on a gpiozero MockFactory, no I2C bus opened),
    # to check a config on any machine, even while an agent holds the real devices. Never start such a board.
    # It also reads the installed packages' back-ends and logs one that claims a built-in name (hal/registry.py).
    dry_run: bool = False


BoardBuilder = Callable[[dict, Path, LoadOptions], Board]


@dataclass(frozen=True)
class BoardBackend:
    """What `[board] backend = "name"` resolves to (hal.board.BACKENDS)."""

    build: BoardBuilder  # gets the validated config (defaults filled in), the file's path and the options
    tables: tuple[str, ...] = ()  # top-level tables it accepts besides [board] and [[connectors]]
    connector_keys: tuple[str, ...] = ()  # [[connectors]] keys besides COMMON_CONNECTOR_KEYS

COMMON_CONNECTOR_KEYS = ("id", "max_current_a", "phases", "cable", "lock")
CABLE_KINDS = ("socket", "fixed")
MIN_CONNECTOR_CURRENT_A = 6.0  # IEC 61851-1: nothing below 6 A can be offered
MAX_CONNECTOR_CURRENT_A = 80.0  # end of the PWM duty table
SIM_STATE_FILE = "sim-board.json"


class BoardConfigError(Exception):
    """The board config cannot be used; the message names the file and the offending key."""


_REQUIRED = object()


def _show(value: Any) -> str:
    """A value as it would look in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _one_of(choices: tuple[int, ...]) -> str:
    """(1, 2, 3) -> "1, 2 or 3"."""
    *rest, last = (str(c) for c in choices)
    return f"{', '.join(rest)} or {last}" if rest else last


class ConfigTable:
    """Typed access to one TOML table that produces uniform error messages and tracks the keys read."""

    def __init__(self, data: Any, where: str, path: Path):
        self.where = where  # e.g. "[board]" or "[[connectors]][0]"
        self.path = path
        if not isinstance(data, dict):
            raise BoardConfigError(f"{path}: {where}: expected a table, got {_show(data)}")
        self.data = data

    def error(self, key: str, message: str) -> BoardConfigError:
        return BoardConfigError(f"{self.path}: {self.where}.{key}: {message}")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is _REQUIRED:
            raise self.error(key, "required key is missing")
        return default

    def number(
        self,
        key: str,
        *,
        default: Any = _REQUIRED,
        minimum: float | None = None,
        maximum: float | None = None,
        unit: str = "",
    ) -> float:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.error(key, f"expected a number, got {_show(value)}")
        self._check_range(key, value, minimum, maximum, unit)
        return float(value)

    def integer(
        self,
        key: str,
        *,
        default: Any = _REQUIRED,
        minimum: int | None = None,
        maximum: int | None = None,
        choices: tuple[int, ...] | None = None,
    ) -> int:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {_show(value)}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be {_one_of(choices)}, got {value}")
        self._check_range(key, value, minimum, maximum, "")
        return value

    def string(self, key: str, *, default: Any = _REQUIRED, choices: tuple[str, ...] | None = None) -> str:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_show(value)}")
        if choices is not None and value not in choices:
            options = ", ".join(json.dumps(c) for c in choices)
            raise self.error(key, f"must be one of {options}, got {_show(value)}")
        if not value.strip():
            raise self.error(key, "must not be empty")
        return value

    def boolean(self, key: str, *, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default)
        if key in self.data and not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_show(value)}")
        return value

    def string_list(self, key: str, *, default: Any = _REQUIRED) -> list[str]:
        value = self._get(key, default)
        if key not in self.data:
            return value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, f"expected a non-empty array of non-empty strings, got {_show(value)}")
        return list(value)

    def reject_unknown(self, allowed: tuple[str, ...] | set[str] | frozenset[str]) -> None:
        for key in self.data:
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                raise self.error(key, f"unknown key (known keys: {known})")

    def _check_range(
        self, key: str, value: float, minimum: float | None, maximum: float | None, unit: str
    ) -> None:
        suffix = f" {unit}" if unit else ""
        if minimum is not None and maximum is not None and not minimum <= value <= maximum:
            raise self.error(key, f"must be between {minimum:g} and {maximum:g}{suffix}, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum:g}{suffix}, got {_show(value)}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum:g}{suffix}, got {_show(value)}")


# --- back-ends -----------------------------------------------------------------------------------------


def build_sim_board(config: dict, path: Path, options: LoadOptions) -> Board:
    """The simulated station (hal.sim); its state file lives in options.state_dir when one is given."""
    from hal.pilot_math import PP_NOMINAL_OHMS
    from hal.sim import SimBoard, SimConnectorSpec, SimEvSpec

    sim = ConfigTable(config.get("sim", {}), "[sim]", path)
    sim.reject_unknown(
        {"ev_response_s", "ev_max_current_a", "ev_phases", "battery_kwh", "initial_soc", "voltage_v"}
    )
    defaults = SimEvSpec()
    ev = SimEvSpec(
        response_s=sim.number("ev_response_s", default=defaults.response_s, minimum=0, maximum=60, unit="s"),
        max_current_a=sim.number(
            "ev_max_current_a", default=defaults.max_current_a, minimum=1, maximum=80, unit="A"
        ),
        phases=sim.integer("ev_phases", default=defaults.phases, choices=(1, 2, 3)),
        battery_kwh=sim.number(
            "battery_kwh", default=defaults.battery_kwh, minimum=1, maximum=1000, unit="kWh"
        ),
        initial_soc=sim.number("initial_soc", default=defaults.initial_soc, minimum=0, maximum=1),
    )
    voltage_v = sim.number("voltage_v", default=230.0, minimum=100, maximum=280, unit="V")

    specs = []
    for index, conn in enumerate(config["connectors"]):
        table = ConfigTable(conn, f"[[connectors]][{index}]", path)
        ampacity = None
        if conn["cable"] == "socket":
            ampacity = table.number("cable_ampacity_a", default=32.0)
            if ampacity not in PP_NOMINAL_OHMS:
                allowed = ", ".join(f"{a:g}" for a in PP_NOMINAL_OHMS)
                raise table.error(
                    "cable_ampacity_a", f"must be one of {allowed} (the PP codings), got {ampacity:g}"
                )
        elif "cable_ampacity_a" in conn:
            raise table.error(
                "cable_ampacity_a", 'only applies to cable = "socket" (a fixed cable has no PP)'
            )
        specs.append(
            SimConnectorSpec(
                id=conn["id"],
                max_current_a=conn["max_current_a"],
                phases=conn["phases"],
                cable_ampacity_a=ampacity,
                has_lock=conn["lock"],
            )
        )

    state_file = options.state_dir / SIM_STATE_FILE if options.state_dir is not None else None
    simulator = SimBoard(
        specs, clock=options.clock, ev=ev, voltage_v=voltage_v, state_file=state_file, name=config["board"]["name"]
    )
    return simulator.as_board()


SIM_BACKEND = BoardBackend(build_sim_board, tables=("sim",), connector_keys=("cable_ampacity_a",))

# `[board] backend` -> BoardBackend; other packages add theirs under the entry-point group
# evse_agent.backends.board (hal/registry.py, docs/hal-backends.md).
BACKENDS = BackendRegistry(
    "board", {"sim": "hal.board:SIM_BACKEND", "devices": "hal.devices_board:DEVICES_BACKEND"}
)


# --- loader --------------------------------------------------------------------------------------------


def load_board(
    path: Path,
    *,
    state_dir: Path | None = None,
    clock: Clock = time.monotonic,
    pin_factory: Any = None,
    dry_run: bool = False,
) -> Board:
    """Read and validate a board config and build its Board (see LoadOptions for the keywords).

    Raises BoardConfigError for a config that cannot be used, and HardwareError (hal.interfaces) when a
    device that is opened while building (a GPIO pin factory, an ADC) cannot be opened.
    """
    path = Path(path)
    config, backend = _validate(_read_toml(path), path, dry_run=dry_run)
    builder = backend.build
    options = LoadOptions(state_dir=state_dir, clock=clock, pin_factory=pin_factory, dry_run=dry_run)
    try:
        board = builder(config, path, options)
    except BoardConfigError:
        raise
    except ValueError as exc:  # a builder's own consistency check
        raise BoardConfigError(f"{path}: {exc}") from exc
    board.name = config["board"]["name"]
    board.reboot_command = config["board"]["reboot_command"]
    board.firmware_install_command = config["board"]["firmware_install_command"]
    board.firmware_max_download_bytes = int(config["board"]["firmware_max_download_mb"] * 1024 * 1024)
    return board


MAX_BOARD_FILE_BYTES = 1024 * 1024  # a board config is a few kB; anything near this is the wrong file


def _read_toml(path: Path) -> dict:
    try:
        raw = _read_config_bytes(path, MAX_BOARD_FILE_BYTES)
    except OSError as exc:
        raise BoardConfigError(f"{path}: cannot read board config: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BoardConfigError(f"{path}: not UTF-8 text: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BoardConfigError(f"{path}: TOML syntax error: {exc}") from exc


def _read_config_bytes(path: Path, limit: int) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most `limit` bytes.

    /dev/zero never ends and a FIFO blocks its reader until a writer comes: opened non-blocking and
    checked on the open descriptor (no window between a stat and the open), neither can hang the loader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BoardConfigError(f"{path}: not a regular file ({_file_kind(info.st_mode)}): "
                                   "give the path of a board config TOML file")
        if info.st_size > limit:
            raise BoardConfigError(f"{path}: {info.st_size} bytes is too large for a board config "
                                   f"(at most {limit // 1024} KiB): wrong file?")
        chunks, size = [], 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:  # it grew after the fstat
                raise BoardConfigError(f"{path}: more than {limit // 1024} KiB: too large for a board config")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _validate(raw: dict, path: Path, *, dry_run: bool = False) -> tuple[dict, BoardBackend]:
    """Check the parts every back-end shares; return them normalised (defaults filled in), and the back-end."""
    if "board" not in raw:
        raise BoardConfigError(f"{path}: [board]: required table is missing")
    board = ConfigTable(raw["board"], "[board]", path)
    board.reject_unknown(
        ("name", "backend", "reboot_command", "firmware_install_command", "firmware_max_download_mb"))
    backend = board.string("backend")
    try:
        board_backend: BoardBackend = BACKENDS.lookup(backend, check_installed=dry_run)
    except KeyError:
        known = ", ".join(json.dumps(b) for b in BACKENDS)
        raise board.error("backend", f"unknown back-end {_show(backend)} (known: {known})") from None
    except (BackendClash, BackendLoadError) as exc:
        raise board.error("backend", str(exc)) from exc
    board_section = {
        "name": board.string("name"),
        "backend": backend,
        "reboot_command": board.string_list("reboot_command", default=None),
        # argv that installs a downloaded firmware file, "{file}" standing for its path (agent.station.firmware)
        "firmware_install_command": board.string_list("firmware_install_command", default=None),
        "firmware_max_download_mb": board.number("firmware_max_download_mb", default=200.0, minimum=1,
                                                 maximum=1_000_000, unit="MB"),
    }

    tables = board_backend.tables
    for key in raw:
        if key not in ("board", "connectors", *tables):
            known = ", ".join(f"[{t}]" for t in tables) or "none"
            hint = f"; back-end tables for backend = {_show(backend)}: {known}"
            raise BoardConfigError(f"{path}: {key}: unknown table or key{hint}")

    connectors_raw = raw.get("connectors")
    if connectors_raw is None:
        raise BoardConfigError(f"{path}: [[connectors]]: at least one connector is required")
    if not isinstance(connectors_raw, list) or not connectors_raw:
        raise BoardConfigError(f"{path}: [[connectors]]: expected a non-empty array of tables")

    allowed_keys = set(COMMON_CONNECTOR_KEYS + board_backend.connector_keys)
    connectors = []
    ids_seen: dict[int, int] = {}
    for index, entry in enumerate(connectors_raw):
        table = ConfigTable(entry, f"[[connectors]][{index}]", path)
        table.reject_unknown(allowed_keys)
        connector_id = table.integer("id", minimum=1)
        if connector_id in ids_seen:
            raise table.error(
                "id", f"duplicate connector id {connector_id} (also [[connectors]][{ids_seen[connector_id]}])"
            )
        ids_seen[connector_id] = index
        cable = table.string("cable", choices=CABLE_KINDS)
        lock_table = None
        if isinstance(entry.get("lock"), dict) and "lock" in board_backend.connector_keys:
            lock_table = entry["lock"]  # a back-end whose lock is a device table: the table means "has a lock"
        connectors.append(
            {
                **entry,
                "id": connector_id,
                "max_current_a": table.number(
                    "max_current_a",
                    minimum=MIN_CONNECTOR_CURRENT_A,
                    maximum=MAX_CONNECTOR_CURRENT_A,
                    unit="A",
                ),
                "phases": table.integer("phases", choices=(1, 3)),
                "cable": cable,
                # A Type 2 socket must lock the plug while charging; a tethered cable needs no lock.
                "lock": True if lock_table is not None else table.boolean("lock", default=cable == "socket"),
                "lock_table": lock_table,
            }
        )

    count = len(connectors)
    for index, conn in enumerate(connectors):
        if conn["id"] > count:
            raise BoardConfigError(
                f"{path}: [[connectors]][{index}].id: connector ids must be 1..{count} without gaps, got {conn['id']}"
            )

    return {
        **{key: value for key, value in raw.items() if key not in ("board", "connectors")},
        "board": board_section,
        "connectors": connectors,  # file order, so builders' error messages index the file correctly
    }, board_backend
