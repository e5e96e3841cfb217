"""Runs an `ocpp_csms.CentralSystem` (PyPI ocpp-csms) on 127.0.0.1 for the interop tests.

Runs in .interop/venv-ocpp-csms (never in the project's environment); speaks JSON lines as described in
tests/interop/procs.py. ocpp-csms is a library: its CSMS state lives in memory, so this driver hosts it and
reports what it recorded -- every event the library emits (BootEvent, StatusEvent, MeterValuesEvent,
TransactionStartedEvent, TransactionStoppedEvent, ...) as an event line, and the ChargePoint's state on
request -- and calls its typed request methods (async_remote_start_transaction, ...) on request.

    python ocpp_csms_driver.py --tags '{"TAG": "Accepted"}' --heartbeat 300

Events:   {"event": "listening", "port": N}
          {"event": "authorize", "charge_point_id": ..., "id_tag": ..., "status": ...}  (the authorize hook:
          Authorize and StartTransaction)
          {"event": "csms", "type": "<event class>", "charge_point_id": ..., "data": {...}}
Commands: {"cmd": "state", "station": ID}
          {"cmd": "remote_start", "station": ID, "id_tag": TAG, "connector_id": N}
          {"cmd": "remote_stop", "station": ID, "transaction_id": N}
          {"cmd": "reset", "station": ID, "type": "Soft"|"Hard"}
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import logging
import sys
from datetime import datetime

from ocpp_csms import AuthorizationStatus, CentralSystem, ResetType


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _emit(message: dict) -> None:
    sys.stdout.write(json.dumps(message, default=str) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tags", default="{}", help="JSON object: id tag -> AuthorizationStatus value")
    parser.add_argument("--heartbeat", type=int, default=300)
    args = parser.parse_args()
    tags = {k.upper(): AuthorizationStatus(v) for k, v in json.loads(args.tags).items()}
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("ocpp_csms.wire").setLevel(logging.DEBUG)

    async def authorize(charge_point, id_tag: str) -> AuthorizationStatus:
        status = tags.get(id_tag.upper(), AuthorizationStatus.INVALID)
        _emit({"event": "authorize", "charge_point_id": charge_point.id, "id_tag": id_tag, "status": status.value})
        return status

    central = CentralSystem(host="127.0.0.1", port=0, heartbeat_interval=args.heartbeat, authorize=authorize,
                            call_timeout=15)
    central.add_listener(lambda event: _emit({"event": "csms", "type": type(event).__name__,
                                              "charge_point_id": event.charge_point_id,
                                              "data": _plain(event)}))
    await central.async_start()
    _emit({"event": "listening", "port": central.port})

    def charge_point(request):
        try:
            return central.charge_points[request["station"]]
        except KeyError:
            raise LookupError(f"no charge point {request['station']!r} has connected") from None

    async def handle(request: dict) -> None:
        try:
            cmd = request["cmd"]
            if cmd == "state":
                cp = charge_point(request)
                result = {
                    "connected": cp.connected,
                    "registration_status": _plain(cp.registration_status),
                    "boot": _plain(cp.boot),
                    "connectors": _plain(dict(cp.connectors)),
                    "transactions": _plain(list(cp.transactions.values())),
                    "meter_readings": {str(c): _plain(list(cp.meter_readings(c))) for c in cp.connectors},
                }
            elif cmd == "remote_start":
                result = await charge_point(request).async_remote_start_transaction(
                    request["id_tag"], request.get("connector_id"))
            elif cmd == "remote_stop":
                result = await charge_point(request).async_remote_stop_transaction(request["transaction_id"])
            elif cmd == "reset":
                result = await charge_point(request).async_reset(ResetType(request.get("type", "Soft")))
            else:
                raise ValueError(f"unknown command {cmd!r}")
            _emit({"reply": request["id"], "ok": True, "result": result})
        except Exception as exc:  # reported to the test, which decides
            _emit({"reply": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    while line := await reader.readline():
        task = asyncio.create_task(handle(json.loads(line)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks, return_exceptions=True)  # stdin closed: finish what was asked
    await central.async_stop()


if __name__ == "__main__":
    asyncio.run(main())
