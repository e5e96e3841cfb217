"""The baseline of `python -m bench replay`: a bare `ocpp` library call loop, in a process of its own.

`ocpp.v16.ChargePoint` over websockets (the agent's transport options: no compression), BootNotification,
then StartTransaction, COUNT - 2 MeterValues and StopTransaction, one call after the other, with the
same payloads the agent replays from its journal. Nothing else: no journal, no station. Prints its CPU
time over the loop as JSON ({"cpu_s": ...}).

    python -m bench.bare_client URL STATION_ID COUNT [--inline-validation]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

import ocpp.messages
import websockets
from ocpp.charge_point import camel_to_snake_case
from ocpp.v16 import ChargePoint, call

from agent.ocpp.v16.transactions import meter_value_to_v16
from bench.common import TAG
from bench.journal import sample_value

TIMESTAMP = "2026-01-01T00:00:00.000Z"


async def call_loop(url: str, station_id: str, count: int) -> None:
    async with websockets.connect(f"{url}/{station_id}", subprotocols=["ocpp1.6"], compression=None,
                                  proxy=None, max_size=2**20) as ws:
        cp = ChargePoint(station_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            await cp.call(call.BootNotification(charge_point_vendor="BenchVendor", charge_point_model="Bare"),
                          suppress=False)
            started = await cp.call(call.StartTransaction(connector_id=1, id_tag=TAG, meter_start=0,
                                                          timestamp=TIMESTAMP), suppress=False)
            tx = started.transaction_id
            cpu0 = time.process_time()
            for i in range(count - 2):
                # the same MeterValues the agent sends: its journal's sample, rendered as 1.6 sends it
                value = camel_to_snake_case([meter_value_to_v16(v) for v in sample_value(float(i), TIMESTAMP)])
                await cp.call(call.MeterValues(connector_id=1, meter_value=value, transaction_id=tx), suppress=False)
            await cp.call(call.StopTransaction(meter_stop=count, timestamp=TIMESTAMP, transaction_id=tx,
                                               reason="Local"), suppress=False)
            print(json.dumps({"cpu_s": time.process_time() - cpu0}), flush=True)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_client")
    parser.add_argument("url")
    parser.add_argument("station_id")
    parser.add_argument("count", type=int)
    parser.add_argument("--inline-validation", action="store_true",
                        help="ocpp.messages.ASYNC_VALIDATION = False, as the agent sets it")
    args = parser.parse_args()
    if args.inline_validation:
        ocpp.messages.ASYNC_VALIDATION = False
    asyncio.run(call_loop(args.url, args.station_id, args.count))


if __name__ == "__main__":
    main()
