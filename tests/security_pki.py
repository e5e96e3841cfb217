"""A throw-away PKI for the security tests: CAs, server and client certificates, CSR signing and TLS server
contexts, all generated with `cryptography` (EC P-256, fast)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_serial = 0x1000


def _next_serial() -> int:
    global _serial
    _serial += 1
    return _serial


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}-key.pem"
        cert_path.write_text(self.pem)
        key_path.write_text(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


def make_ca(common_name: str = "Test CSMS Root", *, days: int = 365, serial: int | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, "Test PKI"))
        .issuer_name(_name(common_name, "Test PKI"))
        .public_key(key.public_key())
        .serial_number(serial or _next_serial())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    common_name: str,
    *,
    organization: str | None = None,
    hosts: tuple[str, ...] = (),
    client: bool = False,
    ca_cert: bool = False,
    public_key=None,
    not_before: datetime | None = None,
    days: int = 90,
) -> Issued:
    """A certificate signed by `ca`: a TLS server certificate for `hosts`, a client certificate, or an
    intermediate CA (ca_cert=True). With `public_key` (from a CSR) the returned key is None."""
    key = None if public_key is not None else ec.generate_private_key(ec.SECP256R1())
    public_key = public_key or key.public_key()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(_next_serial())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after((not_before or now) + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca_cert, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if hosts:
        names = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca_cert:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def sign_csr(ca: Issued, csr_pem: str, *, days: int = 90, not_before: datetime | None = None) -> x509.Certificate:
    """What the test CSMS's CA does with a SignCertificate CSR: a client certificate with its subject."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return issue(ca, cn, organization=orgs[0].value if orgs else None, client=True,
                 public_key=csr.public_key(), days=days, not_before=not_before).cert


def pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def server_context(directory: Path, server: Issued, *, client_ca: Issued | None = None,
                   require_client_cert: bool = False) -> ssl.SSLContext:
    """Server-side context for LocalCsms; load_server_cert() swaps its certificate while it runs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_server_cert(context, directory, server)
    if client_ca is not None:
        ca_path = directory / f"client-ca-{client_ca.cert.serial_number}.pem"
        ca_path.write_text(client_ca.pem)
        context.load_verify_locations(cafile=str(ca_path))
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def load_server_cert(context: ssl.SSLContext, directory: Path, server: Issued) -> None:
    cert_path, key_path = server.write(directory, f"server-{server.cert.serial_number}")
    context.load_cert_chain(str(cert_path), str(key_path))
