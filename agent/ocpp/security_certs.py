"""X.509 certificates for the OCPP 1.6 security whitepaper (edition 2): the station's certificate store,
certificateHashData, chain checks and the charge point's key pair and CSR.

Pure logic around the `cryptography` library plus a small file store; no OCPP and no asyncio. Error
messages describe certificates by subject, serial and dates only, never by their PEM text, so they can
be logged.

Store layout (under the journal's directory, created 0700)::

    certs/csms-roots/<sha256>.pem          CentralSystemRootCertificate (trust anchors for TLS)
    certs/manufacturer-roots/<sha256>.pem  ManufacturerRootCertificate (firmware signing)
    certs/charge-point/cert.pem            the charge point certificate chain (leaf first)
    certs/charge-point/key.pem             its private key (0600)
    certs/charge-point/pending-key.pem     the key of an outstanding CSR (0600), until CertificateSigned
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CSMS_ROOT = "CentralSystemRootCertificate"
MANUFACTURER_ROOT = "ManufacturerRootCertificate"
ROOT_KINDS = (CSMS_ROOT, MANUFACTURER_ROOT)
_ROOT_DIRS = {CSMS_ROOT: "csms-roots", MANUFACTURER_ROOT: "manufacturer-roots"}

HASH_ALGORITHMS = {"SHA256": hashlib.sha256, "SHA384": hashlib.sha384, "SHA512": hashlib.sha512}
MAX_CHAIN_DEPTH = 8
# X.509 upper bounds (RFC 5280 appendix A) for the CSR subject
MAX_COMMON_NAME = 64
MAX_ORGANIZATION_NAME = 64


class CertificateError(ValueError):
    """A certificate that cannot be used; str() is safe to log (no PEM, no key)."""


# ---- parsing and description ---------------------------------------------------------------------


def load_pem_certificates(text: str | bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM text, in order; CertificateError if there is none or one is broken."""
    data = text.encode() if isinstance(text, str) else text
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError("not a PEM certificate")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError("unreadable PEM certificate") from None
    if not certificates:
        raise CertificateError("not a PEM certificate")
    return certificates


def to_pem(certificates: Iterable[x509.Certificate]) -> str:
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode() for cert in certificates)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def describe(cert: x509.Certificate) -> str:
    """Subject, serial and validity of a certificate: enough to identify it in a log."""
    return (
        f"{cert.subject.rfc4514_string() or '(empty subject)'}, serial {cert.serial_number:x}, "
        f"valid {cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}"
    )


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if `issuer`'s key signed `cert` and the names match."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z ({describe(cert)})")
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z ({describe(cert)})")


def check_root(cert: x509.Certificate, now: datetime) -> None:
    """A certificate installable as a root: a self-signed CA certificate, currently valid."""
    if not is_ca(cert):
        raise CertificateError(f"not a CA certificate ({describe(cert)})")
    if not issued_by(cert, cert):
        raise CertificateError(f"not a self-signed root certificate ({describe(cert)})")
    check_validity(cert, now)


def verify_chain(
    chain: list[x509.Certificate], anchors: list[x509.Certificate], now: datetime
) -> None:
    """Check that chain[0] (the leaf) leads, through the other certificates of `chain`, to one of the
    trusted `anchors`, each link signed by the next and every certificate valid now."""
    if not chain:
        raise CertificateError("empty certificate chain")
    if not anchors:
        raise CertificateError("no root certificate installed to verify it against")
    pool = list(chain[1:])
    current = chain[0]
    for _ in range(MAX_CHAIN_DEPTH):
        check_validity(current, now)
        for root in anchors:
            if issued_by(current, root):
                check_validity(root, now)
                return
        issuer = next((c for c in pool if is_ca(c) and issued_by(current, c)), None)
        if issuer is None:
            raise CertificateError(f"does not chain to an installed root ({describe(chain[0])})")
        pool.remove(issuer)
        current = issuer
    raise CertificateError(f"certificate chain longer than {MAX_CHAIN_DEPTH}")


# ---- certificateHashData (OCPP CertificateHashDataType) --------------------------------------------


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of element) of the DER element at `offset`."""
    tag = data[offset]
    length = data[offset + 1]
    position = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[position : position + count], "big")
        position += count
    return tag, position, position + length


def public_key_bits(public_key) -> bytes:
    """The subjectPublicKey BIT STRING contents (without the unused-bits byte): what OCSP and OCPP hash
    as the "issuer key hash"."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _, start, _ = _der_element(spki, 0)  # SEQUENCE
    _, _, algorithm_end = _der_element(spki, start)  # AlgorithmIdentifier
    tag, bits_start, bits_end = _der_element(spki, algorithm_end)
    if tag != 0x03:
        raise CertificateError("unexpected SubjectPublicKeyInfo encoding")
    return spki[bits_start + 1 : bits_end]


