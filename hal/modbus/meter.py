"""An EnergyMeter that reads a MeterProfile over a shared ModbusBus.

A request that fails, an energy register the meter cannot give, or an implausible value fails the whole
reading: read() raises MeterError and the health counters go up; it never returns zeros, because a zero
energy register would end up in a transaction's meterStop. A power, current or voltage the meter marks
"not available" (NaN, or ABB's 0xFFFF... marker, e.g. for an unused phase) is None in the reading: the
energy and the other values stay good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from hal.board import ConfigTable
from hal.build import BuildContext, Clock, Lifecycle
from hal.interfaces import EnergyMeter, MeterError, MeterReading
from hal.modbus.bus import ModbusBus, ModbusBusError, ModbusExceptionResponse, lookup_bus
from hal.modbus.meter_profiles import PROFILES, MeterProfile, Register, decode, marker_description

log = logging.getLogger(__name__)

MAX_PLAUSIBLE_VOLTAGE_V = 500.0  # L-N; above this the register map or the scale is wrong
ILLEGAL_DATA_ADDRESS = 2


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus request covering adjacent registers of the same function code."""

    function_code: int
    address: int
    count: int
    items: tuple[tuple[str, Register], ...]


def plan_requests(quantities: list[tuple[str, Register]], max_registers: int) -> list[ReadRequest]:
    """As few requests as possible: merge registers that follow each other without a gap, up to
    `max_registers` per request. Gaps are never bridged, since unmapped registers answer exception 2."""
    requests: list[ReadRequest] = []
    for name, reg in sorted(quantities, key=lambda q: (q[1].function_code, q[1].address)):
        last = requests[-1] if requests else None
        if (
            last is not None
            and last.function_code == reg.function_code
            and last.address + last.count == reg.address
            and last.count + reg.count <= max_registers
        ):
            requests[-1] = ReadRequest(
                last.function_code, last.address, last.count + reg.count, (*last.items, (name, reg))
            )
        else:
            requests.append(ReadRequest(reg.function_code, reg.address, reg.count, ((name, reg),)))
    return requests


