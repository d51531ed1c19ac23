"""SMTP sends row by row (`digest.sending.stream`): per-row outcomes, a sender dying mid-batch,
and the connection pool replacing connections the server closed.

The ledger, not the transport, is what these check: a refused recipient fails alone while its
batch is accepted; a sender that dies after the server took a message but before its answer was
recorded leaves exactly that message unknown, and the next run sends the rest of its batch once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import Engine, select

from digest.app import App
from digest.sending.counts import delivery_counts
from digest.sending.send import send_issue
from digest.storage.models import Delivery
from digest.transports import OutgoingBatch, RetryPolicy, SendResult
from digest.transports.smtp import SmtpTransport
from tests.integration.test_smtp import Handler, _batch, _free_port, _settings
from tests.support.sending import FakeTime, add_audience, address, make_issue
from tests.support.smtp_sink import SmtpSink


class _Crash(BaseException):
    """The process dies here (as SIGKILL would, but inside the test)."""


class _DiesAfter(SmtpTransport):
    """Sends `count` messages, then dies right after the server took the last one."""

    def __init__(self, *args: Any, count: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.left = count

    def send(self, batch: OutgoingBatch) -> list[SendResult]:
        results = super().send(batch)
        self.left -= len(results)
        if self.left <= 0:
            raise _Crash()
        return results


def _app(make_app: Callable[..., App], engine: Engine, port: int) -> App:
    return make_app(
        engine,
        delivery={"transport": "smtp", "batch_size": 5, "concurrency": 1},
        smtp={"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5},
    )


def _rows(engine: Engine, issue_id: int) -> dict[str, str]:
    d = Delivery.__table__.c  # type: ignore[attr-defined]
    with engine.connect() as connection:
        found = connection.execute(select(d.email, d.status).where(d.issue_id == issue_id))
        return {email: status for email, status in found}


@pytest.fixture
def aiosmtpd_server() -> Iterator[tuple[Handler, int]]:
    handler, port = Handler(), _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield handler, port
    controller.stop()


def test_a_refused_recipient_fails_alone_on_its_row(
    any_engine: Engine, make_app: Callable[..., App], aiosmtpd_server: tuple[Handler, int]
) -> None:
    handler, port = aiosmtpd_server
    first, last = add_audience(any_engine, "turkey-unpacked", 7)
    handler.refuse[address(first + 2)] = ["550 5.1.1 no such user"]
    issue_id = make_issue(any_engine)
    report = send_issue(_app(make_app, any_engine, port), issue_id)
    assert report.accepted == 6 and report.failed == 1 and report.issue_status == "sent"
    rows = _rows(any_engine, issue_id)
    assert rows[address(first + 2)] == "failed"
    assert {rows[address(n)] for n in range(first, last + 1) if n != first + 2} == {"accepted"}


def test_a_sender_dying_mid_batch_leaves_only_the_message_in_flight_unknown(
    any_engine: Engine, make_app: Callable[..., App]
) -> None:
    first, last = add_audience(any_engine, "turkey-unpacked", 12)
    issue_id = make_issue(any_engine)
    with SmtpSink(keep=True) as sink:
        app = _app(make_app, any_engine, sink.port)
        dying = _DiesAfter(app.settings, count=7)  # 5 in the first batch, the 7th is mid-batch
        with pytest.raises(_Crash):
            send_issue(app, issue_id, transport=dying)
        assert sink.state.messages == 7

        report = send_issue(app, issue_id)  # the next run: the dead run's batch is released
        assert report.found_unknown and report.accepted == 11 and report.unknown == 1
        received = Counter(sink.recipients())
        everyone = {address(n) for n in range(first, last + 1)}
        assert set(received) == everyone and max(received.values()) == 1
        rows = _rows(any_engine, issue_id)
        assert [a for a, s in rows.items() if s == "unknown"] == [address(first + 6)]

        report = send_issue(app, issue_id, retry_unknown=True)
        assert report.accepted == 12 and report.issue_status == "sent"
        received = Counter(sink.recipients())
        assert {a for a, n in received.items() if n > 1} == {address(first + 6)}
    with app.session() as session:
        counts = delivery_counts(session, issue_id)
    assert counts["accepted"] == 12 and counts["unknown"] == counts["pending"] == 0


def test_a_pooled_connection_the_server_closed_is_replaced_without_a_retry_pause(
    tmp_path: Path,
) -> None:
    fake = FakeTime()
    with SmtpSink(keep=True) as sink:
        settings = _settings(tmp_path, sink.port)
        transport = SmtpTransport(settings, policy=RetryPolicy(sleep=fake.sleep, clock=fake.clock))
        first = transport.send(_batch(settings, 1))
        sink.drop_connections()  # the pooled connection is dead now
        second = transport.send(_batch(settings, 2))
        transport.close()
    assert all(r.accepted for r in first + second)
    assert sink.state.connections == 2 and fake.sleeps == []  # no attempt spent, no pause


def test_with_chunking_one_write_per_message_the_same_bytes_and_refusals_placed(
    tmp_path: Path,
) -> None:
    import re

    aside = re.compile(rb"(?m)={15}\d+==|^Message-ID: .*$")  # random per serialisation
    kept: dict[bool, list[bytes]] = {}
    for chunking in (True, False):
        with SmtpSink(keep=True, chunking=chunking) as sink:
            sink.state.refuse[address(2).encode()] = b"550 5.1.1 no such user"
            settings = _settings(tmp_path, sink.port)
            results = SmtpTransport(settings).send(_batch(settings, 4))
            assert [r.outcome.value for r in results] == ["accepted", "failed", "accepted",
                                                           "accepted"]  # fmt: skip
            assert "550 at RCPT TO" in (results[1].error or "")
            assert sink.state.connections == 1 and sink.state.pipelined_groups == 4
            assert sink.recipients() == [address(n) for n in (1, 3, 4)]
            assert sink.state.chunked == (3 if chunking else 0)
            kept[chunking] = [aside.sub(b"", m) for _, _, m in sink.state.kept]
    # BDAT carries the message as it is; DATA doubles leading dots, which these have none of.
    assert kept[True] == kept[False]
