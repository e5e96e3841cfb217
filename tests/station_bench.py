"""A real Station on the simulated board, stepped by the test itself: the shell's own behaviour (faults,
re-entrant events, reservations, charging limits) without an agent process. Its CSMS URL leads nowhere:
the OCPP client is built but never connected."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from agent.config import load_config
from agent.core.controller import AuthorizationResult, TokenPresented
from agent.station.journal import Journal
from agent.station.station import ConnectorRuntime, Station
from hal.board import load_board
from hal.interfaces import Board
from tests.agent_harness import TAG_OK, write_config


async def sim_station(tmp_path, *, connectors: int = 1, clock: Callable[[], float] | None = None,
                      prepare: Callable[[Board], None] = lambda board: None) -> tuple[Station, Board]:
    """A started sim board and a Station on it; `prepare(board)` runs before the Station is built."""
    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp", connectors=connectors))
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    prepare(board)
    clock_args = {} if clock is None else {"clock": clock}
    station = Station(config, board, Journal(config.journal.path), **clock_args)
    await station.start_control()
    for rt in station.connectors.values():  # journal writes (TransactionRecorded), as Station.run() has them
        station._tasks.append(asyncio.create_task(station._transaction_worker(rt)))
    return station, board


async def steps(station: Station, count: int = 30) -> None:
    """`count` control steps, 10 ms apart."""
    for _ in range(count):
        station.control_step()
        await asyncio.sleep(0.01)


def authorize(station: Station, rt: ConnectorRuntime, tag: str = TAG_OK) -> None:
    """A card presented and accepted, as the reader and the CSMS would answer."""
    station._dispatch(rt, TokenPresented(tag))
    station._dispatch(rt, AuthorizationResult(tag, True))
