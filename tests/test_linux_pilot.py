"""CP/PP signal processing (pure, sample by sample) and the "Linux PWM + ADC" pilot end to end.

The bench: a fake /sys/class/pwm tree in tmp_path whose "kernel" thread creates pwmN on export, a
simulated MCP3008 speaking the real SPI protocol on gpiozero's MockFactory, and a fake SMBus holding the
ADS1115's registers.
"""

import asyncio
import itertools
import math
import threading
import time
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockSPIDevice

from hal.board import BoardConfigError, ConfigTable
from hal.build import BuildContext
from hal.interfaces import CpState, HardwareError, PilotMode, PilotOutput
from hal.linux_pilot import (
    Ads1115Adc,
    CpScaling,
    LinuxPilot,
    PeakDetectorSampling,
    SysfsPwm,
    build_linux_pilot,
)
from hal.pilot_math import (
    PilotClassifier,
    PpDivider,
    cp_state_with_hysteresis,
    invalid_fault_samples,
    pp_resistance_for_voltage,
    pp_voltage_to_ampacity,
)

X1, F = 100.0, 0.0  # duty of the steady outputs
PWM = 50.0

# ---- classifier: one sample at a time -----------------------------------------------------------------


def feed(classifier: PilotClassifier, high: float, low: float, duty: float, times: int = 1):
    for _ in range(times):
        reading = classifier.update(high, low, duty)
    return reading


def confirmed(state: CpState) -> PilotClassifier:
    """A classifier whose confirmed state is `state`."""
    samples = {
        CpState.A: (12.0, 12.0, X1),
        CpState.B: (9.0, -12.0, PWM),
        CpState.C: (6.0, -12.0, PWM),
        CpState.D: (3.0, -12.0, PWM),
        CpState.E: (0.0, 0.0, PWM),
        CpState.F: (-12.0, -12.0, F),
    }
    classifier = PilotClassifier()
    feed(classifier, *samples[state], times=2)
    assert classifier.state is state
    return classifier


@pytest.mark.parametrize(
    ("high", "low", "duty", "state"),
    [
        (12.0, 12.0, X1, CpState.A),
        (11.0, 11.0, X1, CpState.A),
        (13.0, 13.0, X1, CpState.A),
        (12.0, -12.0, PWM, CpState.A),  # no EV: nothing loads either half
        (9.0, 9.0, X1, CpState.B),
        (8.0, -12.0, PWM, CpState.B),
        (10.0, -12.0, PWM, CpState.B),
        (6.0, -12.0, PWM, CpState.C),
        (5.0, -12.0, PWM, CpState.C),
        (7.0, -12.0, PWM, CpState.C),
        (3.0, -12.0, PWM, CpState.D),
        (2.0, -12.0, PWM, CpState.D),
        (4.0, -12.0, PWM, CpState.D),
        (0.0, 0.0, X1, CpState.E),
        (0.3, -0.2, PWM, CpState.E),
        (1.9, -12.0, PWM, CpState.E),  # shorted after the diode: only the positive half is low (Yeti)
        (-1.0, -12.0, PWM, CpState.E),
        (-5.0, -5.0, F, CpState.E),  # F driven but the -12 V side is pulled towards PE
        (-12.0, -12.0, F, CpState.F),
        (-11.0, -11.0, F, CpState.F),
        (-13.0, -13.0, F, CpState.F),
    ],
)
def test_every_state_window(high, low, duty, state):
    classifier = PilotClassifier()
    assert feed(classifier, high, low, duty) is None  # one sample confirms nothing
    reading = feed(classifier, high, low, duty)
    assert reading.state is state
    assert (reading.high_v, reading.low_v) == (high, low)


@pytest.mark.parametrize("high", [13.5, 10.5, 7.5, 4.5, -1.5, -5.0, -10.5, -13.5, math.nan])
def test_voltages_outside_every_window_confirm_nothing(high):
    classifier = PilotClassifier()
    assert feed(classifier, high, -12.0, PWM, times=5) is None


