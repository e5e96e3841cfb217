"""The files a bench run needs to start the agent: an agent config and, by default, a fast sim board.

One writer for the end-to-end tests (tests/agent_harness.py), the chaos run (hil/chaos.py) and the
benchmarks (bench/common.py), so that they all start the agent the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

FAST_SIM_BOARD = """\
[board]
name = "bench sim"
backend = "sim"
{reboot}

[sim]
ev_response_s = {ev_response_s}

{connectors}"""

SIM_CONNECTOR = """\
[[connectors]]
id = {id}
max_current_a = 32.0
phases = 3
cable = "socket"
cable_ampacity_a = 32
"""


def _toml(value) -> str:
    """A TOML literal for a string, number, boolean or list of strings (their JSON form is valid TOML)."""
    return json.dumps(value)


def write_sim_board(path: Path, *, connectors: int = 1, ev_response_s: float = 0.1,
                    reboot_command: list[str] | None = None) -> Path:
    path.write_text(FAST_SIM_BOARD.format(
        reboot=f"reboot_command = {_toml(reboot_command)}" if reboot_command else "",
        ev_response_s=ev_response_s,
        connectors="\n".join(SIM_CONNECTOR.format(id=i) for i in range(1, connectors + 1))))
    return path


def write_agent_config(workdir: Path, csms_url: str, *, station_id: str = "CP-T1", vendor: str = "TestVendor",
                       model: str = "TestModel", board_file: Path | str | None = None, connectors: int = 1,
                       reboot_command: list[str] | None = None, ocpp_keys: dict | None = None,
                       charging: dict | None = None, journal: Path | str = "state/journal.sqlite",
                       socket: Path | str = "control.sock", log_level: str | None = None,
                       extra_charging_lines: str = "") -> Path:
    """workdir/agent.toml (and workdir/board.toml, a fast sim board, unless `board_file` is given).
    Relative paths are relative to workdir, as the agent resolves them against its config file."""
    if board_file is None:
        board_file = write_sim_board(workdir / "board.toml", connectors=connectors, reboot_command=reboot_command)
    key_lines = "\n".join(f"{key} = {_toml(value)}" for key, value in (ocpp_keys or {}).items())
    charging_lines = "\n".join(f"{key} = {_toml(value)}" for key, value in (charging or {}).items())
    log_section = f"\n[log]\nlevel = {_toml(log_level)}\n" if log_level else ""
    config = workdir / "agent.toml"
    config.write_text(f"""\
[station]
id = {_toml(station_id)}
vendor = {_toml(vendor)}
model = {_toml(model)}

[ocpp]
url = {_toml(csms_url)}
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[ocpp.configuration]
{key_lines}

[board]
file = {_toml(str(board_file))}

[journal]
path = {_toml(str(journal))}

[control]
socket = {_toml(str(socket))}

[charging]
{charging_lines}
{extra_charging_lines}
{log_section}""")
    return config
