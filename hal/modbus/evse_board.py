"""The EVSE-DIN style Modbus EVSE board (SimpleEVSE / EVSE-DIN, as driven by openWB) as pilot and contactor.

The board generates the CP signal, reads the vehicle state and switches its own relay: it offers the
current written to register 1000 and closes the relay by itself when that current is above 0 and the EV
is in state C (or D). So this back-end maps the HAL calls onto that one register:

    set_pwm(duty)         1000 = current_for_duty(duty), rounded down to whole A (0 if below 6 A)
    set_x1()              1000 = 0 (the board drives +12 V)
    set_f()               1000 = 0: EVSE-DIN has no state F output; with 0 A the EV cannot draw current,
                          which is what F is for. `output` still reports F, as commanded.
    set_closed(False)     1000 = 0, whatever the pilot command: opening must always be possible. Once a
                          poll after that write sees the EV out of C/D (the relay is open), the pilot
                          current is offered again, so an EV that paused can resume.
    set_closed(True)      only recorded: the board closes by itself when current > 0 and state C/D.
    feedback_closed()     INFERRED, there is no mirror contact: register 1002 is C or D and register
                          1000 (read back) is above 0. It cannot detect a welded relay.

Registers are polled by a background task every `poll_period_s`; a command wakes it at once so a write
reaches the board within one bus round trip. read() returns the latest poll synchronously and never
raises: a board that has not answered for more than MISSED_POLLS_FOR_F polls in a row (or not yet)
reads as state F, which the agent treats as a pilot fault while it drives PWM or X1.

The board, not the agent, decides when the relay closes: an EV that enters C while current is offered
gets power at once, before the agent's set_closed(True), and the agent's minimum interval between closes
cannot hold it back.

Vehicle state 5 ("failure") reads as state E, which the agent always treats as a fault (F would not be
one while the agent itself drives F). The board does its own diode check and measures the CP itself; over
Modbus it reports neither, so read() fills PilotReading with the state's nominal plateaus and
diode_ok=True (the interface needs numbers), and `reports_plateau_voltages` / `reports_diode_check` are
False so that nothing shows them to a person as measured (`evse hw pilot` says "not reported").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

from hal.board import ConfigTable
from hal.build import BuildContext, Lifecycle
from hal.interfaces import (
    Contactor,
    ControlPilot,
    CpState,
    HardwareError,
    PilotMode,
    PilotOutput,
    PilotReading,
)
from hal.modbus.bus import ModbusBus, lookup_bus
from hal.pilot_math import current_for_duty

log = logging.getLogger(__name__)

REG_CURRENT = 1000  # current to offer: A, or 0.01 A when PRECISE_CURRENT_BIT is set; 0 = do not charge
REG_ACTUAL_CURRENT = 1001  # current the board's PWM announces now (same unit)
REG_VEHICLE_STATE = 1002
REG_FIRMWARE = 1005
REG_CONFIG = 2005  # config bits
PRECISE_CURRENT_BIT = 1 << 7  # in 2005: registers 1000/1001 count 0.01 A (firmware >= 17)

VEHICLE_STATES = {1: CpState.A, 2: CpState.B, 3: CpState.C, 4: CpState.D, 5: CpState.E}
MISSED_POLLS_FOR_F = 3  # more failed polls in a row than this and read() reports state F
DEFAULT_POLL_PERIOD_S = 0.2

_NOMINAL_HIGH_V = {
    CpState.A: 12.0, CpState.B: 9.0, CpState.C: 6.0, CpState.D: 3.0, CpState.E: 0.0, CpState.F: -12.0
}
_EV_WANTS_POWER = (CpState.C, CpState.D)
X1_OUTPUT = PilotOutput(PilotMode.X1, 100.0)
F_OUTPUT = PilotOutput(PilotMode.F, 0.0)


class EvseDinBoard(ControlPilot, Contactor, Lifecycle):
    # Register 1002 is all the board tells about the CP: the voltages and diode_ok of read() are placeholders
    reports_plateau_voltages = False
    reports_diode_check = False

    def __init__(self, bus: ModbusBus, device_id: int, *, poll_period_s: float = DEFAULT_POLL_PERIOD_S):
        if not 1 <= device_id <= 247:
            raise ValueError(f"Modbus device id must be 1..247, got {device_id}")
        self.bus = bus
        self.device_id = device_id
        self.poll_period_s = poll_period_s
        # what the agent commanded
        self._output = X1_OUTPUT
        self._pilot_current_a = 0
        self._contactor_closed = False
        self._open_veto = False  # set_closed(False): offer 0 A until the board shows 0 A and no C/D
        # what the board reported in the last good poll
        self.vehicle_state: CpState | None = None
        self.offered_current_a: float | None = None  # register 1000 read back
        self.actual_current_a: float | None = None  # register 1001
        self.firmware_version: int | None = None
        self.config_bits: int | None = None
        # health
        self.consecutive_failures = 0
        self.poll_count = 0
        self.last_error: str | None = None
        self._register_1000: int | None = None  # raw read-back of the current register
        self._unconfirmed_target: int | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._attached = False
        self._closing = False

    @property
    def name(self) -> str:
        return f"EVSE board (device id {self.device_id} on {self.bus.describe()})"

    # ---- ControlPilot -----------------------------------------------------------------------------

    def read(self) -> PilotReading:
        state = self.vehicle_state if self.answering and self.vehicle_state is not None else CpState.F
        high = _NOMINAL_HIGH_V[state]
        low = -12.0 if self._output.mode is PilotMode.PWM and state is not CpState.E else high
        return PilotReading(state, high, low, diode_ok=True)

    def set_pwm(self, duty_percent: float) -> None:
        if isinstance(duty_percent, bool) or math.isnan(duty_percent) or not 0.0 <= duty_percent <= 100.0:
            raise ValueError(f"PWM duty must be between 0 and 100 %, got {duty_percent!r}")
        self._output = PilotOutput(PilotMode.PWM, float(duty_percent))
        self._command_current(math.floor(current_for_duty(duty_percent)))

    def set_x1(self) -> None:
        self._output = X1_OUTPUT
        self._command_current(0)

    def set_f(self) -> None:
        self._output = F_OUTPUT  # the board has no -12 V output: offering 0 A keeps the EV from drawing
        self._command_current(0)

    @property
    def output(self) -> PilotOutput:
        return self._output

    # ---- Contactor --------------------------------------------------------------------------------

    def set_closed(self, closed: bool) -> None:
        self._contactor_closed = bool(closed)
        self._open_veto = not closed
        self._wake.set()

    @property
    def commanded_closed(self) -> bool:
        return self._contactor_closed

    @property
    def has_mirror_contact(self) -> bool:
        return False  # the board closes its own relay; feedback below is inferred

    def feedback_closed(self) -> bool:
        """Inferred (no mirror contact): the board reports C/D and offers a current above 0."""
        if not self.answering:
            return False
        return self.vehicle_state in _EV_WANTS_POWER and (self.offered_current_a or 0) > 0

    # ---- state ------------------------------------------------------------------------------------

    @property
    def answering(self) -> bool:
        """True while the board's last state is fresh enough to act on."""
        return self.vehicle_state is not None and self.consecutive_failures <= MISSED_POLLS_FOR_F

    def _command_current(self, amps: int) -> None:
        self._pilot_current_a = amps
        self._wake.set()

    def _target_register_value(self) -> int:
        amps = 0 if self._open_veto else self._pilot_current_a
        return amps * self._current_scale()

    def _current_scale(self) -> int:
        return 100 if (self.config_bits or 0) & PRECISE_CURRENT_BIT else 1

    # ---- Lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._closing = False
        if not self._attached:
            self.bus.acquire()
            self._attached = True
        await self.poll_once()  # so read() right after start() already has the board's state
        self._task = asyncio.create_task(self._poll_forever(), name=f"evse-board-{self.device_id}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._wake.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._attached:
            try:  # leave the board offering nothing; it keeps the last current otherwise
                await self.bus.write_register(REG_CURRENT, 0, self.device_id)
            except HardwareError as exc:
                log.warning("%s: could not write 0 A on close: %s", self.name, exc)
            self._attached = False
            await self.bus.release()

    async def _poll_forever(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives just as the
        # event is set, and close() would wait forever. The _closing flag covers any other such race.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_period_s):
                    await self._wake.wait()
            self._wake.clear()
            if not self._closing:
                await self.poll_once()

    async def poll_once(self) -> None:
        """Read the board, write the current if it differs from the command. Never raises HardwareError."""
        try:
            if self.config_bits is None:  # first contact, or the board may have restarted
                self.firmware_version = (await self._read(REG_FIRMWARE, 1))[0]
                self.config_bits = (await self._read(REG_CONFIG, 1))[0]
                log.info("%s: firmware %d, config bits 0x%04X", self.name, self.firmware_version,
                         self.config_bits)
            self._take_snapshot(await self._read(REG_CURRENT, 3))
            target = self._target_register_value()
            if self._register_1000 != target:
                await self.bus.write_register(REG_CURRENT, target, self.device_id)
                self._take_snapshot(await self._read(REG_CURRENT, 3))
                self._check_write_took(target)
        except HardwareError as exc:
            self._poll_failed(exc)
            return
        if self.consecutive_failures:
            log.info("%s answers again", self.name)
        self.consecutive_failures = 0
        self.last_error = None
        self.poll_count += 1

    async def _read(self, address: int, count: int) -> list[int]:
        return await self.bus.read_holding(address, count, self.device_id)

    def _take_snapshot(self, registers: list[int]) -> None:
        current, actual, state_code = registers
        scale = self._current_scale()
        self._register_1000 = current
        self.offered_current_a = current / scale
        self.actual_current_a = actual / scale
        state = VEHICLE_STATES.get(state_code)
        if state is None:
            log.error("%s: unknown vehicle state %d in register 1002, treating it as a failure",
                      self.name, state_code)
            state = CpState.E
        elif state is CpState.E and self.vehicle_state is not CpState.E:
            log.error("%s reports vehicle state 5 (failure)", self.name)
        self.vehicle_state = state
        if self._open_veto and current == 0 and state not in _EV_WANTS_POWER:
            # Only we write 1000, so at 0 the relay is open; with the EV out of C/D the pilot may offer
            # again (an EV that paused must see the PWM to resume).
            self._open_veto = False
            self._wake.set()

    def _check_write_took(self, target: int) -> None:
        if self._register_1000 == target:
            self._unconfirmed_target = None
        elif self._unconfirmed_target != target:
            self._unconfirmed_target = target
            log.warning("%s: wrote %d to register 1000 but it reads back %d (above the board's limit?)",
                        self.name, target, self._register_1000)

    def _poll_failed(self, exc: HardwareError) -> None:
        self.consecutive_failures += 1
        self.last_error = str(exc)
        self.config_bits = None  # re-read after it answers again: it may have restarted with other settings
        if self.consecutive_failures == 1:
            log.warning("%s", exc)
        elif self.consecutive_failures == MISSED_POLLS_FOR_F + 1:
            log.error("%s: no answer for %d polls, reporting state F: %s", self.name,
                      self.consecutive_failures, exc)


# ---- config -------------------------------------------------------------------------------------------

EVSE_BOARD_KEYS = ("backend", "bus", "device_id", "poll_period_s")


def build_evse_board(table: ConfigTable, ctx: BuildContext) -> EvseDinBoard:
    """An EvseDinBoard from a connector's `pilot` table:
    pilot = {backend = "modbus-evse", bus = "rs485", device_id = 1}; it serves as the contactor too."""
    table.reject_unknown(EVSE_BOARD_KEYS)
    table.string("backend", choices=("modbus-evse",))
    bus = lookup_bus(table, ctx)
    device_id = table.integer("device_id", minimum=1, maximum=247)
    poll_period_s = table.number(
        "poll_period_s", default=DEFAULT_POLL_PERIOD_S, minimum=0.02, maximum=5, unit="s"
    )
    return EvseDinBoard(bus, device_id, poll_period_s=poll_period_s)
