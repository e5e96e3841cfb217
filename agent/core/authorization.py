"""Local authorization: the Authorization Cache and the Local Authorization List (OCPP 1.6 §3.5).

Pure rules (no I/O): which id tokens the station may accept without asking the CSMS, how the cache
is updated from TokenInfo and evicted, and how a local list update changes the list. Storage is
agent.station.auth_store; the station asks `decide_*` and then acts. Protocol-neutral: the protocol
adapter turns its wire objects into TokenInfo (OCPP 1.6: agent.ocpp.v16.vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum


class AuthorizationStatus(StrEnum):
    ACCEPTED = "accepted"
    BLOCKED = "blocked"
    EXPIRED = "expired"
    INVALID = "invalid"
    CONCURRENT_TX = "concurrent_tx"  # the id token is already in use in another transaction


ID_TOKEN_MAX_LENGTH = 20  # IdToken is CiString20Type (OCPP 1.6 §7.28)


def valid_id_token(id_token: object) -> bool:
    """Whether `id_token` can be sent as an OCPP 1.6 IdToken: 1-20 printable ASCII characters. Anything else
    fails the schema (too long) or cannot even be encoded (a lone surrogate), so the CSMS can never be
    asked about it."""
    return (isinstance(id_token, str) and 0 < len(id_token) <= ID_TOKEN_MAX_LENGTH
            and all(" " <= ch <= "~" for ch in id_token))


@dataclass(frozen=True)
class TokenInfo:
    """What the CSMS (or the local list) says about an id token."""

    status: AuthorizationStatus
    expiry: datetime | None = None
    parent_id_token: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is AuthorizationStatus.ACCEPTED

    def valid_at(self, now: datetime) -> bool:
        return self.accepted and (self.expiry is None or self.expiry > now)


def parse_timestamp(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class Source(StrEnum):
    LOCAL_LIST = "local list"
    CACHE = "cache"
    CSMS = "CSMS"
    UNKNOWN_OFFLINE = "unknown id, offline"
    INVALID = "not an OCPP IdToken"
    NONE = "no record"


@dataclass(frozen=True)
class Decision:
    accepted: bool
    source: Source
    parent_id_token: str | None = None
    ask_csms: bool = False  # the station should send Authorize.req (online, no local answer)


@dataclass(frozen=True)
class AuthSettings:
    local_list_enabled: bool
    cache_enabled: bool
    local_authorize_offline: bool
    local_pre_authorize: bool
    allow_offline_unknown: bool


def local_record(id_token: str, list_entry: TokenInfo | None, cache_entry: TokenInfo | None,
                 settings: AuthSettings) -> tuple[TokenInfo | None, Source]:
    """The local knowledge about a tag; the list wins over the cache (§3.5.3)."""
    if settings.local_list_enabled and list_entry is not None:
        return list_entry, Source.LOCAL_LIST
    if settings.cache_enabled and cache_entry is not None:
        return cache_entry, Source.CACHE
    return None, Source.NONE


def decide(id_token: str, *, online: bool, now: datetime, list_entry: TokenInfo | None,
           cache_entry: TokenInfo | None, settings: AuthSettings) -> Decision:
    """What to do with a presented id tag before (or instead of) asking the CSMS. An id that cannot be sent
    (see valid_id_token) is refused here, online or offline: the CSMS cannot be asked about it, and the
    offline rules (AllowOfflineTxForUnknownId) must not let it charge."""
    if not valid_id_token(id_token):
        return Decision(False, Source.INVALID)
    record, source = local_record(id_token, list_entry, cache_entry, settings)
    locally_valid = record is not None and record.valid_at(now)
    parent = record.parent_id_token if record else None
    if online:
        if locally_valid and settings.local_pre_authorize:
            return Decision(True, source, parent)  # start at once; the CSMS's answer to the start re-validates
        return Decision(False, source, parent, ask_csms=True)  # invalid cached ids are asked again too
    if record is not None:
        # known locally: only a valid record lets the session start offline (§3.5.2)
        accepted = locally_valid and settings.local_authorize_offline
        return Decision(accepted, source, parent)
    if settings.allow_offline_unknown:
        return Decision(True, Source.UNKNOWN_OFFLINE)
    return Decision(False, Source.NONE)


def cache_evictions(entries: list[tuple[str, TokenInfo, float]], max_entries: int, now: datetime) -> list[str]:
    """Which cached tags to drop so that one more fits: not-valid ones first, then the least recently
    updated valid ones (§3.5.1). `entries` are (id_token, info, updated_at)."""
    overflow = len(entries) + 1 - max_entries
    if overflow <= 0:
        return []
    ranked = sorted(entries, key=lambda e: (e[1].valid_at(now), e[2]))
    return [tag for tag, _, _ in ranked[:overflow]]


class ListUpdate(StrEnum):
    ACCEPTED = "Accepted"
    FAILED = "Failed"
    NOT_SUPPORTED = "NotSupported"
    VERSION_MISMATCH = "VersionMismatch"


@dataclass(frozen=True)
class ListChange:
    status: ListUpdate
    replace_all: bool = False
    upserts: tuple[tuple[str, TokenInfo], ...] = ()
    removals: tuple[str, ...] = ()
    version: int = 0


def plan_send_local_list(*, enabled: bool, current_version: int, current_size: int, list_version: int,
                         update_type: str, entries: list[tuple[object, TokenInfo | None]], max_length: int,
                         send_max_length: int) -> ListChange:
    """A local list update → what to change (1.6 §5.15): Full replaces, Differential adds/updates/removes.
    `entries` are (id token, its info or None to remove it) as the protocol adapter read them; an id token
    that is not a non-empty string makes the update fail."""
    if not enabled:
        return ListChange(ListUpdate.NOT_SUPPORTED)
    if len(entries) > send_max_length:
        return ListChange(ListUpdate.FAILED)
    if update_type == "Differential" and list_version <= current_version:
        return ListChange(ListUpdate.VERSION_MISMATCH)
    upserts: list[tuple[str, TokenInfo]] = []
    removals: list[str] = []
    for tag, info in entries:
        if not isinstance(tag, str) or not tag:
            return ListChange(ListUpdate.FAILED)
        if info is None:
            if update_type == "Full":
                return ListChange(ListUpdate.FAILED)  # a full list carries the info of every entry
            removals.append(tag)
        else:
            upserts.append((tag, info))
    if len({tag for tag, _ in upserts} | set(removals)) != len(entries):
        return ListChange(ListUpdate.FAILED)  # the same id twice in one update is ambiguous
    new_size = len(upserts) if update_type == "Full" else current_size + len(upserts)
    if new_size > max_length:
        return ListChange(ListUpdate.FAILED)
    return ListChange(ListUpdate.ACCEPTED, update_type == "Full", tuple(upserts), tuple(removals), list_version)
