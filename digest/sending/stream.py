"""One recipient at a time, each one's outcome recorded before the next goes: SMTP's crash window.

A transport that answers per message (`confirms_each`, SMTP) would otherwise leave a whole
batch unknown when its sender dies mid-batch. Here a claimed batch is sent in delivery order
and the ledger learns of each row as it happens, one transaction per message:

- a row is handed over by a compare-and-set `pending → sending` on the row itself, and only
  while this sender still holds the batch; only after that commits does it reach the transport;
- the same transaction records the previous row's outcome (`sending → accepted | failed |
  unknown`, on the row), so at most one row per sending thread is ever in flight (the
  threads' steps share transactions, `stream_commit`, but each waits for its own);
- `ledger.release_stale` finds a dead sender's batch: its `sending` rows become unknown, and
  the batch goes back to pending, since its untouched rows were never handed to the transport.

The claim, the read of the batch and the hand-over of its first row are one transaction, so
there is no moment at which a claimed batch has no row in flight (which would make it all
unknown). Exactly-once rests on the same compare-and-sets as batches do, one level down.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, exists, select, update

from digest.sending import ledger
from digest.sending.claimer import Claimer
from digest.sending.stream_commit import GroupCommit, Step
from digest.storage.db import Db
from digest.storage.models import BatchStatus, Delivery, DeliveryStatus, SendBatch
from digest.transports import OutgoingBatch, SendOutcome, SendResult

if TYPE_CHECKING:
    from digest.sending.run import SendRun

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]

_ROW_STATUS = {
    SendOutcome.ACCEPTED: DeliveryStatus.ACCEPTED,
    SendOutcome.FAILED: DeliveryStatus.FAILED,
    SendOutcome.UNKNOWN: DeliveryStatus.UNKNOWN,
}


# Built once: one of each per message sent, so their construction would be a tenth of the CPU.
_HAND_OVER = (
    update(_D)
    .where(
        _D.c.id == bindparam("row_id"),
        _D.c.status == DeliveryStatus.PENDING,
        exists().where(
            _B.c.id == bindparam("row_batch"),
            _B.c.status == BatchStatus.SENDING,
            _B.c.claimed_by == bindparam("row_claimer"),
        ),
    )
    .values(
        status=DeliveryStatus.SENDING, updated_at=bindparam("row_now", type_=_D.c.updated_at.type)
    )
)
_CONFIRM = (
    update(_D)
    .where(_D.c.id == bindparam("row_id"), _D.c.status == DeliveryStatus.SENDING)
    .values(
        status=bindparam("row_status"),
        error=bindparam("row_error"),
        provider_message_id=bindparam("row_provider_id"),
        updated_at=bindparam("row_now", type_=_D.c.updated_at.type),
    )
)


def hand_over(db: Db, *, batch_id: int, delivery_id: int, claimer: Claimer, now: datetime) -> None:
    """`pending → sending` for one row of a batch this sender holds; LostClaim if not."""
    values = {"row_id": delivery_id, "row_batch": batch_id, "row_claimer": str(claimer)}
    done = db.execute(_HAND_OVER, {**values, "row_now": now})
    if not done.rowcount:  # type: ignore[attr-defined]
        raise ledger.LostClaim(f"delivery {delivery_id} of batch {batch_id} was not ours to send")


def _confirm_row(delivery_id: int, result: SendResult, now: datetime) -> dict[str, Any]:
    accepted = result.accepted
    return {
        "row_id": delivery_id,
        "row_status": str(_ROW_STATUS[result.outcome]),
        "row_error": None if accepted else result.error,
        "row_provider_id": result.message_id if accepted else None,
        "row_now": now,
    }


def confirm(db: Db, *, delivery_id: int, result: SendResult, now: datetime) -> None:
    """`sending → ` the transport's outcome, on the row."""
    done = db.execute(_CONFIRM, _confirm_row(delivery_id, result, now))
    if not done.rowcount:  # type: ignore[attr-defined]
        raise ledger.LostClaim(f"delivery {delivery_id} was no longer in flight when answered")


def finish(
    db: Db, *, batch_id: int, results: Sequence[SendResult], claimer: Claimer, now: datetime
) -> None:
    """Close the batch; its rows carry their own outcomes already."""
    outcomes = {r.outcome for r in results}
    status = BatchStatus.ACCEPTED
    if results and SendOutcome.ACCEPTED not in outcomes:
        status = BatchStatus.UNKNOWN if SendOutcome.UNKNOWN in outcomes else BatchStatus.FAILED
    done = db.execute(
        update(_B)
        .where(
            _B.c.id == batch_id,
            _B.c.claimed_by == str(claimer),
            _B.c.status == BatchStatus.SENDING,
        )
        .values(status=status, error=next((r.error for r in results if r.error), None),
                updated_at=now)
    )  # fmt: skip
    if not done.rowcount:  # type: ignore[attr-defined]
        raise ledger.LostClaim(f"batch {batch_id} was taken from {claimer} while in flight")


