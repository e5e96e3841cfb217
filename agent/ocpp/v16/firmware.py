"""OCPP 1.6 firmware and diagnostics handlers: UpdateFirmware, GetDiagnostics, SignedUpdateFirmware, GetLog.

A mixin of agent.ocpp.v16.client._ChargePoint (the `ocpp` library finds @on handlers on any base class).
Handlers reach the station through `self._station` (its `firmware` manager); long work (downloads,
uploads, installation) runs in the manager's own tasks, never inside a handler. The @on handler
decides the answer and prepares the operation; the @after hook starts it, so that no status
notification can overtake the answer.
"""

from __future__ import annotations

from ocpp.routing import after, on
from ocpp.v16 import call_result
from ocpp.v16.enums import Action

from agent.ocpp.v16.mixin_base import ChargePointMixin


class FirmwareHandlers(ChargePointMixin):
    """Mixin: UpdateFirmware, GetDiagnostics, SignedUpdateFirmware, GetLog."""

    @on(Action.update_firmware)
    def on_update_firmware(self, location: str, retrieve_date: str, retries=None, retry_interval=None, **_):
        self._station.firmware.update_firmware(location, retrieve_date, retries, retry_interval)
        return call_result.UpdateFirmware()

    @after(Action.update_firmware)
    def after_update_firmware(self, **_):
        self._station.firmware.start_prepared("UpdateFirmware")

    @on(Action.get_diagnostics)
    def on_get_diagnostics(self, location: str, retries=None, retry_interval=None, start_time=None,
                           stop_time=None, **_):
        file_name = self._station.firmware.get_diagnostics(location, retries, retry_interval, start_time, stop_time)
        return call_result.GetDiagnostics(file_name=file_name)

    @after(Action.get_diagnostics)
    def after_get_diagnostics(self, **_):
        self._station.firmware.start_prepared("GetDiagnostics")

    @on(Action.signed_update_firmware)
    def on_signed_update_firmware(self, request_id: int, firmware: dict, retries=None, retry_interval=None, **_):
        self._station.security.csms_uses_security_extension()  # it understands SecurityEventNotification
        status = self._station.firmware.signed_update_firmware(request_id, firmware, retries, retry_interval)
        return call_result.SignedUpdateFirmware(status=status)

    @after(Action.signed_update_firmware)
    def after_signed_update_firmware(self, **_):
        self._station.firmware.start_prepared("SignedUpdateFirmware")

    @on(Action.get_log)
    def on_get_log(self, log: dict, log_type: str, request_id: int, retries=None, retry_interval=None, **_):
        self._station.security.csms_uses_security_extension()
        status, file_name = self._station.firmware.get_log(log_type, request_id, log, retries, retry_interval)
        return call_result.GetLog(status=status, filename=file_name)

    @after(Action.get_log)
    def after_get_log(self, **_):
        self._station.firmware.start_prepared("GetLog")
