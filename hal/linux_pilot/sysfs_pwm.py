"""A kernel hardware PWM channel through /sys/class/pwm (hardware-notes.md section 5.1).

Only the documented sysfs files are written, so tests point `root` at a directory that mimics them.
The kernel rejects a duty_cycle longer than the period, so the order of writes matters.
"""

from __future__ import annotations

import time
from pathlib import Path

from hal.interfaces import HardwareError

SYSFS_PWM_ROOT = "/sys/class/pwm"
CP_PERIOD_NS = 1_000_000  # 1 kHz
POLARITIES = ("normal", "inversed")
EXPORT_TIMEOUT_S = 1.0  # the kernel (and udev, for the permissions) needs a moment to create pwmN


class SysfsPwm:
    def __init__(
        self,
        chip: int,
        channel: int,
        *,
        root: str | Path = SYSFS_PWM_ROOT,
        period_ns: int = CP_PERIOD_NS,
        polarity: str = "normal",
        export_timeout_s: float = EXPORT_TIMEOUT_S,
    ):
        if polarity not in POLARITIES:
            raise ValueError(f"polarity must be one of {POLARITIES}, got {polarity!r}")
        self.chip_dir = Path(root) / f"pwmchip{chip}"
        self.channel = channel
        self.channel_dir = self.chip_dir / f"pwm{channel}"
        self.period_ns = period_ns
        self.polarity = polarity
        self._export_timeout_s = export_timeout_s
        self.duty_ns = 0

    def open(self, duty_percent: float = 0.0) -> None:
        """Export the channel if needed and start it at `duty_percent` (the CP output wanted first)."""
        if not self.chip_dir.is_dir():
            raise HardwareError(f"PWM chip {self.chip_dir} does not exist (is the pwm overlay enabled?)")
        if not self.channel_dir.is_dir():
            self._write(self.chip_dir / "export", str(self.channel))
            self._wait_for_export()
        self._write_attr("enable", "0")  # polarity can only change while disabled
        self._write_attr("duty_cycle", "0")  # first, so it never exceeds a (new) period
        self._write_attr("period", str(self.period_ns))
        polarity_file = self.channel_dir / "polarity"
        if polarity_file.exists() and self._read(polarity_file) != self.polarity:
            self._write(polarity_file, self.polarity)
        self.set_duty_percent(duty_percent)
        self._write_attr("enable", "1")

    def set_duty_percent(self, percent: float) -> None:
        """0 % = steady low, 100 % = steady high; anything between toggles at 1 kHz."""
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"PWM duty must be between 0 and 100 %, got {percent!r}")
        duty_ns = round(self.period_ns * percent / 100.0)
        self._write_attr("duty_cycle", str(duty_ns))
        self.duty_ns = duty_ns

    def _wait_for_export(self) -> None:
        deadline = time.monotonic() + self._export_timeout_s
        while not (self.channel_dir / "duty_cycle").exists():
            if time.monotonic() >= deadline:
                raise HardwareError(
                    f"{self.channel_dir} did not appear after exporting PWM channel {self.channel}"
                )
            time.sleep(0.01)

    def _write_attr(self, name: str, value: str) -> None:
        self._write(self.channel_dir / name, value)

    @staticmethod
    def _write(path: Path, value: str) -> None:
        try:
            path.write_text(value + "\n")
        except OSError as exc:
            raise HardwareError(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from exc

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise HardwareError(f"cannot read {path}: {exc.strerror or exc}") from exc
