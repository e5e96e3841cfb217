"""RFID reader back-ends, chosen by the `backend` key of the reader's config table.

    backend = "pn532"    NXP PN532 on a UART (HSU), ISO 14443-A       hal.rfid.pn532
              port (required), baudrate = 115200, poll_interval_s = 0.2
    backend = "rdm6300"  RDM6300 / RDM630 125 kHz on a UART           hal.rfid.rdm6300
              port (required), baudrate = 9600, uid_format = "hex5" | "hex4" | "dec10"
    backend = "hid"      USB keyboard-emulating reader via evdev      hal.rfid.hid
              device (a path) or name (a substring of the device name), format = "decimal" | "hex"
    every back-end: hold_off_s = 2.0 (a card seen again within this time after its last sighting is
              the same presentation; 0 reports every read)

Every reader reports uppercase hex (normalise_uid). Back-ends are looked up in BACKENDS (a registry that
other packages extend through entry points). The back-end module is imported only when chosen,
so a board without evdev can still use a serial reader and the other way round.
"""

from __future__ import annotations

from hal.board import ConfigTable
from hal.build import BuildContext
from hal.interfaces import RfidReader
from hal.registry import BackendRegistry
from hal.rfid.common import DEFAULT_HOLD_OFF_S

# `backend = "name"` -> factory(table, ctx) -> RfidReader; other packages add theirs under the entry-point
# group evse_agent.backends.rfid (docs/hal-backends.md). A factory checks its own keys and reads hold_off_s
# with hold_off(table) like the built-in ones.
BACKENDS = BackendRegistry("rfid", {
    "pn532": "hal.rfid:build_pn532",
    "rdm6300": "hal.rfid:build_rdm6300",
    "hid": "hal.rfid:build_hid",
})
COMMON_KEYS = ("backend", "hold_off_s")
BACKEND_KEYS = {
    "pn532": ("port", "baudrate", "poll_interval_s"),
    "rdm6300": ("port", "baudrate", "uid_format"),
    "hid": ("device", "name", "format"),
}
MAX_HOLD_OFF_S = 60.0


def build_rfid(table: ConfigTable, ctx: BuildContext) -> RfidReader:
    """The reader a config table describes. Raises BoardConfigError naming the file and the key."""
    _, build = BACKENDS.from_table(table, check_installed=ctx.dry_run)
    reader: RfidReader = build(table, ctx)
    return reader


build = build_rfid  # the name the board loader looks for in a back-end module (hal/build.py)


def hold_off(table: ConfigTable) -> float:
    """The `hold_off_s` every reader's table may give."""
    return table.number("hold_off_s", default=DEFAULT_HOLD_OFF_S, minimum=0, maximum=MAX_HOLD_OFF_S, unit="s")


def _common_keys(table: ConfigTable, backend: str) -> float:
    table.reject_unknown(COMMON_KEYS + BACKEND_KEYS[backend])
    return hold_off(table)


def _baudrate(table: ConfigTable, default: int) -> int:
    return table.integer("baudrate", default=default, minimum=1200, maximum=4_000_000)


def build_pn532(table: ConfigTable, ctx: BuildContext) -> RfidReader:
    hold_off_s = _common_keys(table, "pn532")
    from hal.rfid import pn532

    poll_interval_s = table.number(
        "poll_interval_s", default=pn532.DEFAULT_POLL_INTERVAL_S, minimum=0.05, maximum=10, unit="s"
    )
    if 0 < hold_off_s <= poll_interval_s:
        raise table.error(
            "poll_interval_s",
            f"must be shorter than hold_off_s ({hold_off_s:g} s), or a card held on the reader is "
            f"reported again on every poll, got {poll_interval_s:g}",
        )
    return pn532.Pn532Reader(
        table.string("port"),
        baudrate=_baudrate(table, pn532.DEFAULT_BAUDRATE),
        poll_interval_s=poll_interval_s,
        hold_off_s=hold_off_s,
        clock=ctx.clock,
    )


def build_rdm6300(table: ConfigTable, ctx: BuildContext) -> RfidReader:
    hold_off_s = _common_keys(table, "rdm6300")
    from hal.rfid import rdm6300

    return rdm6300.Rdm6300Reader(
        table.string("port"),
        baudrate=_baudrate(table, rdm6300.DEFAULT_BAUDRATE),
        uid_format=table.string("uid_format", default="hex5", choices=rdm6300.UID_FORMATS),
        hold_off_s=hold_off_s,
        clock=ctx.clock,
    )


def build_hid(table: ConfigTable, ctx: BuildContext) -> RfidReader:
    hold_off_s = _common_keys(table, "hid")
    from hal.rfid import hid, hid_keys

    device = table.string("device", default=None)
    name = table.string("name", default=None)
    if device is not None and name is not None:
        raise table.error("name", "give either device or name, not both")
    if device is None and name is None:
        raise table.error("device", "required: the reader's device path, or name = a part of its name")
    return hid.HidReader(
        device=device,
        name=name,
        id_format=table.string("format", default="decimal", choices=hid_keys.FORMATS),
        hold_off_s=hold_off_s,
        clock=ctx.clock,
    )
