"""The station's settings (agent.station.settings.StationSettings) read from OCPP 1.6 configuration keys.

V16Settings owns the station's OcppConfiguration: the CSMS's GetConfiguration / ChangeConfiguration go to
that (CsmsPort.configuration), the station's pieces read the neutral properties here, each from its key at
the time it is asked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.core.smart_charging import UNIT_NAMES
from agent.ocpp.v16.config import OcppConfiguration

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.logs import StationLogs
    from agent.ocpp.security import SecurityManager
    from agent.station.journal import Journal

# the journal's settings that hold the keys the CSMS changed
JOURNAL_PREFIX = "ocpp."

_UNITS_BY_NAME = {name: unit for unit, name in UNIT_NAMES.items()}  # "Current" -> "A"


class V16Settings:
    """StationSettings from an OcppConfiguration, each read from its key when asked; the listeners given to
    on_change hear of every change the CSMS (or the agent) makes."""

    def __init__(self, configuration: OcppConfiguration) -> None:
        self.configuration = configuration
        self._listeners: list[Callable[[], None]] = []

    @classmethod
    def open(cls, config: AgentConfig, journal: Journal, security: SecurityManager, logs: StationLogs,
             number_of_connectors: int) -> V16Settings:
        """A station's configuration: the table's defaults, the config file's [ocpp.configuration], then
        what the CSMS set earlier (the journal). A change is persisted in the journal, its AuthorizationKey
        becomes a secret of the station's logs, the security manager sees it, then the listeners hear of it."""
        settings: V16Settings

        def changed(key: str, value: str) -> None:
            journal.set_setting(f"{JOURNAL_PREFIX}{key}", value)  # survives reboots
            if key == "AuthorizationKey":
                logs.add_basic_auth_secret(config.station.id, value)  # never in a log line (agent.logs)
            security.configuration_changed(key, value)
            settings.changed()

        configuration = OcppConfiguration(
            number_of_connectors=number_of_connectors,
            initial={**config.ocpp_configuration, "SecurityProfile": str(config.ocpp.security_profile)},
            stored=journal.settings(JOURNAL_PREFIX),
            on_change=changed,
            check_change=security.check_change,
        )
        settings = cls(configuration)
        security.attach(configuration)
        with contextlib.suppress(KeyError, ValueError):  # the key in force (a CSMS may have set it)
            logs.add_basic_auth_secret(config.station.id, configuration.get("AuthorizationKey"))
        return settings

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def changed(self) -> None:
        """Tell the listeners that a key changed (OcppConfiguration's on_change, after it is persisted)."""
        for listener in self._listeners:
            listener()

    # ---- a connector's session ----

    @property
    def connection_timeout_s(self) -> int:
        return self.configuration.get_int("ConnectionTimeOut")

    @property
    def stop_on_ev_side_disconnect(self) -> bool:
        return self.configuration.get_bool("StopTransactionOnEVSideDisconnect")

    @property
    def stop_on_invalid_id(self) -> bool:
        return self.configuration.get_bool("StopTransactionOnInvalidId")

    @property
    def authorize_remote_tx(self) -> bool:
        return self.configuration.get_bool("AuthorizeRemoteTxRequests")

    @property
    def unlock_on_ev_side_disconnect(self) -> bool:
        return self.configuration.get_bool("UnlockConnectorOnEVSideDisconnect")

    # ---- authorization ----

    @property
    def local_list_enabled(self) -> bool:
        return self.configuration.get_bool("LocalAuthListEnabled")

    @property
    def authorization_cache_enabled(self) -> bool:
        return self.configuration.get_bool("AuthorizationCacheEnabled")

    @property
    def local_authorize_offline(self) -> bool:
        return self.configuration.get_bool("LocalAuthorizeOffline")

    @property
    def local_pre_authorize(self) -> bool:
        return self.configuration.get_bool("LocalPreAuthorize")

    @property
    def allow_offline_tx_for_unknown_id(self) -> bool:
        return self.configuration.get_bool("AllowOfflineTxForUnknownId")

    @property
    def local_list_max_length(self) -> int:
        return self.configuration.get_int("LocalAuthListMaxLength")

    @property
    def local_list_max_update_length(self) -> int:
        return self.configuration.get_int("SendLocalListMaxLength")

    # ---- meter values ----

    @property
    def meter_sample_interval_s(self) -> int:
        return self.configuration.get_int("MeterValueSampleInterval")

    @property
    def clock_aligned_interval_s(self) -> int:
        return self.configuration.get_int("ClockAlignedDataInterval")

    @property
    def sampled_measurands(self) -> list[str]:
        return self.configuration.get_list("MeterValuesSampledData")

    @property
    def aligned_measurands(self) -> list[str]:
        return self.configuration.get_list("MeterValuesAlignedData")

    @property
    def stop_transaction_measurands(self) -> list[str]:
        return self.configuration.get_list("StopTxnSampledData")

    # ---- smart charging ----

    @property
    def charging_profile_max_stack_level(self) -> int:
        return self.configuration.get_int("ChargeProfileMaxStackLevel")

    @property
    def charging_schedule_max_periods(self) -> int:
        return self.configuration.get_int("ChargingScheduleMaxPeriods")

    @property
    def max_charging_profiles(self) -> int:
        return self.configuration.get_int("MaxChargingProfilesInstalled")

    @property
    def charging_rate_units(self) -> tuple[str, ...]:
        names = self.configuration.get_list("ChargingScheduleAllowedChargingRateUnit")
        return tuple(_UNITS_BY_NAME[name] for name in names if name in _UNITS_BY_NAME)

    # ---- reservations ----

    @property
    def reserve_any_connector(self) -> bool:
        return self.configuration.get_bool("ReserveConnectorZeroSupported")
