"""Regression tests for the OCPP 1.6 client defects found when the station was attacked (issue 9, part C):
answers the station cannot store, card ids that cannot be sent, TriggerMessage floods, log amplification
and the 1.6 conformance defects a peer's test suite found. End-to-end ones run the real agent process
against the bundled CSMS on 127.0.0.1 (tests/agent_harness.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from agent.core import smart_charging as sc
from agent.core.authorization import (
    AuthorizationStatus,
    AuthSettings,
    Source,
    TokenInfo,
    decide,
    plan_send_local_list,
    valid_id_token,
)
from agent.ocpp.v16.smart_charging import parse_profile
from agent.ocpp.v16.vocabulary import local_list_entries, token_info
from agent.station.auth_store import AuthStore
from agent.station.journal import Journal
from hil.csms import LocalCsms
from tests.agent_harness import (
    STATION_ID,
    TAG_OK,
    calls_since,
    charge,
    online,
    plugged,
    registered,
    wait_call,
)
from tests.conftest import TAGS

LONG_CARD = "0123456789ABCDEF012345"  # 22 characters: more than IdToken's 20
ALLOW_UNKNOWN = AuthSettings(local_list_enabled=True, cache_enabled=True, local_authorize_offline=True,
                             local_pre_authorize=False, allow_offline_unknown=True)
NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


async def own_csms(tmp_path, events: list[str] | None = None, **kwargs) -> LocalCsms:
    server = LocalCsms(authorized_tags=TAGS, boot_interval=60, record_path=tmp_path / "csms.jsonl",
                       echo=events.append if events is not None else None, **kwargs)
    await server.start()
    return server


# ---- C2: a transactionId the station cannot store -------------------------------------------------------


async def test_a_transaction_id_beyond_64_bits_counts_as_failed_attempts_then_the_stop_goes_with_minus_one(
        tmp_path, run_agent):
    """StartTransaction.conf with transactionId 2**64 (the schema allows any integer) is a refused answer,
    counted like a CALLERROR: sent TransactionMessageAttempts (3) times on the same connection, then dropped,
    and the StopTransaction goes out with transactionId -1 (errata 3.18). It used to end the session on an
    OverflowError: endless reconnects, StartTransaction sent again and again, no StopTransaction."""
    events: list[str] = []
    csms = await own_csms(tmp_path, events, first_transaction_id=2**64)
    try:
        agent = await online(run_agent, csms)
        connects = sum(" connected from " in line for line in events)
        await charge(agent, csms, TAG_OK)
        await csms.wait_until(lambda: len(csms.calls("StartTransaction")) >= 3, timeout=20)
        await agent.cmd("sim.unplug")
        stop = await wait_call(csms, "StopTransaction", timeout=20)
        assert stop.payload["transactionId"] == -1
        assert len(csms.calls("StartTransaction")) == 3
        assert csms.is_connected(STATION_ID)
        assert sum(" connected from " in line for line in events) == connects
        assert "unusable answer" in agent.log_path.read_text()
    finally:
        await csms.stop()


# ---- C3: card ids that cannot be sent ------------------------------------------------------------------


@pytest.mark.parametrize("online_now", [True, False])
def test_a_card_id_that_is_no_id_token_is_refused_locally_online_and_offline(online_now):
    """An id of 22 characters (IdToken has at most 20) cannot be sent in Authorize: refused by the local
    rules, never asked of the CSMS, and AllowOfflineTxForUnknownId does not let it charge."""
    for card in (LONG_CARD, "CARD\u00e9", "CARD\ud800", ""):
        decision = decide(card, online=online_now, now=NOW, list_entry=None, cache_entry=None,
                          settings=ALLOW_UNKNOWN)
        assert not decision.accepted and not decision.ask_csms and decision.source is Source.INVALID
    assert decide("04A1B2C3D4E5F6A7B8C9", online=online_now, now=NOW, list_entry=None, cache_entry=None,
                  settings=ALLOW_UNKNOWN).source is not Source.INVALID  # 20 characters are fine
    assert valid_id_token("x" * 20) and not valid_id_token("x" * 21)


async def test_a_card_id_longer_than_an_id_token_is_refused_online_with_allow_offline_tx_for_unknown_id(
        csms, run_agent):
    """Online, AllowOfflineTxForUnknownId=true: the 22-character card is refused (no Authorize, no
    StartTransaction); it used to fail the schema, fall back to the offline rule and charge."""
    agent = await online(run_agent, csms, ocpp_keys={"AllowOfflineTxForUnknownId": "true"})
    await plugged(agent)
    mark = len(csms.frames)
    await agent.cmd("sim.swipe", tag=LONG_CARD)
    await agent.cmd("sim.swipe", tag=TAG_OK)  # decided after the long one
    await agent.wait_connector(lambda c: c["status"] == "Charging", what="Charging with the valid card")
    start = await wait_call(csms, "StartTransaction", mark)
    assert start.payload["idTag"] == TAG_OK
    assert [f.payload["idTag"] for f in calls_since(csms, "Authorize", mark)] == [TAG_OK]
    assert all(f.payload["idTag"] == TAG_OK for f in calls_since(csms, "StartTransaction", mark))


def test_an_id_tag_info_with_a_lone_surrogate_parent_is_stored_without_it(tmp_path):
    """An Authorize answer whose parentIdTag is "\\ud800" (valid JSON, maxLength 20) cannot be stored in
    SQLite: the parent is dropped instead of killing the authorization task."""
    info = token_info({"status": "Accepted", "parentIdTag": "\ud800"})
    assert info.status is AuthorizationStatus.ACCEPTED and info.parent_id_token is None
    journal = Journal(tmp_path / "journal.sqlite")
    store = AuthStore(journal, wall_clock=lambda: NOW)
    store.remember(TAG_OK, info)
    assert store.cached(TAG_OK) == TokenInfo(AuthorizationStatus.ACCEPTED, None, None)
    assert token_info({"status": "Accepted", "parentIdTag": "PARENT-1"}).parent_id_token == "PARENT-1"
    journal.close()


async def test_a_card_whose_csms_answer_has_a_lone_surrogate_parent_still_charges(tmp_path, run_agent):
    csms = await own_csms(tmp_path, parent_id_tags={TAG_OK: "\ud800"})
    try:
        agent = await online(run_agent, csms)
        status = await charge(agent, csms, TAG_OK)
        assert status["status"] == "Charging"
        assert (await wait_call(csms, "StartTransaction")).payload["idTag"] == TAG_OK
    finally:
        await csms.stop()


# ---- C7: TriggerMessage floods -------------------------------------------------------------------------


async def test_repeated_triggers_queue_one_message_per_subject_and_a_card_overtakes_them(csms, run_agent):
    """A CSMS that triggers StatusNotification 40 times and does not answer them: one per connector waits,
    the rest add nothing (no unbounded queue), and a card's Authorize goes before the waiting statuses."""
    agent = await online(run_agent, csms, ocpp_keys={"MessageTimeout": 2})
    await plugged(agent)
    csms.unanswered_actions.add("StatusNotification")
    mark = len(csms.frames)
    for _ in range(40):
        assert (await csms.call(STATION_ID, "TriggerMessage", {"requestedMessage": "StatusNotification",
                                                               "connectorId": 1})) == {"status": "Accepted"}
    await agent.cmd("sim.swipe", tag=TAG_OK)
    authorize = await wait_call(csms, "Authorize", mark, timeout=15)
    statuses_before = [f for f in calls_since(csms, "StatusNotification", mark) if f.index < authorize.index]
    assert len(statuses_before) <= 2  # the one in flight, at most one more
    csms.unanswered_actions.clear()
    await agent.wait_connector(lambda c: c["status"] == "Charging", what="Charging")
    # everything queued before it has gone out once a heartbeat triggered now is answered
    beat = len(csms.frames)
    assert (await csms.call(STATION_ID, "TriggerMessage", {"requestedMessage": "Heartbeat"})) == {
        "status": "Accepted"}
    await wait_call(csms, "Heartbeat", beat, timeout=15)
    triggered = [f for f in calls_since(csms, "StatusNotification", mark) if f.index < beat]
    assert len(triggered) <= 4  # 40 triggers; plus the Charging status of the session