def hash_data(cert: x509.Certificate, issuer_public_key, algorithm: str = "SHA256") -> dict:
    """CertificateHashDataType (camelCase): hashes of the issuer's DER name and public key, and the serial
    number in hexadecimal without leading zeroes (whitepaper edition 3 clarification)."""
    digest = HASH_ALGORITHMS[algorithm]
    return {
        "hashAlgorithm": algorithm,
        "issuerNameHash": digest(cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": digest(public_key_bits(issuer_public_key)).hexdigest(),
        "serialNumber": format(cert.serial_number, "x"),
    }


def matches_hash_data(cert: x509.Certificate, issuer_public_key, wanted: dict) -> bool:
    algorithm = str(wanted.get("hashAlgorithm", ""))
    if algorithm not in HASH_ALGORITHMS:
        return False
    own = hash_data(cert, issuer_public_key, algorithm)
    return (
        own["issuerNameHash"] == str(wanted.get("issuerNameHash", "")).lower()
        and own["issuerKeyHash"] == str(wanted.get("issuerKeyHash", "")).lower()
        and own["serialNumber"] == str(wanted.get("serialNumber", "")).lower().lstrip("0")
    )


# ---- keys and CSR ---------------------------------------------------------------------------------


def new_private_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256: a TLS 1.2 ECDHE-ECDSA suite the whitepaper requires, and fast to generate on a small board."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes):
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError("the private key is encrypted; give an unencrypted key (file mode 0600)") from None
    except ValueError:
        raise CertificateError("unreadable PEM private key") from None


def same_public_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def make_csr(key, common_name_value: str, organization: str = "") -> str:
    """PEM CSR with Subject O = CpoName and CN = the charge point's identity (whitepaper A00.FR.404/405)."""
    attributes = []
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization[:MAX_ORGANIZATION_NAME]))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name_value[:MAX_COMMON_NAME]))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


# ---- the store ------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write atomically (temporary file, fsync, rename) with exactly `mode`."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CertificateStore:
    """Root certificates by kind and the charge point's own certificate and key, as files."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._client_dir = self.directory / "charge-point"

    def _ensure(self, directory: Path) -> Path:
        """`directory` (the store or one of its folders), created 0700: keys and trust anchors inside."""
        for folder in (self.directory, directory):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(folder, 0o700)
        return directory

    def _root_dir(self, kind: str) -> Path:
        return self.directory / _ROOT_DIRS[kind]

    # -- roots --

    def roots(self, kind: str) -> list[tuple[Path, x509.Certificate]]:
        """Installed roots of one kind, oldest file name order; unreadable files are skipped."""
        directory = self._root_dir(kind)
        found = []
        for path in sorted(directory.glob("*.pem")) if directory.is_dir() else []:
            try:
                found.append((path, load_pem_certificates(path.read_bytes())[0]))
            except (OSError, CertificateError):
                continue
        return found

    def root_certificates(self, kind: str) -> list[x509.Certificate]:
        return [cert for _, cert in self.roots(kind)]

    def count_roots(self) -> int:
        return sum(len(self.roots(kind)) for kind in ROOT_KINDS)

    def has_root(self, kind: str, cert: x509.Certificate) -> bool:
        return (self._root_dir(kind) / f"{fingerprint(cert)}.pem").exists()

    def add_root(self, kind: str, cert: x509.Certificate) -> bool:
        """Install a root; False if it was already installed. Raises OSError."""
        path = self._ensure(self._root_dir(kind)) / f"{fingerprint(cert)}.pem"
        if path.exists():
            return False
        write_file(path, cert.public_bytes(serialization.Encoding.PEM))
        return True

    def remove_root(self, kind: str, cert: x509.Certificate) -> bool:
        path = self._root_dir(kind) / f"{fingerprint(cert)}.pem"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(path.parent)
        return True

    # -- the charge point's certificate --

    @property
    def client_cert_path(self) -> Path:
        return self._client_dir / "cert.pem"

    @property
    def client_key_path(self) -> Path:
        return self._client_dir / "key.pem"

    @property
    def pending_key_path(self) -> Path:
        return self._client_dir / "pending-key.pem"

    def client_paths(self) -> tuple[Path, Path] | None:
        if self.client_cert_path.is_file() and self.client_key_path.is_file():
            return self.client_cert_path, self.client_key_path
        return None

    def client_chain(self) -> list[x509.Certificate] | None:
        try:
            return load_pem_certificates(self.client_cert_path.read_bytes())
        except (OSError, CertificateError):
            return None

    def client_key(self):
        try:
            return load_private_key(self.client_key_path.read_bytes())
        except (OSError, CertificateError):
            return None

    def pending_key(self):
        try:
            return load_private_key(self.pending_key_path.read_bytes())
        except (OSError, CertificateError):
            return None

    def save_pending_key(self, key) -> None:
        self._ensure(self._client_dir)
        write_file(self.pending_key_path, private_key_pem(key), 0o600)

    def install_client(self, chain: list[x509.Certificate], key) -> None:
        """Make `chain` (leaf first) and `key` the charge point certificate; the key is written first, so a
        power cut leaves either the old pair or a new key with the old certificate (profile 3 then fails,
        which the fallback handles), never a certificate without its key."""
        self._ensure(self._client_dir)
        write_file(self.client_key_path, private_key_pem(key), 0o600)
        write_file(self.client_cert_path, to_pem(chain).encode())
        pending = self.pending_key()
        if pending is not None and same_public_key(key.public_key(), pending.public_key()):
            self.pending_key_path.unlink()
