"""The local control socket: JSON lines over a Unix socket, for the `evse` CLI and test benches.

Request:  {"cmd": "status", "args": {...}}
Reply:    {"ok": true, "result": ...}  or  {"ok": false, "error": "one line a technician can act on"}
One request per line, one reply per line; a connection may carry several requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("evse.control")

Handler = Callable[[str, dict], Any | Awaitable[Any]]
MAX_REQUEST_BYTES = 64 * 1024


class CommandError(Exception):
    """A request that cannot be carried out; the message goes back to the caller as is."""


class ControlServer:
    def __init__(self, path: Path, handler: Handler):
        self.path = Path(path)
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _socket_in_use(self.path):
                raise CommandError(f"control socket {self.path} is in use: is another agent running?")
            self.path.unlink()  # stale socket from a process that died
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await _reply(writer, {"ok": False, "error": "request too long"})
                    break
                if not line:
                    break
                await _reply(writer, await self._answer(line))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not valid JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object with a string "cmd"'}
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": '"args" must be an object'}
        try:
            result = self._handler(request["cmd"], args)
            if asyncio.iscoroutine(result):
                result = await result
        except (CommandError, ValueError, KeyError) as exc:
            message = str(exc) if not isinstance(exc, KeyError) else f"unknown {exc.args[0]!r}"
            return {"ok": False, "error": message}
        except Exception as exc:
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}


async def _reply(writer: asyncio.StreamWriter, reply: dict) -> None:
    writer.write(json.dumps(reply).encode() + b"\n")
    await writer.drain()


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class ControlClientError(Exception):
    pass


def request(path: Path, cmd: str, args: dict | None = None, timeout: float = 10.0) -> Any:
    """Send one request to a running agent and return its result (blocking; for the CLI and tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ControlClientError(f"no agent control socket at {path}: is the agent running?") from None
        except PermissionError:
            raise ControlClientError(f"permission denied on {path}: are you in the agent's group?") from None
        except OSError as exc:
            raise ControlClientError(f"cannot reach the agent at {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        buffer = b""
        while not buffer.endswith(b"\n"):
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ControlClientError(f"the agent did not answer {cmd!r} within {timeout:.0f} s") from None
            if not chunk:
                raise ControlClientError("the agent closed the connection without answering")
            buffer += chunk
    reply = json.loads(buffer)
    if not reply.get("ok"):
        raise ControlClientError(reply.get("error", "request failed"))
    return reply.get("result")
