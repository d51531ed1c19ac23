"""An issue's delivery counts, kept by the database as they change, so reading them scans no
delivery: not of a sent issue, nor of one still sending (#15: `/metrics`, `stats` and `status`
cost the same during a 10M send as after it).

How: `issue_count` holds, per issue, how many deliveries are in each effective state (the rule
of `digest.sending.counts`: a delivery's own status, else its batch's) and how many are opened /
clicked. Migration 0012's triggers keep it, in the transaction of every change: a delivery
inserted (+1 on its state), a delivery updated (−1 on the state it was in, +1 on the one it is
in now, and the flags), a batch changing status (its rows still `pending` on their own move from
what the old status said to what the new one says). So the counts are exact after any crash,
and every writer is covered — the freezes, the ledger, row-by-row SMTP, provider events, IMAP
bounces — without one of them having to remember. On PostgreSQL a trigger first takes a
transaction lock per issue (`LOCK_CLASS`, in id order): counting writers of one issue queue for
it and never deadlock on its counter rows, and a batch changing status and an event on one of
its rows cannot both count that row (the second reads what the first committed).

Why not the alternatives weighed in #15:

- Counting a sending issue from `send_batch` (sizes by status) plus the deliveries that carry
  their own status: a batch's `size` is not how many rows it holds (`requeue` moves failed rows
  out of accepted batches, `--limit` resizes, a personal batch is sized before its rows exist),
  and during a SendGrid send most accepted rows soon carry their own status (`delivered`,
  events arrive within seconds), so "the few with their own status" is millions by the end.
- Counters updated by each writer in Python: the same transactions, but a hook in every path
  that changes a delivery or a batch (two freezes, ledger, stream, events, bounces), and the
  first one forgotten drifts silently — `digest.tracking.bounces` already changed sent
  issues' deliveries without adjusting their counts.

The cost is on writes: a trigger per statement on PostgreSQL (an aggregate over the rows the
statement touched; a batch's status change counts its own-pending rows through the batch
index), one per row on SQLite. `live` (one grouped scan of the deliveries) stays the reference
the tests compare against, and the reader for issues without counts (none after 0012's backfill).
Retention deletes the deliveries of old issues but never these counts (no trigger on delete).

One more row per issue is not a count of deliveries but a tally: `settled`, how many recipients
whose batch (or own row) was *unknown* a provider event proved sent (see
`digest.sending.event_rows`, which adds it through `add`). It is history (`digest deliveries`
reports it), not a state a delivery is in now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, case, exists, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import Session

from digest.sending.counts import SEND_STATES, counts_by
from digest.sending.counts import delivery_counts as live_delivery_counts
from digest.storage.db import Db
from digest.storage.models import Delivery, Issue, IssueCount, IssueStatus

_C = IssueCount.__table__  # type: ignore[attr-defined]
_D = Delivery.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
OPENED, CLICKED, SETTLED = "opened", "clicked", "settled"
NOT_STATES = (OPENED, CLICKED, SETTLED)  # rows of issue_count that are not delivery states
# Only issues in these statuses have deliveries (a draft, approved or skipped issue has none).
WITH_DELIVERIES = (IssueStatus.SENDING, IssueStatus.SENT)


def take(session: Db, issue_id: int) -> dict[str, int]:
    """The issue's counts, stored from a scan of its deliveries if it has none yet (an issue
    sent before 0010 and never counted since; retention calls this before deleting rows)."""
    kept = stored(session, [issue_id]).get(issue_id)
    if kept is not None:
        return kept
    lock(session, [issue_id])
    counts = live(session, [issue_id])[issue_id]
    session.execute(
        insert(_C), [{"issue_id": issue_id, "state": s, "n": n} for s, n in counts.items()]
    )
    return counts


def drop(session: Db, issue_id: int) -> None:
    """Nothing to forget when a sent issue is sent again (`--retry-failed/-unknown`): the
    counts follow its deliveries back to pending and on, as they did the first time."""


def lock(session: Db, issue_ids: Iterable[int]) -> None:
    """Queue for the right to change these issues' counts until the transaction ends, in id
    order (PostgreSQL; SQLite has one writer): what every counting trigger does first. A
    transaction that will change the deliveries of several issues can call it up front, so
    that its statements never take the issues' locks in an order another one reverses."""
    ids = sorted(set(issue_ids))
    connection = session if isinstance(session, Connection) else session.connection()
    if ids and connection.dialect.name == "postgresql":
        connection.execute(text("SELECT digest_lock_counts(CAST(:ids AS integer[]))"), {"ids": ids})


def stored(session: Db, issue_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """The stored counts of those of `issue_ids` that have them (no `settled`, no zeros)."""
    ids = list(issue_ids)
    out: dict[int, dict[str, int]] = {}
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            select(_C.c.issue_id, _C.c.state, _C.c.n).where(
                _C.c.issue_id.in_(ids[start : start + 1000]), _C.c.state != SETTLED
            )
        )
        for issue_id, state, n in rows:
            counts = out.setdefault(int(issue_id), {})
            if n:  # a state the issue's deliveries left again (deferred, sending) reads as 0
                counts[str(state)] = int(n)
    return out