async def test_authorize_unanswered_falls_back_to_the_offline_rules_before_the_message_timeout(csms, run_agent):
    """A CSMS that never answers Authorize (MessageTimeout 60 s): after the Authorize deadline (a few
    seconds) the offline rules decide; with AllowOfflineTxForUnknownId the EV charges."""
    agent = await online(run_agent, csms, ocpp_keys={"MessageTimeout": 60, "AllowOfflineTxForUnknownId": "true"})
    await plugged(agent)
    csms.unanswered_actions.add("Authorize")
    await agent.cmd("sim.swipe", tag=TAG_OK)
    await agent.wait_connector(lambda c: c["status"] == "Charging", timeout=30, what="Charging by the offline rule")


# ---- C9: log amplification -----------------------------------------------------------------------------


def _hostile_frames(count: int, size: int) -> list[str]:
    filler = "A" * size
    kinds = [
        lambda i: f'[2,"m{i}","Reset",{{"type":"{filler}"}}]',  # schema violation quoting the payload
        lambda i: f'[2,"m{i}","ChangeConfiguration",{{"key":"{filler}","value":"1"}}]',
        lambda i: f'[3,"no-such-call-{i}",{{"x":"{filler}"}}]',  # an answer to nothing
        lambda i: f'[4,"no-such-call-{i}","InternalError","{filler}",{{}}]',
        lambda i: "{" + filler,  # not JSON
        lambda i: f'[2,"m{i}","{filler[:60]}",{{}}]',  # unknown action
    ]
    return [kinds[i % len(kinds)](i) for i in range(count)]


