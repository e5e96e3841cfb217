"""The station's tasks (agent.station.tasks): an essential task that ends is reported as the one that crashed,
a shutdown is not, and stopping cancels the essential tasks and the side tasks still running."""

from __future__ import annotations

import asyncio

from agent.station.tasks import StationTasks


async def _forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.Event().wait()


async def _fail() -> None:
    raise RuntimeError("journal worker broke")


async def test_an_essential_task_that_ends_is_the_one_that_crashed():
    tasks = StationTasks()
    tasks.start(_forever(), "control")
    tasks.start(_fail(), "tx-1")
    crashed = await tasks.wait(asyncio.Event())
    assert crashed is not None and crashed.get_name() == "tx-1"
    assert isinstance(crashed.exception(), RuntimeError)
    await tasks.cancel()


async def test_a_shutdown_is_no_crash_and_stopping_cancels_every_task():
    tasks = StationTasks()
    shutdown = asyncio.Event()
    side_started = asyncio.Event()
    tasks.start(_forever(), "control")
    side = tasks.spawn(_forever(side_started))
    await side_started.wait()
    shutdown.set()
    assert await tasks.wait(shutdown) is None
    await tasks.cancel()
    assert side.cancelled()


async def test_a_finished_side_task_is_forgotten_and_never_counts_as_a_crash():
    tasks = StationTasks()
    shutdown = asyncio.Event()
    done = tasks.spawn(asyncio.sleep(0))
    await done
    tasks.start(_forever(), "control")
    shutdown.set()
    assert await tasks.wait(shutdown) is None
    await tasks.cancel()
