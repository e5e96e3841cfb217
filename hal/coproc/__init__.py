"""Safety co-processor back-end: an MCU generates and samples the control pilot, drives the contactor and
opens it on its own; Linux sets the duty and allows power over a UART or CAN link.

Protocol: docs/coprocessor-protocol.md. Modules: protocol (frames, messages), uart and can (transports),
link (CoprocessorLink), devices (the HAL objects per connector), sim_mcu and mcu_ports (the MCU twin),
build (config).
pyserial and python-can are imported only by the transport that needs them.
"""

from hal.coproc.build import build_coprocessor
from hal.coproc.devices import CoprocessorConnector
from hal.coproc.link import CoprocessorLink

__all__ = ["CoprocessorConnector", "CoprocessorLink", "build_coprocessor"]