@pytest.mark.parametrize(
    ("volts", "previous", "state"),
    [
        (10.5, CpState.A, CpState.A),
        (10.5, CpState.B, CpState.B),
        (10.5, CpState.C, None),  # a band keeps only one of its two neighbours
        (10.5, None, None),
        (7.5, CpState.B, CpState.B),
        (7.5, CpState.C, CpState.C),
        (7.5, CpState.A, None),
        (4.5, CpState.C, CpState.C),
        (4.5, CpState.D, CpState.D),
        (4.5, CpState.B, None),
        (-1.5, CpState.E, CpState.E),
        (-1.5, CpState.D, None),
        (-10.5, CpState.F, CpState.F),
        (-10.5, CpState.E, None),
        (11.0, CpState.B, CpState.A),  # window edges belong to the window
        (10.0, CpState.A, CpState.B),
        (2.0, CpState.E, CpState.D),
        (1.99, CpState.D, CpState.E),
    ],
)
def test_hysteresis_bands(volts, previous, state):
    assert cp_state_with_hysteresis(volts, previous) is state


@pytest.mark.parametrize(("previous", "stays"), [(CpState.A, CpState.A), (CpState.B, CpState.B)])
def test_10_5_volts_keeps_the_previous_of_a_and_b(previous, stays):
    classifier = confirmed(previous)
    duty = X1 if previous is CpState.A else PWM
    assert feed(classifier, 10.5, -12.0 if duty == PWM else 10.5, duty, times=20).state is stays


def test_single_sample_glitch_never_changes_the_state():
    classifier = confirmed(CpState.C)
    for high in (9.0, 6.0, 9.0, 6.0, 12.0, 6.0, 0.0, 6.0, -12.0, 6.0):
        assert feed(classifier, high, -12.0, PWM).state is CpState.C


def test_a_b_a_glitch_is_suppressed():
    classifier = confirmed(CpState.A)
    for high in (9.0, 12.0, 9.0, 12.0):
        assert feed(classifier, high, high, X1).state is CpState.A


def test_real_c_to_b_is_confirmed_on_the_second_sample():
    classifier = confirmed(CpState.C)
    assert feed(classifier, 9.0, -12.0, PWM).state is CpState.C
    assert feed(classifier, 9.0, -12.0, PWM).state is CpState.B  # 20 ms after the edge at 10 ms sampling


def test_an_invalid_sample_neither_confirms_nor_breaks_a_candidate():
    classifier = confirmed(CpState.C)
    feed(classifier, 9.0, -12.0, PWM)
    assert feed(classifier, 15.0, -12.0, PWM).state is CpState.C
    assert feed(classifier, 9.0, -12.0, PWM).state is CpState.B


def test_a_pilot_invalid_for_100_ms_is_reported_as_f_until_valid_again():
    assert invalid_fault_samples(0.01) == 10
    classifier = PilotClassifier(invalid_fault_samples=10)
    feed(classifier, 6.0, -12.0, PWM, times=2)
    assert feed(classifier, 15.0, -12.0, PWM, times=9).state is CpState.C  # 90 ms: last state kept
    assert feed(classifier, 15.0, -12.0, PWM).state is CpState.F  # 100 ms
    assert feed(classifier, 15.0, -12.0, PWM, times=5).state is CpState.F
    assert feed(classifier, 9.0, -12.0, PWM).state is CpState.F
    assert feed(classifier, 9.0, -12.0, PWM).state is CpState.B


def test_diode_fault_needs_two_samples_and_latches_until_state_a():
    classifier = confirmed(CpState.B)
    assert feed(classifier, 9.0, -9.0, PWM).diode_ok is True  # one sample is a glitch
    assert feed(classifier, 15.0, -12.0, PWM).diode_ok is True
    feed(classifier, 9.0, -9.0, PWM)
    reading = feed(classifier, 9.0, -9.0, PWM)
    assert reading.diode_ok is False and reading.state is CpState.B
    assert feed(classifier, 9.0, -12.0, PWM, times=3).diode_ok is False  # latched
    assert feed(classifier, 6.0, -12.0, 30.0, times=3).diode_ok is False  # across duty changes
    assert feed(classifier, 12.0, 12.0, X1).diode_ok is False
    assert feed(classifier, 12.0, 12.0, X1).diode_ok is True  # state A confirmed: cleared
    assert classifier.state is CpState.A


def test_diode_check_only_while_pwm_runs_and_not_in_a():
    classifier = confirmed(CpState.B)
    assert feed(classifier, 9.0, 9.0, X1, times=5).diode_ok is True  # steady +12 V output
    classifier = confirmed(CpState.A)
    assert feed(classifier, 12.0, -12.0, PWM, times=5).diode_ok is True  # no EV, no load: |12 - 12| = 0
    classifier = confirmed(CpState.C)
    assert feed(classifier, 6.0, -12.0, PWM, times=5).diode_ok is True