def live(session: Db, issue_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Counts read from the deliveries of `issue_ids` (every send state, opened, clicked), in
    one grouped query: for issues still sending, a few."""
    ids = list(issue_ids)
    out: dict[int, dict[str, int]] = {
        i: {**dict.fromkeys(SEND_STATES, 0), OPENED: 0, CLICKED: 0} for i in ids
    }
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        statement = counts_by(_D.c.issue_id).add_columns(
            _count_true(_D.c.opened), _count_true(_D.c.clicked)
        )
        for issue_id, state, n, opened, clicked in session.execute(
            statement.where(_D.c.issue_id.in_(chunk))
        ):
            counts = out[int(issue_id)]
            counts[str(state)] = counts.get(str(state), 0) + int(n)
            counts[OPENED] += int(opened)
            counts[CLICKED] += int(clicked)
    return out


def many(session: Db, issue_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """Every issue's counts (states, opened, clicked): stored where kept, else live."""
    ids = list(issue_ids)
    kept = stored(session, ids)
    missing = [i for i in ids if i not in kept]
    out = {i: {**dict.fromkeys(SEND_STATES, 0), **c} for i, c in kept.items()}
    out.update(live(session, missing))
    return out


def counts(session: Session, issue_id: int) -> dict[str, int]:
    """The issue's counts: stored, else (no counts yet) read from its deliveries (every send
    state present, as `delivery_counts` gives them; no opened/clicked for a live read)."""
    kept = stored(session, [issue_id]).get(issue_id)
    if kept is None:
        return live_delivery_counts(session, issue_id)
    return {**dict.fromkeys(SEND_STATES, 0), **kept}


def delivery_counts(session: Session, issue_id: int) -> dict[str, int]:
    """As `digest.sending.counts.delivery_counts` (delivery states only), from the stored
    counts: sending or sent, no scan."""
    return {s: n for s, n in counts(session, issue_id).items() if s not in NOT_STATES}


def states_only(counts: Mapping[str, int]) -> dict[str, int]:
    """`counts` without opened / clicked / settled: what a delivery can be in."""
    return {s: n for s, n in counts.items() if s not in NOT_STATES}


def without_counts(session: Db) -> list[int]:
    """Issues with deliveries but no stored counts: none since 0012 (read live if any)."""
    kept = exists().where(_C.c.issue_id == _I.c.id, _C.c.state != SETTLED)
    statement = select(_I.c.id).where(_I.c.status.in_([str(s) for s in WITH_DELIVERIES]), ~kept)
    return [int(i) for i in session.execute(statement).scalars()]


def has_counts(session: Db, issue_ids: Iterable[int]) -> set[int]:
    """Those of `issue_ids` whose counts a caller must adjust itself: none since migration
    0012, the database does it (`event_rows` asks before adding a delivery's move, and so adds
    only `settled`)."""
    return set()


def settled(session: Db, issue_ids: Iterable[int]) -> dict[int, int]:
    """How many unknown recipients provider events settled, per issue (absent: none)."""
    ids = list(issue_ids)
    rows = session.execute(
        select(_C.c.issue_id, _C.c.n).where(_C.c.issue_id.in_(ids), _C.c.state == SETTLED)
    )
    return {int(i): int(n) for i, n in rows}


def add(session: Db, deltas: Mapping[tuple[int, str], int]) -> None:
    """Add each delta to (issue, state), creating the row if missing; in (issue, state) order,
    so two transactions adjusting the same issue never wait on each other in a cycle.

    For tallies the triggers do not keep (`settled`): a delivery's state is counted by the
    database, and adding it here would count it twice.
    """
    rows = [
        {"k_issue": i, "k_state": s, "k_init": max(d, 0), "k_delta": d}
        for (i, s), d in sorted(deltas.items())
        if d
    ]
    if not rows:
        return
    lock(session, {i for i, _ in deltas})
    dialect = (session if isinstance(session, Connection) else session.connection()).dialect.name
    upsert = (postgresql if dialect == "postgresql" else sqlite).insert(_C)
    statement = upsert.values(
        issue_id=bindparam("k_issue"), state=bindparam("k_state"), n=bindparam("k_init")
    ).on_conflict_do_update(
        index_elements=["issue_id", "state"],
        set_={"n": _C.c.n + bindparam("k_delta", type_=_C.c.n.type)},
    )
    session.execute(statement, rows)


def shift(session: Db, issue_id: int, from_state: str, to_state: str, n: int = 1) -> None:
    """`n` deliveries moved from one state to another: a no-op (see `has_counts`)."""
    if n <= 0 or from_state == to_state or not has_counts(session, [issue_id]):
        return
    add(session, {(issue_id, from_state): -n, (issue_id, to_state): n})


def bump(session: Db, issue_id: int, state: str, n: int = 1) -> None:
    """`n` more deliveries opened / clicked: a no-op (see `has_counts`)."""
    if n > 0 and has_counts(session, [issue_id]):
        add(session, {(issue_id, state): n})


def _count_true(column: Any) -> Any:
    return func.coalesce(func.sum(case((column, 1), else_=0)), 0)
