"""File transfers for firmware and diagnostics: download to a file, upload a file; HTTP, HTTPS and FTP.

Blocking functions, run by `await run(download, ...)` in this module's own worker threads (at most
TRANSFER_WORKERS, used by nothing else: a transfer never holds a thread of the event loop's default
executor, which the devices' reads need). Each transfer has a total deadline: when it passes (or the
threading.Event `cancel` is set) its sockets are shut down, so a blocked read returns at once and the
transfer fails with TransferError. A server that sends a byte every few seconds defeats a read timeout
(`timeout`, the longest wait for one byte) but not the deadline.

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

import asyncio
import contextlib
import ftplib
import functools
import hashlib
import http.client
import os
import posixpath
import secrets
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

SUPPORTED_SCHEMES = ("ftp", "http", "https")
# the OCPP SupportedFileTransferProtocols value (errata 3.x, CSL)
SUPPORTED_PROTOCOLS = "FTP,HTTP,HTTPS"
BLOCK_SIZE = 64 * 1024
DEFAULT_TIMEOUT_S = 30.0  # read timeout: the longest wait for one byte
DEFAULT_DEADLINE_S = 600.0  # total: connecting, every byte, the file flushed
TRANSFER_WORKERS = 2  # a firmware download and an upload may run at the same time
USER_AGENT = "evse-agent"
_T = TypeVar("_T")


class TransferError(Exception):
    """A download or upload failed; the message is safe to log (no credentials)."""


class TransferCancelled(TransferError):
    pass


_executor: ThreadPoolExecutor | None = None


async def run(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run a blocking transfer function in the transfer workers (never the default executor)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=TRANSFER_WORKERS, thread_name_prefix="evse-transfer")
    return await asyncio.get_running_loop().run_in_executor(_executor, functools.partial(func, *args, **kwargs))


class _Deadline:
    """Shuts the transfer's sockets down when the deadline passes or `cancel` is set, from a watcher
    thread: a read blocked on a trickling server returns at once. Use as a context manager."""

    POLL_S = 0.25  # how soon a cancel is noticed

    def __init__(self, seconds: float, cancel: threading.Event | None):
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.cancel = cancel
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="evse-transfer-deadline", daemon=True)

    def __enter__(self) -> _Deadline:
        self._watcher.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._watcher.join()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def watch(self, sock: socket.socket, *, duplicate: bool = True) -> socket.socket:
        """Register a socket of this transfer. A duplicate is kept by default (TLS wrapping detaches the
        original); not for an FTP data connection, whose close is the end of an upload: a duplicate would
        keep it open and the server would wait for the end of the file until the deadline."""
        with self._lock:
            watched = sock.dup() if duplicate else sock
            self._sockets.append(watched)
            if self.expired or (self.cancel is not None and self.cancel.is_set()):
                _shut(watched)
        return sock

    def check(self) -> None:
        _check(self.cancel)
        if self.expired or time.monotonic() >= self.expires_at:
            self.expired = True
            raise TransferError(self.message())

    def message(self) -> str:
        return f"not finished within its deadline of {self.seconds:g} s"

    def _watch(self) -> None:
        while not self._done.wait(min(max(self.expires_at - time.monotonic(), 0.0), self.POLL_S)):
            expired = time.monotonic() >= self.expires_at
            if expired or (self.cancel is not None and self.cancel.is_set()):
                with self._lock:
                    self.expired = self.expired or expired
                    for sock in self._sockets:
                        _shut(sock)
                self._done.wait()  # a socket registered from now on is shut by watch() itself
                return


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _watched_connection(base: type[http.client.HTTPConnection], deadline: _Deadline):
    class Watched(base):  # type: ignore[valid-type,misc]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection
            self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._connection = _watched_connection(http.client.HTTPConnection, deadline)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, context: ssl.SSLContext | None):
        super().__init__(context=context)
        self._connection = _watched_connection(http.client.HTTPSConnection, deadline)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._context)


class _FTP(ftplib.FTP):
    """ftplib.FTP whose control and data sockets are registered with the transfer's deadline."""

    def __init__(self, deadline: _Deadline, timeout: float):
        super().__init__(timeout=timeout)
        self._deadline = deadline

    def connect(self, host="", port=0, timeout=-999, source_address=None):
        # ftplib's connect(), with the socket registered before the server's greeting is read
        self.host, self.port = host, port
        if timeout != -999:
            self.timeout = timeout
        self.sock = self._deadline.watch(socket.create_connection((self.host, self.port), self.timeout))
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome

    def ntransfercmd(self, cmd, rest=None):
        conn, size = super().ntransfercmd(cmd, rest)
        self._deadline.watch(conn, duplicate=False)
        return conn, size


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


def _opener(ssl_context: ssl.SSLContext | None, deadline: _Deadline) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _HTTPHandler(deadline),
                                       _HTTPSHandler(deadline, ssl_context))


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise TransferCancelled("cancelled")


