"""Connection robustness of the agent process (issue 4 item 6): a CSMS that refuses the WebSocket
handshake (HTTP 401 / 404 / 500) or gets the subprotocol wrong is retried with back-off and jitter and
reported in `evse status --json`, never fatal; a half-open connection is detected by the WebSocket
ping (WebSocketPingInterval) and replaced without losing a transaction message; interval 0 sends no
pings at all.

The misbehaving servers and the TCP proxy are written here, on the websockets server and asyncio
streams; the real CSMS is hil.csms.LocalCsms on the same port once the broken one is gone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import datetime
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import serve

from hil.csms import LocalCsms
from tests.agent_harness import REPO, STATION_ID, TAG_OK, Agent, charge, registered, write_config

pytestmark = pytest.mark.slow

TAGS = {TAG_OK: "Accepted"}
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
CALL, CALLRESULT = 2, 3
OPCODE_PING = 0x9


# ---- a CSMS that gets the handshake wrong --------------------------------------------------------


class BrokenCsms:
    """A WebSocket server that fails every handshake in one way, and notes when each attempt came."""

    def __init__(self, kind: str):
        self.kind = kind  # "401" | "404" | "500" | "no subprotocol" | "wrong subprotocol" | "hang up"
        self.attempts: list[float] = []  # time.monotonic() of each handshake request
        self._server = None

    def _process_request(self, connection, request):
        self.attempts.append(time.monotonic())
        if self.kind.isdigit():
            return connection.respond(HTTPStatus(int(self.kind)), f"refused ({self.kind})\n")
        return None  # go on with the handshake, and get the subprotocol wrong

    async def start(self, port: int = 0) -> int:
        async def handler(websocket):
            if self.kind == "hang up":  # e.g. a CSMS that does not know the station id
                await websocket.close(1008, "unknown charge point")
            await websocket.wait_closed()  # the station must hang up by itself

        options = {}
        if self.kind == "wrong subprotocol":
            options["select_subprotocol"] = lambda connection, offered: "ocpp2.0.1"
        elif self.kind == "hang up":
            options["subprotocols"] = ["ocpp1.6"]
        # "no subprotocol": the server supports none, so it answers without Sec-WebSocket-Protocol
        self._server = await serve(handler, "127.0.0.1", port, process_request=self._process_request, **options)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def evse_status_json(config: Path) -> dict:
    """`evse status --json`, as a technician would run it."""
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "agent", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def set_backoff(config: Path, minimum: float, maximum: float) -> None:
    text = config.read_text()
    text = text.replace("reconnect_min_s = 0.2", f"reconnect_min_s = {minimum}")
    config.write_text(text.replace("reconnect_max_s = 1.0", f"reconnect_max_s = {maximum}"))


@pytest.fixture
async def cleanup():
    """Collects agents, servers and proxies; all are stopped after the test."""
    things: list = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, Agent):
            thing.cleanup()
        else:
            try:
                await thing.stop()
            except Exception:
                pass  # already stopped by the test


# ---- 1. refused handshakes -----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "reported"), [
    ("401", "HTTP 401"),
    ("404", "HTTP 404"),
    ("500", "HTTP 500"),
    ("no subprotocol", "did not agree to subprotocol ocpp1.6 (answered None)"),
    ("wrong subprotocol", "unsupported subprotocol: ocpp2.0.1"),
    ("hang up", "closed the connection before registration (code 1008, reason 'unknown charge point')"),
])
async def test_refused_handshake_is_retried_and_reported_until_the_real_csms_answers(
        tmp_path, cleanup, kind, reported):
    broken = BrokenCsms(kind)
    port = await broken.start()
    cleanup.append(broken)
    config = write_config(tmp_path, f"ws://127.0.0.1:{port}/ocpp")
    agent = Agent(tmp_path, config)
    cleanup.append(agent)
    agent.start()
    await agent.ready()
    await wait_for(lambda: len(broken.attempts) >= 3, 10, "three connection attempts")

    status = await evse_status_json(config)
    assert reported in status["ocpp"]["last_error"], status["ocpp"]
    assert not status["ocpp"]["connected"] and status["ocpp"]["registration"] is None
    assert agent.proc.poll() is None, "a refused handshake must never end the agent"

    # the operator fixes the CSMS: the real one comes up on the same port
    await broken.stop()
    attempts = len(broken.attempts)
    csms = LocalCsms(authorized_tags=TAGS, boot_interval=60)
    await csms.start(port=port)
    cleanup.append(csms)
    await csms.wait_connected(STATION_ID, timeout=10)
    status = await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted" and s["ocpp"]["connected"],
                                     what="registered with the real CSMS")
    assert status["ocpp"]["last_error"] is None
    assert len(broken.attempts) == attempts
    assert [f.action for f in csms.frames if f.direction == "in"][0] == "BootNotification"
    assert csms.violations == []
    assert agent.proc.poll() is None


@pytest.mark.parametrize("kind", ["500", "hang up"])
async def test_reconnect_back_off_doubles_up_to_the_maximum_with_jitter(tmp_path, cleanup, kind):
    """reconnect_min_s 0.1, reconnect_max_s 0.8: the gaps between attempts are 0.1, 0.2, 0.4, 0.8, 0.8, ...
    each shortened by a random 0-25 % (jitter keeps a fleet from reconnecting in lockstep). A CSMS that
    accepts the WebSocket but hangs up before the station is registered is a failed attempt too: it
    must not be hammered at the minimum interval."""
    broken = BrokenCsms(kind)
    port = await broken.start()
    cleanup.append(broken)
    config = write_config(tmp_path, f"ws://127.0.0.1:{port}/ocpp")
    set_backoff(config, 0.1, 0.8)
    agent = Agent(tmp_path, config)
    cleanup.append(agent)
    agent.start()
    await wait_for(lambda: len(broken.attempts) >= 9, 15, "nine connection attempts")

    gaps = [b - a for a, b in zip(broken.attempts, broken.attempts[1:], strict=False)][:8]
    nominal = [min(0.8, 0.1 * 2**i) for i in range(len(gaps))]
    for gap, base in zip(gaps, nominal, strict=True):
        assert 0.75 * base - 0.01 <= gap <= base + 0.25, f"gaps {gaps}, nominal {nominal}"
    assert min(gaps[3:]) > 2 * max(gaps[:2]), f"the back-off does not grow: {gaps}"
    capped = gaps[3:]  # five gaps of nominal 0.8 s: without jitter they would be equal to a few ms
    assert max(capped) - min(capped) > 0.02, f"no jitter: {gaps}"
    assert agent.proc.poll() is None


# ---- 2. half-open connection and pings -------------------------------------------------------------


class TcpProxy:
    """Forwards TCP between the agent and the CSMS. `black_hole()` makes the open connections swallow
    everything in both directions without closing them (a half-open link: a dead NAT entry, a cable
    pulled somewhere on the way); later connections are forwarded normally. Counts the WebSocket ping
    frames the client sends."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.connections = 0
        self.client_pings = 0
        self._holes: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    def black_hole(self) -> None:
        for state in self._holes:
            state["black_holed"] = True

    async def stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()  # the pumps: each connection then closes both of its sockets
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)

    async def _serve(self, client_reader, client_writer) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        state = {"black_holed": False}
        self._holes.append(state)
        pumps = [asyncio.create_task(self._pump(client_reader, upstream_writer, state, _PingCounter(self))),
                 asyncio.create_task(self._pump(upstream_reader, client_writer, state, None))]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
            self._tasks.discard(pump)
        for writer in (client_writer, upstream_writer):
            writer.close()

    @staticmethod
    async def _pump(reader, writer, state, counter) -> None:
        try:
            while data := await reader.read(65536):
                if state["black_holed"]:
                    continue  # swallowed: nothing arrives, nothing is closed
                if counter is not None:
                    counter.feed(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass


class _PingCounter:
    """Parses the client->server byte stream (HTTP upgrade, then masked WebSocket frames)."""

    def __init__(self, proxy: TcpProxy):
        self._proxy = proxy
        self._buffer = b""
        self._in_handshake = True

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if self._in_handshake:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._buffer = self._buffer[end + 4:]
            self._in_handshake = False
        while len(self._buffer) >= 2:
            opcode, length, offset = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F, 2
            if length == 126:
                if len(self._buffer) < 4:
                    return
                length, offset = int.from_bytes(self._buffer[2:4], "big"), 4
            elif length == 127:
                if len(self._buffer) < 10:
                    return
                length, offset = int.from_bytes(self._buffer[2:10], "big"), 10
            if self._buffer[1] & 0x80:
                offset += 4  # masking key
            if len(self._buffer) < offset + length:
                return
            if opcode == OPCODE_PING:
                self._proxy.client_pings += 1
            self._buffer = self._buffer[offset + length:]


def station_calls(csms: LocalCsms, actions=TX_ACTIONS) -> list:
    return [f for f in csms.frames if f.direction == "in" and f.message_type == CALL and f.action in actions]


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_half_open_connection_is_detected_by_ping_and_nothing_is_lost(tmp_path, cleanup):
    """WebSocketPingInterval=1: the link goes silent mid-transaction without closing; the unanswered
    ping ends the connection, the agent reconnects and delivers every sample once, in order."""
    csms = LocalCsms(authorized_tags=TAGS, boot_interval=60)
    await csms.start()
    cleanup.append(csms)
    proxy = TcpProxy(int(csms.url.rsplit(":", 1)[1].split("/")[0]))
    proxy_port = await proxy.start()
    cleanup.append(proxy)
    config = write_config(tmp_path, f"ws://127.0.0.1:{proxy_port}/ocpp", ocpp_keys={"WebSocketPingInterval": 1})
    agent = Agent(tmp_path, config)
    cleanup.append(agent)
    agent.start()
    await agent.ready()
    await registered(agent)  # a card swiped before that is decided offline
    await charge(agent, csms, TAG_OK)
    await csms.wait_until(lambda: len(csms.calls("MeterValues")) >= 1)
    assert proxy.client_pings >= 1, "WebSocketPingInterval=1 but no ping in the first seconds"
    # silence the link right after a sample was answered (the next one is ~1 s away): nothing is in
    # flight, so nothing may arrive twice
    await csms.wait_frame(lambda f: f.direction == "out" and f.message_type == CALLRESULT
                          and f.action == "MeterValues", since=len(csms.frames))
    # the answer is through the proxy and the agent has it: nothing is in flight
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="the sample acknowledged")
    proxy.black_hole()
    cut = len(csms.frames)
    silenced, silenced_at = time.monotonic(), time.time()
    await agent.wait_status(lambda s: not s["ocpp"]["connected"], timeout=20, what="the dead link detected")
    detected = time.monotonic() - silenced
    await agent.wait_status(lambda s: s["ocpp"]["connected"], timeout=10, what="a new connection")
    reconnected_at = time.time()
    assert proxy.connections == 2
    await csms.wait_until(lambda: len([f for f in station_calls(csms, ["MeterValues"]) if f.index >= cut]) >= 2,
                          timeout=10)
    await agent.cmd("sim.unplug")
    (tx,) = csms.transactions.values()
    await csms.wait_until(lambda: tx.stopped, timeout=10)
    await agent.wait_status(lambda s: s["journal"]["pending"] == 0, what="journal flushed")
    await asyncio.sleep(0.3)

    # ping every 1 s, 1 s for the pong, then at most close_timeout (2 s) for a close handshake that
    # cannot come (websockets' default would be 10 s)
    assert detected < 6, f"the half-open connection took {detected:.1f} s to detect"
    calls = station_calls(csms)
    contents = [(f.action, json.dumps(f.payload, sort_keys=True)) for f in calls]
    assert len(contents) == len(set(contents)), "a transaction message arrived twice"
    assert [f.action for f in calls].count("StartTransaction") == 1 and tx.stop_count == 1
    stamps = [stamp(f.payload["meterValue"][0]["timestamp"]) for f in calls if f.action == "MeterValues"]
    assert stamps == sorted(stamps)
    timeline = [stamp(tx.start_timestamp), *stamps, stamp(tx.stop_timestamp)]
    gaps = [b - a for a, b in zip(timeline, timeline[1:], strict=False)]
    assert max(gaps) < 2.5, f"a sample is missing (MeterValueSampleInterval 1 s): gaps {gaps}"
    in_the_dark = [t for t in stamps if silenced_at < t < reconnected_at]
    assert len(in_the_dark) >= int(detected) - 1, "the samples taken while the link was dead must arrive"
    assert tx.stop_reason == "EVDisconnected"
    assert (await agent.status())["journal"]["dropped"] == 0
    assert csms.unknown_stops == [] and csms.other_meter_values == []
    assert len(csms.calls("BootNotification")) == 1  # a reconnect is not a reboot
    assert csms.violations == []


async def test_ping_interval_zero_sends_no_pings_and_keeps_the_connection(tmp_path, cleanup):
    csms = LocalCsms(authorized_tags=TAGS, boot_interval=60)
    await csms.start()
    cleanup.append(csms)
    proxy = TcpProxy(int(csms.url.rsplit(":", 1)[1].split("/")[0]))
    proxy_port = await proxy.start()
    cleanup.append(proxy)
    config = write_config(tmp_path, f"ws://127.0.0.1:{proxy_port}/ocpp", ocpp_keys={"WebSocketPingInterval": 0})
    agent = Agent(tmp_path, config)
    cleanup.append(agent)
    agent.start()
    await agent.ready()
    await csms.wait_connected(STATION_ID)
    answer = await csms.call(STATION_ID, "GetConfiguration", {"key": ["WebSocketPingInterval"]})
    assert answer["configurationKey"][0]["value"] == "0"
    await asyncio.sleep(3.0)
    assert proxy.client_pings == 0
    assert proxy.connections == 1 and csms.is_connected(STATION_ID)
    assert (await agent.status())["ocpp"]["connected"]
    assert csms.violations == []
