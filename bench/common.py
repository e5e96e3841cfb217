"""What every benchmark shares: the machine block, the report format, agent processes, the bundled CSMS.

Report format (one block per benchmark, read by people and by tests/test_bench.py):

    == <name>: <title> (size <tiny|full>) ==
    machine:  <CPU model>, <n> cores, Python <x.y.z>, Linux <kernel>
    method:   how it was measured (one or more lines)
    figure:   <label> = <value> <unit>
    baseline: <label> = <value> <unit>
    target:   <label> <op> <limit> <unit>: met | MISSED (<value> <unit>)
    note:     what bounds the figure, caveats

Figures are reported, never asserted: a benchmark exits 0 whether or not its targets are met.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.agent_process import AgentProcess as HarnessProcess
from hil.agent_process import cpu_seconds_of, proc_status_of  # noqa: F401 (for the benchmarks)
from hil.agent_process import write_agent_config as write_station_config

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
SIM_1 = REPO / "board-configs" / "sim.toml"  # the shipped one-socket sim board
SIM_4 = BENCH_DIR / "sim-4.toml"  # four sockets, for the reaction benchmark
STATION_ID = "BENCH-1"
TAG = "0411223344"  # a card UID as the reader reports it
SIZES = ("tiny", "full")

# The journal goes on a disk-backed directory (fsync costs are the point); /tmp may be tmpfs elsewhere.
DISK_TMP = Path(os.environ.get("BENCH_DISK_TMP", "/var/tmp"))
# A station's runtime directory (control socket, sim EV state) is tmpfs.
RUNTIME_TMP = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


# ---- machine and report ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def filesystem_of(path: Path) -> str:
    """The device and file system type `path` lives on (from /proc/mounts), for the method line."""
    path = Path(os.path.realpath(path))
    best = ("?", "?", "")
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            if (str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")) and len(mount) > len(best[2]):
                best = (device, fstype, mount)
    except OSError:
        pass
    return f"{best[0]} ({best[1]})"


def fmt(value: float | None) -> str:
    """A number with about three significant digits (thousands separated)."""
    if value is None or math.isnan(value):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


class Report:
    """Prints one benchmark's block line by line (flushed, so a long run shows progress)."""

    def __init__(self, name: str, title: str, size: str):
        self.name = name
        self.targets: list[tuple[str, bool]] = []
        self._print(f"\n== {name}: {title} (size {size}) ==")
        self.line("machine", machine())

    @staticmethod
    def _print(text: str) -> None:
        print(text, flush=True)

    def line(self, kind: str, text: str) -> None:
        prefix = f"{kind}:".ljust(10)
        for i, part in enumerate(text.splitlines() or [""]):
            self._print((prefix if i == 0 else " " * 10) + part)

    def method(self, text: str) -> None:
        self.line("method", text)

    def note(self, text: str) -> None:
        self.line("note", text)

    def figure(self, label: str, value: float, unit: str, extra: str = "") -> None:
        self.line("figure", f"{label} = {fmt(value)} {unit}{'  ' + extra if extra else ''}")

    def baseline(self, label: str, value: float, unit: str, extra: str = "") -> None:
        self.line("baseline", f"{label} = {fmt(value)} {unit}{'  ' + extra if extra else ''}")

    def target(self, label: str, value: float, op: str, limit: float, unit: str) -> bool:
        met = value <= limit if op == "<=" else value >= limit
        self.targets.append((label, met))
        self.line("target", f"{label} {op} {fmt(limit)} {unit}: {'met' if met else 'MISSED'} "
                            f"({fmt(value)} {unit})")
        return met


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def distribution(report: Report, label: str, seconds: list[float], unit: str = "ms") -> dict[str, float]:
    """Print p50/p99/max (and the count) of a list of durations in seconds; returns them in `unit`."""
    scale = 1000.0 if unit == "ms" else 1e6
    stats = {"p50": percentile(seconds, 50) * scale, "p99": percentile(seconds, 99) * scale,
             "max": max(seconds) * scale if seconds else math.nan}
    report.line("figure", f"{label}: p50 {fmt(stats['p50'])} / p99 {fmt(stats['p99'])} / "
                          f"max {fmt(stats['max'])} {unit}  (n={len(seconds)})")
    return stats


@contextmanager
def scratch_dir(prefix: str, base: Path = DISK_TMP) -> Iterator[Path]:
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---- agent config -----------------------------------------------------------------------------------


def write_agent_config(workdir: Path, csms_url: str, *, board_file: Path = SIM_1, runtime_dir: Path | None = None,
                       journal: Path | None = None, ocpp_keys: dict | None = None, log_level: str = "info",
                       charging: dict | None = None) -> Path:
    """An agent.toml for a benchmark: the journal in `workdir` (disk), the control socket (and with it the
    sim board's state file) in `runtime_dir` (tmpfs on a station), everything else the agent's defaults."""
    runtime_dir = runtime_dir or workdir
    return write_station_config(
        workdir, csms_url, station_id=STATION_ID, vendor="BenchVendor", model="BenchModel", board_file=board_file,
        ocpp_keys={"HeartbeatInterval": 300, **(ocpp_keys or {})}, charging=charging,
        journal=journal or workdir / "journal.sqlite", socket=runtime_dir / "control.sock", log_level=log_level)


