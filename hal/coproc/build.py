"""build_coprocessor: a CoprocessorLink from the board config's [coprocessor] table.

    [coprocessor]
    transport = "uart"            # or "can", or one a package registers (TRANSPORTS)
    port = "/dev/ttyAMA0"         # uart: the serial device
    baudrate = 115200             # uart, default 115200
    # can_interface = "socketcan" # can: python-can interface, default "socketcan"
    # can_channel = "can0"        # can: required
    # can_base_id = 0x100         # can: first of the 32 ids the link uses, a multiple of 0x20
    keepalive_s = 1.0             # host -> MCU keep-alive period
    mcu_timeout_s = 3.0           # the MCU opens and shows F after this long without a keep-alive
    status_timeout_s = 1.0        # the host's reads raise HardwareError after this long without Status

The board builder takes each connector's devices from `link.connector(n)` (before the board starts) and
puts the link itself in Board.extras so Board.start()/close() run it.
"""

from __future__ import annotations

from hal.board import ConfigTable
from hal.build import BuildContext
from hal.coproc.link import CoprocessorLink
from hal.coproc.transport import Transport
from hal.registry import BackendRegistry

UART_KEYS = ("port", "baudrate")
CAN_KEYS = ("can_interface", "can_channel", "can_base_id")
COMMON_KEYS = ("transport", "keepalive_s", "mcu_timeout_s", "status_timeout_s")
BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600, 1000000, 2000000)


# `transport = "name"` -> factory(table, ctx) -> Transport (hal.coproc.transport); other packages add theirs
# under the entry-point group evse_agent.backends.coproc_transport (docs/hal-backends.md). A factory checks
# its own keys: table.reject_unknown(COMMON_KEYS + its keys).
TRANSPORTS = BackendRegistry("coproc_transport", {
    "uart": "hal.coproc.build:build_uart_transport",
    "can": "hal.coproc.build:build_can_transport",
})


def build_coprocessor(table: ConfigTable, ctx: BuildContext) -> CoprocessorLink:
    transport_kind, build_transport = TRANSPORTS.from_table(table, "transport", check_installed=ctx.dry_run)
    keepalive_s = table.number("keepalive_s", default=1.0, minimum=0.05, maximum=5.0, unit="s")
    mcu_timeout_s = table.number("mcu_timeout_s", default=3.0, minimum=1.0, maximum=10.0, unit="s")
    status_timeout_s = table.number("status_timeout_s", default=1.0, minimum=0.1, maximum=10.0, unit="s")
    if keepalive_s * 2 > mcu_timeout_s:
        raise table.error(
            "keepalive_s",
            f"must be at most half of mcu_timeout_s ({mcu_timeout_s:g} s) so one lost keep-alive "
            f"does not open the contactor, got {keepalive_s:g}",
        )
    transport: Transport = build_transport(table, ctx)
    return CoprocessorLink(
        transport,
        keepalive_s=keepalive_s,
        status_timeout_s=status_timeout_s,
        mcu_timeout_s=mcu_timeout_s,
        clock=ctx.clock,
    )


def build_uart_transport(table: ConfigTable, ctx: BuildContext) -> Transport:
    _reject_other_transport_keys(table, CAN_KEYS, "uart")
    table.reject_unknown(COMMON_KEYS + UART_KEYS)
    from hal.coproc.uart import UartTransport

    return UartTransport(table.string("port"), table.integer("baudrate", default=115200, choices=BAUDRATES))


def build_can_transport(table: ConfigTable, ctx: BuildContext) -> Transport:
    _reject_other_transport_keys(table, UART_KEYS, "can")
    table.reject_unknown(COMMON_KEYS + CAN_KEYS)
    from hal.coproc.can import DEFAULT_BASE_ID, CanTransport

    base_id = table.integer("can_base_id", default=DEFAULT_BASE_ID, minimum=0, maximum=0x7E0)
    if base_id % 0x20:
        raise table.error("can_base_id", f"must be a multiple of 0x20 (32), got {base_id:#x}")
    return CanTransport(
        table.string("can_interface", default="socketcan"), table.string("can_channel"), base_id=base_id
    )


def _reject_other_transport_keys(table: ConfigTable, keys: tuple[str, ...], transport_kind: str) -> None:
    for key in keys:
        if key in table.data:
            raise table.error(key, f'does not apply to transport = "{transport_kind}"')


build = build_coprocessor  # the name the board loader looks for in a back-end module
