"""`evse run`: assemble the agent from its config and run it until SIGTERM or a reset."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess

import ocpp.messages

from agent.config import AgentConfig
from agent.control import CommandError, ControlServer
from agent.journal import Journal
from agent.station import RestartRequested, Station
from hal.board import load_board

log = logging.getLogger("evse.agent")


def _sim(station: Station):
    simulator = station.board.simulator
    if simulator is None:
        raise CommandError("this board is not simulated: sim commands only work with a sim board")
    return simulator


def _connector(station: Station, args: dict) -> int:
    connector = args.get("connector", 1)
    if not isinstance(connector, int) or connector not in station.connectors:
        raise CommandError(f"no connector {connector!r}; this station has {sorted(station.connectors)}")
    return connector


def command_handler(station: Station):
    """Map control-socket commands onto the station and the simulator."""

    def handle(cmd: str, args: dict):
        match cmd:
            case "status":
                return station.status()
            case "stop":
                return {"stopped": station.stop_transaction(_connector(station, args))}
            case "fault.reset":
                return {"faults": station.reset_faults(_connector(station, args))}
            case "availability":
                operative = args.get("operative")
                if not isinstance(operative, bool):
                    raise CommandError('"operative" must be true or false')
                connector = 0 if args.get("connector") == 0 else _connector(station, args)
                return {"status": station.change_availability(connector, operative)}
            case "swipe":
                return {"connector": station.present_id_tag(str(args.get("tag", "")))}
            case "hw.meter":  # technician's checks (`evse hw ...`): each answers a report dict
                return station.hw_meter(_connector(station, args))
            case "hw.pilot":
                return station.hw_pilot(_connector(station, args))
            case "hw.contactor_test":
                return station.hw_contactor_test(_connector(station, args))
            case "hw.rcd_test":
                return station.hw_rcd_test(_connector(station, args))
            case "sim.plug":
                _sim(station).plug(_connector(station, args))
            case "sim.unplug":
                _sim(station).unplug(_connector(station, args))
            case "sim.ev_state":
                _sim(station).set_ev_state(args.get("state"), _connector(station, args))
            case "sim.swipe":
                _sim(station).swipe(str(args.get("tag", "")))
            case "sim.fault":
                _sim(station).set_fault(str(args.get("kind")), bool(args.get("on")), _connector(station, args))
            case "sim.snapshot":
                return _sim(station).snapshot()
            case _:
                raise CommandError(f"unknown command {cmd!r}")
        return {"done": cmd}

    return handle


async def run_agent(config: AgentConfig) -> RestartRequested | None:
    """Run until SIGTERM/SIGINT (returns None) or a reset (returns what to do next)."""
    ocpp.messages.ASYNC_VALIDATION = False  # validate inline: no thread pool on a small board
    # the simulated EV and meter outlive the agent process, like real ones: their state sits in the
    # runtime directory (tmpfs on a station), next to the control socket, not on the flash
    board = load_board(config.board.file, state_dir=config.control.socket.parent)
    journal = Journal(config.journal.path)
    station = Station(config, board, journal)
    control = ControlServer(config.control.socket, command_handler(station))
    await control.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: _on_signal(station, s))
    log.info("station %s up: %d connector(s), board %s, journal %s", config.station.id,
             len(board.connectors), board.name, config.journal.path)
    try:
        await station.run()
        return None
    except RestartRequested as restart:
        return restart
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await control.close()
        journal.close()


def _on_signal(station: Station, sig: signal.Signals) -> None:
    log.info("%s: shutting down", signal.Signals(sig).name)
    asyncio.ensure_future(station.shutdown())


def run_reboot_command(restart: RestartRequested) -> None:
    """Hard reset on a board that can reboot itself. The caller re-executes the agent afterwards in
    any case: if the board does reboot, that process simply ends with it."""
    if not restart.reboot_command:
        return
    log.warning("hard reset: running %s", " ".join(restart.reboot_command))
    try:
        subprocess.run(restart.reboot_command, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("reboot command failed (%s); restarting the agent in place instead", exc)