def release_streamed(db: Db, *, batch_id: int, claimed_by: str, now: datetime) -> bool:
    """A dead sender's batch sent row by row: its rows in flight → unknown, the batch → pending
    (its rows still pending never reached the transport). False if it was not sent so."""
    in_flight = list(
        db.execute(
            select(_D.c.id).where(
                and_(_D.c.batch_id == batch_id, _D.c.status == DeliveryStatus.SENDING)
            )
        ).scalars()
    )
    if not in_flight:
        return False
    taken = db.execute(
        update(_B)
        .where(_B.c.id == batch_id, _B.c.status == BatchStatus.SENDING,
               _B.c.claimed_by == claimed_by)
        .values(status=BatchStatus.PENDING, claimed_by=None, claimed_at=None, updated_at=now)
    )  # fmt: skip
    if not taken.rowcount:  # type: ignore[attr-defined]
        return False
    db.execute(
        update(_D)
        .where(_D.c.id.in_(in_flight), _D.c.status == DeliveryStatus.SENDING)
        .values(
            status=DeliveryStatus.UNKNOWN,
            error=f"its sender ({claimed_by}) stopped while this message was in flight",
            updated_at=now,
        )
    )
    return True


def one_batch(run: SendRun, quota: int | None) -> bool:
    """Claim a batch and send it row by row (see the module); False when there is none."""
    app, claimer = run.app, run.claimer
    seen = run._pages
    with run._writing, app.engine.begin() as db:
        batch_id = ledger.claim(
            db,
            issue_id=run.issue_id,
            claimer=claimer,
            now=app.now(),
            zones=run.zones,
            by_variant=run.newsletter.personal,
        )
        batch = None
        if batch_id is not None:
            batch = ledger.open_batch(
                db, issue_id=run.issue_id, batch_id=batch_id, now=app.now(),
                newsletter=run.newsletter.slug, max_recipients=quota,
                replaced_by=run.replaced_by,
            )  # fmt: skip
            if batch.recipients:
                hand_over(db, batch_id=batch_id, delivery_id=batch.recipients[0].delivery_id,
                          claimer=claimer, now=app.now())  # fmt: skip
    taken = 0 if batch is None else len(batch.recipients) + batch.skipped
    if quota is not None:
        run._give_back(quota - taken)
    if batch is None:
        return run._wait_for_a_page(seen)
    results = _send_in_order(run, batch.batch_id, run._outgoing(batch))
    run._note(batch, results, taken)
    return True


def _send_in_order(run: SendRun, batch_id: int, outgoing: OutgoingBatch) -> list[SendResult]:
    """Each recipient in turn; its outcome and the next one's hand-over committed (with other
    threads' steps, see `stream_commit`) before the next message goes."""
    app, claimer, recipients = run.app, str(run.claimer), outgoing.recipients
    commits = _group_commit(run)
    results: list[SendResult] = []
    for n, recipient in enumerate(recipients):
        run.limiter.acquire(1)
        (result,) = run.transport.send(OutgoingBatch(outgoing.message, [recipient], batch_id))
        results.append(result)
        now = app.now()
        step = Step(_confirm_row(recipient.delivery_id or 0, result, now))
        if n + 1 < len(recipients):
            step.hand_over = {"row_id": recipients[n + 1].delivery_id or 0, "row_batch": batch_id,
                              "row_claimer": claimer, "row_now": now}  # fmt: skip
        else:
            step.finish = partial(_finish_batch, batch_id, list(results), run.claimer, now)
        commits.record(step)
    if not recipients:
        with run._writing, app.engine.begin() as db:
            finish(db, batch_id=batch_id, results=[], claimer=run.claimer, now=app.now())
    return results


def _finish_batch(
    batch_id: int, results: list[SendResult], claimer: Claimer, now: datetime, db: Db
) -> None:
    finish(db, batch_id=batch_id, results=results, claimer=claimer, now=now)


_COMMITS: weakref.WeakKeyDictionary[SendRun, GroupCommit] = weakref.WeakKeyDictionary()
_COMMITS_LOCK = threading.Lock()


def _group_commit(run: SendRun) -> GroupCommit:
    """The run's group commit, shared by its sending threads."""
    with _COMMITS_LOCK:
        commits = _COMMITS.get(run)
        if commits is None:
            commits = _COMMITS[run] = GroupCommit(run.app.engine, run._writing, _CONFIRM,
                                                  _HAND_OVER)  # fmt: skip
            weakref.finalize(run, commits.close)
        return commits
