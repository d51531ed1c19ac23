"""Pipeline storage: sources, articles, topics, issues and the delivery ledger.

Newsletters themselves live in the config file; rows refer to them by slug.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from subscribers.timestamps import UTCDateTime, utcnow


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Column(UTCDateTime(), nullable=nullable, index=index)


def _json() -> Any:
    return Column(JSON, nullable=False)


def _text(nullable: bool = True) -> Any:
    return Column(Text, nullable=nullable)


class DateSource(StrEnum):
    """Where an article's `published_at` came from."""

    PUBLISHED = "published"
    UPDATED = "updated"
    FIRST_SEEN = "first_seen"


class Source(SQLModel, table=True):
    """A configured content source and its fetch health."""

    __tablename__ = "source"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    kind: str = Field(max_length=16)
    url: str = Field(sa_column=_text(nullable=False))
    etag: str | None = Field(default=None, max_length=500)
    last_modified: str | None = Field(default=None, max_length=100)
    last_fetched_at: datetime | None = Field(default=None, sa_column=_ts())
    last_success_at: datetime | None = Field(default=None, sa_column=_ts())
    last_error: str | None = Field(default=None, sa_column=_text())
    last_error_at: datetime | None = Field(default=None, sa_column=_ts())
    consecutive_failures: int = 0
    last_http_status: int | None = None
    last_item_count: int = 0  # items the last successful read yielded
    # The last read worked but something was odd (not well-formed, encoding guessed, items skipped).
    last_warning: str | None = Field(default=None, sa_column=_text())
    # The feed's own title (RSS channel, Atom feed) as last read: what readers see unless
    # `sources[].title` says otherwise (`digest.issues.sources`).
    title: str | None = Field(default=None, max_length=300)


