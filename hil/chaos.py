"""Chaos run: many charging sessions on the sim board while the CSMS connection drops and the agent
process is killed (SIGKILL) at random moments; afterwards the CSMS's record is checked.

    python -m hil.chaos --sessions 50 --seed 1      # prints the figures; exit 1 if anything is wrong
    python -m hil.chaos --sessions 200              # the long version (about 9 minutes)

What it does
------------
A `LocalCsms` (with a record file) and the real agent process (`python -m agent run`, sim board, all
files in one work directory) with fast settings: MeterValueSampleInterval 1, reconnect back-off
0.2-1 s, AllowOfflineTxForUnknownId true (so a session also starts while the CSMS is away).
One task drives N sessions one after another: plug in, swipe the authorized card, charge 1-4 s,
stop by unplugging, by swiping the card again, or by RemoteStopTransaction from the CSMS, unplug.
A chaos task, at random moments from its own `random.Random(seed)`, either
* drops the CSMS connection (`csms.disconnect`), sometimes keeping the CSMS unreachable for
  0.5-3 s (`refuse_connections`), or
* kills the agent with SIGKILL, copies what the journal held at that moment, and starts the
  agent again on the same files (after 0-0.5 s);
either right away or as soon as the CSMS receives the next transaction message (when its answer
is most likely still on the way, or not yet committed by the agent).
At the end the CSMS stays reachable until the agent's journal is empty, then the record is checked.

Invariants checked (each violation is listed in `problems`)
-----------------------------------------------------------
Delivery is at-least-once: a message the CSMS received whose answer was lost (connection dropped
or agent killed before its journal committed the answer) is legitimately sent again. Such a repeat
is counted as *redelivered*, and only if it is exactly that case: the same content, the very next
journaled message the CSMS receives, on a later connection (one journal message in flight at a
time, so only the last one of a connection can be unanswered). A repeat right after a CALLERROR
is a *retried* attempt. Every other repeat is *duplicated*.
* No LOSS: every message the journal held at any kill reaches the CSMS (compared by content; the
  transactionId is filled in at send time); every session the agent reported as journaled, and
  every session during which the sim meter delivered energy, has a CSMS transaction; every
  transaction is stopped.
* No duplicate TRANSACTION: at most one live CSMS transaction per session. A redelivered
  StartTransaction makes this CSMS (which does not deduplicate StartTransaction) hand out a second
  transactionId; the first one is then an *orphan*: the agent never learnt it, so nothing else may
  refer to it. A deduplicating CSMS would return the same id. Orphans are counted, not failed.
* Each transaction: one StartTransaction, one StopTransaction, its MeterValues strictly in
  timestamp order between start and stop, none twice (after removing legitimate redeliveries).
* meterStart equals the sim register before the EV was plugged in (the contactor is open then).
* meterStop:
  - a stop the agent journaled while running (unplug, card, remote) equals the sim meter's
    register read (`sim.snapshot`) right after the agent reported the stop journaled, when no kill
    happened in between (otherwise it is not checked against the sim, see below);
  - a transaction interrupted by a kill is closed with reason PowerLoss at the *last journaled*
    meter value: the register of the last MeterValues the CSMS got for it (or meterStart if none),
    with that sample's timestamp. That is the honest invariant: the energy that flowed between the
    last journaled sample and the kill (at most one MeterValueSampleInterval) is not billed,
    because nothing durable recorded it; a real power cut stops the energy flow with it.
* Nothing unknown at the CSMS (no StopTransaction / MeterValues for an unknown transactionId), no
  protocol violations, and the journal empty at the end.

Known artefact of the sim board, reported as `meter_regressions`, not failed: the sim saves its
energy register at most once per second (and on plug/unplug), so a SIGKILL while charging can roll
the register back by up to a second of charging; the next transaction's meterStart is then below
the previous meterStop (or, with --resume, a resumed transaction's meterStop below its last
MeterValues). A real meter's register does not depend on the agent process.

The long version of the run, for a release or after touching the journal or the OCPP client:
`python -m hil.chaos --sessions 200` (about 9 minutes), also with `--resume` (interrupted sessions
continue after the restart, [charging] resume_after_power_loss). The test suite runs a bounded one
(tests/test_chaos.py, 8 sessions).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from agent.cli.control_socket import ControlClientError
from agent.ocpp.v16.meter_values import ocpp_timestamp
from agent.ocpp.v16.transactions import queued_wire_messages
from hil.agent_process import AgentProcess as HarnessProcess
from hil.agent_process import write_agent_config
from hil.csms import Frame, LocalCsms, StationNotConnected

STATION_ID = "CP-CHAOS"
TAG = "04C4A05C01"  # as the sim reader reports UIDs: uppercase hex
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
# everything the agent sends through its journal: one FIFO, one message in flight
JOURNALED_ACTIONS = (*TX_ACTIONS, "SecurityEventNotification")
CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_SAMPLE_GAP_S = 3.0  # MeterValueSampleInterval is 1 s (+ 0.2 s meter poll); room for a loaded machine
STOP_REASONS = {"unplug": {"EVDisconnected"}, "swipe": {"Local"}, "remote": {"Remote"}}

# fast sampling and retries, offline sessions allowed (sessions also start during an outage)
OCPP_KEYS = {
    "MeterValueSampleInterval": 1, "HeartbeatInterval": 60, "TransactionMessageRetryInterval": 1,
    "TransactionMessageAttempts": 3, "MessageTimeout": 10, "ConnectionTimeOut": 60,
    "AllowOfflineTxForUnknownId": True,
}


@dataclass
class ChaosFigures:
    sessions: int = 0
    kills: int = 0
    outages: int = 0
    transactions: int = 0  # live CSMS transactions (orphans not counted)
    lost: int = 0
    duplicated: int = 0
    redelivered: int = 0
    retried: int = 0  # sent again after a CALLERROR (not expected from this CSMS, legitimate anyway)
    elapsed_s: float = 0.0
    interrupted_sessions: int = 0  # sessions a kill hit between plug-in and the end of the session
    power_loss_stops: int = 0
    orphan_transactions: int = 0
    meter_stops_checked: int = 0  # meterStop compared with the sim register or the last journaled value
    meter_regressions: int = 0  # sim artefact, see the module docstring
    agent_crashes: int = 0  # the agent exited without being killed
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = [f"{name:22} {value:.1f}" if isinstance(value, float) else f"{name:22} {value}"
                 for name, value in asdict(self).items() if name != "problems"]
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines.extend(f"  - {problem}" for problem in self.problems[:50])
        else:
            lines.append("problems               none")
        return "\n".join(lines)


@dataclass
class _Session:
    number: int
    stop_method: str
    charge_s: float
    opened_at: str = ""  # OCPP timestamps bounding everything that belongs to this session
    closed_at: str = ""
    energy_before: float | None = None
    energy_after: float | None = None
    expected_reasons: set[str] = field(default_factory=set)
    expected_meter_stop: int | None = None
    journaled: bool = False  # the agent reported the transaction as journaled
    interrupted: bool = False


@dataclass
class _JournalCopy:
    kill: int
    outbox: list[tuple[int, str, dict]]  # (seq, action, payload without transactionId)
    transactions: list[dict]


class _Interrupted(Exception):
    """The agent was killed (or is down) while a session step was running."""


class AgentProcess(HarnessProcess):
    """The agent as a station runs it, in `workdir`, debug-logged; SIGKILL and start again on the same files."""

    ready_timeout_s = 20.0  # a start after a kill, on a loaded machine

    def __init__(self, workdir: Path, config: Path):
        super().__init__(workdir, config, log_level="debug")


def read_journal(workdir: Path) -> tuple[list[dict], list[tuple[int, str, dict]]]:
    """(transactions rows, outbox (seq, action, payload)) of a stopped agent.

    Read from a copy of the database and its WAL, so nothing of the agent's own files is touched
    (no -shm file appears next to a journal that runs in exclusive-lock mode)."""
    source = workdir / "state" / "journal.sqlite"
    with tempfile.TemporaryDirectory(prefix="evse-chaos-journal-") as tmp:
        copy = Path(tmp) / source.name
        shutil.copyfile(source, copy)
        wal = source.with_name(source.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        db = sqlite3.connect(copy)
        db.row_factory = sqlite3.Row
        try:
            transactions = [dict(row) for row in db.execute("SELECT * FROM transactions ORDER BY local_id")]
            outbox = queued_wire_messages(db)
        finally:
            db.close()
    return transactions, outbox


def _register_wh(meter_values_payload: dict) -> int | None:
    """Energy.Active.Import.Register of the last meterValue entry of a MeterValues payload."""
    for value in meter_values_payload["meterValue"][-1]["sampledValue"]:
        if value.get("measurand") == "Energy.Active.Import.Register":
            return int(round(float(value["value"])))
    return None


def _parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _content(action: str, payload: dict) -> tuple[str, str]:
    return action, json.dumps(payload, sort_keys=True)


def _without_tx_id(payload: dict) -> dict:
    return {k: v for k, v in payload.items() if k != "transactionId"}


class ChaosRun:
    def __init__(self, sessions: int = 50, seed: int = 1, workdir: Path | None = None, *,
                 charge_s: tuple[float, float] = (1.0, 4.0), chaos_every_s: tuple[float, float] = (1.0, 3.0),
                 resume: bool = False, log: Callable[[str], None] | None = None):
        self.session_count = sessions
        self.resume = resume  # [charging] resume_after_power_loss: an interrupted session continues
        self.seed = seed
        self.workdir = Path(workdir) if workdir is not None else None
        self.charge_s = charge_s
        self.chaos_every_s = chaos_every_s
        self._log = log or (lambda line: None)
        self.session_rng = random.Random(f"sessions-{seed}")
        self.chaos_rng = random.Random(f"chaos-{seed}")
        self.figures = ChaosFigures()
        self.sessions: list[_Session] = []
        self.journal_copies: list[_JournalCopy] = []
        self.connection_starts: list[int] = []  # frame index at which each station connection began
        self.kills = 0
        self.kill_times: list[float] = []  # wall clock of each kill
        self._up = asyncio.Event()
        self._done = asyncio.Event()
        self._current: _Session | None = None
        self.csms: LocalCsms | None = None
        self.agent: AgentProcess | None = None

    # ---- the run ----------------------------------------------------------------------------------

    async def run(self) -> ChaosFigures:
        started = time.monotonic()
        assert self.workdir is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.csms = LocalCsms(authorized_tags={TAG: "Accepted"}, boot_interval=60,
                              record_path=self.workdir / "csms.jsonl", echo=self._on_csms_line)
        await self.csms.start()
        config = write_agent_config(
            self.workdir, self.csms.url, station_id=STATION_ID, vendor="ChaosVendor", model="ChaosModel",
            ocpp_keys=OCPP_KEYS, charging={"max_current_a": 16, "meter_poll_s": 0.2,
                                           "resume_after_power_loss": self.resume})
        self.agent = AgentProcess(self.workdir, config)
        self.agent.start()
        chaos = None
        try:
            await self.agent.ready()
            self._up.set()
            await self.csms.wait_connected(STATION_ID, timeout=15)
            chaos = asyncio.create_task(self._chaos(), name="chaos")
            for number in range(1, self.session_count + 1):
                session = _Session(number, self.session_rng.choice(list(STOP_REASONS)),
                                   self.session_rng.uniform(*self.charge_s))
                self.sessions.append(session)
                await self._run_session(session)
                self._log(f"session {number}: {session.stop_method}, {session.charge_s:.1f} s"
                          f"{' (interrupted)' if session.interrupted else ''}")
                if chaos.done():
                    chaos.result()  # a failure in the chaos task ends the run
            self._done.set()
            await chaos
            await self._drain()
        except Exception as exc:
            self.figures.problems.append(f"run aborted: {type(exc).__name__}: {exc}")
        finally:
            self._done.set()
            if chaos is not None and not chaos.done():
                chaos.cancel()
                with contextlib.suppress(BaseException):
                    await chaos
            await self.agent.stop()
            with contextlib.suppress(Exception):
                self._check_journal_empty()
            await self.csms.stop()
        self._check()
        self.figures.sessions = len(self.sessions)
        self.figures.kills = self.kills
        self.figures.interrupted_sessions = sum(s.interrupted for s in self.sessions)
        self.figures.elapsed_s = time.monotonic() - started
        return self.figures

    def _on_csms_line(self, line: str) -> None:
        if line.startswith(f"{STATION_ID} connected from"):
            self.connection_starts.append(len(self.csms.frames))

    async def _drain(self) -> None:
        """Let the agent deliver everything: CSMS reachable, wait for an empty journal."""
        self.csms.refuse_connections = False
        await self._wait_up()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                status = await self.agent.cmd("status")
            except (ControlClientError, OSError, ValueError):
                status = None
            if status and status["ocpp"]["connected"] and status["journal"]["pending"] == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("the journal did not empty within 90 s after the last session")
        await asyncio.sleep(1.0)  # room for a late duplicate to show up

    def _check_journal_empty(self) -> None:
        """After the orderly stop: no transaction left, no transaction message queued (a message the
        shutdown itself queues, such as a security event, is not the run's business)."""
        transactions, outbox = read_journal(self.workdir)
        outbox = [action for _, action, _ in outbox if action in TX_ACTIONS]
        if outbox:
            self.figures.problems.append(f"journal not empty at the end: {len(outbox)} queued messages")
        if transactions:
            self.figures.problems.append(f"journal not empty at the end: {len(transactions)} transactions")

    # ---- chaos ------------------------------------------------------------------------------------

    async def _chaos(self) -> None:
        rng = self.chaos_rng
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), rng.uniform(*self.chaos_every_s))
                return
            action = rng.choices(["outage", "outage_on_tx", "kill", "kill_on_tx"], weights=[3, 2, 2, 3])[0]
            if action.endswith("_on_tx"):  # right after the CSMS got a transaction message
                frames = len(self.csms.frames)
                with contextlib.suppress(TimeoutError):
                    await self.csms.wait_frame(
                        lambda f: f.direction == "in" and f.message_type == CALL and f.action in TX_ACTIONS,
                        timeout=3.0, since=frames)
            try:
                if action.startswith("outage"):
                    await self._outage(rng.uniform(0.5, 3.0) if rng.random() < 0.6 else 0.0)
                else:
                    await self._kill_and_restart(rng.uniform(0.0, 0.5))
            except Exception as exc:  # noted; the sessions must not wait for an agent nobody restarts
                self.figures.problems.append(f"chaos step {action} failed: {type(exc).__name__}: {exc}")
                self.csms.refuse_connections = False
                if not self.agent.running:
                    self.agent.start()
                    await self.agent.ready()
                self._up.set()

    async def _outage(self, refuse_s: float) -> None:
        if not self.csms.is_connected(STATION_ID):
            return
        self.csms.refuse_connections = refuse_s > 0
        try:
            await self.csms.disconnect(STATION_ID)
        except (StationNotConnected, TimeoutError):
            self.csms.refuse_connections = False
            return
        self.figures.outages += 1
        self._log(f"outage {self.figures.outages}: {refuse_s:.1f} s unreachable")
        if refuse_s:
            await asyncio.sleep(refuse_s)
        self.csms.refuse_connections = False

    async def _kill_and_restart(self, delay_s: float) -> None:
        if not self.agent.running:
            return
        self._up.clear()
        self.kills += 1
        self.kill_times.append(time.time())
        self.agent.kill9()
        transactions, outbox = read_journal(self.workdir)
        self.journal_copies.append(_JournalCopy(
            self.kills, [(seq, action, _without_tx_id(payload)) for seq, action, payload in outbox], transactions))
        self._log(f"kill {self.kills}: journal held {len(outbox)} messages, {len(transactions)} transactions")
        await asyncio.sleep(delay_s)
        self.agent.start()
        await self.agent.ready()
        self._up.set()

    async def _wait_up(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._up.wait(), 60)
            except TimeoutError:
                raise TimeoutError("the agent did not come back within 60 s after a kill") from None
            if self.agent.running:
                return
            # not killed by us: a crash. Note it and carry on, the journal must still hold everything.
            self._up.clear()
            self.figures.agent_crashes += 1
            self.figures.problems.append(f"agent exited by itself with code {self.agent.proc.returncode}")
            self.agent.start()
            await self.agent.ready()
            self._up.set()

    # ---- sessions ---------------------------------------------------------------------------------

    async def _cmd(self, kills: int, cmd: str, **args):
        if not self._up.is_set() or self.kills != kills:
            raise _Interrupted()
        try:
            result = await self.agent.cmd(cmd, **args)
        except (ControlClientError, OSError, ValueError) as exc:
            if self.agent.running and self._up.is_set() and self.kills == kills:
                raise  # a real error of a running agent
            raise _Interrupted() from exc
        if self.kills != kills:
            raise _Interrupted()
        return result

    async def _connector(self, kills: int) -> dict:
        connector = (await self._cmd(kills, "status"))["connectors"][0]
        if self._current is not None and connector["transaction_active"] \
                and connector["session_energy_wh"] is not None:
            self._current.journaled = True  # the station's view is backed by a journal row
        return connector

    async def _wait_connector(self, kills: int, predicate, what: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self._connector(kills)
            if predicate(last):
                return last
            await asyncio.sleep(0.05)
        raise TimeoutError(f"session {self._current.number if self._current else '-'}: timed out waiting "
                           f"for {what}; last: {last}")

    async def _energy(self, kills: int) -> float:
        return (await self._cmd(kills, "sim.snapshot"))["connectors"][0]["energy_wh"]

    async def _settle(self) -> float:
        """EV unplugged, connector Available and idle, nothing being journaled; returns the register."""
        while True:
            await self._wait_up()
            kills = self.kills
            try:
                snapshot = await self._cmd(kills, "sim.snapshot")
                if snapshot["connectors"][0]["plugged"]:
                    await self._cmd(kills, "sim.unplug")
                await self._wait_connector(
                    kills, lambda c: c["status"] == "Available" and not c["transaction_active"]
                    and c["session_energy_wh"] is None, "an idle connector")
                return await self._energy(kills)
            except _Interrupted:
                continue

    async def _run_session(self, s: _Session) -> None:
        self._current = s
        s.opened_at = ocpp_timestamp()
        s.energy_before = await self._settle()
        kills = self.kills
        try:
            await self._cmd(kills, "sim.plug")
            await self._wait_connector(kills, lambda c: c["status"] == "Preparing", "Preparing")
            await self._cmd(kills, "sim.swipe", tag=TAG)
            await self._wait_connector(kills, lambda c: c["transaction_active"] and c["contactor_closed"],
                                       "charging")
            until = time.monotonic() + s.charge_s
            while time.monotonic() < until:
                await self._connector(kills)
                await asyncio.sleep(0.2)
            await self._stop(kills, s)
            await self._wait_connector(kills, lambda c: not c["transaction_active"]
                                       and c["session_energy_wh"] is None, "the stop to be journaled")
            s.expected_meter_stop = round(await self._energy(kills))
        except _Interrupted:
            s.interrupted = True
        s.energy_after = await self._settle()
        if self.kills != kills:
            s.interrupted = True
        s.closed_at = ocpp_timestamp()
        self._current = None

    async def _stop(self, kills: int, s: _Session) -> None:
        s.expected_reasons = set(STOP_REASONS[s.stop_method])
        if s.stop_method == "remote":
            transaction_id = (await self._connector(kills))["transaction_id"]
            if transaction_id is not None and self.csms.is_connected(STATION_ID):
                try:
                    answer = await self.csms.call(STATION_ID, "RemoteStopTransaction",
                                                  {"transactionId": transaction_id}, timeout=5.0)
                    if answer["status"] == "Accepted":
                        return
                except Exception:  # not connected, timed out, CALLERROR: fall back to unplugging
                    pass
            # not possible now (offline, Start not confirmed yet) or the answer was lost: unplug, which
            # stops the session whether or not the remote stop got through
            s.expected_reasons |= STOP_REASONS["unplug"]
            await self._cmd(kills, "sim.unplug")
        elif s.stop_method == "swipe":
            await self._cmd(kills, "sim.swipe", tag=TAG)
        else:
            await self._cmd(kills, "sim.unplug")

    # ---- the check --------------------------------------------------------------------------------

    def _problem(self, kind: str, text: str) -> None:
        self.figures.problems.append(text)
        if kind == "lost":
            self.figures.lost += 1
        elif kind == "duplicated":
            self.figures.duplicated += 1

    def _connection_of(self, frame: Frame) -> int:
        return bisect.bisect_right(self.connection_starts, frame.index) - 1

    def _check(self) -> None:
        csms = self.csms
        calls = [f for f in csms.frames if f.direction == "in" and f.message_type == CALL
                 and f.action in JOURNALED_ACTIONS and f.station_id == STATION_ID]
        answers = {f.unique_id: f.payload for f in csms.frames
                   if f.direction == "out" and f.message_type == CALLRESULT and f.station_id == STATION_ID}
        refused = {f.unique_id for f in csms.frames
                   if f.direction == "out" and f.message_type == CALLERROR and f.station_id == STATION_ID}

        # 1. repeats: legitimate redelivery (the in-flight message of a connection that ended) or not
        previous: dict[tuple[str, str], int] = {}  # content -> position in calls of its last copy
        copies: dict[tuple[str, str], list[Frame]] = {}
        unique: list[Frame] = []
        for position, frame in enumerate(calls):
            key = _content(frame.action, frame.payload)
            copies.setdefault(key, []).append(frame)
            if key not in previous:
                unique.append(frame)
            else:
                before = calls[previous[key]]
                if previous[key] == position - 1 and before.unique_id in refused:
                    self.figures.retried += 1  # TransactionMessageAttempts after a CALLERROR (§3.7.1)
                elif previous[key] == position - 1 and self._connection_of(before) < self._connection_of(frame):
                    self.figures.redelivered += 1
                else:
                    self._problem("duplicated", f"{frame.action} received again (frames {before.index} and "
                                                f"{frame.index}) without a lost answer in between: {frame.raw}")
            previous[key] = position

        # 2. transactions: the last copy of a StartTransaction is the live one, earlier copies are orphans
        live: dict[int, Frame] = {}  # CSMS transactionId -> its StartTransaction
        orphans: set[int] = set()
        for frame in unique:
            if frame.action != "StartTransaction":
                continue
            ids = [answers.get(copy.unique_id, {}).get("transactionId")
                   for copy in copies[_content(frame.action, frame.payload)]]
            if ids[-1] is None:
                self._problem("lost", f"StartTransaction without an answer from the CSMS: {frame.raw}")
                continue
            live[ids[-1]] = frame
            orphans.update(i for i in ids[:-1] if i is not None)
        self.figures.transactions = len(live)
        self.figures.orphan_transactions = len(orphans)

        by_tx: dict[int, dict[str, list[Frame]]] = {}
        for frame in unique:
            if frame.action not in ("MeterValues", "StopTransaction"):
                continue
            transaction_id = frame.payload.get("transactionId")
            if transaction_id in orphans:
                self._problem("duplicated", f"{frame.action} refers to orphan transaction {transaction_id}")
            elif transaction_id not in live:
                self._problem("lost", f"{frame.action} for unknown transaction {transaction_id}: {frame.raw}")
            else:
                by_tx.setdefault(transaction_id, {}).setdefault(frame.action, []).append(frame)

        # 3. per transaction: one stop, MeterValues in order, meterStop as it must be
        for transaction_id, start in sorted(live.items()):
            frames = by_tx.get(transaction_id, {})
            stops = frames.get("StopTransaction", [])
            meter_values = frames.get("MeterValues", [])
            if not stops:
                self._problem("lost", f"transaction {transaction_id} was never stopped")
                continue
            if len(stops) > 1:
                self._problem("duplicated", f"transaction {transaction_id} stopped {len(stops)} times: "
                                            + " | ".join(f.raw for f in stops))
            stop = stops[0].payload
            stamps = [f.payload["meterValue"][0]["timestamp"] for f in meter_values]
            if stamps != sorted(stamps) or len(set(stamps)) != len(stamps):
                self._problem("duplicated", f"transaction {transaction_id}: MeterValues out of order: {stamps}")
            if stamps and not (start.payload["timestamp"] <= stamps[0] and stamps[-1] <= stop["timestamp"]):
                self._problem("other", f"transaction {transaction_id}: MeterValues outside start..stop")
            # samples are journaled every MeterValueSampleInterval (1 s), online or not, until the stop
            # (a PowerLoss stop carries the last sample's time): a longer gap is a lost MeterValues
            # (a transaction resumed after a restart has a hole where the agent was dead)
            times = [_parse_time(t) for t in [start.payload["timestamp"], *stamps, stop["timestamp"]]]
            gap = max((b - a for a, b in zip(times, times[1:], strict=False)
                       if not any(a <= kill <= b for kill in self.kill_times)), default=0.0)
            if gap > MAX_SAMPLE_GAP_S:
                self._problem("lost", f"transaction {transaction_id}: {gap:.1f} s without MeterValues")
            registers = [_register_wh(f.payload) for f in meter_values] + [stop["meterStop"]]
            if registers != sorted(registers):  # a register rolled back by a kill (sim artefact)
                self.figures.meter_regressions += 1
            if stop.get("reason") == "PowerLoss":
                self.figures.power_loss_stops += 1
                self.figures.meter_stops_checked += 1
                if meter_values:
                    expected = (_register_wh(meter_values[-1].payload), stamps[-1])
                else:
                    expected = (start.payload["meterStart"], start.payload["timestamp"])
                if (stop["meterStop"], stop["timestamp"]) != expected:
                    # a later stop than the last sample received means a journaled sample went missing
                    self._problem("lost" if stop["timestamp"] > expected[1] else "other",
                                  f"transaction {transaction_id}: PowerLoss stop at {stop['meterStop']} Wh "
                                  f"{stop['timestamp']}, last journaled sample received {expected}")

        # 4. sessions: each has at most one transaction, every journaled or energy-delivering one has one
        starts_by_time = sorted((f.payload["timestamp"], tid) for tid, f in live.items())
        claimed: set[int] = set()
        previous_stop: int | None = None
        for s in self.sessions:
            mine = [tid for stamp, tid in starts_by_time if s.opened_at <= stamp <= s.closed_at]
            claimed.update(mine)
            delivered = (s.energy_after or 0.0) - (s.energy_before or 0.0)
            if len(mine) > 1:
                self._problem("duplicated", f"session {s.number}: {len(mine)} transactions {mine}")
            if not mine:
                if s.journaled:
                    self._problem("lost", f"session {s.number}: journaled, but the CSMS never heard of it")
                elif delivered >= 1.0:
                    self._problem("lost", f"session {s.number}: {delivered:.1f} Wh delivered, no transaction")
                continue
            start = live[mine[0]].payload
            stop_frames = by_tx.get(mine[0], {}).get("StopTransaction", [])
            if s.energy_before is not None and start["meterStart"] != round(s.energy_before):
                self._problem("other", f"session {s.number}: meterStart {start['meterStart']}, sim register "
                                       f"{s.energy_before:.1f} Wh")
            if previous_stop is not None and start["meterStart"] < previous_stop:
                self.figures.meter_regressions += 1
            if not stop_frames:
                continue
            stop = stop_frames[0].payload
            previous_stop = stop["meterStop"]
            if stop.get("reason") != "PowerLoss" and s.expected_meter_stop is not None:
                self.figures.meter_stops_checked += 1
                if stop["meterStop"] != s.expected_meter_stop:
                    self._problem("other", f"session {s.number}: meterStop {stop['meterStop']}, sim register "
                                           f"{s.expected_meter_stop} Wh at the stop")
                if stop.get("reason") not in s.expected_reasons:
                    self._problem("other", f"session {s.number}: stop reason {stop.get('reason')}, expected "
                                           f"{sorted(s.expected_reasons)}")
        for tid in sorted(set(live) - claimed):
            self._problem("other", f"transaction {tid} started outside every session: {live[tid].raw}")

        # 5. everything the journal held at a kill reached the CSMS
        received = {(f.action, json.dumps(_without_tx_id(f.payload), sort_keys=True)) for f in csms.frames
                    if f.direction == "in" and f.message_type == CALL and f.station_id == STATION_ID}
        missing: set[tuple[str, str]] = set()
        for copy in self.journal_copies:
            for seq, action, payload in copy.outbox:
                key = (action, json.dumps(payload, sort_keys=True))
                if key not in received and key not in missing:
                    missing.add(key)
                    self._problem("lost", f"{action} (journal seq {seq}, held at kill {copy.kill}) never "
                                          f"reached the CSMS: {payload}")
            for row in copy.transactions:
                if row["csms_tx_id"] is not None and int(row["csms_tx_id"]) not in live:
                    self._problem("lost", f"journaled transaction {row['csms_tx_id']} (kill {copy.kill}) is not "
                                          "a live transaction at the CSMS")

        # 6. nothing unknown, no protocol violations
        for frame in csms.unknown_stops:
            self._problem("lost", f"StopTransaction for an unknown transaction: {frame.raw}")
        for frame in csms.other_meter_values:
            self._problem("lost", f"MeterValues without a known transaction: {frame.raw}")
        for violation in csms.violations:
            self._problem("other", f"protocol violation {violation.kind}: {violation.detail}")


async def run_chaos(sessions: int = 50, seed: int = 1, workdir: Path | None = None, **kwargs) -> ChaosFigures:
    """Run the chaos run in `workdir` (a temporary directory, removed afterwards, if None)."""
    if workdir is not None:
        return await ChaosRun(sessions, seed, workdir, **kwargs).run()
    with tempfile.TemporaryDirectory(prefix="evse-chaos-") as tmp:
        return await ChaosRun(sessions, seed, Path(tmp), **kwargs).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path,
                        help="keep the agent log, journal and CSMS record here (default: a temporary "
                             "directory, kept only when the run fails)")
    parser.add_argument("--resume", action="store_true",
                        help="resume_after_power_loss = true: a session hit by a kill continues after the restart")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per session, kill and outage")
    args = parser.parse_args(argv)
    log = (lambda line: print(line, flush=True)) if args.verbose else None
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="evse-chaos-"))
    figures = asyncio.run(ChaosRun(args.sessions, args.seed, workdir, resume=args.resume, log=log).run())
    print(figures.report())
    if figures.ok and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not figures.ok:
        print(f"agent log, journal and CSMS record kept in {workdir}")
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())
