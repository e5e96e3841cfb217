"""The agent-process harness itself (hil/agent_process.py), which the end-to-end tests, the chaos run and the
benchmarks all start the agent with: against the bundled CSMS on 127.0.0.1, with real agent processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.agent_process import (
    AgentProcess,
    cpu_seconds_of,
    proc_status_of,
    write_agent_config,
    write_sim_board,
)

pytestmark = pytest.mark.slow


def _command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


async def test_a_started_agent_is_ready_with_the_written_config_and_registers(csms, tmp_path):
    config = write_agent_config(tmp_path, csms.url, station_id="CP-H1", connectors=2)
    agent = AgentProcess(tmp_path, config)
    agent.start()
    try:
        status = await agent.ready()
        assert [c["id"] for c in status["connectors"]] == [1, 2]  # the fast sim board it wrote
        registered = await agent.ready(registered=True)
        assert registered["ocpp"]["registration"] == "Accepted" and registered["ocpp"]["connected"]
        assert csms.is_connected("CP-H1")
        command = _command_line(agent.pid)
        assert command[command.index("--config") + 1] == str(config)
        assert command[command.index("--log-level") + 1] == "debug"
        assert "agent.log" == agent.log_path.name and agent.log_path.stat().st_size > 0
    finally:
        agent.cleanup()


async def test_a_wait_that_times_out_names_what_it_waited_for_and_shows_the_log_tail(csms, tmp_path):
    agent = AgentProcess(tmp_path, write_agent_config(tmp_path, csms.url))
    agent.start()
    try:
        await agent.ready()
        with pytest.raises(TimeoutError) as raised:
            await agent.wait_connector(lambda c: c["status"] == "Finishing", timeout=0.5,
                                       what="an EV that never came")
        message = str(raised.value)
        assert "waiting for an EV that never came (connector 1)" in message
        assert "'status': 'Available'" in message  # the last status it saw
        tail = message.split("\n")[1:]
        log_lines = [line[:300] for line in agent.log_path.read_text().splitlines()]
        assert tail and all(line in log_lines for line in tail), "the tail is not the agent's log"
    finally:
        agent.cleanup()


async def test_terminate_returns_the_agents_exit_code(csms, tmp_path):
    agent = AgentProcess(tmp_path, write_agent_config(tmp_path, csms.url))
    agent.start()
    await agent.ready()
    assert await agent.terminate() == 0  # SIGTERM, as systemd stops the unit: an orderly stop

    agent.start()  # again on the same files
    await agent.ready()
    agent.kill9()
    assert await agent.terminate() == -9  # already ended: the code of that end
    with pytest.raises(RuntimeError, match="agent exited with -9"):
        await agent.wait_status(lambda s: True)  # a dead agent is not waited for


async def test_a_benchmark_agent_keeps_one_connection_across_a_restart_and_reads_its_proc_figures(csms, tmp_path):
    """keep_connection, the config's own log level and the /proc figures, as bench/common.py uses them."""
    board = write_sim_board(tmp_path / "one-socket.toml")
    runtime = tmp_path / "run"
    runtime.mkdir()
    config = write_agent_config(tmp_path, csms.url, board_file=board, socket=runtime / "control.sock",
                                log_level="info")
    agent = AgentProcess(tmp_path, config, socket=runtime / "control.sock", log_level=None, unbuffered=False,
                         keep_connection=True)
    agent.start()
    try:
        await agent.ready(registered=True)
        assert "--log-level" not in _command_line(agent.pid)
        control_pid = await agent.control_pid()
        assert control_pid != agent.pid
        assert proc_status_of(control_pid)["VmRSS"] > 0 and agent.proc_status()["VmRSS"] > 0
        assert agent.cpu_seconds() > 0 and cpu_seconds_of(control_pid) >= 0
        assert agent.io()["wchar"] > 0  # it wrote its journal and log

        first = agent.pid
        agent.kill9()
        agent.start()
        status = await agent.ready(registered=True)  # the connection to the killed process was replaced
        assert agent.pid != first and status["station"]["control_pid"] != control_pid
    finally:
        await agent.stop()
    assert not agent.running
