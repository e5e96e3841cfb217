"""Firmware updates, diagnostics and logs end to end: the agent process against the bundled CSMS, with a
real HTTP server (and an FTP server when pyftpdlib is installed) on 127.0.0.1 serving the firmware and
receiving the uploads, and an install hook script that records what it was given.

OCTT 1.6 test case ids (chapter 2, "SUT Charge Point") are given where a test follows one.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import io
import json
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from agent.ocpp.security_certs import MANUFACTURER_ROOT
from agent.station.firmware_signing import certificate_store
from hil.csms import LocalCsms
from tests.agent_harness import STATION_ID, TAG_2, TAG_OK, Agent, calls_since, charge, wait_call, write_config

pytestmark = pytest.mark.slow

PAST = "2020-01-01T00:00:00.000Z"
FIRMWARE = b"EVSE-FIRMWARE-IMAGE\x00" + bytes(range(256)) * 64
OCPP_PASSWORD = "S3cret-Basic-Pass"
TRICKLE_PAUSE_S = 0.2


# ---- a file server ---------------------------------------------------------------------------------


@dataclass
class Upload:
    method: str
    path: str
    content_type: str
    body: bytes

    def file(self) -> tuple[str, bytes]:
        """(file name, content) of a multipart/form-data upload, or of a plain PUT."""
        if self.method == "PUT":
            return self.path.rsplit("/", 1)[-1], self.body
        message = email.message_from_bytes(
            f"Content-Type: {self.content_type}\r\n\r\n".encode() + self.body, policy=email.policy.HTTP)
        part = next(iter(message.iter_parts()))
        return part.get_filename(), part.get_payload(decode=True)


@dataclass
class FileServer:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    uploads: list[Upload] = field(default_factory=list)
    fail_uploads: bool = False
    trickle: set[str] = field(default_factory=set)  # paths served one byte every TRICKLE_PAUSE_S
    stopped: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str) -> int:
        return sum(1 for method, p in self.requests if method == "GET" and p == path)


@pytest.fixture
def http_server():
    state = FileServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            state.requests.append(("GET", self.path))
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path not in state.trickle:
                self.wfile.write(body)
                return
            for byte in body:  # a server that never stalls long enough for a read timeout
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return
                if state.stopped.wait(TRICKLE_PAUSE_S):
                    return

        def do_POST(self):
            self._upload("POST")

        def do_PUT(self):
            self._upload("PUT")

        def _upload(self, method: str):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append((method, self.path))
            if state.fail_uploads:
                self.send_error(500)
                return
            state.uploads.append(Upload(method, self.path, self.headers.get("Content-Type", ""), body))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    state.stopped.set()
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- certificates and signatures ---------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Manufacturer"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_certificate(common_name: str, key, issuer: tuple | None = None, ca: bool = False) -> x509.Certificate:
    """Self-signed when `issuer` is None, else signed by issuer = (certificate, key)."""
    now = datetime.now(UTC)
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(common_name), key)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(issuer_key, hashes.SHA256())


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def sign(key, data: bytes) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


@dataclass
class Pki:
    root: x509.Certificate
    signer: x509.Certificate
    signer_key: object


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_certificate("Manufacturer Root", root_key, ca=True)
    signer_key = ec.generate_private_key(ec.SECP256R1())
    signer = make_certificate("Firmware Signing", signer_key, issuer=(root, root_key))
    return Pki(root, signer, signer_key)


# ---- the agent ---------------------------------------------------------------------------------------


@pytest.fixture
def hook(tmp_path):
    """Factory: the argv of an install hook that records its file and environment, then exits `code`."""

    def make(code: int = 0) -> list[str]:
        script = tmp_path / "install-hook.sh"
        script.write_text(f"""#!/bin/sh
