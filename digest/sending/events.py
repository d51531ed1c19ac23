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
from sqlalchemy.dialects import postgresql, sqlite
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


@dataclass(slots=True)  # not frozen: a frozen __init__ costs twice as much, per event
class _Context:
    """What one event is about: its address, delivery, issue and newsletter, when known."""

    kind: str
    email: str | None
    delivery: Row | None
    issue_id: int | None
    newsletter: str | None
    at: datetime
    detail: str | None  # SendGrid's status, reason and type, for the record
    reason: str  # SendGrid's reason, lower-cased ("bounced address", "550 5.1.1 …")
    bounce_type: str  # "bounce" (hard) or "blocked"
    url: str | None = None  # a click's link


Action = Callable[[], bool]  # a suppression or unsubscribe, run after the deliveries are written


def apply_sendgrid_events(session: Session, events: list[Any], *, now: datetime) -> EventsResult:
    """Apply a verified webhook batch; the caller commits (all of it, or none on error)."""
    result = EventsResult(received=len(events))
    valid: list[tuple[dict[str, Any], str]] = []
    for raw in events:
        if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
            result.ignored += 1
            continue
        valid.append((raw, _event_id(raw)))
    fresh = _first_times(session, valid, now)
    result.duplicates += len(valid) - len(fresh)
    rows = event_rows.load(session, filter(None, (_delivery_id(raw) for raw in fresh)))
    newsletters = event_rows.lock_issues(session, (row.issue_id for row in rows.values()))
    tally = Tally()
    outcomes: list[bool | Action] = [
        _apply(session, _context(session, raw, rows, newsletters, now), tally) for raw in fresh
    ]
    settled = event_rows.write(session, rows.values())
    tally.write(session)
    for outcome in outcomes:
        done = outcome() if callable(outcome) else outcome
        if done:
            result.applied += 1
        else:
            result.ignored += 1
    result.settled = sum(settled.values())
    return result


def _event_id(raw: dict[str, Any]) -> str:
    event_id = raw.get("sg_event_id")
    if not isinstance(event_id, str) or not event_id:
        canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        event_id = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return event_id[:200]


def _first_times(
    session: Session, events: list[tuple[dict[str, Any], str]], now: datetime
) -> list[dict[str, Any]]:
    """The events not seen before (in this batch or any earlier one), in order; records them."""
    first: dict[str, dict[str, Any]] = {}
    for raw, event_id in events:
        first.setdefault(event_id, raw)
    if not first:
        return []
    rows = [
        {
            "provider": PROVIDER,
            "event_id": event_id,
            "event": str(raw["event"])[:32],
            "delivery_id": _delivery_id(raw),
            "received_at": now,
        }
        for event_id, raw in sorted(first.items())  # one order: no two batches deadlock
    ]
    inserted = _insert_new(session, rows)
    return [raw for event_id, raw in first.items() if event_id in inserted]


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Insert the rows whose event id is new; the ids inserted."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        statement = text(
            "INSERT INTO webhook_event (provider, event_id, event, delivery_id, received_at) "
            "SELECT :provider, u.e, u.k, u.d, :at "
            "FROM unnest(CAST(:ids AS varchar[]), CAST(:kinds AS varchar[]), "
            "CAST(:deliveries AS integer[])) AS u(e, k, d) "
            "ON CONFLICT (provider, event_id) DO NOTHING RETURNING event_id"
        ).bindparams(
            bindparam("ids", type_=postgresql.ARRAY(String)),
            bindparam("kinds", type_=postgresql.ARRAY(String)),
            bindparam("deliveries", type_=postgresql.ARRAY(_W.c.delivery_id.type)),
            bindparam("at", type_=_W.c.received_at.type),
        )
        found = session.execute(
            statement,
            {
                "provider": PROVIDER,
                "ids": [r["event_id"] for r in rows],
                "kinds": [r["event"] for r in rows],
                "deliveries": [r["delivery_id"] for r in rows],
                "at": rows[0]["received_at"],
            },
        )
        return {str(event_id) for event_id in found.scalars()}
    inserted: set[str] = set()
    for start in range(0, len(rows), 400):
        chunk = (
            sqlite.insert(_W)
            .values(rows[start : start + 400])
            .on_conflict_do_nothing(index_elements=["provider", "event_id"])
            .returning(_W.c.event_id)
        )
        inserted.update(str(e) for e in session.execute(chunk).scalars())
    return inserted


