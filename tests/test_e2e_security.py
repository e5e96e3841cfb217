"""End to end: OCPP 1.6 security profiles 1-3 and the security whitepaper's certificate management, the
real agent process against LocalCsms on 127.0.0.1 with real TLS (certificates made by tests.security_pki).

OCTT 1.6 cases covered: TC_073 (new AuthorizationKey), TC_074 (CSR and CertificateSigned on request),
TC_075_1/2 (InstallCertificate), TC_076 (DeleteCertificate), TC_077 (invalid charge point certificate),
TC_078 (invalid CSMS certificate event after reconnect), TC_083 (upgrade), TC_084 (downgrade rejected),
TC_085 (Basic auth), TC_086 (server certificate), TC_087 (client certificate).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.ocpp import security_certs as certs
from hil.csms import LocalCsms
from tests.agent_harness import STATION_ID, Agent, registered, wait_call, write_config
from tests.security_pki import issue, load_server_cert, make_ca, pem, server_context, sign_csr

pytestmark = pytest.mark.slow

KEY_OCTT = "4F43415F4F4354545F61646D696E5F74657374"  # "OCA_OCTT_admin_test" hex-encoded (OCTT TC_073)
KEY_HEX20 = "00112233445566778899AABBCCDDEEFF01234567"  # a random 20-byte key as 40 hex digits
KEY_TEXT = "plain-Text-key-2024"  # not hex: sent as it is
PASSWORD = "station-password-77"
CPO = "Test CPO"
LOCALHOST = ("127.0.0.1", "localhost")


# ---- helpers ---------------------------------------------------------------------------------------


def configure(workdir: Path, url: str, *, profile: int, password: str | None = None, ca=None, client=None,
              tls_url: str | None = None, keys: dict | None = None) -> Path:
    """The harness config plus [ocpp] security settings; certificates are written next to it."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir, url, ocpp_keys=keys)
    lines = [f"security_profile = {profile}"]
    if password is not None:
        lines.append(f'password = "{password}"')
    if tls_url:
        lines.append(f'tls_url = "{tls_url}"')
    if ca is not None:
        (workdir / "csms-root.pem").write_text(ca.pem)
        lines.append('csms_ca_file = "csms-root.pem"')
    if client is not None:
        client.write(workdir, "cp")
        lines += ['client_cert_file = "cp.pem"', 'client_key_file = "cp-key.pem"']
    text = config.read_text().replace("[ocpp]\n", "[ocpp]\n" + "\n".join(lines) + "\n", 1)
    config.write_text(text)
    return config


@pytest.fixture
def agents():
    started: list[Agent] = []

    async def start(workdir: Path, config: Path) -> Agent:
        agent = Agent(workdir, config)
        agent.start()
        await agent.ready()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.cleanup()


@pytest.fixture
async def servers():
    """Factory for LocalCsms instances (plain or TLS), all stopped at the end."""
    running: list[LocalCsms] = []

    async def start(**kwargs) -> LocalCsms:
        server = LocalCsms(boot_interval=60, **kwargs)
        await server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop()


def accepted_handshakes(csms: LocalCsms, since: int = 0) -> list:
    return [h for h in csms.handshakes[since:] if h.accepted]


async def wait_handshake(csms: LocalCsms, since: int, predicate=lambda h: True, timeout: float = 10.0):
    await csms.wait_until(lambda: any(predicate(h) for h in csms.handshakes[since:]), timeout,
                          "a matching handshake")
    return next(h for h in csms.handshakes[since:] if predicate(h))


async def security_event(csms: LocalCsms, kind: str, since: int = 0, timeout: float = 10.0, info: str = ""):
    """The first SecurityEventNotification of `kind` (whose techInfo contains `info`) from `since` on.
    Delivery is at least once: an event whose answer was lost in a disconnection comes again."""
    frame = await wait_call(csms, "SecurityEventNotification", since, timeout=timeout,
                            where=lambda p: p["type"] == kind and info in p.get("techInfo", ""))
    assert frame.payload["timestamp"].endswith("Z")
    return frame


