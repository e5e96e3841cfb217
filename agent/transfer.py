"""File transfers for firmware and diagnostics: download to a file, upload a file; HTTP, HTTPS and FTP.

Blocking functions, meant to run in a worker thread (asyncio.to_thread). Each takes a
threading.Event that cancels it between two blocks, so an abandoned transfer ends within one
socket timeout at most.

* download() writes `<dest>.part`, flushes it to disk and renames it to `dest` only when it is
  complete; a failed or cancelled download leaves no file behind. It refuses more than `max_bytes`
  (an announced Content-Length beyond the limit fails before the body is read) and returns the
  size and SHA-256 of what it stored.
* upload() sends one file: HTTP(S) as a multipart/form-data POST (field "file"), or as a plain PUT
  when the server refuses POST (405/501); FTP with STOR into the location's directory.
* Only the schemes in SUPPORTED_SCHEMES: never file:// or other local access through a URL the
  CSMS chose. No proxy from the environment is used, like the OCPP connection itself.
* redact() removes the user:password part of a URL; every log line and error message goes through it.
"""

from __future__ import annotations

import contextlib
import ftplib
import hashlib
import os
import posixpath
import secrets
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

SUPPORTED_SCHEMES = ("ftp", "http", "https")
# the OCPP SupportedFileTransferProtocols value (errata 3.x, CSL)
SUPPORTED_PROTOCOLS = "FTP,HTTP,HTTPS"
BLOCK_SIZE = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0
USER_AGENT = "evse-agent"


class TransferError(Exception):
    """A download or upload failed; the message is safe to log (no credentials)."""


class TransferCancelled(TransferError):
    pass


def redact(url: str) -> str:
    """`url` without the password of its user-info part (ftp://user:secret@host/x -> ftp://user:***@host/x)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"))


def check_url(url: str) -> str:
    """The URL's scheme, lower case; TransferError for one we do not support or a URL without a host."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise TransferError(f"not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        raise TransferError(f"unsupported transfer protocol {scheme or '(none)'!r} (supported: {SUPPORTED_PROTOCOLS})")
    if not parts.hostname:
        raise TransferError(f"no host in {redact(url)}")
    return scheme


def _opener(ssl_context: ssl.SSLContext | None) -> urllib.request.OpenerDirector:
    handlers: list = [urllib.request.ProxyHandler({})]
    if ssl_context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
    return urllib.request.build_opener(*handlers)


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise TransferCancelled("cancelled")


# ---- download ------------------------------------------------------------------------------------


def download(url: str, dest: Path, *, max_bytes: int, timeout: float = DEFAULT_TIMEOUT_S,
             cancel: threading.Event | None = None, ssl_context: ssl.SSLContext | None = None
             ) -> tuple[int, str]:
    """Fetch `url` into `dest`; returns (size in bytes, SHA-256 hex). Raises TransferError."""
    scheme = check_url(url)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(part, "wb") as out:
            if scheme == "ftp":
                size, digest = _ftp_download(url, out, max_bytes, timeout, cancel)
            else:
                size, digest = _http_download(url, out, max_bytes, timeout, cancel, ssl_context)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, dest)
    except TransferError:
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:  # the local disk (full, read-only) or a socket error not mapped below
        part.unlink(missing_ok=True)
        raise TransferError(f"download of {redact(url)} failed: {exc.strerror or exc}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return size, digest


class _Sink:
    """Counts, hashes and writes blocks; enforces the size limit and the cancel flag."""

    def __init__(self, out, max_bytes: int, cancel: threading.Event | None):
        self.out = out
        self.max_bytes = max_bytes
        self.cancel = cancel
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, block: bytes) -> None:
        _check(self.cancel)
        self.size += len(block)
        if self.size > self.max_bytes:
            raise TransferError(f"the file is larger than the limit of {self.max_bytes} bytes")
        self.sha256.update(block)
        self.out.write(block)


