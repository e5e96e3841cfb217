"""Board config loader: a TOML file names a back-end and describes the connectors; we build the Board.

Back-ends are looked up by `[board] backend` in BACKENDS (a hal.registry.BackendRegistry: built-ins plus
the entry-point group evse_agent.backends.board), the way python-can maps `interface=` to a bus class:
    "sim"      the simulated station (hal.sim), configured by a [sim] table
    "devices"  real hardware, each device of each connector chosen by its own table (hal.devices_board)
The loader validates what every back-end shares (the schemas BOARD_TABLE and CONNECTOR_TABLE, declared
with hal.schema) and checks that no table or key is unknown; a back-end (BoardBackend) names the top-level
tables and the connector keys it accepts besides those, and its builder validates them with ConfigTable
(a hal.schema.TableReader) so errors look the same.

Every error is a BoardConfigError with a one-line message naming the file and the key, e.g.
    board-configs/x.toml: [[connectors]][0].max_current_a: expected a number, got "abc"
"""

from __future__ import annotations

import json
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
from hal.schema import OMITTED, Boolean, Integer, Number, Schema, String, StringList, TableReader, show

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
    connector_keys: tuple[str, ...] = ()  # [[connectors]] keys besides CONNECTOR_TABLE's

CABLE_KINDS = ("socket", "fixed")
MIN_CONNECTOR_CURRENT_A = 6.0  # IEC 61851-1: nothing below 6 A can be offered
MAX_CONNECTOR_CURRENT_A = 80.0  # end of the PWM duty table
SIM_STATE_FILE = "sim-board.json"


class BoardConfigError(Exception):
    """The board config cannot be used; the message names the file and the offending key."""


class ConfigTable(TableReader):
    """One table of a board file (hal.schema.TableReader): errors read "file: [table].key: reason"."""

    error_type = BoardConfigError


BOARD_TABLE = Schema({
    "name": String(doc="shown in logs and `evse status`"),
    "backend": String(doc="the board back-end: sim, devices, or one an installed package registers"),
    "reboot_command": StringList(default=None, doc="argv that reboots the station (OCPP Reset Hard)"),
    "firmware_install_command": StringList(
        default=None, doc='argv that installs a downloaded firmware file, "{file}" standing for its path'),
    "firmware_max_download_mb": Number(default=200.0, minimum=1, maximum=1_000_000, unit="MB",
                                       doc="largest firmware download accepted"),
})  # fmt: skip
# The [[connectors]] keys every back-end shares; `lock` defaults to whether the cable is a socket.
CONNECTOR_TABLE = Schema({
    "id": Integer(minimum=1, doc="OCPP connector id: 1..N in any order, without gaps"),
    "max_current_a": Number(minimum=MIN_CONNECTOR_CURRENT_A, maximum=MAX_CONNECTOR_CURRENT_A, unit="A",
                            doc="the most this connector may offer"),
    "phases": Integer(choices=(1, 3), doc="phases wired to the connector"),
    "cable": String(choices=CABLE_KINDS, doc="a Type 2 socket or a fixed (tethered) cable"),
    "lock": Boolean(default=None, doc="has a plug lock (default: true for a socket)"),
})  # fmt: skip


# --- back-ends -----------------------------------------------------------------------------------------


# [sim]: the simulated EV (hal.sim.SimEvSpec, whose defaults apply) and the mains voltage.
SIM_TABLE = Schema({
    "ev_response_s": Number(default=OMITTED, minimum=0, maximum=60, unit="s", doc="the EV's reaction time"),
    "ev_max_current_a": Number(default=OMITTED, minimum=1, maximum=80, unit="A", doc="the most the EV draws"),
    "ev_phases": Integer(default=OMITTED, choices=(1, 2, 3), doc="phases the EV charges on"),
    "battery_kwh": Number(default=OMITTED, minimum=1, maximum=1000, unit="kWh", doc="battery capacity"),
    "initial_soc": Number(default=OMITTED, minimum=0, maximum=1, doc="state of charge when plugged in"),
    "voltage_v": Number(default=OMITTED, minimum=100, maximum=280, unit="V", doc="mains voltage (default 230)"),
})  # fmt: skip


def build_sim_board(config: dict, path: Path, options: LoadOptions) -> Board:
    """The simulated station (hal.sim); its state file lives in options.state_dir when one is given."""
    from hal.pilot_math import PP_NOMINAL_OHMS
    from hal.sim import SimBoard, SimConnectorSpec, SimEvSpec

    sim = ConfigTable(config.get("sim", {}), "[sim]", path).read(SIM_TABLE)
    voltage_v = sim.pop("voltage_v", 230.0)
    ev = SimEvSpec(**{key.removeprefix("ev_"): value for key, value in sim.items()})

    specs = []
    for index, conn in enumerate(config["connectors"]):
        table = ConfigTable(conn, f"[[connectors]][{index}]", path)
        ampacity = None
        if conn["cable"] == "socket":
            ampacity = table.number("cable_ampacity_a", default=32.0)
            if ampacity not in PP_NOMINAL_OHMS:
                allowed = ", ".join(f"{a:g}" for a in PP_NOMINAL_OHMS)
                raise table.error("cable_ampacity_a", f"must be one of {allowed} (the PP codings), got {ampacity:g}")
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
    board_section = board.read(BOARD_TABLE)
    backend = board_section["backend"]
    try:
        board_backend: BoardBackend = BACKENDS.lookup(backend, check_installed=dry_run)
    except KeyError:
        known = ", ".join(json.dumps(b) for b in BACKENDS)
        raise board.error("backend", f"unknown back-end {show(backend)} (known: {known})") from None
    except (BackendClash, BackendLoadError) as exc:
        raise board.error("backend", str(exc)) from exc

    tables = board_backend.tables
    for key in raw:
        if key not in ("board", "connectors", *tables):
            known = ", ".join(f"[{t}]" for t in tables) or "none"
            hint = f"; back-end tables for backend = {show(backend)}: {known}"
            raise BoardConfigError(f"{path}: {key}: unknown table or key{hint}")

    connectors_raw = raw.get("connectors")
    if connectors_raw is None:
        raise BoardConfigError(f"{path}: [[connectors]]: at least one connector is required")
    if not isinstance(connectors_raw, list) or not connectors_raw:
        raise BoardConfigError(f"{path}: [[connectors]]: expected a non-empty array of tables")

    connectors = []
    ids_seen: dict[int, int] = {}
    for index, entry in enumerate(connectors_raw):
        lock_table = None
        if isinstance(entry, dict) and isinstance(entry.get("lock"), dict) and "lock" in board_backend.connector_keys:
            lock_table = entry["lock"]  # a back-end whose lock is a device table: the table means "has a lock"
        shared = entry if lock_table is None else {key: value for key, value in entry.items() if key != "lock"}
        table = ConfigTable(shared, f"[[connectors]][{index}]", path)
        conn = table.read(CONNECTOR_TABLE, extra_keys=board_backend.connector_keys)
        if conn["id"] in ids_seen:
            raise table.error("id", f"duplicate connector id {conn['id']} (also [[connectors]][{ids_seen[conn['id']]}])")
        ids_seen[conn["id"]] = index
        # A Type 2 socket must lock the plug while charging; a tethered cable needs no lock.
        lock = lock_table is not None or (conn["cable"] == "socket" if conn["lock"] is None else conn["lock"])
        connectors.append({**entry, **conn, "lock": lock, "lock_table": lock_table})

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
