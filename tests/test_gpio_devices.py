"""GPIO back-ends on gpiozero's MockFactory: pins are driven like real inputs, time comes from a fake clock."""

import asyncio
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockConnectedPin, MockFactory

from agent.core.controller import ConnectorStatus, indicator_for
from hal.board import BoardConfigError, ConfigTable, load_board
from hal.build import BuildContext
from hal.gpio import (
    Debouncer,
    GpioContactor,
    GpioLock,
    GpioRcd,
    InputSpec,
    StatusLeds,
    build_contactor,
    build_lock,
    build_rcd,
    build_status_leds,
)
from hal.interfaces import IndicatorState

COIL, MIRROR, MIRROR_2 = 17, 27, 26
TRIP, TEST = 22, 23
LOCK, UNLOCK, LOCK_FEEDBACK = 5, 6, 13


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def factory():
    pins = MockFactory()
    yield pins
    pins.reset()


@pytest.fixture
def clock():
    return FakeClock()


def level(factory: MockFactory, pin: int) -> int:
    return int(factory.pin(pin).state)


# ---- the pure debouncer --------------------------------------------------------------------------------


def test_debouncer_ignores_a_bounce_shorter_than_the_hold_time():
    debouncer = Debouncer(0.010)
    assert debouncer.feed(True, 0.000) is False
    assert debouncer.feed(False, 0.002) is False  # bounced back after 2 ms
    assert debouncer.level(0.050) is False
    assert debouncer.raw_rises == 1 and debouncer.rises == 0


def test_debouncer_follows_a_level_that_holds():
    debouncer = Debouncer(0.010)
    debouncer.feed(True, 0.000)
    assert debouncer.level(0.009) is False
    assert debouncer.level(0.010) is True
    assert debouncer.rises == 1


def test_debouncer_counts_a_held_pulse_even_when_nobody_looked_during_it():
    debouncer = Debouncer(0.001)
    debouncer.feed(True, 0.000)
    debouncer.feed(False, 0.005)  # the falling edge is the first thing seen after the rise
    assert debouncer.rises == 1


def test_debouncer_with_zero_hold_follows_at_once():
    debouncer = Debouncer(0.0)
    assert debouncer.feed(True, 1.0) is True


# ---- contactor -----------------------------------------------------------------------------------------


def make_contactor(factory, clock, **options) -> GpioContactor:
    options.setdefault("mirror", InputSpec(MIRROR))  # pull-up: a conducting mirror contact pulls the pin low
    # the input-handling tests below are written for NO wiring; the NC default has tests of its own
    options.setdefault("mirror_type", "NO")
    return GpioContactor(COIL, clock=clock, pin_factory=factory, **options)


def close_mirror(factory, pin=MIRROR):
    factory.pin(pin).drive_low()


def open_mirror(factory, pin=MIRROR):
    factory.pin(pin).drive_high()


def test_contactor_drives_the_coil_active_high(factory, clock):
    contactor = make_contactor(factory, clock)
    assert level(factory, COIL) == 0
    contactor.set_closed(True)
    assert level(factory, COIL) == 1 and contactor.commanded_closed
    contactor.set_closed(False)
    assert level(factory, COIL) == 0 and not contactor.commanded_closed


def test_contactor_drives_the_coil_active_low(factory, clock):
    contactor = make_contactor(factory, clock, active_high=False)
    assert level(factory, COIL) == 1  # off = high on an active-low driver
    contactor.set_closed(True)
    assert level(factory, COIL) == 0


def test_contactor_feedback_is_debounced(factory, clock):
    contactor = make_contactor(factory, clock)
    assert contactor.feedback_closed() is False
    close_mirror(factory)
    clock.advance(0.002)
    open_mirror(factory)  # a 2 ms bounce
    clock.advance(0.030)
    assert contactor.feedback_closed() is False

    close_mirror(factory)
    clock.advance(0.005)
    assert contactor.feedback_closed() is False  # not held for 10 ms yet
    clock.advance(0.010)
    assert contactor.feedback_closed() is True  # held 15 ms


def test_contactor_nc_mirror_is_inverted(factory, clock):
    contactor = make_contactor(factory, clock, mirror_type="NC")
    close_mirror(factory)  # an NC mirror conducts while the main contacts are open
    clock.advance(0.015)
    assert contactor.feedback_closed() is False
    open_mirror(factory)
    clock.advance(0.015)
    assert contactor.feedback_closed() is True


