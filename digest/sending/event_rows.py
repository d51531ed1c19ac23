"""What one webhook batch's provider events do to deliveries and their counts, set-based.

SendGrid posts up to a thousand events at a time, and an issue to 10M readers brings 30–50M of
them: loading and saving one ORM object per event (the way this began) cost a round trip or
two per event. Here a batch's deliveries are read in one query, the events are applied to them
in memory, in order, with the rules below, and what changed is written back grouped: one
`UPDATE … WHERE id IN (…)` per target status (and bounce reason), one for the opened flags, one
for the clicked flags, one upsert per (issue, state) count that moved, one per engagement
bucket (`digest.sending.event_engagement`).

Rules (unchanged from the per-event version):

- a status never moves backwards (`RANK`: deferred < delivered < dropped = bounced, anything
  else 0), ranked on the row's own stored status;
- open and click set `opened` (a click means it was opened, even with images off), click sets
  `clicked`, and both prove delivery (status delivered unless already ranked higher);
- bounced and dropped keep SendGrid's status, reason and type in `error`.

New: a recipient whose effective status is *unknown* (its batch's sender died mid-request, or
its own row) is **settled** by any event that proves the message went: delivered, deferred,
dropped, bounce, open, click as above, and `processed` (SendGrid took it: stored `accepted`,
which `--retry-unknown` no longer resends). Each settled recipient adds one to the issue's
`settled` tally (`digest.sending.snapshot.SETTLED`), which `digest deliveries` reports.
A `processed` event for any other recipient changes nothing (as before).

Counts: an issue with stored counts (`digest.sending.snapshot`) gets, in the same transaction,
−1 on the state each changed delivery was in (its *effective* status: a pending row speaks as
its batch) and +1 on the one it is in now, and +1 opened / clicked the first time. So that a
concurrent `finish_if_done` cannot store counts that miss or double an event, the batch's
deliveries are locked (`FOR UPDATE`, in id order) and then their issues shared-locked (`FOR
SHARE`), the order the ledger takes them in; SQLite serialises writers anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlmodel import Session

from digest.sending import snapshot
from digest.sending.counts import BATCH_SPEAKS_AS, effective_status, with_batches
from digest.storage.models import Delivery, DeliveryStatus, Issue, SendBatch
from subscribers.bulk import among
from subscribers.suppression import lookup_address

_D = Delivery.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]

RANK: dict[str, int] = {
    DeliveryStatus.DEFERRED: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.DROPPED: 3,
    DeliveryStatus.BOUNCED: 3,
}
_KEEP = object()  # the error column is left as it is


@dataclass(slots=True)
class Row:
    """One delivery as the batch's events leave it (`status` is the stored column)."""

    id: int
    issue_id: int
    address: str  # lookup_address(email): an event naming another address is not about it
    status: str
    batch: str | None
    opened: bool
    clicked: bool
    before: str  # effective status when read
    opened_before: bool
    clicked_before: bool
    error: object = _KEEP
    status_at: datetime | None = None  # when its status last changed, by SendGrid's clock
    flag_at: datetime | None = None  # when it was last opened or clicked

    @property
    def effective(self) -> str:
        if self.status != DeliveryStatus.PENDING:
            return self.status
        return str(BATCH_SPEAKS_AS.get(self.batch, DeliveryStatus.PENDING))


def load(session: Session, delivery_ids: Iterable[int]) -> dict[int, Row]:
    """The deliveries with these ids, locked until the transaction ends (PostgreSQL)."""
    ids = sorted(set(delivery_ids))
    rows: dict[int, Row] = {}
    if not ids:
        return rows
    dialect = session.get_bind().dialect
    statement = (
        select(
            _D.c.id, _D.c.issue_id, _D.c.email, _D.c.status, _B.c.status,
            _D.c.opened, _D.c.clicked, effective_status(),
        )
        .select_from(with_batches())
        .where(among(_D.c.id, ids, dialect))
        .order_by(_D.c.id)
        .with_for_update(of=_D)
    )  # fmt: skip
    for d, issue, email, status, batch, opened, clicked, effective in session.execute(statement):
        rows[int(d)] = Row(
            int(d), int(issue), lookup_address(email), str(status), batch, bool(opened),
            bool(clicked), str(effective), bool(opened), bool(clicked),
        )  # fmt: skip
    return rows


