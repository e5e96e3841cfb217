"""SimBoard: a simulated AC station and its control surface (plug, pin, swipe, faults, snapshot)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from hal.interfaces import Board, ConnectorHardware, CpState, normalise_uid
from hal.sim.connector import FAULT_KINDS, SimConnector, SimConnectorSpec, SimEvSpec
from hal.sim.devices import (
    SimConnectorLock,
    SimContactor,
    SimControlPilot,
    SimEnergyMeter,
    SimProximityPilot,
    SimResidualCurrentMonitor,
    SimRfidReader,
    SimStatusIndicator,
)

log = logging.getLogger(__name__)

STATE_FILE_VERSION = 1
ENERGY_SAVE_INTERVAL_S = 1.0  # the register is saved at most this often while it moves
ADVANCE_RESOLUTION_S = 0.0005  # the model's time step for reads in one burst (an EV reacts in 100s of ms)


class _SimHardwareBoard(Board):
    """Board that also flushes the simulated meter register on a clean shutdown."""

    async def close(self) -> None:
        await super().close()
        if isinstance(self.simulator, SimBoard):
            self.simulator.save()


class SimBoard:
    def __init__(
        self,
        connectors: list[SimConnectorSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        ev: SimEvSpec = SimEvSpec(),  # noqa: B008 - frozen dataclass, safe as a default
        voltage_v: float = 230.0,
        state_file: Path | None = None,
        name: str = "sim",
    ):
        if not connectors:
            raise ValueError("a simulated board needs at least one connector")
        seen: set[int] = set()
        for spec in connectors:
            spec.validate()
            if spec.id in seen:
                raise ValueError(f"duplicate connector id {spec.id}")
            seen.add(spec.id)
        ev.validate()
        if not voltage_v > 0:
            raise ValueError(f"voltage_v must be > 0, got {voltage_v!r}")

        self.name = name
        self._clock = clock
        self._state_file = Path(state_file) if state_file is not None else None
        self._change_listeners: list[Callable[[], None]] = []
        now = clock()
        self._connectors = {
            spec.id: SimConnector(spec, ev, voltage_v, now) for spec in sorted(connectors, key=lambda s: s.id)
        }
        self._rfid = SimRfidReader()
        self._pilot_stalls: dict[int, float] = {}  # connector -> seconds its next pilot read blocks
        self._saved_energy: dict[int, float] = {}
        self._last_save_at = now
        self._advanced_at = -math.inf
        self._load_state()
        self._board = self._build_board()

    # --- HAL ---------------------------------------------------------------------------------------------

    def as_board(self) -> Board:
        return self._board

    def _build_board(self) -> Board:
        hardware = []
        for conn in self._connectors.values():
            spec = conn.spec
            hardware.append(
                ConnectorHardware(
                    connector_id=spec.id,
                    pilot=SimControlPilot(self, conn),
                    contactor=SimContactor(self, conn),
                    meter=SimEnergyMeter(self, conn),
                    proximity=SimProximityPilot(self, conn) if spec.cable_ampacity_a is not None else None,
                    lock=SimConnectorLock(self, conn) if spec.has_lock else None,
                    rcd=SimResidualCurrentMonitor(self, conn),
                    indicator=SimStatusIndicator(self, conn),
                    max_current_a=spec.max_current_a,
                    phases=spec.phases,
                )
            )
        return _SimHardwareBoard(name=self.name, connectors=hardware, rfid=self._rfid, simulator=self)

    def advance(self) -> None:
        """Bring every connector up to the clock; devices call this before each read or command. A control
        step reads some twenty devices within a fraction of a millisecond: the model moves once for them
        (ADVANCE_RESOLUTION_S), not twenty times, which is most of a step's cost on a 4-connector board."""
        now = self._clock()
        if 0.0 <= now - self._advanced_at < ADVANCE_RESOLUTION_S:
            return
        self._advanced_at = now
        for conn in self._connectors.values():
            conn.advance(now)
        self._maybe_save_energy(now)

    # --- control surface ---------------------------------------------------------------------------------

    def plug(self, connector: int = 1) -> None:
        """Cable in, a fresh EV (initial SoC) in state B, following the pilot."""
        conn = self._connector(connector)
        self.advance()
        conn.plug()
        self.state_changed()

    def unplug(self, connector: int = 1) -> None:
        conn = self._connector(connector)
        self.advance()
        conn.unplug()
        self.state_changed()

    def set_ev_state(self, state: str | None, connector: int = 1, after_s: float | None = None) -> None:
        """Pin the EV to A..F ("A" unplugs), or None/"auto" to let it follow the pilot again; `after_s`
        later if given (on the running event loop: the EV changes state by itself, whoever is busy)."""
        conn = self._connector(connector)
        pinned = _parse_ev_state(state)
        if after_s is not None:
            self.schedule_ev_states([[after_s, state]], connector)
            return
        self._pin(conn, pinned, time.monotonic())

    def schedule_ev_states(self, steps: list, connector: int = 1) -> int:
        """A script for the EV: `[[seconds from now, state], ...]`, each pinned at its time by the running
        event loop, which also wakes the pilot's listeners (the benchmarks' EV going C->B). Each change is
        marked with the time it was due, so a late callback cannot hide a slow control loop."""
        conn = self._connector(connector)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        parsed = []
        for item in steps:
            try:
                delay, state = float(item[0]), item[1]
            except (TypeError, ValueError, IndexError):
                raise ValueError(f"an EV script step is [seconds, state], got {item!r}") from None
            if not 0 <= delay <= 3600:
                raise ValueError(f"an EV script step must be 0..3600 s ahead, got {delay!r}")
            parsed.append((delay, _parse_ev_state(state)))
        for delay, pinned in parsed:
            loop.call_at(loop.time() + delay, self._pin, conn, pinned, start + delay, True)
        return len(parsed)

    def timing_marks(self, connector: int = 1) -> list:
        """The EV-state pins and contactor commands since the last call, as [time.monotonic(), what, value]."""
        conn = self._connector(connector)
        marks = list(conn.marks)
        conn.marks.clear()
        return marks

    def _pin(self, conn: SimConnector, pinned: CpState | None, due: float, save_later: bool = False) -> None:
        self.advance()
        if pinned is None:
            conn.pinned = None
        elif pinned is CpState.A:
            conn.unplug()
        else:
            if not conn.plugged:
                conn.plug()  # pinning a connected state implies a cable and an EV
            conn.pinned = pinned
        # when it was due, and when the pilot really changed (an event loop's timer fires late)
        conn.marks.append([due, "ev", pinned.value if pinned is not None else "auto"])
        conn.marks.append([time.monotonic(), "ev_applied", pinned.value if pinned is not None else "auto"])
        if save_later:  # a scripted EV: the state file is written after the control loop had its turn
            self._tell_listeners()
            asyncio.get_running_loop().call_later(0.05, self.save)
        else:
            self.state_changed()

    def swipe(self, tag: str) -> None:
        """Present a card to the reader; the UID is normalised like a real reader's (ValueError if not hex)."""
        if not isinstance(tag, str):
            raise ValueError(f"card UID must be a hex string, got {tag!r}")
        self._rfid.present(normalise_uid(tag))

    def set_fault(self, kind: str, on: bool, connector: int = 1) -> None:
        conn = self._connector(connector)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if not isinstance(on, bool):
            raise ValueError(f"fault switch must be true or false, got {on!r}")
        if kind == "lock" and not conn.spec.has_lock:
            raise ValueError(f"connector {connector} has no lock (fixed cable or lock = false)")
        self.advance()
        if on:
            conn.faults.add(kind)
            if kind == "rcd":
                conn.rcd_latched = True
        else:
            conn.faults.discard(kind)  # an RCD trip stays latched until rcd.reset()
            if kind == "lock":
                conn.move_lock()  # freed, the actuator goes where it was last commanded
        self.state_changed()

    def stall_pilot(self, seconds: float, connector: int = 1) -> None:
        """Test hook: the next control-pilot read of `connector` blocks the calling thread for `seconds`, the
        way a read from a stuck bus or driver blocks the agent's control step (and its whole event loop).
        The end-to-end test of the systemd watchdog uses it: while it blocks, no WATCHDOG=1 may be sent."""
        self._connector(connector)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 600:
            raise ValueError(f"stall must be between 0 and 600 s, got {seconds!r}")
        self._pilot_stalls[connector] = float(seconds)

    def take_pilot_stall(self, connector: int) -> None:
        """Called by the simulated pilot before each read: carries out a pending stall_pilot()."""
        seconds = self._pilot_stalls.pop(connector, None)
        if seconds:
            log.warning("sim: control pilot read of connector %d blocks for %.1f s (stall_pilot)", connector, seconds)
            time.sleep(seconds)

    def snapshot(self) -> dict:
        self.advance()
        connectors = []
        for conn in self._connectors.values():
            connectors.append(
                {
                    "id": conn.spec.id,
                    "plugged": conn.plugged,
                    "ev_state": conn.ev_presents().value,
                    "pinned": conn.pinned.value if conn.pinned is not None else None,
                    "pilot_mode": conn.output.mode.value,
                    "duty": conn.output.duty_percent,
                    "contactor_commanded": conn.contactor_commanded,
                    "contactor_feedback": conn.contacts_closed(),
                    "current_a": list(conn.phase_currents()),
                    "energy_wh": conn.energy_wh,
                    "faults": sorted(conn.faults),
                    "rcd_tripped": conn.rcd_latched,
                    "lock_commanded": conn.lock_commanded,
                    "locked": conn.locked,
                    "indicator": conn.indicator,
                    "soc": conn.soc if conn.plugged else None,
                }
            )
        return {"name": self.name, "connectors": connectors, "rfid_pending": self._rfid.pending}

    def _connector(self, connector: int) -> SimConnector:
        conn = self._connectors.get(connector) if isinstance(connector, int) else None
        if conn is None:
            known = ", ".join(str(c) for c in self._connectors)
            raise ValueError(
                f"no connector {connector!r} on simulated board {self.name!r} (connectors: {known})"
            )
        return conn

    # --- persistence -------------------------------------------------------------------------------------

    def state_changed(self) -> None:
        """Something a restart must not forget changed: save now, and tell the pilot's listeners."""
        self.save()
        self._tell_listeners()

    def _tell_listeners(self) -> None:
        for listener in list(self._change_listeners):
            listener()

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        self._change_listeners.append(listener)

    def save(self) -> None:
        """Write the state file atomically (temp file + os.replace); a failure is logged, not raised."""
        if self._state_file is None:
            return
        data = {
            "version": STATE_FILE_VERSION,
            "connectors": {
                str(conn.spec.id): {
                    "plugged": conn.plugged,
                    "pinned": conn.pinned.value if conn.pinned is not None else None,
                    "energy_wh": conn.energy_wh,
                    "soc": conn.soc,
                    "faults": sorted(conn.faults),
                    "rcd_tripped": conn.rcd_latched,
                }
                for conn in self._connectors.values()
            },
        }
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.warning("cannot save simulator state to %s: %s", self._state_file, exc)
            return
        self._saved_energy = {cid: conn.energy_wh for cid, conn in self._connectors.items()}
        self._last_save_at = self._clock()

    def register_seen(self) -> None:
        """A meter reading is about to leave the board: persist the register if it moved."""
        if self._state_file is not None and any(
            self._saved_energy.get(cid) != conn.energy_wh for cid, conn in self._connectors.items()
        ):
            self.save()

    def _maybe_save_energy(self, now: float) -> None:
        if self._state_file is None or now - self._last_save_at < ENERGY_SAVE_INTERVAL_S:
            return
        if any(self._saved_energy.get(cid) != conn.energy_wh for cid, conn in self._connectors.items()):
            self.save()

    def _load_state(self) -> None:
        if self._state_file is None:
            return
        try:
            text = self._state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read simulator state %s (%s); starting fresh", self._state_file, exc)
            return
        try:
            restored = _parse_state(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("ignoring corrupt simulator state %s (%s); starting fresh", self._state_file, exc)
            return
        for cid, saved in restored.items():
            conn = self._connectors.get(cid)
            if conn is None:
                continue  # the board config lost a connector: nothing to restore it into
            if saved["plugged"]:
                conn.plug()  # the EV reacts to the (fresh, X1) pilot after its response time
            conn.pinned = saved["pinned"] if saved["plugged"] else None
            conn.soc = saved["soc"]
            conn.energy_wh = saved["energy_wh"]
            conn.faults = set(saved["faults"])
            conn.rcd_latched = saved["rcd_tripped"] or "rcd" in conn.faults
        self._saved_energy = {cid: conn.energy_wh for cid, conn in self._connectors.items()}


def _parse_ev_state(state: str | None) -> CpState | None:
    if state is None:
        return None
    if isinstance(state, str):
        text = state.strip().upper()
        if text == "AUTO":
            return None
        if text in CpState.__members__:
            return CpState(text)
    raise ValueError(f"EV state must be one of A, B, C, D, E, F or 'auto', got {state!r}")


def _parse_state(data: object) -> dict[int, dict]:
    """Validate a loaded state file; raise ValueError/TypeError on anything unexpected."""
    if not isinstance(data, dict) or data.get("version") != STATE_FILE_VERSION:
        raise ValueError(f"expected a version {STATE_FILE_VERSION} state object")
    restored: dict[int, dict] = {}
    for key, entry in data["connectors"].items():
        plugged = entry["plugged"]
        energy = entry["energy_wh"]
        soc = entry["soc"]
        faults = entry["faults"]
        pinned = entry["pinned"]
        rcd_tripped = entry.get("rcd_tripped", False)
        if not isinstance(plugged, bool) or not isinstance(rcd_tripped, bool):
            raise ValueError(f"connector {key}: plugged/rcd_tripped must be booleans")
        if isinstance(energy, bool) or not isinstance(energy, int | float) or not 0 <= energy < float("inf"):
            raise ValueError(f"connector {key}: bad energy_wh {energy!r}")
        if isinstance(soc, bool) or not isinstance(soc, int | float) or not 0 <= soc <= 1:
            raise ValueError(f"connector {key}: bad soc {soc!r}")
        if not isinstance(faults, list) or any(f not in FAULT_KINDS for f in faults):
            raise ValueError(f"connector {key}: bad faults {faults!r}")
        pinned_state = _parse_ev_state(pinned)
        if pinned_state is CpState.A:
            raise ValueError(f"connector {key}: pinned A is stored as unplugged")
        restored[int(key)] = {
            "plugged": plugged,
            "pinned": pinned_state,
            "energy_wh": float(energy),
            "soc": float(soc),
            "faults": faults,
            "rcd_tripped": rcd_tripped,
        }
    return restored
