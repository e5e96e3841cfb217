"""What the OCPP 1.6 handler mixins (security, firmware, smart charging, reservation) use of the class they
are mixed into, agent.ocpp.v16.client._ChargePoint: declared once, for the type checker. _ChargePoint sets
the attributes and defines the methods; this class adds nothing at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.ocpp.v16.client import OcppClient
    from agent.station.csms_link import CsmsPort


class ChargePointMixin:
    """Base of the handler mixins: the attributes and methods of _ChargePoint they rely on."""

    _client: OcppClient  # its loggers are the station's (security_log); follow-up calls are queued through it
    _station: CsmsPort

    if TYPE_CHECKING:  # defined by _ChargePoint; declared here only, so no definition shadows its own
        def _known_connector(self, connector_id: int | None) -> bool: ...

        def after_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                  **_: Any) -> None: ...