def lock_issues(session: Session, issue_ids: Iterable[int]) -> dict[int, str]:
    """Share-lock these issues (see the module docstring); their newsletters."""
    ids = sorted(set(issue_ids))
    if not ids:
        return {}
    statement = (
        select(_I.c.id, _I.c.newsletter)
        .where(_I.c.id.in_(ids))
        .order_by(_I.c.id)
        .with_for_update(read=True, of=_I)
    )
    return {int(i): str(n) for i, n in session.execute(statement)}


# -- the rules, in memory -----------------------------------------------------------------------


def set_status(row: Row, status: DeliveryStatus, at: datetime, detail: str | None) -> None:
    """A delivered / deferred / dropped / bounce event (a status never moves backwards)."""
    if RANK[status] > RANK.get(row.status, 0):
        row.status = status
        if status in (DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED):
            row.error = detail
        row.status_at = at


def engaged(row: Row, at: datetime, *, clicked: bool) -> None:
    """An open or click event."""
    row.opened = True
    row.clicked = row.clicked or clicked
    if RANK[DeliveryStatus.DELIVERED] > RANK.get(row.status, 0):
        row.status = DeliveryStatus.DELIVERED
        row.status_at = at
    row.flag_at = at


def processed(row: Row, at: datetime) -> bool:
    """A processed event: settles an unknown recipient (accepted); True if it did."""
    if row.effective != DeliveryStatus.UNKNOWN:
        return False
    row.status = DeliveryStatus.ACCEPTED
    row.status_at = at
    return True


# -- writing it back ----------------------------------------------------------------------------


def write(session: Session, rows: Iterable[Row]) -> dict[int, int]:
    """Store what changed, with the counts it moves; returns recipients settled per issue."""
    groups: dict[tuple[str, object], list[Row]] = defaultdict(list)
    opened: list[Row] = []
    clicked: list[Row] = []
    moved: list[Row] = []
    for row in rows:
        if row.status_at is not None:
            groups[(row.status, row.error)].append(row)
        newly_opened = row.opened and not row.opened_before
        newly_clicked = row.clicked and not row.clicked_before
        if newly_opened:
            opened.append(row)
        if newly_clicked:
            clicked.append(row)
        if newly_opened or newly_clicked or row.effective != row.before:
            moved.append(row)
    dialect = session.get_bind().dialect
    for (status, error), members in sorted(groups.items(), key=lambda g: str(g[0])):
        values: dict[str, object] = {
            "status": status,
            "updated_at": max(r.status_at for r in members if r.status_at),
        }
        if error is not _KEEP:
            values["error"] = error
        session.execute(
            update(_D).where(among(_D.c.id, [r.id for r in members], dialect)).values(values)
        )
    for column, members in (("opened", opened), ("clicked", clicked)):
        if members:
            at = max(r.flag_at for r in members if r.flag_at)
            session.execute(
                update(_D)
                .where(among(_D.c.id, [r.id for r in members], dialect))
                .values({column: True, "updated_at": at})
            )
    return _count(session, moved)


def _count(session: Session, moved: list[Row]) -> dict[int, int]:
    kept = snapshot.has_counts(session, {r.issue_id for r in moved})
    deltas: dict[tuple[int, str], int] = defaultdict(int)
    settled: dict[int, int] = defaultdict(int)
    for row in moved:
        after = row.effective
        if row.before == DeliveryStatus.UNKNOWN and after != DeliveryStatus.UNKNOWN:
            settled[row.issue_id] += 1
            deltas[(row.issue_id, snapshot.SETTLED)] += 1
        if row.issue_id not in kept:
            continue  # still sending: its counts are read live
        if after != row.before:
            deltas[(row.issue_id, row.before)] -= 1
            deltas[(row.issue_id, after)] += 1
        if row.opened and not row.opened_before:
            deltas[(row.issue_id, snapshot.OPENED)] += 1
        if row.clicked and not row.clicked_before:
            deltas[(row.issue_id, snapshot.CLICKED)] += 1
    snapshot.add(session, deltas)
    return dict(settled)
