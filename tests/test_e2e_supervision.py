"""The two processes of `evse run` supervise each other (issue 9 B.1): the control process (devices,
controllers, control loop) and the agent process (OCPP, journal, CLI).

* The agent is killed (kill -9): the control process opens every contactor and exits.
* The control process is killed: the agent reports every connector Faulted to the CSMS and exits non-zero,
  so that systemd restarts the unit.
* The agent stalls (SIGSTOP: a stuck disk, a flood of frames, a long GC): the EV still gets its contactor
  opened by the control process while the agent cannot run; a stall past the deadline faults the
  connectors and stops the session, and the agent carries on when it runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from tests.agent_harness import TAG_OK, charge, online, wait_call


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def _ended(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


async def test_killing_the_agent_opens_every_contactor_and_ends_the_control_process(csms, run_agent):
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    control_pid = (await agent.status())["station"]["control_pid"]
    assert control_pid and control_pid != agent.proc.pid and _alive(control_pid)
    log_size = agent.log_path.stat().st_size

    agent.kill9()

    assert await _ended(control_pid), "the control process outlived the agent"
    after = agent.log_path.read_text()[log_size:]
    assert "the agent process is gone" in after
    assert "connector 1: contactor opened" in after
    assert after.index("the agent process is gone") < after.index("connector 1: contactor opened")
    assert "every contactor is open" in after


async def test_killing_the_control_process_reports_faulted_and_ends_the_agent(csms, run_agent):
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    control_pid = (await agent.status())["station"]["control_pid"]
    since = len(csms.frames)

    os.kill(control_pid, signal.SIGKILL)

    faulted = await wait_call(csms, "StatusNotification", since=since,
                              where=lambda p: p["connectorId"] == 1 and p["status"] == "Faulted")
    assert faulted.payload["errorCode"] == "InternalError"
    assert faulted.payload["vendorErrorCode"] == "ControlLoopLost"
    deadline = time.monotonic() + 15
    while agent.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert agent.proc.poll() not in (None, 0), "the agent must exit non-zero so that systemd restarts the unit"
    assert "control loop lost" in agent.log_tail(200)


async def test_the_contactor_opens_while_the_agent_process_is_stopped(csms, run_agent):
    """A stall shorter than the supervision deadline: the EV leaves C while the agent cannot run at all,
    and its contactor opens before the agent runs again."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    await agent.cmd("sim.marks")  # forget the marks of the start
    await agent.cmd("sim.ev_state", state="B", after_s=0.3)  # the EV stops drawing by itself, later

    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(1.0)
    finally:
        resumed_at = time.monotonic()
        os.kill(agent.proc.pid, signal.SIGCONT)

    marks = await agent.cmd("sim.marks")
    ev = [t for t, what, value in marks if what == "ev" and value == "B"]
    opened = [t for t, what, value in marks if what == "contactor" and value is False]
    assert ev and opened, marks
    assert ev[0] <= opened[0] < resumed_at, "the contactor waited for the stopped agent"
    connector = await agent.wait_connector(lambda c: c["status"] == "SuspendedEV", what="SuspendedEV")
    assert connector["transaction_active"] and not connector["contactor_closed"]


async def test_an_agent_stalled_past_the_deadline_opens_the_contactor_and_the_session_resumes_after(
        csms, run_agent):
    """Past the deadline the control process opens the contactor (Fault supervision) without the agent; the
    transaction is not lost to a busy agent: once the agent answers again the fault clears and the EV
    charges on in the same transaction."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    tx_id = (await agent.connector())["transaction_id"]
    await agent.cmd("sim.marks")
    since = len(csms.frames)

    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(3.0)  # the control process's deadline is 2 s
    finally:
        resumed_at = time.monotonic()
        os.kill(agent.proc.pid, signal.SIGCONT)

    marks = await agent.cmd("sim.marks")
    opened = [t for t, what, value in marks if what == "contactor" and value is False]
    assert opened and opened[0] < resumed_at, "no contactor opened while the agent was stalled"
    faulted = await wait_call(csms, "StatusNotification", since=since,
                              where=lambda p: p["status"] == "Faulted")
    assert faulted.payload["vendorErrorCode"] == "AgentNotResponding"
    connector = await agent.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging",
                                           what="charging again")
    assert connector["transaction_id"] == tx_id
    assert [f for f in csms.frames[since:] if f.action == "StopTransaction"] == []
    assert "no message from the agent process" in agent.log_tail(300)


async def test_sigterm_during_a_reset_ends_the_agent_instead_of_restarting_it(csms, run_agent):
    """A stop from systemd wins over a Reset under way: the agent exits 0, no restart in place. The window is
    held open by stopping the control process once the reset's StopTransaction is out: the agent then
    waits for it to close while the SIGTERM arrives."""
    agent = await online(run_agent, csms)
    await charge(agent, csms, TAG_OK)
    control_pid = (await agent.status())["station"]["control_pid"]
    since = len(csms.frames)
    assert await csms.call("CP-T1", "Reset", {"type": "Soft"}) == {"status": "Accepted"}
    stop = await wait_call(csms, "StopTransaction", since=since)
    assert stop.payload["reason"] == "SoftReset"
    os.kill(control_pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.3)
        agent.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
    finally:
        os.kill(control_pid, signal.SIGCONT)
    deadline = time.monotonic() + 20
    while agent.proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert agent.proc.poll() == 0, agent.log_tail()
    assert [f for f in csms.frames[since:] if f.action == "BootNotification"] == []


async def test_a_stalled_control_process_is_reported_faulted_and_ends_the_agent(csms, run_agent):
    """The control process alive but silent (a stuck device read, SIGSTOP here) past the agent's 5 s
    deadline: the agent reports every connector Faulted and exits non-zero, so the unit restarts."""
    agent = await online(run_agent, csms)
    control_pid = (await agent.status())["station"]["control_pid"]
    since = len(csms.frames)
    os.kill(control_pid, signal.SIGSTOP)
    try:
        faulted = await wait_call(csms, "StatusNotification", since=since, timeout=15,
                                  where=lambda p: p["connectorId"] == 1 and p["status"] == "Faulted")
        assert faulted.payload["vendorErrorCode"] == "ControlLoopLost"
        deadline = time.monotonic() + 15
        while agent.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert agent.proc.poll() not in (None, 0)
        assert "the control process sent nothing for" in agent.log_tail(200)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the agent may have killed it on its way out
            os.kill(control_pid, signal.SIGCONT)  # else it finds the agent gone and ends
    assert await _ended(control_pid)