# ---- the agent as a process (hil.agent_process, with a benchmark's settings) -------------------------


class AgentProcess(HarnessProcess):
    """`python -m agent run --config FILE`, exactly as a station runs it: its config's log level, Python's
    own output buffering, one persistent control connection for low-latency polling."""

    ready_timeout_s = 20.0
    wait_timeout_s = 15.0

    def __init__(self, config: Path, socket: Path, log_path: Path):
        super().__init__(config.parent, config, socket=socket, log_path=log_path, cwd=REPO, log_level=None,
                         unbuffered=False, keep_connection=True)

    async def ready(self, timeout: float | None = None, *, registered: bool = True) -> dict:
        """Wait for the control socket, then for BootNotification Accepted."""
        return await super().ready(timeout, registered=registered)

    async def charge(self, tag: str = TAG, connector: int = 1) -> dict:
        return await super().charge(tag, connector)


# ---- the sim board's timing marks (hal.sim: `sim.marks`) -----------------------------------------


@dataclass
class Reactions:
    """The contactor's reactions to the EV's scripted changes on one connector, from the sim's marks."""

    opens: list[float] = field(default_factory=list)  # EV C->B due -> contactor opened, seconds
    closes: list[float] = field(default_factory=list)  # EV B->C due -> contactor closed (not held back)
    held_closes: int = 0  # B->C within min_close_interval_s of the last close: the close waits by policy
    missed_opens: int = 0  # C->B with the contactor closed and no open before the EV's next change
    not_closed_at_b: int = 0  # C->B while the contactor was already open (no reaction to measure)
    unexpected_opens: int = 0  # the contactor opened with no C->B pending (a fault, supervision)

    def add(self, other: Reactions) -> None:
        for name in ("opens", "closes"):
            getattr(self, name).extend(getattr(other, name))
        for name in ("held_closes", "missed_opens", "not_closed_at_b", "unexpected_opens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def reactions(marks: list, *, closed: bool = True, min_close_interval_s: float = 1.0,
              last_close: float = -math.inf, from_applied: bool = False) -> Reactions:
    """Pair the sim's marks ([monotonic time, "ev"|"ev_applied"|"contactor", value]; an "ev" mark carries the
    time the change was due, "ev_applied" the time the sim's pilot really changed (the event loop's timer
    fires late), a "contactor" mark the time the command reached the sim HAL) into reaction times, from the
    due time, or from the real change with `from_applied`. `closed`: the contactor's state before the first
    mark."""
    event_kind = "ev_applied" if from_applied else "ev"
    marks = [[at, "ev" if what == event_kind else what, value] for at, what, value in marks
             if what in (event_kind, "contactor")]
    found = Reactions()
    pending_open: float | None = None
    pending_close: float | None = None
    for at, what, value in sorted(marks, key=lambda mark: mark[0]):
        if what == "ev":
            if pending_open is not None:
                found.missed_opens += 1
            pending_open = pending_close = None
            if value == "B":
                if closed:
                    pending_open = at
                else:
                    found.not_closed_at_b += 1
            elif value == "C" and not closed:
                if at - last_close >= min_close_interval_s:
                    pending_close = at
                else:
                    found.held_closes += 1
        elif what == "contactor":
            if value:
                if pending_close is not None:
                    found.closes.append(at - pending_close)
                pending_close = None
                last_close = at
            elif pending_open is not None:
                found.opens.append(at - pending_open)
                pending_open = None
            elif closed:
                found.unexpected_opens += 1
            closed = bool(value)
    return found


def ev_cycles(start: float, cycles: int, rng, *, c_s: tuple[float, float] = (1.0, 1.2),
              b_s: float = 0.2) -> tuple[list[list], list[float]]:
    """A `sim.ev_script` of `cycles` C->B->C cycles from `start` seconds on (the EV charges, C, before it):
    B for `b_s`, then C for a random time in `c_s` (the controller closes at most once per
    min_close_interval_s, 1 s, so C must last that long for the next C->B to find the contacts closed).
    Returns the steps and the offsets (s from now) of the C->B changes."""
    steps, b_at = [], []
    at = start
    for _ in range(cycles):
        steps.append([round(at, 6), "B"])
        b_at.append(at)
        at += b_s
        steps.append([round(at, 6), "C"])
        at += rng.uniform(*c_s)
    return steps, b_at


# ---- the bundled CSMS in a process of its own --------------------------------------------------------


class CsmsProcess:
    """hil.csms.LocalCsms in its own process (bench/csms_server.py), for benchmarks whose agent runs inside
    the bench process: the CSMS then does not share the agent's event loop or interpreter."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, tags: list[str], timeout: float = 15.0) -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.csms_server", "--tags", ",".join(tags)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ws://"):
            raise RuntimeError(f"bench CSMS did not start: {line!r}")
        self.url = line.strip()
        return self.url

    def counts(self) -> dict[str, int]:
        """Incoming CALLs by action so far."""
        return self._ask("counts")

    def attack(self, attack: str, **params: Any) -> dict:
        """An attack on the connected station (bench/csms_server.py `_attack`); blocks for the answer."""
        return self._ask(json.dumps({"attack": attack, **params}))

    def _ask(self, line: str) -> Any:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


async def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(poll)