def test_cp_short_is_state_e():
    classifier = confirmed(CpState.C)
    reading = feed(classifier, 0.4, -0.4, PWM, times=2)
    assert reading.state is CpState.E
    assert feed(classifier, -1.5, -12.0, PWM, times=5).state is CpState.E  # E's hysteresis band
    assert feed(classifier, -12.0, -12.0, F, times=2).state is CpState.F  # F driven, nothing loads it


@pytest.mark.parametrize(
    ("ohms", "ampacity"), [(100.0, 63.0), (220.0, 32.0), (680.0, 20.0), (1500.0, 13.0), (None, None)]
)
def test_pp_voltage_to_ampacity_through_a_pull_up(ohms, ampacity):
    divider = PpDivider(pullup_ohms=1000.0, supply_v=3.3)
    volts = 3.3 if ohms is None else 3.3 * ohms / (ohms + 1000.0)
    assert pp_voltage_to_ampacity(volts, divider) == ampacity


def test_pp_divider_with_a_parallel_board_resistor():
    divider = PpDivider(pullup_ohms=330.0, supply_v=5.0, parallel_ohms=2700.0)
    cable = 680.0
    node = 1 / (1 / cable + 1 / 2700.0)
    volts = 5.0 * node / (node + 330.0)
    assert pp_resistance_for_voltage(volts, divider) == pytest.approx(cable)
    assert pp_voltage_to_ampacity(volts, divider) == 20.0
    open_volts = 5.0 * 2700.0 / (2700.0 + 330.0)
    assert pp_voltage_to_ampacity(open_volts, divider) is None


@pytest.mark.parametrize("volts", [0.0, -0.05, 0.1])
def test_pp_short_is_an_error(volts):
    with pytest.raises(ValueError, match="PP"):
        pp_voltage_to_ampacity(volts, PpDivider(1000.0, 3.3))


# ---- the bench -------------------------------------------------------------------------------------------

CONFIG = Path("board-configs/linux-pilot-test.toml")
CP_HIGH, CP_LOW, PP = 0, 1, 2
PP_PULLUP_OHMS, PP_SUPPLY_V = 1000.0, 3.3


def cp_to_adc(cp_volts: float) -> float:
    """The bench's front end maps -12..+12 V onto 0..3 V: CP = ADC * 8 - 12 (cp_gain 8, cp_offset_v -12)."""
    return (cp_volts + 12.0) / 8.0


class FakePwmSysfs:
    """/sys/class/pwm/pwmchip0 as plain files; a "kernel" thread creates pwmN (atomically, a few ms later)
    when N is written to export, like the real one."""

    def __init__(self, root: Path, *, kernel_creates_channels: bool = True):
        self.chip = root / "pwmchip0"
        self.chip.mkdir(parents=True)
        (self.chip / "npwm").write_text("2\n")
        (self.chip / "export").write_text("")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._kernel, daemon=True)
        if kernel_creates_channels:
            self._thread.start()

    def _kernel(self) -> None:
        while not self._stop.wait(0.002):
            channel = (self.chip / "export").read_text().strip()
            if channel and not (self.chip / f"pwm{channel}").exists():
                self.create_channel(int(channel))

    def create_channel(self, channel: int, polarity: str = "normal") -> None:
        building = self.chip / f".pwm{channel}"
        building.mkdir()
        for name, value in (("enable", "0"), ("period", "0"), ("duty_cycle", "0"), ("polarity", polarity)):
            (building / name).write_text(value + "\n")
        building.rename(self.chip / f"pwm{channel}")

    def attr(self, name: str, channel: int = 0) -> str:
        return (self.chip / f"pwm{channel}" / name).read_text().strip()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class SimulatedMcp3008(MockSPIDevice):
    """The MCP3008's SPI protocol on MockFactory's pins (SPI0 CE0): after the start bit, SGL/DIFF and the
    three channel bits, it shifts out a null bit and the 10-bit result (hardware-notes.md section 5.2).
    An input is a voltage or a function returning one per conversion."""

    def __init__(self, factory: MockFactory, vref: float = 3.3):
        super().__init__(clock_pin=11, mosi_pin=10, miso_pin=9, select_pin=8, pin_factory=factory)
        self.vref = vref
        self.inputs: dict[int, object] = dict.fromkeys(range(8), 0.0)
        self.conversions = 0

    def on_bit(self):
        if self.rx_bit == 12:  # 7 preamble zeros, start bit, SGL/DIFF, D2..D0
            command = self.rx_word() & 0b11111
            assert command >> 3 == 0b11, f"expected start bit + single-ended, got {command:05b}"
            source = self.inputs[command & 0b111]
            volts = source() if callable(source) else source
            self.tx_word(min(1023, max(0, round(volts / self.vref * 1023))), 12)
            self.conversions += 1


