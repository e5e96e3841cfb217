"""The "devices" board back-end: real hardware, each device of each connector chosen by its own table.

Like python-can picks a bus class by `interface=`, every device table names its back-end with `backend`,
and the module that implements it builds it from the rest of the table (hal/build.py):

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

from hal.board import BoardConfigError, ConfigTable, LoadOptions
from hal.build import BuildContext
from hal.interfaces import Board, ConnectorHardware, HardwareError

log = logging.getLogger(__name__)

GPIO_FACTORIES = ("lgpio", "rpigpio", "native", "mock")
PILOT_BACKENDS = ("coprocessor", "modbus-evse", "linux-pwm")
CONTACTOR_BACKENDS = ("gpio", "coprocessor", "modbus-evse")
METER_BACKENDS = ("modbus",)
PROXIMITY_BACKENDS = ("coprocessor", "linux-pwm", "none")
LOCK_BACKENDS = ("gpio", "coprocessor")
RCD_BACKENDS = ("gpio", "coprocessor")
# With no PP reading the agent cannot know the plugged cable's rating: offer at most the smallest coding.
MAX_CURRENT_WITHOUT_PP_A = 13.0

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
        self.ctx = BuildContext(path=path, clock=options.clock)
        self.gpio_table = self._gpio_table()
        self.owns_pin_factory = False  # True once ensure_pin_factory() made ctx.pin_factory itself
        self.link = None  # CoprocessorLink
        self.served_by: dict[int, object] = {}
        self.modbus_addresses: dict[tuple[str, int], str] = {}  # (bus name, device id) -> where
        self.built: dict[int, object] = {}  # every device made so far, to release them if the build fails

    def made(self, device: Any) -> Any:
        if device is not None:
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
        name = "mock" if self.options.dry_run else self.gpio_table.string("factory")
        module_name, class_name, package, install = _FACTORY_IMPORTS[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            assert self.gpio_table is not None
            raise self.gpio_table.error(
                "factory", f'"{name}" needs the {package or exc.name} package ({install}): {exc}'
            ) from exc
        kwargs = {}
        if name == "lgpio" and "chip" in self.gpio_table.data:
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

    def build_rfid(self):
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

    def coprocessor_for(self, table: ConfigTable, connector_id: int):
        """The co-processor's devices of this connector; the table may say nothing but its backend."""
        table.reject_unknown(("backend",))
        if self.link is None:
            raise table.error(
                "backend", '"coprocessor" needs a [coprocessor] table (transport, port...) in the board config'
            )
        return self.link.connector(connector_id)

    def serve(self, device: object) -> object:
        """Record that `device` works only while the co-processor link runs."""
        self.served_by[id(device)] = self.link
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
        pilot_table = self.device_table(conn, index, "pilot", required=True)
        contactor_table = self.device_table(conn, index, "contactor", required=True)
        meter_table = self.device_table(conn, index, "meter", required=True)
        pilot_kind = pilot_table.string("backend", choices=PILOT_BACKENDS)
        contactor_kind = contactor_table.string("backend", choices=CONTACTOR_BACKENDS)
        meter_table.string("backend", choices=METER_BACKENDS)

        # pilot
        if pilot_kind == "coprocessor":
            pilot = self.serve(self.coprocessor_for(pilot_table, cid).pilot)
        elif pilot_kind == "modbus-evse":
            from hal.modbus import build_evse_board

            pilot = self.made(build_evse_board(pilot_table, self.ctx))
            self.note_modbus_address(pilot_table)
        else:
            pilot = self.made(self.build_linux_pilot(pilot_table))

        # contactor: the pairings from the module docstring
        pairing = {"coprocessor": "coprocessor", "modbus-evse": "modbus-evse", "linux-pwm": "gpio"}
        if contactor_kind != pairing[pilot_kind]:
            raise contactor_table.error(
                "backend",
                _pairing_message(pilot_kind, contactor_kind, pairing[pilot_kind]),
            )
        if contactor_kind == "coprocessor":
            contactor = self.serve(self.coprocessor_for(contactor_table, cid).contactor)
        elif contactor_kind == "modbus-evse":
            contactor_table.reject_unknown(("backend",))
            contactor = pilot  # the EVSE board switches its own relay: one object, pilot and contactor
        else:
            from hal.gpio import build_contactor

            self.ensure_pin_factory(contactor_table)
            contactor = self.made(build_contactor(contactor_table, self.ctx))

        # meter
        from hal.modbus import build_meter

        meter = self.made(build_meter(meter_table, self.ctx))
        self.note_modbus_address(meter_table)
        if meter.phases < conn["phases"]:
            raise meter_table.error(
                "model",
                f'"{meter_table.data["model"]}" measures {meter.phases} phase(s), the connector has '
                f"phases = {conn['phases']}",
            )

        proximity = self.build_proximity(conn, index, pilot_kind, pilot)
        lock = None
        if conn["lock_table"] is not None:
            lock = self.build_optional(conn["lock_table"], index, "lock", LOCK_BACKENDS, cid)
        elif conn["lock"]:
            raise BoardConfigError(
                f"{self.path}: [[connectors]][{index}].lock: a socket locks the plug: describe the lock "
                f"actuator in a [connectors.lock] table, or set lock = false for a socket without one"
            )
        rcd = self.build_optional(conn.get("rcd"), index, "rcd", RCD_BACKENDS, cid)
        indicator = None
        leds_table = self.device_table(conn, index, "leds", required=False)
        if leds_table is not None:
            from hal.gpio import build_status_leds

            self.ensure_pin_factory(leds_table)
            indicator = self.made(build_status_leds(leds_table, self.ctx))
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

    def build_linux_pilot(self, table: ConfigTable):
        from hal.linux_pilot import build_linux_pilot

        if table.data.get("adc") == "mcp3008" or "peak_reset_pin" in table.data:
            self.ensure_pin_factory(table)
        open_i2c_bus = _unopened_i2c_bus if self.options.dry_run else None
        return build_linux_pilot(table, self.ctx, open_i2c_bus=open_i2c_bus)

    def build_proximity(self, conn: dict, index: int, pilot_kind: str, pilot: Any):
        table = self.device_table(conn, index, "proximity", required=False)
        where = f"{self.path}: [[connectors]][{index}]"
        if conn["cable"] == "fixed":
            if table is not None:
                raise BoardConfigError(f'{where}.proximity: a fixed cable has no PP (cable = "fixed"); remove it')
            return None
        kind = table.string("backend", choices=PROXIMITY_BACKENDS) if table is not None else pilot_kind
        if kind == "none":
            table.reject_unknown(("backend",))
            if conn["max_current_a"] > MAX_CURRENT_WITHOUT_PP_A:
                raise table.error(
                    "backend",
                    f'"none": without a PP reading the agent cannot see the plugged cable\'s rating, so '
                    f"max_current_a must be at most {MAX_CURRENT_WITHOUT_PP_A:g} A (the smallest Type 2 "
                    f"cable), got {conn['max_current_a']:g}",
                )
            return None
        if kind == "coprocessor":
            if table is None:
                return self.serve(self.link.connector(conn["id"]).proximity)
            return self.serve(self.coprocessor_for(table, conn["id"]).proximity)
        if kind == "linux-pwm":
            if table is not None:
                table.reject_unknown(("backend",))
            if pilot_kind != "linux-pwm" or not pilot.has_proximity:
                message = (
                    "the pilot has no pp_channel: add pp_channel (and the PP divider keys) to "
                    "[connectors.pilot]"
                    if pilot_kind == "linux-pwm"
                    else f'"linux-pwm" reads PP through a linux-pwm pilot; this connector\'s pilot is "{pilot_kind}"'
                )
                raise BoardConfigError(f"{where}.proximity: {message}")
            return pilot
        # no table and a pilot back-end that cannot read PP (the EVSE board reports none over Modbus)
        raise BoardConfigError(
            f'{where}.proximity: a socket needs the PP reading, and a "{pilot_kind}" pilot has none: add '
            f'[connectors.proximity] with backend = "none" (then max_current_a <= {MAX_CURRENT_WITHOUT_PP_A:g}), '
            f'or use cable = "fixed"'
        )

    def build_optional(self, data: Any, index: int, key: str, backends: tuple[str, ...], cid: int):
        if data is None:
            return None
        table = ConfigTable(data, f"[[connectors]][{index}].{key}", self.path)
        kind = table.string("backend", choices=backends)
        if kind == "coprocessor":
            devices = self.coprocessor_for(table, cid)
            return self.serve(getattr(devices, key))
        from hal.gpio import build_lock, build_rcd

        self.ensure_pin_factory(table)
        return self.made((build_lock if key == "lock" else build_rcd)(table, self.ctx))

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


def _pairing_message(pilot_kind: str, contactor_kind: str, expected: str) -> str:
    why = {
        "coprocessor": "the co-processor switches the contactor and opens it on its own",
        "modbus-evse": "the EVSE board switches its own relay (one object: pilot and contactor)",
        "linux-pwm": "Linux drives the contactor coil through GPIO",
    }[pilot_kind]
    return (
        f'must be "{expected}" with a "{pilot_kind}" pilot ({why}), got "{contactor_kind}"'
    )


class _UnopenedI2cBus:
    """Stands in for /dev/i2c-N in a dry run: building needs a bus object, reading it is an error."""

    def __init__(self, number: int):
        self.number = number

    def write_i2c_block_data(self, *args) -> None:
        raise HardwareError(f"/dev/i2c-{self.number} is not opened in a dry run")

    def read_i2c_block_data(self, *args) -> list[int]:
        raise HardwareError(f"/dev/i2c-{self.number} is not opened in a dry run")


def _unopened_i2c_bus(number: int) -> _UnopenedI2cBus:
    return _UnopenedI2cBus(number)
