"""ADCs for the CP and PP voltages: MCP3008 on SPI (through gpiozero) and ADS1115 on I2C (smbus2).

Both are called from the pilot's sampling thread only, one read at a time. See hardware-notes.md
section 5.4: the MCP3008 is fast enough for asynchronous min/max sampling of the raw CP, the ADS1115
(860 samples/s at most) only for peak-detector outputs and PP.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Protocol

from gpiozero import MCP3008, Device
from gpiozero.exc import GPIOZeroError

from hal.interfaces import HardwareError


class Adc(Protocol):
    channels: int  # number of single-ended inputs

    def read_volts(self, channel: int) -> float: ...

    def close(self) -> None: ...


class Mcp3008Adc:
    """A 10-bit MCP3008 on SPI `port`.`device`, single-ended inputs referenced to `vref_v`."""

    channels = 8

    def __init__(
        self,
        used_channels: Iterable[int],
        *,
        spi_port: int = 0,
        spi_device: int = 0,
        vref_v: float = 3.3,
        pin_factory: Any = None,
    ):
        # gpiozero 2.0.1's software SPI bus (what MockFactory and boards without spidev get) builds a Device
        # without passing the factory on, which fails when no default factory exists: give it ours.
        if pin_factory is not None and Device.pin_factory is None:
            Device.pin_factory = pin_factory
        self._inputs: dict[int, MCP3008] = {}
        try:
            for channel in sorted(set(used_channels)):
                self._inputs[channel] = MCP3008(
                    channel=channel,
                    port=spi_port,
                    device=spi_device,
                    max_voltage=vref_v,
                    pin_factory=pin_factory,
                )
        except GPIOZeroError as exc:
            self.close()
            raise HardwareError(f"MCP3008 on SPI {spi_port}.{spi_device}: cannot open: {exc}") from exc
        self.name = f"MCP3008 on SPI {spi_port}.{spi_device}"

    def read_volts(self, channel: int) -> float:
        try:
            return self._inputs[channel].voltage
        except KeyError:
            raise HardwareError(f"{self.name}: channel {channel} was not opened") from None
        except (GPIOZeroError, OSError) as exc:
            raise HardwareError(f"{self.name}: read of channel {channel} failed: {exc}") from exc

    def close(self) -> None:
        for adc in self._inputs.values():
            adc.close()
        self._inputs = {}


# ADS1115 registers and config bits (TI SBAS444, section 9.6)
_REG_CONVERSION = 0x00
_REG_CONFIG = 0x01
_OS = 0x8000  # write 1: start a single-shot conversion; reads 1 once the conversion is done
_MUX_AIN0_GND = 0b100  # single-ended AINx: 0b100 + x
_MODE_SINGLE_SHOT = 0x0100
_DATA_RATE_860 = 0b111 << 5
_COMPARATOR_OFF = 0b11
ADS1115_FULL_SCALES_V: dict[float, int] = {
    6.144: 0b000,
    4.096: 0b001,
    2.048: 0b010,
    1.024: 0b011,
    0.512: 0b100,
    0.256: 0b101,
}
ADS1115_ADDRESSES = (0x48, 0x49, 0x4A, 0x4B)
_CONVERSION_S = 1 / 860


class SMBusLike(Protocol):
    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int]) -> None: ...

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int) -> list[int]: ...


class Ads1115Adc:
    """A 16-bit ADS1115, single-shot conversions at 860 samples/s on inputs AIN0..AIN3 against GND.

    `full_scale_v` is the programmable-gain range (+-4.096 V suits a 3.3 V supply: inputs never exceed
    the supply). `bus` is an smbus2.SMBus, or anything with its two block-transfer methods.
    """

    channels = 4

    def __init__(
        self, bus: SMBusLike, *, address: int = 0x48, full_scale_v: float = 4.096, timeout_s: float = 0.05
    ):
        if full_scale_v not in ADS1115_FULL_SCALES_V:
            raise ValueError(
                f"full_scale_v must be one of {sorted(ADS1115_FULL_SCALES_V)}, got {full_scale_v}"
            )
        self._bus = bus
        self.address = address
        self.full_scale_v = full_scale_v
        self._timeout_s = timeout_s
        self.name = f"ADS1115 at I2C address {address:#04x}"

    def read_volts(self, channel: int) -> float:
        if not 0 <= channel < self.channels:
            raise HardwareError(f"{self.name}: no channel {channel}")
        config = (
            _OS
            | (_MUX_AIN0_GND + channel) << 12
            | ADS1115_FULL_SCALES_V[self.full_scale_v] << 9
            | _MODE_SINGLE_SHOT
            | _DATA_RATE_860
            | _COMPARATOR_OFF
        )
        try:
            self._bus.write_i2c_block_data(self.address, _REG_CONFIG, [config >> 8, config & 0xFF])
            self._wait_for_conversion()
            msb, lsb = self._bus.read_i2c_block_data(self.address, _REG_CONVERSION, 2)
        except OSError as exc:
            raise HardwareError(f"{self.name}: I2C transfer failed: {exc.strerror or exc}") from exc
        raw = int.from_bytes(bytes((msb, lsb)), "big", signed=True)
        return raw * self.full_scale_v / 32768

    def _wait_for_conversion(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        time.sleep(_CONVERSION_S)
        while True:
            # timed before the poll, so a thread descheduled past the deadline still gets one more poll
            polled_at = time.monotonic()
            msb, _ = self._bus.read_i2c_block_data(self.address, _REG_CONFIG, 2)
            if msb & (_OS >> 8):
                return
            if polled_at >= deadline:
                raise HardwareError(
                    f"{self.name}: conversion not finished after {self._timeout_s * 1000:g} ms"
                )
            time.sleep(0.0002)

    def close(self) -> None:
        close = getattr(self._bus, "close", None)
        if close is not None:
            close()