# ---- download ------------------------------------------------------------------------------------


def download(url: str, dest: Path, *, max_bytes: int, timeout: float = DEFAULT_TIMEOUT_S,
             deadline_s: float = DEFAULT_DEADLINE_S, cancel: threading.Event | None = None,
             ssl_context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """Fetch `url` into `dest` within `deadline_s`; returns (size in bytes, SHA-256 hex). Raises TransferError."""
    scheme = check_url(url)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _Deadline(deadline_s, cancel) as deadline, _after_deadline(url, deadline), open(part, "wb") as out:
            if scheme == "ftp":
                size, digest = _ftp_download(url, out, max_bytes, timeout, deadline)
            else:
                size, digest = _http_download(url, out, max_bytes, timeout, deadline, ssl_context)
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


@contextlib.contextmanager
def _after_deadline(url: str, deadline: _Deadline):
    """Whatever a read on a socket shut down by the deadline raised: the deadline is what went wrong."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, TransferCancelled):
            raise
        if deadline.expired:
            raise TransferError(f"{redact(url)}: {deadline.message()}") from None
        if deadline.cancel is not None and deadline.cancel.is_set():
            raise TransferCancelled("cancelled") from None
        raise


class _Sink:
    """Counts, hashes and writes blocks; enforces the size limit, the deadline and the cancel flag."""

    def __init__(self, out, max_bytes: int, deadline: _Deadline):
        self.out = out
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.size = 0
        self.sha256 = hashlib.sha256()

    def write(self, block: bytes) -> None:
        self.deadline.check()
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
    except (TimeoutError, ConnectionError, ssl.SSLError, http.client.HTTPException) as exc:
        raise TransferError(f"{redact(url)}: {type(exc).__name__}: {exc}") from None


def _http_download(url, out, max_bytes, timeout, deadline: _Deadline, ssl_context) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with _http_errors(url), _opener(ssl_context, deadline).open(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise TransferError(f"{redact(url)} announces {length} bytes, more than the limit of {max_bytes}")
        sink = _Sink(out, max_bytes, deadline)
        while block := response.read1(BLOCK_SIZE):  # what has arrived: the deadline is checked per read
            sink.write(block)
        if length and length.isdigit() and sink.size != int(length):
            raise TransferError(f"{redact(url)}: got {sink.size} of {length} bytes")
    return sink.size, sink.sha256.hexdigest()


def _ftp_parts(url: str) -> tuple[str, int, str, str, str]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else "anonymous"
    password = unquote(parts.password) if parts.password else ("anonymous@" if user == "anonymous" else "")
    return parts.hostname or "", parts.port or 21, user, password, unquote(parts.path)


def _ftp_connect(url: str, timeout: float, deadline: _Deadline) -> tuple[ftplib.FTP, str]:
    host, port, user, password, path = _ftp_parts(url)
    ftp = _FTP(deadline, timeout)
    try:
        ftp.connect(host, port)
        ftp.login(user, password)
        ftp.voidcmd("TYPE I")
    except BaseException:
        ftp.close()
        raise
    return ftp, path


def _ftp_download(url, out, max_bytes, timeout, deadline: _Deadline) -> tuple[int, str]:
    sink = _Sink(out, max_bytes, deadline)
    try:
        ftp, path = _ftp_connect(url, timeout, deadline)
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
           deadline_s: float = DEFAULT_DEADLINE_S, cancel: threading.Event | None = None,
           ssl_context: ssl.SSLContext | None = None) -> None:
    """Send the file at `path` to the location `url` (a directory, for FTP) under `name` (default: the
    file's own name) within `deadline_s`. Raises TransferError."""
    scheme = check_url(url)
    path = Path(path)
    name = name or path.name
    try:
        with _Deadline(deadline_s, cancel) as deadline, _after_deadline(url, deadline):
            if scheme == "ftp":
                _ftp_upload(url, path, name, timeout, deadline)
            else:
                _http_upload(url, path, name, timeout, deadline, ssl_context)
    except TransferError:
        raise
    except OSError as exc:
        raise TransferError(f"upload to {redact(url)} failed: {exc.strerror or exc}") from None


def _http_upload(url, path: Path, name: str, timeout, deadline: _Deadline, ssl_context) -> None:
    deadline.check()
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
    opener = _opener(ssl_context, deadline)
    with _http_errors(url):
        try:
            with opener.open(post, timeout=timeout) as response:
                response.read()
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in (405, 501):
                raise
        deadline.check()
        target = url + name if url.endswith("/") else url
        put = urllib.request.Request(target, data=data, method="PUT", headers={
            "User-Agent": USER_AGENT, "Content-Type": "application/octet-stream"})
        with opener.open(put, timeout=timeout) as response:
            response.read()


def _ftp_upload(url, path: Path, name: str, timeout, deadline: _Deadline) -> None:
    def progress(_block: bytes) -> None:
        deadline.check()

    try:
        ftp, directory = _ftp_connect(url, timeout, deadline)
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