async def change(csms: LocalCsms, key: str, value: str) -> str:
    return (await csms.call(STATION_ID, "ChangeConfiguration", {"key": key, "value": value}))["status"]


async def get_configuration(csms: LocalCsms, keys: list[str] | None = None) -> tuple[dict, list]:
    answer = await csms.call(STATION_ID, "GetConfiguration", {"key": keys} if keys else {})
    return {e["key"]: e.get("value") for e in answer.get("configurationKey", [])}, answer.get("unknownKey", [])


def pem_lines(text: str) -> list[str]:
    """The base64 lines of a PEM text: none of them may appear in a log."""
    return [line for line in text.splitlines() if line and not line.startswith("-----")]


def assert_log_clean(agent: Agent, *secrets: str) -> None:
    log = agent.log_path.read_text()
    for secret in secrets:
        assert secret not in log, f"secret {secret[:8]}... in {agent.log_path}"
    assert "PRIVATE KEY-----" not in log and "BEGIN CERTIFICATE-----" not in log


def hash_ids(cert) -> dict:
    return certs.hash_data(cert, cert.public_key())


# ---- profile 1: Basic auth over ws:// ---------------------------------------------------------------------


async def test_profile_1_basic_auth_key_changes_and_no_downgrade(tmp_path, servers, agents):
    """TC_085 (hex key sent as its bytes), TC_073 (two new keys, reconnect with each), TC_084 and
    GetConfiguration never returning AuthorizationKey."""
    csms = await servers(basic_auth={STATION_ID: bytes.fromhex(KEY_OCTT)})
    agent = await agents(tmp_path, configure(tmp_path, csms.url, profile=1, password=KEY_OCTT))
    await csms.wait_connected(STATION_ID)
    assert csms.handshakes[-1].auth == "ok" and not csms.handshakes[-1].tls
    assert (await agent.status())["ocpp"]["security_profile"] == 1
    await security_event(csms, "StartupOfTheDevice")

    values, unknown = await get_configuration(csms)
    assert "AuthorizationKey" not in values and values["SecurityProfile"] == "1"
    values, unknown = await get_configuration(csms, ["AuthorizationKey", "SecurityProfile"])
    assert values == {"SecurityProfile": "1"} and "AuthorizationKey" not in unknown

    async def trigger(message: str, connector: int | None = None) -> str:
        payload = {"requestedMessage": message, **({"connectorId": connector} if connector else {})}
        return (await csms.call(STATION_ID, "ExtendedTriggerMessage", payload))["status"]

    for message, connector, answer in (("Heartbeat", None, "Heartbeat"),
                                       ("StatusNotification", 1, "StatusNotification"),
                                       ("MeterValues", 1, None),  # no reading yet: nothing to send
                                       ("FirmwareStatusNotification", None, "SignedFirmwareStatusNotification"),
                                       ("LogStatusNotification", None, "LogStatusNotification")):
        frames = len(csms.frames)
        assert await trigger(message, connector) == "Accepted"
        if answer:
            frame = await wait_call(csms, answer, frames)
            assert frame.payload.get("status", "Idle") == "Idle" or answer == "StatusNotification"
    assert await trigger("BootNotification") == "Rejected"  # already registered, as TriggerMessage
    assert await trigger("StatusNotification", 7) == "Rejected"  # no such connector

    assert await change(csms, "SecurityProfile", "1") == "Rejected"  # TC_084: equal
    assert await change(csms, "SecurityProfile", "0") == "Rejected"  # TC_084: lower
    assert await change(csms, "AuthorizationKey", "too-short") == "Rejected"

    for new_key, expected in ((KEY_HEX20, bytes.fromhex(KEY_HEX20)), (KEY_TEXT, KEY_TEXT.encode())):
        since, frames = len(csms.handshakes), len(csms.frames)
        csms.basic_auth[STATION_ID] = expected  # what the CSMS stores when it sends the new key
        assert await change(csms, "AuthorizationKey", new_key) == "Accepted"
        handshake = await wait_handshake(csms, since)  # the agent hung up and came back at once
        assert handshake.auth == "ok", csms.handshakes[since:]
        await csms.wait_connected(STATION_ID)
        await security_event(csms, "ReconfigurationOfSecurityParameters", frames)
    assert all(h.auth == "ok" for h in csms.handshakes)  # never tried an old or wrongly encoded key

    await agent.terminate()
    assert_log_clean(agent, KEY_OCTT, KEY_HEX20, KEY_TEXT, "OCA_OCTT_admin_test",
                     base64.b64encode(f"{STATION_ID}:{KEY_TEXT}".encode()).decode())


