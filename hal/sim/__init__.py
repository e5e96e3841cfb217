"""Simulated AC station: every HAL interface, driven by a virtual EV with the IEC 61851 resistor model.

Deterministic for a given clock: nothing runs in the background, the model is advanced from the injected
clock whenever a device is read or commanded. See SimBoard for the control surface (`evse sim ...`).
"""

from hal.sim.board import SimBoard
from hal.sim.connector import FAULT_KINDS, SimConnectorSpec, SimEvSpec

__all__ = ["FAULT_KINDS", "SimBoard", "SimConnectorSpec", "SimEvSpec"]
