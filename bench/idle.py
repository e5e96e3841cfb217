"""Idle footprint: RSS and CPU of the agent process and of the control process it spawned (agent.control.process),
and their sum; 1 connector, connected to the bundled CSMS."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from agent.config import ChargingConfig
from agent.control.loop import IDLE_CONTROL_PERIOD_S
from bench.common import (
    REPO,
    RUNTIME_TMP,
    SIM_1,
    AgentProcess,
    Report,
    cpu_seconds_of,
    proc_status_of,
    scratch_dir,
    write_agent_config,
)
from hil.csms import LocalCsms

TARGET_CONTROL_RSS_MB = 15.0
TARGET_RSS_MB = 55.0  # both processes together
TARGET_CPU_PERCENT = 0.5
# with no EV and every contactor open the control loop polls at its idle period (agent.control.loop)
CONTROL_PERIOD_S = max(ChargingConfig().control_period_s, IDLE_CONTROL_PERIOD_S)
SETTLE_S = 1.0  # after BootNotification Accepted: the initial StatusNotifications go out


def _rss_by_mapping(pid: int) -> dict[str, int]:
    """Resident kB per mapped file (anonymous memory, Python's heap, under "[anon]"), from /proc/PID/smaps."""
    totals: dict[str, int] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5 and ":" not in fields[0]:  # a mapping's header line
                name = fields[5] if len(fields) >= 6 and fields[5].startswith("/") else "[anon]"
            elif fields[0] == "Rss:":
                totals[name] = totals.get(name, 0) + int(fields[1])
    return totals


def _short_path(path: str) -> str:
    """A mapped file's name, prefixed with its Python package when it belongs to one."""
    package = path.split("site-packages/", 1)[1].split("/", 1)[0] + ":" if "site-packages/" in path else ""
    return package + Path(path).name


def _threads(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[17])


def _loaded_libraries(pid: int) -> list[str]:
    """The shared objects a process mapped (/proc/PID/maps): Python's C extension modules among them."""
    names = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if ".so" in path and path.startswith("/"):
                names.add(_short_path(path))
    return sorted(names)


CONTROL_MUST_NOT_IMPORT = ("ocpp", "jsonschema", "sqlite3", "_sqlite3", "cryptography", "websockets")


def _top_level_modules(code: str, *args: str) -> set[str] | str:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    if result.returncode != 0:
        return f"(probe failed: {result.stderr.strip().splitlines()[-1:]})"
    return set(result.stdout.split())


def control_process_imports() -> tuple[list[str], list[str]]:
    """Top-level modules the control process's code loads beyond what a bare interpreter of this machine
    has at start (site's .pth files may load some): a fresh interpreter imports agent.control.process and
    starts the shipped sim board the way it does. Returns (outside the standard library, in it)."""
    listing = "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    probe = (
        "import sys, tempfile, asyncio, pathlib\n"
        "import agent.control.process\n"
        "from hal.board import load_board\n"
        "board = load_board(pathlib.Path(sys.argv[1]), state_dir=pathlib.Path(tempfile.mkdtemp()))\n"
        "asyncio.run(board.start())\n" + listing
    )
    loaded = _top_level_modules(probe, str(SIM_1))
    bare = _top_level_modules("import sys\n" + listing)
    if isinstance(loaded, str) or isinstance(bare, str):
        return [str(loaded if isinstance(loaded, str) else bare)], []
    added = loaded - bare - {"__main__"}
    return (sorted(added - set(sys.stdlib_module_names)),
            sorted(name for name in added & set(sys.stdlib_module_names) if not name.startswith("_")))


async def _measure(window_s: float) -> dict:
    csms = LocalCsms(boot_interval=300)
    await csms.start()
    try:
        with scratch_dir("idle") as workdir, scratch_dir("idle-run", RUNTIME_TMP) as runtime:
            config = write_agent_config(workdir, csms.url, runtime_dir=runtime)
            agent = AgentProcess(config, runtime / "control.sock", workdir / "agent.log")
            booted = agent.start()
            try:
                status = await agent.ready()
                control_pid = status["station"]["control_pid"]
                agent.close_connection()  # nothing talks to the agent during the window but the CSMS
                await asyncio.sleep(SETTLE_S)
                pids = {"agent": agent.pid, "control": control_pid}
                cpu0, t0 = {name: cpu_seconds_of(pid) for name, pid in pids.items()}, time.monotonic()
                end_at = booted + max(window_s, SETTLE_S + 2.0)
                await asyncio.sleep(max(end_at - time.time(), 1.0))
                cpu1, t1 = {name: cpu_seconds_of(pid) for name, pid in pids.items()}, time.monotonic()
                measured = {}
                for name, pid in pids.items():
                    proc = proc_status_of(pid)
                    measured[name] = {"pid": pid, "rss_kb": proc["VmRSS"], "hwm_kb": proc["VmHWM"],
                                      "cpu_s": cpu1[name] - cpu0[name], "cpu_total_s": cpu1[name],
                                      "threads": _threads(pid), "mappings": _rss_by_mapping(pid)}
                measured["control"]["libraries"] = _loaded_libraries(control_pid)
                return {"processes": measured, "window_s": t1 - t0, "since_boot_s": time.time() - booted}
            finally:
                await agent.stop()
    finally:
        await csms.stop()


