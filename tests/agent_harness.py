"""Run the real agent as a process against the bundled CSMS on 127.0.0.1, for end-to-end tests.

The agent is started exactly as a station runs it (`python -m agent run --config FILE`), with its
journal, sim-board state and control socket in the test's temporary directory. Tests drive the
simulated EV and card reader through the control socket, like `evse sim ...` does. The process harness
itself is hil/agent_process.py (shared with the chaos run and the benchmarks); this module holds the
end-to-end tests' settings and helpers.
"""

from __future__ import annotations

from pathlib import Path

from hil.agent_process import REPO, AgentProcess, is_registered, write_agent_config  # noqa: F401 (REPO: for tests)
from hil.csms import LocalCsms

STATION_ID = "CP-T1"
TAG_OK = "0411223344"  # card UIDs as the reader reports them: uppercase hex
TAG_2 = "0455667788"
TAG_BLOCKED = "04DEADBEEF"
TAG_UNKNOWN = "04FFFFFFFF"

def write_config(workdir: Path, csms_url: str, *, station_id: str = STATION_ID, connectors: int = 1,
                 ocpp_keys: dict | None = None, reboot_command: list[str] | None = None,
                 extra: str = "") -> Path:
    """The agent config of the end-to-end tests: fast sampling and retries, `extra` lines in [charging]."""
    keys = {"MeterValueSampleInterval": 1, "HeartbeatInterval": 60, "TransactionMessageRetryInterval": 1,
            "ConnectionTimeOut": 30, **(ocpp_keys or {})}
    return write_agent_config(workdir, csms_url, station_id=station_id, connectors=connectors, ocpp_keys=keys,
                              reboot_command=reboot_command, charging={"max_current_a": 16, "meter_poll_s": 0.2},
                              extra_charging_lines=extra)


# One agent process in the test's directory (control socket, log, journal there): hil.agent_process's harness.
Agent = AgentProcess


async def start_agent(tmp_path: Path, csms: LocalCsms, **config_args) -> Agent:
    config = write_config(tmp_path, csms.url, **config_args)
    agent = Agent(tmp_path, config)
    agent.start()
    await agent.ready()
    return agent


async def registered(agent: Agent, timeout: float = 10.0) -> dict:
    """Wait until the agent is connected and its BootNotification is Accepted. Before that a card is
    decided offline (an unknown one is refused) and the CSMS's commands are not all served yet."""
    return await agent.wait_status(is_registered, timeout=timeout, what="registration")


async def online(run_agent, csms: LocalCsms, connectors: int = 1, **config_args) -> Agent:
    """Start an agent and wait until it is registered, connected and has reported the boot status of
    connector 0 and of every connector, so that frames counted afterwards belong to the test alone."""
    agent = await run_agent(csms, connectors=connectors, **config_args)
    await registered(agent)
    for connector in range(connectors + 1):
        await wait_call(csms, "StatusNotification", where=lambda p, c=connector: p["connectorId"] == c)
    return agent


async def charge(agent: Agent, csms: LocalCsms, tag: str, connector: int = 1) -> dict:
    """Plug in, present a card, wait until the contactor is closed. Returns the connector status."""
    return await agent.charge(tag, connector)


CALL = 2  # OCPP-J MessageTypeId of a CALL


def is_station_call(frame, action: str, where=None) -> bool:
    """True for a CALL of `action` sent by the station, whose payload satisfies `where` (if given)."""
    return (frame.direction == "in" and frame.message_type == CALL and frame.action == action
            and (where is None or where(frame.payload)))


async def wait_call(csms: LocalCsms, action: str, since: int = 0, where=None, timeout: float = 10.0):
    """The first CALL of `action` from the station at frame index >= `since` (optionally with a payload
    for which `where(payload)` is true). Pass `since=len(csms.frames)` taken before the trigger."""
    return await csms.wait_frame(lambda f: is_station_call(f, action, where), timeout=timeout, since=since)


def calls_since(csms: LocalCsms, action: str, since: int = 0, where=None) -> list:
    """Every CALL of `action` from the station at frame index >= `since`, in order."""
    return [f for f in csms.frames[since:] if is_station_call(f, action, where)]


async def plugged(agent: Agent) -> None:
    """Plug the simulated EV in and wait until the connector reports Preparing."""
    await agent.cmd("sim.plug")
    await agent.wait_connector(lambda c: c["status"] == "Preparing", what="Preparing")


async def charging(agent: Agent) -> dict:
    """Wait until the connector charges in a transaction the CSMS has numbered."""
    return await agent.wait_connector(lambda c: c["contactor_closed"] and c["status"] == "Charging"
                                      and c["transaction_id"] is not None, timeout=15, what="Charging")
