"""`evse run`: assemble the agent from its config and run it until SIGTERM or a reset.

Signals: SIGTERM/SIGINT stop the agent (Station.shutdown: no new sessions, journal writes finished,
transactions stopped only with [charging] stop_on_shutdown; every contactor opens as the board closes)
and it exits 0. SIGHUP reloads the config file (reload_config): what can change while running takes
effect at once, the rest is named in a log line and waits for a restart; a file that does not load is
logged and the running configuration kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import subprocess
from pathlib import Path

from agent import logs
from agent.cli.control_socket import CommandError, ControlServer
from agent.config import AgentConfig, ConfigError, load_config
from agent.control.channel import RequestFailed
from agent.control.link import ControlLost, ProcessLink
from agent.ocpp.rpc import validate_inline
from agent.ocpp.v16.client import OcppClient
from agent.service import ServiceNotifier, watchdog_interval_s
from agent.station.journal import Journal
from agent.station.station import RestartRequested, Station
from hal.board import load_board
from hal.interfaces import HardwareError

log = logging.getLogger("evse.agent")


async def _sim(station: Station, method: str, **params):
    """A simulator command, carried out where the simulated board lives: in the control loop."""
    if not station.info.simulated:
        raise CommandError("this board is not simulated: sim commands only work with a sim board")
    return await _through_control(station.link.request("sim", method=method, params=params))


async def _through_control(request):
    """A request the control loop answers; what it could not do is the CLI's error line."""
    try:
        return await request
    except (RequestFailed, ControlLost) as exc:
        raise CommandError(str(exc)) from exc


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
                return _faults(station.hardware.reset_faults(_connector(station, args)))
            case "availability":
                operative = args.get("operative")
                if not isinstance(operative, bool):
                    raise CommandError('"operative" must be true or false')
                connector = 0 if args.get("connector") == 0 else _connector(station, args)
                return {"status": station.change_availability(connector, operative)}
            case "swipe":
                return {"connector": station.present_id_token(str(args.get("tag", "")))}
            case "hw.meter":  # technician's checks (`evse hw ...`): each answers a report dict
                return station.hardware.hw_meter(_connector(station, args))
            case "hw.pilot":
                return station.hardware.hw_pilot(_connector(station, args))
            case "hw.contactor_test":
                return station.hardware.hw_contactor_test(_connector(station, args))
            case "hw.rcd_test":
                return station.hardware.hw_rcd_test(_connector(station, args))
            case "sim.plug":
                return _done(cmd, _sim(station, "plug", connector=_connector(station, args)))
            case "sim.unplug":
                return _done(cmd, _sim(station, "unplug", connector=_connector(station, args)))
            case "sim.ev_state":
                return _done(cmd, _sim(station, "set_ev_state", state=args.get("state"),
                                       connector=_connector(station, args), after_s=args.get("after_s")))
            case "sim.ev_script":  # [[seconds from now, state], ...]: the EV changes state by itself
                return _sim(station, "schedule_ev_states", steps=args.get("steps"),
                            connector=_connector(station, args))
            case "sim.marks":  # the EV's and the contactor's timed changes since the last call (bench)
                return _sim(station, "timing_marks", connector=_connector(station, args))
            case "sim.swipe":
                return _done(cmd, _sim(station, "swipe", tag=str(args.get("tag", ""))))
            case "sim.fault":
                return _done(cmd, _sim(station, "set_fault", kind=str(args.get("kind")), on=bool(args.get("on")),
                                       connector=_connector(station, args)))
            case "sim.snapshot":
                return _sim(station, "snapshot")
            case "sim.stall":  # a stuck device read, for the watchdog test (hal.sim SimBoard.stall_pilot)
                return _done(cmd, _sim(station, "stall_pilot", seconds=args.get("seconds"),
                                       connector=_connector(station, args)))
            case _:
                raise CommandError(f"unknown command {cmd!r}")
        return {"done": cmd}

    return handle


async def _faults(request) -> dict:
    return {"faults": await _through_control(request)}


async def _done(cmd: str, request) -> dict:
    await request
    return {"done": cmd}


# Settings a SIGHUP applies while running; every other difference waits for a restart.
LIVE_SETTINGS = ("log.level", "charging.", "ocpp.reconnect_min_s", "ocpp.reconnect_max_s")


