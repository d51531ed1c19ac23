"""Freezing a personal issue's audience: each reader's variant, batches cut per variant.

As for a topic issue (`digest.sending.freeze`) the audience is frozen in keyset pages, one
transaction each, while senders send the pages already committed; a crash resumes at the
recorded `Issue.freezing_after`. What differs:

- Each reader of the page gets a plan (`digest.issues.variants.plan`) from the topics they
  follow and what they received (`digest.issues.received`); readers with the same followed
  topics and history share it, so plans are computed per distinct (topics, history), not per
  reader. A reader with nothing to get is frozen `skipped` with the reason in `error`.
- The rows pass through Python (their variant is decided here), read and planned before the
  page's write transaction, so SQLite's write lock is held only for the inserts.
- A batch holds one variant (one message per batch, as the transports want). A page of 20,000
  readers over hundreds of variants would otherwise cut hundreds of tiny batches: a batch stays
  `filling` across pages until it holds `batch_size` recipients or the freeze ends, and only
  then becomes `pending` for the senders.
"""

from __future__ import annotations

import secrets
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from digest.app import App
from digest.config import NewsletterConfig
from digest.issues import personal
from digest.issues.received import History, Receipt, followed_topics
from digest.issues.variants import Plan, plan
from digest.sending.freeze import FREEZE_PAGE, Zoning, insert_batches
from digest.storage.models import (
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Issue,
    IssueVariant,
    SendBatch,
)
from subscribers.audience import audience_statement

_D = Delivery.__table__  # type: ignore[attr-defined]
_B = SendBatch.__table__  # type: ignore[attr-defined]
_I = Issue.__table__  # type: ignore[attr-defined]
_V = IssueVariant.__table__  # type: ignore[attr-defined]


@dataclass
class _Page:
    after: int
    recipients: Sequence[Any]  # audience rows: subscriber_id, email, name, timezone, locale
    outcome: list[Plan | str]  # per recipient: their plan, or why they are skipped
    variants: dict[str, int]  # plan key → variant id


