"""Who may use the control socket (agent.cli.control_socket): mode 0660, the configured group, SO_PEERCRED.

The rule: root, the agent's own user and members of [control] group may use every command (read-only
and state-changing); everyone else is refused: by the kernel at connect() while the socket has mode 0660,
and by the agent, with a reply saying why, if the mode was loosened. The other users are real processes:
the test forks, and the child drops to `nobody` (setgroups/setgid/setuid) before it connects.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from agent.cli.control_socket import ControlClientError, ControlServer, Peer, request
from tests.agent_harness import Agent, write_config

pytestmark = pytest.mark.timeout(60)

NOBODY_UID = 65534
NOBODY_GID = 65534


def as_user(uid: int, gid: int, groups: list[int], action) -> dict:
    """Run `action()` in a forked child with these credentials; its result or error as a dict."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no exec, so the interpreter and the repository need not be readable by `nobody`
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                outcome = {"ok": True, "result": action()}
            except Exception as exc:
                outcome = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def raw_request(path: Path, cmd: str, args: dict | None = None) -> dict:
    """The agent's reply as is (request() would turn a refusal into an exception)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        closed = sock.recv(1) == b""  # the agent hangs up after a refusal
    return {**json.loads(data), "closed_after": closed}


@pytest.fixture
def shared_dir():
    """A directory `nobody` can traverse (pytest's tmp_path is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="evse-socket-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def agent_with_group(csms, shared_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root: the test switches to other users")
    try:
        group = grp.getgrnam("users")
    except KeyError:
        pytest.skip("needs a group `users` to stand for the evse group")
    config = write_config(shared_dir, csms.url)
    text = config.read_text()
    assert text.count('socket = "control.sock"\n') == 1
    config.write_text(text.replace('socket = "control.sock"\n', f'socket = "control.sock"\ngroup = "{group.gr_name}"\n'))
    agent = Agent(shared_dir, config)
    agent.start()
    try:
        await agent.ready()
        yield agent, group.gr_gid
    finally:
        agent.cleanup()


async def test_socket_is_0660_and_belongs_to_the_configured_group(agent_with_group):
    agent, gid = agent_with_group
    info = agent.socket.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == gid


async def test_another_user_is_refused_by_the_kernel_and_by_the_agent(agent_with_group):
    agent, _gid = agent_with_group
    # mode 0660: connect() fails, and the CLI says what to do
    outcome = as_user(NOBODY_UID, NOBODY_GID, [], lambda: request(agent.socket, "status"))
    assert outcome == {"ok": False, "error": f"ControlClientError: permission denied on {agent.socket}: "
                                             "are you in the agent's group?"}
    # mode loosened (by mistake, or a group that could not be set): the agent refuses, per connection
    agent.socket.chmod(0o666)
    for cmd, args in (("status", {}), ("stop", {"connector": 1}), ("availability", {"operative": False})):
        reply = as_user(NOBODY_UID, NOBODY_GID, [], lambda c=cmd, a=args: raw_request(agent.socket, c, a))
        assert reply["ok"], reply
        assert reply["result"]["ok"] is False and reply["result"]["closed_after"]
        assert reply["result"]["error"] == (
            f"permission denied: uid {NOBODY_UID} (nobody) may not use the agent's control socket: it needs root "
            "or group users (usermod -aG users USER, then log in again)")
    assert (await agent.connector())["status"] == "Available"  # the availability change was not carried out
    assert "control socket: refused uid 65534 (nobody)" in agent.log_path.read_text()


async def test_group_members_may_read_and_change_state_and_are_logged(agent_with_group):
    agent, gid = agent_with_group

    def session():
        return [request(agent.socket, "status")["station"]["id"],
                request(agent.socket, "sim.plug", {"connector": 1}),
                request(agent.socket, "availability", {"connector": 1, "operative": False}),
                request(agent.socket, "availability", {"connector": 1, "operative": True}),
                request(agent.socket, "stop", {"connector": 1})]

    outcome = as_user(NOBODY_UID, NOBODY_GID, [gid], session)
    assert outcome["ok"], outcome
    assert outcome["result"][1:] == [{"done": "sim.plug"}, {"status": "Accepted"}, {"status": "Accepted"},
                                     {"stopped": False}]
    log = agent.log_path.read_text()
    assert 'control: availability {"connector": 1, "operative": false} by uid 65534 (nobody)' in log
    assert "control: status" not in log  # read-only commands are not logged


async def test_root_and_the_agents_own_user_may_always_connect(agent_with_group):
    agent, _gid = agent_with_group
    assert (await agent.status())["connectors"][0]["id"] == 1  # the test runs as root, like the agent


def test_peer_credentials_of_a_connection():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = Peer.of(left)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    assert set(os.getgroups()) | {os.getgid()} <= peer.groups
    server = ControlServer(Path("/nonexistent.sock"), handler=lambda cmd, args: None, group="no-such-group-x")
    assert server.allowed(peer)  # the agent's own user
    stranger = Peer(pid=1, uid=os.getuid() + 1 if os.getuid() else 4242, gid=4242, groups=set())
    assert not server.allowed(stranger)
    with pytest.raises(ControlClientError, match="no agent control socket"):
        request(Path("/nonexistent.sock"), "status")
