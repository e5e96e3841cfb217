"""Running the third-party CSMS implementations as subprocesses from their own environments (.interop/).

`tests/interop/setup.sh` installs them; `installed(name)` tells whether that worked and skips the test with
the concrete reason when it did not (on CI such a skip is a failure: tests/conftest.py). `JsonLinesProcess` runs a driver (a small program that starts or
controls a CSMS) which speaks JSON lines: one request per line on its stdin,
{"id": N, "cmd": "...", ...}, and on its stdout one line per reply, {"reply": N, "ok": true, "result": ...}
or {"reply": N, "ok": false, "error": "..."}, mixed with event lines {"event": "...", ...}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
INTEROP = Path(os.environ.get("EVSE_INTEROP_DIR", REPO / ".interop"))
HERE = Path(__file__).resolve().parent


def installed(name: str) -> Path:
    """The setup stamp of `name` ("ocpp-csms", "arthexis", "ocpp-rpc"); skips the test with the reason when
    setup.sh did not install it (or was not run)."""
    failed = INTEROP / f"{name}.failed"
    if failed.exists():
        pytest.skip(f"{name} could not be installed by tests/interop/setup.sh: {failed.read_text().strip()}")
    ok = INTEROP / f"{name}.ok"
    if not ok.exists():
        pytest.skip(f"{name} is not installed: run tests/interop/setup.sh first (.ci/run does) "
                    f"-- {ok} does not exist")
    return ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float, proc: asyncio.subprocess.Process | None = None,
                    what: str = "server") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not listening on 127.0.0.1:{port} after {timeout} s") from None
            await asyncio.sleep(0.1)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(line[:400] for line in path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class DriverError(Exception):
    pass


class JsonLinesProcess:
    def __init__(self, argv: list[str], *, log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.log_path = log_path
        self.events: list[dict] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._replies: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def start(self, ready: str, timeout: float = 30.0) -> dict:
        """Start the process and wait for its event line {"event": ready, ...}."""
        self._log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            env=self.env, cwd=self.cwd, limit=2**24)
        self._reader = asyncio.create_task(self._read())
        try:
            return await self.wait_event(lambda e: e["event"] == ready, timeout)
        except TimeoutError:
            raise DriverError(f"{self.argv[:3]} did not report {ready!r}:\n{tail(self.log_path)}") from None

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            try:
                message = json.loads(line)
            except ValueError:
                self._log.write(b"(stdout) " + line)
                continue
            if "reply" in message:
                future = self._replies.pop(message["reply"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif "event" in message:
                self.events.append(message)
            self._changed.set()
        for future in self._replies.values():
            if not future.done():
                future.set_exception(DriverError(f"driver exited:\n{tail(self.log_path)}"))
        self._changed.set()

    async def request(self, cmd: str, timeout: float = 30.0, **args):
        if self.proc is None or self.proc.returncode is not None or self._reader.done():
            raise DriverError(f"driver is not running:\n{tail(self.log_path)}")
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = future
        self.proc.stdin.write(json.dumps({"id": self._next_id, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise DriverError(f"no reply to {cmd} within {timeout} s:\n{tail(self.log_path)}") from None
        if not reply["ok"]:
            raise DriverError(f"{cmd}: {reply['error']}")
        return reply.get("result")

    async def wait_event(self, predicate: Callable[[dict], bool], timeout: float = 10.0, since: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                with contextlib.suppress(Exception):
                    if predicate(event):
                        return event
            since = max(since, len(self.events))
            if self._reader is not None and self._reader.done():
                raise DriverError(f"driver exited:\n{tail(self.log_path)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no such event within {timeout} s; last: {self.events[-5:]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 2)
        self._log.close()


async def run_server(argv: list[str], *, port: int, log_path: Path, env: dict | None = None,
                     cwd: Path | None = None, timeout: float = 30.0, what: str = "server"
                     ) -> asyncio.subprocess.Process:
    """Start a plain server process (output to log_path) and wait until it listens on 127.0.0.1:port."""
    log = open(log_path, "ab")
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                                                stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, **(env or {})}, cwd=cwd)
    log.close()
    try:
        await wait_port(port, timeout, proc, what)
    except (TimeoutError, RuntimeError) as exc:
        await stop_process(proc)
        raise DriverError(f"{exc}:\n{tail(log_path)}") from None
    return proc


async def stop_process(proc: asyncio.subprocess.Process | None, timeout: float = 5.0) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
