"""The SendGrid transport keeps one connection per sending thread (digest.transports.kept_alive),
and never turns a connection the server closed into a lost or doubled request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from digest.config import Settings
from digest.transports import SendOutcome
from digest.transports.sendgrid import SendGridTransport
from tests.conftest import make_settings
from tests.integration.test_sendgrid_transport import KEY, _batch, _policy, _settings
from tests.support.sendgrid_server import SendGridServer
from tests.support.sending import FakeTime, address


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY) as running:
        yield running


def _transport(settings: Settings, **policy: object) -> SendGridTransport:
    return SendGridTransport(settings=settings, api_key=KEY, policy=_policy(FakeTime(), **policy))


def test_one_thread_sends_every_batch_over_one_connection(
    tmp_path: Path, server: SendGridServer
) -> None:
    settings = _settings(tmp_path, server)
    transport = _transport(settings)
    for n in range(5):
        results = transport.send(_batch(settings, 3, start=1 + 3 * n))
        assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 3
    assert server.accepted_requests == 5 and server.connections == 1
    server.assert_all_valid()
    transport.close()


def test_each_sending_thread_keeps_a_connection_of_its_own(
    tmp_path: Path, server: SendGridServer
) -> None:
    settings = _settings(tmp_path, server)
    transport = _transport(settings)
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(
            pool.map(lambda n: transport.send(_batch(settings, 2, 1 + 2 * n)), range(24))
        )
    assert all(r.accepted for results in outcomes for r in results)
    assert server.accepted_requests == 24 and 1 <= server.connections <= 4
    assert len(set(server.recipients())) == 48  # nobody twice, nobody missing


def test_a_connection_idle_too_long_is_not_reused(tmp_path: Path, server: SendGridServer) -> None:
    settings = _settings(tmp_path, server)
    transport = _transport(settings)
    transport._connections.idle_seconds = 0.0  # every connection counts as idle too long
    for n in range(3):
        assert all(r.accepted for r in transport.send(_batch(settings, 2, 1 + 2 * n)))
    assert server.accepted_requests == 3 and server.connections == 3


def test_the_4xx_and_5xx_answers_keep_their_meaning_over_a_kept_connection(
    tmp_path: Path, server: SendGridServer
) -> None:
    """Refused, retried and accepted requests share one connection: each answer is read whole,
    so the next request on it is not confused with the last one's body."""
    settings = _settings(tmp_path, server)
    transport = _transport(settings, max_attempts=3)
    server.reject_address(address(2))
    server.fail_next(1, 503)
    results = transport.send(_batch(settings, 3))
    assert [r.outcome for r in results] == [
        SendOutcome.ACCEPTED, SendOutcome.FAILED, SendOutcome.ACCEPTED,
    ]  # fmt: skip
    assert "SendGrid 400" in (results[1].error or "")
    assert server.attempts == 3 and server.connections == 1  # 503, 400, then the other two


class _ClosingHandler(BaseHTTPRequestHandler):
    """Answers 202 like SendGrid, keeps the connection open, and closes it shortly after, as a
    server or load balancer closes an idle connection (no "Connection: close" said)."""

    protocol_version = "HTTP/1.1"
    requests: list[int]
    close_after = 0.05

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(1)
        self.send_response(202)
        self.send_header("X-Message-Id", f"closing-{len(self.requests)}")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        time.sleep(self.close_after)
        self.close_connection = True


@pytest.fixture
def closing_server() -> Iterator[tuple[str, list[int], list[int]]]:
    requests: list[int] = []
    connections: list[int] = []
    handler = type("Handler", (_ClosingHandler,), {"requests": requests})

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def process_request(self, request: Any, client_address: Any) -> None:
            connections.append(1)
            super().process_request(request, client_address)

    httpd = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests, connections
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_a_connection_the_server_closed_while_idle_is_replaced_not_written_into(
    tmp_path: Path, closing_server: tuple[str, list[int], list[int]]
) -> None:
    url, requests, connections = closing_server
    settings = make_settings(
        tmp_path, "sqlite://", {"delivery": {"transport": "sendgrid"},
                                "sendgrid": {"api_url": url}}, env={"SENDGRID_API_KEY": KEY},
    )  # fmt: skip
    transport = _transport(settings, max_attempts=1)
    for n in range(3):
        results = transport.send(_batch(settings, 2, 1 + 2 * n))
        assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 2, results[0].error
        assert results[0].message_id == f"closing-{n + 1}"
        time.sleep(0.3)  # idle: the server closes its side meanwhile
    assert len(requests) == 3 and len(connections) == 3  # one attempt each, none unknown


def test_a_configured_proxy_is_honoured(
    tmp_path: Path, server: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a proxy for the URL's scheme in the environment, requests take the library's own
    path (urllib's proxy handler); a host the proxy is bypassed for goes direct again."""
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    settings = _settings(tmp_path, server)
    transport = _transport(settings, max_attempts=1)
    results = transport.send(_batch(settings, 2))
    assert {r.outcome for r in results} == {SendOutcome.FAILED}
    assert "cannot reach SendGrid" in (results[0].error or "") and server.attempts == 0
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert all(r.accepted for r in transport.send(_batch(settings, 2)))
    assert server.accepted_requests == 1
