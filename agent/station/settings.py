"""What the station needs to know of the settings the CSMS manages, in neutral words.

The station's pieces read their settings only through StationSettings; the protocol adapter implements it
from its own store: OCPP 1.6's configuration keys (agent.ocpp.v16.settings.V16Settings), OCPP 2.0.1's device
model later. Each property's docstring names the 1.6 key and the 2.0.1 variable (Component.Variable) it
stands for. A value is read when it is needed, so a change by the CSMS is seen at once; `on_change` tells
the station after every change, for what it has copied (the controllers' SessionSettings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agent.ocpp.v16.config import OcppConfiguration


class StationSettings(Protocol):
    # the protocol's own store of these settings, as its CSMS reads and writes it (the CsmsPort hands it to the
    # adapter: 1.6 GetConfiguration/ChangeConfiguration); the station's pieces read the properties below
    configuration: OcppConfiguration

    # ---- a connector's session (agent.station.connector.session_settings) ----

    @property
    def connection_timeout_s(self) -> int:
        """How long an authorization waits for the EV to be plugged in. 1.6: ConnectionTimeOut;
        2.0.1: TxCtrlr.EVConnectionTimeOut."""
        ...

    @property
    def stop_on_ev_side_disconnect(self) -> bool:
        """Unplugging at the EV stops the transaction. 1.6: StopTransactionOnEVSideDisconnect;
        2.0.1: TxCtrlr.StopTxOnEVSideDisconnect."""
        ...

    @property
    def stop_on_invalid_id(self) -> bool:
        """A transaction whose id the CSMS refuses at its start is stopped. 1.6: StopTransactionOnInvalidId;
        2.0.1: TxCtrlr.StopTxOnInvalidId."""
        ...

    @property
    def authorize_remote_tx(self) -> bool:
        """A remote start's id is authorized before the transaction starts. 1.6: AuthorizeRemoteTxRequests;
        2.0.1: AuthCtrlr.AuthorizeRemoteStart."""
        ...

    @property
    def unlock_on_ev_side_disconnect(self) -> bool:
        """The connector unlocks when the EV unplugs. 1.6: UnlockConnectorOnEVSideDisconnect;
        2.0.1: OCPPCommCtrlr.UnlockOnEVSideDisconnect."""
        ...

    # ---- authorization (agent.station.authorizer) ----

    @property
    def local_list_enabled(self) -> bool:
        """The local authorization list is used. 1.6: LocalAuthListEnabled; 2.0.1: LocalAuthListCtrlr.Enabled."""
        ...

    @property
    def authorization_cache_enabled(self) -> bool:
        """The CSMS's answers are cached. 1.6: AuthorizationCacheEnabled; 2.0.1: AuthCacheCtrlr.Enabled."""
        ...

    @property
    def local_authorize_offline(self) -> bool:
        """Offline, locally known ids may start. 1.6: LocalAuthorizeOffline;
        2.0.1: AuthCtrlr.LocalAuthorizeOffline."""
        ...

    @property
    def local_pre_authorize(self) -> bool:
        """Online, locally known valid ids start without asking the CSMS. 1.6: LocalPreAuthorize;
        2.0.1: AuthCtrlr.LocalPreAuthorize."""
        ...

    @property
    def allow_offline_tx_for_unknown_id(self) -> bool:
        """Offline, unknown ids may start. 1.6: AllowOfflineTxForUnknownId;
        2.0.1: AuthCtrlr.OfflineTxForUnknownIdEnabled."""
        ...

    @property
    def local_list_max_length(self) -> int:
        """The most ids the local list holds. 1.6: LocalAuthListMaxLength;
        2.0.1: LocalAuthListCtrlr.Entries (its maxLimit)."""
        ...

    @property
    def local_list_max_update_length(self) -> int:
        """The most ids one local list update may carry. 1.6: SendLocalListMaxLength;
        2.0.1: LocalAuthListCtrlr.ItemsPerMessage."""
        ...

    # ---- meter values (agent.station.meter_sampling, agent.station.recorder) ----

    @property
    def meter_sample_interval_s(self) -> int:
        """Seconds between periodic samples during a transaction, 0: none. 1.6: MeterValueSampleInterval;
        2.0.1: SampledDataCtrlr.TxUpdatedInterval."""
        ...

    @property
    def clock_aligned_interval_s(self) -> int:
        """Seconds between clock-aligned samples (from midnight UTC), 0: none. 1.6: ClockAlignedDataInterval;
        2.0.1: AlignedDataCtrlr.Interval."""
        ...

    @property
    def sampled_measurands(self) -> list[str]:
        """The measurands of periodic (and triggered) samples. 1.6: MeterValuesSampledData;
        2.0.1: SampledDataCtrlr.TxUpdatedMeasurands."""
        ...

    @property
    def aligned_measurands(self) -> list[str]:
        """The measurands of clock-aligned samples. 1.6: MeterValuesAlignedData;
        2.0.1: AlignedDataCtrlr.Measurands."""
        ...

    @property
    def stop_transaction_measurands(self) -> list[str]:
        """The measurands reported with a transaction's end (its begin and end values). 1.6: StopTxnSampledData;
        2.0.1: SampledDataCtrlr.TxEndedMeasurands."""
        ...

    # ---- smart charging (agent.station.charging_limits) ----

    @property
    def charging_profile_max_stack_level(self) -> int:
        """The highest stack level of a charging profile. 1.6: ChargeProfileMaxStackLevel;
        2.0.1: SmartChargingCtrlr.ProfileStackLevel."""
        ...

    @property
    def charging_schedule_max_periods(self) -> int:
        """The most periods in one charging schedule. 1.6: ChargingScheduleMaxPeriods;
        2.0.1: SmartChargingCtrlr.PeriodsPerSchedule."""
        ...

    @property
    def max_charging_profiles(self) -> int:
        """The most charging profiles installed at once. 1.6: MaxChargingProfilesInstalled;
        2.0.1: SmartChargingCtrlr.Entries (instance ChargingProfiles, its maxLimit)."""
        ...

    @property
    def charging_rate_units(self) -> tuple[str, ...]:
        """The units a charging schedule may use, "A" and/or "W". 1.6: ChargingScheduleAllowedChargingRateUnit
        (Current, Power); 2.0.1: SmartChargingCtrlr.RateUnit."""
        ...

    # ---- reservations (agent.station.csms_facade) ----

    @property
    def reserve_any_connector(self) -> bool:
        """A reservation may name no connector (connector 0: any). 1.6: ReserveConnectorZeroSupported;
        2.0.1: ReservationCtrlr.NonEvseSpecific."""
        ...

    # ---- changes ----

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after every accepted change of a setting (the change is already in force)."""
        ...