def test_contactor_mirror_is_normally_closed_by_default_input_active_means_open(factory, clock):
    contactor = GpioContactor(COIL, mirror=InputSpec(MIRROR), clock=clock, pin_factory=factory)
    close_mirror(factory)  # the mirror conducts: the main contacts are open
    clock.advance(0.015)
    assert contactor.feedback_closed() is False
    contactor.set_closed(True)
    open_mirror(factory)  # pulled in: the mirror contact opens
    clock.advance(0.015)
    assert contactor.feedback_closed() is True


def test_broken_wire_to_the_default_nc_mirror_reads_closed_so_a_weld_cannot_hide(factory, clock):
    """Nothing conducts on the feedback input (wire cut, contact lost): with NC wiring that reads "closed"
    while the coil is off, which the controller treats as a weld; NO wiring would read "open"."""
    contactor = GpioContactor(COIL, mirror=InputSpec(MIRROR), clock=clock, pin_factory=factory)
    clock.advance(0.015)  # the pull-up alone holds the input
    assert contactor.commanded_closed is False and contactor.feedback_closed() is True
    no_wiring = GpioContactor(6, mirror=InputSpec(12), mirror_type="NO", clock=clock, pin_factory=factory)
    clock.advance(0.015)
    assert no_wiring.feedback_closed() is False  # the same broken wire, hidden


def test_build_contactor_without_feedback_key_wires_the_mirror_nc(factory, clock):
    ctx = BuildContext(path=CONFIG, clock=clock, pin_factory=factory)
    contactor = build_contactor(table({"backend": "gpio", "pin": COIL, "feedback_pin": MIRROR}), ctx)
    close_mirror(factory)
    clock.advance(0.015)
    assert contactor.feedback_closed() is False
    open_mirror(factory)
    clock.advance(0.015)
    assert contactor.feedback_closed() is True
    explicit_no = build_contactor(table({"backend": "gpio", "pin": 6, "feedback_pin": 12, "feedback": "NO"}), ctx)
    factory.pin(12).drive_low()
    clock.advance(0.015)
    assert explicit_no.feedback_closed() is True


def test_contactor_mirror_with_pull_down_is_active_high(factory, clock):
    contactor = make_contactor(factory, clock, mirror=InputSpec(MIRROR, pull="down"))
    factory.pin(MIRROR).drive_high()
    clock.advance(0.015)
    assert contactor.feedback_closed() is True


def test_contactor_mirror_without_internal_pull_uses_the_configured_polarity(factory, clock):
    # an opto-coupled input with its own pull resistor: high while the mirror contact conducts
    contactor = make_contactor(factory, clock, mirror=InputSpec(MIRROR, pull="none", active_low=False))
    factory.pin(MIRROR).drive_low()
    clock.advance(0.015)
    assert contactor.feedback_closed() is False
    factory.pin(MIRROR).drive_high()
    clock.advance(0.015)
    assert contactor.feedback_closed() is True


def test_contactor_two_mirrors_that_agree(factory, clock):
    contactor = make_contactor(factory, clock, mirror_2=InputSpec(MIRROR_2))
    contactor.set_closed(True)
    close_mirror(factory)
    close_mirror(factory, MIRROR_2)
    clock.advance(0.015)
    assert contactor.feedback_closed() is True and contactor.mirrors_agree


def test_contactor_mirrors_that_disagree_read_as_a_mismatch_with_the_command(factory, clock):
    contactor = make_contactor(factory, clock, mirror_2=InputSpec(MIRROR_2))
    # closed: L1 closes, L2/L3 stays open -> "open", which the controller turns into a feedback fault
    contactor.set_closed(True)
    close_mirror(factory)
    clock.advance(0.015)
    assert contactor.feedback_closed() is False
    assert contactor.mirrors_agree is False
    # opened: L1 stays closed (welded) -> "closed", which the controller latches as a weld
    contactor.set_closed(False)
    clock.advance(0.015)
    assert contactor.feedback_closed() is True
    open_mirror(factory)
    clock.advance(0.015)
    assert contactor.feedback_closed() is False and contactor.mirrors_agree


async def test_contactor_close_leaves_the_coil_off_and_releases_the_pins(factory, clock):
    contactor = make_contactor(factory, clock)
    contactor.set_closed(True)
    await contactor.close()
    await contactor.close()
    assert level(factory, COIL) == 0
    GpioContactor(COIL, mirror=InputSpec(MIRROR), pin_factory=factory)  # the pins are free again


