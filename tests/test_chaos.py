"""The chaos run, bounded: a few charging sessions on the sim board while the CSMS connection drops and
the agent process is killed with SIGKILL at random moments; then the CSMS's record is checked (see
hil/chaos.py for the invariants). The long version: `python -m hil.chaos --sessions 200`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from hil.chaos import CALL, CALLERROR, CALLRESULT, STATION_ID, ChaosRun, _JournalCopy, _Session, run_chaos
from hil.csms import Frame


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_chaos_no_loss_no_duplicate(tmp_path):
    figures = await run_chaos(sessions=8, seed=1, workdir=tmp_path)
    report = figures.report() + f"\n(agent log, journal and CSMS record in {tmp_path})"
    assert figures.sessions == 8, report
    assert figures.kills >= 1 and figures.outages >= 1, report
    assert figures.transactions >= 1, report
    assert figures.lost == 0, report
    assert figures.duplicated == 0, report
    assert figures.problems == [], report


# ---- the checker itself, on hand-made CSMS records (fast) -------------------------------------------

T0 = "2026-01-01T10:00:0"


def _frame(index: int, direction: str, kind: int, uid: str, action: str, payload: dict) -> Frame:
    raw = json.dumps([kind, uid, action, payload] if kind == CALL else [kind, uid, payload])
    if kind == CALLERROR:
        payload = {"errorCode": "InternalError", "errorDescription": "", "errorDetails": {}}
    return Frame(index, STATION_ID, direction, kind, uid, action, payload, raw, datetime.now(UTC))


def _record(*messages, boundaries=(0,)) -> ChaosRun:
    """A ChaosRun whose CSMS received `messages` ((action, payload, answer) in order), each answered
    (None: with a CALLERROR); `boundaries` are the positions (in messages) where a new connection began."""
    frames, starts = [], []
    for position, (action, payload, answer) in enumerate(messages):
        if position in boundaries:
            starts.append(len(frames))
        uid = f"m{position}"
        frames.append(_frame(len(frames), "in", CALL, uid, action, payload))
        frames.append(_frame(len(frames), "out", CALLRESULT if answer is not None else CALLERROR, uid, action,
                             answer))
    run = ChaosRun(sessions=1, seed=0)
    run.csms = SimpleNamespace(frames=frames, unknown_stops=[], other_meter_values=[], violations=[])
    run.connection_starts = starts
    session = _Session(1, "unplug", 1.0, opened_at=T0 + "0.000Z", closed_at=T0 + "9.000Z")
    run.sessions = [session]
    return run


START = ("StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 5, "timestamp": T0 + "1.000Z"},
         {"transactionId": 100, "idTagInfo": {"status": "Accepted"}})
SAMPLE = ("MeterValues", {"connectorId": 1, "transactionId": 100, "meterValue": [
    {"timestamp": T0 + "2.000Z", "sampledValue": [{"value": "7", "measurand": "Energy.Active.Import.Register"}]}]},
    {})
STOP = ("StopTransaction", {"transactionId": 100, "meterStop": 8, "timestamp": T0 + "2.500Z",
                            "reason": "EVDisconnected"}, {})


def test_checker_accepts_a_clean_record():
    run = _record(START, SAMPLE, STOP)
    run._check()
    assert run.figures.problems == [] and run.figures.transactions == 1


def test_checker_counts_a_resend_after_a_lost_answer_as_redelivered_not_duplicated():
    run = _record(START, SAMPLE, STOP, STOP, boundaries=(0, 3))  # the Stop's answer died with the link
    run._check()
    assert (run.figures.redelivered, run.figures.duplicated, run.figures.problems) == (1, 0, [])


def test_checker_counts_a_resend_after_a_callerror_as_retried():
    run = _record(START, SAMPLE, (STOP[0], STOP[1], None), STOP)
    run._check()
    assert (run.figures.retried, run.figures.duplicated, run.figures.problems) == (1, 0, [])


def test_checker_flags_a_resend_on_the_same_connection_or_out_of_turn_as_duplicated():
    run = _record(START, SAMPLE, STOP, STOP)  # same connection: the answer had arrived
    run._check()
    assert run.figures.duplicated == 1
    run = _record(START, SAMPLE, STOP, SAMPLE, boundaries=(0, 3))  # not the message in flight at the cut
    run._check()
    assert run.figures.duplicated >= 1


def test_checker_a_redelivered_start_leaves_an_orphan_that_nothing_may_use():
    again = (START[0], START[1], {"transactionId": 101, "idTagInfo": {"status": "Accepted"}})
    sample, stop = (dict(SAMPLE[1], transactionId=101), dict(STOP[1], transactionId=101))
    run = _record(START, again, ("MeterValues", sample, {}), ("StopTransaction", stop, {}), boundaries=(0, 1))
    run._check()
    assert (run.figures.orphan_transactions, run.figures.problems) == (1, [])
    run = _record(START, again, SAMPLE, ("StopTransaction", stop, {}), boundaries=(0, 1))  # uses the orphan
    run._check()
    assert run.figures.duplicated == 1


def test_checker_flags_lost_messages():
    run = _record(START, STOP)  # 1.5 s from start to stop without a sample is fine ...
    run._check()
    assert run.figures.lost == 0
    late_stop = ("StopTransaction", dict(STOP[1], timestamp=T0 + "6.000Z"), {})
    run = _record(START, SAMPLE, late_stop)  # ... 4 s without one is a lost MeterValues
    run._check()
    assert run.figures.lost == 1
    run = _record(START, SAMPLE)  # never stopped
    run._check()
    assert run.figures.lost == 1
    run = _record(START, STOP)  # a journaled message held at a kill that never arrived
    run.journal_copies = [_JournalCopy(1, [(7, "MeterValues", {k: v for k, v in SAMPLE[1].items()
                                                               if k != "transactionId"})], [])]
    run._check()
    assert run.figures.lost == 1


def test_checker_power_loss_stop_must_carry_the_last_journaled_sample():
    power_loss = dict(STOP[1], reason="PowerLoss", meterStop=7, timestamp=T0 + "2.000Z")
    run = _record(START, SAMPLE, ("StopTransaction", power_loss, {}))
    run._check()
    assert run.figures.problems == [] and run.figures.power_loss_stops == 1
    run = _record(START, SAMPLE, ("StopTransaction", dict(power_loss, meterStop=9), {}))
    run._check()
    assert run.figures.problems
