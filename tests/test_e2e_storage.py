"""Storage trouble: a full disk is a fault with a clear message, never an unrecorded session; a journal
deleted while running faults every connector; a journal path that can be no journal, or a journal found
deleted or emptied at start, stops `evse run` with exit code 2 and one line naming the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_harness import REPO, STATION_ID, TAG_OK, Agent, charge, registered, wait_call, write_config

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


# ---- the journal file itself: bad paths, deleted while running, emptied (issue 9 C4, C11) -------------


def evse_run(config, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(config)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("where", ["a directory", "a character device", "under a regular file",
                                   "under a directory that cannot be created"])
def test_a_journal_path_that_can_be_no_journal_exits_2_with_one_line_naming_it(tmp_path, where):
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    (tmp_path / "blocker").write_text("a regular file")
    (tmp_path / "a-directory").mkdir()
    bad = {"a directory": tmp_path / "a-directory",
           "a character device": Path("/dev/zero"),
           "under a regular file": tmp_path / "blocker" / "journal.sqlite",
           "under a directory that cannot be created": Path("/proc/evse-no-such-dir/journal.sqlite")}[where]
    text = config.read_text()
    assert text.count('path = "state/journal.sqlite"') == 1
    config.write_text(text.replace('path = "state/journal.sqlite"', f'path = "{bad}"'))
    result = evse_run(config, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0], result.stderr
    assert (tmp_path / "a-directory").is_dir() and not list((tmp_path / "a-directory").iterdir())


async def test_a_journal_deleted_while_running_faults_every_connector_and_is_refused_at_restart(csms, tmp_path):
    config = write_config(tmp_path, csms.url, connectors=2)
    agent = Agent(tmp_path, config)
    journal = tmp_path / "state" / "journal.sqlite"
    agent.start(log_level="info")
    try:
        await agent.ready()
        await registered(agent)
        await charge(agent, csms, TAG_OK)
        await agent.wait_connector(lambda c: c["transaction_id"] is not None, what="a numbered transaction")
        journal.unlink()  # a technician "cleaning up", a broken provisioning script...
        for connector in (1, 2):
            faulted = await agent.wait_connector(lambda c: c["status"] == "Faulted", connector, timeout=30,
                                                 what="Faulted")
            assert "storage" in faulted["faults"] and not faulted["contactor_closed"]
        status = await agent.status()
        assert "journal file was deleted or replaced while running" in status["journal"]["error"]
        assert "journal file was deleted or replaced while running" in agent.log_path.read_text()
    finally:
        agent.cleanup()
    # at the next start the missing journal is not taken for a new install
    result = evse_run(config, tmp_path)
    rescued = journal.with_name(journal.name + ".rescued")
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(journal) in result.stderr and str(rescued) in result.stderr
    assert not journal.exists()
    # the copy saved when the loss was noticed brings the open transaction back: it is stopped and reported
    mark = len(csms.frames)
    rescued.rename(journal)
    agent.start(log_level="info")
    try:
        await agent.ready()
        await wait_call(csms, "StopTransaction", mark, timeout=30)
    finally:
        agent.cleanup()


async def test_an_emptied_journal_at_start_is_refused_with_exit_2_not_started_afresh(csms, tmp_path):
    config = write_config(tmp_path, csms.url)
    agent = Agent(tmp_path, config)
    agent.start(log_level="warning")
    try:
        await agent.ready()
        await registered(agent)
        await charge(agent, csms, TAG_OK)
    finally:
        agent.cleanup()  # SIGKILL: the transaction is open in the journal
    journal = tmp_path / "state" / "journal.sqlite"
    journal.write_bytes(b"")
    result = evse_run(config, tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(journal) in lines[0] and "empty (0 bytes)" in lines[0]
    assert journal.stat().st_size == 0
