"""Register maps of the supported energy meters, as data: one MeterProfile per model.

Addresses are 0-based PDU addresses, exactly what goes on the wire (Eastron "30073" = input register
0x0048). `scale` converts the raw value to the SI base unit the HAL reports: Wh, W, A, V, so energy in
kWh has scale 1000. Sources: hardware-notes.md section 3.1 (Eastron and Carlo Gavazzi manuals, volkszaehler
mbmd, openWB, SmartEVSE, EVerest).

To add a model: copy the closest profile, check every address, data type and word order against the
vendor's manual, and add a test that serves the documented values (tests/test_modbus_meters.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.client.mixin import ModbusClientMixin

DataType = Literal["int16", "uint16", "int32", "uint32", "uint64", "float32"]
WordOrder = Literal["big", "little"]

HOLDING = 3  # function code "read holding registers"
INPUT = 4  # function code "read input registers"

_PYMODBUS_TYPES = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "uint64": ModbusClientMixin.DATATYPE.UINT64,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
}
_WIDTH_BITS = {"int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "uint64": 64, "float32": 32}


@dataclass(frozen=True)
class Register:
    """Where one quantity lives and how to turn its registers into an SI value."""

    address: int  # 0-based PDU address
    function_code: int  # 3 = holding, 4 = input
    data_type: DataType
    scale: float  # raw value x scale = value in `unit`
    unit: str  # Wh, W, A or V
    word_order: WordOrder = "big"  # "little" = low word first (Carlo Gavazzi)

    @property
    def count(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return _WIDTH_BITS[self.data_type] // 16


@dataclass(frozen=True)
class MeterProfile:
    model: str  # the `model` key of the board config
    title: str
    phases: int
    energy_import: Register  # total active import, Wh
    power_total: Register  # total active power, W
    currents: tuple[Register, ...]  # A, L1..Ln
    voltages: tuple[Register, ...]  # V, L-N, L1..Ln
    max_registers_per_read: int  # longest request the meter accepts (the fallback covers wrong values)
    # all-ones (unsigned) or 0x7FFF... (signed) means "not available"; floats always use NaN for it
    integer_sentinels: bool = False
    serial_hint: str = ""  # factory serial settings, for the technician; the [buses] table sets the real ones

    def quantities(self) -> list[tuple[str, Register]]:
        """Every register read for one MeterReading, with a name for error messages."""
        named = [("energy import", self.energy_import), ("total power", self.power_total)]
        named += [(f"current L{n}", r) for n, r in enumerate(self.currents, 1)]
        named += [(f"voltage L{n}", r) for n, r in enumerate(self.voltages, 1)]
        return named


def decode(register: Register, words: list[int], *, integer_sentinels: bool = False) -> float | None:
    """Registers -> value in the register's unit, or None when the meter marks the value "not available".

    The marker depends on the register type: a float is NaN (Eastron answers NaN for a quantity it does
    not measure); an integer is all ones when unsigned (0xFFFF...) or 0x7FFF... when signed, for meters
    that use those (`integer_sentinels`, ABB). Whether an absent value is acceptable is the caller's call:
    an unused phase's voltage is, the energy register never is. Infinity is no marker: ValueError."""
    raw = ModbusClientMixin.convert_from_registers(
        words, _PYMODBUS_TYPES[register.data_type], word_order=register.word_order
    )
    assert isinstance(raw, int | float)
    if isinstance(raw, float):
        if math.isnan(raw):
            return None
        if math.isinf(raw):
            raise ValueError(f"raw value is {raw} (not a finite number)")
    elif integer_sentinels and raw == not_available_marker(register.data_type):
        return None
    return raw * register.scale


def not_available_marker(data_type: DataType) -> int:
    """The integer a meter with `integer_sentinels` answers for a quantity it cannot measure."""
    bits = _WIDTH_BITS[data_type]
    if data_type.startswith("u"):
        return (1 << bits) - 1  # 0xFFFF...
    return (1 << (bits - 1)) - 1  # 0x7FFF...


def marker_description(register: Register, integer_sentinels: bool) -> str:
    """How `register` says "not available", for error messages."""
    if register.data_type == "float32":
        return "NaN"
    if integer_sentinels:
        digits = _WIDTH_BITS[register.data_type] // 4
        return f"0x{not_available_marker(register.data_type):0{digits}X}"
    return "none"


