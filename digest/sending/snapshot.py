"""An issue's delivery counts, kept once it is sent, so reading them scans no delivery.

While an issue is sending its counts are read live from its deliveries (one issue's rows,
through the (issue, subscriber) index: `digest.sending.counts.delivery_counts`). When it becomes
`sent` (`ledger.finish_if_done`) the counts are stored in `issue_count`, in the same transaction;
after that only provider events change its deliveries, and they adjust the stored counts in
their own transaction (`shift`, `bump`), so the counts stay exact after any crash. A sent issue
sent again (`--retry-failed`, `--retry-unknown`) drops them until it is sent once more.
Retention deletes the deliveries of old issues but never these counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import case, delete, func, insert, select, update
from sqlmodel import Session

from digest.sending.counts import SEND_STATES, delivery_counts
from digest.storage.db import Db
from digest.storage.models import Delivery, IssueCount

_C = IssueCount.__table__  # type: ignore[attr-defined]
_D = Delivery.__table__  # type: ignore[attr-defined]
OPENED, CLICKED = "opened", "clicked"


def take(session: Db, issue_id: int) -> dict[str, int]:
    """Store the issue's counts now (effective states, opened, clicked), replacing any."""
    counts = delivery_counts(session, issue_id)  # type: ignore[arg-type]
    opened, clicked = session.execute(
        select(
            func.coalesce(func.sum(case((_D.c.opened, 1), else_=0)), 0),
            func.coalesce(func.sum(case((_D.c.clicked, 1), else_=0)), 0),
        ).where(_D.c.issue_id == issue_id)
    ).one()
    counts = {**counts, OPENED: int(opened), CLICKED: int(clicked)}
    session.execute(delete(_C).where(_C.c.issue_id == issue_id))
    session.execute(
        insert(_C), [{"issue_id": issue_id, "state": s, "n": n} for s, n in counts.items()]
    )
    return counts


def drop(session: Db, issue_id: int) -> None:
    """Forget the stored counts: the issue is being sent again."""
    session.execute(delete(_C).where(_C.c.issue_id == issue_id))


def stored(session: Db, issue_ids: Iterable[int]) -> dict[int, dict[str, int]]:
    """The stored counts of those of `issue_ids` that have them."""
    ids = list(issue_ids)
    out: dict[int, dict[str, int]] = {}
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            select(_C.c.issue_id, _C.c.state, _C.c.n).where(
                _C.c.issue_id.in_(ids[start : start + 1000])
            )
        )
        for issue_id, state, n in rows:
            out.setdefault(int(issue_id), {})[str(state)] = int(n)
    return out


def counts(session: Session, issue_id: int) -> dict[str, int]:
    """The issue's counts: stored once sent, else read from its deliveries (every send state
    present, as `delivery_counts` gives them; no opened/clicked for a live read)."""
    kept = stored(session, [issue_id]).get(issue_id)
    if kept is None:
        return delivery_counts(session, issue_id)
    return {**dict.fromkeys(SEND_STATES, 0), **kept}


def shift(session: Db, issue_id: int, from_state: str, to_state: str, n: int = 1) -> None:
    """`n` deliveries of a sent issue moved from one state to another (a provider event); a
    no-op while the issue has no stored counts (it is still sending: read live)."""
    if n <= 0 or from_state == to_state:
        return
    if not _has(session, issue_id):
        return
    _add(session, issue_id, from_state, -n)
    _add(session, issue_id, to_state, n)


def bump(session: Db, issue_id: int, state: str, n: int = 1) -> None:
    """`n` more deliveries of a sent issue opened / clicked (first time each)."""
    if n > 0 and _has(session, issue_id):
        _add(session, issue_id, state, n)


def _has(session: Db, issue_id: int) -> bool:
    found = session.execute(select(_C.c.issue_id).where(_C.c.issue_id == issue_id).limit(1))
    return found.first() is not None


def _add(session: Db, issue_id: int, state: str, n: int) -> None:
    changed = session.execute(
        update(_C).where(_C.c.issue_id == issue_id, _C.c.state == state).values(n=_C.c.n + n)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        session.execute(insert(_C).values(issue_id=issue_id, state=state, n=max(n, 0)))
