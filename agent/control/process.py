"""The control process: `python -m agent.control.process --board FILE --fd N` (started by `evse run`).

It holds the safety path and nothing else: the board's devices, the session controllers and the control
loop (agent.control.loop), talking to the agent process over the socket `--fd` (agent.control.channel). It imports
no OCPP library, no SQLite, no cryptography, and never waits on the network or the disk: the agent may be
flooded, stalled or dead, and a contactor here still opens within its deadline.

* It opens every contactor as the board starts, says hello, and waits for the agent's setup.
* It pings the systemd watchdog from its control loop (the agent gives it the interval), and only while
  the agent answers: a stalled agent faults every connector and lets systemd restart the unit.
* When the channel closes (the agent exited or was killed) every contactor opens at once and the process
  exits; the unit restarts as a whole.
* Garbage collection: the objects made while starting are frozen (gc.freeze) and the youngest generation
  is collected less often, so a collection never walks the board's objects in the middle of a step.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import gc
import logging
import logging.handlers
import queue
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.control import channel
from agent.control.loop import AGENT_DEADLINE_S, ControlLoop, describe
from agent.logs import setup_logging
from hal.board import load_board

log = logging.getLogger("evse.control_loop")
Emit = Callable[[dict[str, Any]], None]  # one up-message to the agent


class _Watchdog:
    """WATCHDOG=1 to systemd at most every `interval_s`, from the control loop only."""

    def __init__(self, interval_s: float | None):
        self.interval_s = interval_s
        self.armed = False  # the agent arms it once it told systemd READY=1
        self._next = 0.0
        self._notifier = None
        if interval_s:
            import sdnotify  # small, pure Python: only when systemd asks

            self._notifier = sdnotify.SystemdNotifier()

    def step_done(self, agent_ok: bool) -> None:
        if self._notifier is None or not agent_ok or not self.armed:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + (self.interval_s or 0.0)
            self._notifier.notify("WATCHDOG=1")


class _Heartbeat:
    """ALIVE up to the agent at most every HEARTBEAT_S, from the control loop: its steps are the sign of life."""

    HEARTBEAT_S = 0.5  # the agent gives a silent control process 5 s

    def __init__(self, emit: Emit, control: ControlLoop):
        self.emit, self.control, self._next = emit, control, 0.0

    def step_done(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.HEARTBEAT_S
            self.emit(channel.message(channel.ALIVE, steps=self.control.steps))


async def serve(board_file: Path, state_dir: Path, sock: socket.socket, watchdog_s: float | None,
                agent_deadline_s: float) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=channel.MAX_LINE_BYTES)

    def emit(msg: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write(channel.dumps(msg))

    try:
        board = load_board(board_file, state_dir=state_dir)
        await board.start()
    except Exception as exc:  # the agent prints it and exits 2/1: the board file or its devices
        log.critical("the board cannot be started: %s", exc)
        emit(channel.message(channel.START_FAILED, error=f"the board cannot be started: {exc}"))
        await writer.drain()
        return 1
    for hw in board.connectors:
        hw.contactor.set_closed(False)
    control = ControlLoop(board, emit)
    control.agent_deadline_s = agent_deadline_s
    watchdog = _Watchdog(watchdog_s)
    alive = _Heartbeat(emit, control)

    def after_step() -> None:
        watchdog.step_done(not control.agent_lost)
        alive.step_done()

    control.after_step = after_step
    emit(channel.message(channel.HELLO, board=describe(board).to_json()))
    tasks: list[asyncio.Task[None]] = []
    try:
        while True:  # the setup comes first; anything else before it is a broken agent
            line = await reader.readline()
            if not line:
                return 0
            msg = channel.loads(line)
            if msg["kind"] == channel.SETUP:
                settings = {int(cid): channel.decode(s) for cid, s in msg["settings"].items()}
                control.setup(settings, float(msg["period_s"]))
                break
            if msg["kind"] == channel.STOP:
                return 0
        control.supervise_agent = True
        control.agent_alive()
        gc.collect()
        gc.freeze()  # what start-up made is never scanned again
        gc.set_threshold(10_000, 20, 20)
        tasks = [asyncio.create_task(control.run(), name="control"),
                 asyncio.create_task(control.rfid_loop(), name="rfid")]
        reading = asyncio.create_task(_read_agent(reader, control, emit, watchdog), name="channel")
        done, _ = await asyncio.wait([reading, *tasks], return_when=asyncio.FIRST_COMPLETED)
        if reading not in done:
            crashed = next(iter(done))
            log.critical("control process task %s ended: %r", crashed.get_name(), crashed.exception())
            return 1
        return 0 if reading.result() else 1
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await board.close()  # every contactor open, devices released, the sim state saved
        log.info("control process stopped; every contactor is open")


async def _read_agent(reader: asyncio.StreamReader, control: ControlLoop, emit: Emit,
                      watchdog: _Watchdog) -> bool:
    """Down-messages until STOP (True) or the agent is gone (False: contactors opened at once)."""
    while True:
        try:
            line = await reader.readline()
        except ConnectionError as exc:  # killed with unread data in its socket: a reset instead of EOF
            control.agent_gone(f"the agent process is gone ({exc})")
            return False
        except ValueError as exc:  # a line over the limit: that agent is broken
            control.agent_gone(f"the channel to the agent broke: {exc}")
            return False
        if not line:
            control.agent_gone("the agent process is gone")
            return False
        try:
            msg = channel.loads(line)
        except channel.ChannelError as exc:
            control.agent_gone(f"the agent sent garbage: {exc}")
            return False
        control.agent_alive()
        kind = msg["kind"]
        if kind == channel.EVENT:
            event = channel.decode(msg["event"])
            control.handle_event(int(msg["connector"]), event)
        elif kind == channel.REQUEST:
            asyncio.create_task(_answer(control, msg, emit))
        elif kind == channel.SETUP:
            if "period_s" in msg:
                control.control_period_s = float(msg["period_s"])
            if msg.get("arm_watchdog"):
                watchdog.armed = True
        elif kind == channel.STOP:
            return True


async def _answer(control: ControlLoop, msg: dict[str, Any], emit: Emit) -> None:
    try:
        result = await control.request(str(msg["op"]), dict(msg.get("args") or {}))
        emit(channel.message(channel.REPLY, id=msg["id"], ok=True, result=result))
    except Exception as exc:  # every failure is an answer: the agent must not wait for nothing
        emit(channel.message(channel.REPLY, id=msg["id"], ok=False, error=str(exc) or type(exc).__name__))


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; when it lags (stdout blocked: journald stalled, a full pipe)
    records are dropped and counted rather than blocking a control step."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _DroppingQueueHandler.dropped += 1


def _log_off_the_loop(handler: logging.Handler) -> None:
    """The control loop never writes a log line itself: a thread does, from a bounded queue."""
    root = logging.getLogger()
    root.removeHandler(handler)
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    root.addHandler(_DroppingQueueHandler(records))
    listener = logging.handlers.QueueListener(records, handler, respect_handler_level=True)
    listener.start()

    def stop() -> None:
        listener.stop()
        if _DroppingQueueHandler.dropped:  # said once, by the last line of the process
            handler.handle(logging.makeLogRecord({
                "name": log.name, "levelno": logging.WARNING, "levelname": "WARNING",
                "msg": f"{_DroppingQueueHandler.dropped} log line(s) dropped: the log output could not keep up"}))

    atexit.register(stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evse-control", description=__doc__.splitlines()[0])
    parser.add_argument("--board", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--watchdog-s", type=float, default=None)
    parser.add_argument("--agent-deadline-s", type=float, default=AGENT_DEADLINE_S)
    args = parser.parse_args(argv)
    _log_off_the_loop(setup_logging(args.log_level, sys.stdout))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # the agent ends this process (STOP, or its death closes the channel): a signal to the whole unit
        # or a Ctrl-C in the terminal must not drop the contactors' owner before the agent's orderly stop
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        return asyncio.run(serve(args.board, args.state_dir, sock, args.watchdog_s, args.agent_deadline_s))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