def _differences(old, new, prefix: str = "") -> list[str]:
    names = []
    for item in dataclasses.fields(old):
        a, b = getattr(old, item.name), getattr(new, item.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
            names += _differences(a, b, f"{prefix}{item.name}.")
        elif a != b:
            names.append(prefix + item.name)
    return names


def reload_config(current: AgentConfig, path: Path) -> tuple[AgentConfig, list[str]]:
    """The config to run with after SIGHUP: `current` with the file's live settings (LIVE_SETTINGS), and
    the names of the changed settings that need a restart. Raises ConfigError for a file that does not load.
    [ocpp.configuration] values count as needing a restart: they are initial values, and once the CSMS
    has set a key, its value wins anyway."""
    new = load_config(path)
    effective = dataclasses.replace(
        current, charging=new.charging, log=new.log,
        ocpp=dataclasses.replace(current.ocpp, reconnect_min_s=new.ocpp.reconnect_min_s,
                                 reconnect_max_s=new.ocpp.reconnect_max_s),
    )
    pending = [name for name in _differences(current, new)
               if not any(name == live or (live.endswith(".") and name.startswith(live)) for live in LIVE_SETTINGS)]
    return effective, pending


def _reload(station: Station, notifier: ServiceNotifier, log_level_override: str | None) -> None:
    notifier.reloading()
    try:
        _apply_reload(station, log_level_override)
    finally:
        notifier.reloaded()


def _apply_reload(station: Station, log_level_override: str | None) -> None:
    try:
        config, pending = reload_config(station.config, station.config.path)
    except ConfigError as exc:
        log.error("SIGHUP: the config file does not load, the running configuration stays: %s", exc)
        return
    changed = _differences(station.config, config)
    station.apply_config(config)
    if log_level_override is None:
        logging.getLogger().setLevel(config.log.level.upper())
    log.info("SIGHUP: configuration reloaded from %s (%s); log level %s, max current %g A, meter poll %g s",
             config.path, ", ".join(changed) + " changed" if changed else "nothing changed",
             log_level_override or config.log.level, config.charging.max_current_a, config.charging.meter_poll_s)
    if pending:
        log.warning("SIGHUP: %s changed in %s but take(s) effect only at the next restart "
                    "(systemctl restart evse-agent)", ", ".join(pending), config.path)


async def run_agent(config: AgentConfig, log_level_override: str | None = None) -> RestartRequested | None:
    """Run until SIGTERM/SIGINT (returns None) or a reset (returns what to do next). `log_level_override`
    (`evse run --log-level`) wins over [log] level, also on SIGHUP."""
    validate_inline()  # no thread pool on a small board
    logs.add_basic_auth_secret(config.station.id, config.ocpp.password)  # before anything could log it
    # the simulated EV and meter outlive the agent process, like real ones: their state sits in the
    # runtime directory (tmpfs on a station), next to the control socket, not on the flash
    load_board(config.board.file, dry_run=True)  # a bad board file: one line and exit 2, before anything runs
    journal = Journal(config.journal.path)
    # the safety path in its own process: devices, controllers, control loop (agent.control.process)
    link = ProcessLink(config.board.file, state_dir=config.control.socket.parent,
                       log_level=log_level_override or config.log.level, watchdog_s=watchdog_interval_s())
    try:
        await link.start()
    except ControlLost as exc:
        journal.close()
        raise HardwareError(str(exc)) from exc
    # the station owns this process: its secrets (the AuthorizationKey in force, later ones) also go to the
    # process-wide filter, for what libraries log outside the station's loggers
    station = Station(config, link, journal, csms=OcppClient,
                      station_logs=logs.StationLogs(config.station.id, process_redactor=logs.REDACTOR))
    notifier = ServiceNotifier(station, ping_watchdog=False)  # the control process pings, once READY is out
    notifier.on_ready = link.arm_watchdog
    station.channel.after_control_step = notifier.control_step_done  # READY, WATCHDOG, STATUS: agent.service
    control = ControlServer(config.control.socket, command_handler(station), group=config.control.group)
    await control.start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, station, notifier, sig)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(station, notifier, log_level_override))
    log.info("station %s up: %d connector(s), board %s, journal %s, control process %s", config.station.id,
             len(station.info.connectors), station.info.name, config.journal.path, link.pid)
    restart: RestartRequested | None = None
    try:
        await station.run()
    except RestartRequested as requested:
        restart = requested
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await control.close()
        journal.close()
    if restart is not None and station.closing:  # SIGTERM during a reset: systemd wants it stopped
        log.warning("%s reset not carried out: SIGTERM arrived meanwhile; the agent exits", restart.kind)
        return None
    return restart


def _on_signal(station: Station, notifier: ServiceNotifier, sig: signal.Signals) -> None:
    log.info("%s: shutting down", signal.Signals(sig).name)
    notifier.stopping(signal.Signals(sig).name)
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
