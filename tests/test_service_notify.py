"""The sd_notify protocol (agent.service) against a notify socket bound by the test, as systemd binds one.

How the control loop is blocked: the simulated board's `stall_pilot` hook (control command `sim.stall`)
makes the next control-pilot read sleep in the control step, the way a read from a stuck bus or driver
blocks it; the whole event loop stops with it, the process stays alive. A SIGSTOP would prove nothing
(it stops every thread, and no process can ping while stopped). The in-process test covers the other
stall: the control loop task dead while the event loop (OCPP, meters, control socket) runs on; a separate
timer task would keep pinging there, the agent must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from agent import service
from agent.config import load_config
from agent.ocpp.v16.client import OcppClient
from agent.service import ServiceNotifier, watchdog_interval_s
from agent.station.journal import Journal
from agent.station.station import Station
from hal.board import load_board
from tests.agent_harness import TAG_OK, Agent, charge, write_config

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    """An AF_UNIX datagram socket like systemd's; records (arrival time, message) in a thread."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stopped = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def close(self) -> None:
        self._stopped = True
        self._thread.join(2)
        self.sock.close()

    def assignments(self, name: str, since: float = 0.0) -> list[tuple[float, str]]:
        """(time, value) of every NAME=value line received at or after `since`."""
        return [(at, line.split("=", 1)[1]) for at, message in list(self.messages) if at >= since
                for line in message.split("\n") if line.startswith(name + "=")]

    async def wait(self, name: str, predicate=lambda value: True, since: float = 0.0,
                   timeout: float = 15.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, value in self.assignments(name, since):
                if predicate(value):
                    return at, value
            await asyncio.sleep(0.02)
        raise TimeoutError(f"no {name}= matching within {timeout} s; received: {self.messages[-20:]}")


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# ---- the real agent process ----------------------------------------------------------------------------


async def test_ready_status_and_watchdog_from_the_agent_and_no_watchdog_while_its_control_loop_is_blocked(
        csms, tmp_path, notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1500000")  # WatchdogSec=1.5s: a ping every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    agent = Agent(tmp_path, write_config(tmp_path, csms.url))
    agent.start()
    try:
        ready_at, _ = await notify_socket.wait("READY", timeout=20)
        # READY after the control process's first step: the board is up, the contactor open
        status = await agent.status()
        assert [c["contactor_closed"] for c in status["connectors"]] == [False]
        assert status["connectors"][0]["cp_state"] == "A"
        pilot = await agent.cmd("hw.pilot", connector=1)  # refused while the board is still starting
        assert pilot["ok"], pilot
        first_ping, _ = await notify_socket.wait("WATCHDOG")  # from the control process, once READY is out
        assert first_ping >= ready_at
        first_message = notify_socket.messages[0][1].split("\n")
        assert first_message[0] == "READY=1" and first_message[1].startswith("STATUS=")

        # STATUS= for `systemctl status`: connection, registration, connectors, journal
        await notify_socket.wait("STATUS", lambda v: v.startswith("OCPP connected/Accepted") and
                                 "1: Available" in v and "journal 0 pending" in v)
        await charge(agent, csms, TAG_OK)
        await notify_socket.wait("STATUS", lambda v: "1: Charging" in v and " kW" in v)
        status_times = [at for at, _ in notify_socket.assignments("STATUS", since=ready_at + 0.01)]
        assert min(gaps(status_times), default=1.0) >= 0.9, "STATUS= more often than once a second"

        # WATCHDOG=1 every WatchdogSec/3 while the control loop runs
        window_start = time.monotonic()
        await asyncio.sleep(2.5)
        pings = [at for at, value in notify_socket.assignments("WATCHDOG", since=window_start) if value == "1"]
        assert len(pings) >= 4 and max(gaps(pings)) < 1.5, gaps(pings)  # never WatchdogSec without one

        # the control step blocks for 3 s (a stuck device read): no ping, though the process lives
        await agent.cmd("sim.stall", seconds=3.0, connector=1)
        stalled_at = time.monotonic()
        await asyncio.sleep(2.5)
        assert agent.proc.poll() is None
        state = Path(f"/proc/{agent.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in "SRD", state  # alive (sleeping in the read), not a zombie
        silent = [at for at, _ in notify_socket.assignments("WATCHDOG", since=stalled_at + 0.1)]
        assert silent == [], "WATCHDOG=1 while the control loop was blocked"
        # (systemd would have aborted the agent after WatchdogSec=1.5 s here; nobody does in this test)
        resumed_at, _ = await notify_socket.wait("WATCHDOG", since=stalled_at + 2.9, timeout=5)
        assert resumed_at - stalled_at >= 2.9
        assert (await agent.connector())["status"] == "Charging"

        sent_before_stop = time.monotonic()
        assert await agent.terminate() == 0
        await notify_socket.wait("STOPPING", since=sent_before_stop, timeout=2)
    finally:
        agent.cleanup()


# ---- in process: the control loop dies, the event loop lives on ---------------------------------------------


async def test_no_watchdog_while_the_control_loop_hangs_and_everything_else_runs(
        tmp_path, notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))  # sdnotify reads it itself
    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp"))  # no CSMS: it keeps reconnecting
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    station = Station(config, board, Journal(config.journal.path), csms=OcppClient)  # the control loop in this process
    notifier = ServiceNotifier(station, environ={"NOTIFY_SOCKET": str(notify_socket.path),
                                                "WATCHDOG_USEC": "300000"})  # a ping every 0.1 s
    station.channel.after_control_step = notifier.control_step_done
    steps_before_ready: list[int] = []
    steps = 0
    control = station.link.control
    control_step = control.step

    def counted_step():
        nonlocal steps
        if not notify_socket.assignments("READY"):
            steps_before_ready.append(steps)
        control_step()
        steps += 1

    control.step = counted_step
    run = asyncio.create_task(station.run())
    try:
        await notify_socket.wait("READY", timeout=10)
        assert steps_before_ready == [0], "READY before the first control step completed"
        await asyncio.sleep(0.5)
        assert len(notify_socket.assignments("WATCHDOG")) >= 3

        control_task = next(task for task in station.tasks.essential if task.get_name() == "control")
        # the control loop hangs on an await (its next sleep lasts an hour) while everything else runs;
        # a control loop that dies instead ends the whole station (test_service_signals)
        station.link.set_period(3600)
        await asyncio.sleep(0.2)
        dead_at = time.monotonic()
        await asyncio.sleep(1.0)
        assert notify_socket.assignments("WATCHDOG", since=dead_at + 0.05) == []
        others = [task for task in station.tasks.essential if task is not control_task]
        assert not control_task.done() and others and not any(task.done() for task in others)  # all running
        assert station.status()["connectors"][0]["contactor_closed"] is False
    finally:
        await station.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(run, 10)
        station.journal.close()


# ---- units -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({"WATCHDOG_USEC": "10000000"}, 10 / 3),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}, 10 / 3),
    ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "x"}, None),
    ({}, None),
])
def test_watchdog_interval_is_a_third_of_watchdog_usec_for_this_process(environ, expected):
    assert watchdog_interval_s(environ) == expected


def test_without_notify_socket_nothing_is_sent_or_computed(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(service, "status_line", lambda station: pytest.fail("status computed"))
    notifier = ServiceNotifier(station=None, environ={"WATCHDOG_USEC": "1000000"})
    for _ in range(3):
        notifier.control_step_done()
    assert not notifier.enabled and notifier.watchdog_every_s is None


def test_status_is_sent_on_change_and_at_most_once_a_second(tmp_path, notify_socket, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    now = [100.0]
    line = ["A"]
    monkeypatch.setattr(service, "status_line", lambda station: line[0])
    notifier = ServiceNotifier(station=None, environ={"NOTIFY_SOCKET": str(notify_socket.path)},
                               clock=lambda: now[0])
    for step in range(300):  # 3 s of 10 ms control steps; the line changes every 50 ms
        line[0] = f"status {step // 5}"
        notifier.control_step_done()
        now[0] += 0.01
    deadline = time.monotonic() + 2
    while len(notify_socket.messages) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [value for _, value in notify_socket.assignments("STATUS")] == \
        ["status 0", "status 20", "status 40"]
    assert notify_socket.assignments("WATCHDOG") == []  # no WATCHDOG_USEC: no pings
