"""Run the real agent as a process against the bundled CSMS on 127.0.0.1, for end-to-end tests.

The agent is started exactly as a station runs it (`python -m agent run --config FILE`), with its
journal, sim-board state and control socket in the test's temporary directory. Tests drive the
simulated EV and card reader through the control socket, like `evse sim ...` does.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.cli.control_socket import ControlClientError, request
from hil.csms import LocalCsms
from hil.station_files import write_agent_config

REPO = Path(__file__).resolve().parent.parent
STATION_ID = "CP-T1"
TAG_OK = "0411223344"  # card UIDs as the reader reports them: uppercase hex
TAG_2 = "0455667788"
TAG_BLOCKED = "04DEADBEEF"
TAG_UNKNOWN = "04FFFFFFFF"

def write_config(workdir: Path, csms_url: str, *, station_id: str = STATION_ID, connectors: int = 1,
                 ocpp_keys: dict | None = None, reboot_command: list[str] | None = None,
                 extra: str = "") -> Path:
    """The agent config of the end-to-end tests: fast sampling and retries, `extra` lines in [charging]."""
    keys = {"MeterValueSampleInterval": 1, "HeartbeatInterval": 60, "TransactionMessageRetryInterval": 1,
            "ConnectionTimeOut": 30, **(ocpp_keys or {})}
    return write_agent_config(workdir, csms_url, station_id=station_id, connectors=connectors, ocpp_keys=keys,
                              reboot_command=reboot_command, charging={"max_current_a": 16, "meter_poll_s": 0.2},
                              extra_charging_lines=extra)


class Agent:
    """One agent process; can be killed (SIGKILL) and started again on the same files."""

    def __init__(self, workdir: Path, config: Path):
        self.workdir = workdir
        self.config = config
        self.socket = workdir / "control.sock"
        self.log_path = workdir / "agent.log"
        self.proc: subprocess.Popen | None = None

    def start(self, log_level: str | None = None, max_file_bytes: int | None = None) -> None:
        """Start the agent. max_file_bytes caps every file it writes (RLIMIT_FSIZE): a disk that fills up."""
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        level = log_level or os.environ.get("EVSE_TEST_LOG_LEVEL", "debug")

        def limit_file_size():
            if max_file_bytes is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config), "--log-level", level],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, preexec_fn=limit_file_size,
        )
        log.close()

    async def ready(self, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return await self.cmd("status")
            except (ControlClientError, OSError, ValueError):
                await asyncio.sleep(0.05)
        raise TimeoutError(f"agent control socket not up:\n{self.log_tail()}")

    async def cmd(self, cmd: str, **args):
        return await asyncio.to_thread(request, self.socket, cmd, args, 5.0)

    async def status(self) -> dict:
        return await self.cmd("status")

    async def connector(self, connector: int = 1) -> dict:
        return (await self.status())["connectors"][connector - 1]

    async def wait_connector(self, predicate, connector: int = 1, timeout: float = 10.0,
                             what: str = "connector state") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.connector(connector)
            if predicate(last):
                return last
            await asyncio.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what}; last: {last}\n{self.log_tail()}")

    async def wait_status(self, predicate, timeout: float = 10.0, what: str = "agent status") -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = await self.status()
                if predicate(last):
                    return last
            except (ControlClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what}; last: {last}\n{self.log_tail()}")

    def cleanup(self) -> None:
        """Test clean-up: SIGKILL the process if it still runs, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
            raise TimeoutError(f"agent ignored SIGTERM:\n{self.log_tail()}")
        return self.proc.returncode

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(line[:300] for line in self.log_path.read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


async def start_agent(tmp_path: Path, csms: LocalCsms, **config_args) -> Agent:
    config = write_config(tmp_path, csms.url, **config_args)
    agent = Agent(tmp_path, config)
    agent.start()
    await agent.ready()
    return agent


async def registered(agent: Agent, timeout: float = 10.0) -> dict:
    """Wait until the agent is connected and its BootNotification is Accepted. Before that a card is
    decided offline (an unknown one is refused) and the CSMS's commands are not all served yet."""
    return await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted" and s["ocpp"]["connected"],
                                   timeout=timeout, what="registration")


async def online(run_agent, csms: LocalCsms, connectors: int = 1, **config_args) -> Agent:
    """Start an agent and wait until it is registered, connected and has reported the boot status of
    connector 0 and of every connector, so that frames counted afterwards belong to the test alone."""
    agent = await run_agent(csms, connectors=connectors, **config_args)
    await registered(agent)
    for connector in range(connectors + 1):
        await wait_call(csms, "StatusNotification", where=lambda p, c=connector: p["connectorId"] == c)
    return agent


async def charge(agent: Agent, csms: LocalCsms, tag: str, connector: int = 1) -> dict:
    """Plug in, present a card, wait until the contactor is closed. Returns the connector status."""
    await agent.cmd("sim.plug", connector=connector)
    await agent.wait_connector(lambda c: c["status"] == "Preparing", connector, what="Preparing")
    await agent.cmd("sim.swipe", tag=tag)
    return await agent.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging",
                                      connector, what="Charging")


CALL = 2  # OCPP-J MessageTypeId of a CALL


def is_station_call(frame, action: str, where=None) -> bool:
    """True for a CALL of `action` sent by the station, whose payload satisfies `where` (if given)."""
    return (frame.direction == "in" and frame.message_type == CALL and frame.action == action
            and (where is None or where(frame.payload)))


async def wait_call(csms: LocalCsms, action: str, since: int = 0, where=None, timeout: float = 10.0):
    """The first CALL of `action` from the station at frame index >= `since` (optionally with a payload
    for which `where(payload)` is true). Pass `since=len(csms.frames)` taken before the trigger."""
    return await csms.wait_frame(lambda f: is_station_call(f, action, where), timeout=timeout, since=since)


def calls_since(csms: LocalCsms, action: str, since: int = 0, where=None) -> list:
    """Every CALL of `action` from the station at frame index >= `since`, in order."""
    return [f for f in csms.frames[since:] if is_station_call(f, action, where)]


async def plugged(agent: Agent) -> None:
    """Plug the simulated EV in and wait until the connector reports Preparing."""
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")


async def charging(agent: Agent) -> dict:
    """Wait until the connector charges in a transaction the CSMS has numbered."""
    return await agent.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging"
                                      and c["transaction_id"] is not None, timeout=15, what="Charging")
