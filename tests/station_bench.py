"""A real Station on the simulated board, stepped by the test itself: the shell's own behaviour (faults,
re-entrant events, reservations, charging limits) without an agent process. Its CSMS URL leads nowhere:
the OCPP client is built but never connected. RecordingCsmsLink stands on the other side of the station's
CsmsLink seam instead when a test needs to see what the station tells its CSMS adapter, or to put it online."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any

from agent.config import load_config
from agent.core.authorization import TokenInfo
from agent.core.controller import AuthorizationResult, TokenPresented
from agent.ocpp.v16 import transactions as v16_transactions
from agent.ocpp.v16.client import OcppClient
from agent.ocpp.v16.settings import V16Settings
from agent.station.csms_link import CsmsLinkFactory, CsmsPort
from agent.station.journal import Delivery, Journal, QueuedMessage
from agent.station.station import ConnectorRuntime, Station
from hal.board import load_board
from hal.interfaces import Board
from tests.agent_harness import TAG_OK, write_config


class RecordingCsmsLink:
    """A CsmsLink (agent.station.csms_link) that records what the station tells its CSMS adapter; `online`
    and `answers` (id -> TokenInfo) play the CSMS for the station's questions."""

    open_settings = V16Settings.open  # the real 1.6 settings provider

    def __init__(self, config, port: CsmsPort, journal: Journal, *, logs=None, clock=None):
        self.port = port
        self.connected, self.registration, self.last_error, self.dropped_messages = False, None, None, 0
        self.online = False
        self.answers: dict[str, TokenInfo] = {}
        self.statuses: list[tuple] = []
        self.meter_values: list[tuple[int, list[dict]]] = []
        self.follow_ups: list[Any] = []
        self.wakeups = 0

    @property
    def accepted(self) -> bool:
        return self.online

    def send_status(self, connector_id, status, fault=None, info=None, *, control_lost=False):
        self.statuses.append((connector_id, status, fault, info, control_lost))

    def send_meter_values(self, connector_id: int, meter_value: list[dict]) -> None:
        self.meter_values.append((connector_id, meter_value))

    def journal_changed(self) -> None:
        self.wakeups += 1

    async def authorize(self, id_token: str) -> TokenInfo | None:
        return self.answers.get(id_token) if self.online else None

    def queue_follow_up(self, payload, done=None, *, triggered=False) -> None:
        self.follow_ups.append(payload)

    def apply_config(self, config) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        pass


async def sim_station(tmp_path, *, connectors: int = 1, clock: Callable[[], float] | None = None,
                      wall_clock: Callable[[], datetime] | None = None, csms: CsmsLinkFactory = OcppClient,
                      prepare: Callable[[Board], None] = lambda board: None) -> tuple[Station, Board]:
    """A started sim board and a Station on it; `prepare(board)` runs before the Station is built."""
    config = load_config(write_config(tmp_path, "ws://127.0.0.1:9/ocpp", connectors=connectors))
    config.journal.path.parent.mkdir(parents=True, exist_ok=True)
    board = load_board(config.board.file, state_dir=tmp_path)
    prepare(board)
    clock_args: dict[str, Any] = {} if clock is None else {"clock": clock}
    if wall_clock is not None:
        clock_args["wall_clock"] = wall_clock
    station = Station(config, board, Journal(config.journal.path), csms=csms, **clock_args)
    await station.start_control()
    for rt in station.connectors.values():  # journal writes (TransactionRecorded), as Station.run() has them
        station.tasks.start(station.recorder.worker(rt), f"tx-{rt.id}")
    return station, board


async def steps(station: Station, count: int = 30) -> None:
    """`count` control steps, 10 ms apart."""
    for _ in range(count):
        station.control_step()
        await asyncio.sleep(0.01)


async def charging_station(tmp_path) -> tuple[Station, Board, ConnectorRuntime]:
    """A sim station whose connector 1 is plugged in and authorized, its contactor closed."""
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    board.simulator.plug(1)
    await steps(station, 5)
    authorize(station, rt)
    await steps(station)
    return station, board, rt


def authorize(station: Station, rt: ConnectorRuntime, tag: str = TAG_OK) -> None:
    """A card presented and accepted, as the reader and the CSMS would answer."""
    station.channel.dispatch(rt, TokenPresented(tag))
    station.channel.dispatch(rt, AuthorizationResult(tag, True))


def as_sent(message: QueuedMessage) -> tuple[str, dict]:
    """(action, payload) of a queued journal message as the OCPP 1.6 adapter sends it."""
    return v16_transactions.render(message)


def answered(message: QueuedMessage, response: dict) -> Delivery:
    """The CSMS's 1.6 answer `response` to `message`, read by the adapter as the journal and station take it."""
    action, payload = v16_transactions.render(message)
    return v16_transactions.read_answer(action, payload, response)
