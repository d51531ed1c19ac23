"""The delivery ledger: who gets an issue, in which batch, and what became of each batch.

Rules that make a send exactly-once and resumable (listmonk advances its checkpoint when a batch
is *fetched*, so a crash skips people; we only move a batch forward after the transport said):

1. `digest.sending.freeze` writes one Delivery row per recipient, cut into SendBatch rows, in the
   transaction that moves the issue to `sending` (a compare-and-set on the issue's status), so
   the audience is frozen exactly once, completely or not at all.
2. `claim` moves one batch `pending → sending` with a compare-and-set (`FOR UPDATE SKIP
   LOCKED` on PostgreSQL), so two senders, on one host or several, never get the same batch.
3. `record` moves it `sending → accepted | failed | unknown` after the transport answered.
   A batch left `sending` by a sender that died (`digest.sending.claimer`) is not resent:
   `release_stale` marks it `unknown`, and only `requeue(..., UNKNOWN)` (the operator's
   `--retry-unknown`) sends it again.

Per-recipient facts (skipped, failed alone, provider events) go on the Delivery row; otherwise
the batch speaks for its rows (see DeliveryStatus), which keeps a million-recipient send to a
million inserts and a thousand batch updates.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, update
from sqlmodel import Session

from digest.sending import snapshot
from digest.sending.claimer import Claimer
from digest.sending.counts import BATCH_SPEAKS_AS, delivery_counts, in_zones
from digest.sending.freeze import insert_batches
from digest.storage.db import Db, driver_rows
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueStatus,
    SendBatch,
)
from digest.transports import SendOutcome, SendResult
from subscribers import mailable
from subscribers.audience import changed_since

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]

# Consent recorded by another host whose clock is behind ours still counts as "since the send
# started" (see `open_batch`).
CLOCK_MARGIN = timedelta(minutes=10)

_OUTCOME_TO_STATUS = {
    SendOutcome.ACCEPTED: DeliveryStatus.ACCEPTED,
    SendOutcome.FAILED: DeliveryStatus.FAILED,
    SendOutcome.UNKNOWN: DeliveryStatus.UNKNOWN,
}


# -- claiming and recording batches -------------------------------------------------------------


@dataclass(slots=True)  # not frozen: see OutgoingRecipient
class ClaimedRecipient:
    delivery_id: int
    subscriber_id: int
    email: str
    name: str | None
    message_id: str | None = None  # drawn at the freeze; None only for rows frozen before 0002


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: int
    recipients: list[ClaimedRecipient]  # to send now, in delivery order
    skipped: int  # blocked since the freeze: marked skipped, not sent
    variant_id: int | None = None  # personal newsletters: what every recipient of it gets


def claim(
    session: Db,
    *,
    issue_id: int,
    claimer: Claimer,
    now: datetime,
    zones: Collection[str | None] | None = None,
    by_variant: bool = False,
) -> int | None:
    """Take the next pending batch of the issue (compare-and-set); None when none is left.
    `zones` limits it to batches of those time zones (subscriber-local delivery). `by_variant`
    (personal issues) takes the first variant's batches first: its batches are cut as readers
    are planned, interleaved with other variants', and a sender keeps only the latest variants'
    messages (in the order they were rendered: the variants' ids).

    Commit right after: the claim is the only write here, so the write lock (SQLite) or row lock
    (PostgreSQL) is held for one statement, not while the batch is read and checked.
    """
    next_pending = (
        select(_B.c.id)
        .where(_B.c.issue_id == issue_id, _B.c.status == BatchStatus.PENDING, in_zones(zones))
        .order_by(*((_B.c.variant_id,) if by_variant else ()), _B.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers anyway
        .scalar_subquery()
    )
    row = session.execute(
        update(_B)
        .where(_B.c.id == next_pending, _B.c.status == BatchStatus.PENDING)
        .values(
            status=BatchStatus.SENDING,
            claimed_by=str(claimer),
            claimed_at=now,
            attempts=_B.c.attempts + 1,
            updated_at=now,
        )
        .returning(_B.c.id)
    ).first()
    return None if row is None else int(row[0])


def open_batch(
    session: Db,
    *,
    issue_id: int,
    batch_id: int,
    now: datetime,
    newsletter: str,
    max_recipients: int | None = None,
    replaced_by: Sequence[str] = (),
) -> ClaimedBatch:
    """The recipients of a batch just claimed, minus those who may no longer be mailed.

    `max_recipients` splits a larger batch (its tail becomes a new pending batch), for
    `--limit`. Whoever may no longer be mailed `newsletter` (unsubscribed, suppressed since the
    freeze) is marked skipped here, just before the transport call. Only the subscribers whose
    consent changed since the send started are checked (`subscribers.changed_since`, with a
    margin for other hosts' clocks); when that cannot be told, every row is probed in the
    query that reads the batch.
    """
    started = session.execute(select(_I.c.sending_at).where(_I.c.id == issue_id)).scalar()
    changed = None if started is None else changed_since(session, started - CLOCK_MARGIN)
    allowed = mailable(_D.c.subscriber_id, newsletter, replaced_by=replaced_by)
    in_batch = (_D.c.batch_id == batch_id, _D.c.status == str(DeliveryStatus.PENDING))
    columns = [_D.c.id, _D.c.subscriber_id, _D.c.email, _D.c.name]
    if changed is None:
        probed = select(*columns, allowed, _D.c.message_id)
        rows = list(session.execute(probed.where(*in_batch).order_by(_D.c.id)).all())
    else:
        read = driver_rows(  # plain tuples: a thousand per batch, a million in a large send
            session, select(*columns, _D.c.message_id).where(*in_batch).order_by(_D.c.id)
        )
        suspects = sorted({row[1] for row in read} & changed)
        blocked: set[int] = set()
        for start in range(0, len(suspects), 1000):
            blocked |= {
                int(subscriber)
                for subscriber, ok in session.execute(
                    select(_D.c.subscriber_id, allowed).where(
                        *in_batch, _D.c.subscriber_id.in_(suspects[start : start + 1000])
                    )
                )
                if not ok
            }
        rows = [(d, s, e, n, s not in blocked, m) for d, s, e, n, m in read]  # type: ignore[misc]
    resized = False
    zone, variant = session.execute(
        select(_B.c.zone, _B.c.variant_id).where(_B.c.id == batch_id)
    ).one()
    if max_recipients is not None and len(rows) > max_recipients:
        tail = rows[max_recipients:]
        rows = rows[:max_recipients]
        _move_to_new_batch(session, issue_id, [row[0] for row in tail], now, zone, variant)
        resized = True
    members = [ClaimedRecipient(d, s, e, n, m) for d, s, e, n, ok, m in rows if ok]
    skipped_ids = [row[0] for row in rows if not row[4]]
    if skipped_ids:
        set_rows(session, skipped_ids, status=DeliveryStatus.SKIPPED, now=now)
    if resized:
        session.execute(update(_B).where(_B.c.id == batch_id).values(size=len(rows)))
    return ClaimedBatch(batch_id, members, len(skipped_ids), variant)


def release(session: Db, *, batch_id: int, claimer: Claimer, now: datetime) -> bool:
    """Give back a claimed batch that never reached the transport."""
    result = session.execute(
        update(_B)
        .where(
            _B.c.id == batch_id,
            _B.c.status == BatchStatus.SENDING,
            _B.c.claimed_by == str(claimer),
        )
        .values(status=BatchStatus.PENDING, claimed_by=None, claimed_at=None, updated_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def record(
    session: Db,
    *,
    batch: ClaimedBatch,
    results: Sequence[SendResult],
    claimer: Claimer,
    now: datetime,
) -> str:
    """Store what the transport answered; returns the batch's new status.

    The batch takes the best outcome (accepted if anyone was, else unknown if anything may have
    gone, else failed); recipients whose own outcome differs get it on their row.
    """
    if len(results) != len(batch.recipients):
        raise ValueError(
            f"transport answered {len(results)} results for {len(batch.recipients)} recipients"
        )
    outcomes = {r.outcome for r in results}
    if SendOutcome.ACCEPTED in outcomes or not results:
        status = BatchStatus.ACCEPTED
    elif SendOutcome.UNKNOWN in outcomes:
        status = BatchStatus.UNKNOWN
    else:
        status = BatchStatus.FAILED
    batch_status = BATCH_SPEAKS_AS[status]
    message_id = next((r.message_id for r in results if r.accepted and r.message_id), None)
    error = next((r.error for r in results if r.error), None)
    own: list[dict[str, Any]] = []
    for recipient, result in zip(batch.recipients, results, strict=True):
        row_status = _OUTCOME_TO_STATUS[result.outcome]
        differs = result.accepted and result.message_id and result.message_id != message_id
        if row_status != batch_status or differs:
            own.append(
                {
                    "delivery_id": recipient.delivery_id,
                    "row_status": row_status if row_status != batch_status else "pending",
                    "row_error": result.error,
                    "row_message_id": result.message_id if result.accepted else None,
                    "row_now": now,
                }
            )
    if own:
        session.execute(
            update(_D)
            .where(_D.c.id == bindparam("delivery_id"))
            .values(
                status=bindparam("row_status"),
                error=bindparam("row_error"),
                provider_message_id=bindparam("row_message_id"),
                updated_at=bindparam("row_now", type_=_D.c.updated_at.type),
            ),
            own,
        )
    done = session.execute(
        update(_B)
        .where(
            _B.c.id == batch.batch_id,
            _B.c.claimed_by == str(claimer),
            _B.c.status.in_([BatchStatus.SENDING, BatchStatus.UNKNOWN]),
        )
        .values(
            status=status,
            provider_message_id=message_id,
            error=None if status == BatchStatus.ACCEPTED and not error else error,
            updated_at=now,
        )
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        raise LostClaim(f"batch {batch.batch_id} was taken from {claimer} while in flight")
    return status


class LostClaim(RuntimeError):
    """A batch's claim changed hands while it was in flight (should never happen)."""


def set_rows(session: Db, delivery_ids: Iterable[int], *, status: str, now: datetime) -> None:
    ids = list(delivery_ids)
    for start in range(0, len(ids), 1000):
        session.execute(
            update(_D)
            .where(_D.c.id.in_(ids[start : start + 1000]))
            .values(status=status, updated_at=now)
        )


def _move_to_new_batch(
    session: Db,
    issue_id: int,
    delivery_ids: list[int],
    now: datetime,
    zone: str | None,
    variant: int | None = None,
) -> int:
    (batch_id,) = insert_batches(session, issue_id, [len(delivery_ids)], now, [zone])
    if variant is not None:
        session.execute(update(_B).where(_B.c.id == batch_id).values(variant_id=variant))
    for start in range(0, len(delivery_ids), 1000):
        session.execute(
            update(_D)
            .where(_D.c.id.in_(delivery_ids[start : start + 1000]))
            .values(batch_id=batch_id, status=DeliveryStatus.PENDING, error=None, updated_at=now)
        )
    return batch_id


def heartbeat(session: Db, *, issue_id: int, claimer: Claimer, now: datetime) -> None:
    """Refresh this sender's claims, so that other hosts see it is alive."""
    session.execute(
        update(_B)
        .where(
            _B.c.issue_id == issue_id,
            _B.c.status == BatchStatus.SENDING,
            _B.c.claimed_by == str(claimer),
        )
        .values(claimed_at=now)
    )


# -- recovery -----------------------------------------------------------------------------------


def release_stale(
    session: Session, *, issue_id: int, me: Claimer, now: datetime, lease: timedelta
) -> list[int]:
    """Mark `unknown` the batches left in flight by senders that are gone; returns their ids.

    A batch sent row by row (`digest.sending.stream`) goes back to pending instead, with only
    its rows in flight marked unknown.
    """
    from digest.sending.stream import release_streamed

    stale: list[int] = []
    rows = session.execute(
        select(_B.c.id, _B.c.claimed_by, _B.c.claimed_at).where(
            _B.c.issue_id == issue_id, _B.c.status == BatchStatus.SENDING
        )
    ).all()
    for batch_id, claimed_by, claimed_at in rows:
        holder = Claimer.parse(claimed_by)
        if me.judges_alive(holder, _aware(claimed_at), now, lease):
            continue
        if release_streamed(session, batch_id=batch_id, claimed_by=claimed_by, now=now):
            stale.append(int(batch_id))
            continue
        result = session.execute(
            update(_B)
            .where(
                _B.c.id == batch_id,
                _B.c.status == BatchStatus.SENDING,
                _B.c.claimed_by == claimed_by,
            )
            .values(
                status=BatchStatus.UNKNOWN,
                error=f"its sender ({claimed_by}) stopped while the batch was in flight",
                updated_at=now,
            )
        )
        if result.rowcount:  # type: ignore[attr-defined]
            stale.append(int(batch_id))
    return stale


def _aware(moment: Any) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def requeue(
    session: Session, *, issue_id: int, status: DeliveryStatus, batch_size: int, now: datetime
) -> int:
    """Put the deliveries that ended `status` (failed or unknown) into new pending batches."""
    batch_status = {
        DeliveryStatus.FAILED: BatchStatus.FAILED,
        DeliveryStatus.UNKNOWN: BatchStatus.UNKNOWN,
    }[status]
    waiting = or_(
        _D.c.status == status,
        and_(_D.c.status == DeliveryStatus.PENDING, _B.c.status == batch_status),
    )
    source = _D.outerjoin(_B, _B.c.id == _D.c.batch_id)
    groups = session.execute(
        select(_B.c.zone, _D.c.variant_id)
        .select_from(source)
        .where(_D.c.issue_id == issue_id, waiting)
        .distinct()
    ).all()
    moved = 0
    # New batches keep their time zone and (personal newsletters) their variant.
    for zone, variant in sorted(groups, key=lambda g: (g[0] or "", g[1] or 0)):
        same_variant = _D.c.variant_id.is_(None) if variant is None else _D.c.variant_id == variant
        after = 0
        while True:
            ids = list(
                session.execute(
                    select(_D.c.id)
                    .select_from(source)
                    .where(_D.c.issue_id == issue_id, _D.c.id > after, waiting, in_zones({zone}),
                           same_variant)
                    .order_by(_D.c.id)
                    .limit(batch_size)
                ).scalars()
            )  # fmt: skip
            if not ids:
                break
            _move_to_new_batch(session, issue_id, ids, now, zone, variant)
            moved += len(ids)
            after = ids[-1]
    session.execute(
        update(_B)
        .where(_B.c.issue_id == issue_id, _B.c.status == batch_status)
        .values(status=BatchStatus.RETRIED, updated_at=now)
    )
    if moved:
        snapshot.drop(session, issue_id)
        session.execute(
            update(_I)
            .where(_I.c.id == issue_id, _I.c.status == IssueStatus.SENT)
            .values(status=IssueStatus.SENDING, sent_at=None, updated_at=now)
        )
    return moved


def finish_if_done(
    session: Session, *, issue_id: int, now: datetime, counts: dict[str, int] | None = None
) -> bool:
    """Move the issue to `sent` once its audience is frozen and nothing is pending, in flight or
    unknown; True if this call did."""
    counts = counts if counts is not None else delivery_counts(session, issue_id)
    if counts[DeliveryStatus.PENDING] or counts[DeliveryStatus.SENDING]:
        return False
    if counts[DeliveryStatus.UNKNOWN]:
        return False
    moved = session.execute(
        update(_I)
        .where(
            _I.c.id == issue_id,
            _I.c.status == IssueStatus.SENDING,
            _I.c.freezing_after.is_(None),
        )
        .values(status=IssueStatus.SENT, sent_at=now, updated_at=now)
    )
    done = bool(moved.rowcount == 1)  # type: ignore[attr-defined]
    if done:  # from now on its counts are read from `issue_count` (digest.sending.snapshot)
        snapshot.take(session, issue_id)
    return done
