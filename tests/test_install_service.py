"""`evse install-service` (agent.cli.install): the unit, a config skeleton and a board file under a prefix;
never overwriting what the station maker edited; --dry-run writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agent.cli.install import UNIT_NAME, render_unit, shipped_boards
from agent.config import load_config

REPO = Path(__file__).resolve().parent.parent


def install(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "install-service", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO)


def files_under(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_install_writes_unit_config_skeleton_and_board_file_under_the_prefix(tmp_path):
    result = install("--prefix", str(tmp_path), "--board", "pi-relay-mcp3008-sdm630-pn532")
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    config = tmp_path / "etc/evse-agent/config.toml"
    board = tmp_path / "etc/evse-agent/board.toml"
    assert set(files_under(tmp_path)) == {f"etc/systemd/system/{UNIT_NAME}", "etc/evse-agent/config.toml",
                                          "etc/evse-agent/board.toml"}
    assert unit.read_text() == render_unit(Path("/opt/evse-agent"), Path("/etc/evse-agent/config.toml"))
    assert board.read_text() == shipped_boards()["pi-relay-mcp3008-sdm630-pn532"].read_text()
    # the config may hold the CSMS password: not world-readable
    assert config.stat().st_mode & 0o777 == 0o640 and unit.stat().st_mode & 0o777 == 0o644

    # the skeleton is a valid config with the board's and the service's paths on the target
    loaded = load_config(config)
    assert loaded.board.file == Path("/etc/evse-agent/board.toml")
    assert loaded.journal.path == Path("/var/lib/evse-agent/journal.sqlite")  # StateDirectory=
    assert loaded.control.socket == Path("/run/evse-agent/control.sock")  # RuntimeDirectory=
    assert loaded.control.group == "evse"

    for line in (f"created  {unit}", f"created  {config}", f"created  {board}",
                 "systemctl daemon-reload && systemctl enable --now evse-agent"):
        assert line in result.stdout, result.stdout
    assert "skipped  users and groups" in result.stdout  # they belong to the target's /etc/passwd


def test_a_second_run_leaves_edited_files_alone_and_says_so(tmp_path):
    assert install("--prefix", str(tmp_path)).returncode == 0
    config = tmp_path / "etc/evse-agent/config.toml"
    unit = tmp_path / "etc/systemd/system" / UNIT_NAME
    edited_config = config.read_text().replace('id = "CP-1"', 'id = "WALLBOX-7"')
    config.write_text(edited_config)
    edited_unit = unit.read_text().replace("RestartSec=2s", "RestartSec=5s")
    unit.write_text(edited_unit)

    again = install("--prefix", str(tmp_path), "--board", "sim-2")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == edited_config
    assert unit.read_text() == edited_unit
    assert (tmp_path / "etc/evse-agent/board.toml").read_text() == shipped_boards()["sim"].read_text()
    assert f"kept     {config} (exists: not overwritten)" in again.stdout
    assert f"kept     {tmp_path / 'etc/evse-agent/board.toml'} (exists: not overwritten)" in again.stdout
    assert f"kept     {unit} (differs from the packaged unit: --force replaces it" in again.stdout

    forced = install("--prefix", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"replaced {unit}" in forced.stdout
    assert unit.read_text() == render_unit(Path("/opt/evse-agent"), Path("/etc/evse-agent/config.toml"))
    assert config.read_text() == edited_config  # --force is for the unit only

    unchanged = install("--prefix", str(tmp_path))
    assert f"unchanged {unit}" in unchanged.stdout


def test_dry_run_writes_nothing(tmp_path):
    result = install("--prefix", str(tmp_path), "--dry-run", "--config-dir", "/etc/evse")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert f"would    write {tmp_path}/etc/systemd/system/{UNIT_NAME}" in result.stdout
    assert f"would    write {tmp_path}/etc/evse/config.toml" in result.stdout


def test_dry_run_on_the_real_root_shows_the_accounts_it_would_create_and_changes_nothing():
    paths = [Path("/etc/group"), Path("/etc/passwd"), Path("/etc/systemd/system", UNIT_NAME),
             Path("/etc/evse-agent/config.toml"), Path("/etc/evse-agent/board.toml")]

    def snapshot():
        return [p.read_text() if p.exists() else None for p in paths]

    before = snapshot()
    result = install("--dry-run")
    assert result.returncode == 0, result.stderr
    assert snapshot() == before
    for line in result.stdout.splitlines():
        if line.startswith("would    create user"):
            assert "useradd --system --gid evse-agent" in line and "--shell /usr/sbin/nologin" in line


def test_bad_options_are_one_line(tmp_path):
    result = install("--prefix", str(tmp_path), "--board", "no-such-board")
    assert result.returncode == 1 and result.stderr.startswith("evse: no shipped board 'no-such-board'")
    assert list(tmp_path.iterdir()) == []
    relative = install("--prefix", "relative/dir")
    assert relative.returncode == 2 and "--prefix must be an absolute path" in relative.stderr
