"""Process start -> first BootNotification frame received by the bundled CSMS."""

from __future__ import annotations

import asyncio
import statistics

from bench.common import (
    RUNTIME_TMP,
    STATION_ID,
    AgentProcess,
    Report,
    scratch_dir,
    write_agent_config,
)
from hil.csms import LocalCsms

TARGET_S = 1.0


async def _measure(runs: int, report: Report) -> list[float]:
    csms = LocalCsms(boot_interval=300)
    await csms.start()
    times: list[float] = []
    try:
        with scratch_dir("boot") as workdir, scratch_dir("boot-run", RUNTIME_TMP) as runtime:
            config = write_agent_config(workdir, csms.url, runtime_dir=runtime)
            for run in range(runs):
                agent = AgentProcess(config, runtime / "control.sock", workdir / "agent.log")
                since = len(csms.frames)
                started = agent.start()
                try:
                    frame = await csms.wait_frame(
                        lambda f: f.direction == "in" and f.message_type == 2 and f.action == "BootNotification"
                        and f.station_id == STATION_ID, timeout=30.0, since=since)
                    times.append(frame.time.timestamp() - started)
                    await agent.ready()
                finally:
                    await agent.stop()
                    await csms.wait_until(lambda: not csms.is_connected(STATION_ID), 10.0)
                report.line("figure", f"run {run + 1}: {times[-1]:.3f} s"
                                      f"{'  (first boot: creates the journal)' if run == 0 else ''}")
    finally:
        await csms.stop()
    return times


def run(size: str) -> Report:
    runs = 5 if size == "full" else 2
    report = Report("boot", "process start -> first BootNotification frame at the CSMS", size)
    report.method(f"{runs} runs of `python -m agent run` (sim board, 1 connector, log level info) against "
                  "LocalCsms on 127.0.0.1 in the bench process;\ntime from just before Popen to the CSMS's "
                  "receive time of the BootNotification CALL (both wall clock); warm page cache;\nthe first "
                  "run creates the journal, the others reopen it like a station rebooting")
    times = asyncio.run(_measure(runs, report))
    median = statistics.median(times)
    report.figure("median", median, "s", f"(min {min(times):.3f}, max {max(times):.3f})")
    report.target("start -> BootNotification (median)", median, "<=", TARGET_S, "s")
    return report
