"""Interop: the real agent process against central systems written by others, installed from PyPI.

* **ocpp-csms** 0.1.0 (PyPI `ocpp-csms`): an asyncio OCPP 1.6J central-system *library* (aiohttp + the
  `ocpp` package) meant to be embedded, e.g. in Home Assistant. Its state lives in memory, so
  tests/interop/ocpp_csms_driver.py hosts a `CentralSystem` on 127.0.0.1 with an `authorize` hook and
  reports the events the library emits (TransactionStartedEvent, MeterValuesEvent,
  TransactionStoppedEvent, StatusEvent, ...); RemoteStart/RemoteStop/Reset are its typed request
  methods (`ChargePoint.async_remote_start_transaction`, ...).
* **arthexis** 2.0.0 (PyPI `arthexis`): a Django + Channels CSMS served by daphne, with SQLite and a
  Redis channel layer (a loopback `redis-server` from Debian, `redis==5.2.1`). Chargers must be
  provisioned (StationModel with protocol ocpp1.6, Charger with an HTTP Basic connection token) and id
  tags are CardCredential rows (authorization mode "restricted"). RemoteStart/RemoteStop/Reset go
  through its explicit charger controls `Charger.start/stop/reset`, which queue a ProtocolOperation and
  hand it to the consumer holding the WebSocket via the channel layer. Transactions are OcppTransaction
  rows with MeterValue rows; authorizations are AuthorizationAttempt rows.
  arthexis routes only `ws/ocpp/<id>/` (trailing slash) and answers HTTP 500 for the `<url>/<id>` of
  OCPP-J §3.1.1, so the tap proxy adds the slash, as a reverse proxy in front of arthexis would.

Each runs from its own virtualenv in .interop/ (tests/interop/setup.sh; they pin Django/ocpp versions of
their own). Between the agent and the CSMS sits a logging TCP proxy (tests/interop/tap.py) that records
every frame, for the things a CSMS does not keep (e.g. arthexis keeps no stop reason). Assertions are on
what the third-party CSMS recorded wherever it records it. A CSMS that cannot be installed or started
makes its tests SKIPPED with the reason.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, TAG_UNKNOWN, Agent, charging, plugged, write_config
from tests.interop.procs import (
    HERE,
    INTEROP,
    DriverError,
    JsonLinesProcess,
    free_port,
    installed,
    run_server,
    stop_process,
    tail,
)
from tests.interop.tap import CALLERROR, TapFrame, WsTap

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ACCEPTED_TAGS = [TAG_OK, TAG_2]
PASSWORD = "interop-Secret-0123"  # HTTP Basic (OCPP security profile 1); arthexis requires one


@dataclass
class Tx:
    """A transaction as the third-party CSMS recorded it (normalised across the implementations)."""

    id: int
    id_tag: str
    connector: int | None
    meter_start: float | None
    meter_stop: float | None = None
    stopped: bool = False
    stop_reason: str | None = None  # None: this CSMS does not record it
    energy_wh: list[float] = field(default_factory=list)  # Energy.Active.Import.Register samples, in order


# ---- ocpp-csms ------------------------------------------------------------------------------------


class OcppCsms:
    name = "ocpp-csms"
    records_stop_reason = True
    password: str | None = None

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.log_path = tmp_path / "ocpp-csms.log"
        self.driver: JsonLinesProcess | None = None
        self.tap: WsTap | None = None
        self.url = ""

    async def start(self) -> None:
        installed("ocpp-csms")
        python = INTEROP / "venv-ocpp-csms" / "bin" / "python"
        tags = {tag: "Accepted" for tag in ACCEPTED_TAGS}
        self.driver = JsonLinesProcess(
            [str(python), str(HERE / "ocpp_csms_driver.py"), "--tags", json.dumps(tags), "--heartbeat", "300"],
            log_path=self.log_path, env=_clean_env(), cwd=self.tmp_path)
        try:
            ready = await self.driver.start("listening", timeout=30)
        except (DriverError, OSError) as exc:
            pytest.skip(f"ocpp-csms could not be started: {exc}")
        self.tap = WsTap(ready["port"])
        await self.tap.start()
        self.url = self.tap.url("/ocpp")

    async def stop(self) -> None:
        if self.tap is not None:
            await self.tap.stop()
        if self.driver is not None:
            await self.driver.stop()

    def diagnostics(self) -> str:
        return f"--- ocpp-csms log ---\n{tail(self.log_path, 30)}"

    async def remote_start(self, tag: str, connector: int) -> str:
        return await self.driver.request("remote_start", station=STATION_ID, id_tag=tag, connector_id=connector)

    async def remote_stop(self, tx: Tx) -> str:
        return await self.driver.request("remote_stop", station=STATION_ID, transaction_id=tx.id)

    async def reset(self, kind: str) -> str:
        return await self.driver.request("reset", station=STATION_ID, type=kind)

    def _events(self, kind: str) -> list[dict]:
        return [e for e in self.driver.events if e["event"] == "csms" and e["type"] == kind]

    async def transactions(self) -> list[Tx]:
        txs: dict[int, Tx] = {}
        for event in self.driver.events:
            if event["event"] != "csms":
                continue
            data = event["data"]
            if event["type"] == "TransactionStartedEvent":
                t = data["transaction"]
                txs[t["transaction_id"]] = Tx(t["transaction_id"], t["id_tag"], t["connector_id"],
                                              t["meter_start"])
            elif event["type"] == "TransactionStoppedEvent":
                t = data["transaction"]
                tx = txs[t["transaction_id"]]
                tx.meter_stop, tx.stopped, tx.stop_reason = t["meter_stop"], True, t["stop_reason"]
            elif event["type"] == "MeterValuesEvent" and data["transaction_id"] in txs:
                txs[data["transaction_id"]].energy_wh += [
                    float(r["value"]) for r in data["readings"]
                    if r["measurand"] == "Energy.Active.Import.Register" and r["unit"] == "Wh"
                    and r["context"] not in ("Transaction.Begin", "Transaction.End")]  # not transactionData
        return list(txs.values())

    async def authorizations(self) -> list[tuple[str, bool]]:
        return [(e["id_tag"], e["status"] == "Accepted") for e in self.driver.events
                if e["event"] == "authorize"]

    async def connector_status(self, connector: int) -> str | None:
        state = await self.driver.request("state", station=STATION_ID)
        entry = state["connectors"].get(str(connector))
        return entry["status"] if entry else None

    async def registered(self) -> bool:
        state = await self.driver.request("state", station=STATION_ID)
        return state["registration_status"] == "Accepted" and state["boot"]["vendor"] == "TestVendor"


# ---- arthexis ------------------------------------------------------------------------------------


class Arthexis:
    name = "arthexis"
    records_stop_reason = False  # OcppTransaction has no stop reason: asserted on the tap's frames
    password = PASSWORD

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.data = tmp_path / "arthexis"
        self.driver: JsonLinesProcess | None = None
        self.redis = None
        self.daphne = None
        self.tap: WsTap | None = None
        self.url = ""
        self.last_operation: dict | None = None

    async def start(self) -> None:
        installed("arthexis")
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            pytest.skip("arthexis needs redis-server (Debian package redis-server) for its channel layer; "
                        "it is not installed (.ci/run installs it with apt-get)")
        venv = INTEROP / "venv-arthexis" / "bin"
        self.data.mkdir()
        redis_port, daphne_port = free_port(), free_port()
        env = {**_clean_env(), "DJANGO_SETTINGS_MODULE": "arthexis.settings",
               "ARTHEXIS_DATA_DIR": str(self.data), "ARTHEXIS_DATABASE_PATH": str(self.data / "db.sqlite3"),
               "ARTHEXIS_SECRET_KEY": "interop-test-only", "ARTHEXIS_ALLOWED_HOSTS": "127.0.0.1,localhost",
               "ARTHEXIS_CHANNEL_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
               "ARTHEXIS_OCPP_HEARTBEAT_INTERVAL_SECONDS": "300"}
        try:
            self.redis = await run_server(
                [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.data)],
                port=redis_port, log_path=self.tmp_path / "redis.log", what="redis-server")
            self.driver = JsonLinesProcess([str(venv / "python"), str(HERE / "arthexis_driver.py")],
                                           log_path=self.tmp_path / "arthexis-driver.log", env=env,
                                           cwd=self.data)
            await self.driver.start("ready", timeout=60)
            await self.driver.request("prepare", timeout=120, station=STATION_ID, password=PASSWORD,
                                      tags=ACCEPTED_TAGS, vendor="TestVendor", model="TestModel")
            self.daphne = await run_server(
                [str(venv / "daphne"), "-b", "127.0.0.1", "-p", str(daphne_port), "arthexis.asgi:application"],
                port=daphne_port, log_path=self.tmp_path / "daphne.log", env=env, cwd=self.data,
                timeout=60, what="arthexis (daphne)")
        except (DriverError, OSError) as exc:
            await self.stop()
            pytest.skip(f"arthexis could not be started: {exc}")
        self.daphne_port = daphne_port
        self.tap = WsTap(daphne_port, rewrite_path=lambda path: path if path.endswith("/") else path + "/")
        await self.tap.start()
        self.url = self.tap.url("/ws/ocpp")

    async def stop(self) -> None:
        if self.tap is not None:
            await self.tap.stop()
        await stop_process(self.daphne)
        if self.driver is not None:
            await self.driver.stop()
        await stop_process(self.redis)

    def diagnostics(self) -> str:
        return (f"--- daphne log ---\n{tail(self.tmp_path / 'daphne.log', 30)}\n"
                f"--- driver log ---\n{tail(self.tmp_path / 'arthexis-driver.log', 10)}")

    async def snapshot(self) -> dict:
        return await self.driver.request("snapshot", station=STATION_ID)

    async def _operate(self, cmd: str, **args) -> str:
        op = await self.driver.request(cmd, station=STATION_ID, timeout=30, **args)
        self.last_operation = op
        assert op["status"] == "completed", f"arthexis {cmd} operation did not complete: {op}"
        return op["response"]["status"]

    async def remote_start(self, tag: str, connector: int) -> str:
        return await self._operate("start", id_tag=tag, connector=connector)

    async def remote_stop(self, tx: Tx) -> str:
        status = await self._operate("stop")  # arthexis selects the charger's sole active transaction
        assert self.last_operation["request"] == {"transactionId": tx.id}
        return status

    async def reset(self, kind: str) -> str:
        return await self._operate("reset", hard=kind == "Hard")

    async def transactions(self) -> list[Tx]:
        txs = []
        for t in (await self.snapshot())["transactions"]:
            assert not t["historical"], f"arthexis filed a live transaction as historical: {t}"
            txs.append(Tx(t["id"], t["id_tag"], t["connector"], t["meter_start"], t["meter_stop"],
                          t["stopped_at"] is not None, None,
                          [mv["value"] for mv in t["meter_values"]
                           if mv["measurand"] == "Energy.Active.Import.Register" and mv["unit"] == "Wh"]))
        return txs

    async def authorizations(self) -> list[tuple[str, bool]]:
        return [(a["presented_id"], a["accepted"]) for a in (await self.snapshot())["authorizations"]]

    async def connector_status(self, connector: int) -> str | None:
        return (await self.snapshot())["connectors"].get(str(connector))

    async def registered(self) -> bool:
        snap = await self.snapshot()
        return snap["connection"] is not None and snap["charger"]["connected_at"] is not None


def _clean_env() -> dict:
    """The third-party CSMS must not see the project's environment (PYTHONPATH, a venv)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


