"""Pilot event -> contactor command, measured inside the running agent's code path.

The agent runs in this process: agent.app.run_agent itself, with agent.app.Station replaced by a subclass
that only installs the probes (sim board with 4 connectors, journal on disk, control socket and sim state
on tmpfs, the OCPP client connected to the bundled CSMS, which runs in a process of its own; asyncio with
no debug mode). All 4 connectors charge, with MeterValueSampleInterval = 1 (MeterValues at 1 Hz each, through
the journal). A driver task per connector then pins its simulated EV alternately to B and C at random
moments (uniform gaps), and probes time-stamp:

    event    the sim pilot shows the new state (SimBoard.set_ev_state returned)
    step     the control step that reads the change starts (Station.control_step)
    seen     controller.handle(PilotChanged) is entered        } "decision"
    decided  controller.handle returns                         }
    command  SetContactor reaches the HAL (contactor.set_closed, called from Station._execute)

The detection part (event -> step) is bounded by the control period: the HAL only offers polling
(ControlPilot.read(), no change notification), so an event waits for the next step.

Bench-only change: controller setting min_close_interval_s (1 s, protects the contactor from a chattering
EV) is set to 0, so that B->C closes at once and both directions measure the reaction, not that policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import random
import time
from dataclasses import dataclass

import agent.app
from agent import controller as ctl
from agent.config import load_config
from agent.station import Station
from bench.common import (
    RUNTIME_TMP,
    SIM_4,
    TAG,
    CsmsProcess,
    Report,
    distribution,
    scratch_dir,
    wait_for,
    write_agent_config,
)

TARGET_P99_MS = 2.0
GAP_S = (0.020, 0.060)  # per connector, between the command of one transition and the next event
TIMEOUT_S = 2.0

gc_pauses: list[float] = []
_gc_started = [0.0]


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        gc_pauses.append(time.perf_counter() - _gc_started[0])


def _context_switches() -> tuple[int, int]:
    """(voluntary, involuntary) context switches of this process so far."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.endswith("ctxt_switches\n") or "ctxt_switches:" in line:
                key, _, value = line.partition(":")
                values[key] = int(value)
    return values.get("voluntary_ctxt_switches", 0), values.get("nonvoluntary_ctxt_switches", 0)


@dataclass
class _Pending:
    event_at: float
    want_closed: bool
    done: asyncio.Future


@dataclass
class Sample:
    connector: int
    closed: bool
    event: float
    step: float
    seen: float
    decided: float
    command: float


class Probe:
    """Wraps Station.control_step, each controller's handle() and each contactor's set_closed()."""

    def __init__(self, station: Station):
        self.step_started = 0.0
        self.step_starts: list[float] = []
        self.step_durations: list[float] = []
        self.samples: list[Sample] = []
        self.pending: dict[int, _Pending | None] = {}
        self._decision: dict[int, tuple[float, float]] = {}
        self.recording = False
        original_step = station.control_step

        def control_step() -> None:
            started = time.perf_counter()
            self.step_started = started
            original_step()
            if self.recording:
                self.step_starts.append(started)
                self.step_durations.append(time.perf_counter() - started)

        station.control_step = control_step
        for cid, rt in station.connectors.items():
            self.pending[cid] = None
            self._wrap_handle(cid, rt.controller)
            self._wrap_contactor(cid, rt.hw.contactor)

    def _wrap_handle(self, cid: int, controller: ctl.ConnectorController) -> None:
        original = controller.handle

        def handle(event: ctl.Event, now: float) -> list[ctl.Command]:
            if not isinstance(event, ctl.PilotChanged):
                return original(event, now)
            seen = time.perf_counter()
            commands = original(event, now)
            self._decision[cid] = (seen, time.perf_counter())
            return commands

        controller.handle = handle

    def _wrap_contactor(self, cid: int, contactor) -> None:
        original = contactor.set_closed

        def set_closed(closed: bool) -> None:
            now = time.perf_counter()
            pending = self.pending[cid]
            if pending is not None and closed == pending.want_closed and cid in self._decision:
                seen, decided = self._decision.pop(cid)
                self.samples.append(Sample(cid, closed, pending.event_at, self.step_started, seen, decided, now))
                self.pending[cid] = None
                if not pending.done.done():
                    pending.done.set_result(None)
            original(closed)

        contactor.set_closed = set_closed


async def _drive(station: Station, probe: Probe, cid: int, transitions: int, seed: int) -> int:
    """Pin the EV of connector `cid` alternately to B and C; returns the transitions that timed out."""
    sim = station.board.simulator
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    state = "C"
    misses = 0
    for _ in range(transitions):
        await asyncio.sleep(rng.uniform(*GAP_S))
        state = "B" if state == "C" else "C"
        done = loop.create_future()
        sim.set_ev_state(state, cid)  # the sim saves its state file (tmpfs) here: not agent code, not timed
        probe.pending[cid] = _Pending(time.perf_counter(), state == "C", done)
        try:
            await asyncio.wait_for(done, TIMEOUT_S)
        except TimeoutError:
            misses += 1
            probe.pending[cid] = None
    return misses


def _probed_station_class(made: list):
    """agent.app.run_agent builds a Station; this subclass installs the probe as it is built."""

    class ProbedStation(Station):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self, Probe(self)))

    return ProbedStation


