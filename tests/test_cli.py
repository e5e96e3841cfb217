"""The technician's `evse` commands, run as processes, as a technician runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from tests.agent_harness import REPO, TAG_OK

pytestmark = pytest.mark.slow


def evse(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


async def run_evse(*args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(evse, *args)


def test_demo_plays_a_complete_session_and_exits_0():
    result = evse("demo", "--seconds", "3", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for action in ("BootNotification", "Authorize", "StartTransaction", "MeterValues", "StopTransaction"):
        assert f"-> CSMS  {action}" in out
    assert "reason EVDisconnected" in out and "0 protocol violations" in out


async def test_status_sim_and_stop_commands_against_a_running_agent(csms, run_agent):
    agent = await run_agent(csms)
    config = str(agent.config)
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted", what="registration")

    result = await run_evse("sim", "plug", "--config", config)
    assert result.returncode == 0, result.stderr
    result = await run_evse("sim", "swipe", TAG_OK, "--socket", str(agent.socket))
    assert result.returncode == 0, result.stderr
    await agent.wait_connector(lambda c: c["status"] == "Charging", what="Charging")

    result = await run_evse("status", "--json", "--config", config)
    status = json.loads(result.stdout)
    assert status["ocpp"] == {**status["ocpp"], "connected": True, "registration": "Accepted"}
    assert isinstance(status["journal"]["pending"], int)
    (connector,) = status["connectors"]
    assert connector["cp_state"] == "C" and connector["contactor_closed"] is True
    assert connector["pwm_duty"] == pytest.approx(16 / 0.6, abs=0.01)
    assert connector["offered_current_a"] == 16.0 and connector["status"] == "Charging"
    assert isinstance(connector["transaction_id"], int) and connector["energy_wh"] >= 0

    table = (await run_evse("status", "--config", config)).stdout
    assert "Charging" in table and "PWM 26.7%" in table and "closed" in table

    result = await run_evse("stop", "--config", config)
    assert result.returncode == 0 and "stopped" in result.stdout
    await agent.wait_connector(lambda c: c["status"] == "Finishing" and not c["contactor_closed"],
                               what="Finishing")


async def test_cli_errors_are_one_clear_line(csms, run_agent, tmp_path):
    result = await run_evse("status", "--socket", str(tmp_path / "nothing.sock"))
    assert result.returncode == 1
    assert "is the agent running?" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    agent = await run_agent(csms)
    result = await run_evse("sim", "fault", "weld", "on", "--connector", "7", "--config", str(agent.config))
    assert result.returncode == 1 and "no connector 7" in result.stderr
    result = await run_evse("sim", "swipe", "not-hex!", "--config", str(agent.config))
    assert result.returncode == 1 and "not a hex card UID" in result.stderr


def test_bundled_csms_takes_its_own_options():
    result = evse("csms", "--help")
    assert result.returncode == 0 and "--port" in result.stdout and "--tags" in result.stdout