def _delivery_id(raw: dict[str, Any]) -> int | None:
    found = _int(raw.get("digest_delivery_id"))
    return found if found is not None and found <= _MAX_ID else None


def _context(
    session: Session,
    raw: dict[str, Any],
    rows: dict[int, Row],
    newsletters: dict[int, str],
    now: datetime,
) -> _Context:
    email = _address(raw.get("email"))
    delivery_id = _delivery_id(raw)
    delivery = rows.get(delivery_id) if delivery_id is not None else None
    if delivery is not None and email and delivery.address != email:
        log.warning("event for delivery %s names another address; ignored", delivery_id)
        delivery = None
    issue_id = _int(raw.get("digest_issue_id")) or (delivery.issue_id if delivery else None)
    newsletter = raw.get("digest_newsletter")
    if not isinstance(newsletter, str) or not newsletter:
        newsletter = newsletters.get(issue_id) if issue_id else None
        if newsletter is None and issue_id and issue_id <= _MAX_ID:
            issue = session.get(Issue, issue_id)
            newsletter = issue.newsletter if issue else None
    reason = " ".join(str(raw[k]) for k in ("status", "reason", "type") if raw.get(k))
    return _Context(
        kind=str(raw["event"]),
        # Addresses compare lower-cased (one mailbox, one subscriber), whoever spelled them.
        email=email or (delivery.address if delivery else None),
        delivery=delivery,
        issue_id=issue_id,
        newsletter=newsletter,
        at=_event_time(raw.get("timestamp"), now),
        detail=reason[:500] or None,
        reason=str(raw.get("reason") or "").lower(),
        bounce_type=str(raw.get("type") or "bounce").lower(),
        url=raw["url"] if isinstance(raw.get("url"), str) else None,
    )


def _apply(session: Session, event: _Context, tally: Tally) -> bool | Action:
    """Apply the event to its delivery in memory; True if it was about something we know, or
    the suppression / unsubscribe to run once the deliveries are written."""
    kind, delivery = event.kind, event.delivery
    if kind in _STATUS_OF:
        if delivery is not None:
            event_rows.set_status(delivery, _STATUS_OF[kind], event.at, event.detail)
        reason = _suppression_for(event)
        if reason is not None and event.email:
            return lambda: _suppress(session, event, reason)
        return delivery is not None
    if kind in ("open", "click"):
        if delivery is None:  # not a message of ours, or about another address
            return False
        if kind == "click":
            tally.click(delivery.issue_id, event.url, event.at)
        else:
            tally.open(delivery.issue_id, event.at)
        event_rows.engaged(delivery, event.at, clicked=kind == "click")
        return True
    if kind == "processed":
        return delivery is not None and event_rows.processed(delivery, event.at)
    if kind == "spamreport" and event.email:
        return lambda: _suppress(session, event, SuppressionReason.COMPLAINT)
    if kind == "unsubscribe" and event.email:
        return lambda: _unsubscribe(session, event, everything=True)
    if kind == "group_unsubscribe" and event.email and event.newsletter:
        return lambda: _unsubscribe(session, event, everything=False)
    return False  # group_resubscribe, account events…: nothing to do


def _suppression_for(event: _Context) -> SuppressionReason | None:
    if event.kind == "bounce":
        # type=bounce is a hard bounce; type=blocked is the receiver refusing for now.
        return SuppressionReason.HARD_BOUNCE if event.bounce_type == "bounce" else None
    if event.kind == "dropped":
        return _DROP_SUPPRESSES.get(event.reason)
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
