"""A logging TCP proxy for OCPP-J: sits between the agent and a third-party CSMS on 127.0.0.1 and records
every WebSocket text frame in both directions, without changing a byte of them.

The HTTP upgrade request is forwarded as it came, except that `rewrite_path` (if given) may change the
request path: a reverse proxy in front of a CSMS does the same. After the handshake both byte streams are
copied unchanged and, on the side, parsed as RFC 6455 frames (client frames are masked; fragmented
messages are reassembled). Each complete text message becomes a `TapFrame`, in arrival order, with the
same fields and direction names as `hil.csms.Frame` ("in": station -> CSMS, "out": CSMS -> station).

    tap = WsTap(upstream_port=daphne_port, rewrite_path=lambda p: p + "/")
    port = await tap.start()                  # 127.0.0.1, free port
    url = tap.url("/ws/ocpp")                 # what the agent is configured with
    ...
    start = await tap.wait_call("StartTransaction")
    await tap.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CALL, CALLRESULT, CALLERROR = 2, 3, 4
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE = 0x0, 0x1, 0x2, 0x8


@dataclass(frozen=True)
class TapFrame:
    index: int
    connection: int  # 1, 2, ... in the order the station connected
    direction: str  # "in": station -> CSMS, "out": CSMS -> station
    message_type: int | None  # 2 CALL, 3 CALLRESULT, 4 CALLERROR, None if not an OCPP-J message
    unique_id: str | None
    action: str | None  # for a CALLRESULT/CALLERROR: the action of the CALL it answers, when seen
    payload: Any
    raw: str
    time: datetime


@dataclass
class Handshake:
    connection: int
    request_line: str  # as the station sent it
    forwarded_line: str  # as forwarded to the CSMS (after rewrite_path)
    status_line: str = ""  # the CSMS's answer, e.g. "HTTP/1.1 101 Switching Protocols"
    subprotocol: str | None = None
    closed: bool = False
    close_codes: list[tuple[str, int | None]] = field(default_factory=list)  # (direction, code)


class _WsParser:
    """Incremental RFC 6455 frame parser for one direction; returns complete messages."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_opcode: int | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        messages = []
        while True:
            if len(self._buf) < 2:
                break
            b0, b1 = self._buf[0], self._buf[1]
            fin, opcode, masked, length = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            offset = 2
            if length == 126:
                if len(self._buf) < 4:
                    break
                (length,) = struct.unpack_from("!H", self._buf, 2)
                offset = 4
            elif length == 127:
                if len(self._buf) < 10:
                    break
                (length,) = struct.unpack_from("!Q", self._buf, 2)
                offset = 10
            mask = b""
            if masked:
                if len(self._buf) < offset + 4:
                    break
                mask = bytes(self._buf[offset:offset + 4])
                offset += 4
            if len(self._buf) < offset + length:
                break
            payload = bytes(self._buf[offset:offset + length])
            del self._buf[:offset + length]
            if masked:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode >= 0x8:  # control frames are never fragmented
                messages.append((opcode, payload))
                continue
            if opcode != _OP_CONT:
                self._fragment_opcode = opcode
                self._fragments = []
            self._fragments.append(payload)
            if fin:
                messages.append((self._fragment_opcode or _OP_TEXT, b"".join(self._fragments)))
                self._fragments, self._fragment_opcode = [], None
        return messages


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """An HTTP head (up to and including the blank line) and whatever was read past it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionError("connection closed during the HTTP handshake")
        buf += chunk
        if len(buf) > 65536:
            raise ConnectionError("HTTP head too long")
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


class WsTap:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1",
                 rewrite_path: Callable[[str], str] | None = None):
        self.upstream = (upstream_host, upstream_port)
        self.rewrite_path = rewrite_path
        self.frames: list[TapFrame] = []
        self.handshakes: list[Handshake] = []
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Event()
        self._open_calls: dict[tuple[int, str, str], str] = {}  # (connection, caller dir, id) -> action
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._server = await asyncio.start_server(self._on_client, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def url(self, path: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # ---- observations ------------------------------------------------------------------------------

    def calls(self, action: str | None = None, direction: str = "in", since: int = 0) -> list[TapFrame]:
        return [f for f in self.frames[since:] if f.direction == direction and f.message_type == CALL
                and (action is None or f.action == action)]

    def answer_to(self, frame: TapFrame) -> TapFrame | None:
        return next((f for f in self.frames[frame.index + 1:] if f.connection == frame.connection
                     and f.direction != frame.direction and f.message_type in (CALLRESULT, CALLERROR)
                     and f.unique_id == frame.unique_id), None)

    async def wait_frame(self, predicate: Callable[[TapFrame], bool], timeout: float = 10.0,
                         since: int = 0) -> TapFrame:
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames[since:]:
                with contextlib.suppress(Exception):
                    if predicate(frame):
                        return frame
            since = max(since, len(self.frames))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = "\n".join(f"  {f.direction} {f.raw[:200]}" for f in self.frames[-15:])
                raise TimeoutError(f"no such frame within {timeout} s; last frames:\n{tail}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_call(self, action: str, since: int = 0, where=None, timeout: float = 10.0,
                        direction: str = "in") -> TapFrame:
        return await self.wait_frame(
            lambda f: f.direction == direction and f.message_type == CALL and f.action == action
            and (where is None or where(f.payload)), timeout, since)

    async def wait_answer(self, frame: TapFrame, timeout: float = 10.0) -> TapFrame:
        return await self.wait_frame(
            lambda f: f.connection == frame.connection and f.direction != frame.direction
            and f.message_type in (CALLRESULT, CALLERROR) and f.unique_id == frame.unique_id,
            timeout, frame.index + 1)

    def transcript(self, last: int = 40) -> str:
        return "\n".join(f"#{f.connection} {'CP->CSMS' if f.direction == 'in' else 'CSMS->CP'} {f.raw[:300]}"
                         for f in self.frames[-last:])

    # ---- proxying ----------------------------------------------------------------------------------

    async def _on_client(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        connection = len(self.handshakes) + 1
        u_writer = None
        try:
            head, rest = await _read_head(c_reader)
            lines = head.decode("latin-1").split("\r\n")
            request_line = lines[0]
            method, _, remainder = request_line.partition(" ")
            path, _, version = remainder.rpartition(" ")
            new_path = self.rewrite_path(path) if self.rewrite_path else path
            forwarded = f"{method} {new_path} {version}"
            handshake = Handshake(connection, request_line, forwarded)
            self.handshakes.append(handshake)
            self._changed.set()
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
            u_writer.write(("\r\n".join([forwarded, *lines[1:]])).encode("latin-1") + rest)
            await u_writer.drain()
            u_head, u_rest = await _read_head(u_reader)
            u_lines = u_head.decode("latin-1").split("\r\n")
            handshake.status_line = u_lines[0]
            for line in u_lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-protocol":
                    handshake.subprotocol = value.strip()
            c_writer.write(u_head + u_rest)
            await c_writer.drain()
            upgraded = " 101 " in u_lines[0] + " "
            pumps = [
                asyncio.create_task(self._pump(c_reader, u_writer, "in", connection, handshake,
                                               _WsParser() if upgraded else None, b"")),
                asyncio.create_task(self._pump(u_reader, c_writer, "out", connection, handshake,
                                               _WsParser() if upgraded else None, u_rest)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled by stop(): this task is the connection's own, nothing awaits it
        finally:
            if self.handshakes and self.handshakes[-1].connection == connection:
                self.handshakes[-1].closed = True
            for writer in (c_writer, u_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writer.wait_closed(), 1)
            self._changed.set()
            self._tasks.discard(task)

    async def _pump(self, reader, writer, direction, connection, handshake, parser, already: bytes) -> None:
        if parser is not None and already:
            self._record(parser.feed(already), direction, connection, handshake)
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()
            if parser is not None:
                self._record(parser.feed(data), direction, connection, handshake)

    def _record(self, messages, direction, connection, handshake) -> None:
        for opcode, payload in messages:
            if opcode == _OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                handshake.close_codes.append((direction, code))
                continue
            if opcode != _OP_TEXT:
                continue
            raw = payload.decode("utf-8", "replace")
            message_type = unique_id = action = body = None
            with contextlib.suppress(ValueError, TypeError, IndexError):
                message = json.loads(raw)
                if isinstance(message, list) and message and message[0] in (CALL, CALLRESULT, CALLERROR):
                    message_type, unique_id = message[0], message[1]
                    if message_type == CALL:
                        action, body = message[2], message[3]
                        self._open_calls[(connection, direction, unique_id)] = action
                    else:
                        other = "out" if direction == "in" else "in"
                        action = self._open_calls.pop((connection, other, unique_id), None)
                        body = message[2] if message_type == CALLRESULT else {
                            "errorCode": message[2], "errorDescription": message[3], "errorDetails": message[4]}
            self.frames.append(TapFrame(len(self.frames), connection, direction, message_type, unique_id,
                                        action, body, raw, datetime.now(UTC)))
        self._changed.set()