# ---- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(params=["ocpp-csms", "arthexis"])
async def third_party(request, tmp_path):
    server = OcppCsms(tmp_path) if request.param == "ocpp-csms" else Arthexis(tmp_path)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def agent(third_party, tmp_path):
    config = write_config(tmp_path, third_party.url)
    if third_party.password:
        text = config.read_text()
        config.write_text(text.replace("[ocpp]\n", f'[ocpp]\npassword = "{third_party.password}"\n', 1))
    process = Agent(tmp_path, config)
    process.start()
    try:
        await process.ready()
        yield process
    finally:
        process.cleanup()


def explained(test):
    """On failure, print what crossed the wire and what the CSMS and the agent logged."""
    @functools.wraps(test)
    async def wrapper(third_party, agent, **kwargs):
        try:
            await test(third_party, agent, **kwargs)
        except BaseException:
            print(f"--- frames (tap) ---\n{third_party.tap.transcript()}\n{third_party.diagnostics()}\n"
                  f"--- agent log ---\n{agent.log_tail(40)}")
            raise
    return wrapper


async def until(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll an async condition until it returns something truthy; returns that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise TimeoutError(f"timed out waiting for {what}; last: {last!r}")


async def online(third_party, agent: Agent) -> None:
    boot = await third_party.tap.wait_call("BootNotification", timeout=20)
    answer = await third_party.tap.wait_answer(boot)
    assert answer.payload["status"] == "Accepted", answer.raw
    await third_party.tap.wait_call("StatusNotification", where=lambda p: p["connectorId"] == 1)
    await until(third_party.registered, what=f"{third_party.name} to register the station")
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted", what="registration")


async def one_tx(third_party, predicate, what: str) -> Tx:
    async def find():
        return next((t for t in await third_party.transactions() if predicate(t)), None)
    return await until(find, timeout=10, what=f"{third_party.name} to record {what}")


def assert_no_call_errors(tap: WsTap) -> None:
    errors = [f.raw for f in tap.frames if f.message_type == CALLERROR]
    assert errors == [], f"CALLERRORs on the wire: {errors}"


def assert_recorded(third_party, tx: Tx, start: TapFrame, stop: TapFrame, reason: str, tag: str) -> None:
    """The CSMS's record of a finished transaction matches what the agent sent."""
    assert tx.stopped and tx.id_tag == tag and tx.connector == 1
    assert tx.meter_start == start.payload["meterStart"]
    assert tx.meter_stop == stop.payload["meterStop"] and tx.meter_stop > tx.meter_start
    assert stop.payload["transactionId"] == tx.id and stop.payload["reason"] == reason
    if third_party.records_stop_reason:
        assert tx.stop_reason == reason
    assert tx.energy_wh, "no Energy.Active.Import.Register MeterValues recorded for the transaction"
    assert tx.energy_wh == sorted(tx.energy_wh)
    assert tx.meter_start <= tx.energy_wh[0] and tx.energy_wh[-1] <= tx.meter_stop


# ---- the tests ------------------------------------------------------------------------------------


@explained
async def test_card_session_is_recorded_by_the_csms(third_party, agent):
    """Boot, StatusNotification, Authorize (an unknown card refused, a known one accepted),
    StartTransaction, MeterValues, StopTransaction (EV unplugged): the CSMS's record matches the station's."""
    tap = third_party.tap
    await online(third_party, agent)
    await plugged(agent)

    mark = len(tap.frames)
    await agent.cmd("sim.swipe", tag=TAG_UNKNOWN)
    refused = await tap.wait_call("Authorize", mark, where=lambda p: p["idTag"] == TAG_UNKNOWN)
    assert (await tap.wait_answer(refused)).payload["idTagInfo"]["status"] == "Invalid"
    await asyncio.sleep(0.3)
    assert tap.calls("StartTransaction") == []
    assert (await agent.connector())["status"] == "Preparing"

    await agent.cmd("sim.swipe", tag=TAG_OK)
    start = await tap.wait_call("StartTransaction")
    status = await charging(agent)
    first = await tap.wait_call("MeterValues", start.index,
                                where=lambda p: p.get("transactionId") == status["transaction_id"])
    await tap.wait_call("MeterValues", first.index + 1, where=lambda p: p.get("transactionId") is not None)
    await agent.cmd("sim.unplug")
    stop = await tap.wait_call("StopTransaction", start.index, timeout=15)

    tx = await one_tx(third_party, lambda t: t.stopped, "the stopped transaction")
    assert (await third_party.transactions()) == [tx]
    assert tx.id == status["transaction_id"]
    assert_recorded(third_party, tx, start, stop, "EVDisconnected", TAG_OK)
    authorizations = await third_party.authorizations()
    assert (TAG_UNKNOWN, False) in authorizations and (TAG_OK, True) in authorizations
    assert await until(lambda: _status_is(third_party, "Available"), what="connector Available") == "Available"
    actions = [f.action for f in tap.calls() if f.action not in ("StatusNotification", "Heartbeat")]
    assert actions[:4] == ["BootNotification", "Authorize", "Authorize", "StartTransaction"]
    assert actions[-1] == "StopTransaction" and set(actions[4:-1]) == {"MeterValues"}
    assert_no_call_errors(tap)


async def _status_is(third_party, status: str):
    current = await third_party.connector_status(1)
    return current if current == status else None


@explained
async def test_remote_start_remote_stop_and_soft_reset_from_the_csms(third_party, agent):
    """RemoteStartTransaction and RemoteStopTransaction sent by the third-party CSMS through its own API,
    then a second remote start and Reset Soft while charging: the agent stops with SoftReset, restarts in
    place, boots again on a new connection and reports the EV that is still plugged in."""
    tap = third_party.tap
    await online(third_party, agent)
    await plugged(agent)

    assert await third_party.remote_start(TAG_OK, 1) == "Accepted"
    start = await tap.wait_call("StartTransaction")
    status = await charging(agent)
    await tap.wait_call("MeterValues", start.index, where=lambda p: p.get("transactionId") == status["transaction_id"])
    tx = await one_tx(third_party, lambda t: t.id == status["transaction_id"], "the remote-started transaction")
    assert not tx.stopped and tx.id_tag == TAG_OK

    assert await third_party.remote_stop(tx) == "Accepted"
    stop = await tap.wait_call("StopTransaction", start.index)
    await agent.wait_connector(lambda c: not c["contactor_closed"] and not c["transaction_active"],
                               what="stopped")
    tx = await one_tx(third_party, lambda t: t.id == tx.id and t.stopped, "the remote stop")
    assert_recorded(third_party, tx, start, stop, "Remote", TAG_OK)

    # second session, ended by Reset Soft
    await agent.cmd("sim.unplug")
    await agent.wait_connector(lambda c: c["status"] == "Available", what="Available")
    await plugged(agent)
    assert await third_party.remote_start(TAG_2, 1) == "Accepted"
    start2 = await tap.wait_call("StartTransaction", stop.index)
    status2 = await charging(agent)
    await tap.wait_call("MeterValues", start2.index,
                        where=lambda p: p.get("transactionId") == status2["transaction_id"])
    pid, connection = agent.proc.pid, start2.connection

    assert await third_party.reset("Soft") == "Accepted"
    stop2 = await tap.wait_call("StopTransaction", start2.index, timeout=15)
    boot = await tap.wait_call("BootNotification", stop2.index, timeout=20)
    assert boot.connection > connection  # the agent restarted and connected again
    await tap.wait_call("StatusNotification", boot.index,
                        where=lambda p: p["connectorId"] == 1 and p["status"] == "Preparing")
    after = await agent.ready()
    assert after["station"]["pid"] == pid  # restarted in place, not crashed
    await agent.wait_status(lambda s: s["ocpp"]["registration"] == "Accepted", what="registered again")
    tx2 = await one_tx(third_party, lambda t: t.id == status2["transaction_id"] and t.stopped, "the reset stop")
    assert_recorded(third_party, tx2, start2, stop2, "SoftReset", TAG_2)
    assert [t.id for t in await third_party.transactions()] == [tx.id, tx2.id]
    assert await until(lambda: _status_is(third_party, "Preparing"), what="connector Preparing after reset")
    # the transaction was not sent again after the restart
    assert len(tap.calls("StopTransaction")) == 2 and len(tap.calls("StartTransaction")) == 2
    assert_no_call_errors(tap)


@pytest.mark.parametrize("third_party", ["arthexis"], indirect=True)
async def test_arthexis_refuses_the_ocpp_j_url_and_the_agent_keeps_retrying(third_party, tmp_path):
    """Without the proxy's slash: arthexis routes only `ws/ocpp/<id>/`, so the OCPP-J URL `<url>/<id>`
    (§3.1.1) gets HTTP 500 during the handshake. The agent reports it and retries; it does not exit."""
    config = write_config(tmp_path, f"ws://127.0.0.1:{third_party.daphne_port}/ws/ocpp")
    config.write_text(config.read_text().replace("[ocpp]\n", f'[ocpp]\npassword = "{PASSWORD}"\n', 1))
    process = Agent(tmp_path, config)
    process.start()
    try:
        await process.ready()
        status = await process.wait_status(lambda s: "500" in (s["ocpp"]["last_error"] or ""), timeout=10,
                                           what="the HTTP 500 to be reported")
        assert not status["ocpp"]["connected"] and status["ocpp"]["registration"] is None
        await asyncio.sleep(1.5)  # reconnect_max_s is 1: it tried again meanwhile
        assert process.proc.poll() is None
        assert (await process.status())["ocpp"]["last_error"] == status["ocpp"]["last_error"]
        refusals = (tmp_path / "daphne.log").read_text().count("No route found for path 'ws/ocpp/CP-T1'")
        assert refusals >= 2, f"{refusals} handshake(s) seen by arthexis"
        assert (await third_party.snapshot())["connection"] is None
    finally:
        process.cleanup()
