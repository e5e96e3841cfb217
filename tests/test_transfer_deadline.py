"""Transfers against a server that trickles (issue 9 C6): agent.ocpp.transfer on a real HTTP server on 127.0.0.1.

A server that sends one byte now and then never trips a read timeout; the total deadline ends the
transfer anyway, its socket is shut down (the worker is free again), and transfers run in workers of
their own: the event loop's default executor, which the devices' reads use, stays free meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agent.ocpp import transfer

pytestmark = pytest.mark.timeout(60)

BODY = bytes(range(256)) * 16
TRICKLE_PAUSE_S = 0.1  # between two bytes; the read timeout in the tests is far longer


@dataclass
class Server:
    port: int = 0
    trickling: threading.Event = field(default_factory=threading.Event)  # a trickle has begun
    hung_up: threading.Event = field(default_factory=threading.Event)  # a trickled connection was closed
    release: threading.Event = field(default_factory=threading.Event)  # lets the held downloads finish
    held: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server():
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def trickle(self, data: bytes) -> None:
            state.trickling.set()
            try:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if state.hung_up.wait(TRICKLE_PAUSE_S):
                        return
            except OSError:
                state.hung_up.set()

        def do_GET(self):
            if self.path == "/trickle-headers":
                self.trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nX-Padding: " + b"x" * 100_000)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            if self.path == "/trickle":
                self.trickle(BODY)
            elif self.path == "/held":
                self.wfile.write(BODY[:10])
                self.wfile.flush()
                state.held.release()
                state.release.wait(30)
                self.wfile.write(BODY[10:])
            else:
                self.wfile.write(BODY)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.release.set()
    state.hung_up.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
async def test_a_trickling_download_fails_by_its_deadline_and_frees_its_worker(server, tmp_path, path):
    dest = tmp_path / "firmware.bin"
    with pytest.raises(transfer.TransferError, match="not finished within its deadline of 1 s"):
        await transfer.run(transfer.download, server.url(path), dest, max_bytes=1 << 20, timeout=30,
                           deadline_s=1.0)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()
    # the agent hung up on the server: nothing of the transfer is left waiting on that socket
    assert await asyncio.to_thread(server.hung_up.wait, 30)
    # and the transfer workers take the next download at once
    size, _digest = await transfer.run(transfer.download, server.url("/file"), dest, max_bytes=1 << 20)
    assert size == len(BODY) and dest.read_bytes() == BODY


async def test_a_cancelled_download_ends_although_the_server_trickles(server, tmp_path):
    cancel = threading.Event()
    download = asyncio.ensure_future(transfer.run(
        transfer.download, server.url("/trickle"), tmp_path / "f.bin", max_bytes=1 << 20, timeout=30,
        deadline_s=3600, cancel=cancel))
    assert await asyncio.to_thread(server.trickling.wait, 30)
    cancel.set()
    with pytest.raises(transfer.TransferCancelled):
        await download
    assert await asyncio.to_thread(server.hung_up.wait, 30)


async def test_transfers_never_occupy_the_default_executor(server, tmp_path):
    loop = asyncio.get_running_loop()
    default = ThreadPoolExecutor(max_workers=1)  # a board's device reads need this one free
    loop.set_default_executor(default)
    downloads = [asyncio.ensure_future(transfer.run(transfer.download, server.url("/held"), tmp_path / f"{n}.bin",
                                                    max_bytes=1 << 20, deadline_s=60))
                 for n in range(transfer.TRANSFER_WORKERS + 1)]
    for _ in range(transfer.TRANSFER_WORKERS):  # every transfer worker is busy with a held download
        assert await asyncio.to_thread(server.held.acquire, True, 30)
    # a device read through the default executor is served while they all hang
    assert await loop.run_in_executor(None, lambda: "served") == "served"
    assert not any(d.done() for d in downloads)
    server.release.set()
    sizes = [size for size, _ in await asyncio.gather(*downloads)]
    assert sizes == [len(BODY)] * len(downloads)