async def _measure(size: str, report: Report) -> None:
    transitions = 10_000 if size == "full" else 200
    csms = CsmsProcess()
    tags = [f"{TAG[:-2]}{cid:02d}" for cid in range(1, 5)]  # one card per connector (the same card would stop)
    csms.start(tags)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("evse.control").setLevel(logging.ERROR)  # the socket's group: not this figure's business
    made: list[tuple[Station, Probe]] = []
    real_station = agent.app.Station
    agent.app.Station = _probed_station_class(made)
    try:
        with scratch_dir("reaction") as workdir, scratch_dir("reaction-run", RUNTIME_TMP) as runtime:
            path = write_agent_config(workdir, csms.url, board_file=SIM_4, runtime_dir=runtime,
                                      log_level="warning", ocpp_keys={"MeterValueSampleInterval": 1})
            config = load_config(path)
            period_ms = config.charging.control_period_s * 1e3
            report.method(
                f"agent.app.run_agent in the bench process (Station subclassed only to install the probes) on "
                f"bench/sim-4.toml, journal on disk, runtime dir on tmpfs,\nOCPP client connected to LocalCsms "
                f"in its own process; all 4 connectors charging with MeterValueSampleInterval=1 (MeterValues "
                f"at 1 Hz each);\n{transitions} pilot transitions (EV pinned alternately B/C, random gaps "
                f"{GAP_S[0] * 1e3:.0f}-{GAP_S[1] * 1e3:.0f} ms per connector); control period {period_ms:g} ms "
                f"(agent default); log level warning;\nbench-only: min_close_interval_s = 0 (else B->C waits "
                f"1 s by policy)")
            runner = asyncio.create_task(agent.app.run_agent(config))
            await wait_for(lambda: bool(made), 20.0, "the station")
            station, probe = made[0]
            try:
                await wait_for(lambda: station.ocpp.accepted, 20.0, "BootNotification Accepted")
                sim = station.board.simulator
                for cid, rt in station.connectors.items():
                    sim.plug(cid)
                    await wait_for(lambda rt=rt: rt.controller.plugged, 5.0, "plug")
                    sim.swipe(tags[cid - 1])
                    await wait_for(lambda rt=rt: rt.controller.view().contactor_closed, 10.0, "Charging")
                    sim.set_ev_state("C", cid)
                for rt in station.connectors.values():
                    settings = dataclasses.replace(rt.controller.settings, min_close_interval_s=0.0)
                    station._dispatch(rt, ctl.SettingsChanged(settings))
                await asyncio.sleep(2.0)  # MeterValues flowing on every connector

                before = csms.counts()
                ctx0 = _context_switches()
                gc_pauses.clear()
                gc.callbacks.append(_gc_callback)
                probe.recording = True
                started = time.monotonic()
                per_connector = transitions // len(station.connectors)
                misses = await asyncio.gather(*(
                    _drive(station, probe, cid, per_connector, seed=cid) for cid in station.connectors))
                elapsed = time.monotonic() - started
                probe.recording = False
                gc.callbacks.remove(_gc_callback)
                ctx1 = _context_switches()
                after = csms.counts()
                pending_out = station.ocpp._outgoing.qsize()
                alive = all(rt.controller.transaction_active for rt in station.connectors.values())
            finally:
                await station.shutdown(stop_transactions=False)
                await runner
    finally:
        agent.app.Station = real_station
        csms.stop()

    samples = probe.samples
    report.figure("transitions measured", len(samples), "",
                  f"({sum(s.closed for s in samples)} B->C close, {sum(not s.closed for s in samples)} "
                  f"C->B open, {sum(misses)} timed out, {elapsed:.0f} s)")
    decision = distribution(report, "decision: controller.handle(PilotChanged)", [s.decided - s.seen for s in samples])
    seen_cmd = distribution(report, "seen -> command (handle + Station._execute)",
                            [s.command - s.seen for s in samples])
    path = distribution(report, "code path once seen: control step start -> command",
                        [s.command - s.step for s in samples])
    distribution(report, "detection wait: event -> control step start", [s.step - s.event for s in samples])
    full = distribution(report, "detection + decision: event -> command", [s.command - s.event for s in samples])
    distribution(report, "  C->B (open) only", [s.command - s.event for s in samples if not s.closed])
    distribution(report, "control step duration (4 connectors)", probe.step_durations)
    periods = [b - a for a, b in zip(probe.step_starts, probe.step_starts[1:], strict=False)]
    distribution(report, "control step period (target 10 ms: jitter)", periods)
    report.figure("event-loop stalls: control step periods > 20 ms", sum(p > 0.020 for p in periods), "",
                  f"(GC runs meanwhile: {len(gc_pauses)}, longest {max(gc_pauses, default=0) * 1e3:.1f} ms; "
                  f"involuntary context switches of the process: {ctx1[1] - ctx0[1]})")
    mv = after.get("MeterValues", 0) - before.get("MeterValues", 0)
    sn = after.get("StatusNotification", 0) - before.get("StatusNotification", 0)
    report.figure("OCPP load during the run", mv / elapsed, "MeterValues/s",
                  f"(+ {sn / elapsed:.0f} StatusNotification/s caused by the transitions; "
                  f"{pending_out} queued at the end; all transactions still running: {alive})")
    report.target("decision time p99", decision["p99"], "<=", TARGET_P99_MS, "ms")
    report.target("code path once the event is seen p99", path["p99"], "<=", TARGET_P99_MS, "ms")
    report.target("detection + decision p99", full["p99"], "<=", TARGET_P99_MS, "ms")
    if full["p99"] > TARGET_P99_MS:
        report.note(f"detection + decision cannot meet 2 ms with polling: an event waits for the next control "
                    f"step, up to the {period_ms:g} ms control period\n(plus event-loop delays); the HAL offers no "
                    f"change notification (ControlPilot has read() only), so no event-driven wake-up is possible "
                    f"without a HAL change.\nWhat the 2 ms target can mean is the code path once the event is seen "
                    f"(seen -> command: p99 {seen_cmd['p99']:.3f} ms)")


def run(size: str) -> Report:
    report = Report("reaction", "pilot event -> contactor command in the agent's code path", size)
    asyncio.run(_measure(size, report))
    return report
