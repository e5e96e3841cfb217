"""A journal failure while the station carries out a controller's commands (saving charging profiles at the
start or the end of a transaction) raises a storage fault in the same connector. The fault must be decided
after the command list, not inside it, and must win: no PWM and no closed contactor left on the hardware
behind a controller that believes them off, and the last StatusNotification says Faulted."""

from __future__ import annotations

from agent.core.controller import Tick, TokenPresented
from agent.station.journal import JournalError
from tests.agent_harness import TAG_OK
from tests.station_bench import authorize, sim_station, steps

TX_PROFILE = {"chargingProfileId": 7, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
              "chargingProfileKind": "Relative",
              "chargingSchedule": {"chargingRateUnit": "A",
                                   "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}}


async def test_storage_fault_at_transaction_start_leaves_no_pwm_and_no_closed_contactor(tmp_path):
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    await steps(station, 3)
    board.simulator.set_ev_state("C")  # an EV that asks for power as soon as it is plugged
    await steps(station, 3)
    # a RemoteStartTransaction's TxProfile waits for its transaction; installing it fails (disk gone)
    assert station.charging_limits.accept_remote_start_profile(rt, TX_PROFILE)

    def broken_save(profiles):
        raise JournalError("disk I/O error")

    station.charging_limits._store.save = broken_save
    authorize(station, rt)
    await steps(station, 40)
    view = rt.controller.view()
    hw = board.simulator.snapshot()["connectors"][0]
    assert "storage" in view.faults
    # the controller believes it opened the contactor and stopped the PWM; the hardware must agree
    assert hw["pilot_mode"] == view.pilot_mode.value, "pilot hardware differs from the controller"
    assert not hw["contactor_commanded"], "contactor CLOSED on the hardware with a storage fault active"
    await board.close()


async def test_storage_fault_at_transaction_stop_is_the_last_status_reported(tmp_path):
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    sent = []
    station.ocpp.send_status = lambda cid, status, *a, **k: sent.append(status)
    board.simulator.plug(1)
    await steps(station, 5)
    authorize(station, rt)
    await steps(station, 40)
    assert rt.controller.transaction_active
    assert station.csms_port.set_charging_profile(1, TX_PROFILE) == "Accepted"

    def broken_save(profiles):
        raise JournalError("disk I/O error")

    station.charging_limits._store.save = broken_save
    board.simulator.set_ev_state("B")  # EV stops drawing, then the driver stops the session locally
    await steps(station, 5)
    station.channel.dispatch(rt, TokenPresented(TAG_OK))  # stop -> TxProfile cleanup -> JournalError -> storage fault
    await steps(station, 5)
    assert rt.controller.view().status.value == "faulted"
    assert sent[-1] == "faulted", f"last StatusNotification {sent[-1]!r} while the connector is Faulted"
    await board.close()


async def test_energy_withheld_for_a_newer_event_is_granted_when_that_event_changes_nothing(tmp_path):
    """The other side of the rule: a newer event that leaves the decision as it was (here a Tick raised while
    StartTransaction is carried out) does not cost the EV its energy: the PWM and the closed contactor that
    waited for it are carried out right after, and hardware and controller agree."""
    station, board = await sim_station(tmp_path)
    rt = station.connectors[1]
    await steps(station, 3)
    board.simulator.set_ev_state("C")
    await steps(station, 3)
    started = station.charging_limits.transaction_started

    def started_with_a_reentrant_event(runtime):
        started(runtime)
        station.channel.dispatch(runtime, Tick())

    station.charging_limits.transaction_started = started_with_a_reentrant_event
    authorize(station, rt)
    await steps(station, 10)
    view = rt.controller.view()
    hw = board.simulator.snapshot()["connectors"][0]
    assert view.transaction_active and view.contactor_closed and view.pilot_mode.value == "PWM"
    assert hw["pilot_mode"] == "PWM" and hw["contactor_commanded"]
    await board.close()