async def test_wrong_password_is_refused_and_reported_after_reconnect(tmp_path, servers, agents):
    """HTTP 401: the status shows it, the agent keeps retrying, and the FailedToAuthenticateAtCentralSystem
    event raised while offline is delivered (once) when the connection works again."""
    csms = await servers(basic_auth={STATION_ID: "the-right-password"})
    agent = await agents(tmp_path, configure(tmp_path, csms.url, profile=1, password=PASSWORD))
    status = await agent.wait_status(lambda s: "401" in (s["ocpp"]["last_error"] or ""), what="HTTP 401")
    assert not status["ocpp"]["connected"]
    await csms.wait_until(lambda: len([h for h in csms.handshakes if h.auth == "wrong"]) >= 3, 10, "retries")
    assert not csms.is_connected(STATION_ID)

    refused_at = datetime.now(UTC)
    csms.basic_auth[STATION_ID] = PASSWORD  # the operator fixes the CSMS side
    await csms.wait_connected(STATION_ID, timeout=10)
    event = await security_event(csms, "FailedToAuthenticateAtCentralSystem")
    assert "401" in event.payload["techInfo"]
    assert datetime.fromisoformat(event.payload["timestamp"]) < refused_at  # raised offline, sent later
    assert len(csms.calls("SecurityEventNotification")) >= 2  # with StartupOfTheDevice
    failed = [f for f in csms.calls("SecurityEventNotification")
              if f.payload["type"] == "FailedToAuthenticateAtCentralSystem"]
    assert len(failed) == 1  # one per outage, not one per attempt
    assert (await agent.status())["ocpp"]["last_error"] is None
    await agent.terminate()
    assert_log_clean(agent, PASSWORD)


# ---- profile 2: TLS + Basic auth ----------------------------------------------------------------------