class Article(SQLModel, table=True):
    __tablename__ = "article"
    __table_args__ = (
        UniqueConstraint("source", "guid", name="uq_article_source_guid"),
        Index("ix_article_source_title", "source", "title_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=100)
    guid: str = Field(max_length=1000)
    url: str = Field(max_length=2000, index=True)
    title: str = Field(sa_column=_text(nullable=False))
    # Lower-cased, punctuation-free title: finds a re-published item with a new guid.
    title_key: str = Field(max_length=300)
    summary_html: str = Field(default="", sa_column=_text(nullable=False))
    summary_text: str = Field(default="", sa_column=_text(nullable=False))
    author: str | None = Field(default=None, max_length=300)
    image_url: str | None = Field(default=None, max_length=2000)
    language: str | None = Field(default=None, max_length=35)
    tags: list[str] = Field(default_factory=list, sa_column=_json())
    published_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    date_source: str = Field(default=DateSource.PUBLISHED, max_length=16)
    first_seen_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    fingerprint: str = Field(default="", max_length=64, description="hash of the stored fields")


class ArticleTopic(SQLModel, table=True):
    """An article matched a newsletter's topic; `reasons` says which rules matched."""

    __tablename__ = "article_topic"

    article_id: int = Field(foreign_key="article.id", primary_key=True, ondelete="CASCADE")
    newsletter: str = Field(max_length=64, primary_key=True, index=True)
    reasons: list[str] = Field(default_factory=list, sa_column=_json())
    matched_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class IssueStatus(StrEnum):
    DRAFT = "draft"  # built, editable, not yet sendable when approval is required
    APPROVED = "approved"  # an editor approved it; the content is frozen
    SENDING = "sending"  # the audience is frozen into deliveries; batches are going out
    SENT = "sent"  # every delivery reached a final state
    SKIPPED = "skipped"  # too few articles for the period; nothing will be sent


class Issue(SQLModel, table=True):
    """One edition of a newsletter for one period: a frozen, rendered snapshot."""

    __tablename__ = "issue"
    __table_args__ = (UniqueConstraint("newsletter", "period", name="uq_issue_period"),)

    id: int | None = Field(default=None, primary_key=True)
    newsletter: str = Field(max_length=64, index=True)
    # The scheduled moment this issue belongs to, ISO 8601 in UTC: unique per newsletter.
    period: str = Field(max_length=40)
    status: str = Field(default=IssueStatus.DRAFT, max_length=16, index=True)
    subject: str = Field(default="", max_length=500)
    subject_override: str | None = Field(default=None, max_length=500, description="editor's")
    intro: str = Field(default="", sa_column=_text(nullable=False))
    preheader: str = Field(default="", max_length=500)
    html: str = Field(default="", sa_column=_text(nullable=False))
    text: str = Field(default="", sa_column=_text(nullable=False))
    # The public web page (the archive), rendered with `html` from the same contents: nothing
    # personal in it. None for issues rendered before the archive existed.
    web_html: str | None = Field(default=None, sa_column=_text())
    template_version: str = Field(default="", max_length=64)
    html_bytes: int = 0
    lint: list[dict[str, Any]] = Field(default_factory=list, sa_column=_json())
    skip_reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    approved_at: datetime | None = Field(default=None, sa_column=_ts())
    approved_by: str | None = Field(default=None, max_length=200)
    # The last un-approval (an approved issue sent back to draft to be fixed), and by whom.
    unapproved_at: datetime | None = Field(default=None, sa_column=_ts())
    unapproved_by: str | None = Field(default=None, max_length=200)
    sending_at: datetime | None = Field(default=None, sa_column=_ts())
    sent_at: datetime | None = Field(default=None, sa_column=_ts())
    # While the audience is being frozen (page by page, as sending goes on): the last subscriber
    # id frozen so far. None before sending starts and once the whole audience is frozen.
    freezing_after: int | None = None


class IssueArticle(SQLModel, table=True):
    """An article's place in an issue, with the editor's pin/exclude decisions."""

    __tablename__ = "issue_article"

    issue_id: int = Field(foreign_key="issue.id", primary_key=True, ondelete="CASCADE")
    article_id: int = Field(foreign_key="article.id", primary_key=True, ondelete="CASCADE")
    position: int = 0
    section: str = Field(default="", max_length=200)
    pinned: bool = False
    excluded: bool = False


class DeliveryStatus(StrEnum):
    """Where one recipient of an issue stands. Counts read it through `digest.sending.counts`.

    The row stores only what happened to this recipient alone (skipped, failed or unknown on
    its own, provider events). While it is `pending` its batch speaks for it (as Ghost's
    email_batches do): accepting a batch of 1000 writes one batch row, not 1000 delivery rows.
    """

    PENDING = "pending"  # stored: nothing happened to it alone; its batch's status applies
    SENDING = "sending"  # derived: its batch is claimed and in flight
    ACCEPTED = "accepted"  # derived: its batch was taken (SendGrid 202, SMTP 250, file written)
    FAILED = "failed"  # refused, alone (stored) or with its batch; `--retry-failed` resends
    SKIPPED = "skipped"  # stored: unsubscribed or suppressed before its batch went
    UNKNOWN = "unknown"  # may have gone out (sender died, answer lost); `--retry-unknown`
    # Provider events after acceptance (SendGrid webhook), stored on the row
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    DROPPED = "dropped"
    DEFERRED = "deferred"


class Delivery(SQLModel, table=True):
    """One recipient of one issue, frozen before sending. Unique per (issue, subscriber).

    The uniqueness is the exactly-once guarantee's anchor: a subscriber can be in one batch of
    an issue at a time, and a batch is sent by whoever won its compare-and-set claim.
    """

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("issue_id", "subscriber_id", name="uq_delivery_recipient"),)

    id: int | None = Field(default=None, primary_key=True)
    # No foreign key: PostgreSQL checks one per inserted row, which more than doubled the time to
    # freeze a large audience (measured: 200k rows 8.5 s with it, 3.6 s without). Deliveries
    # are only written by the ledger, for an issue it has just locked.
    issue_id: int
    subscriber_id: int
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=200)
    status: str = Field(default=DeliveryStatus.PENDING, max_length=16)
    batch_id: int | None = Field(default=None, index=True)
    # Only when it differs from its batch's (SendGrid split the batch into several requests).
    provider_message_id: str | None = Field(default=None, max_length=200)
    # Our Message-ID for this recipient: random, written when the audience is frozen.
    message_id: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, sa_column=_text())
    opened: bool = False
    clicked: bool = False
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    # Personal newsletters: the IssueVariant this recipient got (what they received, and what
    # `digest preview SLUG --as EMAIL` shows). None for topic newsletters and skipped readers.
    variant_id: int | None = None


class BatchStatus(StrEnum):
    # Personal newsletters: planned, its readers' ids in `members`, its delivery rows not yet
    # written; the freeze writes them and makes it pending (`digest.sending.personal_freeze`).
    FILLING = "filling"
    PENDING = "pending"  # cut, waiting for a sender
    SENDING = "sending"  # claimed by a sender (compare-and-set from pending), in flight
    ACCEPTED = "accepted"  # the provider took it; its failed recipients are marked on their rows
    FAILED = "failed"  # the provider refused the whole request (or retries ran out)
    UNKNOWN = "unknown"  # its sender died or lost the answer: it may have gone out
    RETRIED = "retried"  # its recipients moved to new batches (`--retry-failed/-unknown`)


