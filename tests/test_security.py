"""Unit tests of agent.ocpp.security and agent.ocpp.security_certs: credentials, redaction, certificateHashData,
chains, CSR, the store, the SecurityManager's rules (profiles, fallback, events) and the [ocpp] settings."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from agent.config import ConfigError, load_config
from agent.ocpp import security
from agent.ocpp import security_certs as certs
from agent.ocpp.v16.config import OcppConfiguration
from agent.station.journal import Journal
from tests.security_pki import issue, make_ca, pem, sign_csr

# ---- credentials ------------------------------------------------------------------------------------------


def test_hex_key_becomes_its_bytes_and_other_keys_stay_text():
    octt = "4F43415F4F4354545F61646D696E5F74657374"  # 38 hex digits: "OCA_OCTT_admin_test"
    assert security.authorization_key_bytes(octt) == b"OCA_OCTT_admin_test"
    assert security.authorization_key_bytes("00" * 16) == bytes(16)  # 32 digits: the shortest key
    assert security.authorization_key_bytes("0" * 33) == b"0" * 33  # odd: text
    assert security.authorization_key_bytes("0123456789abcdef") == b"0123456789abcdef"  # 16: too short
    assert security.authorization_key_bytes("zz" * 16) == b"zz" * 16
    assert security.authorization_key_bytes(octt, "string") == octt.encode()


def test_basic_auth_header_of_a_binary_key():
    # the 1.6 security whitepaper's example: identity AL1000, key 0001020304050607FFFFFFFFFFFFFFFFFFFFFFFF
    key = security.authorization_key_bytes("0001020304050607FFFFFFFFFFFFFFFFFFFFFFFF")
    assert security.basic_auth_header("AL1000", key) == "Basic QUwxMDAwOgABAgMEBQYH////////////////"


@pytest.mark.parametrize("value, ok", [("a" * 15, False), ("a" * 16, True), ("a" * 40, True),
                                       ("a" * 41, False), ("a" * 15 + "\n", False)])
def test_authorization_key_length(value, ok):
    problem = security.authorization_key_problem(value)
    assert (problem is None) == ok
    assert problem is None or value not in problem


# ---- redaction ---------------------------------------------------------------------------------------------


def test_frames_lose_keys_and_certificates_but_nothing_else():
    change = '[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"00112233445566778899"}]'
    assert security.redact_frame(change) == '[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"<hidden>"}]'
    other = '[2,"1","ChangeConfiguration",{"key":"HeartbeatInterval","value":"60"}]'
    assert security.redact_frame(other) == other
    chain = pem(make_ca().cert)
    signed = security.redact_frame(f'[2,"2","CertificateSigned",{{"certificateChain":{chain!r}}}]'.replace("'", '"'))
    assert "BEGIN" not in signed and "<PEM," in signed
    assert "BEGIN" not in security.redact_frame('[2,"3","SignCertificate",{"csr":"-----BEGIN CERTIFICATE REQUEST-----\\nx"}]')
    broken = 'not json "AuthorizationKey","value":"secret-secret-secret" -----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----'
    assert "secret" not in security.redact_frame(broken) and "AA" not in security.redact_frame(broken)
    library = "<Call - payload={'key': 'AuthorizationKey', 'value': 'secret-secret-secret'}>"
    assert "secret" not in security.redact_text(library)


# ---- certificates ----------------------------------------------------------------------------------------


def test_hash_data_follows_the_ocsp_definition():
    root = make_ca(serial=0x00AB)
    ids = certs.hash_data(root.cert, root.key.public_key())
    point = root.key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
    assert ids == {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(root.cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(point).hexdigest(),
        "serialNumber": "ab",
    }
    shouting = {**certs.hash_data(root.cert, root.key.public_key(), "SHA512"), "serialNumber": "00AB"}
    shouting["issuerKeyHash"] = shouting["issuerKeyHash"].upper()
    assert certs.matches_hash_data(root.cert, root.key.public_key(), shouting)
    assert not certs.matches_hash_data(root.cert, root.key.public_key(), {**shouting, "serialNumber": "AC"})
    assert not certs.matches_hash_data(root.cert, root.key.public_key(), {**shouting, "hashAlgorithm": "MD5"})


def test_chain_verification_checks_links_and_validity_as_of_the_time_given():
    now = datetime.now(UTC)  # the test certificates are issued relative to the real clock
    root, other = make_ca("Root"), make_ca("Other")
    intermediate = issue(root, "Sub CA", ca_cert=True)
    leaf = issue(intermediate, "CP-1", client=True)
    certs.verify_chain([leaf.cert, intermediate.cert], [root.cert], now)
    certs.verify_chain([leaf.cert, intermediate.cert, root.cert], [root.cert], now)
    with pytest.raises(certs.CertificateError, match="does not chain"):
        certs.verify_chain([leaf.cert], [root.cert], now)  # intermediate missing
    with pytest.raises(certs.CertificateError, match="does not chain"):
        certs.verify_chain([leaf.cert, intermediate.cert], [other.cert], now)
    expired = issue(root, "CP-1", client=True, not_before=now - timedelta(days=10), days=1)
    with pytest.raises(certs.CertificateError, match="expired"):
        certs.verify_chain([expired.cert], [root.cert], now)
    with pytest.raises(certs.CertificateError, match="expired"):  # the time given counts, not the real clock
        after_expiry = leaf.cert.not_valid_after_utc + timedelta(days=1)
        certs.verify_chain([leaf.cert, intermediate.cert], [root.cert], after_expiry)
    with pytest.raises(certs.CertificateError, match="not valid before"):
        certs.check_root(root.cert, root.cert.not_valid_before_utc - timedelta(seconds=1))
    with pytest.raises(certs.CertificateError, match="not a CA"):
        certs.check_root(leaf.cert, now)
    with pytest.raises(certs.CertificateError, match="self-signed"):
        certs.check_root(intermediate.cert, now)
    certs.check_root(root.cert, now)


def test_csr_subject_and_key():
    key = certs.new_private_key()
    csr = x509.load_pem_x509_csr(certs.make_csr(key, "CP-1", "ACME CPO").encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=CP-1,O=ACME CPO"
    assert certs.same_public_key(csr.public_key(), key.public_key())


def test_store_files_and_modes(tmp_path):
    store = certs.CertificateStore(tmp_path / "certs")
    root = make_ca()
    assert store.add_root(certs.CSMS_ROOT, root.cert) and not store.add_root(certs.CSMS_ROOT, root.cert)
    assert store.root_certificates(certs.CSMS_ROOT) == [root.cert]
    assert store.root_certificates(certs.MANUFACTURER_ROOT) == []
    key = certs.new_private_key()
    store.save_pending_key(key)
    leaf = issue(root, "CP-1", client=True, public_key=key.public_key())
    store.install_client([leaf.cert], key)
    assert not store.pending_key_path.exists()
    assert store.client_key_path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs").stat().st_mode & 0o777 == 0o700
    assert store.client_chain() == [leaf.cert]
    assert store.remove_root(certs.CSMS_ROOT, root.cert) and store.count_roots() == 0


# ---- the manager ---------------------------------------------------------------------------------------------


def write_config(tmp_path: Path, ocpp_lines: str = "", url: str = "ws://127.0.0.1:9000/ocpp") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'[station]\nid = "CP-1"\n[ocpp]\nurl = "{url}"\n{ocpp_lines}\n'
                    '[journal]\npath = "state/journal.sqlite"\n')
    return path


class Station:
    """What Station does with a SecurityManager: reconcile, configuration, persistence."""

    def __init__(self, config_path: Path):
        self.config = load_config(config_path)
        self.journal = Journal(self.config.journal.path)
        self.security = security.SecurityManager(self.config, self.journal)
        self.security.apply_local_settings()
        self.configuration = OcppConfiguration(
            1, initial={**self.config.ocpp_configuration, "SecurityProfile": str(self.config.ocpp.security_profile)},
            stored=self.journal.settings("ocpp."), on_change=self._changed, check_change=self.security.check_change)
        self.security.attach(self.configuration)

    def _changed(self, key: str, value: str) -> None:
        self.journal.set_setting(f"ocpp.{key}", value)
        self.security.configuration_changed(key, value)

    def queued_events(self) -> list[dict]:
        events = []
        while (message := self.journal.next_message()) is not None:
            assert message.action == "SecurityEventNotification"
            events.append(message.payload)
            self.journal.drop_message(message)
        return events

    def close(self) -> None:
        self.journal.close()


@pytest.fixture
def station(tmp_path):
    made: list[Station] = []

    def make(ocpp_lines: str = "", url: str = "ws://127.0.0.1:9000/ocpp") -> Station:
        for old in made:
            old.close()
        made.append(Station(write_config(tmp_path, ocpp_lines, url)))
        return made[-1]

    yield make
    for old in made:
        old.close()


def test_profile_can_only_be_raised_and_needs_its_prerequisites(station, tmp_path):
    st = station('security_profile = 1\npassword = "0123456789abcdef0"')
    assert st.configuration.change("SecurityProfile", "1") == "Rejected"
    assert st.configuration.change("SecurityProfile", "0") == "Rejected"
    assert st.configuration.change("SecurityProfile", "2") == "Rejected"  # no CSMS root
    assert st.security.install_certificate(certs.CSMS_ROOT, make_ca().pem) == "Accepted"
    assert st.configuration.change("SecurityProfile", "3") == "Rejected"  # no charge point certificate
    assert st.configuration.change("SecurityProfile", "2") == "Accepted"
    assert st.security.take_reconnect_request() and not st.security.take_reconnect_request()
    settings = st.security.connection_settings()
    assert settings.url == "wss://127.0.0.1:9000/ocpp/CP-1" and settings.profile == 2
    assert settings.ssl.minimum_version == ssl.TLSVersion.TLSv1_2 and settings.ssl.check_hostname
    assert settings.headers["Authorization"].startswith("Basic ")
    assert "0123456789abcdef0" not in repr(settings)
    assert [e["type"] for e in st.queued_events()] == ["ReconfigurationOfSecurityParameters"]


def test_profile_0_sends_no_events_until_the_csms_uses_the_extension(station):
    st = station()
    st.security.event(security.STARTUP, "started")
    assert st.queued_events() == []
    assert "StartupOfTheDevice started" in st.security.security_log_files()[-1].read_text()
    st.security.csms_uses_security_extension()
    st.security.event(security.STARTUP, "started")
    assert [e["type"] for e in st.queued_events()] == ["StartupOfTheDevice"]


def test_a_failing_upgrade_falls_back(station):
    st = station('security_profile = 1\npassword = "0123456789abcdef0"')
    st.security.install_certificate(certs.CSMS_ROOT, make_ca().pem)
    assert st.configuration.change("SecurityProfile", "2") == "Accepted"
    st.queued_events()
    error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    error.verify_message = "unable to get local issuer certificate"
    for _ in range(security.PROFILE_FALLBACK_ATTEMPTS):
        assert st.security.profile == 2
        st.security.connection_failed(error)
    assert st.security.profile == 1 and st.journal.settings("ocpp.")["SecurityProfile"] == "1"
    events = st.queued_events()
    assert [e["type"] for e in events] == ["InvalidCentralSystemCertificate", "ReconfigurationOfSecurityParameters"]
    assert "back to 1" in events[1]["techInfo"]
    st.security.connection_failed(error)  # same outage, fallback done: nothing more
    assert st.queued_events() == [] and st.security.profile == 1


def test_classification_of_connection_failures():
    unauthorized = InvalidStatus(Response(401, "Unauthorized", Headers()))
    assert security.classify_connection_failure(unauthorized)[0] == security.FAILED_TO_AUTHENTICATE
    wrapped = ConnectionError("handshake")
    wrapped.__cause__ = ssl.SSLCertVerificationError(1, "x")
    wrapped.__cause__.verify_message = "Hostname mismatch"
    kind, info = security.classify_connection_failure(wrapped)
    assert kind == security.INVALID_CSMS_CERTIFICATE and "Hostname mismatch" in info
    version = ssl.SSLError(1, "x")
    version.reason = "TLSV1_ALERT_PROTOCOL_VERSION"
    assert security.classify_connection_failure(version)[0] == security.INVALID_TLS_VERSION
    assert security.classify_connection_failure(ConnectionRefusedError())[0] is None


def _alerting_tls_server(tmp_path: Path, root) -> tuple[socket.socket, int]:
    """A blocking TLS server that requires a client certificate and, unlike asyncio's, sends the TLS alert
    when it refuses one (as nginx and most CSMS front ends do)."""
    cert_path, key_path = issue(root, "csms.test", hosts=("127.0.0.1",)).write(tmp_path, "server")
    (tmp_path / "client-ca.pem").write_text(root.pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cafile=str(tmp_path / "client-ca.pem"))
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            tls = context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
            with contextlib.suppress(OSError), tls:
                try:
                    tls.do_handshake()
                except ssl.SSLError:  # the alert is out: close gently, an RST could overtake it
                    tls.shutdown(socket.SHUT_WR)
                    tls.settimeout(2)
                    while socket.socket.recv(tls, 4096):
                        pass

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


async def test_a_tls_alert_of_the_csms_is_reported_as_such(tmp_path):
    root = make_ca()
    listener, port = _alerting_tls_server(tmp_path, root)
    try:
        with pytest.raises(ssl.SSLError) as refused:
            async with websockets.connect(f"wss://127.0.0.1:{port}/ocpp/CP-1", ssl=security.tls_context(root.pem),
                                          proxy=None, create_connection=security.TlsAwareConnection):
                pass
    finally:
        listener.close()
    assert refused.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    kind, info = security.classify_connection_failure(refused.value, client_certificate=False)
    assert kind == security.FAILED_TO_AUTHENTICATE and "client certificate" in info


def test_local_edits_win_over_the_csms(station, tmp_path):
    st = station('security_profile = 1\npassword = "first-password-123"')
    st.security.install_certificate(certs.CSMS_ROOT, make_ca().pem)
    assert st.configuration.change("SecurityProfile", "2") == "Accepted"
    assert st.configuration.change("AuthorizationKey", "csms-password-456") == "Accepted"
    st = station('security_profile = 1\npassword = "first-password-123"')  # restart, same file
    assert st.security.profile == 2 and st.configuration.get("AuthorizationKey") == "csms-password-456"
    st = station('security_profile = 1\npassword = "edited-password-789"')  # a technician edits the file
    assert st.security.profile == 2 and st.configuration.get("AuthorizationKey") == "edited-password-789"
    st = station('security_profile = 0\npassword = "edited-password-789"')  # ... and the profile
    assert st.security.profile == 0


def test_certificate_management(station):
    st = station('security_profile = 1\npassword = "0123456789abcdef0"\n[ocpp.configuration]\nCpoName = "CPO"')
    root, rogue = make_ca("Root"), make_ca("Rogue")
    assert st.security.install_certificate(certs.CSMS_ROOT, root.pem) == "Accepted"
    assert st.security.install_certificate(certs.CSMS_ROOT, "garbage") == "Rejected"
    assert st.security.install_certificate(certs.CSMS_ROOT, root.pem + rogue.pem) == "Rejected"  # two
    assert st.security.install_certificate(certs.MANUFACTURER_ROOT, issue(root, "leaf").pem) == "Rejected"
    assert [e["type"] for e in st.queued_events()] == ["InvalidCentralSystemCertificate"] * 2
    st.configuration.set_internal("CertificateStoreMaxLength", "1")
    assert st.security.install_certificate(certs.MANUFACTURER_ROOT, rogue.pem) == "Rejected"  # store full
    assert st.security.installed_certificate_ids(certs.CSMS_ROOT) == [certs.hash_data(root.cert, root.cert.public_key())]

    csr = st.security.new_csr()
    assert "O=CPO" in x509.load_pem_x509_csr(csr.encode()).subject.rfc4514_string()
    assert st.security.certificate_signed(pem(sign_csr(rogue, csr))) == "Rejected"
    assert st.security.certificate_signed("x" * 10001) == "Rejected"  # CertificateSignedMaxChainSize
    assert st.security.certificate_signed(pem(sign_csr(root, csr))) == "Accepted"
    assert [e["type"] for e in st.queued_events()] == ["InvalidChargePointCertificate"] * 2
    assert st.configuration.change("SecurityProfile", "3") == "Accepted"
    assert "Authorization" not in st.security.connection_settings().headers

    ids = certs.hash_data(root.cert, root.cert.public_key(), "SHA384")
    st.security._roots_in_use = {certs.fingerprint(root.cert)}
    assert st.security.delete_certificate(ids) == "Failed"
    st.security._roots_in_use = set()
    assert st.security.delete_certificate(ids) == "Accepted"
    assert st.security.delete_certificate(ids) == "NotFound"
    with pytest.raises(security.SecurityConfigError, match="CentralSystemRootCertificate"):
        st.security.connection_settings()


def test_charge_point_certificate_clock_leeway_and_loss(station):
    st = station('security_profile = 1\npassword = "0123456789abcdef0"')
    root = make_ca()
    st.security.install_certificate(certs.CSMS_ROOT, root.pem)
    now = datetime.now(UTC)
    csr = st.security.new_csr()
    assert st.security.certificate_signed(pem(sign_csr(root, csr, not_before=now + timedelta(days=1)))) == "Rejected"
    assert st.security.certificate_signed(pem(sign_csr(root, csr, not_before=now + timedelta(minutes=2)))) == "Accepted"
    assert st.configuration.change("SecurityProfile", "3") == "Rejected"  # not valid yet
    assert st.security.certificate_signed(pem(sign_csr(root, st.security.new_csr()))) == "Accepted"
    assert st.configuration.change("SecurityProfile", "3") == "Accepted"
    st.queued_events()
    st.security.store.client_cert_path.unlink()  # lost (or expired) certificate on profile 3
    with pytest.raises(security.SecurityConfigError) as missing:
        st.security.connection_settings()
    st.security.connection_failed(missing.value)
    assert [e["type"] for e in st.queued_events()] == ["InvalidChargePointCertificate"]


def test_security_log_rolls_over(tmp_path):
    log = security.SecurityLog(tmp_path / "security.log", max_bytes=200)
    for number in range(20):
        log.write("2026-01-01T00:00:00.000Z", "StartupOfTheDevice", f"start {number}")
    files = log.files()
    assert [f.name for f in files] == ["security.log.1", "security.log"]
    assert all(f.stat().st_size <= 200 for f in files)
    assert "start 19" in files[-1].read_text()


# ---- [ocpp] settings --------------------------------------------------------------------------------------


def config_error(tmp_path: Path, ocpp_lines: str, url: str = "ws://127.0.0.1:9000/ocpp") -> str:
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, ocpp_lines, url))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_security_settings_are_validated(tmp_path):
    root = make_ca()
    (tmp_path / "root.pem").write_text(root.pem)
    leaf = issue(root, "CP-1", client=True)
    leaf.write(tmp_path, "cp")
    (tmp_path / "other-key.pem").write_text(issue(root, "x").key_pem)
    assert "must be 0, 1, 2 or 3" in config_error(tmp_path, "security_profile = 4")
    assert "[ocpp] password: required by security_profile 1" in config_error(tmp_path, "security_profile = 1")
    assert "unsecured transport" in config_error(tmp_path, 'security_profile = 1\npassword = "p"',
                                                 url="wss://csms.example/ocpp")
    assert "csms_ca_file: required" in config_error(tmp_path, 'security_profile = 2\npassword = "p"',
                                                    url="wss://csms.example/ocpp")
    assert "give a wss:// url" in config_error(tmp_path, 'security_profile = 2\npassword = "p"\ncsms_ca_file = "root.pem"')
    assert "client_cert_file: required" in config_error(
        tmp_path, 'security_profile = 3\ncsms_ca_file = "root.pem"', url="wss://csms.example/ocpp")
    assert "not a self-signed root" in config_error(tmp_path, 'csms_ca_file = "cp.pem"')
    assert "cannot read" in config_error(tmp_path, 'csms_ca_file = "missing.pem"')
    assert "client_key_file: required together" in config_error(tmp_path, 'client_cert_file = "cp.pem"')
    assert "is not the key" in config_error(tmp_path, 'client_cert_file = "cp.pem"\nclient_key_file = "other-key.pem"')
    assert "hex-decoded" in config_error(tmp_path, 'authorization_key_encoding = "hex"')
    assert "must start with wss://" in config_error(tmp_path, 'tls_url = "ws://x/ocpp"')
    assert "differs from [ocpp.configuration] SecurityProfile" in config_error(
        tmp_path, 'security_profile = 0\n[ocpp.configuration]\nSecurityProfile = 1')
    config = load_config(write_config(
        tmp_path, 'security_profile = 3\ncsms_ca_file = "root.pem"\nclient_cert_file = "cp.pem"\n'
                  'client_key_file = "cp-key.pem"', url="wss://csms.example/ocpp"))
    assert config.ocpp.security_profile == 3 and config.ocpp.client_key_file == tmp_path / "cp-key.pem"
