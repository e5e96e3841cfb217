"""Builds a LinuxPilot from its board-config table, e.g. for a peak-detector board with an MCP3008:

    [connectors.pilot]
    backend = "linux-pwm"
    pwm_chip = 0                    # /sys/class/pwm/pwmchip0 ...
    pwm_channel = 0                 # ... /pwm0
    adc = "mcp3008"                 # or "ads1115" (i2c_bus, i2c_address, ads1115_full_scale_v)
    cp_sampling = "peak_detector"   # or "min_max" (cp_channel, min_max_reads) for development boards
    cp_high_channel = 0
    cp_low_channel = 1
    cp_gain = 7.2727                # CP volts = ADC volts * cp_gain + cp_offset_v
    cp_offset_v = -12.0
    pp_channel = 2                  # optional; then pp_pullup_ohms and pp_supply_v are required
    pp_pullup_ohms = 1000
    pp_supply_v = 3.3

Keys that belong to the other ADC or sampling mode are rejected with a message saying where they apply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalOutputDevice

from hal.board import ConfigTable
from hal.build import BuildContext
from hal.gpio.config import check_backend, config_pin, open_gpio
from hal.interfaces import HardwareError
from hal.linux_pilot.adc import ADS1115_ADDRESSES, ADS1115_FULL_SCALES_V, Adc, Ads1115Adc, Mcp3008Adc
from hal.linux_pilot.pilot import DEFAULT_SAMPLE_PERIOD_S, LinuxPilot, PpChannel
from hal.linux_pilot.sampling import (
    MIN_MAX_READS,
    PEAK_RESET_S,
    PEAK_SETTLE_S,
    CpSampling,
    CpScaling,
    MinMaxSampling,
    PeakDetectorSampling,
)
from hal.linux_pilot.sysfs_pwm import POLARITIES, SYSFS_PWM_ROOT, SysfsPwm
from hal.pilot_math import PpDivider

BACKEND = "linux-pwm"
ADCS = ("mcp3008", "ads1115")
CP_SAMPLINGS = ("peak_detector", "min_max")

COMMON_KEYS = (
    "backend", "pwm_chip", "pwm_channel", "pwm_polarity", "sysfs_root", "adc", "cp_sampling", "cp_gain",
    "cp_offset_v", "pp_channel", "pp_pullup_ohms", "pp_supply_v", "pp_parallel_ohms", "pp_gain",
    "sample_period_s",
)  # fmt: skip
# keys that only apply to one choice: (key that chooses, its value) -> keys
OPTION_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("adc", "mcp3008"): ("spi_port", "spi_device", "adc_vref_v"),
    ("adc", "ads1115"): ("i2c_bus", "i2c_address", "ads1115_full_scale_v"),
    ("cp_sampling", "peak_detector"): (
        "cp_high_channel",
        "cp_low_channel",
        "cp_low_gain",
        "cp_low_offset_v",
        "peak_reset_pin",
        "peak_reset_ms",
        "peak_settle_ms",
    ),  # fmt: skip
    ("cp_sampling", "min_max"): ("cp_channel", "min_max_reads"),
}
PP_DIVIDER_KEYS = ("pp_pullup_ohms", "pp_supply_v", "pp_parallel_ohms", "pp_gain")


def build_linux_pilot(
    table: ConfigTable, ctx: BuildContext, *, open_i2c_bus: Callable[[int], Any] | None = None
) -> LinuxPilot:
    """`open_i2c_bus(n)` opens /dev/i2c-n (default smbus2.SMBus); tests pass a fake."""
    check_backend(table, BACKEND)
    adc_kind = table.string("adc", choices=ADCS)
    sampling_kind = table.string("cp_sampling", default="peak_detector", choices=CP_SAMPLINGS)
    _reject_keys_of_other_options(table, {"adc": adc_kind, "cp_sampling": sampling_kind})

    channel_count = 8 if adc_kind == "mcp3008" else 4
    channels = _channels(table, sampling_kind, channel_count)
    pp = _pp_channel(table, channel_count)
    if pp is not None:
        channels["pp_channel"] = pp.channel
    _check_distinct_channels(table, channels)

    pwm = SysfsPwm(
        table.integer("pwm_chip", default=0, minimum=0),
        table.integer("pwm_channel", default=0, minimum=0),
        root=table.string("sysfs_root", default=SYSFS_PWM_ROOT),
        polarity=table.string("pwm_polarity", default="normal", choices=POLARITIES),
    )
    cp_gain = table.number("cp_gain", minimum=-1000, maximum=1000)
    if cp_gain == 0:
        raise table.error("cp_gain", "must not be 0")
    scaling = CpScaling(cp_gain, table.number("cp_offset_v", default=0.0))
    make_sampling = _sampling_factory(table, ctx, sampling_kind, channels, scaling)
    sample_period_s = table.number(
        "sample_period_s", default=DEFAULT_SAMPLE_PERIOD_S, minimum=0.002, maximum=0.1, unit="s"
    )

    adc = _open_adc(table, ctx, adc_kind, set(channels.values()), open_i2c_bus)
    try:
        cp_sampling = make_sampling(adc)
    except Exception:
        adc.close()
        raise
    return LinuxPilot(pwm, adc, cp_sampling, pp=pp, sample_period_s=sample_period_s, clock=ctx.clock)


def _reject_keys_of_other_options(table: ConfigTable, chosen: dict[str, str]) -> None:
    allowed = set(COMMON_KEYS)
    for (chooser, value), keys in OPTION_KEYS.items():
        if chosen[chooser] == value:
            allowed.update(keys)
    for key in table.data:
        for (chooser, value), keys in OPTION_KEYS.items():
            if key in keys and key not in allowed:
                raise table.error(key, f'only applies with {chooser} = "{value}"')
    table.reject_unknown(allowed)


def _channels(table: ConfigTable, sampling_kind: str, channel_count: int) -> dict[str, int]:
    keys = ("cp_high_channel", "cp_low_channel") if sampling_kind == "peak_detector" else ("cp_channel",)
    return {key: table.integer(key, minimum=0, maximum=channel_count - 1) for key in keys}


def _check_distinct_channels(table: ConfigTable, channels: dict[str, int]) -> None:
    seen: dict[int, str] = {}
    for key, channel in channels.items():
        if channel in seen:
            raise table.error(key, f"ADC channel {channel} is already used by {seen[channel]}")
        seen[channel] = key


def _pp_channel(table: ConfigTable, channel_count: int) -> PpChannel | None:
    if "pp_channel" not in table.data:
        for key in PP_DIVIDER_KEYS:
            if key in table.data:
                raise table.error(key, "only applies with a pp_channel")
        return None
    channel = table.integer("pp_channel", minimum=0, maximum=channel_count - 1)
    pullup = table.number("pp_pullup_ohms", minimum=1, maximum=1e6, unit="Ohm")
    supply = table.number("pp_supply_v", minimum=0.5, maximum=24, unit="V")
    parallel = table.number("pp_parallel_ohms", default=None, minimum=1, maximum=1e6, unit="Ohm")
    gain = table.number("pp_gain", default=1.0, minimum=0.01, maximum=100)
    return PpChannel(channel, PpDivider(pullup, supply, parallel), gain)


def _sampling_factory(
    table: ConfigTable, ctx: BuildContext, sampling_kind: str, channels: dict[str, int], scaling: CpScaling
) -> Callable[[Adc], CpSampling]:
    """Validate the sampling keys now; the returned factory builds the sampler once the ADC is open."""
    if sampling_kind == "min_max":
        reads = table.integer("min_max_reads", default=MIN_MAX_READS, minimum=2, maximum=10000)
        return lambda adc: MinMaxSampling(adc, channel=channels["cp_channel"], scaling=scaling, reads=reads)

    low_gain = table.number("cp_low_gain", default=scaling.gain, minimum=-1000, maximum=1000)
    if low_gain == 0:
        raise table.error("cp_low_gain", "must not be 0")
    low_scaling = CpScaling(low_gain, table.number("cp_low_offset_v", default=scaling.offset_v))
    reset_pin = config_pin(table, "peak_reset_pin", required=False)
    reset_ms = table.number("peak_reset_ms", default=PEAK_RESET_S * 1000, minimum=0, maximum=50, unit="ms")
    settle_ms = table.number("peak_settle_ms", default=PEAK_SETTLE_S * 1000, minimum=0, maximum=50, unit="ms")

    def make(adc: Adc) -> PeakDetectorSampling:
        reset = None
        if reset_pin is not None:
            reset = open_gpio(
                table,
                lambda: DigitalOutputDevice(reset_pin, initial_value=False, pin_factory=ctx.pin_factory),
            )
        return PeakDetectorSampling(
            adc,
            high_channel=channels["cp_high_channel"],
            low_channel=channels["cp_low_channel"],
            high_scaling=scaling,
            low_scaling=low_scaling,
            reset=reset,
            reset_s=reset_ms / 1000,
            settle_s=settle_ms / 1000,
        )

    return make


def _open_adc(
    table: ConfigTable,
    ctx: BuildContext,
    adc_kind: str,
    channels: set[int],
    open_i2c_bus: Callable[[int], Any] | None,
) -> Mcp3008Adc | Ads1115Adc:
    if adc_kind == "mcp3008":
        spi_port = table.integer("spi_port", default=0, minimum=0)
        spi_device = table.integer("spi_device", default=0, minimum=0)
        vref_v = table.number("adc_vref_v", default=3.3, minimum=0.5, maximum=5.5, unit="V")
        return Mcp3008Adc(
            channels, spi_port=spi_port, spi_device=spi_device, vref_v=vref_v, pin_factory=ctx.pin_factory
        )
    i2c_bus = table.integer("i2c_bus", default=1, minimum=0)
    address = table.integer("i2c_address", default=0x48)
    if address not in ADS1115_ADDRESSES:
        raise table.error("i2c_address", f"must be 0x48, 0x49, 0x4a or 0x4b (ADDR pin), got {address:#x}")
    requested = table.number("ads1115_full_scale_v", default=4.096)
    full_scale = next((fs for fs in ADS1115_FULL_SCALES_V if math.isclose(requested, fs)), None)
    if full_scale is None:
        allowed = ", ".join(f"{fs:g}" for fs in ADS1115_FULL_SCALES_V)
        raise table.error("ads1115_full_scale_v", f"must be one of {allowed}, got {requested:g}")
    if open_i2c_bus is None:
        from smbus2 import SMBus

        open_i2c_bus = SMBus
    try:
        bus = open_i2c_bus(i2c_bus)
    except OSError as exc:
        raise HardwareError(f"ADS1115: cannot open /dev/i2c-{i2c_bus}: {exc.strerror or exc}") from exc
    return Ads1115Adc(bus, address=address, full_scale_v=full_scale)
