"""Sent issues of millions of recipients, written straight into PostgreSQL for the benchmarks.

A real send of 10M recipients takes minutes (`bench_send.py` measures that); what
`bench_metrics.py` and `bench_events.py` measure is what comes after, so they build the rows a
send leaves with `INSERT … SELECT generate_series`: one accepted batch per 1000 deliveries, the
rows `pending` (their batch speaks for them) but for a mix of own states (a tenth delivered,
1% bounced, 1% skipped; a fifth opened, a twentieth clicked) unless `mixed=False`. An issue is
then marked sent the way the ledger does it, counts stored by `digest.sending.snapshot.take`.
Used by the benchmarks only (not a test helper: it writes no subscribers).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, text

from digest.sending import snapshot
from digest.storage.db import session_scope
from digest.storage.models import IssueStatus

NOW = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
_NAIVE = NOW.replace(tzinfo=None)


def fill(engine: Engine, issue_id: int, count: int, *, first: int = 1, mixed: bool = True) -> None:
    """`count` deliveries of `issue_id` (subscriber ids from `first`), in accepted batches."""
    batches = (count + 999) // 1000
    with engine.begin() as connection:
        base = connection.execute(
            text(
                "INSERT INTO send_batch (issue_id, status, size, attempts, updated_at) "
                "SELECT :issue, 'accepted', 1000, 1, :now FROM generate_series(1, :n) "
                "RETURNING id"
            ),
            {"issue": issue_id, "n": batches, "now": _NAIVE},
        ).scalars()
        ids = sorted(base)
        if ids[-1] - ids[0] != batches - 1:
            raise RuntimeError("batch ids are not contiguous (another writer?)")
        connection.execute(
            text(
                "INSERT INTO delivery (issue_id, subscriber_id, email, status, batch_id, "
                "message_id, opened, clicked, updated_at) "
                "SELECT :issue, :first + g, 'reader' || lpad((:first + g)::text, 9, '0') "
                "|| '@example.com', "
                "CASE WHEN :mixed AND g % 100 = 7 THEN 'bounced' "
                "WHEN :mixed AND g % 100 = 9 THEN 'skipped' "
                "WHEN :mixed AND g % 10 = 3 THEN 'delivered' ELSE 'pending' END, "
                ":base + g / 1000, '<' || :issue || '.' || g || '@bench>', "
                ":mixed AND g % 5 = 0, :mixed AND g % 20 = 0, :now "
                "FROM generate_series(0, :n - 1) AS g"
            ),
            {"issue": issue_id, "first": first, "mixed": mixed, "base": ids[0], "n": count,
             "now": _NAIVE},
        )  # fmt: skip


def mark_sent(engine: Engine, issue_id: int) -> dict[str, int]:
    """Move the issue to sent and store its counts, in one transaction (as `finish_if_done`)."""
    with session_scope(engine) as session:
        session.execute(
            text("UPDATE issue SET status = :sent, sent_at = :now WHERE id = :id"),
            {"sent": str(IssueStatus.SENT), "now": _NAIVE, "id": issue_id},
        )
        return snapshot.take(session, issue_id)


def mark_sending(engine: Engine, issue_id: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE issue SET status = :s, sending_at = :now WHERE id = :id"),
            {"s": str(IssueStatus.SENDING), "now": _NAIVE, "id": issue_id},
        )