def run(size: str) -> Report:
    window_s = 60.0 if size == "full" else 5.0
    report = Report("idle", "idle RSS and CPU of the agent and control processes (1 connector, connected)", size)
    report.method(f"`python -m agent run` (board-configs/sim.toml, 1 connector, no EV, log level info, agent "
                  f"defaults: control period 10 ms with an EV, {IDLE_CONTROL_PERIOD_S * 1e3:g} ms idle, meter poll "
                  f"1 s) connected to LocalCsms;\nboth processes: the agent (OCPP, journal) and the control process "
                  f"it spawned (status station.control_pid); CPU = utime+stime from /proc/PID/stat over the "
                  f"window\nfrom {SETTLE_S:.0f} s after BootNotification Accepted to {window_s:.0f} s after boot; "
                  f"RSS = VmRSS at its end")
    m = asyncio.run(_measure(window_s))
    window = m["window_s"]
    processes = m["processes"]
    for name in ("agent", "control"):
        p = processes[name]
        report.figure(f"{name} process RSS (VmRSS)", p["rss_kb"] / 1024, "MB",
                      f"(peak VmHWM {p['hwm_kb'] / 1024:.1f} MB, {p['threads']} thread(s))")
        report.figure(f"{name} process CPU while idle", 100 * p["cpu_s"] / window, "% of one core",
                      f"({p['cpu_s']:.2f} s over {window:.1f} s; {p['cpu_total_s']:.2f} s since start, "
                      f"{m['since_boot_s']:.0f} s)")
        mappings = dict(p["mappings"])
        anon = mappings.pop("[anon]", 0)
        top = sorted(mappings.items(), key=lambda item: -item[1])[:6]
        report.line("figure", f"  {name} resident: anonymous (Python heap) {anon / 1024:.1f} MB; largest files: "
                    + ", ".join(f"{_short_path(path)} {kb / 1024:.1f}" for path, kb in top) + " MB")
    rss_sum = sum(p["rss_kb"] for p in processes.values()) / 1024
    cpu_sum = 100 * sum(p["cpu_s"] for p in processes.values()) / window
    report.figure("RSS (VmRSS) = both processes together", rss_sum, "MB")
    report.figure("CPU while idle = both processes together", cpu_sum, "% of one core")
    wakeups = window / CONTROL_PERIOD_S
    report.figure("control process CPU per control-loop period", processes["control"]["cpu_s"] / wakeups * 1e6,
                  "us", f"(the loop wakes every {CONTROL_PERIOD_S * 1e3:g} ms with no EV: "
                        f"{1 / CONTROL_PERIOD_S:.0f} wake-ups/s)")
    report.line("figure", "control process C extensions mapped: " + ", ".join(processes["control"]["libraries"]))
    imports, stdlib = control_process_imports()
    banned = [name for name in imports + stdlib if name in CONTROL_MUST_NOT_IMPORT]
    report.line("figure", "control process code imports: " + " ".join(imports) + "; from the standard library: "
                + " ".join(stdlib) + f"\n  of {', '.join(CONTROL_MUST_NOT_IMPORT)}: {', '.join(banned) or 'none'}")
    report.target("control process RSS", processes["control"]["rss_kb"] / 1024, "<=", TARGET_CONTROL_RSS_MB, "MB")
    report.target("RSS of both processes", rss_sum, "<=", TARGET_RSS_MB, "MB")
    report.target("idle CPU of both processes", cpu_sum, "<=", TARGET_CPU_PERCENT, "% of one core")
    if size != "full":
        report.note("tiny window: CPU ticks are 10 ms, so the CPU figures are coarse")
    report.note("the import list comes from a fresh interpreter that imports agent.control.process and starts "
                "the sim board, minus what a bare interpreter of this machine\nloads at start (site .pth files); "
                "the running process's C extensions above are read from /proc/PID/maps and include those")
    return report
