"""Turn a meter reading into OCPP 1.6 sampledValue entries (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.core.clock import utc_now
from hal.interfaces import MeterReading

# The measurands this agent can supply from a meter reading; the OCPP configuration only accepts these.
SUPPORTED_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Current.Import",
    "Current.Offered",
    "Voltage",
)


def ocpp_timestamp(when: datetime | None = None) -> str:
    """UTC with milliseconds and "Z", the form every CSMS parses. Callers with an injected clock pass
    its time; without `when`, the real clock of agent.core.clock."""
    when = when or utc_now()
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def sampled_values(
    reading: MeterReading, measurands: list[str], context: str, offered_current_a: float = 0.0
) -> list[dict]:
    """sampledValue entries for the configured measurands, per phase where the measurand is per phase."""
    values: list[dict] = []
    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register":
            values.append(_value(_fmt(reading.energy_wh, 0), context, measurand, "Wh"))
        # a value the meter marks "not available" (None: an unused phase) is left out, never sent as 0
        elif measurand == "Power.Active.Import":
            if reading.power_w is not None:
                values.append(_value(_fmt(reading.power_w, 0), context, measurand, "W"))
        elif measurand == "Current.Import":
            for i, amps in enumerate(reading.current_a, start=1):
                if amps is not None:
                    values.append(_value(_fmt(amps, 2), context, measurand, "A", phase=f"L{i}"))
        elif measurand == "Voltage":
            for i, volts in enumerate(reading.voltage_v, start=1):
                if volts is not None:
                    values.append(_value(_fmt(volts, 1), context, measurand, "V", phase=f"L{i}-N"))
        elif measurand == "Current.Offered":
            values.append(_value(_fmt(offered_current_a, 1), context, measurand, "A"))
    return values


def _value(value: str, context: str, measurand: str, unit: str, phase: str | None = None) -> dict:
    entry = {"value": value, "context": context, "measurand": measurand, "location": "Outlet", "unit": unit}
    if phase:
        entry["phase"] = phase
    return entry


def meter_value(
    reading: MeterReading, measurands: list[str], context: str, timestamp: str, offered_current_a: float = 0.0
) -> dict:
    return {
        "timestamp": timestamp,
        "sampledValue": sampled_values(reading, measurands, context, offered_current_a),
    }


def register_value(energy_wh: float, context: str, timestamp: str) -> dict:
    """A meterValue holding only the energy register (Transaction.Begin/End in transactionData)."""
    return {
        "timestamp": timestamp,
        "sampledValue": [_value(_fmt(energy_wh, 0), context, "Energy.Active.Import.Register", "Wh")],
    }
