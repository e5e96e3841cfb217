"""Durable journal append rate, with the durability the agent uses, on a real (disk-backed) file.

* MeterValues: Journal.add_meter_values, one write-back commit each (WAL, synchronous=NORMAL: no fsync),
  as agent.station.recorder journals every periodic sample.
* Start/Stop: Journal.begin_transaction + end_transaction, one fsynced commit each (synchronous=FULL).
Both queue one outgoing message per commit, so commits/s = messages/s.
"""

from __future__ import annotations

import os
import time

from agent.ocpp.v16.config import KEYS
from agent.ocpp.v16.meter_values import meter_value, ocpp_timestamp
from agent.ocpp.v16.transactions import meter_value_from_v16
from agent.station.journal import Journal
from bench.common import DISK_TMP, TAG, Report, filesystem_of, scratch_dir
from hal.interfaces import MeterReading

TARGET_PER_S = 2000.0


def sample_value(energy_wh: float, timestamp: str) -> list[dict]:
    """One meter value as the agent journals a periodic sample, with the default measurands."""
    reading = MeterReading(energy_wh=energy_wh, power_w=11040.0, current_a=(16.0, 16.0, 16.0),
                           voltage_v=(230.0, 230.0, 230.0), taken_at=0.0)
    measurands = KEYS["MeterValuesSampledData"].default.split(",")
    return [meter_value_from_v16(meter_value(reading, measurands, "Sample.Periodic", timestamp, 16.0))]


def raw_fsync_seconds(path, count: int) -> float:
    """Mean time of one 1 KB append + fsync on the same file system: the floor of a durable commit."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(count):
            os.write(fd, b"x" * 1024)
            os.fsync(fd)
        return (time.perf_counter() - started) / count
    finally:
        os.close(fd)


def run(size: str) -> Report:
    report = Report("journal", "journal append rate with the agent's durability", size)
    samples = 20_000 if size == "full" else 500
    pairs = 500 if size == "full" else 20
    with scratch_dir("journal") as workdir:
        path = workdir / "journal.sqlite"
        report.method(f"agent.station.journal.Journal on {path.parent} ({filesystem_of(DISK_TMP)}), "
                      f"page size 1 KB, WAL, compressed payloads;\n"
                      f"{samples} x add_meter_values (write-back commit) into one open transaction, then "
                      f"{pairs} x begin_transaction + end_transaction (fsynced commits);\n"
                      f"payload: one meterValue with the default MeterValuesSampledData")
        journal = Journal(path)
        timestamp = ocpp_timestamp()
        local_id = journal.begin_transaction(1, TAG, 0.0, timestamp)

        started = time.perf_counter()
        for i in range(samples):
            journal.add_meter_values(local_id, sample_value(float(i), timestamp), float(i), timestamp)
        write_back_s = time.perf_counter() - started
        journal.end_transaction(local_id, samples, timestamp, "local")

        started = time.perf_counter()
        for i in range(pairs):
            tx = journal.begin_transaction(1, TAG, float(i), timestamp)
            journal.end_transaction(tx, i, timestamp, "local")
        durable_s = time.perf_counter() - started
        journal.close()
        fsync_s = raw_fsync_seconds(workdir / "fsync.probe", 200 if size == "full" else 20)
        size_kb = sum(p.stat().st_size for p in workdir.iterdir()) / 1024

    write_back_rate = samples / write_back_s
    durable_rate = 2 * pairs / durable_s
    report.figure("MeterValues, write-back commit (add_meter_values)", write_back_rate, "messages/s",
                  f"({write_back_s / samples * 1e6:.0f} us each)")
    report.figure("StartTransaction/StopTransaction, fsynced commit", durable_rate, "messages/s",
                  f"({durable_s / (2 * pairs) * 1e3:.2f} ms each)")
    report.figure("journal files after the run", size_kb, "KB")
    report.baseline("raw 1 KB append + fsync on the same file system", 1 / fsync_s, "fsyncs/s",
                    f"({fsync_s * 1e3:.2f} ms each)")
    report.target("MeterValues append (write-back)", write_back_rate, ">=", TARGET_PER_S, "messages/s")
    report.target("Start/Stop append (fsynced)", durable_rate, ">=", TARGET_PER_S, "messages/s")
    report.note("a durable commit is bounded by one fsync of the storage: this virtual disk acknowledges an "
                "fsync in the time shown as baseline;\nan SD card or eMMC takes 1-20 ms, so on a station "
                "expect Start/Stop at 50-1,000/s (a session has one Start and one Stop)")
    return report
