import os

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


# ---- tests that CI must not skip --------------------------------------------------------------------------
# A test that needs a peer which .ci/run installs (a third-party CSMS, node, redis-server, systemd-analyze)
# skips with the reason on a developer's machine without it. On CI (CI=true, which .ci/run sets) such a skip
# is a failure: otherwise an install that broke would let interop silently vanish from a green build.


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "ci_required: needs a peer that .ci/run installs; on CI (CI=true) a skip is a failure")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name.startswith("test_interop_"):  # every interop test, including ones added later
            item.add_marker(pytest.mark.ci_required)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.skipped and on_ci() and item.get_closest_marker("ci_required") and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"SKIPPED on CI, where .ci/run installs every peer this test needs: {reason}"
    return report
