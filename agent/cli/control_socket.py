"""The local control socket: JSON lines over a Unix socket, for the `evse` CLI and test benches.

Request:  {"cmd": "status", "args": {...}}
Reply:    {"ok": true, "result": ...}  or  {"ok": false, "error": "one line a technician can act on"}
One request per line, one reply per line; a connection may carry several requests.

Who may use it: the socket file has mode 0660 and belongs to the configured group ([control] group,
default `evse`), so the kernel lets only the agent's user, root and that group connect. The agent checks
again per connection (SO_PEERCRED / SO_PEERGROUPS: the caller's uid and groups when it connected) and
refuses everyone else with a reply that says why, in case the file's mode or group was loosened or could
not be set. Members of the group may use every command: the read-only ones (status, hw.meter, hw.pilot,
sim.snapshot) and the ones that change state (stop, availability, fault.reset, swipe, hw.contactor_test,
hw.rcd_test, sim.*); the latter are logged with the caller's identity. A read-only monitoring account
therefore needs no socket access at all: `evse status` output is also in `systemctl status` (STATUS=).

Bounds, so that a caller cannot starve the agent of file descriptors or memory: at most
MAX_CONNECTIONS connections at once (one more gets an error line and is closed at once), a connection
idle for IDLE_TIMEOUT_S is closed, a request line is at most MAX_REQUEST_BYTES, and a request nested
too deeply for the JSON parser gets an error line like any other bad request.

The socket path: a stale socket (nothing answers a connect) is removed and created again; a live one
means another agent runs (refused); anything else at that path (a file, a directory, a symbolic link) is
a config error and is never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("evse.control")

Handler = Callable[[str, dict], Any | Awaitable[Any]]
MAX_REQUEST_BYTES = 64 * 1024
MAX_CONNECTIONS = 32  # the CLI uses one at a time; a monitoring script a few
IDLE_TIMEOUT_S = 30.0  # no request (or a reply not read) for this long: the connection is closed
READ_ONLY_COMMANDS = frozenset({"status", "hw.meter", "hw.pilot", "sim.snapshot"})  # all others change state
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; 59 on the asm-generic ABIs (ARM, x86)


class CommandError(Exception):
    """A request that cannot be carried out; the message goes back to the caller as is."""


class Peer:
    """The process at the other end of a connection, as the kernel recorded it at connect()."""

    def __init__(self, pid: int, uid: int, gid: int, groups: set[int]):
        self.pid, self.uid, self.gid, self.groups = pid, uid, gid, groups | {gid}

    @classmethod
    def of(cls, sock) -> Peer:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
        return cls(pid, uid, gid, _peer_groups(sock, pid))

    @property
    def user(self) -> str:
        try:
            return f"uid {self.uid} ({pwd.getpwuid(self.uid).pw_name})"
        except KeyError:
            return f"uid {self.uid}"

    def __str__(self) -> str:
        return f"{self.user} pid {self.pid}"


def _peer_groups(sock, pid: int) -> set[int]:
    """Supplementary groups at connect() time (SO_PEERGROUPS); from /proc on kernels without it."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        return set(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))
    except OSError:  # ENOPROTOOPT (old kernel), ERANGE (more than 256 groups)
        pass
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return {int(gid) for gid in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


class ControlServer:
    def __init__(self, path: Path, handler: Handler, group: str | None = None, *,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S):
        self.path = Path(path)
        self._handler = handler
        self._server: asyncio.base_events.Server | None = None
        self.group = group or None
        self._gid: int | None = None
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.connections = 0
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        """Create the socket. ConfigError (exit 2) for a path that is no socket; CommandError if another
        agent answers on it."""
        from agent.config import ConfigError  # agent.config does not import this module: no cycle

        where = f"[control] socket {self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existing = os.lstat(self.path)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise ConfigError(f"{where}: {exc.strerror or exc}") from None
        if existing is not None:
            if not stat.S_ISSOCK(existing.st_mode):
                raise ConfigError(f"{where}: {_kind(existing.st_mode)} is there, not a socket; nothing was "
                                  "deleted: set [control] socket to a path of its own")
            if _socket_in_use(self.path):
                raise CommandError(f"control socket {self.path} is in use: is another agent running?")
            self.path.unlink()  # stale socket from a process that died
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST_BYTES)
            os.chmod(self.path, 0o660)
            created = os.lstat(self.path)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot create it: {exc.strerror or exc}") from None
        self._inode = (created.st_dev, created.st_ino)
        self._give_to_group()

    def _give_to_group(self) -> None:
        if self.group is None:
            return
        try:
            self._gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            log.warning("control socket %s: group %r does not exist, so only root and this user (uid %d) may "
                        "use it; create it: groupadd --system %s", self.path, self.group, os.geteuid(), self.group)
            return
        try:
            os.chown(self.path, -1, self._gid)
        except OSError as exc:
            log.warning("control socket %s: cannot give it to group %s (%s): is the agent's user in that group?",
                        self.path, self.group, exc.strerror or exc)

    def allowed(self, peer: Peer) -> bool:
        """Root, the agent's own user, and members of the configured group."""
        return peer.uid in (0, os.geteuid()) or (self._gid is not None and self._gid in peer.groups)

    def _refusal(self, peer: Peer) -> str:
        who = peer.user
        if self._gid is None:
            return f"permission denied: {who} may not use the agent's control socket (only root and the agent's user)"
        return (f"permission denied: {who} may not use the agent's control socket: it needs root or group "
                f"{self.group} (usermod -aG {self.group} USER, then log in again)")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(OSError):  # only our own socket: never a file put there since
            now = os.lstat(self.path)
            if stat.S_ISSOCK(now.st_mode) and (now.st_dev, now.st_ino) == self._inode:
                self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            log.warning("control socket: refused a connection: %d already open", self.connections)
            with contextlib.suppress(Exception):
                writer.write(json.dumps({"ok": False, "error": f"too many connections to the agent's control "
                                         f"socket ({self.connections} open): try again later"}).encode() + b"\n")
            writer.close()  # at once: no drain, a caller that does not read must not hold this either
            return
        self.connections += 1
        try:
            peer = Peer.of(writer.get_extra_info("socket"))
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
                except TimeoutError:
                    await self._reply(writer, {"ok": False, "error": f"no request for {self.idle_timeout_s:g} s: "
                                                                     "closing the connection"})
                    break
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": f"request too long (more than "
                                                                     f"{MAX_REQUEST_BYTES} bytes)"})
                    break
                if not line:
                    break
                if not self.allowed(peer):
                    log.warning("control socket: refused %s", peer)
                    await self._reply(writer, {"ok": False, "error": self._refusal(peer)})
                    break
                await self._reply(writer, await self._answer(line, peer))
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self.connections -= 1
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, reply: dict) -> None:
        """Send one reply line; a caller that does not read it within the idle timeout is dropped."""
        try:
            line = json.dumps(reply).encode() + b"\n"
        except (TypeError, ValueError, RecursionError) as exc:
            line = json.dumps({"ok": False, "error": f"internal error: the reply cannot be encoded: {exc}"}).encode() \
                + b"\n"
        writer.write(line)
        await asyncio.wait_for(writer.drain(), self.idle_timeout_s)

    async def _answer(self, line: bytes, peer: Peer | None = None) -> dict:
        try:
            request = json.loads(line)
        except RecursionError:
            return {"ok": False, "error": "request is nested too deeply"}
        except ValueError:
            return {"ok": False, "error": "request is not valid JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'request must be an object with a string "cmd"'}
        args = request.get("args") or {}
        if not isinstance(args, dict):
            return {"ok": False, "error": '"args" must be an object'}
        if request["cmd"] not in READ_ONLY_COMMANDS:
            try:
                shown = json.dumps(args)[:200]
            except (TypeError, ValueError, RecursionError):
                return {"ok": False, "error": '"args" is nested too deeply'}
            log.info("control: %s %s by %s", request["cmd"], shown, peer or "?")
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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO")):
        if test(mode):
            return name
    return "a device or other special file"


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
