"""`evse hw ...`: the technician's hardware checks, with or without a running agent.

    evse hw meter  [--connector N] [--watch]     one reading of the energy meter, or one per interval
    evse hw pilot  [--connector N]               CP state, plateau voltages and diode check (where the
                                                 board measures them), PP cable rating
    evse hw rfid   [--timeout S]                 wait for a card and print its id
    evse hw contactor test [--connector N]       close, check the mirror contact, open, check; timing in ms
    evse hw rcd test [--connector N]             the RCD/RCM self-test, where the back-end has one

Where the devices are (one of):
    --config FILE   the agent's config: if its agent answers on the control socket, the check goes through
                    the agent (which owns the devices); otherwise the devices are opened from its board file
    --board FILE    open the devices of this board config directly (no agent may hold them)
    --socket PATH   only through the agent on this control socket (default /run/evse-agent/control.sock)

--json prints the report as one JSON object instead (a value the board does not report is null).

Exit codes: 0 ok, 1 a device does not answer or fails its test, 2 usage or config error, or the check is
refused (an EV is plugged in, a transaction runs) or not possible on this board.

The device-level procedures below are shared: the CLI runs them on devices it opened itself, and the agent
(agent/station/hardware_tests.py, control commands hw.meter, hw.pilot, hw.contactor_test, hw.rcd_test) on its own devices.
Each returns a report: {"ok": true, ...} or {"ok": false, "exit_code": 1|2, "error": "one line", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hal.interfaces import Board, ConnectorHardware, CpState, HardwareError

EXIT_OK, EXIT_DEVICE, EXIT_USAGE = 0, 1, 2
DEFAULT_SOCKET = Path("/run/evse-agent/control.sock")
METER_TIMEOUT_S = 5.0  # a meter read includes the bus's own timeouts and retries
CONTACTOR_TIMEOUT_S = 1.0  # the mirror contact must follow the coil within this
CONTACTOR_HOLD_S = 0.2  # the contactor stays closed this long once the mirror confirmed it
RCD_TEST_TIMEOUT_S = 2.0
# Just opened, a pilot back-end may still show the state it had before we took over (a co-processor's next
# Status comes within 100 ms, its debounce takes 20 ms): read once this has passed.
PILOT_SETTLE_S = 0.3
FEEDBACK_POLL_S = 0.001
AGENT_PROBE_TIMEOUT_S = 2.0
AGENT_COMMAND_TIMEOUT_S = 15.0


class HwFailure(Exception):
    """A check that could not be done or failed; the message is one line a technician can act on."""

    def __init__(self, message: str, exit_code: int = EXIT_DEVICE, **details: Any):
        super().__init__(message)
        self.exit_code = exit_code
        self.details = details


def refused(message: str) -> HwFailure:
    return HwFailure(message, EXIT_USAGE)


async def report(check: Awaitable[dict]) -> dict:
    """Run a check and turn its outcome into a report dict (what the control socket sends back)."""
    try:
        result = await check
    except HwFailure as exc:
        return {"ok": False, "exit_code": exc.exit_code, "error": str(exc), **exc.details}
    except HardwareError as exc:
        return {"ok": False, "exit_code": EXIT_DEVICE, "error": str(exc)}
    return {"ok": True, **result}


# ---- the checks, on one connector's devices -------------------------------------------------------------


def describe_meter(meter: Any) -> str:
    bus = getattr(meter, "bus", None)
    if bus is not None and hasattr(meter, "device_id"):
        return f"{meter.name}, device id {meter.device_id} on {bus.describe()}"
    return getattr(meter, "name", type(meter).__name__)


async def read_meter(hw: ConnectorHardware) -> dict:
    what = describe_meter(hw.meter)
    try:
        reading = await asyncio.wait_for(hw.meter.read(), METER_TIMEOUT_S)
    except TimeoutError:
        raise HwFailure(f"{what}: no reading within {METER_TIMEOUT_S:g} s") from None
    return {
        "connector": hw.connector_id,
        "meter": what,
        "energy_wh": reading.energy_wh,
        "power_w": reading.power_w,
        "current_a": list(reading.current_a),
        "voltage_v": list(reading.voltage_v),
    }


async def read_pilot(hw: ConnectorHardware) -> dict:
    """CP state, what is driven, PP; the plateau voltages and the diode check only where the back-end
    measures them (None otherwise: a board that reports only the vehicle state, like the EVSE-DIN one)."""
    reading = hw.pilot.read()
    output = hw.pilot.output
    measures_voltages = getattr(hw.pilot, "reports_plateau_voltages", True)
    checks_diode = getattr(hw.pilot, "reports_diode_check", True)
    result: dict[str, Any] = {
        "connector": hw.connector_id,
        "state": reading.state.value,
        "high_v": reading.high_v if measures_voltages else None,
        "low_v": reading.low_v if measures_voltages else None,
        "diode_ok": reading.diode_ok if checks_diode else None,
        "output": output.mode.value,
        "duty_percent": output.duty_percent,
        "pp": "none",  # no PP reading on this connector (tethered cable, or a board without one)
        "pp_ampacity_a": None,
    }
    if hw.proximity is not None:
        try:
            ampacity = hw.proximity.read_ampacity()
        except HardwareError as exc:
            raise HwFailure(f"proximity pilot: {exc}", **{**result, "pp": "error"}) from exc
        result.update(pp="cable" if ampacity is not None else "no cable", pp_ampacity_a=ampacity)
    return result


def contactor_untestable(hw: ConnectorHardware) -> str | None:
    """Why this back-end's contactor cannot be switched by hand, or None."""
    contactor = hw.contactor
    if not contactor.has_mirror_contact:
        return (
            f"connector {hw.connector_id}: the contactor has no mirror contact ({type(contactor).__name__} "
            "switches its relay itself and its feedback is inferred), so there is nothing to test by hand"
        )
    from hal.coproc.devices import CoprocessorContactor

    if isinstance(contactor, CoprocessorContactor):
        return (
            f"connector {hw.connector_id}: the co-processor closes the contactor only while an EV asks for "
            "power (state C/D) and checks the mirror contact itself (RELAY_FAULT); test it with a charging "
            "session or an EV simulator"
        )
    return None


