"""The transaction recorder: a connector's transaction bookkeeping runs in one ordered worker per connector.
For a start the meter is read and the journal written (the commit is on disk), and only then does
TransactionRecorded go down to the controller (energy may flow) and the CSMS adapter's sender wake; a journal
that cannot be written faults every connector instead. Stops wait for the contactor to open and record
the final register; samples of a running transaction are journaled as they come."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from agent.control.channel import BoardInfo
from agent.core import controller as ctl
from agent.core.clock import utc_now
from agent.ocpp.v16.meter_values import meter_value, ocpp_timestamp, register_value
from agent.ocpp.v16.transactions import meter_value_from_v16
from agent.station.connector import ConnectorRuntime, TransactionOp
from agent.station.csms_link import CsmsLink
from agent.station.journal import Journal, JournalError, JournalValueError, TransactionRecord
from agent.station.settings import StationSettings
from hal.interfaces import CpState, MeterReading

log = logging.getLogger("evse.station")

JOURNAL_CHECK_PERIOD_S = 1.0


class TransactionRecorder:
    log: logging.Logger | logging.LoggerAdapter = log  # the station hands it its own (agent.logs)

    def __init__(self, connectors: dict[int, ConnectorRuntime], journal: Journal,
                 settings: StationSettings, dispatch: Callable[[ConnectorRuntime, ctl.Event], None],
                 read_meter: Callable[[ConnectorRuntime], Awaitable[MeterReading | None]],
                 csms: Callable[[], CsmsLink], control_lost: Callable[[], bool],
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], datetime] = utc_now):
        """`control_lost`: the control loop is gone (no contactor will be seen opening any more)."""
        self._connectors = connectors
        self._journal = journal
        self._settings = settings
        self._dispatch = dispatch
        self._read_meter = read_meter
        self._csms = csms
        self._control_lost = control_lost
        self._clock = clock
        self._wall_clock = wall_clock
        self.storage_error: str | None = None

    # ---- what the controllers decided -------------------------------------------------------------

    def start(self, rt: ConnectorRuntime, id_token: str, reservation_id: int | None) -> None:
        rt.ops.put_nowait(TransactionOp("start", id_token=id_token, reservation_id=reservation_id))

    def stop(self, rt: ConnectorRuntime, reason: ctl.StopReason, id_token: str | None) -> None:
        rt.ops.put_nowait(TransactionOp("stop", id_token=id_token, reason=reason.value))

    def transactions_active(self) -> bool:
        """A transaction runs, or its last journal write (StopTransaction) is still to be done."""
        return any(rt.controller.transaction_active or rt.local_tx is not None for rt in self._connectors.values())

    # ---- the worker -------------------------------------------------------------------------------

    async def worker(self, rt: ConnectorRuntime) -> None:
        """Start, sample and stop in the order the controller asked for them."""
        while True:
            op = await rt.ops.get()
            recorded = False
            try:
                if op.kind == "start":
                    await self._journal_start(rt, op)
                    recorded = True
                elif op.kind == "stop":
                    await self._journal_stop(rt, op)
                elif op.kind == "sample":
                    self._journal_sample(rt, op)
                self._csms().journal_changed()
            except JournalValueError as exc:  # one value the journal cannot hold: that write is refused
                self.log.error("connector %d: journal %s refused: %s", rt.id, op.kind, exc)
            except JournalError as exc:
                self.journal_failed(exc)
            except Exception:
                self.log.exception("connector %d: journal %s failed", rt.id, op.kind)
            finally:
                if op.kind == "start":  # every start is answered, in order: committed, or refused (no energy)
                    self._dispatch(rt, ctl.TransactionRecorded(ok=recorded))
                rt.ops.task_done()

    def journal_failed(self, exc: Exception) -> None:
        """The journal cannot be written (disk full, read-only, corrupt): nothing may charge unrecorded.
        Every connector faults, its contactor opens; a technician must fix the storage and restart."""
        if self.storage_error is None:
            self.storage_error = str(exc)
            self.log.critical("journal cannot be written: %s; all connectors are faulted until the agent is "
                              "restarted with working storage", exc)
        for rt in self._connectors.values():
            self._dispatch(rt, ctl.FaultChanged(ctl.Fault.STORAGE, True))

    async def journal_watch(self) -> None:
        """Deleted or replaced while running, the journal faults every connector even while nothing commits."""
        while True:
            if self.storage_error is None:
                try:
                    self._journal.check()
                except JournalError as exc:
                    self.journal_failed(exc)
            await asyncio.sleep(JOURNAL_CHECK_PERIOD_S)

    @staticmethod
    def _energy_now(rt: ConnectorRuntime, reading: MeterReading | None) -> float:
        if reading is not None:
            return reading.energy_wh
        return rt.last_reading.energy_wh if rt.last_reading else 0.0

    async def _journal_start(self, rt: ConnectorRuntime, op: TransactionOp) -> None:
        reading = await self._read_meter(rt)
        energy = self._energy_now(rt, reading)
        timestamp = ocpp_timestamp(self._wall_clock())
        rt.local_tx = self._journal.begin_transaction(rt.id, op.id_token or "", energy, timestamp,
                                                      reservation_id=op.reservation_id)
        rt.tx_begin = (energy, timestamp)  # durable now: the worker tells the controller it may offer energy
        interval = self._settings.meter_sample_interval_s
        rt.next_sample_at = self._clock() + interval if interval > 0 else None
        self.log.info("connector %d: transaction started for %s at %.0f Wh%s", rt.id, op.id_token, energy,
                      f" (reservation {op.reservation_id})" if op.reservation_id is not None else "")

    async def _journal_stop(self, rt: ConnectorRuntime, op: TransactionOp) -> None:
        if rt.local_tx is None:
            return
        await self.contactor_opened(rt)
        reading = await self._read_meter(rt)  # the contactor is open: this is the final register
        energy = self._energy_now(rt, reading)
        timestamp = ocpp_timestamp(self._wall_clock())
        transaction_data = []
        measurands = self._settings.stop_transaction_measurands
        if measurands and rt.tx_begin is not None:
            begin_wh, begin_ts = rt.tx_begin
            end = (meter_value(reading, measurands, "Transaction.End", timestamp) if reading
                   else register_value(energy, "Transaction.End", timestamp))
            transaction_data = [meter_value_from_v16(register_value(begin_wh, "Transaction.Begin", begin_ts)),
                                meter_value_from_v16(end)]
        # the register as the stop has always reported it (whole Wh); the reason in the journal's (neutral) words
        self._journal.end_transaction(rt.local_tx, round(energy), timestamp, op.reason or ctl.StopReason.LOCAL.value,
                                      id_token=op.id_token or None, meter_values=transaction_data)
        self.log.info("connector %d: transaction stopped (%s) at %.0f Wh", rt.id, op.reason, energy)
        rt.local_tx = None
        rt.tx_begin = None
        rt.next_sample_at = None

    async def contactor_opened(self, rt: ConnectorRuntime) -> None:
        """An orderly stop keeps the contactor closed until the EV leaves C (at most
        SessionSettings.stop_under_load_timeout_s): the final meter reading waits for it to open."""
        limit = rt.controller.settings.stop_under_load_timeout_s + 1.0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while rt.controller.contactor_commanded and not self._control_lost():
                    await asyncio.sleep(0.02)

    async def contactors_opened(self) -> None:
        """A reset is an orderly stop: the EVs get their time to leave C before the restart opens everything."""
        await asyncio.gather(*(self.contactor_opened(rt) for rt in self._connectors.values()))

    def _journal_sample(self, rt: ConnectorRuntime, op: TransactionOp) -> None:
        reading = op.reading
        if rt.local_tx is None or reading is None:
            return
        timestamp = op.timestamp or ocpp_timestamp(self._wall_clock())
        measurands = (self._settings.aligned_measurands if op.context == "Sample.Clock"
                      else self._settings.sampled_measurands)
        value = meter_value(reading, measurands, op.context, timestamp, rt.controller.offered_current_a())
        trigger = "meter_sample_clock" if op.context == "Sample.Clock" else "meter_sample_periodic"
        self._journal.add_meter_values(rt.local_tx, [meter_value_from_v16(value)], reading.energy_wh, timestamp,
                                       trigger)

    # ---- shutdown and recovery --------------------------------------------------------------------

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a while) until every queued journal write is done."""
        async def drained() -> None:
            for rt in self._connectors.values():
                await rt.ops.join()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await drained()

    async def flush(self, timeout: float = 5.0) -> None:
        """Give queued messages (a final StopTransaction) a moment to reach the CSMS; the journal keeps
        whatever could not be delivered for the next start."""
        deadline = time.monotonic() + timeout
        while self._journal.pending_count() and self._csms().accepted and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def recover(self, info: BoardInfo, resume: bool,
                on_resumed: Callable[[ConnectorRuntime, str], None]) -> None:
        """Close transactions a previous run left open: reason PowerLoss, last journaled meter value; or, with
        `resume` and the EV still plugged in, continue them (`on_resumed(rt, started_at)`)."""
        stop_measurands = self._settings.stop_transaction_measurands
        for tx in self._journal.running_transactions():
            if resume and self._resume(tx, info, on_resumed):
                continue
            registers = []
            if "Energy.Active.Import.Register" in stop_measurands:
                registers = [meter_value_from_v16(register_value(tx.meter_start, "Transaction.Begin", tx.started_at)),
                             meter_value_from_v16(register_value(tx.last_meter, "Transaction.End", tx.last_meter_at))]
            # the stop is at the last journaled register: the one in the transaction's last queued event
            self._journal.end_transaction(tx.local_id, round(tx.last_meter), tx.last_meter_at,
                                          ctl.StopReason.POWER_LOSS.value, meter_values=registers)
            self.log.warning("transaction %s on connector %d was interrupted: stopped with PowerLoss at %.0f Wh",
                             tx.csms_tx_id or f"local-{tx.local_id}", tx.connector_id, tx.last_meter)

    def _resume(self, tx: TransactionRecord, info: BoardInfo, on_resumed: Callable[[ConnectorRuntime, str], None]) -> bool:
        """Continue an interrupted transaction when its EV is still plugged in."""
        rt = self._connectors.get(tx.connector_id)
        if rt is None or rt.local_tx is not None:
            return False
        plugged = info.pilot_states.get(rt.id) in (CpState.B, CpState.C, CpState.D)
        if not plugged:
            return False
        rt.local_tx = tx.local_id
        rt.tx_begin = (tx.meter_start, tx.started_at)
        on_resumed(rt, tx.started_at)
        interval = self._settings.meter_sample_interval_s
        rt.next_sample_at = self._clock() + interval if interval > 0 else None
        self._dispatch(rt, ctl.ResumeTransaction(tx.id_token))
        self.log.warning("transaction %s on connector %d resumes after the restart (EV still plugged in)",
                         tx.csms_tx_id or f"local-{tx.local_id}", rt.id)
        return True
