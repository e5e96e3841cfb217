"""The simulated board as the agent and a technician see it: pilot, EV, contactor, meter, faults, RFID."""

import asyncio
import json
import logging

import pytest

from hal.interfaces import Board, CpState, IndicatorState, MeterError, PilotMode
from hal.pilot_math import duty_for_current
from hal.sim import SimBoard, SimConnectorSpec, SimEvSpec


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def make_sim(clock, connectors=None, **kwargs) -> SimBoard:
    return SimBoard(connectors or [SimConnectorSpec(1)], clock=clock, **kwargs)


def charging(sim: SimBoard, clock: FakeClock, amps: float, connector: int = 1):
    """Plug, offer `amps`, wait for the EV to request power, close the contactor; returns the hardware."""
    hw = sim.as_board().connectors[connector - 1]
    sim.plug(connector)
    hw.pilot.set_pwm(duty_for_current(amps))
    clock.advance(SimEvSpec().response_s)
    assert hw.pilot.read().state is CpState.C
    hw.contactor.set_closed(True)
    return hw


# --- wiring -------------------------------------------------------------------------------------------


def test_as_board_exposes_every_device(clock):
    sim = make_sim(
        clock,
        [
            SimConnectorSpec(1, max_current_a=16, phases=1),
            SimConnectorSpec(2, cable_ampacity_a=None, has_lock=False),
        ],
    )
    board = sim.as_board()
    assert isinstance(board, Board)
    assert board.simulator is sim
    assert board.rfid is not None
    first, second = board.connectors
    assert (first.connector_id, first.max_current_a, first.phases) == (1, 16, 1)
    assert first.proximity is not None and first.lock is not None and first.rcd is not None
    assert second.proximity is None  # fixed cable: no PP device
    assert second.lock is None


def test_unplugged_pilot_reads_a_at_12_volts(clock):
    hw = make_sim(clock).as_board().connectors[0]
    reading = hw.pilot.read()
    assert reading.state is CpState.A
    assert reading.high_v == 12.0
    assert hw.proximity.read_ampacity() is None
    assert hw.pilot.output.mode is PilotMode.X1


def test_plug_presents_b_with_the_resistor_model_voltage(clock):
    sim = make_sim(clock)
    hw = sim.as_board().connectors[0]
    sim.plug()
    reading = hw.pilot.read()
    assert reading.state is CpState.B
    assert reading.high_v == pytest.approx(12 * 2740 / 3740, abs=0.01)  # about 8.8 V
    assert reading.low_v == reading.high_v  # X1 is DC
    assert hw.proximity.read_ampacity() == 32.0


def test_cable_ampacity_comes_from_the_pp_resistor(clock):
    sim = make_sim(clock, [SimConnectorSpec(1, cable_ampacity_a=13)])
    sim.plug()
    assert sim.as_board().connectors[0].proximity.read_ampacity() == 13.0


# --- EV behaviour ---------------------------------------------------------------------------------------


def test_ev_requests_power_only_after_its_response_time(clock):
    sim = make_sim(clock)
    hw = sim.as_board().connectors[0]
    sim.plug()
    clock.advance(5)
    hw.pilot.set_pwm(duty_for_current(16))
    assert hw.pilot.read().state is CpState.B
    assert hw.pilot.read().low_v == -12.0  # PWM on, diode blocks the negative half
    clock.advance(0.19)
    assert hw.pilot.read().state is CpState.B
    clock.advance(0.01)
    reading = hw.pilot.read()
    assert reading.state is CpState.C
    assert reading.high_v == pytest.approx(12 * 882 / 1882, abs=0.01)  # about 5.6 V


def test_ev_stays_in_b_when_the_duty_offers_less_than_6_amps(clock):
    sim = make_sim(clock)
    hw = sim.as_board().connectors[0]
    sim.plug()
    hw.pilot.set_pwm(5.0)  # 5 % = HLC only, no basic current
    clock.advance(10)
    assert hw.pilot.read().state is CpState.B