class FakeAds1115Bus:
    """An ADS1115's config and conversion registers behind smbus2's block-transfer calls. A conversion
    takes 2 ms (a slow chip: 860 samples/s nominal is 1.16 ms), so the driver has to poll for it."""

    FULL_SCALES = {0b000: 6.144, 0b001: 4.096, 0b010: 2.048, 0b011: 1.024, 0b100: 0.512, 0b101: 0.256}
    CONVERSION_S = 0.002

    def __init__(self, address: int = 0x48):
        self.address = address
        self.inputs = [0.0] * 4
        self.configs_written: list[int] = []
        self.status_polls = 0
        self.config = 0x8583  # power-on default
        self.conversion = 0
        self.done_at = 0.0
        self.closed = False

    def write_i2c_block_data(self, address: int, register: int, data: list[int]) -> None:
        assert address == self.address and register == 0x01 and len(data) == 2
        config = data[0] << 8 | data[1]
        self.configs_written.append(config)
        if config & 0x8000:  # start a single-shot conversion
            mux = config >> 12 & 0b111
            assert mux >= 0b100, "expected a single-ended input"
            full_scale = self.FULL_SCALES[config >> 9 & 0b111]
            raw = round(self.inputs[mux - 0b100] / full_scale * 32768)
            self.conversion = max(-32768, min(32767, raw))
            self.done_at = time.monotonic() + self.CONVERSION_S
        self.config = config & 0x7FFF

    def read_i2c_block_data(self, address: int, register: int, length: int) -> list[int]:
        assert address == self.address and length == 2
        if register == 0x01:
            self.status_polls += 1
            value = self.config | (0x8000 if time.monotonic() >= self.done_at else 0)
        else:
            assert time.monotonic() >= self.done_at, "conversion register read before the conversion finished"
            value = self.conversion & 0xFFFF
        return [value >> 8, value & 0xFF]

    def close(self) -> None:
        self.closed = True


class FakeClock:
    def __init__(self):
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


class Bench:
    def __init__(self, root: Path):
        self.root = root
        self.factory = MockFactory()
        self.mcp3008 = SimulatedMcp3008(self.factory)
        self.sysfs = FakePwmSysfs(root / "sys-class-pwm")
        self.i2c = FakeAds1115Bus()
        self.pilots: list[LinuxPilot] = []
        self.ev(12.0, 12.0)
        self.plug(None)

    def config(self, **overrides) -> dict:
        config = {
            "backend": "linux-pwm",
            "sysfs_root": str(self.sysfs.chip.parent),
            "adc": "mcp3008",
            "cp_high_channel": CP_HIGH,
            "cp_low_channel": CP_LOW,
            "cp_gain": 8.0,
            "cp_offset_v": -12.0,
            "pp_channel": PP,
            "pp_pullup_ohms": PP_PULLUP_OHMS,
            "pp_supply_v": PP_SUPPLY_V,
        }
        config.update(overrides)
        return {key: value for key, value in config.items() if value is not None}

    def pilot(self, clock=None, **overrides) -> LinuxPilot:
        ctx = BuildContext(path=CONFIG, pin_factory=self.factory)
        if clock is not None:
            ctx.clock = clock
        pilot = build_linux_pilot(
            ConfigTable(self.config(**overrides), "[[connectors]][0].pilot", CONFIG),
            ctx,
            open_i2c_bus=self.open_i2c,
        )
        self.pilots.append(pilot)
        return pilot

    def open_i2c(self, bus_number: int) -> FakeAds1115Bus:
        assert bus_number == 1
        return self.i2c

    def ev(self, high: float, low: float) -> None:
        """Plateaus the EV side produces, as the peak detectors hold them."""
        self.mcp3008.inputs[CP_HIGH] = cp_to_adc(high)
        self.mcp3008.inputs[CP_LOW] = cp_to_adc(low)
        self.i2c.inputs[CP_HIGH] = cp_to_adc(high)
        self.i2c.inputs[CP_LOW] = cp_to_adc(low)

    def plug(self, coding_ohms: float | None) -> None:
        """A cable whose PP resistor is `coding_ohms` (None: no cable) on the pull-up to 3.3 V."""
        volts = (
            PP_SUPPLY_V if coding_ohms is None else PP_SUPPLY_V * coding_ohms / (coding_ohms + PP_PULLUP_OHMS)
        )
        self.mcp3008.inputs[PP] = volts
        self.i2c.inputs[PP] = volts