async def contactor_test(hw: ConnectorHardware, *, timeout_s: float = CONTACTOR_TIMEOUT_S) -> dict:
    """Close, wait for the mirror contact, hold briefly, open, wait for it again. Refuses unless the pilot
    reads state A; aborts (opens at once) if the pilot leaves A. The contactor is always left open."""
    reason = contactor_untestable(hw)
    if reason:
        raise refused(reason)
    contactor, cid = hw.contactor, hw.connector_id
    state = hw.pilot.read().state
    if state is not CpState.A:
        raise refused(f"connector {cid}: refused: the control pilot reads state {state.value}, not A: "
                      "unplug the EV (the outlet carries mains while the contactor is closed)")
    if contactor.commanded_closed:
        raise refused(f"connector {cid}: refused: the contactor is commanded closed")
    if contactor.feedback_closed():
        raise HwFailure(f"connector {cid}: the mirror contact reports the contactor closed while it is "
                        "commanded open: welded contacts or a mirror wiring fault; not closing it")
    loop = asyncio.get_running_loop()
    close_ms = open_ms = None
    problem, exit_code = None, EXIT_DEVICE
    try:
        started = loop.time()
        contactor.set_closed(True)
        if await _wait_feedback(hw, True, timeout_s):
            close_ms = (loop.time() - started) * 1000
            hold_until = loop.time() + CONTACTOR_HOLD_S
            while loop.time() < hold_until and hw.pilot.read().state is CpState.A:
                await asyncio.sleep(0.01)
        if hw.pilot.read().state is not CpState.A:
            problem = "aborted: the control pilot left state A (an EV was plugged in); opened at once"
            exit_code = EXIT_USAGE
        elif close_ms is None:
            problem = (f"the mirror contact did not report closed within {timeout_s * 1000:.0f} ms of closing: "
                       "check the coil supply and driver, the mirror contact wiring and its NO/NC setting")
    finally:
        opened = loop.time()
        contactor.set_closed(False)  # whatever happened above
    if await _wait_feedback(hw, False, timeout_s):
        open_ms = (loop.time() - opened) * 1000
    else:
        problem, exit_code = (
            f"the mirror contact still reports closed {timeout_s * 1000:.0f} ms after opening: welded "
            "contacts or a stuck mirror contact (the coil is off)", EXIT_DEVICE)
    timing = {"connector": cid, "close_ms": _ms(close_ms), "open_ms": _ms(open_ms)}
    if problem:
        raise HwFailure(f"connector {cid}: contactor test FAILED: {problem}", exit_code, **timing)
    return timing