class SendBatch(SQLModel, table=True):
    """A slice of an issue's deliveries handed to the transport in one call."""

    __tablename__ = "send_batch"
    __table_args__ = (Index("ix_send_batch_issue_status", "issue_id", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(foreign_key="issue.id", ondelete="CASCADE")
    status: str = Field(default=BatchStatus.PENDING, max_length=16)
    size: int = 0
    attempts: int = 0
    # Subscriber-local delivery: the time zone all of the batch's recipients are in, so a tick
    # can claim just the zones whose local time has come (None: the newsletter's own zone).
    zone: str | None = Field(default=None, max_length=64)
    # "host/boot/pid/start/run" of the sender holding the claim; see ledger.Claimer.
    claimed_by: str | None = Field(default=None, max_length=200)
    claimed_at: datetime | None = Field(default=None, sa_column=_ts())  # refreshed as heartbeat
    provider_message_id: str | None = Field(default=None, max_length=200)
    error: str | None = Field(default=None, sa_column=_text())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    # Personal newsletters: every recipient of the batch gets this IssueVariant (one message
    # per batch, as for a topic issue).
    variant_id: int | None = None
    # Personal newsletters: the subscriber ids ("1,5,9") of a batch planned but not yet frozen
    # (status `filling`); its delivery rows are written from them, then this is cleared.
    members: str | None = Field(default=None, sa_column=_text())


class IssueCandidate(SQLModel, table=True):
    """Personal newsletters: an article one merged topic offers the issue, in the topic's order.

    Built with the issue (`digest.issues.personal`); each reader's variant takes from the
    candidates of the topics they follow, each article once, in its strongest topic.
    """

    __tablename__ = "issue_candidate"

    issue_id: int = Field(foreign_key="issue.id", primary_key=True, ondelete="CASCADE")
    topic: str = Field(max_length=64, primary_key=True)
    article_id: int = Field(foreign_key="article.id", primary_key=True, ondelete="CASCADE")
    position: int = 0
    score: int = 0  # how strongly the article matches the topic (tags count more than words)
    pinned: bool = False


class IssueVariant(SQLModel, table=True):
    """Personal newsletters: one distinct content of an issue (the topics and the articles a
    group of readers gets), rendered and inlined once for all of them."""

    __tablename__ = "issue_variant"
    __table_args__ = (UniqueConstraint("issue_id", "key", name="uq_issue_variant_key"),)

    id: int | None = Field(default=None, primary_key=True)
    issue_id: int = Field(foreign_key="issue.id", index=True, ondelete="CASCADE")
    key: str = Field(max_length=64, description="hash of topics and sections")
    topics: list[str] = Field(default_factory=list, sa_column=_json())  # followed, for the footer
    # [[topic slug, [article id, …]], …] in the email's order.
    sections: list[Any] = Field(default_factory=list, sa_column=_json())
    articles: int = 0
    readers: int = 0  # recipients frozen with it
    subject: str = Field(default="", max_length=500)
    html: str | None = Field(default=None, sa_column=_text())  # None until first rendered
    text: str | None = Field(default=None, sa_column=_text())
    html_bytes: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class IssueCount(SQLModel, table=True):
    """An issue's effective delivery counts, kept once it is sent (`digest.sending.snapshot`):
    `stats`, `status` and `/metrics` read these instead of scanning its deliveries, provider
    events adjust them in the same transaction, and they stay when retention deletes the
    deliveries. `state` is an effective status, or "opened" / "clicked"."""

    __tablename__ = "issue_count"

    issue_id: int = Field(foreign_key="issue.id", primary_key=True, ondelete="CASCADE")
    state: str = Field(max_length=16, primary_key=True)
    n: int = 0


class SendWorker(SQLModel, table=True):
    """A `digest worker` process (or a scheduler sending itself), for liveness and `status`."""

    __tablename__ = "send_worker"

    id: str = Field(max_length=200, primary_key=True)  # its Claimer: host/boot/pid/start/run
    host: str = Field(default="", max_length=200)
    pid: int = 0
    concurrency: int = 1
    started_at: datetime = Field(sa_column=_ts(nullable=False))
    heartbeat_at: datetime = Field(sa_column=_ts(nullable=False, index=True))
    in_flight: int = 0  # batches it holds now
    draining: bool = False  # SIGTERM: finishing in-flight batches, claiming nothing new
    stopped_at: datetime | None = Field(default=None, sa_column=_ts())


class RateLimit(SQLModel, table=True):
    """A rate shared by every sender through the database (PostgreSQL): the moment the next
    message may go (GCRA's theoretical arrival time, seconds since the epoch) and a provider's
    back-off (429) until a moment."""

    __tablename__ = "rate_limit"

    name: str = Field(max_length=64, primary_key=True)
    next_at: float = 0.0
    paused_until: float = 0.0


class WebhookEvent(SQLModel, table=True):
    """A provider event already applied: providers retry and duplicate, so each counts once."""

    __tablename__ = "webhook_event"
    __table_args__ = (UniqueConstraint("provider", "event_id", name="uq_webhook_event"),)

    id: int | None = Field(default=None, primary_key=True)
    provider: str = Field(max_length=32)
    event_id: str = Field(max_length=200)  # SendGrid sg_event_id (≤100 characters)
    event: str = Field(max_length=32)
    delivery_id: int | None = None
    received_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))