cp "$1" "{tmp_path}/installed.bin"
echo "$EVSE_FIRMWARE_SIGNED $EVSE_FIRMWARE_SHA256" > "{tmp_path}/hook-env"
echo "hook: installing $1"
exit {code}
""")
        script.chmod(0o755)
        return [str(script), "{file}"]

    return make


@pytest.fixture
async def start(tmp_path):
    """Factory: `agent = await start(csms, hook=argv, connectors=n, roots=[cert])`: an agent with the install
    hook in its board config, manufacturer roots installed, registered and reporting every connector."""
    agents: list[Agent] = []

    async def factory(csms: LocalCsms, *, hook: list[str] | None = None, connectors: int = 1,
                      roots: tuple = (), config_extra: str = "") -> Agent:
        config = write_config(tmp_path, csms.url, connectors=connectors)
        config.write_text(config.read_text().replace("[ocpp]\n", f'[ocpp]\npassword = "{OCPP_PASSWORD}"\n', 1)
                          + config_extra)
        if hook is not None:
            board = tmp_path / "board.toml"
            board.write_text(board.read_text().replace(
                'backend = "sim"\n', f'backend = "sim"\nfirmware_install_command = {json.dumps(hook)}\n', 1))
        for root in roots:
            certificate_store(tmp_path / "state").add_root(MANUFACTURER_ROOT, root)
        agent = Agent(tmp_path, config)
        agents.append(agent)
        agent.start()
        await agent.ready()
        await wait_call(csms, "StatusNotification", where=lambda p: p["connectorId"] == connectors)
        return agent

    yield factory
    for agent in agents:
        agent.cleanup()


@pytest.fixture(autouse=True)
def _station_keeps_to_the_protocol(csms):
    yield
    assert csms.violations == [], f"the station broke the protocol: {csms.violations}"


async def call(csms: LocalCsms, action: str, payload: dict) -> dict:
    return await csms.call(STATION_ID, action, payload)


def statuses(csms: LocalCsms, action: str, since: int) -> list[str]:
    return [frame.payload["status"] for frame in calls_since(csms, action, since)]


async def final_status(csms: LocalCsms, action: str, since: int, final: set[str], timeout: float = 15.0):
    return await wait_call(csms, action, since, lambda p: p["status"] in final, timeout)


def archive(upload: Upload) -> tuple[str, dict[str, bytes]]:
    name, content = upload.file()
    with zipfile.ZipFile(io.BytesIO(content)) as zipped:
        return name, {member: zipped.read(member) for member in zipped.namelist()}


FIRMWARE_FINAL = {"Installed", "InstallationFailed", "DownloadFailed"}


# ---- UpdateFirmware ------------------------------------------------------------------------------------


async def test_update_firmware_downloads_installs_and_reports_installed_after_the_restart(
        csms, start, hook, http_server, tmp_path):
    """TC_044_1_CS: Downloading, Downloaded, Installing; the hook gets the file; the agent restarts in place
    (BootNotification) and reports Installed; a triggered FirmwareStatusNotification is Idle afterwards."""
    http_server.files["/fw/evse-1.2.bin"] = FIRMWARE
    agent = await start(csms, hook=hook(0))
    keys = await call(csms, "GetConfiguration", {"key": ["SupportedFileTransferProtocols",
                                                         "SupportedFeatureProfiles"]})
    values = {entry["key"]: entry for entry in keys["configurationKey"]}
    assert values["SupportedFileTransferProtocols"] == {
        "key": "SupportedFileTransferProtocols", "readonly": True, "value": "FTP,HTTP,HTTPS"}
    assert "FirmwareManagement" in values["SupportedFeatureProfiles"]["value"].split(",")
    mark = len(csms.frames)

    assert await call(csms, "UpdateFirmware", {"location": http_server.url("/fw/evse-1.2.bin"),
                                               "retrieveDate": PAST, "retries": 1, "retryInterval": 1}) == {}

    installed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL, timeout=20)
    assert installed.payload == {"status": "Installed"}, agent.log_tail()
    assert statuses(csms, "FirmwareStatusNotification", mark) == ["Downloading", "Downloaded", "Installing",
                                                                   "Installed"]
    installing = await wait_call(csms, "FirmwareStatusNotification", mark, lambda p: p["status"] == "Installing")
    boot = await wait_call(csms, "BootNotification", mark)
    assert installing.index < boot.index < installed.index  # restarted in place, then reported
    assert (tmp_path / "installed.bin").read_bytes() == FIRMWARE
    assert (tmp_path / "hook-env").read_text().split()[0] == "0"  # not a signed update
    assert http_server.gets("/fw/evse-1.2.bin") == 1
    assert not list((tmp_path / "state" / "firmware").glob("*"))  # cleaned at the new start

    await agent.ready()
    mark = len(csms.frames)
    assert await call(csms, "TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}) == {
        "status": "Accepted"}
    assert (await wait_call(csms, "FirmwareStatusNotification", mark)).payload == {"status": "Idle"}
    assert len(calls_since(csms, "FirmwareStatusNotification", 0, lambda p: p["status"] == "Installed")) == 1


async def test_download_failures_are_retried_then_reported_download_failed(csms, start, hook, http_server,
                                                                          tmp_path):
    """TC_044_2_CS: a 404 and a refused connection, each retried `retries` times retryInterval apart, then
    DownloadFailed; the hook never runs and no partial file stays behind."""
    agent = await start(csms, hook=hook(0))
    for location in (http_server.url("/fw/missing.bin"), f"http://127.0.0.1:{closed_port()}/fw.bin"):
        mark = len(csms.frames)
        began = asyncio.get_running_loop().time()
        await call(csms, "UpdateFirmware", {"location": location, "retrieveDate": PAST, "retries": 2,
                                            "retryInterval": 1})
        failed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL)
        assert failed.payload == {"status": "DownloadFailed"}, agent.log_tail()
        assert asyncio.get_running_loop().time() - began >= 2  # two retries, one second apart
        assert statuses(csms, "FirmwareStatusNotification", mark) == ["Downloading", "DownloadFailed"]
    assert http_server.gets("/fw/missing.bin") == 3  # one attempt and two retries
    assert "attempt 3 of 3 failed" in agent.log_path.read_text()
    assert not (tmp_path / "installed.bin").exists()
    assert not list((tmp_path / "state" / "firmware").glob("*"))
    status = await agent.status()
    assert status["firmware"]["firmware"]["status"] == "DownloadFailed"
    assert not status["firmware"]["firmware"]["inProgress"]


async def test_a_trickling_firmware_server_fails_the_download_by_its_deadline(csms, start, hook, http_server,
                                                                             tmp_path):
    """Issue 9 C6: one byte every 0.2 s never trips the 30 s read timeout; the download's total deadline
    ([transfer] firmware_deadline_s) ends it: DownloadFailed, no file left, the station serves on."""
    http_server.files["/slow.bin"] = FIRMWARE
    http_server.trickle.add("/slow.bin")
    agent = await start(csms, hook=hook(0), config_extra="[transfer]\nfirmware_deadline_s = 2\n")
    mark = len(csms.frames)
    await call(csms, "UpdateFirmware", {"location": http_server.url("/slow.bin"), "retrieveDate": PAST,
                                        "retries": 0})
    failed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL, timeout=60)
    assert failed.payload == {"status": "DownloadFailed"}, agent.log_tail()
    assert "not finished within its deadline of 2 s" in agent.log_path.read_text()
    assert not (tmp_path / "installed.bin").exists()
    assert not list((tmp_path / "state" / "firmware").glob("*"))
    assert (await agent.connector())["status"] == "Available"


async def test_a_failing_install_hook_is_reported_installation_failed(csms, start, hook, http_server, tmp_path):
    """TC_044_3_CS: the hook exits non-zero: Installing, InstallationFailed; the connector, Unavailable
    while installing, is Available again and the agent did not restart."""
    http_server.files["/fw.bin"] = FIRMWARE
    agent = await start(csms, hook=hook(1))
    mark = len(csms.frames)

    await call(csms, "UpdateFirmware", {"location": http_server.url("/fw.bin"), "retrieveDate": PAST})

    failed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL)
    assert failed.payload == {"status": "InstallationFailed"}
    assert statuses(csms, "FirmwareStatusNotification", mark) == ["Downloading", "Downloaded", "Installing",
                                                                   "InstallationFailed"]
    assert (tmp_path / "installed.bin").read_bytes() == FIRMWARE  # the hook ran
    unavailable = await wait_call(csms, "StatusNotification", mark,
                                  lambda p: p["connectorId"] == 1 and p["status"] == "Unavailable")
    available = await wait_call(csms, "StatusNotification", unavailable.index,
                                lambda p: p["connectorId"] == 1 and p["status"] == "Available")
    assert available.index > failed.index
    assert calls_since(csms, "BootNotification", mark) == []
    assert "install hook failed with exit code 1" in agent.log_path.read_text()


async def test_without_an_install_hook_the_update_ends_in_installation_failed(csms, start, http_server):
    """The agent never replaces itself: no firmware_install_command, no installation (clear log line)."""
    http_server.files["/fw.bin"] = FIRMWARE
    agent = await start(csms)
    mark = len(csms.frames)
    await call(csms, "UpdateFirmware", {"location": http_server.url("/fw.bin"), "retrieveDate": PAST})
    failed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL)
    assert failed.payload == {"status": "InstallationFailed"}
    assert "no [board] firmware_install_command" in agent.log_path.read_text()


async def test_an_update_waits_for_the_running_session_and_lets_no_new_one_start(
        csms, start, hook, http_server, tmp_path):
    """During a session the update downloads but installs only after StopTransaction; meanwhile the idle
    connector is Unavailable (a RemoteStart on it is Rejected) and the busy one follows when it ends."""
    http_server.files["/fw.bin"] = FIRMWARE
    agent = await start(csms, hook=hook(0), connectors=2)
    await charge(agent, csms, TAG_OK, connector=1)
    await agent.wait_connector(lambda c: c["transaction_id"] is not None, what="transaction id")
    mark = len(csms.frames)

    await call(csms, "UpdateFirmware", {"location": http_server.url("/fw.bin"), "retrieveDate": PAST})

    await wait_call(csms, "FirmwareStatusNotification", mark, lambda p: p["status"] == "Downloaded")
    await wait_call(csms, "StatusNotification", mark, lambda p: p["connectorId"] == 2 and p["status"] == "Unavailable")
    assert await call(csms, "RemoteStartTransaction", {"idTag": TAG_2, "connectorId": 2}) == {"status": "Rejected"}
    await asyncio.sleep(1.0)
    assert "Installing" not in statuses(csms, "FirmwareStatusNotification", mark)
    assert (await agent.connector(1))["status"] == "Charging"
    assert not (tmp_path / "installed.bin").exists()

    assert (await agent.cmd("stop", connector=1))["stopped"]

    stop = await wait_call(csms, "StopTransaction", mark)
    installing = await wait_call(csms, "FirmwareStatusNotification", mark, lambda p: p["status"] == "Installing")
    assert stop.index < installing.index
    await wait_call(csms, "StatusNotification", mark, lambda p: p["connectorId"] == 1 and p["status"] == "Unavailable")
    installed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL, timeout=20)
    assert installed.payload == {"status": "Installed"}
    assert len(calls_since(csms, "StartTransaction", mark)) == 0
    assert (tmp_path / "installed.bin").read_bytes() == FIRMWARE


# ---- GetDiagnostics --------------------------------------------------------------------------------------


async def test_get_diagnostics_uploads_an_archive_without_secrets(csms, start, http_server):
    """TC_045_1_CS: the conf names the file; Uploading, Uploaded; the server receives that file, a zip of
    status, configuration and log lines, with no password in it."""
    agent = await start(csms)
    mark = len(csms.frames)

    answer = await call(csms, "GetDiagnostics", {"location": http_server.url("/diagnostics/"), "retries": 1,
                                                 "retryInterval": 1})

    assert answer["fileName"].startswith(f"{STATION_ID}-diagnostics-") and answer["fileName"].endswith(".zip")
    done = await final_status(csms, "DiagnosticsStatusNotification", mark, {"Uploaded", "UploadFailed"})
    assert done.payload == {"status": "Uploaded"}, agent.log_tail()
    assert statuses(csms, "DiagnosticsStatusNotification", mark) == ["Uploading", "Uploaded"]
    [upload] = http_server.uploads
    assert upload.method == "POST" and upload.path == "/diagnostics/"
    name, files = archive(upload)
    assert name == answer["fileName"]
    assert {"status.json", "configuration.json", "agent.log", "firmware.json", "system.txt"} <= files.keys()
    assert json.loads(files["status.json"])["station"]["id"] == STATION_ID
    keys = {entry["key"] for entry in json.loads(files["configuration.json"])}
    assert "HeartbeatInterval" in keys and "AuthorizationKey" not in keys
    assert b"BootNotification" in files["agent.log"]
    assert OCPP_PASSWORD.encode() not in upload.body
    assert not list((agent.workdir / "state" / "diagnostics").glob("*"))  # the archive is not kept

    mark = len(csms.frames)
    await call(csms, "TriggerMessage", {"requestedMessage": "DiagnosticsStatusNotification"})
    assert (await wait_call(csms, "DiagnosticsStatusNotification", mark)).payload == {"status": "Idle"}


async def test_a_failing_diagnostics_upload_is_retried_then_reported_upload_failed(csms, start, http_server):
    """TC_045_2_CS: the server refuses the upload: retried, then UploadFailed."""
    agent = await start(csms)
    http_server.fail_uploads = True
    mark = len(csms.frames)

    await call(csms, "GetDiagnostics", {"location": http_server.url("/diagnostics/"), "retries": 1,
                                        "retryInterval": 1})

    done = await final_status(csms, "DiagnosticsStatusNotification", mark, {"Uploaded", "UploadFailed"})
    assert done.payload == {"status": "UploadFailed"}, agent.log_tail()
    assert statuses(csms, "DiagnosticsStatusNotification", mark) == ["Uploading", "UploadFailed"]
    assert [method for method, _ in http_server.requests] == ["POST", "POST"]


# ---- FTP -------------------------------------------------------------------------------------------------


@pytest.fixture
def ftp_server(tmp_path):
    pytest.importorskip("pyftpdlib", reason="pyftpdlib is not installed: no FTP server to test against")
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    root = tmp_path / "ftp"
    (root / "firmware").mkdir(parents=True)
    (root / "uploads").mkdir()
    authorizer = DummyAuthorizer()
    authorizer.add_user("evse", "ftp-Passw0rd", str(root), perm="elradfmwMT")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
    server = FTPServer(("127.0.0.1", 0), handler)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield root, f"ftp://evse:ftp-Passw0rd@127.0.0.1:{server.address[1]}"
    stop.set()
    thread.join(5)


async def test_firmware_download_and_diagnostics_upload_over_ftp(csms, start, hook, ftp_server, tmp_path):
    """SupportedFileTransferProtocols FTP: RETR of the firmware, STOR of the diagnostics into the location's
    directory; the FTP password never appears in the agent's log."""
    root, base = ftp_server
    (root / "firmware" / "fw.bin").write_bytes(FIRMWARE)
    agent = await start(csms, hook=hook(0))
    mark = len(csms.frames)

    answer = await call(csms, "GetDiagnostics", {"location": f"{base}/uploads"})
    done = await final_status(csms, "DiagnosticsStatusNotification", mark, {"Uploaded", "UploadFailed"})
    assert done.payload == {"status": "Uploaded"}, agent.log_tail()
    with zipfile.ZipFile(root / "uploads" / answer["fileName"]) as zipped:
        assert "status.json" in zipped.namelist()

    await call(csms, "UpdateFirmware", {"location": f"{base}/firmware/fw.bin", "retrieveDate": PAST})
    installed = await final_status(csms, "FirmwareStatusNotification", mark, FIRMWARE_FINAL, timeout=20)
    assert installed.payload == {"status": "Installed"}, agent.log_tail()
    assert (tmp_path / "installed.bin").read_bytes() == FIRMWARE
    # the agent's own lines; the debug lines of OCPP frames are agent.ocpp.security's redact_frame's business
    own_lines = [line for line in agent.log_path.read_text().splitlines() if "evse.ocpp.frames" not in line]
    assert "ftp-Passw0rd" not in "\n".join(own_lines)
    assert "evse:***@127.0.0.1" in "\n".join(own_lines)