async def test_profile_2_tls_certificate_checks_and_root_management(tmp_path, servers, agents):
    """TC_086 (valid server certificate), TC_078 (untrusted server certificate -> event after the
    reconnect), wrong host name, TC_075_1/2 (InstallCertificate), TC_076 (DeleteCertificate, not the root
    in use), GetInstalledCertificateIds."""
    root, rogue, other_root, maker_root = make_ca("CSMS Root"), make_ca("Rogue Root"), make_ca("CSMS Root 2"), \
        make_ca("Manufacturer Root")
    good = issue(root, "csms.test", hosts=LOCALHOST)
    untrusted = issue(rogue, "csms.test", hosts=LOCALHOST)
    wrong_host = issue(root, "csms.example", hosts=("csms.example",))
    context = server_context(tmp_path, good)
    csms = await servers(ssl_context=context, basic_auth={STATION_ID: PASSWORD})
    assert csms.url.startswith("wss://")
    agent = await agents(tmp_path, configure(tmp_path, csms.url, profile=2, password=PASSWORD, ca=root))
    await csms.wait_connected(STATION_ID)
    assert csms.handshakes[-1].tls and csms.handshakes[-1].auth == "ok"
    status = await agent.status()
    assert status["ocpp"]["security_profile"] == 2 and status["ocpp"]["url"].startswith("wss://127.0.0.1:")

    # TC_078 and a certificate for another host: refused, reported once the right certificate is back
    for bad, expected_error, reason in ((untrusted, "certificate verify failed", "unable to get local issuer"),
                                        (wrong_host, "mismatch", "mismatch")):
        frames = len(csms.frames)
        load_server_cert(context, tmp_path, bad)
        await csms.disconnect(STATION_ID)
        await agent.wait_status(lambda s, e=expected_error: e in (s["ocpp"]["last_error"] or ""),
                                what=expected_error)
        load_server_cert(context, tmp_path, good)
        await csms.wait_connected(STATION_ID)
        await security_event(csms, "InvalidCentralSystemCertificate", frames, info=reason)

    # GetInstalledCertificateIds / InstallCertificate / DeleteCertificate
    async def installed(kind: str) -> tuple[str, list]:
        answer = await csms.call(STATION_ID, "GetInstalledCertificateIds", {"certificateType": kind})
        return answer["status"], answer.get("certificateHashData", [])

    assert await installed("CentralSystemRootCertificate") == ("Accepted", [hash_ids(root.cert)])
    assert (await installed("ManufacturerRootCertificate"))[0] == "NotFound"

    async def install(kind: str, certificate: str) -> str:
        answer = await csms.call(STATION_ID, "InstallCertificate", {"certificateType": kind, "certificate": certificate})
        return answer["status"]

    assert await install("ManufacturerRootCertificate", maker_root.pem) == "Accepted"  # TC_075_1
    assert await installed("ManufacturerRootCertificate") == ("Accepted", [hash_ids(maker_root.cert)])
    assert await install("CentralSystemRootCertificate", other_root.pem) == "Accepted"  # TC_075_2
    assert await install("CentralSystemRootCertificate", other_root.pem) == "Accepted"  # again: no duplicate
    status, ids = await installed("CentralSystemRootCertificate")
    assert status == "Accepted" and sorted(map(str, ids)) == sorted(map(str, [hash_ids(root.cert),
                                                                            hash_ids(other_root.cert)]))
    frames = len(csms.frames)
    assert await install("CentralSystemRootCertificate", good.pem) == "Rejected"  # not a CA
    assert await install("CentralSystemRootCertificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") == "Rejected"
    await security_event(csms, "InvalidCentralSystemCertificate", frames)

    async def delete(ids: dict) -> str:
        return (await csms.call(STATION_ID, "DeleteCertificate", {"certificateHashData": ids}))["status"]

    assert await delete(certs.hash_data(other_root.cert, other_root.cert.public_key(), "SHA384")) == "Accepted"
    assert await installed("CentralSystemRootCertificate") == ("Accepted", [hash_ids(root.cert)])  # TC_076
    assert await delete(hash_ids(other_root.cert)) == "NotFound"
    assert await delete(hash_ids(root.cert)) == "Failed"  # validates the open connection
    assert await delete(hash_ids(maker_root.cert)) == "Accepted"
    assert csms.is_connected(STATION_ID)
    await agent.terminate()
    assert_log_clean(agent, PASSWORD, *pem_lines(maker_root.pem)[:2], *pem_lines(other_root.pem)[:2])


# ---- profile 3: certificates ---------------------------------------------------------------------------


