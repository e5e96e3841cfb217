"""Idle footprint: RSS and CPU of the agent process, 1 connector, connected to the bundled CSMS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from agent.config import ChargingConfig
from agent.station import IDLE_CONTROL_PERIOD_S
from bench.common import RUNTIME_TMP, AgentProcess, Report, scratch_dir, write_agent_config
from hil.csms import LocalCsms

TARGET_RSS_MB = 40.0
TARGET_CPU_PERCENT = 0.5
# with no EV and every contactor open the control loop polls at its idle period (agent.station)
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


async def _measure(window_s: float) -> dict:
    csms = LocalCsms(boot_interval=300)
    await csms.start()
    try:
        with scratch_dir("idle") as workdir, scratch_dir("idle-run", RUNTIME_TMP) as runtime:
            config = write_agent_config(workdir, csms.url, runtime_dir=runtime)
            agent = AgentProcess(config, runtime / "control.sock", workdir / "agent.log")
            booted = agent.start()
            try:
                await agent.ready()
                agent.control.close()  # nothing talks to the agent during the window but the CSMS
                await asyncio.sleep(SETTLE_S)
                cpu0, t0 = agent.cpu_seconds(), time.monotonic()
                end_at = booted + max(window_s, SETTLE_S + 2.0)
                await asyncio.sleep(max(end_at - time.time(), 1.0))
                cpu1, t1 = agent.cpu_seconds(), time.monotonic()
                status = agent.proc_status()
                threads = int(open(f"/proc/{agent.pid}/stat").read().rsplit(")", 1)[1].split()[17])
                mappings = _rss_by_mapping(agent.pid)
                return {"rss_kb": status["VmRSS"], "hwm_kb": status["VmHWM"], "cpu_s": cpu1 - cpu0,
                        "window_s": t1 - t0, "cpu_total_s": cpu1, "since_boot_s": time.time() - booted,
                        "threads": threads, "mappings": mappings}
            finally:
                await agent.stop()
    finally:
        await csms.stop()


def run(size: str) -> Report:
    window_s = 60.0 if size == "full" else 5.0
    report = Report("idle", "idle RSS and CPU of the agent process (1 connector, connected)", size)
    report.method(f"`python -m agent run` (board-configs/sim.toml, 1 connector, no EV, log level info, "
                  f"agent defaults: control period 10 ms with an EV, {IDLE_CONTROL_PERIOD_S * 1e3:g} ms idle, meter poll 1 s) "
                  f"connected to LocalCsms;\n"
                  f"CPU = utime+stime from /proc/PID/stat over the window from {SETTLE_S:.0f} s after "
                  f"BootNotification Accepted to {window_s:.0f} s after boot; RSS = VmRSS at its end")
    m = asyncio.run(_measure(window_s))
    rss_mb = m["rss_kb"] / 1024
    cpu_percent = 100 * m["cpu_s"] / m["window_s"]
    report.figure("RSS (VmRSS)", rss_mb, "MB", f"(peak VmHWM {m['hwm_kb'] / 1024:.1f} MB, {m['threads']} thread(s))")
    report.figure("CPU while idle", cpu_percent, "% of one core",
                  f"({m['cpu_s']:.2f} s over {m['window_s']:.1f} s; {m['cpu_total_s']:.2f} s since start, "
                  f"{m['since_boot_s']:.0f} s)")
    wakeups = m["window_s"] / CONTROL_PERIOD_S
    report.figure("CPU per control-loop period", m["cpu_s"] / wakeups * 1e6, "us",
                  f"(the loop wakes every {CONTROL_PERIOD_S * 1e3:g} ms: {1 / CONTROL_PERIOD_S:.0f} wake-ups/s)")
    anon = m["mappings"].pop("[anon]", 0)
    top = sorted(m["mappings"].items(), key=lambda item: -item[1])[:6]
    report.line("figure", f"resident: anonymous (Python heap) {anon / 1024:.1f} MB; largest files: " + ", ".join(
        f"{_short_path(path)} {kb / 1024:.1f}" for path, kb in top) + " MB")
    report.target("idle RSS", rss_mb, "<=", TARGET_RSS_MB, "MB")
    report.target("idle CPU", cpu_percent, "<=", TARGET_CPU_PERCENT, "% of one core")
    if size != "full":
        report.note("tiny window: CPU ticks are 10 ms, so the CPU figure is coarse")
    return report
