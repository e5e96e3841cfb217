"""The station's tasks. The essential ones (the control channel, the journal workers, meter sampling, the CSMS
adapter, ...) run as long as the station does: one that ends has crashed. Side tasks (an authorization, a reset,
a firmware operation) come and go; all are cancelled together when the station stops."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class StationTasks:
    def __init__(self) -> None:
        self._essential: list[asyncio.Task] = []
        self._side: set[asyncio.Task] = set()

    @property
    def essential(self) -> list[asyncio.Task]:
        return list(self._essential)

    def start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """An essential task: the station stops if it ends."""
        self._essential.append(asyncio.create_task(coro, name=name))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task:
        """A side task, cancelled at shutdown."""
        task = asyncio.create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)
        return task

    async def wait(self, shutdown: asyncio.Event) -> asyncio.Task | None:
        """Until `shutdown` is set (None) or an essential task ends (that task, which crashed)."""
        stop = asyncio.create_task(shutdown.wait(), name="shutdown")
        try:
            # these tasks run forever; one that ends has crashed, and a station without its control loop
            # or journal worker must not go on pretending: stop (contactors open) and let systemd restart
            done, _ = await asyncio.wait([stop, *self._essential], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        crashed = [task for task in done if task is not stop]
        return crashed[0] if crashed else None

    async def cancel(self) -> None:
        for task in [*self._essential, *self._side]:
            task.cancel()
        await asyncio.gather(*self._essential, *self._side, return_exceptions=True)
        self._essential.clear()
