"""Signals: SIGHUP reloads what can change while running; SIGTERM lets no new session start.

(SIGTERM's exit code, journal and stop_on_shutdown behaviour: tests/test_e2e_resilience.py.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from agent.config import load_config
from agent.core.authorization import AuthorizationStatus, TokenInfo
from agent.ocpp.v16.client import OcppClient
from agent.station.journal import Journal
from agent.station.station import Station
from hal.board import load_board
from tests.agent_harness import REPO, TAG_2, TAG_OK, Agent, charge, registered, write_config

pytestmark = pytest.mark.timeout(60)


class AgentWithoutLogOverride(Agent):
    """Started without --log-level, so [log] level in the file decides (and a SIGHUP can change it)."""

    def start(self, log_level=None, max_file_bytes=None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)


async def wait_log(agent: Agent, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = agent.log_path.read_text()
        if text in log:
            return log
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{text!r} not in the log:\n{agent.log_tail()}")


async def test_sighup_applies_log_level_and_max_current_and_keeps_the_old_config_when_the_new_one_is_broken(
        csms, tmp_path):
    config = write_config(tmp_path, csms.url, extra='\n[log]\nlevel = "info"\n')
    agent = AgentWithoutLogOverride(tmp_path, config)
    agent.start()
    try:
        await agent.ready()
        await registered(agent)  # a card swiped before that is decided offline
        connector = await charge(agent, csms, TAG_OK)
        assert connector["offered_current_a"] == 16.0
        await asyncio.sleep(1.2)
        assert "evse.ocpp.frames" not in agent.log_path.read_text()  # info: no frame lines

        text = config.read_text()
        edited = (text.replace("max_current_a = 16", "max_current_a = 10")
                  .replace('level = "info"', 'level = "debug"')
                  .replace('vendor = "TestVendor"', 'vendor = "OtherVendor"'))
        assert edited.count("10") > text.count("10") and "debug" in edited
        config.write_text(edited)
        agent.proc.send_signal(signal.SIGHUP)

        connector = await agent.wait_connector(lambda c: c["offered_current_a"] == 10.0, what="10 A offered")
        assert connector["status"] == "Charging" and connector["pwm_duty"] == pytest.approx(10 / 0.6, abs=0.01)
        log = await wait_log(agent, "SIGHUP: configuration reloaded")
        assert "log level debug, max current 10 A" in log
        assert "SIGHUP: station.vendor changed in" in log and "next restart" in log
        await wait_log(agent, "evse.ocpp.frames: > [2,")  # debug now: one line per frame

        config.write_text(edited.replace("max_current_a = 10", "max_current_a = 100"))  # out of range
        agent.proc.send_signal(signal.SIGHUP)
        log = await wait_log(agent, "SIGHUP: the config file does not load, the running configuration stays")
        assert "[charging] max_current_a: must be between 6 and 80, got 100" in log
        await asyncio.sleep(0.3)
        assert agent.proc.poll() is None
        assert (await agent.connector())["offered_current_a"] == 10.0

        config.write_text("[station\nbroken")  # not even TOML
        agent.proc.send_signal(signal.SIGHUP)
        await wait_log(agent, "invalid TOML")
        assert (await agent.connector())["offered_current_a"] == 10.0
        assert await agent.terminate() == 0
    finally:
        agent.cleanup()


async def test_after_sigterm_no_card_remote_start_or_late_authorization_starts_a_session(tmp_path, caplog):
    """In process, so the moment between SIGTERM (shutdown() begins) and the exit can be held open."""
    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp", connectors=2))
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    station = Station(config, board, Journal(config.journal.path), csms=OcppClient)
    await station.start_control()
    worker_tasks = [asyncio.create_task(station.recorder.worker(rt)) for rt in station.connectors.values()]

    async def steps(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            station.control_step()
            await asyncio.sleep(0.01)

    board.simulator.plug(1)
    board.simulator.plug(2)
    await steps(0.3)
    # online, and the CSMS answers the first card only when told to
    station.ocpp.connected, station.ocpp.registration = True, "Accepted"
    answer = asyncio.Event()

    async def authorize(id_token):
        await answer.wait()
        return TokenInfo(AuthorizationStatus.ACCEPTED)

    station.ocpp.authorize = authorize
    assert station.present_id_token(TAG_OK) == 1  # Authorize.req is out
    await steps(0.1)

    caplog.set_level(logging.INFO, logger="evse.station")
    shutdown = asyncio.create_task(station.shutdown())  # what SIGTERM does
    await asyncio.sleep(0)
    assert station.closing
    assert station.present_id_token(TAG_2) is None
    assert station.csms_port.remote_start(2, TAG_2) is False  # RemoteStartTransaction: Rejected
    answer.set()  # the CSMS accepts the first card after the SIGTERM
    await shutdown
    await steps(0.3)
    assert not any(rt.controller.transaction_active for rt in station.connectors.values())
    assert station.journal.running_transactions() == []
    assert all(not c["contactor_closed"] for c in station.status()["connectors"])
    assert "card 0411223344: ignored: the agent is shutting down" in caplog.text
    assert "card 0455667788 ignored: the agent is shutting down" in caplog.text
    for task in worker_tasks:
        task.cancel()
    await board.close()
    station.journal.close()


async def test_a_crashed_control_loop_ends_the_agent_with_every_contactor_open(tmp_path):
    """A station without its control loop must not keep running unsupervised: it stops, opens every
    contactor and exits non-zero so that systemd restarts it."""
    from agent.station.station import StationCrashed

    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp"))
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    station = Station(config, board, Journal(config.journal.path), csms=OcppClient)

    def broken_step():
        raise RuntimeError("simulated bug in the control step")

    station.link.control.step = broken_step  # the in-process control loop (agent.control.loop)
    with pytest.raises(StationCrashed, match="control task ended unexpectedly"):
        await asyncio.wait_for(station.run(), 10)
    assert all(not conn.contactor.commanded_closed for conn in station.board.connectors)