@pytest.fixture
async def bench(tmp_path):
    # gpiozero 2.0.1's software SPI bus needs a default factory (see hal.linux_pilot.adc)
    previous_factory = Device.pin_factory
    bench = Bench(tmp_path)
    Device.pin_factory = bench.factory
    yield bench
    for pilot in bench.pilots:
        await pilot.close()
    bench.mcp3008.close()
    bench.sysfs.stop()
    bench.factory.reset()
    Device.pin_factory = previous_factory


async def samples(pilot: LinuxPilot, count: int):
    for _ in range(count):
        reading = await pilot.sample()
    return reading


async def wait_for_state(pilot: LinuxPilot, state: CpState, timeout: float = 1.0):
    async def until():
        while True:
            try:
                if pilot.read().state is state:
                    return pilot.read()
            except HardwareError:
                pass
            await asyncio.sleep(0.005)

    return await asyncio.wait_for(until(), timeout)


# ---- LinuxPilot end to end -------------------------------------------------------------------------------


async def test_start_exports_the_pwm_at_x1_and_reads_state_a(bench):
    pilot = bench.pilot()
    await pilot.start()
    assert (bench.sysfs.chip / "export").read_text().strip() == "0"
    assert bench.sysfs.attr("period") == "1000000"
    assert bench.sysfs.attr("duty_cycle") == "1000000"  # X1: steady +12 V
    assert bench.sysfs.attr("enable") == "1"
    reading = pilot.read()
    assert reading.state is CpState.A and reading.diode_ok
    assert reading.high_v == pytest.approx(12.0, abs=0.05)
    assert pilot.output == PilotOutput(PilotMode.X1, 100.0)


async def test_set_pwm_writes_the_duty_cycle_in_nanoseconds(bench):
    pilot = bench.pilot()
    await pilot.start()
    pilot.set_pwm(26.67)
    assert bench.sysfs.attr("duty_cycle") == "266700"
    assert pilot.output == PilotOutput(PilotMode.PWM, 26.67)
    pilot.set_f()
    assert bench.sysfs.attr("duty_cycle") == "0"
    assert pilot.output == PilotOutput(PilotMode.F, 0.0)
    pilot.set_x1()
    assert bench.sysfs.attr("duty_cycle") == "1000000"
    with pytest.raises(ValueError):
        pilot.set_pwm(101)


async def test_read_follows_the_ev_through_a_session(bench):
    pilot = bench.pilot()
    await pilot.start()
    bench.ev(9.0, 9.0)  # plugged in, X1
    await wait_for_state(pilot, CpState.B)
    pilot.set_pwm(26.67)
    bench.ev(9.0, -12.0)
    bench.ev(6.0, -12.0)  # EV asks for power
    reading = await wait_for_state(pilot, CpState.C)
    assert reading.low_v == pytest.approx(-12.0, abs=0.05) and reading.diode_ok
    bench.ev(9.0, -12.0)  # EV done
    await wait_for_state(pilot, CpState.B)
    pilot.set_x1()
    bench.ev(12.0, 12.0)  # unplugged
    await wait_for_state(pilot, CpState.A)


async def test_glitch_rejection_sample_by_sample(bench):
    pilot = bench.pilot()
    pilot.set_pwm(50.0)
    bench.ev(6.0, -12.0)
    assert (await samples(pilot, 2)).state is CpState.C
    bench.ev(9.0, -12.0)  # one glitched sample
    assert (await pilot.sample()).state is CpState.C
    bench.ev(6.0, -12.0)
    assert (await samples(pilot, 3)).state is CpState.C
    bench.ev(9.0, -12.0)  # a real C -> B
    assert (await pilot.sample()).state is CpState.C
    assert (await pilot.sample()).state is CpState.B
    assert pilot.read().state is CpState.B


async def test_diode_fault_and_cp_short_end_to_end(bench):
    pilot = bench.pilot()
    pilot.set_pwm(50.0)
    bench.ev(9.0, -9.0)  # EV without its diode
    reading = await samples(pilot, 2)
    assert reading.state is CpState.B and reading.diode_ok is False
    bench.ev(0.0, 0.0)
    assert (await samples(pilot, 2)).state is CpState.E


