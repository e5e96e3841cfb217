"""The "Linux PWM + ADC" control-pilot back-end: sysfs hardware PWM, CP/PP through an MCP3008 or ADS1115."""

from hal.linux_pilot.adc import Adc, Ads1115Adc, Mcp3008Adc
from hal.linux_pilot.config import build_linux_pilot
from hal.linux_pilot.pilot import LinuxPilot, PpChannel
from hal.linux_pilot.sampling import CpScaling, MinMaxSampling, PeakDetectorSampling
from hal.linux_pilot.sysfs_pwm import SysfsPwm

__all__ = [
    "Adc",
    "Ads1115Adc",
    "CpScaling",
    "LinuxPilot",
    "Mcp3008Adc",
    "MinMaxSampling",
    "PeakDetectorSampling",
    "PpChannel",
    "SysfsPwm",
    "build_linux_pilot",
]
