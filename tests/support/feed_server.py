"""A feed server on 127.0.0.1 for fetch and ingest tests: real HTTP, scripted behaviour.

Each path is a `Route`: a body with headers, an ETag and Last-Modified (answered with 304 when
the client sends them back), an HTTP error status, a redirect, gzip, or a response that hangs
until the server is closed (to test timeouts without sleeping in the test).

    with FeedServer() as server:
        server.routes["/feed.xml"] = Route(body=b"<rss/>", etag='"v1"')
        url = server.url("/feed.xml")
        ... server.requests  # (path, headers) of every request, in order
"""

from __future__ import annotations

import contextlib
import gzip
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: str | None = None
    last_modified: str | None = None
    location: str | None = None  # for 3xx
    gzip: bool = False
    hang: bool = False  # never answer (until the server closes)
    declare_length: int | None = None  # a Content-Length to claim instead of the real one
    chunked: bool = False  # stream the body without a Content-Length
    headers: dict[str, str] = field(default_factory=dict)


class FeedServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                if route.hang:
                    server._release.wait(30)
                    return
                if route.location:
                    self._send(route.status, b"", {"Location": route.location})
                    return
                if (route.etag and self.headers.get("If-None-Match") == route.etag) or (
                    route.last_modified
                    and self.headers.get("If-Modified-Since") == route.last_modified
                ):
                    self._send(304, b"", self._validators(route))
                    return
                headers = {"Content-Type": route.content_type, **self._validators(route)}
                body = route.body
                if route.gzip:
                    body = gzip.compress(body)
                    headers["Content-Encoding"] = "gzip"
                headers.update(route.headers)
                if route.chunked:
                    self._send_chunked(route.status, body, headers)
                else:
                    self._send(route.status, body, headers, route.declare_length)

            def _validators(self, route: Route) -> dict[str, str]:
                found = {}
                if route.etag:
                    found["ETag"] = route.etag
                if route.last_modified:
                    found["Last-Modified"] = route.last_modified
                return found

            def _send(
                self, status: int, body: bytes, headers: dict[str, str], length: int | None = None
            ) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if status != 304:
                    self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if status != 304:
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body)

            def _send_chunked(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for start in range(0, len(body), 16_384):
                        chunk = body[start : start + 16_384]
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
