"""Replay of queued messages: the agent empties a journal of COUNT messages to the bundled CSMS, compared
with a bare `ocpp` library call loop (bench/bare_client.py) doing the same calls against the same CSMS.

Both rates come from the CSMS's frame times, measured the same way: COUNT / (time of the answer to the
last message - time the first StartTransaction arrived).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass

from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.station.journal import Journal
from bench.common import (
    REPO,
    RUNTIME_TMP,
    STATION_ID,
    TAG,
    AgentProcess,
    Report,
    scratch_dir,
    write_agent_config,
)
from bench.journal import sample_value
from hil.csms import LocalCsms

TARGET_PER_S = 500.0
TARGET_RATIO = 0.8
CALL, RESULT = 2, 3


def build_journal(path, count: int) -> None:
    """Start + (count - 2) MeterValues + Stop of one transaction, queued as an outage would leave them."""
    journal = Journal(path)
    timestamp = ocpp_timestamp()
    local_id = journal.begin_transaction(1, TAG, 0.0, timestamp)
    for i in range(count - 2):
        journal.add_meter_values(local_id, sample_value(float(i), timestamp), float(i), timestamp)
    journal.end_transaction(local_id, count, timestamp, "local")
    assert journal.pending_count() == count
    journal.close()


async def _first_and_last(csms: LocalCsms, station_id: str, since: int, timeout: float, on_first=None):
    """The CSMS frames of the first StartTransaction CALL of `station_id` and of the answer to its
    StopTransaction; `on_first()` is called as soon as the first one is seen."""
    first = await csms.wait_frame(lambda f: f.station_id == station_id and f.direction == "in"
                                  and f.message_type == CALL and f.action == "StartTransaction",
                                  timeout=timeout, since=since)
    if on_first is not None:
        on_first()
    last = await csms.wait_frame(lambda f: f.station_id == station_id and f.direction == "out"
                                 and f.message_type == RESULT and f.action == "StopTransaction",
                                 timeout=timeout, since=first.index)
    return first, last


@dataclass
class Run:
    label: str
    span_s: float
    client_cpu_s: float  # the agent's or the bare client's CPU over the span
    csms_cpu_s: float  # the bench process (the CSMS) over the span


async def _bare(csms: LocalCsms, station_id: str, count: int, inline: bool) -> Run:
    since = len(csms.frames)
    args = [sys.executable, "-m", "bench.bare_client", csms.url, station_id, str(count)]
    if inline:
        args.append("--inline-validation")
    proc = await asyncio.create_subprocess_exec(*args, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                                stdout=asyncio.subprocess.PIPE)
    cpu: list[float] = []
    first, last = await _first_and_last(csms, station_id, since, 600, lambda: cpu.append(time.process_time()))
    csms_cpu = time.process_time() - cpu[0]
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bare client exited with {proc.returncode}")
    label = "bare ocpp loop, inline validation (as the agent)" if inline else \
        "bare ocpp loop, library defaults (validation in a thread pool)"
    return Run(label, (last.time - first.time).total_seconds(), json.loads(out)["cpu_s"], csms_cpu)


async def _agent(csms: LocalCsms, count: int) -> Run:
    with scratch_dir("replay") as workdir, scratch_dir("replay-run", RUNTIME_TMP) as runtime:
        build_journal(workdir / "journal.sqlite", count)
        config = write_agent_config(workdir, csms.url, runtime_dir=runtime)
        agent = AgentProcess(config, runtime / "control.sock", workdir / "agent.log")
        since = len(csms.frames)
        agent.start()
        try:
            cpu: list[tuple[float, float]] = []
            first, last = await _first_and_last(
                csms, STATION_ID, since, 600, lambda: cpu.append((agent.cpu_seconds(), time.process_time())))
            agent_cpu, csms_cpu = agent.cpu_seconds() - cpu[0][0], time.process_time() - cpu[0][1]
            status = await agent.ready()
            if status["journal"]["pending"]:
                raise RuntimeError(f"{status['journal']['pending']} messages left in the journal")
        finally:
            await agent.stop()
        await csms.wait_until(lambda: not csms.is_connected(STATION_ID), 10.0)
    return Run("agent", (last.time - first.time).total_seconds(), agent_cpu, csms_cpu)


async def _measure(count: int) -> list[Run]:
    """Interleaved, so that a change in the shared machine's load hits both sides: agent, bare x2, agent."""
    csms = LocalCsms(authorized_tags=[TAG], boot_interval=300)
    await csms.start()
    try:
        return [await _agent(csms, count), await _bare(csms, "BARE-1", count, True),
                await _bare(csms, "BARE-2", count, False), await _agent(csms, count)]
    finally:
        await csms.stop()


def run(size: str) -> Report:
    count = 10_000 if size == "full" else 200
    report = Report("replay", f"replay of {count:,} queued messages to the bundled CSMS", size)
    report.method(f"journal built offline (Start + {count - 2:,} MeterValues + Stop); `python -m agent run` "
                  "(sim board, log level info) replays it to LocalCsms (in the bench process, 127.0.0.1), twice;\n"
                  "baseline: bench/bare_client.py, an ocpp.v16.ChargePoint calling the same messages in a loop "
                  "(own process, same CSMS, same run, no websocket compression as the agent),\n"
                  "once with inline schema validation (as the agent sets it) and once with the library's default; "
                  "order: agent, bare, bare, agent;\n"
                  "rate = messages / (CSMS receive of the first StartTransaction -> CSMS answer to StopTransaction)")
    runs = asyncio.run(_measure(count))
    for r in runs:
        report.line("figure" if r.label == "agent" else "baseline",
                    f"{r.label}: {count / r.span_s:,.0f} messages/s ({r.span_s:.2f} s; CPU over the span: "
                    f"client {100 * r.client_cpu_s / r.span_s:.0f} %, CSMS {100 * r.csms_cpu_s / r.span_s:.0f} % "
                    f"of a core)")
    agent_rate = max(count / r.span_s for r in runs if r.label == "agent")
    best = max(count / r.span_s for r in runs if r.label != "agent")
    report.figure("agent replay (best of 2)", agent_rate, "messages/s")
    report.baseline("fastest bare ocpp loop", best, "messages/s")
    report.target("agent replay rate", agent_rate, ">=", TARGET_PER_S, "messages/s")
    report.target("agent / fastest bare ocpp loop", agent_rate / best, ">=", TARGET_RATIO, "x")
    report.note("per message both sides pay the ocpp library's jsonschema validation of the CALL and of its "
                "answer; the CSMS (same library, validating too)\nserves one call at a time, so the CSMS's "
                "CPU share above shows whether it, not the client, is the bottleneck")
    return report