# ---- SignedUpdateFirmware --------------------------------------------------------------------------------


def signed_request(location: str, certificate: x509.Certificate, signature: str, request_id: int = 42) -> dict:
    return {"requestId": request_id, "retries": 1, "retryInterval": 1, "firmware": {
        "location": location, "retrieveDateTime": PAST, "installDateTime": PAST,
        "signingCertificate": pem(certificate), "signature": signature}}


def wrapped_like_openssl_base64(text: str) -> str:
    """`openssl base64` output: 64 characters a line, each line ended by a newline."""
    return "".join(text[i:i + 64] + "\n" for i in range(0, len(text), 64))


@pytest.mark.parametrize("layout", ["one line", "wrapped by openssl base64"])
async def test_signed_firmware_with_a_valid_signature_is_verified_and_installed(
        csms, start, hook, http_server, pki, tmp_path, layout):
    """TC_080_CS: Accepted; Downloading, Downloaded, SignatureVerified, Installing, InstallRebooting, then
    after the restart Installed, every one with the requestId. Issue 9 C10: also with the signature as
    `openssl base64` line-wraps it."""
    http_server.files["/signed.bin"] = FIRMWARE
    agent = await start(csms, hook=hook(0), roots=(pki.root,))
    mark = len(csms.frames)
    signature = sign(pki.signer_key, FIRMWARE)
    if layout != "one line":
        signature = wrapped_like_openssl_base64(signature)
        assert "\n" in signature.strip()

    answer = await call(csms, "SignedUpdateFirmware", signed_request(
        http_server.url("/signed.bin"), pki.signer, signature))

    assert answer == {"status": "Accepted"}
    installed = await final_status(csms, "SignedFirmwareStatusNotification", mark,
                                   FIRMWARE_FINAL | {"InvalidSignature"}, timeout=20)
    assert installed.payload == {"status": "Installed", "requestId": 42}, agent.log_tail()
    frames = calls_since(csms, "SignedFirmwareStatusNotification", mark)
    assert [f.payload["status"] for f in frames] == [
        "Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting", "Installed"]
    assert all(f.payload["requestId"] == 42 for f in frames)
    assert frames[-2].index < (await wait_call(csms, "BootNotification", mark)).index < frames[-1].index
    assert (tmp_path / "installed.bin").read_bytes() == FIRMWARE
    assert (tmp_path / "hook-env").read_text().split()[0] == "1"
    assert calls_since(csms, "SecurityEventNotification", mark, lambda p: p["type"].startswith("InvalidFirmware")) == []
    updated = await wait_call(csms, "SecurityEventNotification", mark, lambda p: p["type"] == "FirmwareUpdated")
    assert "request 42" in updated.payload["techInfo"]


