"""Modbus back-ends: shared buses (RTU/TCP), energy meters described as data, the EVSE-DIN style EVSE board.

Config builders, one per device kind, each taking a ConfigTable:
    build_bus(table)               [buses.<name>]            -> ModbusBus
    build_meter(table, ctx)        connector `meter` table    -> ModbusMeter
    build_evse_board(table, ctx)   connector `pilot` table    -> EvseDinBoard (pilot and contactor)
"""

from hal.modbus.bus import (
    ModbusBus,
    ModbusBusError,
    ModbusCrcError,
    ModbusExceptionResponse,
    ModbusGarbledReplyError,
    ModbusNotConnectedError,
    ModbusTimeoutError,
    ModbusWrongDeviceError,
    RtuSettings,
    TcpSettings,
    build_bus,
)
from hal.modbus.evse_board import EvseDinBoard, build_evse_board
from hal.modbus.meter import ModbusMeter, build_meter
from hal.modbus.meter_profiles import PROFILES, MeterProfile, Register

__all__ = [
    "PROFILES",
    "EvseDinBoard",
    "MeterProfile",
    "ModbusBus",
    "ModbusBusError",
    "ModbusCrcError",
    "ModbusExceptionResponse",
    "ModbusGarbledReplyError",
    "ModbusMeter",
    "ModbusNotConnectedError",
    "ModbusTimeoutError",
    "ModbusWrongDeviceError",
    "Register",
    "RtuSettings",
    "TcpSettings",
    "build_bus",
    "build_evse_board",
    "build_meter",
]
