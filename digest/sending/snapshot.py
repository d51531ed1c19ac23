"""An issue's delivery counts, kept once it is sent, so reading them scans no delivery.

While an issue is sending its counts are read live from its deliveries (one issue's rows,
through the (issue, subscriber) index: `digest.sending.counts.delivery_counts`). When it becomes
`sent` (`ledger.finish_if_done`) the counts are stored in `issue_count`, in the same transaction;
after that only provider events change its deliveries, and they adjust the stored counts in
their own transaction (`add`, `shift`, `bump`, called by `digest.sending.event_rows`), so the
counts stay exact after any crash. A sent issue sent again (`--retry-failed`, `--retry-unknown`)
drops them until it is sent once more. Retention deletes the deliveries of old issues but never
these counts.

One more row per issue is not a count of deliveries but a tally kept whether or not the counts
are stored: `settled`, how many recipients whose batch (or own row) was *unknown* a provider
event proved sent (see `digest.sending.event_rows`). `take` and `drop` leave it alone: it is
history (`digest deliveries` reports it), not a state a delivery is in now.

Readers (`digest deliveries`, `status`, `stats`, `/metrics`) go through `delivery_counts` and
`many` here: stored counts for sent issues, a live read only for the few issues still sending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, case, delete, exists, func, insert, select
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
    """Store the issue's counts now (effective states, opened, clicked), replacing any."""
    counts = live_delivery_counts(session, issue_id)  # type: ignore[arg-type]
    opened, clicked = session.execute(
        select(_count_true(_D.c.opened), _count_true(_D.c.clicked)).where(_D.c.issue_id == issue_id)
    ).one()
    counts = {**counts, OPENED: int(opened), CLICKED: int(clicked)}
    drop(session, issue_id)
    session.execute(
        insert(_C), [{"issue_id": issue_id, "state": s, "n": n} for s, n in counts.items()]
    )
    return counts


def drop(session: Db, issue_id: int) -> None:
    """Forget the stored counts: the issue is being sent again (its `settled` tally stays)."""
    session.execute(delete(_C).where(_C.c.issue_id == issue_id, _C.c.state != SETTLED))


def stored(session: Db, issue_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """The stored counts of those of `issue_ids` that have them (no `settled`)."""
    ids = list(issue_ids)
    out: dict[int, dict[str, int]] = {}
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            select(_C.c.issue_id, _C.c.state, _C.c.n).where(
                _C.c.issue_id.in_(ids[start : start + 1000]), _C.c.state != SETTLED
            )
        )
        for issue_id, state, n in rows:
            out.setdefault(int(issue_id), {})[str(state)] = int(n)
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
    """The issue's counts: stored once sent, else read from its deliveries (every send state
    present, as `delivery_counts` gives them; no opened/clicked for a live read)."""
    kept = stored(session, [issue_id]).get(issue_id)
    if kept is None:
        return live_delivery_counts(session, issue_id)
    return {**dict.fromkeys(SEND_STATES, 0), **kept}


def delivery_counts(session: Session, issue_id: int) -> dict[str, int]:
    """As `digest.sending.counts.delivery_counts` (delivery states only), stored once sent."""
    return {s: n for s, n in counts(session, issue_id).items() if s not in NOT_STATES}


def states_only(counts: Mapping[str, int]) -> dict[str, int]:
    """`counts` without opened / clicked / settled: what a delivery can be in."""
    return {s: n for s, n in counts.items() if s not in NOT_STATES}


def without_counts(session: Db) -> list[int]:
    """Issues with deliveries but no stored counts: still sending (or sent before 0010)."""
    kept = exists().where(_C.c.issue_id == _I.c.id, _C.c.state != SETTLED)
    statement = select(_I.c.id).where(_I.c.status.in_([str(s) for s in WITH_DELIVERIES]), ~kept)
    return [int(i) for i in session.execute(statement).scalars()]


def has_counts(session: Db, issue_ids: Iterable[int]) -> set[int]:
    """Those of `issue_ids` whose counts are stored (provider events must adjust them)."""
    ids = sorted(set(issue_ids))
    if not ids:
        return set()
    statement = (
        select(_C.c.issue_id).where(_C.c.issue_id.in_(ids), _C.c.state != SETTLED).distinct()
    )
    return {int(i) for i in session.execute(statement).scalars()}


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

    The caller has checked that these issues have stored counts (or that the state is
    `settled`, kept regardless): this writes whatever it is given.
    """
    rows = [
        {"k_issue": i, "k_state": s, "k_init": max(d, 0), "k_delta": d}
        for (i, s), d in sorted(deltas.items())
        if d
    ]
    if not rows:
        return
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
    """`n` deliveries of a sent issue moved from one state to another (a provider event); a
    no-op while the issue has no stored counts (it is still sending: read live)."""
    if n <= 0 or from_state == to_state or not has_counts(session, [issue_id]):
        return
    add(session, {(issue_id, from_state): -n, (issue_id, to_state): n})


def bump(session: Db, issue_id: int, state: str, n: int = 1) -> None:
    """`n` more deliveries of a sent issue opened / clicked (first time each)."""
    if n > 0 and has_counts(session, [issue_id]):
        add(session, {(issue_id, state): n})


def _count_true(column: Any) -> Any:
    return func.coalesce(func.sum(case((column, 1), else_=0)), 0)