async def test_csr_certificate_signed_and_upgrade_to_profile_3(tmp_path, servers, agents):
    """TC_074 (ExtendedTriggerMessage -> SignCertificate with a CSR made on the station; CertificateSigned),
    TC_077 (invalid certificate: Rejected + InvalidChargePointCertificate), TC_083 (2 -> 3 once the
    certificate is there), TC_087 (mutual TLS with it), TC_084 (no way back to 2)."""
    root, rogue = make_ca("CSMS Root"), make_ca("Rogue Root")
    context = server_context(tmp_path, issue(root, "csms.test", hosts=LOCALHOST), client_ca=root)
    csms = await servers(ssl_context=context, basic_auth={STATION_ID: PASSWORD})
    agent = await agents(tmp_path, configure(tmp_path, csms.url, profile=2, password=PASSWORD, ca=root,
                                             keys={"CpoName": CPO}))
    await csms.wait_connected(STATION_ID)
    # registered before the first command: the agent drops a follow-up message (SignCertificate) that a
    # command queued before its BootNotification was accepted
    await registered(agent)
    assert csms.handshakes[-1].client_cert is None
    assert await change(csms, "SecurityProfile", "3") == "Rejected"  # no charge point certificate yet

    async def request_csr() -> str:
        since = len(csms.frames)
        answer = await csms.call(STATION_ID, "ExtendedTriggerMessage",
                                 {"requestedMessage": "SignChargePointCertificate"})
        assert answer["status"] == "Accepted"
        return (await wait_call(csms, "SignCertificate", since)).payload["csr"]

    async def certificate_signed(chain: str) -> str:
        return (await csms.call(STATION_ID, "CertificateSigned", {"certificateChain": chain}))["status"]

    csr_pem = await request_csr()
    from cryptography import x509

    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.subject.rfc4514_string() == f"CN={STATION_ID},O={CPO}"  # A00.FR.404/405

    frames = len(csms.frames)
    assert await certificate_signed(pem(sign_csr(rogue, csr_pem))) == "Rejected"  # TC_077
    event = await security_event(csms, "InvalidChargePointCertificate", frames)
    assert "does not chain" in event.payload["techInfo"]
    other_key = issue(root, STATION_ID, organization=CPO, client=True)  # valid, but not our key
    assert await certificate_signed(other_key.pem) == "Rejected"

    signed = sign_csr(root, csr_pem)
    assert await certificate_signed(pem(signed)) == "Accepted"  # TC_074 (profile 2: no reconnect needed)

    since = len(csms.handshakes)
    assert await change(csms, "SecurityProfile", "3") == "Accepted"  # TC_083
    handshake = await wait_handshake(csms, since, lambda h: h.accepted)
    assert handshake.client_cert["commonName"] == STATION_ID  # TC_087
    assert handshake.client_cert["organizationName"] == CPO
    assert int(handshake.client_cert["serialNumber"], 16) == signed.serial_number
    assert handshake.auth == "certificate"  # no Basic auth on profile 3
    await csms.wait_connected(STATION_ID)
    assert (await agent.status())["ocpp"]["security_profile"] == 3
    assert await change(csms, "SecurityProfile", "2") == "Rejected"  # TC_084

    # TC_074 on profile 3: the renewed certificate is used on the reconnection that follows
    renewed = sign_csr(root, await request_csr())
    since = len(csms.handshakes)
    assert await certificate_signed(pem(renewed)) == "Accepted"
    handshake = await wait_handshake(csms, since, lambda h: h.accepted)
    assert int(handshake.client_cert["serialNumber"], 16) == renewed.serial_number

    key_pem = (tmp_path / "state" / "certs" / "charge-point" / "key.pem").read_text()
    assert (tmp_path / "state" / "certs" / "charge-point" / "key.pem").stat().st_mode & 0o777 == 0o600
    await agent.terminate()
    assert_log_clean(agent, PASSWORD, *pem_lines(key_pem), *pem_lines(csr_pem)[:3], *pem_lines(pem(renewed))[:3])