async def test_a_storm_of_hostile_frames_writes_a_bounded_log(csms, run_agent):
    """3,000 hostile frames of 10 kB each: the log gets bounded excerpts and rate-limited warnings (it
    used to write every frame whole, 420 MB for 100,000); the session survives and still answers."""
    agent = await online(run_agent, csms)
    agent.cleanup()  # restart at the production log level: info
    agent.start(log_level="info")
    await agent.ready()
    await registered(agent)
    before = agent.log_path.stat().st_size
    frames = _hostile_frames(3000, 10_000)
    for frame in frames:
        await csms.send_raw(STATION_ID, frame)
    answer = await csms.call(STATION_ID, "GetConfiguration", {"key": ["HeartbeatInterval"]}, timeout=120)
    assert answer["configurationKey"][0]["key"] == "HeartbeatInterval"
    written = agent.log_path.read_text()[before:]
    longest = max((len(line) for line in written.splitlines()), default=0)
    assert longest < 2500, longest
    assert len(written) < 300_000, len(written)  # 30 MB of frames in
    assert "suppressed" in written or "are suppressed" in written


# ---- C10: 1.6 conformance ------------------------------------------------------------------------------


async def test_a_new_heartbeat_interval_applies_at_once(csms, run_agent):
    """ChangeConfiguration HeartbeatInterval 60 -> 1: the next Heartbeat comes after about a second, not
    after the rest of the old 60 s."""
    agent = await online(run_agent, csms)  # HeartbeatInterval 60
    mark = len(csms.frames)
    assert await csms.call(STATION_ID, "ChangeConfiguration", {"key": "HeartbeatInterval", "value": "1"}) == {
        "status": "Accepted"}
    await wait_call(csms, "Heartbeat", mark, timeout=20)
    assert agent.proc.poll() is None


def test_composite_schedule_starts_at_the_request_without_a_zero_length_first_period():
    """§5.7: the schedule starts when the request is received. A profile that began 0.4 s into the second
    of a request made 0.6 s into it: one period from 0, scheduleStart with the request's milliseconds (it
    used to start at the whole second, with a zero-length unlimited first period)."""
    started = NOW + timedelta(seconds=0.4)
    profile = parse_profile(1, {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": started.isoformat(),
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10},
                                                        {"startPeriod": 60, "limit": 8}]}})
    request = NOW + timedelta(seconds=0.6)
    schedule = sc.composite([profile], 1, request, 300, "A", sc.Electrical(3))
    wire = schedule.to_ocpp(16.0)
    assert wire["startSchedule"] == "2025-03-10T12:00:00.600Z"
    # the change 60 s after the profile's start is 59.8 s after the request: the nearest whole second
    assert [(p["startPeriod"], p["limit"]) for p in wire["chargingSchedulePeriod"]] == [(0, 10), (60, 8)]


def test_a_full_local_list_that_is_empty_has_version_zero(tmp_path):
    """§5.10: GetLocalListVersion answers 0 for an empty list, also after a Full SendLocalList of version 7
    with no entries."""
    journal = Journal(tmp_path / "journal.sqlite")
    store = AuthStore(journal, wall_clock=lambda: NOW)

    def send(version: int, entries: list[dict]) -> None:
        change = plan_send_local_list(enabled=True, current_version=store.list_version(),
                                      current_size=store.list_size(), list_version=version, update_type="Full",
                                      entries=local_list_entries(entries), max_length=100, send_max_length=100)
        store.apply_list_change(change)

    send(5, [{"idTag": TAG_OK, "idTagInfo": {"status": "Accepted"}}])
    assert store.list_version() == 5
    send(7, [])
    assert store.list_version() == 0
    journal.close()


async def test_get_local_list_version_after_an_empty_full_list_is_zero(csms, run_agent):
    await online(run_agent, csms)
    entry = {"idTag": TAG_OK, "idTagInfo": {"status": "Accepted"}}
    assert await csms.call(STATION_ID, "SendLocalList", {"listVersion": 3, "updateType": "Full",
                                                         "localAuthorizationList": [entry]}) == {"status": "Accepted"}
    assert await csms.call(STATION_ID, "GetLocalListVersion", {}) == {"listVersion": 3}
    assert await csms.call(STATION_ID, "SendLocalList", {"listVersion": 4, "updateType": "Full",
                                                         "localAuthorizationList": []}) == {"status": "Accepted"}
    assert await csms.call(STATION_ID, "GetLocalListVersion", {}) == {"listVersion": 0}


