"""OCPP 1.6 firmware and diagnostics handlers: UpdateFirmware, GetDiagnostics, SignedUpdateFirmware, GetLog.

A mixin of agent.ocpp16._ChargePoint (the `ocpp` library finds @on handlers on any base class).
Handlers reach the station through `self._station` (its `firmware` manager); long work (downloads,
uploads, installation) runs in the manager's own tasks, never inside a handler.
"""

from __future__ import annotations


class FirmwareHandlers:
    """Mixin: UpdateFirmware, GetDiagnostics, SignedUpdateFirmware, GetLog."""
