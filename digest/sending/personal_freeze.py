"""Freezing a personal issue's audience: each reader's variant, batches cut per variant.

A topic issue's freeze copies keyset pages of the audience in SQL (`digest.sending.freeze`).
A personal issue cannot: each reader's variant is decided in Python (`variants.plan`, from the
topics they follow and what they received). Writing each page's rows at once left most batches
part-full until the end (a page mixes hundreds of variants), so the senders had little to send
while the freeze ran. Instead the readers are planned first and their rows written per batch:

- **Plan** (`Issue.freezing_after` is the last subscriber id planned, 0 at first): a page of
  the audience is read (ids, time zones, followed topics as a bit mask; receipts only for
  readers who have any), bucketed per (mask, zone) and planned per bucket, not per reader. By
  compare-and-set on the cursor, one transaction adds the page's readers to their group's open
  batch (`send_batch.members`, status `filling`) until it holds `batch_size`, then to new ones.
  The last page moves the cursor to `PLANNED`. A sender that loses the compare-and-set reloads
  the open batches from the database and goes on from the new cursor.
- **Fill**: a batch full of planned readers (every batch once the plan is complete) is taken
  by compare-and-set (`filling` → `pending`; `SKIP LOCKED` on PostgreSQL) and its delivery
  rows written by INSERT … SELECT from `subscriber` by those ids, in the same transaction
  (`digest.sending.personal_batches`). While planning goes on, a page planned and the batches
  it filled up written take turns, so senders start after a page or two, not after the plan.
  Readers to skip are planned as batches of their reason and written without a batch. Once no
  batch is planned the freeze ends (`freezing_after` None).

A crash loses at most a page being planned (nothing of it was written); the next sender goes on
from the cursor with the open batches as stored. Someone who leaves after being planned is
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
    insert,
    select,
    update,
)
from sqlmodel import Session

from digest.app import App
from digest.config import NewsletterConfig
from digest.issues import personal
from digest.issues.received import History, Receipt, topic_masks
from digest.issues.variants import Plan, plan
from digest.sending import personal_batches
from digest.sending.freeze import FREEZE_PAGE, Zoning
from digest.storage.db import driver_rows
from digest.storage.models import (
    BatchStatus,
    Delivery,
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

_SKIP = personal_batches.SKIP


@dataclass
class _Planning:
    """One page of readers grouped per (plan key or skip reason, zone)."""

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
        # The batches still open to readers (fewer than batch_size) per group, as stored when
        # Issue.freezing_after was `_open_at`; reloaded when another sender planned meanwhile.
        self._open: dict[tuple[str, str | None], list[int]] = {}  # → [batch id, size]
        self._open_at: int | None = None
        self._fill_turn = False
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
        if int(state) < 0:
            return self._fill_step()
        # While planning, a page planned and the batches it filled up written take turns.
        if self._fill_turn:
            self._fill_turn = False
            with self.app.session() as session:
                frozen = self._fill(session, sealed_only=True)
            if frozen:
                return frozen
        self._fill_turn = True
        return self._plan_step(int(state))

    # -- plan ---------------------------------------------------------------------------------

    def _plan_step(self, state: int) -> int | None:
        if self._open_at != state:
            with self.app.session() as session:
                self._open = personal_batches.open_batches(session, self.issue_id, self.batch_size)
            self._open_at = state
        planning = _Planning(after=state)
        with self.app.session() as session:
            read = self._read_page(session, planning)
        return self._store_page(planning, state, done=read < self.page_size)

    def _read_page(self, session: Session, planning: _Planning) -> int:
        """Group the next page of readers by what they get; returns how many were read.

        Readers are bucketed by (followed topics as a bit mask, time zone) in one lean loop and
        planned per bucket, not one by one (a million readers cost 13 CPU-s planned one by
        one); only readers with receipts (an earlier email shared candidates) are planned
        each on their own."""
        page = audience_statement(
            self.newsletter.slug, after_id=planning.after, limit=self.page_size
        ).subquery("audience")
        rows = driver_rows(session, select(page.c.subscriber_id, page.c.timezone))
        if not rows:
            return 0
        last = int(rows[-1][0])
        masks = topic_masks(self.order, planning.after, last)
        mask_of: dict[int, int] = dict(
            driver_rows(session, select(masks.c.subscriber_id, masks.c.mask))
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

    def _store_page(self, planning: _Planning, state: int, *, done: bool) -> int | None:
        """Create the page's new variants and hand them to the renderer (largest first), then,
        by compare-and-set on the issue's cursor, add the page's readers to their groups'
        open batches and new ones; 0, or None if the freeze is over."""
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
        ordered = sorted(
            planning.groups.items(),
            key=lambda item: (rank.get(item[0][0], len(rank)), item[0][0], item[0][1] or ""),
        )
        cursor = PLANNED if done else planning.after
        now = self.app.now()
        with self.app.session() as session:
            locked = session.execute(
                update(_I)
                .where(_I.c.id == self.issue_id, _I.c.freezing_after == state)
                .values(freezing_after=cursor)
                .returning(_I.c.id)
            ).first()
            if locked is None:  # another sender planned this page first: reload, go on
                session.rollback()
                self._open_at = None
                return 0 if personal_batches.freezing(session, self.issue_id) else None
            opened = self._write_groups(session, ordered, variants, now)
            if done:  # batches of a freeze begun before this code (rows written): let them go
                session.execute(
                    update(_B)
                    .where(
                        _B.c.issue_id == self.issue_id,
                        _B.c.status == BatchStatus.FILLING,
                        _B.c.members.is_(None),
                    )
                    .values(status=BatchStatus.PENDING, updated_at=now)
                )
            session.commit()
        for group, _ in ordered:
            self._open.pop(group, None)
        self._open.update(opened)
        self._open_at = cursor
        return 0

    def _write_groups(
        self,
        session: Session,
        groups: list[tuple[tuple[str, str | None], array[int]]],
        variants: dict[str, int],
        now: datetime,
    ) -> dict[tuple[str, str | None], list[int]]:
        """Each group's readers: first into its open batch, up to batch_size, then into new
        batches; returns the groups' open batches after this page."""
        appended: list[dict[str, Any]] = []
        new_rows: list[dict[str, Any]] = []
        new_groups: list[tuple[str, str | None]] = []
        opened: dict[tuple[str, str | None], list[int]] = {}
        for group, members in groups:
            key, zone = group
            start = 0
            held = self._open.get(group)
            if held is not None:
                start = min(len(members), self.batch_size - held[1])
                appended.append({"b": held[0], "n": start,
                                 "more": "," + ",".join(map(str, members[:start]))})  # fmt: skip
                opened[group] = [held[0], held[1] + start]
            skip = key.startswith(_SKIP)
            for at in range(start, len(members), self.batch_size):
                chunk = members[at : at + self.batch_size]
                new_groups.append(group)
                new_rows.append({
                    "issue_id": self.issue_id, "status": BatchStatus.FILLING, "size": len(chunk),
                    "attempts": 0, "updated_at": now, "zone": zone,
                    "variant_id": None if skip else variants[key],
                    "error": key[1:] if skip else None, "members": ",".join(map(str, chunk)),
                })  # fmt: skip
        if appended:
            personal_batches.append_members(session, appended)
        if new_rows:
            statement = insert(_B).returning(_B.c.id, sort_by_parameter_order=True)
            ids = [row[0] for row in session.execute(statement, new_rows)]
            for group, batch_id, row in zip(new_groups, ids, new_rows, strict=True):
                opened[group] = [int(batch_id), int(row["size"])]
        return {g: held for g, held in opened.items() if held[1] < self.batch_size}

    def _announce(self, variant_id: int, variant_plan: Plan) -> None:
        if variant_id not in self._announced:
            self._announced.add(variant_id)
            if self.on_variant is not None:
                self.on_variant(variant_id, variant_plan)

    # -- fill ---------------------------------------------------------------------------------

    def _fill_step(self) -> int | None:
        """The plan is complete: fill the next batches, or end the freeze once none is left."""
        with self.app.session() as session:
            frozen = self._fill(session, sealed_only=False)
            if frozen:
                return frozen
            if personal_batches.planned(
                session, self.issue_id
            ):  # held by another freezer right now
                session.rollback()
                return 0
            session.execute(
                update(_I)
                .where(_I.c.id == self.issue_id, _I.c.freezing_after == PLANNED)
                .values(freezing_after=None)
            )
            session.commit()
            return None

    def _fill(self, session: Session, *, sealed_only: bool) -> int:
        """Write the rows of the next planned batches (while planning goes on, only of those
        full already) and commit; how many rows (0: none to take)."""
        if not self._caught_up:  # a sender that did not plan: the variants still to go
            self._announce_planned(session)
            self._caught_up = True
        now = self.app.now()
        wanted = max(1, self.page_size // self.batch_size)
        full = self.batch_size if sealed_only else None
        taken = personal_batches.take(session, self.issue_id, now, wanted=wanted, full=full)
        if not taken:
            session.rollback()
            return 0
        frozen = personal_batches.write(session, self.issue_id, taken, now, self.domain)
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