async def test_boot_notification_carries_the_serial_in_charge_box_serial_number_too(csms, run_agent):
    """chargeBoxSerialNumber is deprecated in 1.6, but many central systems read only that one."""
    agent = await online(run_agent, csms)
    assert await agent.terminate() == 0
    text = agent.config.read_text()
    agent.config.write_text(text.replace("[station]\n", '[station]\nserial = "SN-4711"\n', 1))
    mark = len(csms.frames)
    agent.start()
    boot = (await wait_call(csms, "BootNotification", mark, timeout=20)).payload
    assert boot["chargePointSerialNumber"] == "SN-4711" and boot["chargeBoxSerialNumber"] == "SN-4711"


async def _event_queued_before_a_start(csms, run_agent):
    """An agent whose journal holds a security event (STARTUP) and, behind it, a StartTransaction made
    offline; the CSMS then lets it connect."""
    agent = await online(run_agent, csms, ocpp_keys={"AllowOfflineTxForUnknownId": "true", "MessageTimeout": 3})
    # the CSMS uses the security extension: from now on security events are sent to it
    await csms.call(STATION_ID, "GetInstalledCertificateIds", {"certificateType": "CentralSystemRootCertificate"})
    assert await agent.terminate() == 0
    csms.refuse_connections = True
    agent.start()
    await agent.ready()
    await charge(agent, csms, TAG_OK)  # offline: StartTransaction queued behind the STARTUP event
    mark = len(csms.frames)
    csms.refuse_connections = False
    return agent, mark


async def test_a_security_event_the_csms_refuses_is_dropped_at_once_and_the_start_follows(csms, run_agent):
    """A production CSMS without the security extension answers SecurityEventNotification with CALLERROR
    InternalError: the event is dropped after that one answer (it was retried like a transaction message,
    holding the StartTransaction behind it for minutes)."""
    csms.fail_next("SecurityEventNotification", count=50, error_code="InternalError")
    agent, mark = await _event_queued_before_a_start(csms, run_agent)
    start = await wait_call(csms, "StartTransaction", mark, timeout=20)
    await agent.cmd("sim.unplug")
    stop = await wait_call(csms, "StopTransaction", mark, timeout=20)
    events = calls_since(csms, "SecurityEventNotification", mark)
    assert len(events) == 1 and events[0].index < start.index < stop.index


async def test_an_unanswered_security_event_waits_behind_the_transaction_messages(csms, run_agent):
    """A SecurityEventNotification the CSMS does not answer: after its timeout the StartTransaction queued
    behind it goes first; the event is sent again afterwards."""
    csms.unanswered_actions.add("SecurityEventNotification")
    agent, mark = await _event_queued_before_a_start(csms, run_agent)
    start = await wait_call(csms, "StartTransaction", mark, timeout=20)
    first = calls_since(csms, "SecurityEventNotification", mark)
    assert len(first) == 1 and first[0].index < start.index  # sent once, then the transaction went on
    csms.unanswered_actions.clear()
    again = await wait_call(csms, "SecurityEventNotification", start.index, timeout=20)
    assert json.dumps(again.payload, sort_keys=True) == json.dumps(first[0].payload, sort_keys=True)
    assert agent.proc.poll() is None


def test_repeated_warnings_are_rate_limited_with_one_summary_and_long_messages_cut():
    """The log guard: at most 20 of one kind of warning per minute, then one "suppressed K similar" line;
    a 440 kB message becomes one bounded line that says how long it was; debug lines are only cut."""
    import io
    import logging

    from agent.logs import FloodGuard

    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(FloodGuard(handler, clock=lambda: now[0]))
    logger = logging.getLogger("test.flood")
    logger.propagate, logger.level = False, logging.DEBUG
    logger.addHandler(handler)
    try:
        for i in range(100):
            logger.warning("rejected frame %d", i)
        for i in range(30):
            logger.debug("< frame %d", i)
        logger.warning("huge: %s", "x" * 440_000)
        now[0] = 61.0
        logger.warning("rejected frame %d", 100)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert sum(line.startswith("rejected frame") for line in lines) == 21
    assert sum(line.startswith("< frame") for line in lines) == 30
    assert any("suppressed 80 similar messages" in line for line in lines)
    huge = next(line for line in lines if line.startswith("huge"))
    assert len(huge) < 2500 and "440006 chars" in huge
