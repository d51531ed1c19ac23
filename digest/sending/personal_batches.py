"""The SQL of a personal issue's planned batches (`digest.sending.personal_freeze`).

A planned batch is a `send_batch` row in status `filling` whose readers' ids are in `members`
("1,5,9") and whose delivery rows are not written yet: open while it has fewer than the batch
size and the plan goes on, then taken by a freezer, which writes its rows from `subscriber`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlmodel import Session

from digest.sending.freeze import message_ids
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueVariant,
    SendBatch,
)
from subscribers.models import Subscriber

SKIP = "\0"  # group keys starting with it are a reason to skip, not a plan's key
Group = tuple[str, str | None]  # (plan key or SKIP + reason, zone)

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_V = IssueVariant.__table__  # type: ignore[attr-defined]
_S = Subscriber.__table__  # type: ignore[attr-defined]


def take(
    session: Session, issue_id: int, now: datetime, *, wanted: int, full: int | None
) -> list[Any]:
    """The next planned batches, moved to `pending` by compare-and-set (this transaction
    writes their rows; nobody sees them before it commits): `wanted` at most, only those of at
    least `full` readers if given."""
    # Locked first (PostgreSQL; SQLite has one writer anyway), then moved by compare-and-set:
    # inside `IN (…)` PostgreSQL may run a LIMIT … SKIP LOCKED subquery again per row and
    # take every batch at once.
    ids = list(
        session.execute(
            select(_B.c.id)
            .where(
                _B.c.issue_id == issue_id,
                _B.c.status == BatchStatus.FILLING,
                _B.c.members.is_not(None),
                *([_B.c.size >= full] if full is not None else []),
            )
            .order_by(_B.c.id)
            .limit(wanted)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return []
    return list(
        session.execute(
            update(_B)
            .where(_B.c.id.in_(ids), _B.c.status == BatchStatus.FILLING)
            .values(status=BatchStatus.PENDING, updated_at=now)
            .returning(_B.c.id, _B.c.variant_id, _B.c.error, _B.c.members)
        ).all()
    )


def write(session: Session, issue_id: int, taken: list[Any], now: datetime, domain: str) -> int:
    """Each taken batch's delivery rows, by INSERT … SELECT from its members' ids; the
    batches get their real sizes, the skip groups' rows no batch."""
    taken = sorted(taken, key=lambda row: row[0])
    if session.connection().dialect.name == "postgresql":
        frozen, counts = _insert_all(session, issue_id, taken, now, domain)
    else:
        frozen, counts = _insert_each(session, issue_id, taken, now, domain)
    readers = Counter[int]()
    sizes: list[dict[str, int]] = []
    skips: list[int] = []
    for batch_id, variant_id, _, _ in taken:
        if variant_id is None:
            skips.append(batch_id)
        else:
            readers[variant_id] += counts.get(batch_id, 0)
            sizes.append({"b": batch_id, "s": counts.get(batch_id, 0)})
    if sizes:
        session.execute(
            update(_B).where(_B.c.id == bindparam("b")).values(size=bindparam("s"), members=None),
            sizes,
        )
    if skips:
        session.execute(delete(_B).where(_B.c.id.in_(skips)))
    if readers:
        session.execute(
            update(_V)
            .where(_V.c.id == bindparam("v"))
            .values(readers=_V.c.readers + bindparam("n")),
            [{"v": v, "n": n} for v, n in readers.items()],
        )
    return frozen


def append_members(session: Session, appended: list[dict[str, Any]]) -> None:
    """Add readers to open batches: each {"b": batch id, "n": how many, "more": ",7,9"}.

    On PostgreSQL one statement over arrays: a page adds to hundreds of batches, and as many
    statements cost the server more than the rows they change (1M readers: 3 s of the freeze)."""
    if session.connection().dialect.name == "postgresql":
        session.execute(
            text(
                "UPDATE send_batch AS b SET members = b.members || u.more, size = b.size + u.n"
                " FROM unnest(CAST(:ids AS integer[]), CAST(:ns AS integer[]),"
                " CAST(:mores AS text[])) AS u(id, n, more) WHERE b.id = u.id"
            ),
            {
                "ids": [row["b"] for row in appended],
                "ns": [row["n"] for row in appended],
                "mores": [row["more"] for row in appended],
            },
        )
        return
    session.execute(
        update(_B)
        .where(_B.c.id == bindparam("b"))
        .values(members=_B.c.members + bindparam("more"), size=_B.c.size + bindparam("n")),
        appended,
    )


def insert_members(
    session: Session, issue_id: int, now: datetime, domain: str
) -> Callable[..., int]:
    """SQLite: a function writing the delivery rows of one batch's members ("1,5,9"); returns
    how many (a subscriber erased since the plan has none). PostgreSQL: `_insert_all`."""
    each: Any = select(literal_column("value")).select_from(func.json_each(bindparam("ids")))
    chosen = _S.c.id.in_(each)
    rows = select(
        literal(issue_id),
        _S.c.id,
        _S.c.email,
        _S.c.name,
        bindparam("status", type_=String),
        bindparam("batch", type_=Integer),
        bindparam("variant", type_=Integer),
        bindparam("error", type_=String),
        literal(False),
        literal(False),
        literal(now, type_=_D.c.updated_at.type),
        message_ids(session, domain),
    ).where(chosen)
    columns = ["issue_id", "subscriber_id", "email", "name", "status", "batch_id", "variant_id",
               "error", "opened", "clicked", "updated_at", "message_id"]  # fmt: skip
    # An INSERT's row count is kept only when asked for (SQLAlchemy 2.x; -1 on psycopg else).
    statement = insert(_D).from_select(columns, rows).execution_options(preserve_rowcount=True)

    def write(members: str, **values: Any) -> int:
        values["status"] = str(values["status"])
        result = session.execute(statement, {"ids": f"[{members}]", **values})
        return int(result.rowcount)  # type: ignore[attr-defined]

    return write