class RunOutcome(StrEnum):
    """What the scheduler did with one (newsletter, period)."""

    RUNNING = "running"  # fired: building, sending, or waiting for subscribers' local times
    AWAITING_APPROVAL = "awaiting_approval"  # the draft is built; an editor must approve it
    SENT = "sent"  # the issue went out (per-recipient failures are in its deliveries)
    SKIPPED = "skipped"  # too few articles: nothing sent, the reason recorded
    MISSED = "missed"  # not fired: past the catch-up grace, coalesced, or not approved in time
    FAILED = "failed"  # an error; retried on the next ticks while within the catch-up grace


class ScheduleRun(SQLModel, table=True):
    """The scheduler's record of one period: unique per (newsletter, period), so a period
    fires once whatever the number of schedulers, restarts or catch-ups."""

    __tablename__ = "schedule_run"
    __table_args__ = (
        UniqueConstraint("newsletter", "period", name="uq_schedule_run_period"),
        Index("ix_schedule_run_outcome", "outcome", "newsletter"),
    )

    id: int | None = Field(default=None, primary_key=True)
    newsletter: str = Field(max_length=64)
    # Same key as Issue.period: the scheduled moment, ISO 8601 in UTC.
    period: str = Field(max_length=40)
    outcome: str = Field(default=RunOutcome.RUNNING, max_length=24)
    issue_id: int | None = Field(default=None, foreign_key="issue.id", ondelete="SET NULL")
    detail: str | None = Field(default=None, sa_column=_text())
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class SchedulerJob(SQLModel, table=True):
    """When a periodic scheduler job (ingest, tick, housekeeping) last ran, and how."""

    __tablename__ = "scheduler_job"

    name: str = Field(max_length=64, primary_key=True)
    last_started_at: datetime | None = Field(default=None, sa_column=_ts())
    last_finished_at: datetime | None = Field(default=None, sa_column=_ts())
    last_outcome: str | None = Field(default=None, max_length=24)
    detail: str | None = Field(default=None, sa_column=_text())


class SchedulerLeader(SQLModel, table=True):
    """Who leads the schedulers, for people to see; the lock itself is elsewhere (an advisory
    lock on PostgreSQL, a lock file on SQLite)."""

    __tablename__ = "scheduler_leader"

    name: str = Field(default="scheduler", max_length=64, primary_key=True)
    holder: str = Field(max_length=200)
    host: str = Field(default="", max_length=200)
    pid: int = 0
    acquired_at: datetime = Field(sa_column=_ts(nullable=False))
    heartbeat_at: datetime = Field(sa_column=_ts(nullable=False))
    released_at: datetime | None = Field(default=None, sa_column=_ts())


class BounceScore(SQLModel, table=True):
    """Soft bounces in a row of one subscriber, read from the SMTP bounce mailbox
    (`digest.tracking.bounces`): at `bounces.soft_limit` the address is suppressed. A hard
    bounce or a complaint suppresses at once and needs no row. No address is copied here."""

    __tablename__ = "bounce_score"

    subscriber_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    soft_in_row: int = 0
    # The newest delivery counted: a later bounce of it again (delayed, then failed) counts once,
    # and a delivery between it and the next soft bounce that did not bounce breaks the row.
    last_delivery_id: int | None = None
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
