"""Many stations in one process and one event loop: simulations, load tests of a CSMS, a fleet bench.

Each station is a full `Station` (journal, OCPP client, security, firmware, reservations, smart charging)
on its own board, with its control loop in this event loop (agent.control.link.InProcessLink) instead of
a control process. Nothing is shared between them: each logs through its own agent.logs.StationLogs
(every line starts with `[<station id>] ` and carries `station_id`; its secrets are its own), reads the
clocks the fleet was given, and keeps its files (journal, security log, certificates, the simulated EV's
state) in its own directories.

A Reset (or the restart after a firmware install) ends `evse run` with os.execv; here it rebuilds only
that station: the old Station has finished its orderly stop (transactions stopped, journal flushed,
contactors open, board closed), then a new Station is built on the same config, journal and board state
directory and connects anew (BootNotification). The other stations are not touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agent import logs
from agent.config import AgentConfig, load_config
from agent.core.clock import utc_now
from agent.ocpp.v16.client import OcppClient
from agent.station.journal import Journal
from agent.station.station import RestartRequested, Station, StationCrashed
from hal.board import load_board

log = logging.getLogger("evse.fleet")


@dataclass
class FleetStation:
    """One place in the fleet: its config and logs stay, its Station object is rebuilt at each reset."""

    config: AgentConfig
    logs: logs.StationLogs
    station: Station | None = None
    builds: int = 0  # Station objects built so far: 1 + resets carried out
    restarts: list[str] = field(default_factory=list)  # the kinds of reset carried out, in order
    error: str | None = None  # why the station ended for good (StationCrashed, a board that did not start)
    built: asyncio.Event = field(default_factory=asyncio.Event)  # set at every build; cleared by waiters

    @property
    def id(self) -> str:
        return self.config.station.id

    @property
    def state_dir(self) -> Path:
        """Where its simulated board keeps the EV's and the meter's state (as `evse run` does)."""
        return self.config.control.socket.parent


class Fleet:
    """N stations, each from its own AgentConfig, run together until stop().

    `clock` (monotonic seconds) and `wall_clock` (aware UTC datetime) are handed to every station and board,
    so a simulation can run the whole fleet on its own time."""

    def __init__(self, configs: Iterable[AgentConfig], *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], datetime] = utc_now):
        self.clock = clock
        self.wall_clock = wall_clock
        self.members: dict[str, FleetStation] = {}
        for config in configs:
            if config.station.id in self.members:
                raise ValueError(f"two stations with the id {config.station.id!r}")
            self.members[config.station.id] = FleetStation(config, logs.StationLogs(config.station.id,
                                                                                      tag_lines=True))
        self._tasks: dict[str, asyncio.Task] = {}

    @classmethod
    def from_files(cls, paths: Iterable[Path], **clocks) -> Fleet:
        return cls([load_config(Path(path)) for path in paths], **clocks)

    def station(self, station_id: str) -> Station:
        """The station's current Station object (a new one after each reset)."""
        station = self.members[station_id].station
        if station is None:
            raise LookupError(f"station {station_id} is not built (yet)")
        return station

    def start(self) -> None:
        """Build and run every station, each in its own task."""
        for member in self.members.values():
            if member.id not in self._tasks:
                self._tasks[member.id] = asyncio.create_task(self._run(member), name=f"station-{member.id}")

    async def run(self) -> None:
        """Start (if not yet) and wait until every station has ended (stop(), or each one crashed)."""
        self.start()
        await asyncio.gather(*self._tasks.values())

    async def stop(self, stop_transactions: bool | None = None) -> None:
        """The orderly stop of every station (as SIGTERM for `evse run`), then wait for them to end."""
        await asyncio.gather(*(m.station.shutdown(stop_transactions) for m in self.members.values()
                               if m.station is not None and not self._tasks[m.id].done()))
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, member: FleetStation) -> None:
        """One station's life: built, run; rebuilt after each reset; ends at shutdown or when it crashes."""
        fleet_log = member.logs.logger(log.name)
        while True:
            config = member.config
            config.journal.path.parent.mkdir(parents=True, exist_ok=True)
            journal = Journal(config.journal.path)
            try:
                board = load_board(config.board.file, state_dir=member.state_dir, clock=self.clock)
                member.station = Station(config, board, journal, csms=OcppClient, clock=self.clock,
                                         wall_clock=self.wall_clock, station_logs=member.logs)
                member.builds += 1
                member.built.set()
                await member.station.run()
                return  # shutdown()
            except RestartRequested as restart:
                if member.station is not None and member.station.closing:  # stop() arrived during the reset: the station stays stopped
                    return
                if restart.reboot_command:  # a board's reboot command would take the whole fleet down
                    fleet_log.warning("%s reset: %s not run inside a fleet", restart.kind,
                                      " ".join(restart.reboot_command))
                fleet_log.warning("%s reset: the station is rebuilt", restart.kind)
                member.restarts.append(restart.kind)
            except StationCrashed as exc:
                member.error = str(exc)
                fleet_log.critical("%s; every contactor was opened; the other stations go on", exc)
                return
            except Exception as exc:  # a board that does not start, a journal that cannot be opened
                member.error = repr(exc)
                fleet_log.critical("station ended: %r; the other stations go on", exc, exc_info=exc)
                return
            finally:
                journal.close()


def write_sim_fleet(directory: Path, count: int, csms_url: str, *, prefix: str = "SIM",
                    ocpp_keys: dict | None = None) -> list[Path]:
    """`count` agent configs on fast simulated boards, one directory per station under `directory`
    (`<prefix>-0001`, ...): what `evse fleet` runs."""
    from hil.agent_process import write_agent_config  # the station files of the tests, the bench and the demo

    paths = []
    for number in range(1, count + 1):
        station_id = f"{prefix}-{number:04d}"
        workdir = directory / station_id
        workdir.mkdir(parents=True, exist_ok=True)
        paths.append(write_agent_config(workdir, csms_url, station_id=station_id,
                                        ocpp_keys={"MeterValueSampleInterval": 60, **(ocpp_keys or {})}))
    return paths


async def run_sim_fleet(directory: Path, count: int, csms_url: str, *, prefix: str = "SIM") -> None:
    """`evse fleet`: write the configs (write_sim_fleet) and run the fleet until SIGTERM/SIGINT."""
    import signal

    fleet = Fleet.from_files(write_sim_fleet(directory, count, csms_url, prefix=prefix))
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stopping.append(asyncio.ensure_future(fleet.stop())))
    log.info("fleet of %d simulated stations (%s-0001...) on %s, files in %s", count, prefix, csms_url, directory)
    try:
        await fleet.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await asyncio.gather(*stopping, return_exceptions=True)
