"""Persistence of the installed charging profiles (OCPP 1.6 Smart Charging), in the journal's database.

Profiles survive reboots and resets (errata 3.37). Each is kept as its OCPP JSON with its connector; the
model and the rules are agent.core.smart_charging's. Writes are durable (fsynced) like Start and Stop.
"""

from __future__ import annotations

import json
import logging

from agent.core import smart_charging as sc
from agent.ocpp.v16.smart_charging import parse_profile, profile_to_ocpp
from agent.station.journal import Journal

log = logging.getLogger("evse.smart_charging")

SCHEMA = """
CREATE TABLE IF NOT EXISTS charging_profiles (
    profile_id   INTEGER PRIMARY KEY,
    connector_id INTEGER NOT NULL,
    payload      TEXT NOT NULL
)
"""


class ProfileStore:
    def __init__(self, journal: Journal):
        self._journal = journal
        journal.ensure_tables(SCHEMA)

    def load(self) -> tuple[sc.ChargingProfile, ...]:
        """Every stored profile; one that no longer parses (an older agent's) is dropped with a warning."""
        profiles = []
        rows = self._journal.connection.execute(
            "SELECT profile_id, connector_id, payload FROM charging_profiles ORDER BY rowid").fetchall()
        for profile_id, connector_id, payload in rows:
            try:
                profiles.append(parse_profile(connector_id, json.loads(payload)))
            except (ValueError, TypeError) as exc:
                log.warning("dropping stored charging profile %s: %s", profile_id, exc)
        return tuple(profiles)

    def save(self, profiles: tuple[sc.ChargingProfile, ...]) -> None:
        """Replace the stored set with `profiles` in one commit."""
        with self._journal.write() as db:
            db.execute("DELETE FROM charging_profiles")
            db.executemany(
                "INSERT INTO charging_profiles (profile_id, connector_id, payload) VALUES (?, ?, ?)",
                [(p.id, p.connector_id, json.dumps(profile_to_ocpp(p))) for p in profiles],
            )