async def test_profile_3_is_refused_without_a_trusted_client_certificate(tmp_path, servers, agents):
    """A CSMS that requires client certificates refuses a station without one (profile 2) and one whose
    certificate it does not trust; the same station connects once the right certificate is configured,
    and reports the refusal then (the event survived the restart in the journal)."""
    root, rogue = make_ca("CSMS Root"), make_ca("Rogue Root")
    context = server_context(tmp_path, issue(root, "csms.test", hosts=LOCALHOST), client_ca=root,
                             require_client_cert=True)
    csms = await servers(ssl_context=context, basic_auth={STATION_ID: PASSWORD})

    # asyncio's TLS server drops a refused handshake without a TLS alert: the agent sees the connection
    # closed before the HTTP answer (a server that sends the alert is covered in test_security.py)
    refused = "did not receive a valid HTTP response"
    no_cert = await agents(tmp_path / "p2", configure(tmp_path / "p2", csms.url, profile=2, password=PASSWORD,
                                                      ca=root))
    await no_cert.wait_status(lambda s: refused in (s["ocpp"]["last_error"] or ""), what="TLS refusal")
    await csms.wait_until(lambda: len(csms.handshakes) == 0 and no_cert.proc.poll() is None, 1)
    await no_cert.terminate()

    workdir = tmp_path / "p3"
    untrusted = issue(rogue, STATION_ID, organization=CPO, client=True)
    config = configure(workdir, csms.url, profile=3, ca=root, client=untrusted)
    agent = await agents(workdir, config)
    await agent.wait_status(lambda s: refused in (s["ocpp"]["last_error"] or ""), what="TLS refusal")
    assert not csms.is_connected(STATION_ID)
    await agent.terminate()

    trusted = issue(root, STATION_ID, organization=CPO, client=True)
    configure(workdir, csms.url, profile=3, ca=root, client=trusted)  # a technician installs the right one
    agent = await agents(workdir, config)
    await csms.wait_connected(STATION_ID)
    assert csms.handshakes[-1].client_cert["commonName"] == STATION_ID
    event = await security_event(csms, "FailedToAuthenticateAtCentralSystem")
    assert "client certificate" in event.payload["techInfo"]
    await agent.terminate()
    assert_log_clean(agent, *pem_lines(trusted.key_pem), *pem_lines(trusted.pem)[:3])


# ---- upgrade 1 -> 2 and fallback ---------------------------------------------------------------------


async def test_upgrade_to_profile_2_after_installing_the_root_with_fallback(tmp_path, servers, agents):
    """TC_083: SecurityProfile 2 is Rejected until a CSMS root is installed; an upgrade whose TLS
    connection fails falls back to profile 1 after three attempts (with a security event); with the right
    root the upgrade sticks."""
    root, rogue = make_ca("CSMS Root"), make_ca("Rogue Root")
    plain = await servers(basic_auth={STATION_ID: PASSWORD})
    tls = await servers(ssl_context=server_context(tmp_path, issue(root, "csms.test", hosts=LOCALHOST)),
                        basic_auth={STATION_ID: PASSWORD}, assume_booted=True)
    agent = await agents(tmp_path, configure(tmp_path, plain.url, profile=1, password=PASSWORD,
                                             tls_url=tls.url))
    await plain.wait_connected(STATION_ID)

    async def install_root(cert_pem: str) -> None:
        answer = await plain.call(STATION_ID, "InstallCertificate",
                                  {"certificateType": "CentralSystemRootCertificate", "certificate": cert_pem})
        assert answer["status"] == "Accepted"

    assert await change(plain, "SecurityProfile", "2") == "Rejected"  # no CSMS root installed
    await install_root(rogue.pem)  # the wrong one
    frames = len(plain.frames)
    assert await change(plain, "SecurityProfile", "2") == "Accepted"
    await plain.wait_disconnected(STATION_ID)
    await plain.wait_connected(STATION_ID, timeout=15)  # back on profile 1
    types = [f.payload["type"] for f in await _events_until(plain, frames, "back to 1")]
    assert "InvalidCentralSystemCertificate" in types
    values, _ = await get_configuration(plain, ["SecurityProfile"])
    assert values == {"SecurityProfile": "1"}
    assert not accepted_handshakes(tls)

    await install_root(root.pem)
    assert await change(plain, "SecurityProfile", "2") == "Accepted"
    await tls.wait_connected(STATION_ID)
    assert tls.handshakes[-1].tls and tls.handshakes[-1].auth == "ok"
    values, _ = await get_configuration(tls, ["SecurityProfile"])
    assert values == {"SecurityProfile": "2"}
    assert (await agent.status())["ocpp"]["security_profile"] == 2
    await agent.terminate()
    assert_log_clean(agent, PASSWORD)


