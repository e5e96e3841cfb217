"""`evse`: run the agent, and the technician's commands that talk to a running agent."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import cast

from agent.cli.control_socket import ControlClientError, request
from agent.config import ConfigError, dump_example_config, load_config
from hal.sim.connector import FAULT_KINDS as SIM_FAULT_KINDS

EXIT_USAGE = 2
DEFAULT_SOCKET = Path("/run/evse-agent/control.sock")


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if args.config:
        return load_config(Path(args.config)).control.socket
    return DEFAULT_SOCKET


def _add_target(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--socket", help=f"agent control socket (default {DEFAULT_SOCKET})")
    group.add_argument("--config", help="agent config file; its [control] socket is used")


def _add_connector(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connector", type=int, default=1, help="connector id (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evse", description="evse-agent: EV charge controller and its tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground until SIGTERM")
    run.add_argument("--config", required=True, help="agent config file (TOML)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help="override [log] level")

    fleet = sub.add_parser("fleet", help="run N simulated stations in this one process against a CSMS "
                                         "(load tests, simulations; a reset rebuilds only that station)")
    fleet.add_argument("--count", type=int, required=True, help="how many stations")
    fleet.add_argument("--csms", required=True, help="the CSMS's OCPP URL, e.g. ws://127.0.0.1:9000/ocpp")
    fleet.add_argument("--dir", default="evse-fleet", help="their configs, journals and board state "
                                                           "(default ./evse-fleet; kept between runs)")
    fleet.add_argument("--prefix", default="SIM", help="station ids <prefix>-0001... (default SIM)")
    fleet.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info")

    status = sub.add_parser("status", help="station, OCPP, journal and connector status")
    status.add_argument("--json", action="store_true", help="one JSON object")
    _add_target(status)

    stop = sub.add_parser("stop", help="stop the transaction on a connector (reason Local)")
    _add_connector(stop)
    _add_target(stop)

    availability = sub.add_parser("availability", help="make a connector (0 = station) operative or inoperative")
    availability.add_argument("state", choices=["operative", "inoperative"])
    _add_connector(availability)
    _add_target(availability)

    fault = sub.add_parser("fault", help="fault handling")
    fault_sub = fault.add_subparsers(dest="fault_command", required=True)
    reset = fault_sub.add_parser("reset", help="clear latched faults (welded contactor...) once their cause is gone")
    _add_connector(reset)
    _add_target(reset)

    swipe = sub.add_parser("swipe", help="present an id tag as if read by the station's reader")
    swipe.add_argument("tag")
    _add_target(swipe)

    sim = sub.add_parser("sim", help="drive the simulated board (sim boards only)")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True)
    plug = sim_sub.add_parser("plug", help="plug an EV in (state B; it moves to C when it sees PWM)")
    _add_connector(plug)
    _add_target(plug)
    unplug = sim_sub.add_parser("unplug", help="unplug the EV (state A)")
    _add_connector(unplug)
    _add_target(unplug)
    ev_state = sim_sub.add_parser("ev-state", help="pin the EV to a pilot state, or 'auto' to let it follow")
    ev_state.add_argument("state", choices=["A", "B", "C", "D", "E", "F", "auto"])
    _add_connector(ev_state)
    _add_target(ev_state)
    sim_swipe = sim_sub.add_parser("swipe", help="present a card to the simulated RFID reader")
    sim_swipe.add_argument("tag")
    _add_target(sim_swipe)
    sim_status = sim_sub.add_parser("status", help="the simulated board's state: EV, contactor, lock, LEDs, meter")
    sim_status.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    _add_target(sim_status)
    sim_fault = sim_sub.add_parser("fault", help="inject or clear a hardware fault (lock: the actuator jams)")
    sim_fault.add_argument("kind", choices=list(SIM_FAULT_KINDS))
    sim_fault.add_argument("onoff", choices=["on", "off"])
    _add_connector(sim_fault)
    _add_target(sim_fault)

    hw = sub.add_parser("hw", help="technician's hardware checks: meter, pilot, rfid, contactor test, rcd test "
                                   "(directly, or through the agent when it runs)")
    from agent.cli.hw import add_parsers as add_hw_parsers
    add_hw_parsers(hw)

    demo = sub.add_parser("demo", help="run the bundled CSMS and the agent on the sim board and play a session")
    demo.add_argument("--seconds", type=float, default=10.0, help="how long the EV charges (default 10)")

    csms = sub.add_parser("csms", help="run the bundled local CSMS (see python -m hil.csms --help)")
    csms.add_argument("csms_args", nargs=argparse.REMAINDER)

    install = sub.add_parser("install-service", help="install the systemd unit, a config skeleton and a board "
                                                      "file, and the service's users and groups (docs/install.md)")
    from agent.cli.install import add_arguments as add_install_arguments
    add_install_arguments(install)

    config = sub.add_parser("config", help="check a config file, or print an example")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config file and its board file")
    check.add_argument("--config", required=True)
    config_sub.add_parser("example", help="print a commented example config")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["csms"]:  # the bundled CSMS has its own options: hand them over untouched
        from hil.csms import main as csms_main

        return csms_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"evse: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ControlClientError as exc:
        print(f"evse: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    match args.command:
        case "run":
            return _run(args)
        case "fleet":
            return _fleet(args)
        case "status":
            return _status(args)
        case "stop":
            result = request(_socket_path(args), "stop", {"connector": args.connector})
            print("stopped" if result["stopped"] else f"no transaction on connector {args.connector}")
            return 0 if result["stopped"] else 1
        case "availability":
            result = request(_socket_path(args), "availability",
                             {"connector": args.connector, "operative": args.state == "operative"})
            print(result["status"])
            return 0
        case "fault":
            result = request(_socket_path(args), "fault.reset", {"connector": args.connector})
            print("faults still active: " + ", ".join(result["faults"]) if result["faults"] else "no faults")
            return 1 if result["faults"] else 0
        case "swipe":
            result = request(_socket_path(args), "swipe", {"tag": args.tag})
            print(f"presented to connector {result['connector']}" if result["connector"] else "no connector took it")
            return 0
        case "sim":
            return _sim(args)
        case "hw":
            from agent.cli.hw import run as run_hw
            return run_hw(args)
        case "demo":
            from agent.cli.demo import run_demo
            return run_demo(seconds=args.seconds)
        case "install-service":
            from agent.cli.install import run as run_install
            return run_install(args)
        case "config":
            if args.config_command == "example":
                print(dump_example_config(), end="")
                return 0
            config = load_config(Path(args.config))
            from hal.board import BoardConfigError, load_board
            try:  # a dry run: checks the file without touching (or fighting an agent for) the hardware
                board = load_board(config.board.file, dry_run=True)
            except BoardConfigError as exc:
                print(f"evse: board config error: {exc}", file=sys.stderr)
                return EXIT_USAGE
            print(f"{args.config}: OK (station {config.station.id}, board {board.name}, "
                  f"{len(board.connectors)} connector(s))")
            return 0
    return EXIT_USAGE


def _sim(args: argparse.Namespace) -> int:
    socket = _socket_path(args)
    match args.sim_command:
        case "plug":
            request(socket, "sim.plug", {"connector": args.connector})
        case "unplug":
            request(socket, "sim.unplug", {"connector": args.connector})
        case "ev-state":
            request(socket, "sim.ev_state", {"connector": args.connector,
                                             "state": None if args.state == "auto" else args.state})
        case "swipe":
            request(socket, "sim.swipe", {"tag": args.tag})
        case "fault":
            request(socket, "sim.fault", {"connector": args.connector, "kind": args.kind, "on": args.onoff == "on"})
        case "status":
            snapshot = request(socket, "sim.snapshot")
            print(json.dumps(snapshot) if args.json else format_sim_snapshot(snapshot))
    return 0


def format_sim_snapshot(snapshot: dict) -> str:
    lines = [f"sim board   {snapshot['name']}  ({snapshot['rfid_pending']} card(s) waiting at the reader)"]
    for c in snapshot["connectors"]:
        ev = f"EV {c['ev_state']}" + (f" (pinned, SoC {c['soc']:.0%})" if c["pinned"] else
                                      f" (SoC {c['soc']:.0%})" if c["soc"] is not None else "")
        lock = "locked" if c["locked"] else "unlocked"
        if c["lock_commanded"] != c["locked"]:
            lock += f" (commanded {'locked' if c['lock_commanded'] else 'unlocked'})"
        contactor = "closed" if c["contactor_feedback"] else "open"
        lines.append(f"{c['id']:>4}  {ev if c['plugged'] else 'no EV'}  pilot {c['pilot_mode']} {c['duty']:.1f}%  "
                     f"contactor {contactor}  lock {lock}  LEDs {c['indicator']}  "
                     f"{c['energy_wh']:.0f} Wh  faults {', '.join(c['faults']) or '-'}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from agent.app import run_agent, run_reboot_command
    from agent.cli.control_socket import CommandError
    from agent.logs import setup_logging
    from agent.station.journal import JournalError, JournalSetupError
    from agent.station.station import StationCrashed
    from hal.board import BoardConfigError
    from hal.interfaces import HardwareError

    config = load_config(Path(args.config))
    # a CSMS string with a lone surrogate must still log; typeshed says TextIO, the interpreter's is a TextIOWrapper
    cast(io.TextIOWrapper, sys.stdout).reconfigure(errors="backslashreplace")
    # stdout, with <N> priorities instead of timestamps under journald, secrets redacted (agent.logs)
    setup_logging(args.log_level or config.log.level, sys.stdout)
    try:
        restart = asyncio.run(run_agent(config, log_level_override=args.log_level))
    except BoardConfigError as exc:
        print(f"evse: board config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except JournalSetupError as exc:  # a path that can be no journal, or one emptied or replaced: act, then start
        print(f"evse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (JournalError, CommandError, HardwareError) as exc:  # HardwareError: a device opened at load
        print(f"evse: {exc}", file=sys.stderr)
        return 1
    except StationCrashed as exc:
        logging.getLogger("evse.agent").critical("%s; every contactor was opened", exc, exc_info=exc.__cause__)
        print(f"evse: {exc}", file=sys.stderr)
        return 1
    if restart is None:
        return 0
    run_reboot_command(restart)
    logging.getLogger("evse.agent").warning("%s reset: restarting in place", restart.kind)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return 0  # not reached


def _fleet(args: argparse.Namespace) -> int:
    from agent.fleet import run_sim_fleet
    from agent.logs import setup_logging
    from agent.ocpp.rpc import validate_inline

    if args.count < 1:
        print("evse: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level, sys.stdout)  # one handler for all: each line starts with [<station id>]
    validate_inline()  # as `evse run` does
    asyncio.run(run_sim_fleet(Path(args.dir), args.count, args.csms, prefix=args.prefix))
    return 0


def _status(args: argparse.Namespace) -> int:
    status = request(_socket_path(args), "status")
    if args.json:
        print(json.dumps(status))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict) -> str:
    ocpp = status["ocpp"]
    lines = [
        f"station     {status['station']['id']}  ({'operative' if status['station']['operative'] else 'INOPERATIVE'})",
        f"ocpp        {'connected' if ocpp['connected'] else 'DISCONNECTED'}  registration: "
        f"{ocpp['registration'] or '-'}  {ocpp['url']}",
    ]
    if ocpp.get("last_error") and not ocpp["connected"]:
        lines.append(f"            last error: {ocpp['last_error']}")
    lines.append(f"journal     {status['journal']['pending']} message(s) waiting to be sent")
    lines.append("")
    header = f"{'conn':>4}  {'CP':2}  {'pilot':>10}  {'offer A':>7}  {'contactor':9}  {'status':13}  " \
             f"{'tx':>6}  {'energy Wh':>10}  {'power W':>8}  faults"
    lines.append(header)
    for c in status["connectors"]:
        pilot = f"PWM {c['pwm_duty']:.1f}%" if c["pilot_mode"] == "PWM" else c["pilot_mode"]
        tx = str(c["transaction_id"]) if c["transaction_id"] is not None else ("local" if c["transaction_active"] else "-")
        energy = f"{c['energy_wh']:.0f}" if c["energy_wh"] is not None else "?"
        power = f"{c['power_w']:.0f}" if c["power_w"] is not None else "?"
        lines.append(f"{c['id']:>4}  {c['cp_state']:2}  {pilot:>10}  {c['offered_current_a']:>7.1f}  "
                     f"{'closed' if c['contactor_closed'] else 'open':9}  {c['status']:13}  {tx:>6}  "
                     f"{energy:>10}  {power:>8}  {', '.join(c['faults']) or '-'}")
        reservation = c.get("reservation")
        if reservation:
            where = "the station (connector 0), held here" if reservation.get("any_connector") else "this connector"
            parent = f" (parent {reservation['parent_id_tag']})" if reservation.get("parent_id_tag") else ""
            lines.append(f"{'':>4}  reservation {reservation['id']} of {where} for {reservation['id_tag']}{parent}"
                         f" until {reservation.get('expiry_date') or '?'}")
        lock = c.get("lock")
        if lock and (lock["held_for"] or lock["commanded"] != lock["locked"]):
            state = "locked" if lock["locked"] else "unlocked"
            wanted = "locked" if lock["commanded"] else "unlocked"
            lines.append(f"{'':>4}  lock {state}" + (f", commanded {wanted}" if state != wanted else "")
                         + (f"; cable held until {lock['held_for']} is presented" if lock["held_for"] else ""))
        if c.get("charging_limit_a") is not None:
            lines.append(f"{'':>4}  charging profile limit {c['charging_limit_a']:g} A"
                         + (" (below 6 A: nothing offered)" if c["charging_limit_a"] < 6 else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
