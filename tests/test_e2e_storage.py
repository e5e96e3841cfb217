"""Storage trouble at run time: a full disk is a fault with a clear message, never an unrecorded session."""

from __future__ import annotations

import pytest

from tests.agent_harness import STATION_ID, TAG_OK, Agent, charge, registered, write_config

pytestmark = pytest.mark.slow


async def test_full_disk_faults_every_connector_and_opens_the_contactor(csms, tmp_path):
    config = write_config(tmp_path, csms.url)
    agent = Agent(tmp_path, config)
    # how much a normal start writes (journal schema, settings, security log...), measured on this build
    agent.start(log_level="warning")
    await agent.ready()
    await csms.wait_connected(STATION_ID)
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted")
    agent.kill9()
    largest_file = max(p.stat().st_size for p in (tmp_path / "state").rglob("*") if p.is_file())
    # then every file the agent writes is capped a little above that: a disk that fills up while charging
    agent.start(log_level="warning", max_file_bytes=largest_file + 24 * 1024)
    try:
        await agent.ready()
        # the CSMS may still hold the killed process's connection: wait for the new one's registration
        await registered(agent)
        await charge(agent, csms, TAG_OK)
        connector = await agent.wait_connector(lambda c: c["status"] == "Faulted", timeout=60, what="Faulted")
        assert "storage" in connector["faults"] and not connector["contactor_closed"]
        status = await agent.status()
        assert status["journal"]["error"] and "journal" in status["journal"]["error"]
        faulted = await csms.wait_frame(lambda f: f.action == "StatusNotification" and f.message_type == 2
                                        and f.payload["status"] == "Faulted")
        assert faulted.payload["vendorErrorCode"] == "JournalNotWritable"
        snapshot = await agent.cmd("sim.snapshot")
        assert snapshot["connectors"][0]["contactor_feedback"] is False
        assert "journal cannot be written" in agent.log_path.read_text()
    finally:
        agent.proc.kill()
        agent.proc.wait(5)
