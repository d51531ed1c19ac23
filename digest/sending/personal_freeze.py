"""Freezing a personal issue's audience: each reader's variant, batches cut per variant.

A topic issue's freeze copies keyset pages of the audience in SQL (`digest.sending.freeze`).
A personal issue cannot: each reader's variant is decided in Python (`variants.plan`, from the
topics they follow and what they received). Cut page by page, a page of readers over hundreds
of variants left most batches part-full until the end, so the senders had little to send while
the freeze ran. So it goes in two phases, both resumable and safe with several senders:

1. **Plan** (`Issue.freezing_after` is 0): the audience is read in pages of ids, topic masks and
   receipts only (no row written, no lock held), and every reader is placed in a group per
   (variant, zone), or per reason to be skipped. Plans are computed once per distinct (followed
   topics, receipts). Then one short write transaction, by compare-and-set from 0 to `PLANNED`,
   stores every batch at once as `filling`, already full, holding its readers' ids in
   `send_batch.members`: the largest variants first (they are rendered first), the readers to
   skip last. A sender that loses the compare-and-set drops its plan and helps fill.
2. **Fill** (`freezing_after` is `PLANNED`): each step takes the next few planned batches by
   compare-and-set (`filling` → `pending`; `SKIP LOCKED` on PostgreSQL, so freezers fill side by
   side) and writes their delivery rows with INSERT … SELECT from `subscriber` by those ids (no
   row through Python), in the same transaction. Senders claim them at once. Once no batch is
   planned the freeze ends (`freezing_after` None).

A crash while planning loses only the reading (nothing was written); a crash while filling
leaves the untaken batches planned for the next sender. Someone who leaves after the plan is
skipped when their batch goes (`ledger.open_batch`), as for a topic issue.
"""

from __future__ import annotations

from array import array
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    String,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session

from digest.app import App
from digest.config import NewsletterConfig
from digest.issues import personal
from digest.issues.received import History, Receipt, topic_masks
from digest.issues.variants import Plan, plan
from digest.sending.freeze import FREEZE_PAGE, Zoning, message_ids
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueVariant,
    SendBatch,
)
from subscribers.audience import audience_statement
from subscribers.models import Subscriber

PLANNED = -1  # Issue.freezing_after of a personal issue whose batches are planned, being filled

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_V = IssueVariant.__table__  # type: ignore[attr-defined]
_S = Subscriber.__table__  # type: ignore[attr-defined]

_SKIP = "\0"  # group keys starting with it are a reason to skip, not a plan's key


@dataclass
class _Planning:
    """The plan being read: readers grouped per (plan key or skip reason, zone)."""

    start: int  # Issue.freezing_after when planning began (0; a legacy freeze's last id)
    after: int  # the last subscriber id read
    groups: dict[tuple[str, str | None], array[int]] = field(
        default_factory=lambda: defaultdict(lambda: array("q"))
    )
    plans: dict[str, Plan] = field(default_factory=dict)