async def test_pp_ampacity_from_the_cable_resistor(bench):
    pilot = bench.pilot()
    assert pilot.has_proximity
    await samples(pilot, 3)
    assert pilot.read_ampacity() is None  # no cable
    bench.plug(220.0)
    await samples(pilot, 3)
    assert pilot.read_ampacity() == 32.0
    bench.plug(680.0)
    await pilot.sample()
    assert pilot.read_ampacity() == 32.0  # median of 3: one new sample is not enough
    await pilot.sample()
    assert pilot.read_ampacity() == 20.0
    bench.plug(1500.0)
    await samples(pilot, 3)
    assert pilot.read_ampacity() == 13.0
    bench.plug(10.0)  # PP shorted
    await samples(pilot, 3)
    with pytest.raises(HardwareError, match="PP"):
        pilot.read_ampacity()


async def test_min_max_sampling_of_the_raw_cp(bench):
    pilot = bench.pilot(
        cp_sampling="min_max", cp_high_channel=None, cp_low_channel=None, cp_channel=0, min_max_reads=20
    )
    waveform = itertools.cycle([cp_to_adc(9.0)] * 3 + [cp_to_adc(-12.0)] * 7)  # 30 % duty, state B
    bench.mcp3008.inputs[0] = lambda: next(waveform)
    pilot.set_pwm(30.0)
    conversions = bench.mcp3008.conversions
    reading = await samples(pilot, 2)
    assert bench.mcp3008.conversions - conversions == 2 * (20 + 1)  # 20 CP reads + 1 PP read per sample
    assert reading.state is CpState.B
    assert reading.high_v == pytest.approx(9.0, abs=0.05) and reading.low_v == pytest.approx(-12.0, abs=0.05)


async def test_peak_detectors_are_reset_before_each_sample(bench):
    pilot = bench.pilot(peak_reset_pin=24, peak_reset_ms=0.5, peak_settle_ms=0.5)
    reset = bench.factory.pin(24)
    reset.clear_states()
    await samples(pilot, 2)
    assert [s.state for s in reset.states[1:]] == [True, False, True, False]


async def test_ads1115_back_end(bench):
    pilot = bench.pilot(adc="ads1115", i2c_bus=1, i2c_address=0x48, pp_channel=3)
    bench.i2c.inputs[3] = bench.mcp3008.inputs[PP]
    bench.ev(6.0, -12.0)
    pilot.set_pwm(50.0)
    reading = await samples(pilot, 2)
    assert reading.state is CpState.C
    assert reading.high_v == pytest.approx(6.0, abs=0.01)
    await pilot.close()
    assert bench.i2c.closed


def test_ads1115_single_shot_conversion_registers():
    bus = FakeAds1115Bus(address=0x49)
    bus.inputs[1] = 1.234
    adc = Ads1115Adc(bus, address=0x49, full_scale_v=4.096)
    assert adc.read_volts(1) == pytest.approx(1.234, abs=0.000125)
    assert bus.status_polls >= 2  # still busy after the nominal conversion time: polled again
    config = bus.configs_written[-1]
    assert config >> 15 == 1  # start a conversion
    assert config >> 12 & 0b111 == 0b101  # AIN1 against GND
    assert config >> 9 & 0b111 == 0b001  # +-4.096 V
    assert config >> 8 & 1 == 1  # single-shot
    assert config >> 5 & 0b111 == 0b111  # 860 samples/s
    assert config & 0b11 == 0b11  # comparator off
    bus.inputs[2] = -0.5
    assert adc.read_volts(2) == pytest.approx(-0.5, abs=0.000125)
    with pytest.raises(HardwareError):
        adc.read_volts(4)


async def test_output_change_during_a_sample_discards_it(bench):
    pilot = bench.pilot()
    bench.ev(9.0, 9.0)
    await samples(pilot, 2)

    def change_output_mid_sample():
        pilot.set_pwm(50.0)
        return cp_to_adc(6.0)

    bench.mcp3008.inputs[CP_HIGH] = change_output_mid_sample
    await samples(pilot, 2)
    assert pilot.read().state is CpState.B


async def test_read_reports_a_stuck_sampler_and_adc_failures(bench):
    clock = FakeClock()
    pilot = bench.pilot(clock=clock)
    await samples(pilot, 2)
    assert pilot.read().state is CpState.A
    clock.now += pilot.stale_after_s + 0.01
    with pytest.raises(HardwareError, match="not sampled for"):
        pilot.read()


class FlakyAdc:
    channels = 8

    def __init__(self):
        self.failing = False

    def read_volts(self, channel: int) -> float:
        if self.failing:
            raise HardwareError("MCP3008: read failed")
        return cp_to_adc(12.0)

    def close(self) -> None:
        pass


