"""OCPP 1.6 Security Whitepaper (edition 2) handlers: certificates, security events, logs.

A mixin of agent.ocpp16._ChargePoint (the `ocpp` library finds @on handlers on any base class).
Handlers reach the station through `self._station` (its `security` manager) and queue follow-up
calls through `self._client`; they never await a call themselves.
"""

from __future__ import annotations


class SecurityHandlers:
    """Mixin: SignCertificate, CertificateSigned, InstallCertificate, DeleteCertificate,
    GetInstalledCertificateIds, ExtendedTriggerMessage."""
