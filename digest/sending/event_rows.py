"""What one webhook batch's provider events do to deliveries and their counts, set-based.

SendGrid posts up to a thousand events at a time, and an issue to 10M readers brings 30–50M of
them: loading and saving one ORM object per event (the way this began) cost a round trip or
two per event. Here a batch's deliveries are read in one query (on PostgreSQL, rows named only
by `processed` events only if they are unknown: the only ones such an event changes), the
events are applied to them in memory, in order, with the rules below, and what changed is
written back at once: one `UPDATE … FROM` a JSON recordset giving each changed row its final
values (its `updated_at` its own latest event), then one upsert per (issue, state) count that
moved, one per engagement bucket (`digest.sending.event_engagement`). Lists go to the
database as one text or JSON parameter each: psycopg adapts a Python list element by element,
which cost more than the statements.

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

Counts: the database's triggers (migration 0012, `digest.sending.snapshot`) move each changed
delivery between states, in the statement that changes it; this module adds only the `settled`
tally. The batch's deliveries are locked (`FOR UPDATE`, in id order) and then their issues
shared-locked (`FOR SHARE`), the order the ledger takes them in; SQLite serialises writers.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import String, bindparam, select, text
from sqlmodel import Session

from digest.sending import snapshot
from digest.sending.counts import BATCH_SPEAKS_AS, with_batches
from digest.storage.models import BatchStatus, Delivery, DeliveryStatus, Issue, SendBatch
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
    email: str  # as stored; an event naming another address is not about it (`address`)
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
        return _effective(self.status, self.batch)

    def address(self) -> str:
        """The stored address as events are compared with it (`lookup_address`)."""
        return lookup_address(self.email)


def _effective(status: str, batch: str | None) -> str:
    if status != DeliveryStatus.PENDING:
        return status
    return str(BATCH_SPEAKS_AS.get(batch, DeliveryStatus.PENDING))


# PostgreSQL: the batch's ids as one text parameter (`{1,2,3}`) cast to an array, with a flag
# each: unflagged ids (named only by `processed` events) are read only if they are unknown.
_LOAD = text(
    "SELECT d.id, d.issue_id, d.email, d.status, b.status, d.opened, d.clicked "
    "FROM unnest(CAST(:ids AS integer[]), CAST(:need AS boolean[])) AS u(id, need) "
    "JOIN delivery AS d ON d.id = u.id LEFT OUTER JOIN send_batch AS b ON b.id = d.batch_id "
    "WHERE u.need OR d.status = :unknown OR (d.status = :pending AND b.status = :batch_unknown) "
    "ORDER BY d.id FOR UPDATE OF d"
).bindparams(
    bindparam("ids", type_=String()),
    bindparam("need", type_=String()),
    unknown=str(DeliveryStatus.UNKNOWN),
    pending=str(DeliveryStatus.PENDING),
    batch_unknown=str(BatchStatus.UNKNOWN),
)


def load(
    session: Session, delivery_ids: Iterable[int], *, if_unknown: Iterable[int] = ()
) -> dict[int, Row]:
    """The deliveries with these ids, and those of `if_unknown` whose effective status is
    unknown (a `processed` event changes no other), locked until the transaction ends.

    Most `processed` events are for recipients already accepted: their rows are not read,
    locked or written at all (nearly half of an issue's events are `processed`).
    """
    needed = set(delivery_ids)
    ids = sorted(needed.union(if_unknown))
    if not ids:
        return {}
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        found = session.execute(
            _LOAD,
            {
                "ids": _int_array(ids),
                "need": "{" + ",".join("tf"[i not in needed] for i in ids) + "}",
            },
        ).all()
    else:
        statement = (
            select(
                _D.c.id, _D.c.issue_id, _D.c.email, _D.c.status, _B.c.status,
                _D.c.opened, _D.c.clicked,
            )
            .select_from(with_batches())
            .where(among(_D.c.id, ids, dialect))
            .order_by(_D.c.id)
        )  # fmt: skip
        found = session.execute(statement).all()
    rows: dict[int, Row] = {}
    for d, issue, email, status, batch, opened, clicked in found:
        before = _effective(status, batch)
        if d not in needed and before != DeliveryStatus.UNKNOWN:
            continue  # SQLite reads them all
        rows[d] = Row(
            d, issue, email, status, batch, opened, clicked, before, opened, clicked
        )  # fmt: skip
    return rows


def _int_array(ids: Iterable[int]) -> str:
    """A PostgreSQL array literal of integers (`{1,2,3}`): one text parameter the server parses."""
    return "{" + ",".join(map(str, ids)) + "}"


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
    found = {int(i): str(n) for i, n in session.execute(statement)}
    # The counting triggers' per-issue locks taken up front, in id order: this POST's later
    # statements (bounces, unsubscribes) then never take them in an order another reverses.
    snapshot.lock(session, found)
    return found


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
    changed = [
        row
        for row in rows
        if row.status_at is not None
        or (row.opened and not row.opened_before)
        or (row.clicked and not row.clicked_before)
    ]
    if changed:
        _update_each(session, changed)
    return _count(session, changed)


# Every changed row in one statement, each with its own values (a row opened and clicked in one
# batch gets one new version, not one per column), from one JSON parameter.
_UPDATE = {
    "postgresql": text(
        "UPDATE delivery SET status = u.s, error = CASE WHEN u.keep THEN delivery.error ELSE u.e "
        "END, opened = u.o, clicked = u.c, updated_at = u.t "
        "FROM json_to_recordset(CAST(:rows AS json)) "
        "AS u(id integer, s varchar, keep boolean, e text, o boolean, c boolean, t timestamp) "
        "WHERE delivery.id = u.id"
    ).bindparams(bindparam("rows", type_=String())),
    "sqlite": text(
        "UPDATE delivery SET status = u.s, error = CASE WHEN u.keep THEN delivery.error ELSE u.e "
        "END, opened = u.o, clicked = u.c, updated_at = u.t "
        "FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.s') AS s, "
        "json_extract(value, '$.keep') AS keep, json_extract(value, '$.e') AS e, "
        "json_extract(value, '$.o') AS o, json_extract(value, '$.c') AS c, "
        "json_extract(value, '$.t') AS t FROM json_each(:rows)) AS u WHERE delivery.id = u.id"
    ).bindparams(bindparam("rows", type_=String())),
}


def _update_each(session: Session, changed: list[Row]) -> None:
    """The rows are locked and were read in this transaction: their values are final."""
    document = [
        {
            "id": row.id, "s": row.status, "keep": row.error is _KEEP,
            "e": None if row.error is _KEEP else row.error, "o": row.opened, "c": row.clicked,
            "t": _stored_time(max(at for at in (row.status_at, row.flag_at) if at is not None)),
        }
        for row in sorted(changed, key=lambda r: r.id)
    ]  # fmt: skip
    statement = _UPDATE[session.get_bind().dialect.name]
    session.execute(statement, {"rows": json.dumps(document)})


def _stored_time(at: datetime) -> str:
    """A moment as `UTCDateTime` stores it, UTC without an offset, in the text SQLite's DateTime
    reads back (and PostgreSQL parses)."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _count(session: Session, changed: list[Row]) -> dict[int, int]:
    """Add the `settled` tally (the triggers count the states); recipients settled per issue."""
    settled: dict[int, int] = defaultdict(int)
    for row in changed:
        if row.before == DeliveryStatus.UNKNOWN and row.effective != DeliveryStatus.UNKNOWN:
            settled[row.issue_id] += 1
    snapshot.add(session, {(i, snapshot.SETTLED): n for i, n in settled.items()})
    return dict(settled)