async def test_adc_failure_is_reported_until_a_sample_succeeds(tmp_path):
    adc = FlakyAdc()
    scaling = CpScaling(8.0, -12.0)
    sampling = PeakDetectorSampling(
        adc, high_channel=0, low_channel=1, high_scaling=scaling, low_scaling=scaling
    )
    pilot = LinuxPilot(SysfsPwm(0, 0, root=tmp_path), adc, sampling)
    with pytest.raises(HardwareError, match="no CP state confirmed"):
        pilot.read()
    await samples(pilot, 2)
    adc.failing = True
    with pytest.raises(HardwareError):
        await pilot.sample()
    with pytest.raises(HardwareError, match="CP sampling failed: MCP3008: read failed"):
        pilot.read()
    adc.failing = False
    await pilot.sample()
    assert pilot.read().state is CpState.A
    with pytest.raises(HardwareError, match="no PP channel"):
        pilot.read_ampacity()
    await pilot.close()


async def test_close_leaves_x1_and_is_safe_twice(bench):
    pilot = bench.pilot()
    await pilot.start()
    pilot.set_pwm(50.0)
    await pilot.close()
    assert bench.sysfs.attr("duty_cycle") == "1000000"
    await pilot.close()
    with pytest.raises(HardwareError):
        await pilot.sample()


# ---- sysfs PWM -------------------------------------------------------------------------------------------


def test_sysfs_pwm_already_exported_is_not_exported_again(tmp_path):
    sysfs = FakePwmSysfs(tmp_path, kernel_creates_channels=False)
    sysfs.create_channel(1, polarity="inversed")
    pwm = SysfsPwm(0, 1, root=tmp_path)
    pwm.open(duty_percent=53.33)
    assert (sysfs.chip / "export").read_text() == ""
    assert sysfs.attr("polarity", 1) == "normal"
    assert sysfs.attr("period", 1) == "1000000"
    assert sysfs.attr("duty_cycle", 1) == "533300"
    assert sysfs.attr("enable", 1) == "1"


def test_sysfs_pwm_errors_name_the_files(tmp_path):
    with pytest.raises(HardwareError, match="pwmchip3 does not exist"):
        SysfsPwm(3, 0, root=tmp_path).open()
    FakePwmSysfs(tmp_path, kernel_creates_channels=False)
    with pytest.raises(HardwareError, match="pwm0 did not appear"):
        SysfsPwm(0, 0, root=tmp_path, export_timeout_s=0.05).open()


# ---- config ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"i2c_bus": 1}, '.i2c_bus: only applies with adc = "ads1115"'),
        ({"cp_channel": 3}, '.cp_channel: only applies with cp_sampling = "min_max"'),
        ({"adc_gain": 2}, ".adc_gain: unknown key"),
        ({"adc": "mcp3208"}, '.adc: must be one of "mcp3008", "ads1115"'),
        ({"cp_low_channel": CP_HIGH}, ".cp_low_channel: ADC channel 0 is already used by cp_high_channel"),
        ({"pp_channel": CP_LOW}, ".pp_channel: ADC channel 1 is already used by cp_low_channel"),
        ({"cp_high_channel": 8}, ".cp_high_channel: must be between 0 and 7"),
        ({"adc": "ads1115", "pp_channel": 4}, ".pp_channel: must be between 0 and 3"),
        ({"adc": "ads1115", "ads1115_full_scale_v": 3.3}, ".ads1115_full_scale_v: must be one of 6.144"),
        ({"adc": "ads1115", "i2c_address": 0x50}, ".i2c_address: must be 0x48, 0x49, 0x4a or 0x4b"),
        ({"cp_gain": None}, ".cp_gain: required key is missing"),
        ({"cp_gain": 0}, ".cp_gain: must not be 0"),
        ({"pp_channel": None}, ".pp_pullup_ohms: only applies with a pp_channel"),
        ({"pp_supply_v": None}, ".pp_supply_v: required key is missing"),
        ({"sample_period_s": 0.5}, ".sample_period_s: must be between 0.002 and 0.1 s"),
        ({"backend": "gpio"}, '.backend: must be one of "linux-pwm"'),
    ],
)
async def test_builder_rejects_bad_config_with_one_line_naming_file_and_key(bench, overrides, message):
    with pytest.raises(BoardConfigError) as err:
        bench.pilot(**overrides)
    text = str(err.value)
    assert text.startswith(f"{CONFIG}: [[connectors]][0].pilot") and message in text and "\n" not in text