# ---- RCD -------------------------------------------------------------------------------------------------


def make_rcd(factory, clock=time.monotonic, **options) -> GpioRcd:
    trip = InputSpec(TRIP, pull="down")  # the module's fault output drives the pin high
    return GpioRcd(trip, clock=clock, pin_factory=factory, **options)


def test_rcd_trip_latches_until_reset_with_the_input_clear(factory, clock):
    rcd = make_rcd(factory, clock)
    assert rcd.tripped() is False
    factory.pin(TRIP).drive_high()
    clock.advance(0.002)
    assert rcd.tripped() is True
    assert "residual current trip" in rcd.last_error
    assert rcd.reset() is False  # still active
    factory.pin(TRIP).drive_low()
    clock.advance(0.002)
    assert rcd.tripped() is True  # latched after the input cleared
    assert rcd.reset() is True
    assert rcd.tripped() is False and rcd.last_error is None


def test_rcd_trip_pulse_between_two_polls_is_latched(factory, clock):
    rcd = make_rcd(factory, clock)
    factory.pin(TRIP).drive_high()
    clock.advance(0.005)
    factory.pin(TRIP).drive_low()
    clock.advance(1.0)
    assert rcd.tripped() is True


def test_rcd_spike_shorter_than_the_debounce_is_ignored(factory, clock):
    rcd = make_rcd(factory, clock)
    factory.pin(TRIP).drive_high()
    clock.advance(0.0003)
    factory.pin(TRIP).drive_low()
    clock.advance(1.0)
    assert rcd.tripped() is False


def connect_test_pin_to_trip(factory):
    """A working RCM: its trip output follows the test input."""
    factory.pin(TEST, pin_class=MockConnectedPin, input_pin=factory.pin(TRIP))


async def test_rcd_self_test_passes_when_the_trip_follows_the_test_pulse(factory):
    connect_test_pin_to_trip(factory)
    rcd = make_rcd(factory, test_pin=TEST)
    assert rcd.can_self_test
    assert await rcd.self_test() is True
    states = factory.pin(TEST).states
    pulse_s = states[-1].timestamp  # a PinState's timestamp is the time since the previous change
    assert [s.state for s in states[-2:]] == [True, False] and 0.1 <= pulse_s < 0.3
    assert rcd.tripped() is False  # the trip the test caused is not a fault
    assert rcd.last_error is None


async def test_rcd_self_test_fails_when_the_trip_input_does_not_respond(factory):
    rcd = make_rcd(factory, test_pin=TEST, self_test_timeout_s=0.2)
    assert await rcd.self_test() is False
    assert "did not respond within 0.2 s" in rcd.last_error
    assert level(factory, TEST) == 0


async def test_rcd_self_test_is_refused_while_tripped(factory, clock):
    connect_test_pin_to_trip(factory)
    rcd = make_rcd(factory, clock, test_pin=TEST)
    factory.pin(TRIP).drive_high()
    clock.advance(0.002)
    assert await rcd.self_test() is False
    assert "latched" in rcd.last_error


async def test_rcd_without_test_pin_cannot_self_test(factory):
    rcd = make_rcd(factory)
    assert rcd.can_self_test is False
    assert await rcd.self_test() is False
    assert "no test pin" in rcd.last_error


# ---- connector lock ------------------------------------------------------------------------------------


def test_solenoid_lock_holds_its_pin_and_reports_the_feedback(factory, clock):
    lock = GpioLock(LOCK, feedback=InputSpec(LOCK_FEEDBACK), clock=clock, pin_factory=factory)
    lock.set_locked(True)
    assert level(factory, LOCK) == 1 and lock.commanded_locked
    assert lock.is_locked() is False  # the command is not the feedback
    factory.pin(LOCK_FEEDBACK).drive_low()
    clock.advance(0.015)
    assert lock.is_locked() is True
    lock.set_locked(False)
    assert level(factory, LOCK) == 0
    factory.pin(LOCK_FEEDBACK).drive_high()
    clock.advance(0.015)
    assert lock.is_locked() is False