# ---- models -------------------------------------------------------------------------------------------


def _per_phase(first: int, step: int, phases: int, **fields) -> tuple[Register, ...]:
    return tuple(Register(first + step * n, **fields) for n in range(phases))


def _eastron(model: str, title: str, *, phases: int, power_address: int, max_registers: int, serial: str):
    """Eastron SDM: input registers (FC 4), IEEE-754 float32, high word first, energy in kWh."""
    f32: dict[str, Any] = {"function_code": INPUT, "data_type": "float32"}
    return MeterProfile(
        model=model,
        title=title,
        phases=phases,
        energy_import=Register(0x0048, scale=1000.0, unit="Wh", **f32),  # 30073, kWh
        power_total=Register(power_address, scale=1.0, unit="W", **f32),
        currents=_per_phase(0x0006, 2, phases, scale=1.0, unit="A", **f32),  # 30007/9/11
        voltages=_per_phase(0x0000, 2, phases, scale=1.0, unit="V", **f32),  # 30001/3/5
        max_registers_per_read=max_registers,
        serial_hint=serial,
    )


SDM630 = _eastron(
    "sdm630",
    "Eastron SDM630 (Modbus V2 map, not the SDM630MCT V1.7 map)",
    phases=3,
    power_address=0x0034,  # 30053 total system power
    max_registers=80,  # 40 parameters per request
    serial="9600 baud; parity None or Even depending on the unit (settable on the meter), id 1",
)

SDM120 = _eastron(
    "sdm120",
    "Eastron SDM120 / SDM120CT (single phase)",
    phases=1,
    power_address=0x000C,  # 30013 active power: the SDM120 has no "total system power" register
    max_registers=40,  # not documented; exception 2 falls back to single reads
    serial="2400 baud 8N1, id 1",
)

SDM72D = _eastron(
    "sdm72d",
    "Eastron SDM72D-M",
    phases=3,
    power_address=0x0034,
    max_registers=10,  # manual: 30 parameters, but openWB found units that only read 10 registers
    serial="9600 baud; parity None or Even depending on the unit, id 1",
)

_ABB_U32 = {"function_code": HOLDING, "data_type": "uint32"}
ABB_B23 = MeterProfile(
    model="abb-b23",
    title="ABB B23 (A/B series)",
    phases=3,
    energy_import=Register(0x5000, HOLDING, "uint64", scale=10.0, unit="Wh"),  # 0.01 kWh
    power_total=Register(0x5B14, HOLDING, "int32", scale=0.01, unit="W"),
    currents=_per_phase(0x5B0C, 2, 3, scale=0.01, unit="A", **_ABB_U32),
    voltages=_per_phase(0x5B00, 2, 3, scale=0.1, unit="V", **_ABB_U32),
    max_registers_per_read=125,
    integer_sentinels=True,  # ABB answers 0xFFFF... / 0x7FFF... for a quantity it cannot measure
    serial_hint="check the meter's display menu (address, baud rate, parity); no verified factory default",
)
# The B24 differs from the B23 in its pulse/IO options, not in these registers.
ABB_B24 = MeterProfile(**{**ABB_B23.__dict__, "model": "abb-b24", "title": "ABB B24 (same map as the B23)"})

_EM340_I32: dict[str, Any] = {"function_code": INPUT, "data_type": "int32", "word_order": "little"}
EM340 = MeterProfile(
    model="em340",
    title="Carlo Gavazzi EM340",
    phases=3,
    energy_import=Register(0x0034, scale=100.0, unit="Wh", **_EM340_I32),  # kWh(+) total, 0.1 kWh
    power_total=Register(0x0028, scale=0.1, unit="W", **_EM340_I32),
    currents=_per_phase(0x000C, 2, 3, scale=0.001, unit="A", **_EM340_I32),
    voltages=_per_phase(0x0000, 2, 3, scale=0.1, unit="V", **_EM340_I32),
    max_registers_per_read=50,  # unverified; exception 2 falls back to single reads
    serial_hint="9600 baud 8N1, id 1 (unverified; settable on the meter)",
)

PROFILES: dict[str, MeterProfile] = {
    p.model: p for p in (SDM630, SDM120, SDM72D, ABB_B23, ABB_B24, EM340)
}
