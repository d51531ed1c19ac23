"""Issues and audiences for sending tests and the send benchmark, written straight to the tables.

`add_audience` inserts subscribers and their active subscriptions in bulk through the driver, so
a benchmark can build a million-recipient audience in seconds on SQLite and PostgreSQL.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from digest.storage.models import Issue, IssueStatus
from subscribers.models import Subscriber

if TYPE_CHECKING:
    from digest.app import App
    from digest.sending.send import SendReport

PERIOD = "2026-11-23T05:00:00+00:00"

HTML = """<!doctype html><html><body>
<p>Hi %%NAME%%,</p>
<p>Ministers meet in Ankara &amp; Istanbul.</p>
<p><a href="%%PREFERENCES_URL%%">Manage preferences</a> ·
<a href="%%UNSUBSCRIBE_URL%%">Unsubscribe</a></p>
</body></html>
"""
TEXT = """Hi %%NAME%%,

Ministers meet in Ankara & Istanbul.

Manage preferences: %%PREFERENCES_URL%%
Unsubscribe: %%UNSUBSCRIBE_URL%%
"""


def make_issue(
    engine: Engine,
    newsletter: str = "turkey-unpacked",
    *,
    status: str = IssueStatus.APPROVED,
    period: str = PERIOD,
    subject: str = "Turkey this week: %%NAME%%, the lira steadies",
    html: str = HTML,
    text: str = TEXT,
    lint: list[dict[str, str]] | None = None,
) -> int:
    now = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)
    issue = Issue(
        newsletter=newsletter,
        period=period,
        status=status,
        subject=subject,
        html=html,
        text=text,
        html_bytes=len(html.encode()),
        lint=lint or [],
        created_at=now,
        updated_at=now,
    )
    from sqlmodel import Session

    with Session(engine) as session:
        session.add(issue)
        session.commit()
        session.refresh(issue)
        assert issue.id is not None
        return issue.id


def sent_issue(
    app: App, newsletter: str = "turkey-unpacked", *, period: str = PERIOD, limit: int | None = None
) -> int:
    """An issue sent to its audience through the real freeze, ledger and outbox transport (only
    the first `limit` recipients with `limit`): the rows every count is read from. Its id."""
    from digest.sending.send import send_issue

    issue_id = make_issue(app.engine, newsletter, period=period)
    send_issue(app, issue_id, limit=limit)
    return issue_id


def address(n: int) -> str:
    return f"reader{n:07d}@example.com"


def add_audience(
    engine: Engine,
    newsletter: str,
    count: int,
    *,
    start: int | None = None,
    names: bool = True,
    chunk: int = 50_000,
) -> list[int]:
    """Add `count` subscribers with an active subscription to `newsletter`; returns the first
    and last subscriber id as [first, last] (ids are contiguous)."""
    with engine.begin() as connection:
        first = start or (
            (connection.execute(select(func.max(Subscriber.id))).scalar() or 0) + 1  # type: ignore[arg-type]
        )
        stamp: object = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)
        pg = connection.dialect.name == "postgresql"
        if not pg:
            stamp = "2026-01-01 00:00:00.000000"
        for offset in range(0, count, chunk):
            ids = range(first + offset, first + min(offset + chunk, count))
            subscribers = [
                (i, address(i), f"Reader {i}" if names and i % 3 else None, stamp) for i in ids
            ]
            subscriptions = [(i, newsletter, stamp) for i in ids]
            if pg:
                connection.exec_driver_sql(
                    "INSERT INTO subscriber (id, email, name, created_at) "
                    "SELECT * FROM unnest(%(i)s::int[], %(e)s::text[], %(n)s::text[], "
                    "%(c)s::timestamp[])",
                    dict(
                        zip("ienc", (list(c) for c in zip(*subscribers, strict=True)), strict=True)
                    ),
                )
                connection.exec_driver_sql(
                    "INSERT INTO subscription (subscriber_id, newsletter, status, source, "
                    "created_at) SELECT s, n, 'active', 'test', c FROM unnest(%(s)s::int[], "
                    "%(n)s::text[], %(c)s::timestamp[]) AS t(s, n, c)",
                    dict(
                        zip("snc", (list(c) for c in zip(*subscriptions, strict=True)), strict=True)
                    ),
                )
            else:
                connection.exec_driver_sql(
                    "INSERT INTO subscriber (id, email, name, created_at) VALUES (?, ?, ?, ?)",
                    subscribers,
                )
                connection.exec_driver_sql(
                    "INSERT INTO subscription (subscriber_id, newsletter, status, source, "
                    "created_at) VALUES (?, ?, 'active', 'test', ?)",
                    subscriptions,
                )
        if pg:
            connection.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('subscriber', 'id'), "
                "(SELECT max(id) FROM subscriber))"
            )
    return [first, first + count - 1]


def send_at_once(app: App, issue_id: int, senders: int) -> list[SendReport]:
    """`senders` runs of `send_issue` of one issue in threads started together; raises the
    first error any of them raised."""
    from digest.sending.send import send_issue

    reports: list[SendReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(send_issue(app, issue_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return reports


def mailed(app: App) -> Counter[str]:
    """How many messages each address has in the app's outbox."""
    outbox = Path(app.settings.delivery.outbox_dir)
    return Counter(str(m["To"].addresses[0].addr_spec) for m in outbox_messages(outbox))


def outbox_messages(outbox: Path) -> list[EmailMessage]:
    return [
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
        for f in sorted(outbox.rglob("*.eml"))
    ]


class FakeTime:
    """A wall clock that only moves when something sleeps on it (for RetryPolicy in tests)."""

    def __init__(self, start: float | None = None) -> None:
        import time

        self.now = time.time() if start is None else start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(seconds, 0.0)


def start_send(
    config: Path, slug: str, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`digest send SLUG` as its own process (so a test can SIGKILL it), at DEFAULT_NOW."""
    from tests.conftest import DEFAULT_NOW, REPO_ROOT, TEST_SECRET

    return subprocess.Popen(
        [sys.executable, "-m", "digest", "--config", str(config), "--now",
         DEFAULT_NOW.isoformat(), "send", slug, *extra],
        cwd=REPO_ROOT,
        env={**os.environ, "DIGEST_SECRET_KEY": TEST_SECRET, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(process: subprocess.Popen[bytes]) -> tuple[int, str]:
    """Wait for a process from `start_send`: its exit code and its output on one line."""
    out, err = process.communicate(timeout=180)
    return process.returncode, " ".join((out + err).decode("utf-8", "replace").split())


def webhook_app(make_app: Callable[..., App], engine: Engine, public_key: str) -> App:
    """An app taking SendGrid events signed with `public_key`; it sends batches of 5 on one
    thread (the event tests' sends)."""
    return make_app(
        engine,
        env={"SENDGRID_WEBHOOK_PUBLIC_KEY": public_key},
        delivery={"batch_size": 5, "concurrency": 1},
    )