async def test_an_install_hook_that_rejects_the_image_gives_install_verification_failed(
        csms, start, hook, http_server, pki):
    """A signed update whose hook exits 3 (the image failed the hook's own check): InstallVerificationFailed,
    no restart."""
    http_server.files["/signed.bin"] = FIRMWARE
    await start(csms, hook=hook(3), roots=(pki.root,))
    mark = len(csms.frames)
    await call(csms, "SignedUpdateFirmware", signed_request(
        http_server.url("/signed.bin"), pki.signer, sign(pki.signer_key, FIRMWARE), request_id=9))
    done = await final_status(csms, "SignedFirmwareStatusNotification", mark, FIRMWARE_FINAL | {
        "InvalidSignature", "InstallVerificationFailed"})
    assert done.payload == {"status": "InstallVerificationFailed", "requestId": 9}
    assert calls_since(csms, "BootNotification", mark) == []


async def test_signed_firmware_with_a_bad_signature_is_not_installed(csms, start, hook, http_server, tmp_path):
    """TC_081_CS: the file does not match the signature (an RSA signing certificate here): Downloading,
    Downloaded, InvalidSignature, SecurityEventNotification InvalidFirmwareSignature; the hook never runs."""
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = make_certificate("RSA Manufacturer Root", root_key, ca=True)
    signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = make_certificate("RSA Firmware Signing", signer_key, issuer=(root, root_key))
    http_server.files["/signed.bin"] = FIRMWARE
    agent = await start(csms, hook=hook(0), roots=(root,))
    mark = len(csms.frames)

    answer = await call(csms, "SignedUpdateFirmware", signed_request(
        http_server.url("/signed.bin"), signer, sign(signer_key, FIRMWARE + b"tampered"), request_id=7))

    assert answer == {"status": "Accepted"}
    await final_status(csms, "SignedFirmwareStatusNotification", mark, FIRMWARE_FINAL | {"InvalidSignature"})
    event = await wait_call(csms, "SecurityEventNotification", mark, lambda p: p["type"] != "StartupOfTheDevice")
    assert event.payload["type"] == "InvalidFirmwareSignature"
    assert [(f.payload["status"], f.payload["requestId"])
            for f in calls_since(csms, "SignedFirmwareStatusNotification", mark)] == [
        ("Downloading", 7), ("Downloaded", 7), ("InvalidSignature", 7)]
    assert not (tmp_path / "installed.bin").exists()
    assert not list((tmp_path / "state" / "firmware").glob("*"))
    assert "InvalidFirmwareSignature" in agent.log_path.read_text()


