"""A value the meter marks "not available" (None in the MeterReading: an unused phase of an ABB B23) is left
out of MeterValues and of the W-to-A conversion; the rest of the reading still goes to the CSMS."""

from __future__ import annotations

from agent.ocpp.v16.meter_values import sampled_values
from hal.interfaces import MeterReading

MEASURANDS = ["Energy.Active.Import.Register", "Power.Active.Import", "Current.Import", "Voltage"]


def test_unused_phases_marked_not_available_are_left_out_and_the_rest_is_sent():
    reading = MeterReading(energy_wh=1234.0, power_w=None, current_a=(10.0, None, None),
                           voltage_v=(230.1, None, None))
    values = sampled_values(reading, MEASURANDS, "Sample.Periodic")
    sent = {(v["measurand"], v.get("phase")): v["value"] for v in values}
    assert sent == {("Energy.Active.Import.Register", None): "1234", ("Current.Import", "L1"): "10.00",
                    ("Voltage", "L1-N"): "230.1"}


def test_a_complete_reading_sends_every_phase():
    reading = MeterReading(1.0, 690.0, (1.0, 1.0, 1.0), (230.0, 230.0, 230.0))
    values = sampled_values(reading, MEASURANDS, "Sample.Periodic")
    assert [v.get("phase") for v in values if v["measurand"] == "Voltage"] == ["L1-N", "L2-N", "L3-N"]