async def _events_until(csms: LocalCsms, since: int, tech_info_part: str) -> list:
    """SecurityEventNotifications from `since` up to the one whose techInfo contains `tech_info_part`."""
    await security_event(csms, "ReconfigurationOfSecurityParameters", since)
    await wait_call(csms, "SecurityEventNotification", since,
                    where=lambda p: tech_info_part in p.get("techInfo", ""), timeout=15)
    return [f for f in csms.calls("SecurityEventNotification") if f.index >= since]


async def test_certificate_about_to_expire_is_renewed_by_the_station(tmp_path, servers, agents):
    """A profile-3 station whose certificate expires within [ocpp] certificate_renewal_days (30) sends
    SignCertificate on its own after registering, once (not again on the next start within a day); the
    CSMS's CertificateSigned is installed and the next connection presents the new certificate."""
    root = make_ca("CSMS Root")
    context = server_context(tmp_path, issue(root, "csms.test", hosts=LOCALHOST), client_ca=root,
                             require_client_cert=True)
    csms = await servers(ssl_context=context)
    expiring = issue(root, STATION_ID, organization=CPO, client=True, days=10)
    config = configure(tmp_path, csms.url, profile=3, ca=root, client=expiring, keys={"CpoName": CPO})
    agent = await agents(tmp_path, config)
    csr_pem = (await wait_call(csms, "SignCertificate")).payload["csr"]
    assert "expires on" in agent.log_tail(200) and "asking the CSMS to sign a new one" in agent.log_tail(200)

    await agent.terminate()  # restarted within the day: no second request
    agent.start()
    since = len(csms.frames)
    await csms.wait_connected(STATION_ID)
    # the renewal check runs as the session starts: a request would be queued behind the boot statuses
    await wait_call(csms, "StatusNotification", since, lambda p: p["connectorId"] == 1)
    await get_configuration(csms, ["CpoName"])
    assert [f for f in csms.frames[since:] if f.action == "SignCertificate"] == []

    renewed = sign_csr(root, csr_pem, days=365)
    since = len(csms.handshakes)
    answer = await csms.call(STATION_ID, "CertificateSigned", {"certificateChain": pem(renewed)})
    assert answer == {"status": "Accepted"}
    handshake = await wait_handshake(csms, since, lambda h: h.accepted)
    assert int(handshake.client_cert["serialNumber"], 16) == renewed.serial_number


def test_renewal_is_due_within_the_configured_days_and_asked_once_a_day(tmp_path):
    """certificate_renewal_due with an injected clock: not due 31 days before expiry, due 29 days before,
    quiet for a day after a request, due again after it; never with certificate_renewal_days = 0."""
    from agent.config import load_config
    from agent.ocpp.security import SecurityManager
    from agent.station.journal import Journal

    root = make_ca("CSMS Root")
    cert = issue(root, STATION_ID, organization=CPO, client=True, days=90)
    config = configure(tmp_path, "wss://127.0.0.1:1/ocpp", profile=3, ca=root, client=cert)
    expires = cert.cert.not_valid_after_utc
    for renewal_days, due_at_29 in ((30, True), (0, False)):
        text = config.read_text().replace("[ocpp]\n", f"[ocpp]\ncertificate_renewal_days = {renewal_days}\n", 1)
        config.write_text(text)
        loaded = load_config(config)
        journal = Journal(loaded.journal.path)
        security = SecurityManager(loaded, journal)
        security.apply_local_settings()  # imports the configured certificate into the store
        assert security.certificate_renewal_due(expires - timedelta(days=31)) is None
        due = security.certificate_renewal_due(expires - timedelta(days=29))
        assert (due is not None) is due_at_29
        if due_at_29:
            assert f"expires on {expires:%Y-%m-%d}" in due
            asked = expires - timedelta(days=29)
            security.certificate_renewal_requested(asked)
            assert security.certificate_renewal_due(asked + timedelta(hours=23)) is None
            assert security.certificate_renewal_due(asked + timedelta(hours=25)) is not None
            assert "expired on" in security.certificate_renewal_due(expires + timedelta(days=1))
        journal.close()
        config.write_text(config.read_text().replace(f"certificate_renewal_days = {renewal_days}\n", "", 1))
