"""Persistence of the Authorization Cache and the Local Authorization List, in the journal's database.

Both must survive reboots and resets (OCPP 1.6 §3.5, errata 3.4); they live next to the transaction
journal in the same SQLite file and are written with the same durability.
"""

from __future__ import annotations

from datetime import datetime

from agent.core.authorization import ListChange, TokenInfo, cache_evictions
from agent.core.clock import WallClock, utc_now
from agent.ocpp.v16.vocabulary import authorization_status, authorization_status_from_ocpp
from agent.station.journal import Journal

SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_cache (
    id_tag     TEXT PRIMARY KEY,
    status     TEXT NOT NULL,
    expiry     TEXT,
    parent     TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS local_list (
    id_tag  TEXT PRIMARY KEY,
    status  TEXT NOT NULL,
    expiry  TEXT,
    parent  TEXT
);
"""
LIST_VERSION_KEY = "local_list.version"


def _row_to_info(status: str, expiry: str | None, parent: str | None) -> TokenInfo:
    # the stored status is the OCPP 1.6 word (the journal's format until it is neutral)
    return TokenInfo(authorization_status_from_ocpp(status), datetime.fromisoformat(expiry) if expiry else None, parent)


def _info_to_row(info: TokenInfo) -> tuple[str, str | None, str | None]:
    return authorization_status(info.status), info.expiry.isoformat() if info.expiry else None, info.parent_id_token


class AuthStore:
    def __init__(self, journal: Journal, cache_max_entries: int = 1000, wall_clock: WallClock = utc_now):
        self._journal = journal
        self._wall_clock = wall_clock  # UTC: expiry dates and the cache's least-recently-updated order
        self._db = journal.connection
        self.cache_max_entries = cache_max_entries
        journal.ensure_tables(SCHEMA)

    # ---- cache -----------------------------------------------------------------------------------

    def cached(self, id_tag: str) -> TokenInfo | None:
        row = self._db.execute("SELECT status, expiry, parent FROM auth_cache WHERE id_tag = ?", (id_tag,)).fetchone()
        return _row_to_info(*row) if row else None

    def remember(self, id_tag: str, info: TokenInfo) -> None:
        """Cache what the CSMS said about a tag (valid or not), unless the tag is in the local list."""
        if self.listed(id_tag) is not None:
            return  # list entries are never cached (§3.5.3)
        now = self._wall_clock()
        entries = [
            (tag, _row_to_info(status, expiry, parent), updated)
            for tag, status, expiry, parent, updated in self._db.execute(
                "SELECT id_tag, status, expiry, parent, updated_at FROM auth_cache WHERE id_tag != ?", (id_tag,))
        ]
        with self._journal.write() as db:
            for tag in cache_evictions(entries, self.cache_max_entries, now):
                db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (tag,))
            db.execute(
                "INSERT INTO auth_cache (id_tag, status, expiry, parent, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(id_tag) DO UPDATE SET status = excluded.status, expiry = excluded.expiry,"
                " parent = excluded.parent, updated_at = excluded.updated_at",
                (id_tag, *_info_to_row(info), now.timestamp()),
            )

    def clear_cache(self) -> None:
        with self._journal.write() as db:
            db.execute("DELETE FROM auth_cache")

    def cache_size(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM auth_cache").fetchone()[0]

    # ---- local list ------------------------------------------------------------------------------

    def listed(self, id_tag: str) -> TokenInfo | None:
        row = self._db.execute("SELECT status, expiry, parent FROM local_list WHERE id_tag = ?", (id_tag,)).fetchone()
        return _row_to_info(*row) if row else None

    def list_version(self) -> int:
        """0 for an empty list, whatever version emptied it (§5.10: 0 means "no list")."""
        if self.list_size() == 0:
            return 0
        return int(self._journal.settings().get(LIST_VERSION_KEY, "0"))

    def list_size(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM local_list").fetchone()[0]

    def apply_list_change(self, change: ListChange) -> None:
        """One commit: a half-applied list would be worse than none."""
        with self._journal.write() as db:
            if change.replace_all:
                db.execute("DELETE FROM local_list")
            for tag in change.removals:
                db.execute("DELETE FROM local_list WHERE id_tag = ?", (tag,))
            for tag, info in change.upserts:
                db.execute(
                    "INSERT INTO local_list (id_tag, status, expiry, parent) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT(id_tag) DO UPDATE SET status = excluded.status, expiry = excluded.expiry,"
                    " parent = excluded.parent",
                    (tag, *_info_to_row(info)),
                )
                db.execute("DELETE FROM auth_cache WHERE id_tag = ?", (tag,))
            empty = db.execute("SELECT NOT EXISTS (SELECT 1 FROM local_list)").fetchone()[0]
            db.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (LIST_VERSION_KEY, "0" if empty else str(change.version)),  # an empty list is version 0
            )
