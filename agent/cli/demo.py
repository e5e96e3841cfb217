"""`evse demo`: the bundled CSMS and the agent on the simulated board, one complete session.

Everything runs on 127.0.0.1 with files in a temporary directory. The agent is a separate process,
exactly as `evse run` starts it on a station; the demo drives the simulated EV and card reader
through the agent's control socket, as a technician's `evse sim ...` commands would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from agent.cli.control_socket import ControlClientError, request
from hil.csms import LocalCsms

DEMO_TAG = "04A1B2C3D4"
STATION_ID = "DEMO-1"


def write_demo_config(workdir: Path, csms_url: str) -> Path:
    board = workdir / "sim.toml"
    board.write_text(resources.files("evse_board_configs").joinpath("sim.toml").read_text())
    config = workdir / "agent.toml"
    config.write_text(f"""\
[station]
id = "{STATION_ID}"
vendor = "evse-agent"
model = "demo"

[ocpp]
version = "1.6"
url = "{csms_url}"
reconnect_min_s = 0.5
reconnect_max_s = 5

[ocpp.configuration]
MeterValueSampleInterval = 2
HeartbeatInterval = 30

[board]
file = "sim.toml"

[journal]
path = "journal.sqlite"

[control]
socket = "control.sock"

[charging]
max_current_a = 16
meter_poll_s = 0.5
""")
    return config


def run_demo(seconds: float = 10.0) -> int:
    return asyncio.run(_demo(seconds))


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def _wait_for(predicate, what: str, timeout: float = 20.0, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


async def _demo(seconds: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="evse-demo-"))
    csms = LocalCsms(authorized_tags=[DEMO_TAG], boot_interval=30, record_path=workdir / "csms-frames.jsonl",
                     echo=lambda line: print(f"   {line}", flush=True))
    await csms.start()
    config = write_demo_config(workdir, csms.url)
    socket = workdir / "control.sock"
    _say(f"bundled CSMS listening on {csms.url}; starting the agent (station {STATION_ID}, simulated board)")
    agent = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config), "--log-level", "warning",
        stdout=None, stderr=None,
    )

    def ask(cmd: str, args: dict | None = None):
        return request(socket, cmd, args)

    def status():
        try:
            return ask("status")
        except (ControlClientError, OSError):
            return None

    def connector():
        s = status()
        return s["connectors"][0] if s else None

    ok = False
    try:
        await _wait_for(lambda: (s := status()) and s["ocpp"]["registration"] == "Accepted", "registration")
        _say("EV plugged in (state B)")
        ask("sim.plug", {"connector": 1})
        await _wait_for(lambda: (c := connector()) and c["status"] == "Preparing", "Preparing")
        _say(f"card {DEMO_TAG} presented at the reader")
        ask("sim.swipe", {"tag": DEMO_TAG})
        await _wait_for(lambda: (c := connector()) and c["status"] == "Charging" and c["contactor_closed"],
                        "Charging")
        _say(f"charging for {seconds:.0f} s")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            c = connector()
            print(f"   [agent] pilot {c['pilot_mode']} {c['pwm_duty']:.1f}% ({c['offered_current_a']:.0f} A offered)"
                  f"  contactor {'closed' if c['contactor_closed'] else 'open'}  {c['power_w']:.0f} W"
                  f"  session {c['session_energy_wh'] or 0:.1f} Wh", flush=True)
            await asyncio.sleep(2.0)
        _say("EV unplugged")
        ask("sim.unplug", {"connector": 1})
        await _wait_for(lambda: any(t.stop_timestamp for t in csms.transactions.values()), "StopTransaction")
        await _wait_for(lambda: (s := status()) and s["journal"]["pending"] == 0, "journal to drain")
        ok = _summary(csms)
    except (TimeoutError, ControlClientError) as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
    finally:
        if agent.returncode is None:
            agent.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent.wait(), 10)
            except TimeoutError:
                agent.kill()
        await csms.stop()
        if ok and not os.environ.get("EVSE_DEMO_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"files kept in {workdir}")
    return 0 if ok else 1


def _summary(csms: LocalCsms) -> bool:
    _say("summary")
    for tx_id, tx in csms.transactions.items():
        energy = (tx.meter_stop or 0) - tx.meter_start
        print(f"   transaction {tx_id}: idTag {tx.id_tag}, connector {tx.connector_id}, "
              f"meterStart {tx.meter_start} Wh, meterStop {tx.meter_stop} Wh -> {energy} Wh, "
              f"reason {tx.stop_reason or 'Local'}, {len(tx.meter_values)} MeterValues")
    frames = [f for f in csms.frames if f.direction == "in" and f.message_type == 2]
    print(f"   {len(frames)} requests from the station, {len(csms.violations)} protocol violations")
    complete = [t for t in csms.transactions.values() if t.stop_timestamp and (t.meter_stop or 0) > t.meter_start]
    return bool(complete) and not csms.violations
