"""Operator side of an arthexis CSMS (PyPI arthexis) for the interop tests.

Runs in .interop/venv-arthexis (never in the project's environment), with the same ARTHEXIS_* environment
as the daphne process that serves arthexis's OCPP endpoint; speaks JSON lines as described in
tests/interop/procs.py. It uses arthexis's own Django models and operator API, as its admin or an
integration would:

* `prepare`: applies the migrations and `seed`, then provisions what arthexis needs before a charger
  may connect: a StationModel whose preferred protocol is ocpp1.6 (arthexis derives the OCPP action of a
  reset/start/stop from it), the Charger with its HTTP Basic connection token (stored as a Django password
  hash; arthexis refuses a charger without credentials), authorization mode "restricted" and one
  CardCredential per accepted id tag (unknown tags are answered Invalid).
* `reset` / `start` / `stop`: `Charger.reset()`, `Charger.start()`, `Charger.stop()` -- arthexis's
  explicit charger controls. They persist a ProtocolOperation and hand it through the shared channel
  layer (channels_redis on a loopback redis-server) to the consumer that holds the charger's WebSocket in
  the daphne process; the driver then waits until that operation reached a terminal state and returns it.
* `snapshot`: what arthexis recorded: the charger and its connection, connectors, OcppTransaction rows
  with their MeterValue rows, AuthorizationAttempt rows and ProtocolOperation rows.
* `fleet`: the output of arthexis's read-only `manage.py fleet --detail` report.

Events: {"event": "ready"} once Django is set up.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from datetime import timedelta

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arthexis.settings")

import django  # noqa: E402

django.setup()

from apps.cards.models import AuthorizationAttempt, CardCredential  # noqa: E402
from apps.ocpp.models import Charger, ProtocolOperation, StationModel  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

TERMINAL = {"completed", "errored", "timed_out", "disconnected", "recovery_required"}


def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()


def prepare(station: str, password: str, tags: list[str], vendor: str, model: str) -> dict:
    call_command("migrate", interactive=False, verbosity=0)
    call_command("seed", verbosity=0)
    station_model, _ = StationModel.objects.get_or_create(
        vendor=vendor, model=model, defaults={"preferred_protocol": "ocpp1.6"})
    now = timezone.now()
    charger, _ = Charger.objects.update_or_create(identity=station, defaults={
        "connection_token_hash": make_password(password),
        "enrolled_at": now,
        # evidence timestamped before the cutover is filed as "historical"; the agent's clock is this one
        "authority_cutover_at": now - timedelta(minutes=5),
        "authorization_mode": Charger.AuthorizationMode.RESTRICTED,
        "station_model": station_model,
        "active": True,
    })
    for tag in tags:
        CardCredential.objects.update_or_create(external_id=f"card-{tag}",
                                                defaults={"ocpp_id_tag": tag, "active": True})
    return {"charger": charger.pk, "station_model": station_model.pk}


def _operation(op: ProtocolOperation) -> dict:
    return {"id": op.pk, "action": op.action, "status": op.status, "unique_id": str(op.unique_id),
            "request": op.request_payload, "response": op.response_payload, "error_code": op.error_code,
            "error_description": op.error_description, "attempts": op.attempt_count}


def snapshot(station: str) -> dict:
    charger = Charger.objects.select_related("station_model").get(identity=station)
    connection = getattr(charger, "connection", None)
    transactions = []
    for tx in charger.transactions.order_by("pk"):
        transactions.append({
            "id": tx.pk, "remote_id": tx.remote_id, "id_tag": tx.id_tag,
            "connector": tx.connector.number if tx.connector else None,
            "started_at": tx.started_at, "stopped_at": tx.stopped_at, "historical": tx.historical,
            "recovery_state": tx.recovery_state,
            "meter_start": float(tx.meter_start) if tx.meter_start is not None else None,
            "meter_stop": float(tx.meter_stop) if tx.meter_stop is not None else None,
            "energy_kwh": float(tx.energy_kwh) if tx.energy_kwh is not None else None,
            "meter_values": [
                {"sampled_at": mv.sampled_at, "value": float(mv.value), "measurand": mv.measurand,
                 "unit": mv.unit} for mv in tx.meter_values.order_by("sampled_at", "pk")],
        })
    return {
        "charger": {"identity": charger.identity, "connected_at": charger.connected_at,
                    "authorization_mode": charger.authorization_mode,
                    "protocol": charger.station_model.preferred_protocol if charger.station_model else None},
        "connection": None if connection is None else {
            "channel_name": connection.channel_name, "protocol": connection.protocol,
            "last_seen_at": connection.last_seen_at, "lease_expires_at": connection.lease_expires_at,
            "heartbeat_interval_seconds": connection.heartbeat_interval_seconds},
        "connectors": {c.number: c.status for c in charger.connectors.order_by("number")},
        "transactions": transactions,
        "authorizations": [{"presented_id": a.presented_id, "accepted": a.accepted, "reason": a.reason}
                           for a in AuthorizationAttempt.objects.order_by("pk")],
        "operations": [_operation(op) for op in charger.protocol_operations.order_by("pk")],
    }


def fleet(station: str) -> str:
    out = io.StringIO()
    call_command("fleet", charger=[station], detail=True, stdout=out)
    return out.getvalue()


def _load_operation(pk: int) -> dict:
    return _operation(ProtocolOperation.objects.get(pk=pk))


async def operate(request: dict) -> dict:
    charger = await sync_to_async(Charger.objects.select_related("station_model").get)(
        identity=request["station"])
    cmd = request["cmd"]
    if cmd == "reset":
        op = await Charger.reset(charger, hard=request.get("hard", False), timeout=request.get("timeout", 15))
    elif cmd == "start":
        op = await Charger.start(charger, id_token=request["id_tag"], connector=request.get("connector"),
                                 timeout=request.get("timeout", 15))
    else:
        op = await Charger.stop(charger, transaction=request.get("transaction"),
                                timeout=request.get("timeout", 15))
    deadline = time.monotonic() + request.get("timeout", 15) + 5
    while True:
        current = await sync_to_async(_load_operation)(op.pk)
        if current["status"] in TERMINAL or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.1)


async def handle(request: dict) -> None:
    try:
        cmd = request["cmd"]
        if cmd == "prepare":
            result = await sync_to_async(prepare)(request["station"], request["password"], request["tags"],
                                                  request["vendor"], request["model"])
        elif cmd == "snapshot":
            result = await sync_to_async(snapshot)(request["station"])
        elif cmd == "fleet":
            result = await sync_to_async(fleet)(request["station"])
        elif cmd in ("reset", "start", "stop"):
            result = await operate(request)
        else:
            raise ValueError(f"unknown command {cmd!r}")
        _emit({"reply": request["id"], "ok": True, "result": result})
    except Exception as exc:  # reported to the test, which decides
        _emit({"reply": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _emit({"event": "ready"})
    tasks = set()
    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)  # stdin closed: finish what was asked


if __name__ == "__main__":
    asyncio.run(main())
