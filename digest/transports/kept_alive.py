"""Kept-alive HTTP connections under the official SendGrid library.

The library (through python_http_client) opens a new connection for every request: against
api.sendgrid.com that is a TCP and TLS handshake per 1000-recipient call (on the local test
server, loopback and plain HTTP, it cost nothing measurable). `KeptAliveClient` is the
library's own client with one documented hook replaced, `_make_request` ("separated into its
own function", its docstring says): the library still builds every request (URL, headers,
authorization, body), and this sends it over a connection each thread keeps open, with
urllib's semantics kept where they matter to a send:

- a failure while connecting or writing the request raises `urllib.error.URLError`, as urllib
  does: the server cannot have taken the request (the transport retries it);
- a failure while waiting for or reading the answer propagates as is (the transport calls the
  request unknown: it may have been accepted);
- an answer outside 2xx raises the library's `HTTPError` subclass for its status, as urllib's
  error processor and `handle_error` do.

A kept connection could have been closed by the server while idle, and a request written into
it would then fail after the fact, looking unknown. So before reuse a connection is checked
(readable means the server closed or sent something unasked: it is dropped) and one idle longer
than IDLE_SECONDS is not reused. When a proxy is configured for the URL (HTTPS_PROXY and the
like), requests take the library's own path, which honours it.
"""

from __future__ import annotations

import http.client
import io
import select
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from python_http_client import Client
from python_http_client.exceptions import handle_error

# Below the usual idle limits of HTTP servers and load balancers (60 s and more): a connection
# idle this long is closed and a new one opened rather than risk writing into a closed one.
IDLE_SECONDS = 15.0


class _Answer:
    """What python_http_client's `Response` reads from urllib's answer object."""

    def __init__(self, status: int, body: bytes, headers: http.client.HTTPMessage) -> None:
        self._status = status
        self._body = body
        self._headers = headers

    def getcode(self) -> int:
        return self._status

    def read(self) -> bytes:
        return self._body

    def info(self) -> http.client.HTTPMessage:
        return self._headers


class _Kept:
    __slots__ = ("connection", "used")

    def __init__(self, connection: http.client.HTTPConnection) -> None:
        self.connection = connection
        self.used = time.monotonic()


class ConnectionPool:
    """One open connection per thread and origin; `close` closes them all."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: set[http.client.HTTPConnection] = set()
        self._tls: ssl.SSLContext | None = None

    def _kept(self) -> dict[tuple[str, str], _Kept]:
        kept: dict[tuple[str, str], _Kept] | None = getattr(self._local, "kept", None)
        if kept is None:
            kept = self._local.kept = {}
        return kept

    def take(self, scheme: str, netloc: str, timeout: float | None) -> http.client.HTTPConnection:
        """This thread's open connection to the origin if it is still usable, else a new one
        (not yet connected: `request` connects it)."""
        kept = self._kept().pop((scheme, netloc), None)
        if kept is not None:
            if self._usable(kept):
                kept.connection.timeout = timeout
                if kept.connection.sock is not None:
                    kept.connection.sock.settimeout(timeout)
                return kept.connection
            self.discard(kept.connection)
        return self._open(scheme, netloc, timeout)

    def give_back(self, scheme: str, netloc: str, connection: http.client.HTTPConnection) -> None:
        """Keep the connection for this thread's next request to the origin."""
        self._kept()[(scheme, netloc)] = _Kept(connection)

    def discard(self, connection: http.client.HTTPConnection) -> None:
        connection.close()
        with self._lock:
            self._all.discard(connection)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, set()
        for connection in connections:
            connection.close()

    def _usable(self, kept: _Kept) -> bool:
        sock = kept.connection.sock
        if sock is None or time.monotonic() - kept.used > self.idle_seconds:
            return False
        try:  # between requests nothing may arrive: readable means closed (or garbage)
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def _open(self, scheme: str, netloc: str, timeout: float | None) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if scheme == "https":
            with self._lock:
                if self._tls is None:  # what urllib uses: certificates and host names checked
                    self._tls = ssl.create_default_context()
                tls = self._tls
            connection = http.client.HTTPSConnection(netloc, timeout=timeout, context=tls)
        else:
            connection = http.client.HTTPConnection(netloc, timeout=timeout)
        with self._lock:
            self._all.add(connection)
        return connection


class KeptAliveClient(Client):
    """python_http_client's `Client`, sending over the pool's kept connections."""

    def __init__(self, *args: Any, pool: ConnectionPool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = pool

    def _build_client(self, name: str | None = None) -> KeptAliveClient:
        # As the library's own, but the child client is one of ours, sharing the pool.
        url_path = [*self._url_path, name] if name else self._url_path
        return KeptAliveClient(
            host=self.host,
            version=self._version,
            request_headers=self.request_headers,
            url_path=url_path,
            append_slash=self.append_slash,
            timeout=self.timeout,
            pool=self.pool,
        )

    def _make_request(
        self, opener: Any, request: urllib.request.Request, timeout: float | None = None
    ) -> Any:
        timeout = timeout or self.timeout
        url = urllib.parse.urlsplit(request.full_url)
        if _proxied(url):
            return super()._make_request(opener, request, timeout=timeout)
        connection = self.pool.take(url.scheme, url.netloc, timeout)
        selector = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        try:
            connection.request(
                request.get_method(), selector, body=request.data, headers=_headers(request)
            )
        except OSError as exc:  # as urllib: not sent, so not taken
            self.pool.discard(connection)
            raise urllib.error.URLError(exc) from exc
        try:
            response = connection.getresponse()
            body = response.read()
        except BaseException:
            self.pool.discard(connection)
            raise
        if response.will_close:
            self.pool.discard(connection)
        else:
            self.pool.give_back(url.scheme, url.netloc, connection)
        if not 200 <= response.status < 300:  # as urllib's HTTPErrorProcessor
            error = urllib.error.HTTPError(
                request.full_url, response.status, response.reason, response.msg, io.BytesIO(body)
            )
            raised = handle_error(error)
            raised.__cause__ = None
            raise raised
        return _Answer(response.status, body, response.msg)


def _headers(request: urllib.request.Request) -> dict[str, str]:
    headers = dict(request.header_items())
    if request.data is not None and not request.has_header("Content-type"):
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # urllib's default
    return headers


def _proxied(url: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    if url.scheme not in proxies:
        return False
    return not urllib.request.proxy_bypass(url.hostname or "")


def kept_alive(client: Client, pool: ConnectionPool) -> KeptAliveClient:
    """The library's top-level client, made to keep its connections in `pool`."""
    return KeptAliveClient(
        host=client.host,
        request_headers=client.request_headers,
        version=client._version,
        url_path=list(client._url_path),
        append_slash=client.append_slash,
        timeout=client.timeout,
        pool=pool,
    )
