"""SendGrid Event Webhook events applied to the delivery ledger and to consent.

- delivered, deferred, dropped, bounce, open, click → the delivery's status and flags, found
  through the `custom_args` the sender put on every message (`digest_delivery_id`,
  `digest_issue_id`, `digest_newsletter`; SendGrid flattens them into each event); open and
  click also count in the issue's engagement per hour (and per link: the event's `url` in the
  issue's link table), as digest's own pixel and redirect do (`digest.storage.engagement`);
- processed → settles a recipient whose batch (or own row) was left *unknown*: SendGrid took
  it, so `--retry-unknown` does not send it again; for anyone else it changes nothing;
- bounce of type `bounce` (hard) and spamreport → the address is suppressed (its subscriptions
  become bounced / complained), as is a drop for "Bounced Address" or "Spam Reporting Address";
- unsubscribe → unsubscribed from everything; group_unsubscribe → from that newsletter.

SendGrid sends duplicates and retries: every event is recorded by `sg_event_id` in the same
transaction as its effect, and an id seen before is skipped. A status never moves backwards
(a late "deferred" does not undo "delivered", a bounce after "delivered" wins).

A batch (up to a thousand events) is one transaction of set-based statements, whatever its
size: the new event ids are inserted at once (`INSERT … ON CONFLICT DO NOTHING RETURNING`), the
deliveries they name read at once, and their changes, the counts they move and the engagement
buckets written grouped (`digest.sending.event_rows`, `digest.sending.event_engagement`).
Suppressions and unsubscribes (rare) still go one event at a time, after the deliveries.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import String, bindparam, text
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, select

from digest.sending import event_rows
from digest.sending.event_engagement import Tally
from digest.sending.event_rows import Row
from digest.storage.models import DeliveryStatus, Issue, WebhookEvent
from subscribers.membership import unsubscribe, unsubscribe_all
from subscribers.models import Subscriber, SuppressionReason
from subscribers.suppression import lookup_address, suppress

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
_STATUS_OF = {
    "delivered": DeliveryStatus.DELIVERED,
    "deferred": DeliveryStatus.DEFERRED,
    "dropped": DeliveryStatus.DROPPED,
    "bounce": DeliveryStatus.BOUNCED,
}
_DROP_SUPPRESSES = {
    "bounced address": SuppressionReason.HARD_BOUNCE,
    "spam reporting address": SuppressionReason.COMPLAINT,
}
_W = WebhookEvent.__table__  # type: ignore[attr-defined]
_MAX_ID = 2**31 - 1  # delivery ids are 32-bit: a larger one names nothing of ours


@dataclass
class EventsResult:
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0  # malformed, of a kind we do not track, or about nothing we know
    settled: int = 0  # recipients left unknown whom these events proved sent (logged only)

    def as_json(self) -> dict[str, int]:
        """The answer to SendGrid (it reads only the status code; tests read the body)."""
        found = asdict(self)
        del found["settled"]
        return found


@dataclass(slots=True)
class _Context:
    """Whom a suppression or unsubscribe is about: address, issue and newsletter, when known."""

    kind: str
    email: str | None
    issue_id: int | None
    newsletter: str | None
    at: datetime
    detail: str | None  # SendGrid's status, reason and type, for the record


Action = Callable[[], bool]  # a suppression or unsubscribe, run after the deliveries are written


def apply_sendgrid_events(session: Session, events: list[Any], *, now: datetime) -> EventsResult:
    """Apply a verified webhook batch; the caller commits (all of it, or none on error)."""
    result = EventsResult(received=len(events))
    valid: list[_Event] = []
    for raw in events:
        if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
            result.ignored += 1
            continue
        valid.append((raw, _event_id(raw), _delivery_id(raw)))
    fresh = _first_times(session, valid, now)
    result.duplicates += len(valid) - len(fresh)
    named = {d for raw, _, d in fresh if d is not None and raw["event"] != "processed"}
    rows = event_rows.load(
        session, named, if_unknown=(d for _, _, d in fresh if d is not None and d not in named)
    )
    newsletters = event_rows.lock_issues(session, (row.issue_id for row in rows.values()))
    batch = _Batch(session, rows, newsletters, now)
    outcomes = [batch.apply(event) for event in fresh]
    settled = event_rows.write(session, rows.values())
    batch.tally.write(session)
    for outcome in outcomes:
        done = outcome() if callable(outcome) else outcome
        if done:
            result.applied += 1
        else:
            result.ignored += 1
    result.settled = sum(settled.values())
    return result


_Event = tuple[dict[str, Any], str, int | None]  # the event, its id, the delivery it names


def _event_id(raw: dict[str, Any]) -> str:
    event_id = raw.get("sg_event_id")
    if not isinstance(event_id, str) or not event_id:
        canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        event_id = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return event_id[:200]


def _first_times(session: Session, events: list[_Event], now: datetime) -> list[_Event]:
    """The events not seen before (in this batch or any earlier one), in order; records them."""
    first: dict[str, _Event] = {}
    for event in events:
        first.setdefault(event[1], event)
    if not first:
        return []
    rows = [
        (event_id, str(raw["event"])[:32], delivery_id)
        for event_id, (raw, _, delivery_id) in sorted(first.items())  # one order: no deadlock
    ]
    inserted = _insert_new(session, rows, now)
    return [event for event_id, event in first.items() if event_id in inserted]


# PostgreSQL: the rows as one JSON parameter (a list parameter is adapted element by element in
# Python), the inserted ids answered as one JSON array rather than a row each.
_INSERT = text(
    "WITH new AS (INSERT INTO webhook_event (provider, event_id, event, delivery_id, received_at) "
    "SELECT :provider, u.e, u.k, u.d, :at "
    "FROM json_to_recordset(CAST(:rows AS json)) AS u(e varchar, k varchar, d integer) "
    "ON CONFLICT (provider, event_id) DO NOTHING RETURNING event_id) "
    "SELECT CAST(coalesce(json_agg(event_id), '[]') AS text) FROM new"
).bindparams(
    bindparam("rows", type_=String()),
    bindparam("at", type_=_W.c.received_at.type),
    provider=PROVIDER,
)


def _insert_new(
    session: Session, rows: list[tuple[str, str, int | None]], now: datetime
) -> set[str]:
    """Insert the (event id, kind, delivery id) rows whose event id is new; the ids inserted."""
    if session.get_bind().dialect.name == "postgresql":
        document = json.dumps([{"e": e, "k": k, "d": d} for e, k, d in rows])
        answer = session.execute(_INSERT, {"rows": document, "at": now}).scalar_one()
        return set(json.loads(answer))
    inserted: set[str] = set()
    for start in range(0, len(rows), 400):
        values = [
            {"provider": PROVIDER, "event_id": e, "event": k, "delivery_id": d, "received_at": now}
            for e, k, d in rows[start : start + 400]
        ]
        chunk = (
            sqlite.insert(_W)
            .values(values)
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(_W.c.event_id)
        )
        inserted.update(str(e) for e in session.execute(chunk).scalars())
    return inserted


def _delivery_id(raw: dict[str, Any]) -> int | None:
    found = _int(raw.get("digest_delivery_id"))
    return found if found is not None and found <= _MAX_ID else None


class _Batch:
    """One batch's events applied in order to its deliveries (in memory) and tallies."""

    def __init__(
        self, session: Session, rows: dict[int, Row], newsletters: dict[int, str], now: datetime
    ) -> None:
        self.session, self.rows, self.newsletters, self.now = session, rows, newsletters, now
        self.tally = Tally()
        self._times: dict[int, datetime] = {}  # SendGrid's timestamps repeat within a batch

    def apply(self, event: _Event) -> bool | Action:
        """Apply one event to its delivery; True if it was about something we know, or the
        suppression / unsubscribe to run once the deliveries are written."""
        raw, _, delivery_id = event
        kind: str = raw["event"]
        delivery = self.rows.get(delivery_id) if delivery_id is not None else None
        if delivery is not None and not _same_address(raw.get("email"), delivery):
            log.warning("event for delivery %s names another address; ignored", delivery_id)
            delivery = None
        at = self._time(raw.get("timestamp"))
        status = _STATUS_OF.get(kind)
        if status is not None:
            if delivery is not None:
                detail = _detail(raw) if status in _KEEPS_DETAIL else None
                event_rows.set_status(delivery, status, at, detail)
            reason = _suppression_for(kind, raw)
            if reason is not None:
                context = self._context(raw, delivery, at)
                if context.email:
                    return lambda: _suppress(self.session, context, reason)
            return delivery is not None
        if kind in ("open", "click"):
            if delivery is None:  # not a message of ours, or about another address
                return False
            if kind == "click":
                url = raw.get("url")
                self.tally.click(delivery.issue_id, url if isinstance(url, str) else None, at)
            else:
                self.tally.open(delivery.issue_id, at)
            event_rows.engaged(delivery, at, clicked=kind == "click")
            return True
        if kind == "processed":
            return delivery is not None and event_rows.processed(delivery, at)
        if kind not in ("spamreport", "unsubscribe", "group_unsubscribe"):
            return False  # group_resubscribe, account events…: nothing to do
        context = self._context(raw, delivery, at)
        if not context.email:
            return False
        if kind == "spamreport":
            return lambda: _suppress(self.session, context, SuppressionReason.COMPLAINT)
        if kind == "unsubscribe":
            return lambda: _unsubscribe(self.session, context, everything=True)
        if context.newsletter:
            return lambda: _unsubscribe(self.session, context, everything=False)
        return False

    def _time(self, value: Any) -> datetime:
        if type(value) is not int:
            return _event_time(value, self.now)
        found = self._times.get(value)
        if found is None:
            found = self._times[value] = _event_time(value, self.now)
        return found

    def _context(self, raw: dict[str, Any], delivery: Row | None, at: datetime) -> _Context:
        """All an event says about whom and what (for the rare suppressions and unsubscribes)."""
        issue_id = _int(raw.get("digest_issue_id")) or (delivery.issue_id if delivery else None)
        newsletter = raw.get("digest_newsletter")
        if not isinstance(newsletter, str) or not newsletter:
            newsletter = self.newsletters.get(issue_id) if issue_id else None
            if newsletter is None and issue_id and issue_id <= _MAX_ID:
                issue = self.session.get(Issue, issue_id)
                newsletter = issue.newsletter if issue else None
        return _Context(
            kind=str(raw["event"]),
            # Addresses compare lower-cased (one mailbox, one subscriber), whoever spelled them.
            email=_address(raw.get("email")) or (delivery.address() if delivery else None),
            issue_id=issue_id,
            newsletter=newsletter,
            at=at,
            detail=_detail(raw),
        )