async def _wait_feedback(hw: ConnectorHardware, closed: bool, timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        if hw.contactor.feedback_closed() == closed:
            return True
        if loop.time() >= deadline:
            return False
        if closed and hw.pilot.read().state is not CpState.A:
            return False  # an EV appeared: give up at once, the caller opens
        await asyncio.sleep(FEEDBACK_POLL_S)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


async def rcd_test(hw: ConnectorHardware, coprocessor_link: Any = None) -> dict:
    """The RCD's self-test: a test pulse on GPIO, or the co-processor's RcdTest command."""
    # Any: the self-tests are not part of ResidualCurrentMonitor; a driver has one (hal.gpio.rcd, hal.coproc) or not
    rcd: Any = hw.rcd
    cid = hw.connector_id
    if rcd is None:
        raise refused(f"connector {cid}: no RCD configured ([connectors.rcd])")
    if hw.contactor.commanded_closed or hw.contactor.feedback_closed():
        raise refused(f"connector {cid}: refused: the contactor is closed")
    self_test = getattr(rcd, "self_test", None)
    if self_test is not None:
        if not getattr(rcd, "can_self_test", True):
            raise refused(f"connector {cid}: the RCD has no test output configured (test_pin)")
        if not await self_test():
            raise HwFailure(f"connector {cid}: {rcd.last_error}")
        return {"connector": cid, "detail": "the trip input followed the test pulse and cleared again"}
    if hasattr(rcd, "start_self_test") and coprocessor_link is not None:
        return await _coprocessor_rcd_test(hw, coprocessor_link)
    raise refused(f"connector {cid}: {type(rcd).__name__} has no self-test")


async def _coprocessor_rcd_test(hw: ConnectorHardware, link: Any) -> dict:
    from hal.coproc.protocol import EventCode

    cid = hw.connector_id
    before = list(link.events)
    rcd: Any = hw.rcd  # a co-processor's RCD (hal.coproc.devices): rcd_test() checked it has start_self_test
    rcd.start_self_test()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RCD_TEST_TIMEOUT_S
    answers = (EventCode.RCD_SELFTEST_PASSED, EventCode.RCD_SELFTEST_FAILED, EventCode.COMMAND_REJECTED)
    while loop.time() < deadline:
        for event in list(link.events):
            if event.connector == cid and event.code in answers and not any(event is b for b in before):
                if event.code is EventCode.RCD_SELFTEST_PASSED:
                    return {"connector": cid, "detail": "the co-processor reports the self-test passed"}
                if event.code is EventCode.RCD_SELFTEST_FAILED:
                    raise HwFailure(f"connector {cid}: RCD self-test FAILED (reported by the {link.description})")
                raise refused(f"connector {cid}: the co-processor refused the RCD self-test")
        await asyncio.sleep(0.01)
    raise HwFailure(f"connector {cid}: no RCD self-test result from the {link.description} "
                    f"within {RCD_TEST_TIMEOUT_S:g} s")


async def read_card(board: Board, timeout_s: float) -> dict:
    reader = board.rfid
    if reader is None:
        raise refused("the board has no card reader ([rfid] table)")
    description = getattr(reader, "description", type(reader).__name__)
    try:
        tag = await asyncio.wait_for(reader.next_tag(), timeout_s)
    except TimeoutError:
        last_error = getattr(reader, "last_error", None)
        if getattr(reader, "connected", True) is False:
            raise HwFailure(f"{description}: not answering within {timeout_s:g} s: {last_error}") from None
        raise HwFailure(f"{description}: no card presented within {timeout_s:g} s (the reader answers)") from None
    return {"reader": description, "id_tag": tag}


# ---- output --------------------------------------------------------------------------------------------


def _reported(value: float | None, fmt: str, unit: str) -> str:
    """A measured value, or "n/a" where the meter marks it not available (an unused phase)."""
    return "n/a" if value is None else f"{value:{fmt}} {unit}"


def format_meter(r: dict, *, line: bool = False) -> str:
    phases = "  ".join(f"L{n} {_reported(v, '.1f', 'V')} {_reported(a, '.2f', 'A')}"
                       for n, (v, a) in enumerate(zip(r["voltage_v"], r["current_a"], strict=True), 1))
    power = _reported(r["power_w"], ".0f", "W")
    if line:
        return f"{time.strftime('%H:%M:%S')}  {r['energy_wh'] / 1000:.3f} kWh  {power}  {phases}"
    return "\n".join([
        f"connector {r['connector']}: {r['meter']}",
        f"  energy  {r['energy_wh'] / 1000:.3f} kWh ({r['energy_wh']:.0f} Wh)",
        f"  power   {power}",
        f"  phases  {phases}",
    ])


def format_pilot(r: dict) -> str:
    output = f"PWM {r['duty_percent']:.2f} %" if r["output"] == "PWM" else r["output"]
    pp = {"none": "no PP reading (tethered cable or none on this board)", "no cable": "no cable plugged",
          "error": "unreadable"}.get(r["pp"]) or f"cable rated {r['pp_ampacity_a']:g} A"
    if r["high_v"] is None:
        voltages = "plateau voltages not reported by this board"
    else:
        voltages = f"{r['high_v']:+.2f} V / {r['low_v']:+.2f} V"
    diode = {None: "diode check not reported by this board", True: "diode ok"}.get(r["diode_ok"],
                                                                                "diode MISSING/SHORTED")
    return "\n".join([
        f"connector {r['connector']}: CP state {r['state']}  ({voltages}, {diode})",
        f"  driving {output}",
        f"  PP      {pp}",
    ])


def format_report(kind: str, r: dict) -> str:
    if kind == "meter":
        return format_meter(r)
    if kind == "pilot":
        return format_pilot(r)
    if kind == "rfid":
        return r["id_tag"]
    if kind == "contactor":
        return (f"connector {r['connector']}: contactor test passed: closed in {r['close_ms']:.1f} ms, "
                f"opened in {r['open_ms']:.1f} ms (mirror contact confirmed both)")
    return f"connector {r['connector']}: RCD self-test passed: {r['detail']}"


# ---- command line ----------------------------------------------------------------------------------------


def add_parsers(hw: argparse.ArgumentParser) -> None:
    sub = hw.add_subparsers(dest="hw_command", required=True, metavar="DEVICE")

    def target(parser: argparse.ArgumentParser, connector: bool = True) -> None:
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--config", help="agent config: through its agent if it runs, else its board file")
        group.add_argument("--board", help="board config: open the devices directly (no agent may run)")
        group.add_argument("--socket", help=f"only through the agent on this socket (default {DEFAULT_SOCKET})")
        if connector:
            parser.add_argument("--connector", type=int, default=1, help="connector id (default 1)")
        parser.add_argument("--json", action="store_true",
                            help="print the report as one JSON object (a value the device does not report is null)")
        parser.add_argument("-v", "--verbose", action="store_true", help="log what the devices do")

    meter = sub.add_parser("meter", help="read the energy meter")
    target(meter)
    meter.add_argument("--watch", action="store_true", help="read again every --interval seconds")
    meter.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    meter.add_argument("--count", type=int, default=0, help="with --watch: stop after this many readings")
    target(sub.add_parser("pilot", help="control pilot state and voltages, PP cable rating"))
    rfid = sub.add_parser("rfid", help="wait for a card and print its id")
    target(rfid, connector=False)
    rfid.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    contactor = sub.add_parser("contactor", help="contactor checks")
    contactor_sub = contactor.add_subparsers(dest="hw_action", required=True)
    test = contactor_sub.add_parser(
        "test", help="close and open the contactor, checking its mirror contact (no EV plugged in: the "
                     "outlet is live for a moment)")
    target(test)
    rcd = sub.add_parser("rcd", help="RCD checks")
    rcd_test_parser = rcd.add_subparsers(dest="hw_action", required=True).add_parser("test", help="RCD self-test")
    target(rcd_test_parser)


def run(args: argparse.Namespace, *, pin_factory: Any = None) -> int:
    """`evse hw ...`; `pin_factory` lets tests hand in gpiozero mock pins with simulated devices."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    from agent.config import ConfigError
    from hal.board import BoardConfigError

    try:
        return asyncio.run(_run(args, pin_factory))
    except HwFailure as exc:
        print(f"evse hw: {exc}", file=sys.stderr)
        return exc.exit_code
    except (BoardConfigError, ConfigError) as exc:
        print(f"evse hw: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HardwareError as exc:
        print(f"evse hw: {exc}", file=sys.stderr)
        return EXIT_DEVICE


_AGENT_COMMANDS = {"meter": "hw.meter", "pilot": "hw.pilot", "contactor": "hw.contactor_test", "rcd": "hw.rcd_test"}


async def _run(args: argparse.Namespace, pin_factory: Any) -> int:
    kind = args.hw_command
    socket, board_file, status = await asyncio.to_thread(_target, args)
    if socket is not None:
        assert status is not None  # _target: an agent that answers has a status
        if kind == "rfid":
            raise refused(f"the agent on {socket} owns the card reader: present the card and watch its log, "
                          "or stop the agent to test the reader alone")
        _check_connector(args.connector, [c["id"] for c in status["connectors"]])
        return await _through_agent(socket, kind, args)
    assert board_file is not None  # _target: without an agent, a board file or a refusal
    return await _directly(board_file, kind, args, pin_factory)


def _target(args: argparse.Namespace) -> tuple[Path | None, Path | None, dict | None]:
    """(agent socket if an agent answers, board file to open otherwise, the agent's status)."""
    if args.board:
        return None, Path(args.board), None
    board_file = None
    if args.config:
        from agent.config import load_config

        config = load_config(Path(args.config))
        socket, board_file = config.control.socket, config.board.file
    else:
        socket = Path(args.socket) if args.socket else DEFAULT_SOCKET
    status = _agent_status(socket)
    if status is not None:
        return socket, board_file, status
    if board_file is None:
        raise refused(f"no agent answers on {socket}; give --config FILE or --board FILE to open the devices")
    return None, board_file, None


def _agent_status(socket: Path) -> dict | None:
    from agent.cli.control_socket import ControlClientError, request

    try:
        return request(socket, "status", timeout=AGENT_PROBE_TIMEOUT_S)
    except (ControlClientError, OSError, ValueError):
        return None


def _check_connector(connector: int, known: list[int]) -> None:
    if connector not in known:
        raise refused(f"no connector {connector}; this board has {', '.join(map(str, known))}")


async def _through_agent(socket: Path, kind: str, args: argparse.Namespace) -> int:
    from agent.cli.control_socket import ControlClientError, request

    async def ask() -> dict:
        try:
            return await asyncio.to_thread(request, socket, _AGENT_COMMANDS[kind], {"connector": args.connector},
                                           AGENT_COMMAND_TIMEOUT_S)
        except ControlClientError as exc:
            return {"ok": False, "exit_code": EXIT_DEVICE, "error": f"agent on {socket}: {exc}"}

    if kind == "meter" and args.watch:
        return await _watch(ask, args)
    return _print_report(kind, await ask(), args)


async def _directly(board_file: Path, kind: str, args: argparse.Namespace, pin_factory: Any) -> int:
    from hal.board import load_board

    board = load_board(board_file, pin_factory=pin_factory)
    try:
        if kind == "rfid":
            await _start(board, [board.rfid])
            return _print_report(kind, await report(read_card(board, args.timeout)), args)
        hw = _connector(board, args.connector)
        if kind == "meter":
            await _start(board, [hw.meter])
            if args.watch:
                return await _watch(lambda: report(read_meter(hw)), args)
            return _print_report(kind, await report(read_meter(hw)), args)
        if kind == "pilot":
            await _start(board, [hw.pilot, hw.proximity])
            await asyncio.sleep(PILOT_SETTLE_S)
            return _print_report(kind, await report(read_pilot(hw)), args)
        await _start(board, [hw.pilot, hw.contactor, hw.rcd])
        if kind == "contactor":
            return _print_report(kind, await report(contactor_test(hw)), args)
        return _print_report(kind, await report(rcd_test(hw, board.extras.get("coprocessor"))), args)
    finally:
        await _release(board)


def _connector(board: Board, connector: int) -> ConnectorHardware:
    by_id = {conn.connector_id: conn for conn in board.connectors}
    _check_connector(connector, sorted(by_id))
    return by_id[connector]


async def _start(board: Board, devices: list[Any]) -> None:
    """Start only what the check needs (and the shared link that serves it), not the whole board."""
    start_list = getattr(board, "start_list", None)
    wanted = start_list(devices) if start_list is not None else [d for d in devices if d is not None]
    for device in wanted:
        start = getattr(device, "start", None)
        if start is not None:
            await start()


async def _release(board: Board) -> None:
    """Close every device (each leaves its output safe: coil off, 0 A offered, CP at X1); a device that
    was never started closes without touching its port."""
    for device in reversed(board.devices()):
        close = getattr(device, "close", None)
        if close is not None:
            try:
                await close()
            except HardwareError:
                pass
    release = getattr(board, "release_pin_factory", None)
    if release is not None:
        release()


async def _watch(read: Callable[[], Awaitable[dict]], args: argparse.Namespace) -> int:
    failures = readings = 0
    while True:
        result = await read()
        readings += 1
        if getattr(args, "json", False):
            print(json.dumps(result), flush=True)
            failures += not result["ok"]
        elif result["ok"]:
            print(format_meter(result, line=True), flush=True)
        else:
            failures += 1
            print(f"{time.strftime('%H:%M:%S')}  error: {result['error']}", flush=True)
        if args.count and readings >= args.count:
            return EXIT_DEVICE if failures else EXIT_OK
        await asyncio.sleep(args.interval)


def _print_report(kind: str, result: dict, args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        print(json.dumps(result))  # failures too: the exit code and "ok" tell them apart
        return EXIT_OK if result["ok"] else result["exit_code"]
    if result["ok"]:
        print(format_report(kind, result))
        return EXIT_OK
    if kind == "pilot" and result.get("state"):  # the CP was read, PP was not
        print(format_pilot(result))
    print(f"evse hw: {result['error']}", file=sys.stderr)
    return result["exit_code"]
