"""The real agent as a child process: one harness for the end-to-end tests, the chaos run and the benchmarks.

The agent is started exactly as a station runs it (`python -m agent run --config FILE`), its output in a log
file; it is driven through its control socket, like `evse ...` does, and can be killed (SIGKILL) and started
again on the same files. Users: tests/agent_harness.py (`Agent`, the e2e helpers), hil/chaos.py,
bench/common.py (the benchmarks, which also read the process's /proc figures).

    config = write_agent_config(workdir, csms.url)        # workdir/agent.toml and a fast sim board
    agent = AgentProcess(workdir, config)
    agent.start()
    await agent.ready()                                    # the control socket answers
    await agent.charge("0411223344")                       # plug in, swipe, wait for Charging
    code = await agent.terminate()                         # SIGTERM; the agent's exit code
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli.control_socket import ControlClientError, request

REPO = Path(__file__).resolve().parent.parent
# start()'s default --log-level: the EVSE_TEST_LOG_LEVEL environment variable, or debug
LOG_LEVEL_FROM_ENVIRONMENT = "$EVSE_TEST_LOG_LEVEL"
# errors of a control request while the agent is (re)starting: no socket yet, no answer yet
NOT_UP = (ControlClientError, OSError, ValueError)


# ---- the files the agent needs: an agent config and, by default, a fast sim board ---------------------

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


# ---- the control socket ---------------------------------------------------------------------------------


class ControlConnection:
    """One persistent connection to the agent's control socket (JSON lines), for low-latency polling (the
    benchmarks). The agent closes a connection idle for 30 s (agent.cli.control_socket): one idle longer
    than IDLE_S is replaced."""

    IDLE_S = 20.0

    def __init__(self, path: Path):
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used_at = 0.0

    async def request(self, cmd: str, **args: Any) -> Any:
        if self._writer is not None and time.monotonic() - self._used_at > self.IDLE_S:
            self.close()
        self._used_at = time.monotonic()
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=2**20)
            assert self._reader is not None
            self._writer.write(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("the agent closed the control connection")
            reply = json.loads(line)
        except BaseException:
            self.close()  # half a request on it: the next one starts afresh
            raise
        if not reply.get("ok"):
            raise ControlClientError(f"{cmd}: {reply.get('error')}")
        return reply.get("result")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---- /proc figures ------------------------------------------------------------------------------------


def cpu_seconds_of(pid: int | str) -> float:
    """utime + stime of a process (every thread), in seconds; pid "self" for this one."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_of(pid: int | str) -> dict[str, int]:
    """VmRSS, VmHWM ... of /proc/PID/status, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return values


def io_of(pid: int | str) -> dict[str, int]:
    """/proc/PID/io: rchar, wchar, read_bytes, write_bytes (what reached the block layer) ..."""
    values = {}
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        key, _, value = line.partition(":")
        values[key.strip()] = int(value)
    return values


def is_registered(status: dict) -> bool:
    """The agent is connected and its BootNotification was Accepted (from `status`)."""
    return status["ocpp"]["registration"] == "Accepted" and status["ocpp"]["connected"]


# ---- the agent process --------------------------------------------------------------------------------


class AgentProcess:
    """`python -m agent run --config FILE` in `workdir`, exactly as a station runs it; can be killed
    (SIGKILL) and started again on the same files.

    socket, log_path: default workdir/control.sock (where write_agent_config puts it) and workdir/agent.log.
    log_level: the --log-level of every start (LOG_LEVEL_FROM_ENVIRONMENT: $EVSE_TEST_LOG_LEVEL or debug;
        None: no flag, the config's [log] level, as on a station).
    unbuffered: PYTHONUNBUFFERED=1, so that the log is complete up to a kill; a benchmark leaves Python's
        buffering as a station has it.
    keep_connection: one persistent control connection (low-latency polling, for benchmarks) instead of
        one connection per request, as `evse` makes them.
    """

    ready_timeout_s = 15.0
    wait_timeout_s = 10.0

    def __init__(self, workdir: Path, config: Path, *, socket: Path | None = None, log_path: Path | None = None,
                 cwd: Path | None = None, log_level: str | None = LOG_LEVEL_FROM_ENVIRONMENT,
                 unbuffered: bool = True, keep_connection: bool = False):
        self.workdir = workdir
        self.config = config
        self.socket = socket or workdir / "control.sock"
        self.log_path = log_path or workdir / "agent.log"
        self.cwd = cwd or workdir
        self.log_level = log_level
        self.unbuffered = unbuffered
        self.connection = ControlConnection(self.socket) if keep_connection else None
        self.proc: subprocess.Popen | None = None

    # ---- the process ------------------------------------------------------------------------------

    def start(self, log_level: str | None = None, max_file_bytes: int | None = None) -> float:
        """Start the agent (its output appended to log_path); returns the wall-clock time (time.time())
        just before the fork. max_file_bytes caps every file it writes (RLIMIT_FSIZE): a disk that fills up."""
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if self.unbuffered:
            env["PYTHONUNBUFFERED"] = "1"
        else:
            env.pop("PYTHONUNBUFFERED", None)
        level = log_level or self.log_level
        if level == LOG_LEVEL_FROM_ENVIRONMENT:
            level = os.environ.get("EVSE_TEST_LOG_LEVEL", "debug")
        command = [sys.executable, "-m", "agent", "run", "--config", str(self.config)]
        if level:
            command += ["--log-level", level]

        limit_file_size = None
        if max_file_bytes is not None:
            cap = max_file_bytes

            def limit_file_size() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (cap, cap))

        self.close_connection()  # one to an earlier process is dead
        with open(self.log_path, "ab") as log:
            started = time.time()
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd,
                                         preexec_fn=limit_file_size)
        return started

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the agent was never started"
        return self.proc.pid

    def kill9(self) -> None:
        """SIGKILL (a power cut, as far as the agent's files are concerned), and reap it."""
        assert self.proc is not None, "the agent was never started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.close_connection()

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, as systemd stops the unit; returns the agent's exit code (of its earlier exit if it had
        ended already, 0 if never started). One still running after `timeout` s is killed (SIGKILL) and
        TimeoutError raised."""
        self.close_connection()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
                raise TimeoutError(f"agent ignored SIGTERM for {timeout} s, killed:\n{self.log_tail()}")
        return self.proc.returncode

    async def stop(self, timeout: float = 15.0) -> None:
        """Clean-up of a run: SIGTERM, and SIGKILL if that is not enough, without raising."""
        try:
            await self.terminate(timeout)
        except TimeoutError:
            pass

    def cleanup(self) -> None:
        """Test clean-up: SIGKILL the process if it still runs, and reap it."""
        self.close_connection()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(line[:300] for line in text.splitlines()[-lines:])

    # ---- the control socket ------------------------------------------------------------------------

    async def cmd(self, cmd: str, **args: Any) -> Any:
        """One control request (`status`, `sim.plug`, ...); its result, ControlClientError if refused."""
        if self.connection is not None:
            return await self.connection.request(cmd, **args)
        return await asyncio.to_thread(request, self.socket, cmd, args, 5.0)

    def close_connection(self) -> None:
        if self.connection is not None:
            self.connection.close()

    async def status(self) -> dict:
        return await self.cmd("status")

    async def connector(self, connector: int = 1) -> dict:
        return (await self.status())["connectors"][connector - 1]

    async def control_pid(self) -> int:
        """The pid of the control process the agent spawned (devices, controllers, control loop)."""
        return (await self.status())["station"]["control_pid"]

    async def ready(self, timeout: float | None = None, *, registered: bool = False) -> dict:
        """Wait until the control socket answers (and, with `registered`, the agent is connected and its
        BootNotification Accepted); returns the status. RuntimeError if the agent exits meanwhile."""
        timeout = self.ready_timeout_s if timeout is None else timeout
        what = "the control socket" + (" and a registration (connected, BootNotification Accepted)"
                                       if registered else "")
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = await self.status()
                if not registered or is_registered(last):
                    return last
            except NOT_UP:
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"agent not ready after {timeout} s: waited for {what}; last status: {last}\n"
                           f"{self.log_tail()}")

    async def wait_connector(self, predicate: Callable[[dict], bool], connector: int = 1,
                             timeout: float | None = None, what: str = "connector state") -> dict:
        """Poll the connector's status until `predicate` holds; TimeoutError names `what` and shows the
        last status and the log tail."""
        timeout = self.wait_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            last = await self.connector(connector)
            if predicate(last):
                return last
            await asyncio.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what} (connector {connector}); "
                           f"last: {last}\n{self.log_tail()}")

    async def wait_status(self, predicate: Callable[[dict], bool], timeout: float | None = None,
                          what: str = "agent status") -> dict:
        """Poll the whole status until `predicate` holds (a control socket briefly away, as in a restart,
        is waited for); TimeoutError names `what` and shows the last status and the log tail."""
        timeout = self.wait_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = await self.status()
                if predicate(last):
                    return last
            except (ControlClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last: {last}\n{self.log_tail()}")

    async def charge(self, tag: str, connector: int = 1) -> dict:
        """Plug the sim EV in, present a card, wait until the contactor is closed; the connector status."""
        await self.cmd("sim.plug", connector=connector)
        await self.wait_connector(lambda c: c["status"] == "Preparing", connector, what="Preparing")
        await self.cmd("sim.swipe", tag=tag)
        return await self.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging",
                                         connector, what="Charging")

    # ---- /proc figures -----------------------------------------------------------------------------

    def proc_status(self) -> dict[str, int]:
        """VmRSS, VmHWM ... of the agent process, in kB."""
        return proc_status_of(self.pid)

    def cpu_seconds(self) -> float:
        """utime + stime of the agent process (every thread), in seconds."""
        return cpu_seconds_of(self.pid)

    def io(self) -> dict[str, int]:
        """/proc/PID/io of the agent process."""
        return io_of(self.pid)