class PersonalFreezer:
    """Freezes one personal issue step by step (`step`), for one sending run."""

    def __init__(
        self,
        app: App,
        issue: Issue,
        newsletter: NewsletterConfig,
        *,
        batch_size: int,
        page_size: int | None = None,
        zones: Zoning | None = None,
        message_domain: str = "localhost",
        on_variant: Callable[[int, Plan], None] | None = None,
    ) -> None:
        self.app, self.newsletter, self.zones = app, newsletter, zones
        # Told of each variant before its batches can be claimed (to render it in time).
        self.on_variant = on_variant
        self._announced: set[int] = set()
        self._caught_up = False  # the variants of batches planned by another sender announced
        self.issue_id = issue.id or 0
        self.batch_size = batch_size
        self.page_size = page_size or FREEZE_PAGE  # readers per planning page, rows per fill
        self.domain = message_domain
        self.order = [t.slug for t in app.settings.merged_topics(newsletter)]
        with app.session() as session:
            self.candidates = personal.candidates_of(session, self.issue_id)
            ids = {c.article_id for cs in self.candidates.values() for c in cs}
            memory_start = app.now() - newsletter.memory_delta
            self.history = History.load(session, app.settings, self.issue_id, memory_start, ids)
        self._plans: dict[tuple[frozenset[str], frozenset[Receipt]], Plan | str] = {}
        self._planning: _Planning | None = None
        self._masks: dict[int, frozenset[str]] = {}

    def plan_for(self, followed: frozenset[str], receipts: frozenset[Receipt]) -> Plan | str:
        """A reader's plan, computed once per distinct (followed topics, receipts)."""
        key = (followed, receipts)
        found = self._plans.get(key)
        if found is None:
            found = self._plans[key] = plan(
                self.candidates, self.order, followed, self.history.received(receipts),
                min_articles=self.newsletter.min_articles,
                max_articles=self.newsletter.max_articles,
            )  # fmt: skip
        return found

    def step(self) -> int | None:
        """One planning page or one filling transaction: the recipients it froze (0 while
        planning), or None once the freeze is done."""
        with self.app.session() as session:
            state = session.execute(
                select(_I.c.freezing_after).where(_I.c.id == self.issue_id)
            ).scalar()
        if state is None:
            return None
        if int(state) >= 0:
            return self._plan_step(int(state))
        return self._fill_step()

    # -- plan ---------------------------------------------------------------------------------

    def _plan_step(self, state: int) -> int | None:
        planning = self._planning
        if planning is None or planning.start != state:
            planning = self._planning = _Planning(start=state, after=state)
        with self.app.session() as session:
            read = self._read_page(session, planning)
        if read == self.page_size:
            return 0
        return self._store_plan(planning)

    def _read_page(self, session: Session, planning: _Planning) -> int:
        """Group the next page of readers by what they get; returns how many were read.

        Readers are bucketed by (followed topics as a bit mask, time zone) in one lean loop and
        planned per bucket, not one by one (a million readers cost 13 CPU-s planned one by
        one); only readers with receipts (an earlier email shared candidates) are planned
        each on their own."""
        page = audience_statement(
            self.newsletter.slug, after_id=planning.after, limit=self.page_size
        ).subquery("audience")
        rows = _raw_rows(session, select(page.c.subscriber_id, page.c.timezone))
        if not rows:
            return 0
        last = int(rows[-1][0])
        masks = topic_masks(self.order, planning.after, last)
        mask_of: dict[int, int] = dict(
            _raw_rows(session, select(masks.c.subscriber_id, masks.c.mask))
        )
        buckets: defaultdict[tuple[int, str | None], list[int]] = defaultdict(list)
        get = mask_of.get
        for subscriber_id, timezone in rows:
            buckets[(get(subscriber_id, 0), timezone)].append(subscriber_id)
        receipts = self.history.receipts(session, planning.after + 1, last)
        none = frozenset[Receipt]()
        for (mask, timezone), ids in buckets.items():
            followed, zone = self._topics_of(int(mask or 0)), self._zone(timezone)
            if receipts:
                own = [i for i in ids if i in receipts]
                for subscriber_id in own:
                    self._place(planning, self.plan_for(followed, receipts[subscriber_id]),
                                zone, [subscriber_id])  # fmt: skip
                if own:
                    ids = [i for i in ids if i not in receipts]
            if ids:
                self._place(planning, self.plan_for(followed, none), zone, ids)
        planning.after = last
        return len(rows)

    def _topics_of(self, mask: int) -> frozenset[str]:
        found = self._masks.get(mask)
        if found is None:
            found = frozenset(t for i, t in enumerate(self.order) if mask >> i & 1)
            self._masks[mask] = found
        return found

    @staticmethod
    def _place(planning: _Planning, outcome: Plan | str, zone: str | None, ids: list[int]) -> None:
        if isinstance(outcome, Plan):
            key = outcome.key
            planning.plans[key] = outcome
        else:
            key = _SKIP + outcome
        planning.groups[(key, zone)].extend(ids)

    def _zone(self, given: str | None) -> str | None:
        if self.zones is None:
            return None
        return self.zones.effective.get(given, self.zones.default) if given else self.zones.default

    def _store_plan(self, planning: _Planning) -> int | None:
        """Create the variants, hand them to the renderer (largest first), then store every
        batch in one transaction by compare-and-set on the issue; 0, or None if done."""
        self._planning = None
        sizes: Counter[str] = Counter()
        for (key, _), members in planning.groups.items():
            if not key.startswith(_SKIP):
                sizes[key] += len(members)
        ranked = [key for key, _ in sizes.most_common()]
        with self.app.session() as session:
            variants = personal.variant_ids(
                session, self.issue_id, [planning.plans[k] for k in ranked], self.app.now()
            )
            session.commit()
        for key in ranked:
            self._announce(variants[key], planning.plans[key])
        rank = {key: i for i, key in enumerate(ranked)}
        now = self.app.now()
        rows: list[dict[str, Any]] = []
        for (key, zone), members in sorted(
            planning.groups.items(),
            key=lambda item: (rank.get(item[0][0], len(rank)), item[0][0], item[0][1] or ""),
        ):
            skip = key.startswith(_SKIP)
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                rows.append({
                    "issue_id": self.issue_id, "status": BatchStatus.FILLING, "size": len(chunk),
                    "attempts": 0, "updated_at": now, "zone": zone,
                    "variant_id": None if skip else variants[key],
                    "error": key[1:] if skip else None, "members": ",".join(map(str, chunk)),
                })  # fmt: skip
        with self.app.session() as session:
            locked = session.execute(
                update(_I)
                .where(_I.c.id == self.issue_id, _I.c.freezing_after == planning.start)
                .values(freezing_after=PLANNED)
                .returning(_I.c.id)
            ).first()
            if locked is None:  # another sender stored its plan first: help fill theirs
                session.rollback()
                return 0 if _freezing(session, self.issue_id) else None
            if planning.start > 0:  # a freeze begun page by page before this code: let it go
                session.execute(
                    update(_B)
                    .where(_B.c.issue_id == self.issue_id, _B.c.status == BatchStatus.FILLING)
                    .values(status=BatchStatus.PENDING, updated_at=now)
                )
            if rows:
                session.execute(insert(_B), rows)
            session.commit()
        return 0

    def _announce(self, variant_id: int, variant_plan: Plan) -> None:
        if variant_id not in self._announced:
            self._announced.add(variant_id)
            if self.on_variant is not None:
                self.on_variant(variant_id, variant_plan)

    # -- fill ---------------------------------------------------------------------------------

    def _fill_step(self) -> int | None:
        now = self.app.now()
        with self.app.session() as session:
            if not self._caught_up:  # a sender that did not plan: the variants still to go
                self._announce_planned(session)
                self._caught_up = True
            taken = self._take(session, now)
            if not taken:
                if _planned(session, self.issue_id):  # held by another freezer right now
                    session.rollback()
                    return 0
                session.execute(
                    update(_I)
                    .where(_I.c.id == self.issue_id, _I.c.freezing_after == PLANNED)
                    .values(freezing_after=None)
                )
                session.commit()
                return None
            frozen = self._write(session, taken, now)
            session.commit()
            return frozen

    def _announce_planned(self, session: Session) -> None:
        variants = session.execute(
            select(IssueVariant)
            .where(
                _V.c.id.in_(
                    select(_B.c.variant_id).where(
                        _B.c.issue_id == self.issue_id, _B.c.status == BatchStatus.FILLING
                    )
                )
            )
            .order_by(_V.c.readers.desc(), _V.c.id)
        ).scalars()
        for variant in variants:
            self._announce(variant.id or 0, personal.plan_of(variant))

    def _take(self, session: Session, now: datetime) -> list[Any]:
        """The next planned batches, moved to `pending` by compare-and-set (this transaction
        writes their rows; nobody sees them before it commits)."""
        wanted = max(1, self.page_size // self.batch_size)
        # Locked first (PostgreSQL; SQLite has one writer anyway), then moved by compare-and-set:
        # inside `IN (…)` PostgreSQL may run a LIMIT … SKIP LOCKED subquery again per row and
        # take every batch at once.
        ids = list(
            session.execute(
                select(_B.c.id)
                .where(
                    _B.c.issue_id == self.issue_id,
                    _B.c.status == BatchStatus.FILLING,
                    _B.c.members.is_not(None),
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

    def _write(self, session: Session, taken: list[Any], now: datetime) -> int:
        """Each taken batch's delivery rows, by INSERT … SELECT from its members' ids; the
        batches get their real sizes, the skip groups' rows no batch."""
        insert_rows = _insert_members(session, self.issue_id, now, self.domain)
        frozen, readers = 0, Counter[int]()
        sizes: list[dict[str, int]] = []
        skips: list[int] = []
        for batch_id, variant_id, reason, members in sorted(taken, key=lambda row: row[0]):
            skip = variant_id is None
            written = insert_rows(
                members,
                batch=None if skip else batch_id,
                variant=variant_id,
                status=DeliveryStatus.SKIPPED if skip else DeliveryStatus.PENDING,
                error=reason if skip else None,
            )
            frozen += written
            if skip:
                skips.append(batch_id)
            else:
                readers[variant_id] += written
                sizes.append({"b": batch_id, "s": written})
        if sizes:
            session.execute(
                update(_B)
                .where(_B.c.id == bindparam("b"))
                .values(size=bindparam("s"), members=None),
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


def _insert_members(
    session: Session, issue_id: int, now: datetime, domain: str
) -> Callable[..., int]:
    """A function writing the delivery rows of one batch's members ("1,5,9"); returns how many
    (a subscriber erased since the plan has none)."""
    dialect = session.connection().dialect.name
    if dialect == "postgresql":
        ids = bindparam("ids", type_=String)
        chosen: Any = _S.c.id == any_(cast(func.string_to_array(ids, ","), ARRAY(Integer)))
    else:
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
        given = members if dialect == "postgresql" else f"[{members}]"
        values["status"] = str(values["status"])
        result = session.execute(statement, {"ids": given, **values})
        return int(result.rowcount)  # type: ignore[attr-defined]

    return write


def _raw_rows(session: Session, statement: Any) -> list[Any]:
    """The rows of `statement` as the driver's tuples: a million readers pass through the
    planning, and building SQLAlchemy rows for them cost more than the database's work. (Its
    parameters need no conversion: plain ids, strings.)"""
    connection = session.connection()
    compiled = statement.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = [params[name] for name in compiled.positiontup]
    cursor = connection.connection.cursor()
    try:
        cursor.execute(str(compiled), params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _freezing(session: Session, issue_id: int) -> bool:
    after = session.execute(select(_I.c.freezing_after).where(_I.c.id == issue_id)).scalar()
    return after is not None


def _planned(session: Session, issue_id: int) -> bool:
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
