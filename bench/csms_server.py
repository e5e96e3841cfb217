"""The bundled CSMS (hil.csms.LocalCsms) in a process of its own, quiet, for benchmarks.

Prints its URL on the first line of stdout, then answers one line per stdin line "counts" (the incoming
CALLs by action, as JSON) and stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections import Counter

from hil.csms import LocalCsms


async def serve(tags: list[str]) -> None:
    csms = LocalCsms(authorized_tags=tags, boot_interval=300)
    await csms.start("127.0.0.1", 0)
    print(csms.url, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def commands() -> None:
        while line := await reader.readline():
            if line.strip() == b"counts":
                counts = Counter(f.action for f in csms.frames if f.direction == "in" and f.message_type == 2)
                print(json.dumps(counts), flush=True)
        stop.set()

    task = asyncio.create_task(commands())
    await stop.wait()
    task.cancel()
    await csms.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.csms_server")
    parser.add_argument("--tags", default="")
    args = parser.parse_args()
    asyncio.run(serve([t for t in args.tags.split(",") if t]))


if __name__ == "__main__":
    main()
