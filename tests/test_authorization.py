"""Local authorization rules (OCPP 1.6 §3.5): the cache, the Local Authorization List, offline decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.authorization import (
    AuthorizationStatus,
    AuthSettings,
    ListUpdate,
    Source,
    TokenInfo,
    cache_evictions,
    decide,
    plan_send_local_list,
)
from agent.ocpp.v16.vocabulary import local_list_entries
from agent.station.auth_store import AuthStore
from agent.station.journal import Journal

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ALL_ON = AuthSettings(local_list_enabled=True, cache_enabled=True, local_authorize_offline=True,
                      local_pre_authorize=False, allow_offline_unknown=False)
ACCEPTED = TokenInfo(AuthorizationStatus.ACCEPTED)
BLOCKED = TokenInfo(AuthorizationStatus.BLOCKED)
EXPIRED = TokenInfo(AuthorizationStatus.ACCEPTED, expiry=NOW - timedelta(minutes=1))


def run(online=False, listed=None, cached=None, **changes):
    settings = AuthSettings(**{**ALL_ON.__dict__, **changes})
    return decide("T", online=online, now=NOW, list_entry=listed, cache_entry=cached, settings=settings)


def test_online_asks_the_csms_unless_pre_authorized_locally():
    assert run(online=True, cached=ACCEPTED).ask_csms
    pre = run(online=True, cached=ACCEPTED, local_pre_authorize=True)
    assert pre.accepted and not pre.ask_csms and pre.source is Source.CACHE
    assert run(online=True, cached=BLOCKED, local_pre_authorize=True).ask_csms  # not-valid ids are re-asked
    assert run(online=True, cached=EXPIRED, local_pre_authorize=True).ask_csms


def test_offline_uses_list_then_cache():
    assert run(cached=ACCEPTED).accepted
    assert not run(cached=ACCEPTED, local_authorize_offline=False).accepted
    listed = run(listed=BLOCKED, cached=ACCEPTED)
    assert not listed.accepted and listed.source is Source.LOCAL_LIST  # the list wins
    assert not run(cached=EXPIRED).accepted
    assert run(listed=ACCEPTED, cached=None, cache_enabled=False).accepted
    assert not run(cached=ACCEPTED, cache_enabled=False).accepted


def test_unknown_ids_offline_only_when_allowed_and_never_known_bad_ones():
    assert not run().accepted
    assert run(allow_offline_unknown=True).source is Source.UNKNOWN_OFFLINE
    assert not run(allow_offline_unknown=True, cached=BLOCKED).accepted
    assert not run(allow_offline_unknown=True, cached=EXPIRED).accepted  # expired through time: refused
    assert not run(allow_offline_unknown=True, listed=TokenInfo(AuthorizationStatus.INVALID)).accepted


def test_parent_id_tag_comes_with_the_decision():
    assert run(cached=TokenInfo(AuthorizationStatus.ACCEPTED, parent_id_token="FLEET")).parent_id_token == "FLEET"


def test_cache_evicts_invalid_entries_first_then_the_oldest():
    entries = [("OLD", ACCEPTED, 1.0), ("BAD", BLOCKED, 5.0), ("NEW", ACCEPTED, 9.0)]
    assert cache_evictions(entries, max_entries=3, now=NOW) == ["BAD"]
    assert cache_evictions(entries, max_entries=2, now=NOW) == ["BAD", "OLD"]
    assert cache_evictions(entries, max_entries=4, now=NOW) == []


def plan(**kw):
    args = dict(enabled=True, current_version=3, current_size=2, list_version=4, update_type="Differential",
                entries=[], max_length=5, send_max_length=3)
    kw["entries"] = local_list_entries(kw.get("entries", []))  # as the OCPP 1.6 adapter reads SendLocalList
    return plan_send_local_list(**{**args, **kw})


def test_send_local_list_rules():
    assert plan(enabled=False).status is ListUpdate.NOT_SUPPORTED
    assert plan(list_version=3).status is ListUpdate.VERSION_MISMATCH
    assert plan(list_version=2, update_type="Full").status is ListUpdate.ACCEPTED  # a full list may go back
    assert plan(entries=[{"idTag": f"T{i}", "idTagInfo": {"status": "Accepted"}} for i in range(4)]).status \
        is ListUpdate.FAILED  # more than SendLocalListMaxLength
    too_big = [{"idTag": f"T{i}", "idTagInfo": {"status": "Accepted"}} for i in range(3)]
    assert plan(entries=too_big, current_size=3).status is ListUpdate.FAILED  # over LocalAuthListMaxLength
    assert plan(update_type="Full", entries=[{"idTag": "A"}]).status is ListUpdate.FAILED
    change = plan(entries=[{"idTag": "A", "idTagInfo": {"status": "Blocked", "parentIdTag": "P"}}, {"idTag": "B"}])
    assert change.status is ListUpdate.ACCEPTED and change.removals == ("B",)
    assert change.upserts == (("A", TokenInfo(AuthorizationStatus.BLOCKED, None, "P")),)


def test_store_persists_cache_and_list_and_keeps_list_ids_out_of_the_cache(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    store = AuthStore(journal, cache_max_entries=2, wall_clock=lambda: NOW)
    store.remember("C1", TokenInfo(AuthorizationStatus.ACCEPTED, NOW + timedelta(days=1), "P"))
    store.remember("C2", BLOCKED)
    store.remember("C3", ACCEPTED)  # evicts the blocked one
    assert store.cached("C2") is None and store.cached("C1").parent_id_token == "P"
    store.apply_list_change(plan(update_type="Full", list_version=7,
                                 entries=[{"idTag": "C1", "idTagInfo": {"status": "Accepted"}}]))
    assert store.cached("C1") is None, "a listed id leaves the cache"
    store.remember("C1", BLOCKED)
    assert store.cached("C1") is None, "listed ids are never cached"
    journal.close()

    reopened = AuthStore(Journal(tmp_path / "j.sqlite"), wall_clock=lambda: NOW)
    assert reopened.list_version() == 7 and reopened.listed("C1") == ACCEPTED
    assert reopened.cached("C3") == ACCEPTED
    assert reopened.cached("C1") is None
    reopened.clear_cache()
    assert reopened.cache_size() == 0 and reopened.list_size() == 1
