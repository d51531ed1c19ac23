"""The SMTP transport against aiosmtpd on 127.0.0.1: reuse, TLS, auth, refusals, drops."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import Engine

from digest.app import App
from digest.config import Settings
from digest.mail.message import RecipientValues
from digest.rendering import personalize
from digest.sending.send import send_issue
from digest.transports import (
    OutgoingBatch,
    OutgoingMessage,
    OutgoingRecipient,
    RetryPolicy,
    SendOutcome,
)
from digest.transports.smtp import SmtpTransport
from tests.conftest import DEFAULT_NOW, make_settings
from tests.support.sending import FakeTime, add_audience, address, make_issue
from tests.support.smtp_sink import SmtpSink


@dataclass
class Handler:
    """Collects messages; can refuse recipients and drop connections on cue."""

    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    ehlos: int = 0
    refuse: dict[str, list[str]] = field(default_factory=dict)  # address → replies, in turn
    drop_at_rcpt: int = 0  # drop the connection at the next N RCPT commands
    drop_in_data: int = 0  # take the message, then drop instead of answering, N times
    pipelining: bool = False  # advertise PIPELINING (aiosmtpd reads commands in order anyway)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlos += 1
        session.host_name = hostname
        return [*responses[:1], "250-PIPELINING", *responses[1:]] if self.pipelining else responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.drop_at_rcpt:
            self.drop_at_rcpt -= 1
            server.transport.close()
            return "421 closing"
        replies = self.refuse.get(address)
        reply = (replies.pop(0) if len(replies) > 1 else replies[0]) if replies else "250 OK"
        if not reply.startswith("250"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.drop_in_data:
            self.drop_in_data -= 1
            server.transport.abort()
        return "250 2.0.0 queued"

    def parsed(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[misc]
            for _, _, raw in self.messages
        ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _certificate(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: (server context, client context trusting it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


@pytest.fixture
def smtp_server() -> Iterator[Callable[..., tuple[Handler, int]]]:
    controllers: list[Controller] = []

    def start(**kwargs: Any) -> tuple[Handler, int]:
        handler = Handler()
        port = _free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        controllers.append(controller)
        return handler, port

    yield start
    for controller in controllers:
        controller.stop()


def _settings(tmp_path: Path, port: int, security: str = "none", **smtp: object) -> Settings:
    return make_settings(
        tmp_path,
        "sqlite://",
        {
            "delivery": {"transport": "smtp"},
            "smtp": {"host": "127.0.0.1", "port": port, "security": security, "timeout": 5, **smtp},
        },
    )


def _transport(settings: Settings, **kwargs: Any) -> SmtpTransport:
    fake = FakeTime()
    return SmtpTransport(settings, policy=RetryPolicy(sleep=fake.sleep, clock=fake.clock), **kwargs)


def _batch(settings: Settings, count: int) -> OutgoingBatch:
    newsletter = settings.newsletter("turkey-unpacked")
    html = "<p>Hi %%NAME%%</p><a href='%%UNSUBSCRIBE_URL%%'>u</a>"
    text = "Hi %%NAME%% %%UNSUBSCRIBE_URL%%\n"
    message = OutgoingMessage(
        5, newsletter, "Weekly for %%NAME%%", html, text, {"X-Digest-Issue": "5"}, DEFAULT_NOW
    )
    values = RecipientValues(settings, newsletter, b"key", DEFAULT_NOW, name_fallback="there")
    recipients = [
        OutgoingRecipient(
            i, i, address(i), f"Reader {i}", values(i, f"Reader {i}"), f"<m{i}@example.com>"
        )
        for i in range(1, count + 1)
    ]
    return OutgoingBatch(message, recipients, 1)


def test_one_connection_for_many_personalised_messages(
    tmp_path: Path, smtp_server: Callable[..., tuple[Handler, int]]
) -> None:
    handler, port = smtp_server()
    settings = _settings(tmp_path, port)
    transport = _transport(settings)
    results = transport.send(_batch(settings, 3)) + transport.send(_batch(settings, 2))
    transport.close()
    assert all(r.accepted for r in results)
    assert handler.ehlos == 1  # one connection, reused across batches
    assert [rcpt for _, rcpt, _ in handler.messages] == [[address(i)] for i in (1, 2, 3, 1, 2)]
    first = handler.parsed()[0]
    assert first["Subject"] == "Weekly for Reader 1"
    assert first["Message-ID"] == "<m1@example.com>"  # the delivery's, drawn at the freeze
    assert first["X-Digest-Delivery"] == "1" and first["X-Digest-Issue"] == "5"
    assert first["Date"] == "Wed, 25 Nov 2026 12:00:00 +0000"
    assert str(first["List-Unsubscribe"]).startswith("<https://news.example.com/u/")
    text = first.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Hi Reader 1" in text and personalize.leaks(text) == []
    assert handler.messages[0][0] == "news@example.com"


@pytest.mark.parametrize("pipelining", [False, True])
def test_refusals_fail_one_recipient_and_temporary_ones_are_retried(
    tmp_path: Path, smtp_server: Callable[..., tuple[Handler, int]], pipelining: bool
) -> None:
    handler, port = smtp_server()
    handler.pipelining = pipelining
    handler.refuse[address(2)] = ["550 5.1.1 no such user"]
    handler.refuse[address(3)] = ["451 4.7.1 try later", "250 OK"]  # then accepted
    settings = _settings(tmp_path, port)
    results = _transport(settings).send(_batch(settings, 4))
    assert [r.outcome for r in results] == [
        SendOutcome.ACCEPTED, SendOutcome.FAILED, SendOutcome.ACCEPTED, SendOutcome.ACCEPTED,
    ]  # fmt: skip
    assert "SMTP 550 at RCPT TO: 5.1.1 no such user" in (results[1].error or "")
    assert sorted(r[0] for _, r, _ in handler.messages) == [address(i) for i in (1, 3, 4)]


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_drop_before_data_reconnects_a_drop_during_data_is_unknown(
    tmp_path: Path, smtp_server: Callable[..., tuple[Handler, int]], pipelining: bool
) -> None:
    handler, port = smtp_server()
    handler.pipelining = pipelining
    settings = _settings(tmp_path, port)
    transport = _transport(settings)
    handler.drop_at_rcpt = 1
    first = transport.send(_batch(settings, 1))
    assert first[0].accepted and handler.ehlos == 2  # reconnected and sent
    handler.drop_in_data = 1
    second = transport.send(_batch(settings, 2))
    assert second[0].outcome is SendOutcome.UNKNOWN and "during DATA" in (second[0].error or "")
    assert second[1].accepted  # a fresh connection for the next one
    assert len(handler.messages) == 3  # the unknown one did arrive: it must not be resent blindly


def test_starttls_with_authentication(
    tmp_path: Path, smtp_server: Callable[..., tuple[Handler, int]]
) -> None:
    server_tls, client_tls = _certificate(tmp_path)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        return AuthResult(success=data.password == b"s3cret", handled=False)

    handler, port = smtp_server(
        tls_context=server_tls, require_starttls=True, authenticator=authenticator
    )
    settings = make_settings(
        tmp_path,
        "sqlite://",
        {
            "delivery": {"transport": "smtp"},
            "smtp": {"host": "127.0.0.1", "port": port, "security": "starttls",
                     "username": "digest", "timeout": 5},
        },
        env={"DIGEST_SMTP_PASSWORD": "s3cret"},
    )  # fmt: skip
    results = _transport(settings, ssl_context=client_tls).send(_batch(settings, 2))
    assert all(r.accepted for r in results)
    assert logins == [(b"digest", b"s3cret")] and len(handler.messages) == 2


def test_a_wrong_password_fails_the_batch(
    tmp_path: Path, smtp_server: Callable[..., tuple[Handler, int]]
) -> None:
    server_tls, client_tls = _certificate(tmp_path)

    def refuse_everyone(*args: Any) -> AuthResult:
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535

    handler, port = smtp_server(tls_context=server_tls, authenticator=refuse_everyone)
    settings = make_settings(
        tmp_path,
        "sqlite://",
        {"delivery": {"transport": "smtp"},
         "smtp": {"host": "127.0.0.1", "port": port, "username": "digest", "timeout": 5}},
        env={"DIGEST_SMTP_PASSWORD": "wrong"},
    )  # fmt: skip
    results = _transport(settings, ssl_context=client_tls).send(_batch(settings, 3))
    assert {r.outcome for r in results} == {SendOutcome.FAILED}
    assert "authentication" in (results[0].error or "").lower()
    assert handler.messages == [] and handler.ehlos <= 2  # no retry loop against a bad password


def test_send_issue_over_smtp(
    any_engine: Engine,
    make_app: Callable[..., App],
    smtp_server: Callable[..., tuple[Handler, int]],
) -> None:
    handler, port = smtp_server()
    app = make_app(
        any_engine,
        delivery={"transport": "smtp", "batch_size": 4, "concurrency": 2},
        smtp={"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5},
    )
    first, last = add_audience(any_engine, "turkey-unpacked", 9)
    issue_id = make_issue(any_engine)
    report = send_issue(app, issue_id)
    assert report.accepted == 9 and report.issue_status == "sent"
    assert sorted(r[0] for _, r, _ in handler.messages) == [
        address(i) for i in range(first, last + 1)
    ]
    assert handler.ehlos <= 2  # one connection per sending thread


def test_pipelined_to_the_sink_the_same_bytes_two_round_trips_and_no_tls_context(
    tmp_path: Path, smtp_server: Callable[..., tuple[Handler, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    def no_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        raise AssertionError("a TLS context for a connection without TLS")

    monkeypatch.setattr(ssl, "create_default_context", no_context)
    handler, port = smtp_server()
    with SmtpSink(keep=True) as sink:
        batch = _batch(_settings(tmp_path, port), 5)
        via_sink = _transport(_settings(tmp_path, sink.port)).send(batch)
        via_aiosmtpd = _transport(_settings(tmp_path, port)).send(batch)
    assert all(r.accepted for r in via_sink + via_aiosmtpd)
    assert sink.state.pipelined_groups == 5 and sink.state.connections == 1
    assert sink.recipients() == [address(i) for i in range(1, 6)]
    # aiosmtpd (not pipelined) got the same bytes (aside from boundary and Message-ID).
    boundary = re.compile(rb"(?m)={15}\d+==|^Message-ID: .*$")
    assert [boundary.sub(b"B", m) for _, _, m in sink.state.kept] == [
        boundary.sub(b"B", m) for _, _, m in handler.messages
    ]