class ModbusMeter(EnergyMeter, Lifecycle):
    def __init__(self, profile: MeterProfile, bus: ModbusBus, device_id: int, *, clock: Clock = time.monotonic):
        if not 1 <= device_id <= 247:
            raise ValueError(f"Modbus device id must be 1..247, got {device_id}")
        self.profile = profile
        self.bus = bus
        self.device_id = device_id
        self._clock = clock
        self._requests = plan_requests(profile.quantities(), profile.max_registers_per_read)
        self._read_lock = asyncio.Lock()
        self._attached = False
        # health, for diagnostics and status pages
        self.last_good_at: float | None = None  # clock() of the last good reading
        self.last_reading: MeterReading | None = None
        self.consecutive_errors = 0
        self.error_count = 0
        self.last_error: str | None = None
        self._absent: list[str] = []  # quantities the meter marked not available in the last reading

    @property
    def name(self) -> str:
        return f"{self.profile.title} meter"

    @property
    def phases(self) -> int:
        return self.profile.phases

    @property
    def requests_per_reading(self) -> int:
        return len(self._requests)

    async def start(self) -> None:
        if not self._attached:
            self.bus.acquire()
            self._attached = True

    async def close(self) -> None:
        if self._attached:
            self._attached = False
            await self.bus.release()

    async def read(self) -> MeterReading:
        async with self._read_lock:
            try:
                values = await self._read_values()
                reading = self._checked_reading(values)
            except MeterError as exc:
                self._count_failure(exc)
                raise
            if self.consecutive_errors:
                log.info("%s (device id %d) answers again", self.name, self.device_id)
            self.consecutive_errors = 0
            self.last_good_at = reading.taken_at
            self.last_reading = reading
            return reading

    async def _read_values(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for request in list(self._requests):
            try:
                words = await self.bus.read_registers(
                    request.function_code, request.address, request.count, self.device_id
                )
            except ModbusExceptionResponse as exc:
                if exc.exception_code != ILLEGAL_DATA_ADDRESS or len(request.items) == 1:
                    raise MeterError(f"{self.name}: {exc}") from exc
                words = await self._split(request)
            except ModbusBusError as exc:
                raise MeterError(f"{self.name}: {exc}") from exc
            values.update(self._decode(request, words))
        return values

    async def _split(self, request: ReadRequest) -> list[int]:
        """The meter refused a bulk read (exception 2): read the items one by one, now and from now on."""
        log.warning(
            "%s (device id %d): bulk read 0x%04X+%d refused, reading its %d values one by one",
            self.name, self.device_id, request.address, request.count, len(request.items),
        )
        singles = [ReadRequest(request.function_code, reg.address, reg.count, ((name, reg),))
                   for name, reg in request.items]
        index = self._requests.index(request)
        self._requests[index : index + 1] = singles
        words: list[int] = []
        for single in singles:
            try:
                words += await self.bus.read_registers(
                    single.function_code, single.address, single.count, self.device_id
                )
            except ModbusBusError as exc:
                raise MeterError(f"{self.name}: {exc}") from exc
        return words

    def _decode(self, request: ReadRequest, words: list[int]) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for name, reg in request.items:
            offset = reg.address - request.address
            try:
                value = decode(reg, words[offset : offset + reg.count],
                               integer_sentinels=self.profile.integer_sentinels)
            except ValueError as exc:
                raise MeterError(self._where(name, reg) + f": {exc}") from exc
            # below every meter's resolution; drops float noise. None: the meter marks it not available
            values[name] = None if value is None else round(value, 3)
        return values

    def _checked_reading(self, values: dict[str, float | None]) -> MeterReading:
        energy_reg = self.profile.energy_import
        energy = values["energy import"]
        if energy is None:  # without the register there is nothing to bill: the reading failed
            marker = marker_description(energy_reg, self.profile.integer_sentinels)
            raise MeterError(self._where("energy import", energy_reg)
                             + f": not available (the meter answered its 'not available' marker {marker}"
                             + (", not a number)" if marker == "NaN" else ")"))
        if energy < 0:
            raise MeterError(self._where("energy import", energy_reg) + f": negative energy {_number(energy)} Wh")
        previous = self.last_reading.energy_wh if self.last_reading is not None else None
        if previous is not None and energy < previous:
            raise MeterError(
                self._where("energy import", energy_reg)
                + f": went backwards from {_number(previous)} Wh to {_number(energy)} Wh"
                + " (meter replaced or reset? restart the agent)"
            )
        for n, reg in enumerate(self.profile.voltages, 1):
            volts = values[f"voltage L{n}"]
            if volts is not None and not 0 <= volts <= MAX_PLAUSIBLE_VOLTAGE_V:
                raise MeterError(self._where(f"voltage L{n}", reg) + f": implausible {_number(volts)} V")
        absent = sorted(name for name, value in values.items() if value is None)
        if absent != self._absent:
            if absent:
                log.info("%s (device id %d) marks %s not available (unused phase?); the rest of the reading "
                         "is used", self.name, self.device_id, ", ".join(absent))
            self._absent = absent
        phases = range(1, self.profile.phases + 1)
        return MeterReading(
            energy_wh=energy,
            power_w=values["total power"],  # each of these None where the meter marks it not available
            current_a=tuple(values[f"current L{n}"] for n in phases),
            voltage_v=tuple(values[f"voltage L{n}"] for n in phases),
            taken_at=self._clock(),
        )

    def _where(self, quantity: str, reg: Register) -> str:
        kind = "input" if reg.function_code == 4 else "holding"
        return (
            f"{self.name}: {self.bus.describe()}: device id {self.device_id}: "
            f"{quantity} ({kind} register 0x{reg.address:04X})"
        )

    def _count_failure(self, exc: MeterError) -> None:
        self.consecutive_errors += 1
        self.error_count += 1
        self.last_error = str(exc)
        if self.consecutive_errors == 1:
            log.warning("%s", exc)
        else:
            log.debug("%s (%d in a row)", exc, self.consecutive_errors)


def _number(value: float) -> str:
    """1234500.0 -> "1234500", 230.25 -> "230.25" (no exponent notation for energy registers)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


# ---- config -------------------------------------------------------------------------------------------

METER_KEYS = ("backend", "model", "bus", "device_id")


def build_meter(table: ConfigTable, ctx: BuildContext) -> ModbusMeter:
    """A ModbusMeter from a connector's `meter` table:
    meter = {backend = "modbus", model = "sdm630", bus = "rs485", device_id = 105}"""
    table.reject_unknown(METER_KEYS)
    table.string("backend", choices=("modbus",))
    profile = PROFILES[table.string("model", choices=tuple(PROFILES))]
    bus = lookup_bus(table, ctx)
    device_id = table.integer("device_id", minimum=1, maximum=247)
    return ModbusMeter(profile, bus, device_id, clock=ctx.clock)
