"""Firmware signatures (the security whitepaper's SignedUpdateFirmware, L01): the signing certificate's
chain to an installed ManufacturerRootCertificate, and the signature over the file."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import datetime
from pathlib import Path

from agent.ocpp import transfer


class SignatureError(Exception):
    """The firmware file does not match its signature."""


def certificate_store(journal_dir: Path):
    """The station's certificate store (agent.ocpp.security_certs), under `<journal dir>/certs`."""
    from agent.ocpp.security_certs import CertificateStore

    return CertificateStore(Path(journal_dir) / "certs")


def manufacturer_roots(journal_dir: Path) -> list:
    """The installed ManufacturerRootCertificates (cryptography x509.Certificate objects)."""
    from agent.ocpp.security_certs import MANUFACTURER_ROOT

    return certificate_store(journal_dir).root_certificates(MANUFACTURER_ROOT)


def verify_signing_certificate(pem: str, roots: list, now: datetime):
    """The signing certificate (the first of `pem`, which may carry intermediates after it), once its
    chain leads to one of the trusted `roots`, every certificate valid now. Raises
    agent.ocpp.security_certs.CertificateError (a ValueError; its message is safe to log)."""
    from agent.ocpp.security_certs import load_pem_certificates, verify_chain

    chain = load_pem_certificates(pem)
    verify_chain(chain, roots, now)
    return chain[0]


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(transfer.BLOCK_SIZE):
            digest.update(block)
    return digest.digest()


def verify_signature(certificate, path: Path, signature_b64: str) -> None:
    """RSA (PKCS#1 v1.5) or ECDSA signature with SHA-256 over the file, by the certificate's key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    try:  # standard base64, also as `openssl base64` wraps it (64 characters a line)
        signature = base64.b64decode(re.sub(r"[ \t\r\n\f\v]+", "", signature_b64), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise SignatureError("the signature is not base64") from None
    if not signature:
        raise SignatureError("the signature is empty")
    digest = file_sha256(path)
    key = certificate.public_key()
    prehashed = utils.Prehashed(hashes.SHA256())
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, padding.PKCS1v15(), prehashed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            raise SignatureError(f"unsupported signing key type {type(key).__name__}")
    except InvalidSignature:
        raise SignatureError("the firmware does not match its signature (SHA-256)") from None