# ---- change notification and the pilot's own sampling thread ---------------------------------------------


class TracedInput:
    """An MCP3008 input that records which thread converted it."""

    def __init__(self, volts: float):
        self.volts = volts
        self.threads: set[str] = set()

    def __call__(self) -> float:
        self.threads.add(threading.current_thread().name)
        return self.volts


async def test_on_change_listeners_are_called_when_the_confirmed_state_or_diode_changes_and_only_then(bench):
    pilot = bench.pilot()
    calls: list[str] = []
    pilot.on_change(lambda: calls.append(threading.current_thread().name))
    await samples(pilot, 2)
    assert len(calls) == 1 and pilot.read().state is CpState.A  # the first confirmed state
    await samples(pilot, 5)
    assert len(calls) == 1  # nothing changed: nobody is woken
    bench.ev(9.0, 9.0)
    await pilot.sample()
    assert len(calls) == 1  # one sample confirms nothing
    await pilot.sample()
    assert len(calls) == 2 and pilot.read().state is CpState.B
    pilot.set_pwm(50.0)
    bench.ev(9.0, -9.0)  # the EV's diode is missing: same state, diode result changes
    await samples(pilot, 2)
    assert len(calls) == 3 and pilot.read().diode_ok is False
    assert all(name.startswith("linux-pilot-") for name in calls)  # called from the pilot's own thread


async def test_background_sampler_wakes_a_waiting_control_loop_with_the_new_state_already_readable(bench):
    """As agent.station.station's control loop does: the listener only sets an event; when it fires, read() already
    returns the new state, so detection does not wait for the next control period."""
    pilot = bench.pilot()
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    pilot.on_change(lambda: loop.call_soon_threadsafe(changed.set))
    await pilot.start()
    assert pilot.read().state is CpState.A
    changed.clear()
    bench.ev(9.0, 9.0)  # plugged in
    await asyncio.wait_for(changed.wait(), 10)  # a deadline, not a timing assertion
    assert pilot.read().state is CpState.B
    changed.clear()
    pilot.set_pwm(26.67)
    bench.ev(6.0, -12.0)  # the EV asks for power
    await asyncio.wait_for(changed.wait(), 10)
    assert pilot.read().state is CpState.C


async def test_a_failing_adc_wakes_the_listeners_so_the_error_is_seen_at_once(tmp_path):
    adc = FlakyAdc()
    scaling = CpScaling(8.0, -12.0)
    sampling = PeakDetectorSampling(adc, high_channel=0, low_channel=1, high_scaling=scaling, low_scaling=scaling)
    pilot = LinuxPilot(SysfsPwm(0, 0, root=tmp_path), adc, sampling)
    calls = []
    pilot.on_change(lambda: calls.append(1))
    await samples(pilot, 2)
    adc.failing = True
    with pytest.raises(HardwareError):
        await pilot.sample()
    assert len(calls) == 2
    with pytest.raises(HardwareError):
        await pilot.sample()
    assert len(calls) == 2  # still failing: no new wake-up
    adc.failing = False
    await pilot.sample()
    assert len(calls) == 3
    await pilot.close()


async def test_pilot_reads_stay_fresh_while_the_default_executor_is_saturated_with_blocked_tasks(bench):
    """A trickling download holds the default executor's workers; the pilot samples on its own thread."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    blocked = [loop.run_in_executor(None, release.wait) for _ in range(64)]  # more than any default pool
    cp_high = TracedInput(cp_to_adc(12.0))
    bench.mcp3008.inputs[CP_HIGH] = cp_high
    try:
        pilot = bench.pilot(sample_period_s=0.1)  # the slowest allowed: stale only after 1 s without a sample
        await asyncio.wait_for(pilot.start(), 10)  # opening the PWM does not queue behind the blocked tasks
        assert pilot.read().state is CpState.A
        conversions = bench.mcp3008.conversions
        while bench.mcp3008.conversions < conversions + 3 * 10:  # ten more samples (CP high, CP low, PP)
            pilot.read()  # raises HardwareError if a reading went stale
            await asyncio.sleep(0.02)
        cp_high.volts = cp_to_adc(9.0)
        assert (await wait_for_state(pilot, CpState.B, timeout=10)).state is CpState.B
        assert not any(future.done() for future in blocked)  # the executor stayed blocked all along
        assert cp_high.threads == {"linux-pilot-pwmchip0-pwm0"}
    finally:
        release.set()
        await asyncio.gather(*blocked)
