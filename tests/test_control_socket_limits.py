"""The control socket's path and bounds (agent.cli.control_socket), over real Unix sockets (issue 9 C5, C8).

Only a stale socket is ever removed; any other file at the socket path is a config error and is left as
it was. A connection beyond the limit gets an error line and is closed; an idle connection is closed
after the idle timeout; a request line is bounded; a request nested too deeply gets an error line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from agent.cli.control_socket import MAX_REQUEST_BYTES, CommandError, ControlServer, request
from agent.config import ConfigError
from tests.agent_harness import REPO, write_config

pytestmark = pytest.mark.timeout(60)


def pong(cmd: str, args: dict) -> dict:
    return {"pong": cmd}


async def reply_of(reader: asyncio.StreamReader) -> dict:
    return json.loads(await reader.readline())


async def ask(path, line: bytes, then_closed: bool = False) -> dict:
    """Send one raw line and return the reply; with then_closed, check that the agent hung up after it."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1024 * 1024)
    try:
        writer.write(line)
        await writer.drain()
        reply = await reply_of(reader)
        if then_closed:
            assert await reader.read() == b""
        return reply
    finally:
        writer.close()


async def wait_until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


# ---- the socket path (C5) --------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["regular file", "directory", "symbolic link"])
async def test_anything_but_a_socket_at_the_path_is_a_config_error_and_is_not_deleted(tmp_path, what):
    path = tmp_path / "agent.toml"
    if what == "regular file":
        path.write_text("[station]\nid = 'CP-1'\n")
    elif what == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_text("kept")
        path.symlink_to(tmp_path / "target")
    server = ControlServer(path, pong)
    with pytest.raises(ConfigError) as info:
        await server.start()
    assert str(path) in str(info.value) and "nothing was deleted" in str(info.value)
    if what == "regular file":
        assert path.read_text() == "[station]\nid = 'CP-1'\n"
    elif what == "directory":
        assert path.is_dir()
    else:
        assert path.is_symlink() and (tmp_path / "target").read_text() == "kept"
    await server.close()  # closing a server that never started removes nothing either
    assert os.path.lexists(path)


async def test_a_stale_socket_is_replaced_and_a_live_one_is_refused(tmp_path):
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nothing listens: what a killed agent leaves
    first = ControlServer(path, pong)
    await first.start()
    try:
        second = ControlServer(path, pong)
        with pytest.raises(CommandError, match="is in use: is another agent running"):
            await second.start()
        assert await asyncio.to_thread(request, path, "status") == {"pong": "status"}
    finally:
        await first.close()
    assert not path.exists()


def test_evse_run_with_the_socket_on_its_own_config_exits_2_and_deletes_nothing(tmp_path):
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    text = config.read_text()
    assert text.count('socket = "control.sock"\n') == 1
    config.write_text(text.replace('socket = "control.sock"\n', f'socket = "{config.name}"\n'))
    before = config.read_text()
    result = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"[control] socket {config}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert config.read_text() == before


# ---- bounds (C8) -----------------------------------------------------------------------------------


async def test_connections_beyond_the_limit_get_an_error_line_and_are_closed_at_once(tmp_path):
    path = tmp_path / "control.sock"
    server = ControlServer(path, pong, max_connections=4)
    await server.start()
    idle = []
    try:
        for _ in range(4):
            idle.append(await asyncio.open_unix_connection(str(path)))
        await wait_until(lambda: server.connections == 4)
        # a flood of further connections: each is answered and closed, none is kept open by the agent
        for _ in range(50):
            reader, writer = await asyncio.open_unix_connection(str(path))
            reply = await reply_of(reader)
            assert reply["ok"] is False and "too many connections" in reply["error"]
            assert await reader.read() == b""
            writer.close()
        assert server.connections == 4
        # once one of the idle ones goes, a new caller is served again
        idle.pop()[1].close()
        await wait_until(lambda: server.connections == 3)
        assert await ask(path, b'{"cmd": "status"}\n') == {"ok": True, "result": {"pong": "status"}}
    finally:
        for _reader, writer in idle:
            writer.close()
        await server.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout(tmp_path):
    path = tmp_path / "control.sock"
    server = ControlServer(path, pong, idle_timeout_s=0.3)
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"cmd": "status"}\n')  # a request, then silence
        assert (await reply_of(reader))["ok"] is True
        reply = await reply_of(reader)
        assert reply == {"ok": False, "error": "no request for 0.3 s: closing the connection"}
        assert await reader.read() == b""
        writer.close()
        await wait_until(lambda: server.connections == 0)
    finally:
        await server.close()


async def test_deeply_nested_json_and_overlong_lines_get_an_error_line(tmp_path):
    path = tmp_path / "control.sock"
    server = ControlServer(path, pong)
    await server.start()
    try:
        reply = await ask(path, b"[" * 60_000 + b"\n")
        assert reply == {"ok": False, "error": "request is nested too deeply"}
        nested_args = b'{"cmd": "stop", "args": {"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}\n"
        reply = await ask(path, nested_args)
        assert reply["ok"] is False and "nested too deeply" in reply["error"]
        reply = await ask(path, b"x" * (MAX_REQUEST_BYTES + 10) + b"\n", then_closed=True)
        assert reply["ok"] is False and "request too long" in reply["error"]
        # and the socket serves on
        assert await asyncio.to_thread(request, path, "status") == {"pong": "status"}
    finally:
        await server.close()