def test_motor_lock_pulses_one_direction_at_a_time(factory, clock):
    lock = GpioLock(
        LOCK,
        unlock_pin=UNLOCK,
        pulse_s=0.03,
        feedback=InputSpec(LOCK_FEEDBACK),
        clock=clock,
        pin_factory=factory,
    )
    assert lock.is_motor
    lock.set_locked(True)
    assert (level(factory, LOCK), level(factory, UNLOCK)) == (1, 0)
    time.sleep(0.08)
    assert (level(factory, LOCK), level(factory, UNLOCK)) == (0, 0)  # the motor is not driven continuously
    lock.set_locked(False)
    assert (level(factory, LOCK), level(factory, UNLOCK)) == (0, 1)
    lock.set_locked(True)  # reversing mid-pulse: the unlock side goes off first
    assert (level(factory, LOCK), level(factory, UNLOCK)) == (1, 0)
    time.sleep(0.08)
    assert (level(factory, LOCK), level(factory, UNLOCK)) == (0, 0)


# ---- LEDs ------------------------------------------------------------------------------------------------


def test_status_leds_light_the_configured_ones(factory):
    leds = StatusLeds(ready_pin=20, fault_pin=21, pin_factory=factory)
    leds.show(ready=True, charging=True)
    assert leds.lit() == {"ready": True, "fault": False}
    assert level(factory, 20) == 1 and level(factory, 21) == 0


@pytest.mark.parametrize(("state", "lit"), [
    (IndicatorState.READY, (1, 0, 0)),
    (IndicatorState.CHARGING, (0, 1, 0)),
    (IndicatorState.FAULT, (0, 0, 1)),
    (IndicatorState.OFF, (0, 0, 0)),
])
def test_status_leds_indicate_one_state_at_a_time(factory, state, lit):
    leds = StatusLeds(ready_pin=19, charging_pin=20, fault_pin=21, active_high=False, pin_factory=factory)
    assert leds.shown is IndicatorState.OFF
    leds.indicate(IndicatorState.FAULT)
    leds.indicate(state)
    assert leds.shown is state
    assert tuple(1 - level(factory, pin) for pin in (19, 20, 21)) == lit  # active low: lit = pin low


def test_board_leds_table_gives_the_connector_a_status_indicator(tmp_path):
    """A [connectors.leds] table in a devices board builds StatusLeds as the connector's indicator, on the
    board's pin factory (here a dry run's MockFactory), which the station drives from the OCPP status."""
    shipped = Path(__file__).resolve().parent.parent / "board-configs" / "pi-relay-mcp3008-sdm630-pn532.toml"
    path = tmp_path / "board.toml"
    path.write_text(shipped.read_text() + '\n[connectors.leds]\nbackend = "gpio"\nready_pin = 16\n'
                                          'charging_pin = 20\nfault_pin = 21\n')
    board = load_board(path, dry_run=True)
    try:
        indicator = board.connectors[0].indicator
        assert isinstance(indicator, StatusLeds)
        indicator.indicate(indicator_for(ConnectorStatus.CHARGING))
        assert indicator.lit() == {"ready": False, "charging": True, "fault": False}
        assert board.pin_factory.pin(20).state
    finally:
        asyncio.run(board.close())

    path.write_text(path.read_text().replace("fault_pin = 21", "fault_pin = 13"))  # the lock's feedback pin
    with pytest.raises(BoardConfigError, match=r"\[\[connectors\]\]\[0\]\.leds: cannot set up the GPIO device"):
        load_board(path, dry_run=True)


# ---- builders --------------------------------------------------------------------------------------------

CONFIG = Path("board-configs/gpio-test.toml")


def table(data: dict, where="[[connectors]][0].contactor") -> ConfigTable:
    return ConfigTable(data, where, CONFIG)


def test_build_contactor_from_config(factory, clock):
    ctx = BuildContext(path=CONFIG, clock=clock, pin_factory=factory)
    contactor = build_contactor(
        table(
            {
                "backend": "gpio",
                "pin": COIL,
                "active_high": False,
                "feedback_pin": MIRROR,
                "feedback": "NC",
                "feedback_pin_2": MIRROR_2,
                "debounce_ms": 20,
            }
        ),
        ctx,
    )
    close_mirror(factory)
    close_mirror(factory, MIRROR_2)  # NC mirrors conducting: main contacts open
    clock.advance(0.025)
    assert contactor.feedback_closed() is False
    contactor.set_closed(True)
    assert level(factory, COIL) == 0
    open_mirror(factory)
    open_mirror(factory, MIRROR_2)
    clock.advance(0.015)
    assert contactor.feedback_closed() is False  # 20 ms debounce
    clock.advance(0.010)
    assert contactor.feedback_closed() is True