class PersonalFreezer:
    """Freezes one personal issue, page by page (`step`), for one sending run."""

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
        # Told of each variant the first time a page has it (to render it before it is needed).
        self.on_variant = on_variant
        self._announced: dict[int, int] = {}  # variant id → the order it was handed over in
        self.issue_id = issue.id or 0
        self.batch_size = batch_size
        self.page_size = page_size or FREEZE_PAGE
        self.domain = message_domain
        self.order = [t.slug for t in app.settings.merged_topics(newsletter)]
        with app.session() as session:
            self.candidates = personal.candidates_of(session, self.issue_id)
            ids = {c.article_id for cs in self.candidates.values() for c in cs}
            memory_start = app.now() - newsletter.memory_delta
            self.history = History.load(session, app.settings, self.issue_id, memory_start, ids)
        self._plans: dict[tuple[frozenset[str], frozenset[Receipt]], Plan | str] = {}

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
        """Freeze the next page; the recipients frozen, or None once the freeze is done."""
        with self.app.session() as session:
            after = session.execute(
                select(_I.c.freezing_after).where(_I.c.id == self.issue_id)
            ).scalar()
            if after is None:
                return None
            page = self._read(session, int(after))
            session.commit()  # the new variants, before the page's write transaction
        with self.app.session() as session:
            return self._write(session, page)

    def _read(self, session: Session, after: int) -> _Page:
        # Rows as the driver gives them (subscriber_id, email, name, timezone, locale): a
        # million readers pass through here, and building an object for each cost a second.
        recipients = (
            session.connection()
            .execute(audience_statement(self.newsletter.slug, after_id=after, limit=self.page_size))
            .all()
        )
        if not recipients:
            return _Page(after, [], [], {})
        first, last = recipients[0].subscriber_id, recipients[-1].subscriber_id
        follows = followed_topics(session, self.order, first, last)
        receipts = self.history.receipts(session, first, last)
        outcome = [
            self.plan_for(
                follows.get(r.subscriber_id, frozenset()),
                receipts.get(r.subscriber_id, frozenset()),
            )
            for r in recipients
        ]
        plans = {p.key: p for p in outcome if isinstance(p, Plan)}
        variants = personal.variant_ids(
            session, self.issue_id, list(plans.values()), self.app.now()
        )
        if self.on_variant is not None:  # largest first: their batches fill, and go, first
            sizes = Counter(p.key for p in outcome if isinstance(p, Plan))
            for key, _ in sizes.most_common():
                variant_id = variants[key]
                if variant_id not in self._announced:
                    self._announced[variant_id] = len(self._announced)
                    self.on_variant(variant_id, plans[key])
        return _Page(after, recipients, outcome, variants)

    def _write(self, session: Session, page: _Page) -> int | None:
        now = self.app.now()
        done = len(page.recipients) < self.page_size
        last = page.recipients[-1].subscriber_id if page.recipients else page.after
        # Lock the issue row and check nobody froze this page meanwhile (another sender).
        locked = session.execute(
            update(_I)
            .where(_I.c.id == self.issue_id, _I.c.freezing_after == page.after)
            .values(freezing_after=None if done else last)
            .returning(_I.c.id)
        ).first()
        if locked is None:
            session.rollback()
            return 0 if self._still_freezing(session) else None
        rows, readers = self._rows(session, page, now)
        if rows:
            insert_rows(session, rows)
        if readers:
            more = _V.c.readers + bindparam("n")
            session.execute(
                update(_V).where(_V.c.id == bindparam("v")).values(readers=more),
                [{"v": v, "n": n} for v, n in readers.items()],
            )
        if done:  # the last page: what is still filling goes to the senders as it is
            session.execute(
                update(_B)
                .where(_B.c.issue_id == self.issue_id, _B.c.status == BatchStatus.FILLING)
                .values(status=BatchStatus.PENDING, updated_at=now)
            )
        session.commit()
        return len(page.recipients)

    def _still_freezing(self, session: Session) -> bool:
        after = session.execute(
            select(_I.c.freezing_after).where(_I.c.id == self.issue_id)
        ).scalar()
        return after is not None

    def _rows(
        self, session: Session, page: _Page, now: datetime
    ) -> tuple[list[tuple[Any, ...]], Counter[int]]:
        """The page's delivery rows (`_COLUMNS`), each reader placed in a batch of their
        variant and zone."""
        zone_of = self._zone
        slots: dict[tuple[int, str | None], list[int]] = defaultdict(list)
        for index, (recipient, outcome) in enumerate(
            zip(page.recipients, page.outcome, strict=True)
        ):
            if isinstance(outcome, Plan):
                slots[(page.variants[outcome.key], zone_of(recipient))].append(index)
        batch_of = self._place(session, slots, now)
        readers: Counter[int] = Counter()
        rows: list[tuple[Any, ...]] = []
        domain = f"@{self.domain}>"
        issue_id, pending, skipped = self.issue_id, str(DeliveryStatus.PENDING), "skipped"
        stamp = _bind(session, _D.c.updated_at, now)  # the driver's form, made once per page
        no = _bind(session, _D.c.opened, False)
        token_hex, variants, get_batch = secrets.token_hex, page.variants, batch_of.get
        for index, (recipient, outcome) in enumerate(
            zip(page.recipients, page.outcome, strict=True)
        ):
            variant = variants[outcome.key] if isinstance(outcome, Plan) else None
            if variant is not None:
                readers[variant] += 1
            rows.append((
                issue_id, recipient.subscriber_id, recipient.email, recipient.name,
                pending if variant else skipped, get_batch(index), variant,
                None if variant else str(outcome), "<" + token_hex(16) + domain, no, no, stamp,
            ))  # fmt: skip
        # Stored batch by batch: a batch's rows then sit together on disk, so a sender reads a
        # few pages for it, not one page per recipient (a page holds readers of every variant).
        rows.sort(key=lambda row: row[5] or 0)
        return rows, readers

    def _zone(self, recipient: Any) -> str | None:
        if self.zones is None:
            return None
        given = recipient.timezone
        return self.zones.effective.get(given, self.zones.default) if given else self.zones.default

    def _place(
        self, session: Session, slots: dict[tuple[int, str | None], list[int]], now: datetime
    ) -> dict[int, int]:
        """recipient index → batch id: the open (filling) batches of each variant and zone
        first, then new ones; a batch that fills up goes to the senders (pending)."""
        open_batches = {
            (int(v or 0), z): (int(b), int(size))
            for b, v, z, size in session.execute(
                select(_B.c.id, _B.c.variant_id, _B.c.zone, _B.c.size).where(
                    _B.c.issue_id == self.issue_id, _B.c.status == BatchStatus.FILLING
                )
            )
        }
        placed: dict[int, int] = {}
        sizes: dict[int, tuple[int, int]] = {}  # batch id → (size, variant id)
        # Batches cut in the order their variants went to the renderer (senders claim by batch
        # id): the first batches claimed are those whose variant is rendered first.
        order = self._announced
        for (variant, zone), members in sorted(
            slots.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0][1] or "")
        ):
            start = 0
            held = open_batches.get((variant, zone))
            if held is not None:
                batch_id, size = held
                take = members[: max(0, self.batch_size - size)]
                placed.update(dict.fromkeys(take, batch_id))
                sizes[batch_id] = (size + len(take), variant)
                start = len(take)
            rest = members[start:]
            chunks = [rest[i : i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
            if chunks:
                ids = insert_batches(session, self.issue_id, [0] * len(chunks), now,
                                     [zone] * len(chunks))  # fmt: skip
                for batch_id, chunk in zip(ids, chunks, strict=True):
                    placed.update(dict.fromkeys(chunk, batch_id))
                    sizes[batch_id] = (len(chunk), variant)
        if sizes:
            full, filling = BatchStatus.PENDING, BatchStatus.FILLING
            session.execute(
                update(_B)
                .where(_B.c.id == bindparam("b"))
                .values(size=bindparam("s"), status=bindparam("st"), variant_id=bindparam("v")),
                [{"b": b, "s": s, "v": v, "st": full if s >= self.batch_size else filling}
                 for b, (s, v) in sizes.items()],
            )  # fmt: skip
        return placed


_COLUMNS = ("issue_id", "subscriber_id", "email", "name", "status", "batch_id", "variant_id",
            "error", "message_id", "opened", "clicked", "updated_at")  # fmt: skip


def _bind(session: Session, column: Any, value: Any) -> Any:
    """`value` as the database driver takes it for `column` (its type's bind processing, so
    the row reads as any other: SQLite's text form of a timestamp included)."""
    dialect = session.connection().dialect
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    return process(value) if process else value


def insert_rows(session: Session, rows: list[tuple[Any, ...]]) -> None:
    """Insert delivery rows (`_COLUMNS` order, values in the driver's form) straight through
    the driver: COPY on PostgreSQL, executemany on SQLite. The ORM's insert spent more time
    building parameters than the database spent writing (a million rows: ~15 s of a 50 s
    freeze)."""
    connection = session.connection()
    cursor = connection.connection.cursor()
    names = ", ".join(_COLUMNS)
    if connection.dialect.name == "postgresql":
        with cursor.copy(f"COPY delivery ({names}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for row in rows:
                copy.write_row(row)
    else:
        marks = ", ".join("?" * len(_COLUMNS))
        statement = f"INSERT INTO delivery ({names}) VALUES ({marks})"  # noqa: S608 - fixed names
        cursor.executemany(statement, rows)
