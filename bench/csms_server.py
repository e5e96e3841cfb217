"""The bundled CSMS (hil.csms.LocalCsms) in a process of its own, quiet, for benchmarks.

Prints its URL on the first line of stdout, then answers one line per stdin line and stops on SIGTERM or
when stdin closes:

* `counts`: the incoming CALLs by action, as JSON;
* a JSON object: an attack on the connected station for `python -m bench isolation` (see `_attack`), answered
  with one JSON object. Attacks are scheduled here, at CLOCK_MONOTONIC times the bench chose (the same clock
  in every process of the machine), so they land on time whatever the station's process is doing.

Attack frames go straight to the websocket (not through LocalCsms's frame recorder: a 5 MB frame kept per
attack would only measure this process).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from hil.csms import LocalCsms

TRICKLE_PERIOD_S = 5.0  # the trickling server sends one byte this often


class Attacks:
    """What `python -m bench isolation` does to the station from the CSMS side."""

    def __init__(self, csms: LocalCsms):
        self.csms = csms
        self.results: Counter = Counter()
        self.trickle_server: asyncio.Server | None = None
        self.trickle_connections = 0
        self.disconnects: list[str] = []
        self._tasks: set[asyncio.Task] = set()

    def _websocket(self):
        stations = self.csms.stations()
        if not stations:
            return None, None
        return stations[0], self.csms._sessions[stations[0]].websocket

    def schedule(self, kind: str, times: list[float], **params) -> int:
        loop = asyncio.get_running_loop()
        offset = loop.time() - time.monotonic()  # 0 on Linux (asyncio's clock is time.monotonic)
        for at in times:
            loop.call_at(at + offset, self._fire, kind, params)
        return len(times)

    def _fire(self, kind: str, params: dict) -> None:
        task = asyncio.create_task(self._run(kind, params))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, kind: str, params: dict) -> None:
        _, websocket = self._websocket()
        if websocket is None:
            self.results[f"{kind}: station not connected"] += 1
            return
        try:
            if kind == "big_frame":
                size = int(params.get("bytes", 5_000_000))
                await websocket.send(json.dumps([2, uuid.uuid4().hex, "DataTransfer",
                                                 {"vendorId": "bench", "data": "x" * size}]))
            elif kind == "flood":
                for i in range(int(params.get("count", 10_000))):  # written without waiting for answers
                    await websocket.send(json.dumps([2, f"flood-{uuid.uuid4().hex[:8]}-{i}", "GetConfiguration",
                                                     {"key": ["HeartbeatInterval"]}]))
            else:
                raise ValueError(f"unknown attack {kind!r}")
            self.results[f"{kind}: sent"] += 1
        except Exception as exc:  # a closed connection mid-attack is a result, not a crash
            self.results[f"{kind}: {type(exc).__name__}"] += 1

    async def start_trickle(self) -> str:
        """An HTTP server on 127.0.0.1 that answers every request with one byte per TRICKLE_PERIOD_S."""

        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.trickle_connections += 1
            try:
                await reader.readuntil(b"\r\n\r\n")  # the request's head; an upload's body stays unread
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                             b"Content-Length: 1000000\r\n\r\n")
                while True:
                    writer.write(b"\0")
                    await writer.drain()
                    await asyncio.sleep(TRICKLE_PERIOD_S)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.CancelledError):
                pass  # the station gave up, or this server stops
            finally:
                writer.close()

        if self.trickle_server is None:
            self.trickle_server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = self.trickle_server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def trickle_transfers(self) -> dict:
        """UpdateFirmware and GetDiagnostics, both pointing at the trickling server."""
        base = await self.start_trickle()
        station, _ = self._websocket()
        if station is None:
            return {"error": "station not connected"}
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        answers = {}
        for action, payload in (("UpdateFirmware", {"location": f"{base}/firmware.bin", "retrieveDate": now}),
                                ("GetDiagnostics", {"location": f"{base}/upload/"})):
            try:
                answers[action] = await self.csms.call(station, action, payload, timeout=10.0)
            except Exception as exc:
                answers[action] = f"{type(exc).__name__}: {exc}"
        return {"answers": answers, "url": base}

    def report(self) -> dict:
        return {"results": dict(self.results), "trickle_connections": self.trickle_connections,
                "disconnects": list(self.disconnects)}


async def serve(tags: list[str]) -> None:
    disconnects: list[str] = []  # "<station> disconnected (code N)" lines: the station hung up or was cut

    def echo(line: str) -> None:
        if " disconnected (code " in line:
            disconnects.append(line)

    attacks = Attacks(LocalCsms(authorized_tags=tags, boot_interval=300, echo=echo))
    attacks.disconnects = disconnects
    csms = attacks.csms
    await csms.start("127.0.0.1", 0)
    print(csms.url, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            if line.strip() == b"counts":
                counts = Counter(f.action for f in csms.frames if f.direction == "in" and f.message_type == 2)
                print(json.dumps(counts), flush=True)
            elif line.startswith(b"{"):
                print(json.dumps(await _attack(attacks, json.loads(line))), flush=True)
        stop.set()

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    if attacks.trickle_server is not None:
        attacks.trickle_server.close()
    await csms.stop()


async def _attack(attacks: Attacks, request: dict) -> dict:
    """{"attack": "big_frame"|"flood", "at": [monotonic times], ...params}, {"attack": "trickle"} (start the
    trickling transfers now) or {"attack": "report"} (what was done so far)."""
    try:
        kind = request.get("attack")
        if kind == "trickle":
            return await attacks.trickle_transfers()
        if kind == "report":
            return attacks.report()
        params = {k: v for k, v in request.items() if k not in ("attack", "at")}
        return {"scheduled": attacks.schedule(str(kind), [float(t) for t in request.get("at", [])], **params)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.csms_server")
    parser.add_argument("--tags", default="")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # answers to flood frames are "late or unknown": not news here
    asyncio.run(serve([t for t in args.tags.split(",") if t]))


if __name__ == "__main__":
    main()