def _insert_each(
    session: Session, issue_id: int, taken: list[Any], now: datetime, domain: str
) -> tuple[int, dict[int, int]]:
    """SQLite: one INSERT … SELECT per taken batch; all rows, and the rows of each batch."""
    insert_rows = insert_members(session, issue_id, now, domain)
    frozen, counts = 0, {}
    for batch_id, variant_id, reason, members in taken:
        skip = variant_id is None
        written = insert_rows(
            members,
            batch=None if skip else batch_id,
            variant=variant_id,
            status=DeliveryStatus.SKIPPED if skip else DeliveryStatus.PENDING,
            error=reason if skip else None,
        )
        frozen += written
        counts[batch_id] = written
    return frozen, counts


# The taken batches' rows in one statement (PostgreSQL), each batch's rows together; its
# Message-ID is `freeze.message_ids`'s, written out.
_INSERT_ALL = text(
    "INSERT INTO delivery (issue_id, subscriber_id, email, name, status, batch_id,"
    " variant_id, error, opened, clicked, updated_at, message_id)"
    " SELECT :issue, s.id, s.email, s.name, k.status, k.batch, k.variant, k.error,"
    " false, false, :now, '<' || replace(CAST(gen_random_uuid() AS text), '-', '') || :at"
    " FROM unnest(CAST(:taken AS integer[]), CAST(:members AS text[]),"
    " CAST(:batches AS integer[]), CAST(:variants AS integer[]), CAST(:statuses AS text[]),"
    " CAST(:errors AS text[])) AS k(taken, members, batch, variant, status, error)"
    " CROSS JOIN LATERAL unnest(CAST(string_to_array(k.members, ',') AS integer[])) AS m(id)"
    " JOIN subscriber AS s ON s.id = m.id"
    " ORDER BY k.taken, s.id"
).bindparams(bindparam("now", type_=_D.c.updated_at.type))


def _insert_all(
    session: Session, issue_id: int, taken: list[Any], now: datetime, domain: str
) -> tuple[int, dict[int, int]]:
    """PostgreSQL: the taken batches' rows in one INSERT … SELECT; all rows, and the rows of
    each batch that sends. One statement, so its count trigger (migration 0012) takes the
    issue's counts lock once, at its end, just before the commit: a statement per batch took it
    at the first and held it over the others, and senders recording a batch waited for it
    (a third of their time while a million readers were frozen)."""
    sends = [row for row in taken if row[1] is not None]
    result = session.execute(
        _INSERT_ALL.execution_options(preserve_rowcount=True),
        {
            "issue": issue_id, "now": now, "at": f"@{domain}>",
            "taken": [row[0] for row in taken], "members": [str(row[3]) for row in taken],
            "batches": [None if row[1] is None else row[0] for row in taken],
            "variants": [row[1] for row in taken],
            "statuses": [str(DeliveryStatus.PENDING if row[1] is not None
                             else DeliveryStatus.SKIPPED) for row in taken],
            "errors": [None if row[1] is not None else row[2] for row in taken],
        },
    )  # fmt: skip
    frozen = int(result.rowcount)  # type: ignore[attr-defined]
    counts: dict[int, int] = {}
    if sends:
        counts = {
            int(batch): int(n)
            for batch, n in session.execute(
                select(_D.c.batch_id, func.count())
                .where(_D.c.batch_id.in_([row[0] for row in sends]))
                .group_by(_D.c.batch_id)
            )
        }
    return frozen, counts


def freezing(session: Session, issue_id: int) -> bool:
    after = session.execute(select(_I.c.freezing_after).where(_I.c.id == issue_id)).scalar()
    return after is not None


def open_batches(
    session: Session, issue_id: int, batch_size: int
) -> dict[tuple[str, str | None], list[int]]:
    """The planned batches still open to readers, per group (plan key or skip reason, zone)."""
    rows = session.execute(
        select(_B.c.id, _B.c.size, _B.c.zone, _B.c.error, _V.c.key)
        .select_from(_B.outerjoin(_V, _V.c.id == _B.c.variant_id))
        .where(
            _B.c.issue_id == issue_id,
            _B.c.status == BatchStatus.FILLING,
            _B.c.members.is_not(None),
            _B.c.size < batch_size,
        )
        .order_by(_B.c.id)
    )
    return {
        (key if key is not None else SKIP + str(error), zone): [int(batch_id), int(size)]
        for batch_id, size, zone, error, key in rows
    }


def planned(session: Session, issue_id: int) -> bool:
    """Whether planned batches remain (some may be held by a freezer filling them now)."""
    found = session.execute(
        select(_B.c.id)
        .where(
            _B.c.issue_id == issue_id,
            _B.c.status == BatchStatus.FILLING,
            _B.c.members.is_not(None),
        )
        .limit(1)
    ).first()
    return found is not None


def planned_readers(session: Session, issue_id: int) -> int:
    """Readers in batches planned but not yet filled (the freeze's remaining work)."""
    return int(
        session.execute(
            select(func.coalesce(func.sum(_B.c.size), 0)).where(
                _B.c.issue_id == issue_id,
                _B.c.status == BatchStatus.FILLING,
                _B.c.members.is_not(None),
            )
        ).scalar()
        or 0
    )