async def test_an_untrusted_signing_certificate_is_refused_and_reported(csms, start, hook, http_server, pki):
    """SignedUpdateFirmware signed by a certificate of another root: InvalidCertificate, nothing downloaded,
    SecurityEventNotification InvalidFirmwareSigningCertificate; then GetLog SecurityLog (TC_079_CS) and
    GetLog DiagnosticsLog upload their logs: Accepted with a filename, Uploading, Uploaded with requestId."""
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = make_certificate("Someone Else's Root", other_key, ca=True)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = make_certificate("Rogue Signer", rogue_key, issuer=(other_root, other_key))
    http_server.files["/signed.bin"] = FIRMWARE
    agent = await start(csms, hook=hook(0), roots=(pki.root,))
    mark = len(csms.frames)

    answer = await call(csms, "SignedUpdateFirmware", signed_request(
        http_server.url("/signed.bin"), rogue, sign(rogue_key, FIRMWARE)))

    assert answer == {"status": "InvalidCertificate"}
    event = await wait_call(csms, "SecurityEventNotification", mark, lambda p: p["type"] != "StartupOfTheDevice")
    assert event.payload["type"] == "InvalidFirmwareSigningCertificate"
    assert event.index > next(f.index for f in csms.frames[mark:] if f.action == "SignedUpdateFirmware"
                              and f.direction == "in")  # after the answer
    await asyncio.sleep(0.5)
    assert http_server.gets("/signed.bin") == 0
    assert calls_since(csms, "SignedFirmwareStatusNotification", mark) == []

    for request_id, log_type, member in ((11, "SecurityLog", "security.log"), (12, "DiagnosticsLog", "agent.log")):
        mark = len(csms.frames)
        answer = await call(csms, "GetLog", {"logType": log_type, "requestId": request_id, "retries": 1,
                                             "retryInterval": 1, "log": {
                                                 "remoteLocation": http_server.url("/logs/"),
                                                 "oldestTimestamp": PAST}})
        assert answer["status"] == "Accepted" and answer["filename"].endswith(".zip")
        done = await final_status(csms, "LogStatusNotification", mark, {"Uploaded", "UploadFailure"})
        assert done.payload == {"status": "Uploaded", "requestId": request_id}, agent.log_tail()
        assert [(f.payload["status"], f.payload["requestId"]) for f in calls_since(
            csms, "LogStatusNotification", mark)] == [("Uploading", request_id), ("Uploaded", request_id)]
        name, files = archive(http_server.uploads[-1])
        assert name == answer["filename"] and member in files
        assert OCPP_PASSWORD.encode() not in http_server.uploads[-1].body
        assert b"BEGIN CERTIFICATE" not in http_server.uploads[-1].body
    security_log = archive(http_server.uploads[0])[1]["security.log"].decode()
    assert "InvalidFirmwareSigningCertificate" in security_log
    assert "BootNotification" not in security_log  # only security lines


