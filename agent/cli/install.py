"""`evse install-service`: install the agent as a systemd service, the way docs/install.md describes.

It writes the packaged unit to /etc/systemd/system/evse-agent.service (ExecStart pointing at the venv's
`evse` and the config file), a config skeleton to /etc/evse-agent/config.toml and a shipped board file
to /etc/evse-agent/board.toml, and creates the service's user and groups. It never overwrites a config
or board file that exists (the station maker's edits): it says so and leaves it. A unit that differs
from the packaged one is left too, unless --force (local changes belong in a drop-in). It does not start
anything: it prints the systemctl line to run.

--prefix writes the files under another root (an image being built, a test); users and groups are then
not created (they belong to the target's /etc/passwd: run it again on the board, or in the image's chroot).
--dry-run prints what it would do and changes nothing.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from agent.config import DEFAULT_CONTROL_GROUP, dump_example_config

UNIT_NAME = "evse-agent.service"
UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_VENV = Path("/opt/evse-agent")
DEFAULT_CONFIG_DIR = Path("/etc/evse-agent")
DEFAULT_BOARD = "sim"
SERVICE_USER = "evse-agent"  # its group has the same name
STATE_DIR = Path("/var/lib/evse-agent")
# in the packaged unit, replaced by the chosen venv and config directory
TEMPLATE_EXECUTABLE = "/opt/evse-agent/bin/evse"
TEMPLATE_CONFIG = "/etc/evse-agent/config.toml"
SOURCE_TREE = Path(__file__).resolve().parents[2]  # agent/cli/install.py -> the checkout


class InstallError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default="/",
                        help="root directory to write under (default /); users and groups are only created for /")
    parser.add_argument("--config-dir", default=str(DEFAULT_CONFIG_DIR),
                        help=f"config directory on the board (default {DEFAULT_CONFIG_DIR})")
    parser.add_argument("--venv", default=str(DEFAULT_VENV),
                        help=f"virtual environment the agent is installed in (default {DEFAULT_VENV})")
    parser.add_argument("--board", default=DEFAULT_BOARD,
                        help=f"shipped board config to copy to board.toml (default {DEFAULT_BOARD}; "
                             f"one of: {', '.join(sorted(shipped_boards()))})")
    parser.add_argument("--force", action="store_true",
                        help="replace a unit file that differs from the packaged one (never the config files)")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")


# ---- packaged files ------------------------------------------------------------------------------------


def unit_template() -> str:
    """The packaged unit (package `evse_systemd`, i.e. the source tree's systemd/ folder)."""
    try:
        return resources.files("evse_systemd").joinpath(UNIT_NAME).read_text()
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    try:  # running from a source tree that was installed before evse_systemd existed
        return (SOURCE_TREE / "systemd" / UNIT_NAME).read_text()
    except OSError:
        raise InstallError(f"the packaged {UNIT_NAME} is missing: reinstall evse-agent") from None


def shipped_boards() -> dict[str, Traversable]:
    """Board name -> the board config file (TOML) shipped with the package."""
    files: Sequence[Traversable]
    try:
        folder = resources.files("evse_board_configs")
        files = [f for f in folder.iterdir() if f.name.endswith(".toml")]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        files = sorted((SOURCE_TREE / "board-configs").glob("*.toml"))
    return {f.name.removesuffix(".toml"): f for f in files}


def render_unit(venv: Path, config_file: Path) -> str:
    text = unit_template()
    lines = text.splitlines(keepends=True)
    exec_lines = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    if len(exec_lines) != 1 or TEMPLATE_EXECUTABLE not in lines[exec_lines[0]] \
            or TEMPLATE_CONFIG not in lines[exec_lines[0]]:
        raise InstallError(f"the packaged {UNIT_NAME} has no ExecStart={TEMPLATE_EXECUTABLE} ... {TEMPLATE_CONFIG}")
    line = lines[exec_lines[0]]
    line = line.replace(TEMPLATE_EXECUTABLE, str(venv / "bin" / "evse")).replace(TEMPLATE_CONFIG, str(config_file))
    lines[exec_lines[0]] = line
    return "".join(lines)


def unit_groups(unit: str) -> list[str]:
    """The groups of SupplementaryGroups= (each must exist, or systemd refuses to start the unit)."""
    groups: list[str] = []
    for line in unit.splitlines():
        if line.startswith("SupplementaryGroups="):
            groups += line.split("=", 1)[1].split()
    return groups


def config_skeleton(config_dir: Path) -> str:
    text = dump_example_config(board_file=str(config_dir / "board.toml"))
    header = ("# Written by `evse install-service`: edit [station] id, [ocpp] url (and password), check the\n"
              "# board file, then `evse config check --config THIS_FILE`. Later runs leave this file alone.\n")
    return header + text


# ---- the plan ------------------------------------------------------------------------------------------


@dataclass
class Options:
    prefix: Path = Path("/")
    config_dir: Path = DEFAULT_CONFIG_DIR
    venv: Path = DEFAULT_VENV
    board: str = DEFAULT_BOARD
    force: bool = False
    dry_run: bool = False


class Installer:
    def __init__(self, options: Options, say=print):
        self.o = options
        self.say = say
        self.problems = 0
        self.root = os.geteuid() == 0

    def target(self, path: Path) -> Path:
        """Where a path of the board lives under --prefix."""
        return self.o.prefix / path.relative_to("/")

    def run(self) -> int:
        boards = shipped_boards()
        if self.o.board not in boards:
            raise InstallError(f"no shipped board {self.o.board!r}; shipped: {', '.join(sorted(boards))}")
        config_file = self.o.config_dir / "config.toml"
        unit = render_unit(self.o.venv, config_file)
        self.accounts(unit)
        self.file(UNIT_DIR / UNIT_NAME, unit, 0o644, replaceable=True)
        self.file(config_file, config_skeleton(self.o.config_dir), 0o640, group=SERVICE_USER)
        self.file(self.o.config_dir / "board.toml", boards[self.o.board].read_text(), 0o644)
        executable = self.o.venv / "bin" / "evse"
        if not os.access(self.target(executable), os.X_OK):
            self.say(f"warning  {executable} does not exist yet: the unit runs it; create the venv there "
                     f"(python3 -m venv {self.o.venv} && {self.o.venv}/bin/pip install evse-agent)")
        self.say("")
        self.say(f"next: edit {config_file} ([station] id, [ocpp] url), check it with "
                 f"`{executable} config check --config {config_file}`, then:")
        self.say("  systemctl daemon-reload && systemctl enable --now evse-agent")
        return 1 if self.problems else 0

    # ---- users and groups

    def accounts(self, unit: str) -> None:
        if self.o.prefix != Path("/"):
            names = ", ".join(dict.fromkeys([SERVICE_USER, DEFAULT_CONTROL_GROUP, *unit_groups(unit)]))
            self.say(f"skipped  users and groups ({names}): --prefix is not /; create them on the board "
                     "(evse install-service there, or in the image's chroot)")
            return
        for group in dict.fromkeys([SERVICE_USER, DEFAULT_CONTROL_GROUP, *unit_groups(unit)]):
            if not _group_exists(group):
                note = "" if group in (SERVICE_USER, DEFAULT_CONTROL_GROUP) else \
                    " (the unit's SupplementaryGroups=; a udev rule must give it the device nodes)"
                self.command(["groupadd", "--system", group], f"group {group}{note}")
        if not _user_exists(SERVICE_USER):
            self.command(["useradd", "--system", "--gid", SERVICE_USER, "--home-dir", str(STATE_DIR),
                          "--no-create-home", "--shell", "/usr/sbin/nologin",
                          "--comment", "evse-agent charge controller", SERVICE_USER], f"user {SERVICE_USER}")

    def command(self, argv: list[str], what: str) -> None:
        if self.o.dry_run:
            self.say(f"would    create {what}: {shlex.join(argv)}")
            return
        if not self.root:
            self.say(f"missing  {what}: as root run: {shlex.join(argv)}")
            self.problems += 1
            return
        try:
            subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", None) or str(exc)
            self.say(f"FAILED   {what}: {shlex.join(argv)}: {detail.strip()}")
            self.problems += 1
            return
        self.say(f"created  {what}")

    # ---- files

    def file(self, path: Path, text: str, mode: int, *, replaceable: bool = False, group: str | None = None) -> None:
        where = self.target(path)
        shown = where if self.o.prefix != Path("/") else path
        if where.exists():
            try:
                same = where.read_text() == text
            except (OSError, UnicodeDecodeError):
                same = False
            if same:
                self.say(f"unchanged {shown}")
                return
            if not (replaceable and self.o.force):
                hint = ("differs from the packaged unit: --force replaces it (local changes belong in a drop-in: "
                        "systemctl edit evse-agent)") if replaceable else "exists: not overwritten"
                self.say(f"kept     {shown} ({hint})")
                return
            verb = "replaced"
        else:
            verb = "created"
        if self.o.dry_run:
            self.say(f"would    write {shown} (mode {mode:o})")
            return
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
            temporary = where.with_name(f".{where.name}.tmp")
            temporary.write_text(text)
            os.chmod(temporary, mode)
            if group is not None and self.root and self.o.prefix == Path("/") and _group_exists(group):
                os.chown(temporary, 0, grp.getgrnam(group).gr_gid)
            os.replace(temporary, where)
        except OSError as exc:
            raise InstallError(f"cannot write {where}: {exc.strerror or exc}"
                               + (" (run as root)" if isinstance(exc, PermissionError) else "")) from None
        self.say(f"{verb:8} {shown}")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    options = Options(prefix=Path(args.prefix), config_dir=Path(args.config_dir), venv=Path(args.venv),
                      board=args.board, force=args.force, dry_run=args.dry_run)
    for name, path in (("--prefix", options.prefix), ("--config-dir", options.config_dir), ("--venv", options.venv)):
        if not path.is_absolute():
            print(f"evse: {name} must be an absolute path, got {path}", file=sys.stderr)
            return 2
    try:
        return Installer(options).run()
    except InstallError as exc:
        print(f"evse: {exc}", file=sys.stderr)
        return 1
