"""The effective delivery status, and every count made from it.

A delivery row stores only what happened to its recipient alone (skipped, failed or unknown on
its own, provider events); while it reads `pending`, its batch speaks for it, so accepting a
batch of 1000 writes one batch row, not 1000 delivery rows (see `digest.sending.ledger`).
Whoever counts deliveries — the ledger, `digest deliveries`, `status`, `stats`, `/metrics` and
unsubscribe crediting — reads `effective_status()` from here, never `Delivery.status` alone:
counting the stored column said `sent 0` for an issue that reached 14 people.

The database applies the same rule as deliveries and batches change, to keep every issue's
counts (`digest.sending.snapshot`, migration 0012's triggers, written out in SQL there):
`BATCH_SPEAKS_AS` is the one definition, and tests/integration/test_cheap_counts.py checks the
triggers against `delivery_counts` here for every batch status.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, func, or_, select, true
from sqlalchemy.sql import Select
from sqlmodel import Session

from digest.storage.models import BatchStatus, Delivery, DeliveryStatus, Issue, SendBatch

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]

# What a `pending` row is, by its batch's status (no batch yet, or moved on: still pending).
BATCH_SPEAKS_AS: dict[str | None, DeliveryStatus] = {
    None: DeliveryStatus.PENDING,
    BatchStatus.FILLING: DeliveryStatus.PENDING,
    BatchStatus.PENDING: DeliveryStatus.PENDING,
    BatchStatus.SENDING: DeliveryStatus.SENDING,
    BatchStatus.ACCEPTED: DeliveryStatus.ACCEPTED,
    BatchStatus.FAILED: DeliveryStatus.FAILED,
    BatchStatus.UNKNOWN: DeliveryStatus.UNKNOWN,
    BatchStatus.RETRIED: DeliveryStatus.PENDING,
}

# The states of a send, always reported (0 or more); provider-event states appear when they occur.
SEND_STATES = (
    DeliveryStatus.PENDING,
    DeliveryStatus.SENDING,
    DeliveryStatus.ACCEPTED,
    DeliveryStatus.FAILED,
    DeliveryStatus.SKIPPED,
    DeliveryStatus.UNKNOWN,
)

# Handed to a transport that took it, whatever the provider reported after: what `sent` counts.
ACCEPTED_STATES = (
    DeliveryStatus.ACCEPTED,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.BOUNCED,
    DeliveryStatus.DROPPED,
    DeliveryStatus.DEFERRED,
)


def effective_status() -> ColumnElement[str]:
    """SQL for a delivery's status as counts read it; select from `with_batches()`."""
    speaks = {
        batch: str(row) for batch, row in BATCH_SPEAKS_AS.items() if row != DeliveryStatus.PENDING
    }
    return case(
        (_D.c.status != DeliveryStatus.PENDING, _D.c.status),
        else_=case(speaks, value=_B.c.status, else_=str(DeliveryStatus.PENDING)),
    )


def with_batches() -> Any:
    """Deliveries joined to their batches (outer: a row may have none yet)."""
    return _D.outerjoin(_B, _B.c.id == _D.c.batch_id)


def counts_by(*keys: Any) -> Select[Any]:
    """`SELECT keys…, effective status, count(*)` over deliveries, grouped; add a WHERE."""
    status = effective_status()
    return select(*keys, status, func.count()).select_from(with_batches()).group_by(*keys, status)


def delivery_counts(session: Session, issue_id: int) -> dict[str, int]:
    """How many of the issue's deliveries are in each state (every send state present, 0 or
    more; provider-event states only when they occur)."""
    counts: dict[str, int] = dict.fromkeys(SEND_STATES, 0)
    for state, n in session.execute(counts_by().where(_D.c.issue_id == issue_id)):
        counts[str(state)] = counts.get(str(state), 0) + int(n)
    return counts


def accepted(counts: dict[str, int]) -> int:
    """How many of `counts` the transport took (`sent` in `digest stats`)."""
    return sum(counts.get(state, 0) for state in ACCEPTED_STATES)


def issue_to_credit(session: Session, subscriber_id: int, newsletter: str) -> int | None:
    """The latest issue of `newsletter` this subscriber was sent (among its last ten issues).

    Unsubscribe links carry no issue, so an unsubscribe is credited to the last issue the
    person received. Looking only at recent issues keeps it to probes of the
    (issue_id, subscriber_id) unique index.
    """
    recent = (
        select(_I.c.id)
        .where(_I.c.newsletter == newsletter)
        .order_by(_I.c.id.desc())
        .limit(_RECENT_ISSUES)
        .scalar_subquery()
    )
    statement = (
        select(_D.c.issue_id)
        .select_from(with_batches())
        .where(
            _D.c.subscriber_id == subscriber_id,
            _D.c.issue_id.in_(recent),
            effective_status().in_([str(s) for s in ACCEPTED_STATES]),
        )
        .order_by(_D.c.issue_id.desc())
        .limit(1)
    )
    return session.execute(statement).scalar()


_RECENT_ISSUES = 10


# -- what is left to send (from batch sizes: no scan of deliveries) ------------------------------


def in_zones(zones: Collection[str | None] | None) -> ColumnElement[bool]:
    """Batches of these time zones (None in `zones`: batches cut without one); all if None."""
    if zones is None:
        return true()
    named = sorted(z for z in zones if z is not None)
    clauses = [_B.c.zone.in_(named)] if named else []
    if None in zones:
        clauses.append(_B.c.zone.is_(None))
    return or_(*clauses) if clauses else false()


def pending_recipients(
    session: Session, issue_id: int, zones: Collection[str | None] | None = None
) -> int:
    """How many deliveries wait in pending batches of the given time zones (see `in_zones`)."""
    total = session.execute(
        select(func.coalesce(func.sum(_B.c.size), 0)).where(
            and_(_B.c.issue_id == issue_id, _B.c.status == BatchStatus.PENDING, in_zones(zones))
        )
    ).scalar()
    return int(total or 0)


def pending_zones(session: Session, issue_id: int) -> set[str | None]:
    """The time zones of the issue's pending batches (None: batches cut without one)."""
    statement = (
        select(_B.c.zone)
        .where(_B.c.issue_id == issue_id, _B.c.status == BatchStatus.PENDING)
        .distinct()
    )
    return set(session.execute(statement).scalars())