def test_build_rcd_and_lock_and_leds_from_config(factory, clock):
    ctx = BuildContext(path=CONFIG, clock=clock, pin_factory=factory)
    rcd = build_rcd(
        table({"backend": "gpio", "trip_pin": TRIP, "trip_pull": "down", "test_pin": TEST}, "[rcd]"), ctx
    )
    assert rcd.can_self_test
    lock = build_lock(
        table({"lock_pin": LOCK, "unlock_pin": UNLOCK, "pulse_ms": 200, "lock_feedback_pin": LOCK_FEEDBACK}),
        ctx,
    )
    assert lock.is_motor
    assert lock.travel_timeout_s == 1.0  # a 200 ms pulse: the default deadline
    asyncio.run(lock.close())
    slow_motor = {"lock_pin": LOCK, "unlock_pin": UNLOCK, "pulse_ms": 2000, "lock_feedback_pin": LOCK_FEEDBACK}
    lock = build_lock(table(slow_motor), ctx)
    assert lock.travel_timeout_s == 2.5  # never a fault while the motor still runs its pulse
    asyncio.run(lock.close())
    lock = build_lock(table({**slow_motor, "travel_timeout_ms": 4000}), ctx)
    assert lock.travel_timeout_s == 4.0
    leds = build_status_leds(table({"backend": "gpio", "charging_pin": "GPIO21"}, "[leds]"), ctx)
    leds.show(charging=True)
    assert level(factory, 21) == 1


@pytest.mark.parametrize(
    ("builder", "data", "message"),
    [
        (
            build_contactor,
            {"pin": 17, "feedback_pin": 27, "coil_pin": 4},
            "[[connectors]][0].contactor.coil_pin: unknown key",
        ),
        (build_contactor, {"pin": 17}, ".feedback_pin: required key is missing"),
        (
            build_contactor,
            {"pin": 17, "feedback_pin": 27, "feedback": "closed"},
            '.feedback: must be one of "NC", "NO"',
        ),
        (build_contactor, {"pin": 17, "feedback_pin": 17}, ".feedback_pin: pin 17 is already used by pin"),
        (build_contactor, {"pin": True, "feedback_pin": 27}, ".pin: expected a GPIO number"),
        (
            build_contactor,
            {"pin": 17, "feedback_pin": 27, "backend": "modbus"},
            '.backend: must be one of "gpio"',
        ),
        (
            build_contactor,
            {"pin": 17, "feedback_pin": 27, "feedback_pull": "none"},
            ".feedback_active_low: required",
        ),
        (
            build_contactor,
            {"pin": 17, "feedback_pin": 27, "debounce_ms": -1},
            ".debounce_ms: must be between 0",
        ),
        (
            build_rcd,
            {"trip_pin": 22, "self_test_pulse_ms": 100},
            ".self_test_pulse_ms: only applies with a test_pin",
        ),
        (
            build_lock,
            {"lock_pin": 5, "lock_feedback_pin": 13, "pulse_ms": 300},
            ".pulse_ms: only applies to a motor",
        ),
        (build_lock, {"lock_pin": 5}, ".lock_feedback_pin: required key is missing"),
        (
            build_lock,
            {"lock_pin": 5, "unlock_pin": 6, "lock_feedback_pin": 13, "pulse_ms": 800, "travel_timeout_ms": 500},
            ".travel_timeout_ms: must be at least pulse_ms (800)",
        ),
    ],
)
def test_builders_reject_bad_config_with_one_line_naming_file_and_key(factory, builder, data, message):
    ctx = BuildContext(path=CONFIG, pin_factory=factory)
    with pytest.raises(BoardConfigError) as err:
        builder(table(data), ctx)
    text = str(err.value)
    assert text.startswith(f"{CONFIG}: ") and message in text and "\n" not in text


def test_builder_reports_a_pin_already_in_use(factory):
    ctx = BuildContext(path=CONFIG, pin_factory=factory)
    build_contactor(table({"pin": 17, "feedback_pin": 27}), ctx)
    with pytest.raises(BoardConfigError, match=r"\[rcd\]: cannot set up the GPIO device: .*GPIO27"):
        build_rcd(table({"trip_pin": 27}, "[rcd]"), ctx)