_KEEPS_DETAIL = (DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED)  # kept in `error`


def _same_address(value: Any, delivery: Row) -> bool:
    """Whether an event's `email` (when it has one) is the delivery's address."""
    if value == delivery.email:
        return True  # as it is nearly always: no need to normalise either
    email = _address(value)
    return not email or email == delivery.address()


def _detail(raw: dict[str, Any]) -> str | None:
    """SendGrid's status, reason and type, for the record."""
    detail = " ".join(str(raw[k]) for k in ("status", "reason", "type") if raw.get(k))
    return detail[:500] or None


def _suppression_for(kind: str, raw: dict[str, Any]) -> SuppressionReason | None:
    if kind == "bounce":
        # type=bounce is a hard bounce; type=blocked is the receiver refusing for now.
        hard = str(raw.get("type") or "bounce").lower() == "bounce"
        return SuppressionReason.HARD_BOUNCE if hard else None
    if kind == "dropped":
        return _DROP_SUPPRESSES.get(str(raw.get("reason") or "").lower())
    return None


def _suppress(session: Session, event: _Context, reason: SuppressionReason) -> bool:
    """Suppress the event's address; True (the event was applied, changed or not)."""
    assert event.email is not None
    suppress(
        session,
        event.email,
        reason,
        now=event.at,
        source=PROVIDER,
        detail=event.detail,
        newsletter=event.newsletter,
        issue_id=event.issue_id,
    )
    return True


def _unsubscribe(session: Session, event: _Context, *, everything: bool) -> bool:
    assert event.email is not None
    subscriber_id = session.exec(
        select(Subscriber.id).where(Subscriber.email == event.email)
    ).first()
    if subscriber_id is None:
        if everything:
            _suppress(session, event, SuppressionReason.UNSUBSCRIBED_ALL)
            return True
        return False
    if everything:
        unsubscribe_all(
            session, subscriber_id, now=event.at, method=PROVIDER, issue_id=event.issue_id
        )
    else:
        assert event.newsletter is not None
        unsubscribe(
            session,
            subscriber_id,
            event.newsletter,
            now=event.at,
            method=PROVIDER,
            issue_id=event.issue_id,
        )
    return True


def _address(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return lookup_address(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value or None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
        return int(value) or None
    return None


def _event_time(value: Any, now: datetime) -> datetime:
    """When it happened, by SendGrid's clock; `now` if missing or absurd (never the future)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 2**33:
        return min(datetime.fromtimestamp(value, UTC), now)
    return now