def test_ev_opens_s2_after_x1(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    hw.pilot.set_x1()
    clock.advance(0.1)
    assert hw.pilot.read().state is CpState.C
    clock.advance(0.1)
    assert hw.pilot.read().state is CpState.B


def test_ev_opens_s2_after_state_f_and_the_reading_is_f(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    hw.pilot.set_f()
    reading = hw.pilot.read()
    assert (reading.state, reading.high_v) == (CpState.F, -12.0)
    clock.advance(0.2)
    hw.pilot.set_x1()
    assert hw.pilot.read().state is CpState.B


async def test_ev_draws_min_of_offer_and_its_own_limit_only_while_contactor_closed(clock):
    sim = make_sim(clock, ev=SimEvSpec(max_current_a=16))
    hw = sim.as_board().connectors[0]
    sim.plug()
    hw.pilot.set_pwm(duty_for_current(32))
    clock.advance(1)
    assert hw.pilot.read().state is CpState.C
    assert (await hw.meter.read()).current_a == (0.0, 0.0, 0.0)  # contactor still open
    hw.contactor.set_closed(True)
    reading = await hw.meter.read()
    assert reading.current_a == (16.0, 16.0, 16.0)
    assert reading.power_w == pytest.approx(16 * 3 * 230)
    hw.contactor.set_closed(False)
    assert (await hw.meter.read()).power_w == 0.0


async def test_ev_follows_a_lower_duty_after_its_response_time(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 32)
    assert (await hw.meter.read()).current_a[0] == 32.0
    hw.pilot.set_pwm(duty_for_current(10))
    assert (await hw.meter.read()).current_a[0] == 32.0
    clock.advance(0.2)
    assert (await hw.meter.read()).current_a[0] == 10.0


async def test_current_is_capped_by_connector_rating_and_phases(clock):
    sim = make_sim(clock, [SimConnectorSpec(1, max_current_a=20, phases=1)], ev=SimEvSpec(phases=3))
    hw = charging(sim, clock, 32)
    reading = await hw.meter.read()
    assert reading.current_a == (20.0,)
    assert reading.voltage_v == (230.0,)


async def test_single_phase_ev_on_three_phase_outlet_draws_on_l1_only(clock):
    sim = make_sim(clock, ev=SimEvSpec(phases=1))
    hw = charging(sim, clock, 16)
    reading = await hw.meter.read()
    assert reading.current_a == (16.0, 0.0, 0.0)
    assert reading.voltage_v == (230.0, 230.0, 230.0)
    assert reading.power_w == pytest.approx(16 * 230)


async def test_energy_integrates_power_over_clock_time(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    start = await hw.meter.read()
    clock.advance(10)
    end = await hw.meter.read()
    assert end.energy_wh - start.energy_wh == pytest.approx(30.67, abs=0.005)  # 16 A x 3 x 230 V x 10 s
    assert end.taken_at == clock.now


async def test_energy_register_is_monotonic_and_stops_when_contactor_opens(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    clock.advance(10)
    hw.contactor.set_closed(False)
    after_charge = (await hw.meter.read()).energy_wh
    clock.advance(100)
    assert (await hw.meter.read()).energy_wh == after_charge
    sim.unplug()
    assert (await hw.meter.read()).energy_wh == after_charge  # a meter is never rebased


async def test_full_battery_ends_charging_with_state_b(clock):
    # 1 kWh battery at 90 %: 100 Wh to go at 11.04 kW takes about 32.6 s.
    sim = make_sim(clock, ev=SimEvSpec(battery_kwh=1.0, initial_soc=0.9))
    hw = charging(sim, clock, 16)
    clock.advance(3600)
    reading = await hw.meter.read()
    assert reading.power_w == 0.0
    assert reading.energy_wh == pytest.approx(100.0)
    assert hw.pilot.read().state is CpState.B
    assert sim.snapshot()["connectors"][0]["soc"] == 1.0


def test_unplug_returns_to_a(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    sim.unplug()
    assert hw.pilot.read().state is CpState.A
    assert hw.proximity.read_ampacity() is None


# --- pinning --------------------------------------------------------------------------------------------


def test_pinned_state_ignores_the_pilot_until_auto(clock):
    sim = make_sim(clock)
    hw = sim.as_board().connectors[0]
    sim.set_ev_state("c")  # case-insensitive; pinning implies plugged
    assert hw.pilot.read().state is CpState.C
    hw.pilot.set_pwm(duty_for_current(16))
    sim.set_ev_state("B")
    clock.advance(10)
    assert hw.pilot.read().state is CpState.B
    sim.set_ev_state("auto")
    assert hw.pilot.read().state is CpState.C  # already saw the PWM while pinned


def test_pinned_d_reads_about_2_4_volts(clock):
    sim = make_sim(clock)
    sim.set_ev_state("D")
    reading = sim.as_board().connectors[0].pilot.read()
    assert reading.state is CpState.D
    assert reading.high_v == pytest.approx(2.37, abs=0.01)


def test_pinned_e_and_f(clock):
    sim = make_sim(clock)
    pilot = sim.as_board().connectors[0].pilot
    sim.set_ev_state("E")
    assert (pilot.read().state, pilot.read().high_v) == (CpState.E, 0.0)
    sim.set_ev_state("F")
    assert (pilot.read().state, pilot.read().high_v) == (CpState.F, -12.0)
    sim.set_ev_state(None)
    assert pilot.read().state is CpState.B


def test_pinning_a_unplugs(clock):
    sim = make_sim(clock)
    sim.plug()
    sim.set_ev_state("A")
    snap = sim.snapshot()["connectors"][0]
    assert (snap["plugged"], snap["ev_state"], snap["pinned"]) == (False, "A", None)


@pytest.mark.parametrize("bad", ["G", "", "charging", 3])
def test_bad_ev_state_is_rejected(clock, bad):
    with pytest.raises(ValueError, match="EV state"):
        make_sim(clock).set_ev_state(bad)


@pytest.mark.parametrize(
    "action",
    [
        lambda sim: sim.plug(2),
        lambda sim: sim.unplug(0),
        lambda sim: sim.set_ev_state("B", connector=9),
        lambda sim: sim.set_fault("meter", True, connector=2),
    ],
)
def test_unknown_connector_is_rejected(clock, action):
    with pytest.raises(ValueError, match="no connector"):
        action(make_sim(clock))


# --- faults ---------------------------------------------------------------------------------------------


async def test_meter_fault_raises_meter_error_and_the_register_keeps_counting(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    sim.set_fault("meter", True)
    with pytest.raises(MeterError, match="not answering"):
        await hw.meter.read()
    clock.advance(10)
    sim.set_fault("meter", False)
    assert (await hw.meter.read()).energy_wh == pytest.approx(30.67, abs=0.005)


async def test_weld_keeps_feedback_closed_after_open_command(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    sim.set_fault("weld", True)
    hw.contactor.set_closed(False)
    assert hw.contactor.commanded_closed is False
    assert hw.contactor.feedback_closed() is True
    assert (await hw.meter.read()).current_a[0] == 16.0  # fused contacts still carry the EV's current
    sim.set_fault("weld", False)
    assert hw.contactor.feedback_closed() is False


async def test_rcd_trip_forces_the_contactor_open_and_latches(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    sim.set_fault("rcd", True)
    assert hw.rcd.tripped() is True
    assert hw.contactor.feedback_closed() is False
    assert (await hw.meter.read()).power_w == 0.0
    assert hw.rcd.reset() is False  # residual current still present
    sim.set_fault("rcd", False)
    assert hw.rcd.tripped() is True  # latched until reset
    assert hw.rcd.reset() is True
    assert hw.rcd.tripped() is False


def test_rcd_trip_cannot_open_welded_contacts(clock):
    sim = make_sim(clock)
    hw = charging(sim, clock, 16)
    sim.set_fault("weld", True)
    sim.set_fault("rcd", True)
    assert hw.contactor.feedback_closed() is True


def test_lock_feedback_follows_the_command_unless_jammed(clock):
    sim = make_sim(clock, [SimConnectorSpec(1), SimConnectorSpec(2, cable_ampacity_a=None, has_lock=False)])
    lock = sim.as_board().connectors[0].lock
    lock.set_locked(True)
    assert lock.is_locked()
    sim.set_fault("lock", True)  # jammed locked: an unlock command does not move it
    lock.set_locked(False)
    assert lock.is_locked()
    shown = sim.snapshot()["connectors"][0]
    assert (shown["locked"], shown["lock_commanded"], shown["faults"]) == (True, False, ["lock"])
    sim.set_fault("lock", False)  # freed, it goes where it was last commanded
    assert not lock.is_locked()
    sim.set_fault("lock", True)  # jammed open: a lock command does not move it
    lock.set_locked(True)
    assert not lock.is_locked()
    with pytest.raises(ValueError, match="connector 2 has no lock"):
        sim.set_fault("lock", True, connector=2)


def test_status_indicator_shows_in_the_snapshot(clock):
    sim = make_sim(clock)
    indicator = sim.as_board().connectors[0].indicator
    assert indicator.shown is IndicatorState.OFF and sim.snapshot()["connectors"][0]["indicator"] == "off"
    indicator.indicate(IndicatorState.CHARGING)
    assert indicator.shown is IndicatorState.CHARGING
    assert sim.snapshot()["connectors"][0]["indicator"] == "charging"


def test_missing_diode_shows_in_the_pwm_reading(clock):
    sim = make_sim(clock)
    hw = sim.as_board().connectors[0]
    sim.set_fault("diode", True)
    hw.pilot.set_pwm(duty_for_current(16))
    assert hw.pilot.read().diode_ok is True  # nobody plugged: nothing loads the negative half
    sim.plug()
    reading = hw.pilot.read()
    assert reading.diode_ok is False
    assert reading.low_v == -reading.high_v
    hw.pilot.set_x1()
    assert hw.pilot.read().diode_ok is True  # no negative half to check without PWM


@pytest.mark.parametrize(("kind", "on"), [("fire", True), ("meter", "yes")])
def test_bad_fault_arguments_are_rejected(clock, kind, on):
    with pytest.raises(ValueError):
        make_sim(clock).set_fault(kind, on)


# --- RFID -----------------------------------------------------------------------------------------------


async def test_swipe_before_anyone_waits_is_kept_and_normalised(clock):
    sim = make_sim(clock)
    sim.swipe("04:a2:2b:1a")
    sim.swipe("deadbeef")
    assert sim.snapshot()["rfid_pending"] == 2
    rfid = sim.as_board().rfid
    assert await rfid.next_tag() == "04A22B1A"
    assert await rfid.next_tag() == "DEADBEEF"
    assert sim.snapshot()["rfid_pending"] == 0


async def test_swipe_wakes_a_waiting_reader(clock):
    sim = make_sim(clock)
    waiting = asyncio.create_task(sim.as_board().rfid.next_tag())
    await asyncio.sleep(0)
    sim.swipe("01 02 03 04")
    assert await asyncio.wait_for(waiting, 1) == "01020304"


async def test_cancelled_reader_does_not_swallow_the_next_swipe(clock):
    sim = make_sim(clock)
    rfid = sim.as_board().rfid
    waiting = asyncio.create_task(rfid.next_tag())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    sim.swipe("AB")
    assert await asyncio.wait_for(rfid.next_tag(), 1) == "AB"


@pytest.mark.parametrize("garbage", ["", "xyz", "12:G4", "   "])
def test_swipe_rejects_non_hex(clock, garbage):
    sim = make_sim(clock)
    with pytest.raises(ValueError, match="hex"):
        sim.swipe(garbage)
    assert sim.snapshot()["rfid_pending"] == 0


# --- snapshot and persistence ---------------------------------------------------------------------------


def test_snapshot_is_json_and_tells_what_is_happening(clock):
    sim = make_sim(clock)
    charging(sim, clock, 16)
    sim.set_fault("diode", True)
    clock.advance(10)
    snap = json.loads(json.dumps(sim.snapshot()))
    conn = snap["connectors"][0]
    assert conn["plugged"] is True
    assert conn["ev_state"] == "C"
    assert conn["pinned"] is None
    assert conn["pilot_mode"] == "PWM"
    assert conn["duty"] == pytest.approx(26.67, abs=0.005)
    assert conn["contactor_commanded"] is True
    assert conn["contactor_feedback"] is True
    assert conn["current_a"] == [16.0, 16.0, 16.0]
    assert conn["energy_wh"] == pytest.approx(30.67, abs=0.005)
    assert conn["faults"] == ["diode"]
    assert conn["soc"] > 0.3


async def test_state_file_keeps_ev_and_register_across_restart(clock, tmp_path):
    state = tmp_path / "state" / "sim-board.json"
    sim = make_sim(clock, state_file=state)
    hw = charging(sim, clock, 16)
    clock.advance(10)
    energy = (await hw.meter.read()).energy_wh
    sim.set_fault("weld", True)  # forces a save of the latest register too
    assert energy == pytest.approx(30.67, abs=0.005)

    restarted = make_sim(clock, state_file=state)
    hw2 = restarted.as_board().connectors[0]
    snap = restarted.snapshot()["connectors"][0]
    assert snap["plugged"] is True
    assert snap["faults"] == ["weld"]
    assert snap["contactor_commanded"] is False  # never restored: the agent decides again
    assert snap["soc"] == pytest.approx(sim.snapshot()["connectors"][0]["soc"])
    assert (await hw2.meter.read()).energy_wh == pytest.approx(energy)
    assert hw2.pilot.read().state is CpState.B


async def test_register_is_saved_before_a_reading_leaves_the_meter(clock, tmp_path):
    """What the agent has read must survive a kill of the agent (a real meter keeps its register), and
    between reads the register is saved at most once a second."""
    state = tmp_path / "sim-board.json"
    sim = make_sim(clock, state_file=state)
    hw = charging(sim, clock, 16)

    def saved_energy():
        return json.loads(state.read_text())["connectors"]["1"]["energy_wh"]

    clock.advance(0.5)
    sim.advance()
    assert saved_energy() == 0.0  # less than a second since the plug-in save, and nobody read the meter
    reading = await hw.meter.read()
    assert saved_energy() == reading.energy_wh == pytest.approx(11040 * 0.5 / 3600)
    clock.advance(1.0)
    sim.advance()
    assert saved_energy() == pytest.approx(11040 * 1.5 / 3600)
    assert not (tmp_path / "sim-board.json.tmp").exists()


def test_corrupt_state_file_is_ignored_with_a_warning(clock, tmp_path, caplog):
    state = tmp_path / "sim-board.json"
    state.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        sim = make_sim(clock, state_file=state)
    assert "corrupt" in caplog.text
    snap = sim.snapshot()["connectors"][0]
    assert (snap["plugged"], snap["energy_wh"]) == (False, 0.0)


def test_state_file_with_wrong_values_is_ignored(clock, tmp_path, caplog):
    state = tmp_path / "sim-board.json"
    state.write_text(
        json.dumps(
            {
                "version": 1,
                "connectors": {
                    "1": {"plugged": True, "pinned": None, "energy_wh": -5, "soc": 0.5, "faults": []}
                },
            }
        )
    )
    with caplog.at_level(logging.WARNING):
        sim = make_sim(clock, state_file=state)
    assert "corrupt" in caplog.text
    assert sim.snapshot()["connectors"][0]["plugged"] is False


async def test_board_close_opens_contactors_and_flushes_the_register(clock, tmp_path):
    state = tmp_path / "sim-board.json"
    sim = make_sim(clock, state_file=state)
    hw = charging(sim, clock, 16)
    clock.advance(0.5)
    await sim.as_board().close()
    assert hw.contactor.feedback_closed() is False
    assert json.loads(state.read_text())["connectors"]["1"]["energy_wh"] == pytest.approx(11040 * 0.5 / 3600)


@pytest.mark.parametrize(
    "connectors",
    [
        [],
        [SimConnectorSpec(1), SimConnectorSpec(1)],
        [SimConnectorSpec(1, phases=2)],
        [SimConnectorSpec(1, cable_ampacity_a=16)],
    ],
)
def test_bad_connector_specs_are_rejected(clock, connectors):
    with pytest.raises(ValueError):
        SimBoard(connectors, clock=clock)