@contextlib.contextmanager
def _http_errors(url: str):
    """urllib's and the socket's errors as a TransferError naming the (redacted) URL."""
    try:
        yield
    except urllib.error.HTTPError as exc:
        raise TransferError(f"{redact(url)}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise TransferError(f"{redact(url)}: {exc.reason}") from None
    except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
        raise TransferError(f"{redact(url)}: {type(exc).__name__}: {exc}") from None


def _http_download(url, out, max_bytes, timeout, cancel, ssl_context) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with _http_errors(url), _opener(ssl_context).open(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise TransferError(f"{redact(url)} announces {length} bytes, more than the limit of {max_bytes}")
        sink = _Sink(out, max_bytes, cancel)
        while block := response.read(BLOCK_SIZE):
            sink.write(block)
        if length and length.isdigit() and sink.size != int(length):
            raise TransferError(f"{redact(url)}: got {sink.size} of {length} bytes")
    return sink.size, sink.sha256.hexdigest()


def _ftp_parts(url: str) -> tuple[str, int, str, str, str]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else "anonymous"
    password = unquote(parts.password) if parts.password else ("anonymous@" if user == "anonymous" else "")
    return parts.hostname or "", parts.port or 21, user, password, unquote(parts.path)


def _ftp_connect(url: str, timeout: float) -> tuple[ftplib.FTP, str]:
    host, port, user, password, path = _ftp_parts(url)
    ftp = ftplib.FTP(timeout=timeout)
    try:
        ftp.connect(host, port)
        ftp.login(user, password)
        ftp.voidcmd("TYPE I")
    except BaseException:
        ftp.close()
        raise
    return ftp, path


def _ftp_download(url, out, max_bytes, timeout, cancel) -> tuple[int, str]:
    sink = _Sink(out, max_bytes, cancel)
    try:
        ftp, path = _ftp_connect(url, timeout)
        try:
            ftp.retrbinary(f"RETR {path}", sink.write, blocksize=BLOCK_SIZE)
        finally:
            ftp.close()
    except ftplib.all_errors as exc:
        if isinstance(exc, TransferError):
            raise
        raise TransferError(f"{redact(url)}: FTP: {exc}") from None
    return sink.size, sink.sha256.hexdigest()


# ---- upload --------------------------------------------------------------------------------------


def upload(url: str, path: Path, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
           cancel: threading.Event | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
    """Send the file at `path` to the location `url` (a directory, for FTP) under `name` (default: the
    file's own name). Raises TransferError."""
    scheme = check_url(url)
    path = Path(path)
    name = name or path.name
    try:
        if scheme == "ftp":
            _ftp_upload(url, path, name, timeout, cancel)
        else:
            _http_upload(url, path, name, timeout, cancel, ssl_context)
    except TransferError:
        raise
    except OSError as exc:
        raise TransferError(f"upload to {redact(url)} failed: {exc.strerror or exc}") from None


def _http_upload(url, path: Path, name: str, timeout, cancel, ssl_context) -> None:
    _check(cancel)
    data = path.read_bytes()  # diagnostics archives are small (bounded log buffer)
    boundary = "evse-" + secrets.token_hex(16)
    body = b"".join([
        f"--{boundary}\r\n".encode(),
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'.encode(),
        b"Content-Type: application/octet-stream\r\n\r\n",
        data,
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    post = urllib.request.Request(url, data=body, method="POST", headers={
        "User-Agent": USER_AGENT, "Content-Type": f"multipart/form-data; boundary={boundary}"})
    opener = _opener(ssl_context)
    with _http_errors(url):
        try:
            with opener.open(post, timeout=timeout) as response:
                response.read()
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in (405, 501):
                raise
        _check(cancel)
        target = url + name if url.endswith("/") else url
        put = urllib.request.Request(target, data=data, method="PUT", headers={
            "User-Agent": USER_AGENT, "Content-Type": "application/octet-stream"})
        with opener.open(put, timeout=timeout) as response:
            response.read()


def _ftp_upload(url, path: Path, name: str, timeout, cancel) -> None:
    def progress(_block: bytes) -> None:
        _check(cancel)

    try:
        ftp, directory = _ftp_connect(url, timeout)
        try:
            directory = posixpath.normpath(directory) if directory not in ("", "/") else ""
            if directory:
                ftp.cwd(directory)
            with open(path, "rb") as src:
                ftp.storbinary(f"STOR {name}", src, blocksize=BLOCK_SIZE, callback=progress)
        finally:
            ftp.close()
    except ftplib.all_errors as exc:
        if isinstance(exc, TransferError):
            raise
        raise TransferError(f"{redact(url)}: FTP: {exc}") from None
