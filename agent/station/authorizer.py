"""The authorizer: who may charge. A presented card is routed to the connector that can take it; the
decision comes from the local list and the Authorization Cache (agent.core.authorization.decide) and, when
those rules say so and the CSMS can be asked, from the CSMS; the answer goes to the connector's controller.
It also keeps the cache and the local list the CSMS manages (ClearCache, SendLocalList)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from agent.core import controller as ctl
from agent.core.authorization import (
    AuthSettings,
    Decision,
    ListUpdate,
    Source,
    TokenInfo,
    decide,
    plan_send_local_list,
)
from agent.core.clock import utc_now
from agent.ocpp.v16.vocabulary import authorization_status
from agent.station.auth_store import AuthStore
from agent.station.connector import ConnectorRuntime
from agent.station.csms_link import CsmsLink, LocalListEntry
from agent.station.settings import StationSettings

log = logging.getLogger("evse.station")


class Authorizer:
    log: logging.Logger | logging.LoggerAdapter = log  # the station hands it its own (agent.logs)

    def __init__(self, connectors: dict[int, ConnectorRuntime], settings: StationSettings,
                 store: AuthStore, dispatch: Callable[[ConnectorRuntime, ctl.Event], None],
                 csms: Callable[[], CsmsLink], closing: Callable[[], bool],
                 wall_clock: Callable[[], datetime] = utc_now):
        """`closing`: the agent is shutting down (SIGTERM): no new session starts."""
        self._connectors = connectors
        self._settings = settings
        self.store = store
        self._dispatch = dispatch
        self._csms = csms
        self._closing = closing
        self._wall_clock = wall_clock

    def settings(self) -> AuthSettings:
        cfg = self._settings
        return AuthSettings(
            local_list_enabled=cfg.local_list_enabled,
            cache_enabled=cfg.authorization_cache_enabled,
            local_authorize_offline=cfg.local_authorize_offline,
            local_pre_authorize=cfg.local_pre_authorize,
            allow_offline_unknown=cfg.allow_offline_tx_for_unknown_id,
        )

    def local_decision(self, id_token: str, online: bool) -> Decision:
        return decide(id_token, online=online, now=self._wall_clock(), list_entry=self.store.listed(id_token),
                      cache_entry=self.store.cached(id_token), settings=self.settings())

    def present_id_token(self, id_token: str) -> int | None:
        """A card at the reader: the connector it went to, or None."""
        if self._closing():
            self.log.info("card %s ignored: the agent is shutting down", id_token)
            return None
        controllers = {cid: rt.controller for cid, rt in self._connectors.items()}
        cid = ctl.route_id_token(controllers, id_token)
        if cid is None:
            self.log.info("card %s: no connector can take it", id_token)
            return None
        self._dispatch(self._connectors[cid], ctl.TokenPresented(id_token))
        return cid

    async def authorize(self, rt: ConnectorRuntime, id_token: str) -> None:
        """The controller asks whether `id_tag` may charge: it gets an AuthorizationResult."""
        csms = self._csms()
        decision = self.local_decision(id_token, online=csms.accepted)
        verdict = "Accepted" if decision.accepted else "refused"
        if decision.ask_csms:
            tag_info = await csms.authorize(id_token)
            if tag_info is not None:
                self.remember(id_token, tag_info)
                decision = Decision(tag_info.accepted, Source.CSMS, tag_info.parent_id_token)
                verdict = authorization_status(tag_info.status)  # the CSMS's word, as its logs show it
            else:  # the CSMS could not be asked after all: offline rules
                decision = self.local_decision(id_token, online=False)
                verdict = "Accepted" if decision.accepted else "refused"
        if self._closing() and decision.accepted:
            decision, verdict = Decision(False, decision.source, None), "ignored: the agent is shutting down"
        self.log.info("connector %d: card %s: %s (%s)", rt.id, id_token, verdict, decision.source.value)
        self._dispatch(rt, ctl.AuthorizationResult(id_token, decision.accepted, decision.parent_id_token))

    def remember(self, id_token: str, info: TokenInfo) -> None:
        """Every IdTagInfo the CSMS sends updates the Authorization Cache (§3.5.1)."""
        if self._settings.authorization_cache_enabled:
            self.store.remember(id_token, info)

    def clear_cache(self) -> str:
        self.store.clear_cache()
        return "Accepted"

    def local_list_version(self) -> int:
        return self.store.list_version()

    def send_local_list(self, list_version: int, update_type: str, entries: list[LocalListEntry]) -> str:
        cfg = self._settings
        change = plan_send_local_list(
            enabled=cfg.local_list_enabled, current_version=self.store.list_version(),
            current_size=self.store.list_size(), list_version=list_version, update_type=update_type,
            entries=[(e.id_token, e.info) for e in entries],
            max_length=cfg.local_list_max_length, send_max_length=cfg.local_list_max_update_length,
        )
        if change.status is ListUpdate.ACCEPTED:
            self.store.apply_list_change(change)
            self.log.info("local authorization list: %s update to version %d (%d entries)", update_type,
                          list_version, self.store.list_size())
        return change.status.value
