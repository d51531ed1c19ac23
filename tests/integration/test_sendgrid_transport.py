"""The SendGrid transport against the local SendGrid-compatible server (schema-checked)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
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
    TransportError,
    build_transport,
)
from digest.transports.sendgrid import SendGridTransport
from tests.conftest import make_settings
from tests.support.sendgrid_server import SendGridServer, rate_limit_headers
from tests.support.sending import FakeTime, add_audience, address, make_issue

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
KEY = "SG.test-key"


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(api_key=KEY) as running:
        yield running


def _settings(tmp_path: Path, server: SendGridServer, **sendgrid: object) -> Settings:
    return make_settings(
        tmp_path,
        "sqlite://",
        {"delivery": {"transport": "sendgrid"}, "sendgrid": {"api_url": server.url, **sendgrid}},
        env={"SENDGRID_API_KEY": KEY},
    )


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Wait for the server thread still answering the request the client gave up on."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not finish in time"
        time.sleep(0.02)


def _policy(fake: FakeTime, **overrides: object) -> RetryPolicy:
    return RetryPolicy(sleep=fake.sleep, clock=fake.clock, **overrides)  # type: ignore[arg-type]


def _batch(settings: Settings, count: int, start: int = 1) -> OutgoingBatch:
    newsletter = settings.newsletter("turkey-unpacked")
    html = '<p>Hi %%NAME%%</p><a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a>'
    message = OutgoingMessage(3, newsletter, "Weekly", html, "Hi %%NAME%% %%UNSUBSCRIBE_URL%%\n")
    values = RecipientValues(settings, newsletter, b"key", NOW, name_fallback="there")
    recipients = [
        OutgoingRecipient(i, i, address(i), f"Reader {i}", values(i, f"Reader {i}"))
        for i in range(start, start + count)
    ]
    return OutgoingBatch(message, recipients, 1)


def test_one_request_per_batch_with_a_personalization_each(
    tmp_path: Path, server: SendGridServer
) -> None:
    settings = _settings(tmp_path, server)
    transport = build_transport(settings)
    results = transport.send(_batch(settings, 3))
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 3
    (request,) = server.requests
    assert {r.message_id for r in results} == {request.message_id}
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body is not None
    items = request.body["personalizations"]
    assert [p["to"][0]["email"] for p in items] == [address(i) for i in (1, 2, 3)]
    assert [p["custom_args"]["digest_delivery_id"] for p in items] == ["1", "2", "3"]
    assert items[0]["substitutions"][personalize.NAME] == "Reader 1"
    server.assert_all_valid()


def test_debug_logs_of_the_library_carry_no_recipient_or_link(
    tmp_path: Path, server: SendGridServer, caplog: pytest.LogCaptureFixture
) -> None:
    """python_http_client logs every request body at DEBUG: ours shows only as its size."""
    settings = _settings(tmp_path, server)
    transport = build_transport(settings)
    with caplog.at_level(logging.DEBUG, logger="python_http_client"):
        results = transport.send(_batch(settings, 2))
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 2
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "PAYLOAD: <" in logged and "bytes of JSON>" in logged
    assert address(1) not in logged and "/u/" not in logged
    (request,) = server.requests  # while the server got the whole body
    assert request.body is not None and len(request.body["personalizations"]) == 2
    assert "/u/" in request.body["personalizations"][0]["headers"]["List-Unsubscribe"]


def test_a_missing_api_key_is_a_configuration_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite://", {"delivery": {"transport": "sendgrid"}})
    with pytest.raises(TransportError, match="SENDGRID_API_KEY"):
        build_transport(settings)


def test_429_waits_for_the_reset_and_500_backs_off(tmp_path: Path, server: SendGridServer) -> None:
    fake = FakeTime()
    settings = _settings(tmp_path, server)
    transport = SendGridTransport(settings=settings, api_key=KEY, policy=_policy(fake))
    server.fail_next(1, 429, headers={"Retry-After": "7"})
    server.fail_next(1, 429, headers=rate_limit_headers(reset_in=20))
    server.fail_next(2, 500)
    results = transport.send(_batch(settings, 4))
    assert all(r.accepted for r in results)
    assert server.attempts == 5 and server.accepted_requests == 1
    assert 7 <= fake.sleeps[0] <= 8  # Retry-After, plus under a second of jitter
    # X-RateLimit-Reset is an epoch second, 20 s after the faults were set: 7 s have passed.
    assert 12 <= fake.sleeps[1] <= 15
    assert all(0 < s <= 30 for s in fake.sleeps[2:])
    server.assert_all_valid()


def test_retries_are_bounded(tmp_path: Path, server: SendGridServer) -> None:
    fake = FakeTime()
    settings = _settings(tmp_path, server)
    policy = _policy(fake, max_attempts=3)
    transport = SendGridTransport(settings=settings, api_key=KEY, policy=policy)
    server.fail_next(10, 503)
    results = transport.send(_batch(settings, 2))
    assert {r.outcome for r in results} == {SendOutcome.FAILED}
    assert "gave up after 3 attempts" in (results[0].error or "")
    assert server.attempts == 3 and len(fake.sleeps) == 2


def test_other_4xx_fail_the_batch_with_the_provider_message(
    tmp_path: Path, server: SendGridServer
) -> None:
    settings = _settings(tmp_path, server)
    transport = SendGridTransport(settings=settings, api_key="SG.wrong", policy=_policy(FakeTime()))
    results = transport.send(_batch(settings, 2))
    assert {r.outcome for r in results} == {SendOutcome.FAILED}
    assert "SendGrid 401" in (results[0].error or "") and server.attempts == 1


def test_a_bad_address_fails_only_itself(tmp_path: Path, server: SendGridServer) -> None:
    settings = _settings(tmp_path, server)
    transport = SendGridTransport(settings=settings, api_key=KEY, policy=_policy(FakeTime()))
    server.reject_address(address(3))
    results = transport.send(_batch(settings, 5))
    assert [r.outcome for r in results] == [SendOutcome.ACCEPTED] * 2 + [SendOutcome.FAILED] + [
        SendOutcome.ACCEPTED
    ] * 2
    assert "Does not contain a valid address" in (results[2].error or "")
    assert server.accepted_recipients == 4


def test_a_lost_answer_is_unknown_not_resent(tmp_path: Path, server: SendGridServer) -> None:
    settings = _settings(tmp_path, server, timeout=0.2)
    transport = SendGridTransport(settings=settings, api_key=KEY, policy=_policy(FakeTime()))
    server.delay_next(1, seconds=1.0)
    results = transport.send(_batch(settings, 2))
    assert {r.outcome for r in results} == {SendOutcome.UNKNOWN}
    assert "may have been sent" in (results[0].error or "")
    assert server.attempts == 1


def test_duplicate_addresses_go_in_separate_requests(
    tmp_path: Path, server: SendGridServer
) -> None:
    settings = _settings(tmp_path, server)
    transport = SendGridTransport(settings=settings, api_key=KEY, policy=_policy(FakeTime()))
    batch = _batch(settings, 3)
    twin = OutgoingRecipient(9, 9, address(2).upper(), None, batch.recipients[1].values)
    results = transport.send(OutgoingBatch(batch.message, [*batch.recipients, twin]))
    assert all(r.accepted for r in results) and server.accepted_requests == 2
    server.assert_all_valid()


def test_a_send_survives_429_storms_500s_and_timeouts(
    any_engine: Engine, make_app: Callable[..., App], server: SendGridServer
) -> None:
    """Nothing lost: every recipient accepted once, or reported unknown for the operator."""
    app = make_app(
        any_engine,
        delivery={"transport": "sendgrid", "batch_size": 10, "concurrency": 3},
        sendgrid={"api_url": server.url, "timeout": 0.5},
        env={"SENDGRID_API_KEY": KEY},
    )
    first, last = add_audience(any_engine, "turkey-unpacked", 120)
    issue_id = make_issue(any_engine)
    fake = FakeTime()
    server.fail_next(6, 429, headers=rate_limit_headers(reset_in=2))
    server.fail_next(4, 500)
    server.fail_next(2, 502)
    # The 13th request (the first without a fault) is answered too late: the client gives up,
    # the server accepts it anyway (like SendGrid), and that batch must be reported unknown.
    server.delay_next(12, seconds=0)
    server.delay_next(1, seconds=1.5)
    report = send_issue(app, issue_id, policy=_policy(fake))
    assert report.accepted + report.unknown == 120 and report.failed == 0
    assert report.unknown == 10 and report.issue_status == "sending"

    retried = send_issue(app, issue_id, retry_unknown=True, policy=_policy(fake))
    assert retried.accepted == 120 and retried.unknown == 0 and retried.issue_status == "sent"
    server.assert_all_valid()
    _wait_for(lambda: server.accepted_requests == 13)  # 11 batches, the late one, its resend
    received = server.recipients()
    # The timed-out request was processed by the server, like SendGrid would: those 10 went out
    # twice only because the operator asked; everyone else exactly once.
    counts = {a: received.count(a) for a in set(received)}
    assert set(counts) == {address(i) for i in range(first, last + 1)}
    assert sum(1 for n in counts.values() if n == 2) == 10
    assert all(n == 1 for n in counts.values() if n != 2)
