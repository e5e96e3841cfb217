"""The authorizer (agent.station.authorizer) on a real Station with the sim board and a real SQLite journal:
offline it answers from the local list the CSMS sent; online it asks the CSMS and caches the answer; an
agent shutting down takes no card."""

from __future__ import annotations

from agent.core.authorization import AuthorizationStatus, TokenInfo
from agent.station.csms_link import LocalListEntry
from tests.agent_harness import TAG_BLOCKED, TAG_OK, TAG_UNKNOWN
from tests.station_bench import RecordingCsmsLink, sim_station, steps


async def present(station, tag: str) -> None:
    assert station.present_id_token(tag) == 1
    await steps(station)  # RequestAuthorization, the decision, the AuthorizationResult


async def test_offline_the_local_list_decides(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    rt = station.connectors[1]
    status = station.csms_port.send_local_list(1, "Full", [
        LocalListEntry(TAG_OK, TokenInfo(AuthorizationStatus.ACCEPTED)), LocalListEntry(TAG_BLOCKED, TokenInfo(AuthorizationStatus.BLOCKED))])
    assert status == "Accepted" and station.csms_port.local_list_version() == 1
    board.simulator.plug(1)
    await steps(station, 5)

    await present(station, TAG_BLOCKED)
    assert not rt.controller.transaction_active  # Blocked on the list: refused
    await present(station, TAG_UNKNOWN)
    assert not rt.controller.transaction_active  # not on the list, AllowOfflineTxForUnknownId false
    await present(station, TAG_OK)
    assert rt.controller.transaction_active and rt.controller.view().id_token == TAG_OK
    await board.close()


async def test_online_the_csms_decides_and_its_answer_is_cached(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    csms = station.ocpp
    csms.online = True
    csms.answers[TAG_OK] = TokenInfo(AuthorizationStatus.ACCEPTED)
    board.simulator.plug(1)
    await steps(station, 5)
    await present(station, TAG_OK)
    assert station.connectors[1].controller.transaction_active
    assert station.authorizer.store.cached(TAG_OK).status is AuthorizationStatus.ACCEPTED

    decision = station.authorizer.local_decision(TAG_OK, online=False)  # the CSMS is gone: the cache answers
    assert decision.accepted and decision.source.value == "cache"
    assert station.csms_port.clear_cache() == "Accepted"
    assert not station.authorizer.local_decision(TAG_OK, online=False).accepted
    await board.close()


async def test_a_differential_update_must_raise_the_version(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    port = station.csms_port
    assert port.send_local_list(3, "Full", [LocalListEntry(TAG_OK, TokenInfo(AuthorizationStatus.ACCEPTED))]) == "Accepted"
    assert port.send_local_list(3, "Differential", [LocalListEntry(TAG_OK, None)]) == "VersionMismatch"
    assert port.send_local_list(4, "Differential", [LocalListEntry(TAG_OK, None)]) == "Accepted"
    assert station.authorizer.store.listed(TAG_OK) is None
    await board.close()


async def test_no_card_is_taken_while_the_agent_shuts_down(tmp_path):
    station, board = await sim_station(tmp_path, csms=RecordingCsmsLink)
    board.simulator.plug(1)
    await steps(station, 5)
    station.closing = True
    assert station.present_id_token(TAG_OK) is None
    assert not station.csms_port.remote_start(1, TAG_OK)
    await board.close()
