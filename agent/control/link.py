"""The agent's side of the channel to the control loop (agent.control.channel): one interface, two transports.

* ProcessLink runs the control loop in its own process (agent.control.process): what a station on real
  hardware always runs (`evse run`). Nothing the CSMS, the disk or the network does to this process can
  delay a contactor there. The two supervise each other: this side sends a heartbeat every
  HEARTBEAT_S; the control process faults every connector when it hears nothing for its deadline, and
  exits when this process is gone. When the control process dies or stops answering, `on_lost` tells the
  station (it reports Faulted and exits, so that systemd restarts the unit).
* InProcessLink runs the same ControlLoop in this event loop: unit tests, benchmarks, and a fleet of
  simulated stations in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.control import channel
from agent.control.loop import ControlLoop, describe
from agent.core import controller as ctl
from hal.interfaces import Board, MeterReading

log = logging.getLogger("evse.link")

HEARTBEAT_S = 0.5  # the agent's sign of life to the control process (its deadline: 2 s)
# no message from the control process for this long: it is stalled (a stuck device read); the systemd
# watchdog (WatchdogSec=10 s) restarts the unit later anyway, this reports it to the CSMS first
CONTROL_DEADLINE_S = 5.0
REQUEST_TIMEOUT_S = 30.0  # a technician's contactor test takes seconds; nothing takes this long
START_TIMEOUT_S = 30.0


class ControlLost(Exception):
    """The control process died or stopped answering."""


class ControlLink:
    """What the station uses; the station sets the on_* callbacks before start()."""

    info: channel.BoardInfo

    def __init__(self) -> None:
        self.on_output: Callable[[int, list[ctl.Command]], None] = lambda cid, commands: None
        self.on_state: Callable[[int, dict[str, Any], str | None], None] = lambda cid, state, indicator: None
        self.on_tag: Callable[[str], object] = lambda tag: None  # what it returns (the authorizer's card id) is unused
        self.on_alive: Callable[[], None] = lambda: None
        self.on_lost: Callable[[str], None] = lambda why: None
        self.alive_at = 0.0  # when the control loop last reported a completed step
        self.lost: str | None = None

    async def start(self) -> channel.BoardInfo:
        raise NotImplementedError

    async def setup(self, settings: dict[int, ctl.SessionSettings], period_s: float) -> None:
        raise NotImplementedError

    def send_event(self, connector_id: int, event: ctl.Event) -> None:
        raise NotImplementedError

    def set_period(self, period_s: float) -> None:
        raise NotImplementedError

    def arm_watchdog(self) -> None:
        """READY went to systemd: the control loop may start its WATCHDOG=1 pings (none before READY)."""

    async def request(self, op: str, **args: Any) -> Any:
        raise NotImplementedError

    async def run(self) -> None:
        """Runs as long as the control side does; returns (or raises ControlLost) when it is gone."""
        raise NotImplementedError

    async def sync(self) -> None:
        """Returns once the control loop has handled every event sent before, and its commands and state are
        here (the channel keeps order both ways): a reset drains the transaction work only after that."""

    async def close(self) -> None:
        raise NotImplementedError

    async def read_meter(self, connector_id: int) -> MeterReading:
        """One meter reading; raises channel.RequestFailed (the meter did not answer) or ControlLost."""
        reading = channel.decode(await self.request("read_meter", connector=connector_id))
        assert isinstance(reading, MeterReading)
        return reading

    def _deliver(self, msg: dict[str, Any]) -> None:
        """One up-message from the control side."""
        kind = msg["kind"]
        if kind in (channel.OUTPUT, channel.STATE):
            cid = int(msg["connector"])
            self.on_state(cid, msg["state"], msg.get("indicator"))
            if kind == channel.OUTPUT:
                self.on_output(cid, [channel.decode(c) for c in msg["commands"]])
        elif kind == channel.TAG:
            self.on_tag(str(msg["id_token"]))
        elif kind == channel.ALIVE:
            self.alive_at = time.monotonic()
            self.on_alive()
        else:
            log.warning("unexpected message from the control process: %s", str(msg)[:200])


class InProcessLink(ControlLink):
    """The control loop in this process and event loop; messages are handed over as they are made."""

    def __init__(self, board: Board, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.board = board
        self.control = ControlLoop(board, self._deliver, clock)
        self.info = describe(board, read_pilots=False)
        self._started = False

    async def start(self) -> channel.BoardInfo:
        if self._started:
            return self.info
        self._started = True
        await self.board.start()
        for hw in self.board.connectors:
            hw.contactor.set_closed(False)
        self.info = describe(self.board)
        return self.info

    async def setup(self, settings: dict[int, ctl.SessionSettings], period_s: float) -> None:
        self.control.setup(settings, period_s)
        self.control.after_step = self._stepped

    def _stepped(self) -> None:
        self.alive_at = time.monotonic()
        self.on_alive()

    def send_event(self, connector_id: int, event: ctl.Event) -> None:
        self.control.handle_event(connector_id, event)

    def set_period(self, period_s: float) -> None:
        self.control.control_period_s = period_s

    async def request(self, op: str, **args: Any) -> Any:
        return await self.control.request(op, args)

    async def sync(self) -> None:
        return None  # events are handled as they are sent

    async def run(self) -> None:
        await asyncio.gather(self.control.run(), self.control.rfid_loop())

    async def close(self) -> None:
        await self.board.close()  # every contactor open


class ProcessLink(ControlLink):
    """The control loop in a child process (`python -m agent.control.process`), over a socketpair."""

    def __init__(self, board_file: Path, state_dir: Path, *, log_level: str = "INFO",
                 watchdog_s: float | None = None, agent_deadline_s: float | None = None):
        super().__init__()
        self.board_file = board_file
        self.state_dir = state_dir
        self.log_level = log_level
        self.watchdog_s = watchdog_s
        self.agent_deadline_s = agent_deadline_s
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._hello: asyncio.Future[channel.BoardInfo | Exception] | None = None
        self._read_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> channel.BoardInfo:
        """Spawn the control process and wait for its hello (the board started, every contactor open)."""
        if self.process is not None:
            return self.info
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # -S: no site module, so no .pth start-up hooks load what the safety path does not use (about 5 MB);
        # the agent's own import path is handed over instead, the package's root first (editable installs)
        argv = [sys.executable, "-S", "-m", "agent.control.process", "--board", str(self.board_file),
                "--state-dir", str(self.state_dir), "--fd", str(child.fileno()), "--log-level", self.log_level]
        if self.watchdog_s:
            argv += ["--watchdog-s", str(self.watchdog_s)]
        if self.agent_deadline_s:
            argv += ["--agent-deadline-s", str(self.agent_deadline_s)]
        env = dict(os.environ)
        env.pop("WATCHDOG_PID", None)  # the pings come from the child: it is told the interval itself
        env.pop("WATCHDOG_USEC", None)
        package_root = str(Path(channel.__file__).resolve().parents[2])  # agent/control/channel.py
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([package_root, *(p for p in sys.path if p)]))
        try:
            self.process = await asyncio.create_subprocess_exec(*argv, pass_fds=(child.fileno(),), env=env)
        finally:
            child.close()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=parent, limit=channel.MAX_LINE_BYTES)
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        self._read_task = asyncio.create_task(self._read_loop(), name="control-link")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                hello = await asyncio.shield(self._hello)
        except TimeoutError:
            await self.close()
            raise ControlLost(f"the control process did not start within {START_TIMEOUT_S:.0f} s") from None
        if isinstance(hello, Exception):
            await self.close()
            raise hello
        self.info = hello
        return hello

    async def setup(self, settings: dict[int, ctl.SessionSettings], period_s: float) -> None:
        self._send(channel.message(channel.SETUP, period_s=period_s,
                                   settings={str(cid): channel.encode(s) for cid, s in settings.items()}))

    def send_event(self, connector_id: int, event: ctl.Event) -> None:
        self._send(channel.message(channel.EVENT, connector=connector_id, event=channel.encode(event)))

    def set_period(self, period_s: float) -> None:
        self._send(channel.message(channel.SETUP, period_s=period_s))

    def arm_watchdog(self) -> None:
        self._send(channel.message(channel.SETUP, arm_watchdog=True))

    async def request(self, op: str, **args: Any) -> Any:
        if self.lost is not None:
            raise ControlLost(self.lost)
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._send(channel.message(channel.REQUEST, id=request_id, op=op, args=args))
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                return await future
        finally:
            self._pending.pop(request_id, None)

    async def sync(self) -> None:
        with contextlib.suppress(ControlLost, TimeoutError):
            await self.request("sync")

    def _send(self, msg: dict[str, Any]) -> None:
        if self._writer is None or self.lost is not None:
            return
        self._writer.write(channel.dumps(msg))

    async def run(self) -> None:
        """Heartbeats down; watches the control process's heartbeats. Raises ControlLost when it is gone."""
        assert self._read_task is not None
        self.alive_at = last_round = time.monotonic()
        while True:
            if self._read_task.done():
                raise ControlLost(self.lost or "the control process closed the channel")
            now = time.monotonic()
            if now - last_round > 5 * HEARTBEAT_S:
                # this process did not run (stopped, swapped out): the peer's heartbeats wait unread in the
                # socket; silence counts only from now
                self.alive_at = max(self.alive_at, now)
            last_round = now
            silent = now - self.alive_at
            if silent > CONTROL_DEADLINE_S:
                self._lose(f"the control process sent nothing for {silent:.1f} s")
                raise ControlLost(self.lost or "")
            self._send(channel.message(channel.ALIVE))
            await asyncio.sleep(HEARTBEAT_S)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = channel.loads(line)
                kind = msg["kind"]
                if kind == channel.HELLO:
                    if self._hello is not None and not self._hello.done():
                        self._hello.set_result(channel.BoardInfo.from_json(msg["board"]))
                elif kind == channel.REPLY:
                    future = self._pending.get(int(msg.get("id", -1)))
                    if future is not None and not future.done():
                        if msg.get("ok"):
                            future.set_result(msg.get("result"))
                        else:
                            future.set_exception(channel.RequestFailed(str(msg.get("error"))))
                elif kind == channel.START_FAILED:  # the board file or its devices
                    if self._hello is not None and not self._hello.done():
                        self._hello.set_result(ControlLost(str(msg.get("error"))))
                else:
                    self._deliver(msg)
        except (channel.ChannelError, ValueError, ConnectionError) as exc:
            self._lose(f"broken channel to the control process: {exc}")
            return
        code = None
        if self.process is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    code = await self.process.wait()
        self._lose(f"the control process ended (exit code {code})")

    def _lose(self, why: str) -> None:
        if self.lost is not None:
            return
        self.lost = why
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ControlLost(why))
        if self._hello is not None and not self._hello.done():
            self._hello.set_result(ControlLost(why))
        self.on_lost(why)

    async def close(self) -> None:
        """Orderly stop: the control process opens every contactor, closes the board and exits."""
        if self._writer is not None and self.lost is None:
            with contextlib.suppress(ConnectionError):
                self._writer.write(channel.dumps(channel.message(channel.STOP)))
                await self._writer.drain()
        self.lost = self.lost or "closed"
        if self.process is not None and self.process.returncode is None:
            try:
                async with asyncio.timeout(10.0):
                    await self.process.wait()
            except TimeoutError:
                log.error("the control process did not stop within 10 s: killing it")
                self.process.kill()
                await self.process.wait()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._read_task
        if self._writer is not None:
            self._writer.close()