async def test_scheduled_signed_update_reports_its_status_again_after_a_reconnect(csms, start, http_server, pki):
    """retrieveDateTime and installDateTime in the future: DownloadScheduled, repeated after a reconnect and
    reported by ExtendedTriggerMessage; later InstallScheduled, and without an install hook
    InstallationFailed. Idle once nothing runs."""
    http_server.files["/signed.bin"] = FIRMWARE
    agent = await start(csms, roots=(pki.root,))
    now = datetime.now(UTC)
    # the download must still be scheduled after the reconnect and the ExtendedTriggerMessage below: on a
    # loaded machine those take seconds, so the retrieve date leaves room for them
    retrieve, install = now + timedelta(seconds=6), now + timedelta(seconds=7.5)
    request = signed_request(http_server.url("/signed.bin"), pki.signer, sign(pki.signer_key, FIRMWARE), 5)
    request["firmware"]["retrieveDateTime"] = retrieve.isoformat()
    request["firmware"]["installDateTime"] = install.isoformat()
    mark = len(csms.frames)

    assert await call(csms, "SignedUpdateFirmware", request) == {"status": "Accepted"}
    await wait_call(csms, "SignedFirmwareStatusNotification", mark, lambda p: p["status"] == "DownloadScheduled")
    reconnect = len(csms.frames)
    await csms.disconnect(STATION_ID)
    again = await wait_call(csms, "SignedFirmwareStatusNotification", reconnect)
    assert again.payload == {"status": "DownloadScheduled", "requestId": 5}
    assert calls_since(csms, "BootNotification", reconnect) == []
    trigger = len(csms.frames)
    assert await call(csms, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"}) == {
        "status": "Accepted"}
    triggered = await wait_call(csms, "SignedFirmwareStatusNotification", trigger)
    assert triggered.payload == {"status": "DownloadScheduled", "requestId": 5}

    done = await final_status(csms, "SignedFirmwareStatusNotification", mark, FIRMWARE_FINAL | {"InvalidSignature"})
    assert done.payload == {"status": "InstallationFailed", "requestId": 5}, agent.log_tail()
    assert statuses(csms, "SignedFirmwareStatusNotification", reconnect)[-5:] == ["Downloaded", "SignatureVerified", "InstallScheduled", "Installing",
                             "InstallationFailed"]
    installing = next(f for f in calls_since(csms, "SignedFirmwareStatusNotification", mark)
                      if f.payload["status"] == "Installing")
    assert installing.time >= install

    trigger = len(csms.frames)
    await call(csms, "ExtendedTriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
    assert (await wait_call(csms, "SignedFirmwareStatusNotification", trigger)).payload == {"status": "Idle"}
    trigger = len(csms.frames)
    await call(csms, "ExtendedTriggerMessage", {"requestedMessage": "LogStatusNotification"})
    assert (await wait_call(csms, "LogStatusNotification", trigger)).payload == {"status": "Idle"}


# ---- agent.ocpp.transfer on its own -------------------------------------------------------------------------


def test_downloads_stop_at_the_size_limit_and_leave_no_partial_file(http_server, tmp_path):
    """The size limit (an announced Content-Length beyond it fails before the body is read), no .part file
    after a failure, the SHA-256 of what was stored, and only ftp/http/https URLs."""
    from agent.ocpp import transfer

    http_server.files["/fw.bin"] = FIRMWARE
    dest = tmp_path / "dl" / "fw.bin"
    with pytest.raises(transfer.TransferError, match="limit"):
        transfer.download(http_server.url("/fw.bin"), dest, max_bytes=len(FIRMWARE) - 1)
    assert not list(dest.parent.iterdir())
    with pytest.raises(transfer.TransferError, match="HTTP 404"):
        transfer.download(http_server.url("/nothing"), dest, max_bytes=10**6)
    assert not list(dest.parent.iterdir())
    size, digest = transfer.download(http_server.url("/fw.bin"), dest, max_bytes=len(FIRMWARE))
    assert (size, digest) == (len(FIRMWARE), hashlib.sha256(FIRMWARE).hexdigest())
    assert [p.name for p in dest.parent.iterdir()] == ["fw.bin"]
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/x", "http:///no-host"):
        with pytest.raises(transfer.TransferError):
            transfer.download(url, tmp_path / "x", max_bytes=10**6)
    assert transfer.redact("ftp://user:secret@host:21/dir") == "ftp://user:***@host:21/dir"


def test_the_board_config_names_the_install_hook_and_the_download_limit(tmp_path):
    from hal.board import BoardConfigError, load_board

    board_file = tmp_path / "board.toml"
    base = '[board]\nname = "b"\nbackend = "sim"\n{extra}\n[[connectors]]\nid = 1\nmax_current_a = 16.0\n' \
           'phases = 3\ncable = "socket"\n'
    board_file.write_text(base.format(extra=""))
    board = load_board(board_file)
    assert board.firmware_install_command is None and board.firmware_max_download_bytes == 200 * 1024 * 1024
    board_file.write_text(base.format(
        extra='firmware_install_command = ["/usr/sbin/hook", "{file}"]\nfirmware_max_download_mb = 16'))
    board = load_board(board_file)
    assert board.firmware_install_command == ["/usr/sbin/hook", "{file}"]
    assert board.firmware_max_download_bytes == 16 * 1024 * 1024
    board_file.write_text(base.format(extra='firmware_install_command = "/usr/sbin/hook"'))
    with pytest.raises(BoardConfigError, match=r"\[board\]\.firmware_install_command: expected a non-empty array"):
        load_board(board_file)


def test_a_signature_is_read_as_standard_base64_with_or_without_line_breaks(pki, tmp_path):
    """Issue 9 C10: `openssl base64` wraps at 64 characters (CRLF from some tools); anything that is not
    base64 stays refused, and a wrapped signature of other data still does not match."""
    from agent.station.firmware_signing import SignatureError, verify_signature

    image = tmp_path / "fw.bin"
    image.write_bytes(FIRMWARE)
    signature = sign(pki.signer_key, FIRMWARE)
    for layout in (signature, wrapped_like_openssl_base64(signature),
                   wrapped_like_openssl_base64(signature).replace("\n", "\r\n"), f"  {signature[:40]}\n\t{signature[40:]} "):
        verify_signature(pki.signer, image, layout)
    for bad in (signature[:-4] + "!!!!", signature.replace(signature[10], "*"), "\u00e9" + signature):
        with pytest.raises(SignatureError, match="not base64"):
            verify_signature(pki.signer, image, bad)
    with pytest.raises(SignatureError, match="empty"):
        verify_signature(pki.signer, image, " \n")
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(pki.signer, image, wrapped_like_openssl_base64(sign(pki.signer_key, b"other")))
