"""One mailbox, one subscriber: merge subscribers and suppressions whose addresses differ only in
case, keep the strictest consent, store every address lower-cased.

Until 0003 `normalize_email` kept the part before the @-sign as typed, so `Carol@example.com` and
`carol@example.com` could be two subscribers (and two suppressions): a complaint for one left
the other mailed. From now on it lower-cases the whole address; this revision brings the stored
rows to that form.

Subscribers, per group of rows whose addresses are equal lower-cased:
- the highest id is kept (not the lowest: SQLite hands a deleted id above the largest one to
  the next new row, and links naming an old id must never reach someone else); its address is
  lower-cased, its `created_at` becomes the group's earliest, and an empty name, locale or time
  zone is filled from the others (newest first);
- per newsletter the strictest subscription is kept and moved to it. Order, strictest first:
  complained, bounced, unsubscribed (a refusal always beats consent), then active, then
  pending (pending is not a refusal, only consent not yet proven: the mailbox's proven consent
  covers it). A tie keeps the kept subscriber's row, else the newest;
- consent events are re-pointed to it (their `email` stays as recorded: the log is
  append-only); deliveries too, except where the kept subscriber already has one of that issue
  (deliveries are unique per issue and subscriber): those stay on the old id, as history. The
  sender checks each recipient's subscription when it claims a batch, so a pending delivery of
  an old id is skipped, never sent;
- each other id gets a `subscriber_alias` row naming the kept one, so the signed links in
  emails already sent (which name the old id) still reach the person; then it is deleted.

Suppressions, per group: the strictest reason is kept (complaint, hard bounce, manual,
unsubscribed from everything), with the earliest `created_at` of the group, lower-cased.

Lower-casing is Python's `str.lower`, as `normalize_email` does, not SQL `lower()` (SQLite's
only folds ASCII). Only rows whose address changes are held in memory.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

import subscribers.timestamps

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# Frozen copies of what this revision needs (the models may change after it).
_meta = sa.MetaData()
_subscriber = sa.Table(
    "subscriber", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String),
    sa.Column("name", sa.String),
    sa.Column("locale", sa.String),
    sa.Column("timezone", sa.String),
    sa.Column("created_at", subscribers.timestamps.UTCDateTime()),
)
_subscription = sa.Table(
    "subscription", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subscriber_id", sa.Integer),
    sa.Column("newsletter", sa.String),
    sa.Column("status", sa.String),
)
_consent = sa.Table(
    "consent_event", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("subscriber_id", sa.Integer),
)
_delivery = sa.Table(
    "delivery", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("issue_id", sa.Integer),
    sa.Column("subscriber_id", sa.Integer),
)
_suppression = sa.Table(
    "suppression", _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String),
    sa.Column("reason", sa.String),
    sa.Column("created_at", subscribers.timestamps.UTCDateTime()),
)
_alias = sa.Table(
    "subscriber_alias", _meta,
    sa.Column("old_id", sa.Integer, primary_key=True),
    sa.Column("subscriber_id", sa.Integer),
    sa.Column("merged_at", subscribers.timestamps.UTCDateTime()),
)

# Higher is stricter. Unknown values count as the strictest: never loosen what we don't know.
SUBSCRIPTION_STRICTNESS = {"pending": 0, "active": 1, "unsubscribed": 2, "bounced": 3, "complained": 4}
SUPPRESSION_STRICTNESS = {"unsubscribed_all": 0, "manual": 1, "hard_bounce": 2, "complaint": 3}
_PROFILE = ("name", "locale", "timezone")
_CHUNK = 500


def upgrade() -> None:
    op.create_table('subscriber_alias',
    sa.Column('old_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('subscriber_id', sa.Integer(), nullable=False),
    sa.Column('merged_at', subscribers.timestamps.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['subscriber_id'], ['subscriber.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('old_id')
    )
    with op.batch_alter_table('subscriber_alias', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_subscriber_alias_subscriber_id'), ['subscriber_id'], unique=False)

    connection = op.get_bind()
    now = datetime.now(UTC)
    for group in _groups(connection, _subscriber):
        _merge_subscribers(connection, group, now)
    for group in _groups(connection, _suppression):
        _merge_suppressions(connection, group)


def downgrade() -> None:
    # The merge is not undone (which spelling was whose is not kept); only the table goes.
    with op.batch_alter_table('subscriber_alias', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_subscriber_alias_subscriber_id'))

    op.drop_table('subscriber_alias')


def _groups(connection: Any, table: sa.Table) -> Iterable[tuple[str, list[int]]]:
    """(lower-cased address, ids in id order) for every address that is not lower-case yet,
    with the rows already spelled that way."""
    changing: dict[str, list[int]] = defaultdict(list)
    rows = connection.execute(
        sa.select(table.c.id, table.c.email).order_by(table.c.id).execution_options(yield_per=5000)
    )
    for row_id, email in rows:
        if email != email.lower():
            changing[email.lower()].append(row_id)
    keys = list(changing)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start:start + _CHUNK]
        for row_id, email in connection.execute(
            sa.select(table.c.id, table.c.email).where(table.c.email.in_(chunk))
        ):
            changing[email].append(row_id)
    for key in keys:
        yield key, sorted(changing[key])


def _merge_subscribers(connection: Any, group: tuple[str, list[int]], now: datetime) -> None:
    address, ids = group
    keep, others = ids[-1], ids[:-1]
    if others:
        _merge_profiles(connection, keep, ids)
        _merge_subscriptions(connection, keep, ids)
        connection.execute(
            _consent.update().where(_consent.c.subscriber_id.in_(others)).values(subscriber_id=keep)
        )
        taken = sa.select(_delivery.c.issue_id).where(_delivery.c.subscriber_id == keep)
        for old in others:  # one at a time: two old ids may both have a delivery of one issue
            connection.execute(
                _delivery.update()
                .where(_delivery.c.subscriber_id == old, _delivery.c.issue_id.not_in(taken.scalar_subquery()))
                .values(subscriber_id=keep)
            )
        # Aliases of an old id (an earlier merge) follow it to the kept one.
        connection.execute(
            _alias.update().where(_alias.c.subscriber_id.in_(others)).values(subscriber_id=keep)
        )
        connection.execute(
            _alias.insert(), [{"old_id": old, "subscriber_id": keep, "merged_at": now} for old in others]
        )
        connection.execute(_subscriber.delete().where(_subscriber.c.id.in_(others)))
    connection.execute(_subscriber.update().where(_subscriber.c.id == keep).values(email=address))


def _merge_profiles(connection: Any, keep: int, ids: list[int]) -> None:
    rows = {
        row.id: row
        for row in connection.execute(sa.select(_subscriber).where(_subscriber.c.id.in_(ids)))
    }
    values: dict[str, Any] = {"created_at": min(row.created_at for row in rows.values())}
    for field in _PROFILE:
        if getattr(rows[keep], field):
            continue
        newest_first = reversed(ids)
        found = next((getattr(rows[i], field) for i in newest_first if getattr(rows[i], field)), None)
        if found:
            values[field] = found
    connection.execute(_subscriber.update().where(_subscriber.c.id == keep).values(**values))


def _merge_subscriptions(connection: Any, keep: int, ids: list[int]) -> None:
    rows = connection.execute(
        sa.select(_subscription.c.id, _subscription.c.subscriber_id, _subscription.c.newsletter,
                  _subscription.c.status)
        .where(_subscription.c.subscriber_id.in_(ids))
    ).all()
    by_newsletter: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_newsletter[row.newsletter].append(row)
    losers: list[int] = []
    winners: list[int] = []
    for candidates in by_newsletter.values():
        winner = max(
            candidates,
            key=lambda r: (SUBSCRIPTION_STRICTNESS.get(r.status, 99), r.subscriber_id == keep, r.subscriber_id),
        )
        losers.extend(r.id for r in candidates if r.id != winner.id)
        if winner.subscriber_id != keep:
            winners.append(winner.id)
    if losers:  # first, so the winners' move cannot meet the (subscriber, newsletter) key
        connection.execute(_subscription.delete().where(_subscription.c.id.in_(losers)))
    if winners:
        connection.execute(
            _subscription.update().where(_subscription.c.id.in_(winners)).values(subscriber_id=keep)
        )


def _merge_suppressions(connection: Any, group: tuple[str, list[int]]) -> None:
    address, ids = group
    rows = connection.execute(sa.select(_suppression).where(_suppression.c.id.in_(ids))).all()
    earliest = min(row.created_at for row in rows)
    winner = max(
        rows,
        key=lambda r: (SUPPRESSION_STRICTNESS.get(r.reason, 99), -r.created_at.timestamp(), -r.id),
    )
    others = [row.id for row in rows if row.id != winner.id]
    if others:
        connection.execute(_suppression.delete().where(_suppression.c.id.in_(others)))
    connection.execute(
        _suppression.update()
        .where(_suppression.c.id == winner.id)
        .values(email=address, created_at=earliest)
    )
