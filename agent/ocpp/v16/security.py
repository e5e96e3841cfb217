"""OCPP 1.6 Security Whitepaper (edition 2) handlers: certificates, security events, logs.

A mixin of agent.ocpp.v16.client._ChargePoint (the `ocpp` library finds @on handlers on any base class).
Handlers reach the station through `self._station` (its `security` manager, agent.ocpp.security) and queue
follow-up calls through `self._client`; they never await a call themselves. A handler never raises:
the library would log the whole request (a key, a certificate) with the exception.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from ocpp.charge_point import camel_to_snake_case, snake_to_camel_case
from ocpp.routing import after, on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from agent.ocpp.v16.mixin_base import ChargePointMixin

log = logging.getLogger("evse.security.ocpp")

_Answer = TypeVar("_Answer")

# ExtendedTriggerMessage's MessageTriggerEnumType (whitepaper §5.5)
_EXTENDED_TRIGGERS = (
    "BootNotification",
    "LogStatusNotification",
    "FirmwareStatusNotification",
    "Heartbeat",
    "MeterValues",
    "SignChargePointCertificate",
    "StatusNotification",
)


class SecurityHandlers(ChargePointMixin):
    """Mixin: SignCertificate, CertificateSigned, InstallCertificate, DeleteCertificate,
    GetInstalledCertificateIds, ExtendedTriggerMessage; reconnects after a security key changed."""

    def _security_call(self, action: str, work: Callable[[], _Answer], failed: _Answer) -> _Answer:
        self._station.security.csms_uses_security_extension()
        try:
            return work()
        except Exception:  # logged without the request: it may hold a certificate
            self._client.security_log.exception("%s failed", action)
            return failed

    # ---- ChangeConfiguration of AuthorizationKey / SecurityProfile: reconnect (TC_073, TC_083) ---------

    @after(Action.change_configuration)
    def after_change_configuration_security(self, **_):
        if self._station.security.take_reconnect_request():
            self._client.reconnect("new security settings")

    # ---- ExtendedTriggerMessage ---------------------------------------------------------------------

    def _extended_trigger_status(self, requested_message: str, connector_id: int | None) -> str:
        if connector_id is not None and not self._known_connector(connector_id):
            return "Rejected"
        if requested_message == "BootNotification" and self._client.registration == "Accepted":
            return "Rejected"  # as TriggerMessage (errata 3.35)
        if requested_message not in _EXTENDED_TRIGGERS:
            return "NotImplemented"
        return "Accepted"

    @on(Action.extended_trigger_message)
    def on_extended_trigger_message(self, requested_message: str, connector_id: int | None = None, **_):
        self._station.security.csms_uses_security_extension()
        return call_result.ExtendedTriggerMessage(
            status=self._extended_trigger_status(requested_message, connector_id)
        )

    @after(Action.extended_trigger_message)
    def after_extended_trigger_message(self, requested_message: str, connector_id: int | None = None, **_):
        if self._extended_trigger_status(requested_message, connector_id) != "Accepted":
            return
        queue = functools.partial(self._client.queue_follow_up, triggered=True)  # coalesced (agent.ocpp.v16.client)
        try:
            if requested_message == "SignChargePointCertificate":
                self.send_sign_certificate()
            elif requested_message == "LogStatusNotification":
                queue(self._station.firmware.log_status_notification())
            elif requested_message == "FirmwareStatusNotification":
                # the whitepaper's firmware status is SignedFirmwareStatusNotification
                queue(self._station.firmware.firmware_status_notification(signed=True))
            else:  # BootNotification, Heartbeat, MeterValues, StatusNotification: as TriggerMessage
                self.after_trigger_message(requested_message=requested_message, connector_id=connector_id)
        except Exception:
            self._client.security_log.exception("ExtendedTriggerMessage %s: the follow-up failed", requested_message)

    def send_sign_certificate(self) -> None:
        """A02: new key pair (kept on the station) and CSR, sent with SignCertificate."""
        try:
            csr = self._station.security.new_csr()
        except OSError as exc:
            self._client.security_log.error("cannot create a key pair for the CSR: %s", exc)
            return
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(_log_sign_certificate_answer)
        self._client.queue_follow_up(call.SignCertificate(csr=csr), done=done)

    # ---- certificates ---------------------------------------------------------------------------------

    @on(Action.certificate_signed)
    def on_certificate_signed(self, certificate_chain: str, **_):
        status = self._security_call(
            "CertificateSigned", lambda: self._station.security.certificate_signed(certificate_chain), "Rejected"
        )
        return call_result.CertificateSigned(status=status)

    @after(Action.certificate_signed)
    def after_certificate_signed(self, **_):
        if self._station.security.take_reconnect_request():
            self._client.reconnect("the new charge point certificate")  # TC_074 step 7

    @on(Action.install_certificate)
    def on_install_certificate(self, certificate_type: str, certificate: str, **_):
        status = self._security_call(
            "InstallCertificate",
            lambda: self._station.security.install_certificate(certificate_type, certificate),
            "Failed",
        )
        return call_result.InstallCertificate(status=status)

    @on(Action.delete_certificate)
    def on_delete_certificate(self, certificate_hash_data: dict, **_):
        wanted = snake_to_camel_case(certificate_hash_data)  # the library hands nested data over snake_case
        status = self._security_call(
            "DeleteCertificate", lambda: self._station.security.delete_certificate(wanted), "Failed"
        )
        return call_result.DeleteCertificate(status=status)

    @on(Action.get_installed_certificate_ids)
    def on_get_installed_certificate_ids(self, certificate_type: str, **_):
        ids: list[dict] = self._security_call(
            "GetInstalledCertificateIds",
            lambda: self._station.security.installed_certificate_ids(certificate_type),
            [],
        )
        if not ids:
            return call_result.GetInstalledCertificateIds(status="NotFound")
        return call_result.GetInstalledCertificateIds(
            status="Accepted", certificate_hash_data=camel_to_snake_case(ids)
        )


def _log_sign_certificate_answer(done: asyncio.Future) -> None:
    if done.cancelled():
        return
    error = done.exception()
    if error is not None:
        log.warning("SignCertificate was not answered: %s", error)
    else:
        log.info("SignCertificate: %s by the CSMS", done.result().status)
