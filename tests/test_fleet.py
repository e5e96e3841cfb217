"""Twenty stations in one process (agent.fleet) against the bundled CSMS over real WebSockets: every one
boots and charges, a Reset rebuilds only its station, and each station's log lines carry its id and none
of the stations' passwords."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import pytest

from agent.config import load_config
from agent.fleet import Fleet
from hil.csms import LocalCsms
from tests.agent_harness import TAG_OK, write_config
from tests.conftest import TAGS

COUNT = 20
TARGET = "FLEET-07"  # the station the CSMS resets


def password(station_id: str) -> str:
    """Each station its own AuthorizationKey (hex, as profile 1 sends it), none a substring of another's."""
    return hashlib.sha256(station_id.encode()).hexdigest()[:32]


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


async def until(condition, what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until true; `timeout` only bounds a failure, nothing is timed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def fleet_configs(tmp_path, url: str) -> list:
    configs = []
    for number in range(1, COUNT + 1):
        station_id = f"FLEET-{number:02d}"
        workdir = tmp_path / station_id
        workdir.mkdir()
        path = write_config(workdir, url, station_id=station_id)
        text = path.read_text().replace(
            "reconnect_max_s = 1.0\n",
            f'reconnect_max_s = 1.0\npassword = "{password(station_id)}"\nsecurity_profile = 1\n', 1)
        path.write_text(text)
        configs.append(load_config(path))
    return configs


def boots(csms: LocalCsms, station_id: str) -> int:
    return len(csms.calls("BootNotification", station_id))


def open_transaction(csms: LocalCsms, station_id: str):
    return next((tx for tx in csms.transactions.values() if tx.station_id == station_id and not tx.stopped), None)


async def test_twenty_stations_in_one_process_charge_and_a_reset_rebuilds_only_one(tmp_path, captured):
    ids = [f"FLEET-{number:02d}" for number in range(1, COUNT + 1)]
    csms = LocalCsms(authorized_tags=TAGS, boot_interval=60,
                     basic_auth={station_id: bytes.fromhex(password(station_id)) for station_id in ids})
    await csms.start()
    fleet = Fleet(fleet_configs(tmp_path, csms.url))
    try:
        fleet.start()
        await until(lambda: all(m.station is not None and m.station.ocpp.accepted for m in fleet.members.values()),
                    "every station registered")

        # a session on every station: the EV plugs in, the CSMS starts it remotely, meter values flow
        for station_id in ids:
            await fleet.station(station_id).link.request("sim", method="plug", params={"connector": 1})
        for station_id in ids:
            answer = await csms.call(station_id, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1})
            assert answer == {"status": "Accepted"}, station_id
        await until(lambda: all(open_transaction(csms, s) and open_transaction(csms, s).meter_values for s in ids),
                    "a transaction with meter values on every station")
        running = {station_id: open_transaction(csms, station_id).transaction_id for station_id in ids}

        # the CSMS resets one station: it stops its transaction, is rebuilt and boots again
        first_station = fleet.station(TARGET)
        reset_at = len(csms.frames)
        assert await csms.call(TARGET, "Reset", {"type": "Soft"}) == {"status": "Accepted"}
        await until(lambda: fleet.members[TARGET].builds == 2 and boots(csms, TARGET) == 2
                    and fleet.station(TARGET).ocpp.accepted, "the reset station rebuilt and registered again")
        assert fleet.station(TARGET) is not first_station
        assert fleet.members[TARGET].restarts == ["Soft"]
        assert csms.transactions[running[TARGET]].stop_reason == "SoftReset"

        # the other nineteen: same Station object, one connection, one boot, their transaction running and
        # still sampled after the reset
        others = [station_id for station_id in ids if station_id != TARGET]
        await until(lambda: all(any(f.index > reset_at and f.action == "MeterValues" for f in csms.calls("MeterValues", s))
                                for s in others), "meter values of the others after the reset")
        for station_id in others:
            assert fleet.members[station_id].builds == 1, station_id
            assert boots(csms, station_id) == 1, station_id
            assert len([h for h in csms.handshakes if h.station_id == station_id]) == 1, station_id
            assert not csms.transactions[running[station_id]].stopped, station_id

        # the rebuilt station charges again (its EV is still plugged in: the board's state outlived it)
        assert await csms.call(TARGET, "RemoteStartTransaction", {"idTag": TAG_OK, "connectorId": 1}) == {
            "status": "Accepted"}
        await until(lambda: open_transaction(csms, TARGET) is not None, "a new transaction on the reset station")

        # every session ends
        for station_id in ids:
            transaction_id = open_transaction(csms, station_id).transaction_id
            answer = await csms.call(station_id, "RemoteStopTransaction", {"transactionId": transaction_id})
            assert answer == {"status": "Accepted"}, station_id
        await until(lambda: all(tx.stopped for tx in csms.transactions.values()), "every transaction stopped")
        assert {tx.stop_reason for tx in csms.transactions.values() if tx.transaction_id != running[TARGET]} == {
            "Remote"}
        assert len(csms.transactions) == COUNT + 1

        # secrets are each station's own: its key is redacted in its lines, another's key is no secret to it
        first, second = fleet.station("FLEET-01"), fleet.station("FLEET-02")
        first.log.warning("key check %s", password("FLEET-01"))
        second.log.warning("key check %s", password("FLEET-02"))
        assert first.logs.redact(password("FLEET-02")) == password("FLEET-02")
    finally:
        await fleet.stop()
        await csms.stop()

    tagged = [record for record in captured.records if getattr(record, "station_id", None)]
    assert {record.station_id for record in tagged} == set(ids)
    for record in tagged:
        assert record.getMessage().startswith(f"[{record.station_id}] "), record.getMessage()
    by_station = {record.station_id: record.getMessage() for record in tagged if record.name == "evse.station"}
    assert by_station["FLEET-01"].startswith("[FLEET-01] ") and by_station["FLEET-02"].startswith("[FLEET-02] ")
    assert {record.name for record in tagged} >= {"evse.station", "evse.ocpp", "evse.fleet"}
    key_checks = [line for line in captured.lines if "key check" in line]
    assert key_checks == ["evse.station: [FLEET-01] key check [redacted]",
                          "evse.station: [FLEET-02] key check [redacted]"]
    text = "\n".join(captured.lines)
    for station_id in ids:
        assert password(station_id) not in text, station_id
