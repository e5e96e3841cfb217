import pytest

from hil.csms import LocalCsms
from tests.agent_harness import TAG_2, TAG_BLOCKED, TAG_OK, Agent, start_agent

TAGS = {TAG_OK: "Accepted", TAG_2: "Accepted", TAG_BLOCKED: "Blocked"}


@pytest.fixture
def csms_events() -> list[str]:
    """The bundled CSMS's human-readable log: one line per frame and per connect / disconnect, so a
    test can tell whether the connection was ever dropped."""
    return []


@pytest.fixture
async def csms(tmp_path, csms_events):
    server = LocalCsms(authorized_tags=TAGS, boot_interval=60, record_path=tmp_path / "csms.jsonl",
                       echo=csms_events.append)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def run_agent(tmp_path):
    """Factory: `agent = await run_agent(csms, **config_args)`; every agent is stopped afterwards."""
    agents: list[Agent] = []

    async def factory(server: LocalCsms, **config_args) -> Agent:
        agent = await start_agent(tmp_path, server, **config_args)
        agents.append(agent)
        return agent

    yield factory
    for agent in agents:
        agent.cleanup()
