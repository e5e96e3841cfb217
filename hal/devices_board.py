"""The "devices" board back-end: real hardware, each device of each connector chosen by its own table.

Like python-can picks a bus class by `interface=`, every device table names its back-end with `backend`,
and the factory registered under that name for the device kind builds it from the rest of the table
(hal/build.py, hal/device_backends.py; other packages add back-ends through entry points, see
docs/hal-backends.md). The built-in ones:

    [board]          backend = "devices"
    [gpio]           factory = "lgpio" | "rpigpio" | "native" | "mock"; chip = N (lgpio only)
                     needed as soon as one device uses GPIO; "mock" is gpiozero's MockFactory (tests, bench)
    [buses.<name>]   a Modbus line, type = "modbus-rtu" | "modbus-tcp" (hal.modbus.build_bus); shared by
                     every device whose `bus` names it
    [coprocessor]    the safety co-processor link (hal.coproc.build_coprocessor), shared by connectors
    [rfid]           the station's card reader (hal.rfid.build_rfid), optional

    per [[connectors]] entry:
    [connectors.pilot]      "coprocessor" | "modbus-evse" | "linux-pwm"                  required
    [connectors.contactor]  "gpio" | "coprocessor" | "modbus-evse"                          required
    [connectors.meter]      "modbus"                                                         required
    [connectors.proximity]  "coprocessor" | "linux-pwm" | "none"    socket only; default: the pilot's
    [connectors.lock]       "gpio" | "coprocessor"                    the lock actuator; a socket without
                                                                      one says lock = false instead
    [connectors.rcd]        "gpio" | "coprocessor"                                           optional
    [connectors.leds]       "gpio" (ready / charging / fault LEDs, driven from the OCPP status) optional

Pairings are checked, because a wrong one could never close or would bypass a safety path:
* a "modbus-evse" contactor is the pilot's EVSE board itself (one object: the board switches its relay);
* a "coprocessor" contactor needs a "coprocessor" pilot (the MCU closes only on its own CP reading), and a
  "coprocessor" pilot needs a "coprocessor" contactor (the MCU must be able to open on its own);
* a "linux-pwm" pilot drives a "gpio" contactor.
Nothing opens a port while building: serial ports, buses and the co-processor open in Board.start(). Only
GPIO lines are claimed at build time (gpiozero claims them when a device is made), and the MCP3008/ADS1115
of a linux_pilot are opened then. `dry_run` builds everything on a MockFactory without touching hardware.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.board import BoardBackend, BoardConfigError, ConfigTable, LoadOptions
from hal.build import BuildContext
from hal.device_backends import (
    CONTACTORS,
    LEDS,
    LOCKS,
    MAX_CURRENT_WITHOUT_PP_A,
    METERS,
    PILOTS,
    PROXIMITY,
    RCDS,
)
from hal.interfaces import Board, ConnectorHardware, HardwareError
from hal.registry import BackendRegistry

log = logging.getLogger(__name__)

GPIO_FACTORIES = ("lgpio", "rpigpio", "native", "mock")
# A built-in pilot -> the contactor it needs; a contactor named here (the pilot's own) needs that pilot.
PAIRING = {"coprocessor": "coprocessor", "modbus-evse": "modbus-evse", "linux-pwm": "gpio"}
PAIRED_CONTACTORS = ("coprocessor", "modbus-evse")

_FACTORY_IMPORTS = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "lgpio", "pip install lgpio, or apt install python3-lgpio"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "RPi.GPIO", "pip install rpi-lgpio on a Pi 5"),
    "native": ("gpiozero.pins.native", "NativeFactory", None, ""),
    "mock": ("gpiozero.pins.mock", "MockFactory", None, ""),
}


@dataclass
class DevicesBoard(Board):
    """A Board built from device tables. Buses are not devices: the devices on them acquire and release
    them; `buses` is kept for diagnostics only."""

    buses: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    pin_factory: Any = None  # the gpiozero factory the GPIO devices use, if any
    owns_pin_factory: bool = False  # made by the loader (closed with the board), not passed in
    # id(device) -> the shared object that must run for it to work (the co-processor link)
    served_by: dict[int, object] = field(default_factory=dict)

    async def start(self) -> None:
        if self.dry_run:
            raise HardwareError(f"board {self.name!r} was built as a dry run (mock GPIO): it cannot be started")
        await super().start()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.release_pin_factory()

    def release_pin_factory(self) -> None:
        """Close the GPIO pin factory the loader made (a caller's factory is the caller's to close)."""
        factory, self.pin_factory = self.pin_factory, None
        if factory is not None and self.owns_pin_factory:
            factory.close()

    def start_list(self, devices: list[object]) -> list[object]:
        """What to start so that these devices work: each one, or the shared link that serves it."""
        result: dict[int, object] = {}
        for device in devices:
            if device is None:
                continue
            runner = self.served_by.get(id(device), device)
            result.setdefault(id(runner), runner)
        return list(result.values())


class _Builder:
    def __init__(self, config: dict, path: Path, options: LoadOptions):
        self.config = config
        self.path = path
        self.options = options
        self.ctx = BuildContext(path=path, clock=options.clock, dry_run=options.dry_run,
                                need_gpio=self.ensure_pin_factory)
        self.gpio_table = self._gpio_table()
        self.owns_pin_factory = False  # True once ensure_pin_factory() made ctx.pin_factory itself
        self.link: Any = None  # CoprocessorLink
        self.served_by = self.ctx.served_by
        self.modbus_addresses: dict[tuple[str, int], str] = {}  # (bus name, device id) -> where
        self.built: dict[int, object] = {}  # every device made so far, to release them if the build fails

    def made(self, device: Any) -> Any:
        if device is not None and id(device) not in self.served_by:  # the link releases its own devices
            self.built.setdefault(id(device), device)
        return device

    # ---- board-wide tables --------------------------------------------------------------------------

    def _gpio_table(self) -> ConfigTable | None:
        if "gpio" not in self.config:
            return None
        table = ConfigTable(self.config["gpio"], "[gpio]", self.path)
        table.reject_unknown(("factory", "chip"))
        factory = table.string("factory", choices=GPIO_FACTORIES)
        if "chip" in table.data and factory != "lgpio":
            raise table.error("chip", 'only applies to factory = "lgpio"')
        table.integer("chip", default=None, minimum=0, maximum=15)
        return table

    def ensure_pin_factory(self, device: ConfigTable) -> None:
        """The gpiozero pin factory, made the first time a device needs GPIO."""
        if self.ctx.pin_factory is not None:
            return
        if self.options.pin_factory is not None:
            self.ctx.pin_factory = self.options.pin_factory
            return
        if self.gpio_table is None and not self.options.dry_run:
            raise device.error(
                "backend",
                'uses GPIO, but the board has no [gpio] table: add [gpio] with factory = "lgpio" '
                '(Raspberry Pi 5 and older), "rpigpio", "native", or "mock" for tests',
            )
        name = "mock" if self.gpio_table is None or self.options.dry_run else self.gpio_table.string("factory")
        module_name, class_name, package, install = _FACTORY_IMPORTS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            assert self.gpio_table is not None
            raise self.gpio_table.error(
                "factory", f'"{name}" needs the {package or exc.name} package ({install}): {exc}'
            ) from exc
        kwargs = {}
        if name == "lgpio" and self.gpio_table is not None and "chip" in self.gpio_table.data:
            kwargs["chip"] = self.gpio_table.data["chip"]
        try:
            factory = getattr(module, class_name)(**kwargs)
        except Exception as exc:  # lgpio.error, OSError, RuntimeError from RPi.GPIO on a Pi 5...
            raise HardwareError(
                f"{self.path}: [gpio]: cannot open the {name!r} GPIO pin factory: {type(exc).__name__}: {exc}"
            ) from exc
        self.ctx.pin_factory = factory
        self.owns_pin_factory = True

    def build_buses(self) -> dict[str, Any]:
        raw = self.config.get("buses", {})
        buses_table = ConfigTable(raw, "[buses]", self.path)
        if not buses_table.data:
            return {}
        from hal.modbus import build_bus

        for name, data in buses_table.data.items():
            table = ConfigTable(data, f"[buses.{name}]", self.path)
            self.ctx.buses[name] = build_bus(table)
        return dict(self.ctx.buses)

    def build_coprocessor(self) -> None:
        if "coprocessor" not in self.config:
            return
        from hal.coproc import build_coprocessor

        table = ConfigTable(self.config["coprocessor"], "[coprocessor]", self.path)
        self.link = self.made(build_coprocessor(table, self.ctx))
        self.ctx.coprocessor = self.link

    def build_rfid(self) -> Any:
        if "rfid" not in self.config:
            return None
        from hal.rfid import build_rfid

        self.ctx.connector_id = None
        return self.made(build_rfid(ConfigTable(self.config["rfid"], "[rfid]", self.path), self.ctx))

    # ---- one connector ------------------------------------------------------------------------------

    def device_table(self, conn: dict, index: int, key: str, *, required: bool) -> ConfigTable | None:
        where = f"[[connectors]][{index}].{key}"
        if key not in conn:
            if required:
                raise BoardConfigError(
                    f"{self.path}: {where}: required table is missing (add [connectors.{key}] "
                    f"with a backend under this connector)"
                )
            return None
        return ConfigTable(conn[key], where, self.path)

    def required_table(self, conn: dict, index: int, key: str) -> ConfigTable:
        table = self.device_table(conn, index, key, required=True)
        assert table is not None
        return table

    def build_device(self, table: ConfigTable, factory: Any) -> Any:
        """Build one device with its back-end's factory; a Modbus device's address must be its own."""
        device = self.made(factory(table, self.ctx))
        if device is not None and "bus" in table.data and "device_id" in table.data:
            self.note_modbus_address(table)
        return device

    def note_modbus_address(self, table: ConfigTable) -> None:
        key = (table.data["bus"], table.data["device_id"])
        other = self.modbus_addresses.get(key)
        if other is not None:
            raise table.error(
                "device_id", f'device id {key[1]} on bus "{key[0]}" is already used by {other}'
            )
        self.modbus_addresses[key] = table.where

    def build_connector(self, index: int, conn: dict) -> ConnectorHardware:
        cid = conn["id"]
        self.ctx.connector_id = cid
        self.ctx.connector = conn
        self.ctx.pilot = self.ctx.pilot_backend = None
        pilot_table = self.required_table(conn, index, "pilot")
        contactor_table = self.required_table(conn, index, "contactor")
        meter_table = self.required_table(conn, index, "meter")
        thorough = self.options.dry_run  # also look for installed packages claiming a built-in name
        pilot_kind, build_pilot = PILOTS.from_table(pilot_table, check_installed=thorough)
        contactor_kind, build_contactor = CONTACTORS.from_table(contactor_table, check_installed=thorough)
        _, build_meter = METERS.from_table(meter_table, check_installed=thorough)

        pilot = self.build_device(pilot_table, build_pilot)
        self.ctx.pilot, self.ctx.pilot_backend = pilot, pilot_kind

        # contactor: the pairings from the module docstring
        expected = PAIRING.get(pilot_kind)
        if expected is not None and contactor_kind != expected:
            raise contactor_table.error("backend", _pairing_message(pilot_kind, contactor_kind, expected))
        if contactor_kind in PAIRED_CONTACTORS and pilot_kind != contactor_kind:
            raise contactor_table.error(
                "backend", f'"{contactor_kind}" needs a "{contactor_kind}" pilot, this connector\'s is "{pilot_kind}"'
            )
        contactor = self.build_device(contactor_table, build_contactor)

        meter = self.build_device(meter_table, build_meter)
        if meter.phases < conn["phases"]:
            raise meter_table.error(
                "model",
                f'"{meter_table.data["model"]}" measures {meter.phases} phase(s), the connector has '
                f"phases = {conn['phases']}",
            )

        proximity = self.build_proximity(conn, index, pilot_kind)
        lock = None
        if conn["lock_table"] is not None:
            lock = self.build_optional(conn["lock_table"], index, "lock", LOCKS)
        elif conn["lock"]:
            raise BoardConfigError(
                f"{self.path}: [[connectors]][{index}].lock: a socket locks the plug: describe the lock "
                f"actuator in a [connectors.lock] table, or set lock = false for a socket without one"
            )
        rcd = self.build_optional(conn.get("rcd"), index, "rcd", RCDS)
        indicator = self.build_optional(conn.get("leds"), index, "leds", LEDS)
        return ConnectorHardware(
            connector_id=cid,
            pilot=pilot,
            contactor=contactor,
            meter=meter,
            proximity=proximity,
            lock=lock,
            rcd=rcd,
            indicator=indicator,
            max_current_a=conn["max_current_a"],
            phases=conn["phases"],
        )

    def build_proximity(self, conn: dict, index: int, pilot_kind: str) -> Any:
        table = self.device_table(conn, index, "proximity", required=False)
        where = f"{self.path}: [[connectors]][{index}]"
        if conn["cable"] == "fixed":
            if table is not None:
                raise BoardConfigError(f'{where}.proximity: a fixed cable has no PP (cable = "fixed"); remove it')
            return None
        if table is None:
            if pilot_kind not in PROXIMITY:
                # a pilot back-end that cannot read PP (the EVSE board reports none over Modbus)
                raise BoardConfigError(
                    f'{where}.proximity: a socket needs the PP reading, and a "{pilot_kind}" pilot has none: add '
                    f'[connectors.proximity] with backend = "none" (then max_current_a <= '
                    f'{MAX_CURRENT_WITHOUT_PP_A:g}), or use cable = "fixed"'
                )
            # no table: the pilot's back-end reads PP too
            table = ConfigTable({"backend": pilot_kind}, f"[[connectors]][{index}].proximity", self.path)
        _, build = PROXIMITY.from_table(table, check_installed=self.options.dry_run)
        return self.build_device(table, build)

    def build_optional(self, data: Any, index: int, key: str, registry: BackendRegistry) -> Any:
        if data is None:
            return None
        table = ConfigTable(data, f"[[connectors]][{index}].{key}", self.path)
        _, build = registry.from_table(table, check_installed=self.options.dry_run)
        return self.build_device(table, build)

    # ---- checks after building ------------------------------------------------------------------------

    def check_everything_used(self, connectors: list[ConnectorHardware]) -> None:
        used = {id(getattr(device, "bus", None)) for conn in connectors for device in (conn.pilot, conn.meter)}
        for name, bus in self.ctx.buses.items():
            if id(bus) not in used:
                raise BoardConfigError(
                    f"{self.path}: [buses.{name}]: no device uses this bus (a meter or an EVSE board names it "
                    f'with bus = "{name}"); remove it'
                )
        if self.link is not None and not self.served_by:
            raise BoardConfigError(
                f'{self.path}: [coprocessor]: no connector uses the co-processor (backend = "coprocessor" '
                f"in [connectors.pilot]); remove it"
            )


def build_devices_board(config: dict, path: Path, options: LoadOptions) -> DevicesBoard:
    builder = _Builder(config, path, options)
    try:
        buses = builder.build_buses()
        builder.build_coprocessor()
        connectors = [builder.build_connector(index, conn) for index, conn in enumerate(config["connectors"])]
        builder.check_everything_used(connectors)
        rfid = builder.build_rfid()
    except BaseException:
        _release_now(list(builder.built.values()))
        if builder.owns_pin_factory and builder.ctx.pin_factory is not None:
            builder.ctx.pin_factory.close()
        raise
    extras = {"coprocessor": builder.link} if builder.link is not None else {}
    return DevicesBoard(
        name=config["board"]["name"],
        connectors=connectors,
        rfid=rfid,
        extras=extras,
        buses=buses,
        dry_run=options.dry_run,
        pin_factory=builder.ctx.pin_factory,
        owns_pin_factory=builder.owns_pin_factory,
        served_by=builder.served_by,
    )


def _release_now(devices: list[object]) -> None:
    """Close what a failed build made, so its GPIO lines and ADC are free again (gpiozero even shares a
    software SPI bus between factories, keyed by pins only). close() of a device that never started only
    releases. Builds run inside the agent's event loop, so the closing gets a loop of its own."""

    async def close_all() -> None:
        for device in reversed(devices):
            close = getattr(device, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()

    if not devices:
        return
    worker = threading.Thread(target=asyncio.run, args=(close_all(),), name="release failed board build")
    worker.start()
    worker.join(5.0)


# `[board] backend = "devices"` (hal.board.BACKENDS)
DEVICES_BACKEND = BoardBackend(
    build_devices_board,
    tables=("buses", "gpio", "coprocessor", "rfid"),
    connector_keys=("pilot", "contactor", "meter", "proximity", "lock", "rcd", "leds"),
)


def _pairing_message(pilot_kind: str, contactor_kind: str, expected: str) -> str:
    why = {
        "coprocessor": "the co-processor switches the contactor and opens it on its own",
        "modbus-evse": "the EVSE board switches its own relay (one object: pilot and contactor)",
        "linux-pwm": "Linux drives the contactor coil through GPIO",
    }[pilot_kind]
    return (
        f'must be "{expected}" with a "{pilot_kind}" pilot ({why}), got "{contactor_kind}"'
    )
