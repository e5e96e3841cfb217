"""USB HID keyboard-emulating RFID readers, read through evdev.

The device is grabbed (exclusive), so the typed card numbers reach neither a console nor another
program. It is chosen by `device` path (best a stable /dev/input/by-id/... link) or by a `name`
substring matched against the input devices that have an Enter key; by name it is looked up again
on every reconnect, because the eventN number can change when the reader is replugged.
The service user needs read access to /dev/input/event* (group `input`, or a udev rule).
Key codes -> lines -> ids is in hal.rfid.hid_keys.
"""

from __future__ import annotations

import time

import evdev
from evdev import ecodes

from hal.build import Clock
from hal.interfaces import HardwareError
from hal.rfid.background import BackgroundTagReader
from hal.rfid.common import DEFAULT_HOLD_OFF_S, RetryBackoff
from hal.rfid.hid_keys import FORMATS, KeyLineDecoder, line_to_uid


def has_enter_key(device: evdev.InputDevice) -> bool:
    return ecodes.KEY_ENTER in device.capabilities().get(ecodes.EV_KEY, [])


def find_device_by_name(name: str) -> str:
    """Path of the first input device (by path) whose name contains `name` (any case) and has Enter."""
    wanted = name.casefold()
    for path in sorted(evdev.list_devices()):
        try:
            device = evdev.InputDevice(path)
        except OSError:
            continue  # vanished or not readable: not ours
        try:
            if wanted in device.name.casefold() and has_enter_key(device):
                return path
        finally:
            device.close()
    raise HardwareError(f"no input device with an Enter key whose name contains {name!r}")


class HidReader(BackgroundTagReader):
    def __init__(
        self,
        *,
        device: str | None = None,
        name: str | None = None,
        id_format: str = "decimal",
        hold_off_s: float = DEFAULT_HOLD_OFF_S,
        clock: Clock = time.monotonic,
        retry: RetryBackoff | None = None,
    ):
        if (device is None) == (name is None):
            raise ValueError("give exactly one of device (a path) and name")
        if id_format not in FORMATS:
            raise ValueError(f"unknown format {id_format!r}")
        where = device if device is not None else f"input device named like {name!r}"
        super().__init__(description=f"HID reader {where}", hold_off_s=hold_off_s, clock=clock, retry=retry)
        self.device_path = device
        self.device_name = name
        self.id_format = id_format
        self._device: evdev.InputDevice | None = None
        self._decoder = KeyLineDecoder()

    async def _open(self) -> None:
        path = self.device_path
        if path is None:
            path = find_device_by_name(str(self.device_name))
        self._device = evdev.InputDevice(path)
        if not has_enter_key(self._device):
            raise HardwareError(f"{path} ({self._device.name}) has no Enter key: not a keyboard reader")
        self._device.grab()
        self._decoder = KeyLineDecoder()  # no half line from before the loss
        self.log.info("%s: using %s (%s)", self.description, path, self._device.name)

    async def _read_until_lost(self) -> None:
        assert self._device is not None
        async for event in self._device.async_read_loop():  # raises OSError (ENODEV) when unplugged
            if event.type != ecodes.EV_KEY:
                continue
            line = self._decoder.feed(event.code, event.value)
            if line is None:
                continue
            try:
                uid = line_to_uid(line, self.id_format)
            except ValueError as exc:
                self.stats.drop(f"HID: {exc}")
            else:
                self._publish(uid)

    def _release(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return
        try:
            device.ungrab()
        except OSError:
            pass  # not grabbed, or already unplugged
        try:
            device.close()
        except OSError:
            pass
