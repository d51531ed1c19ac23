"""SendGrid Event Webhook events applied to the delivery ledger and to consent.

- delivered, deferred, dropped, bounce, open, click → the delivery's status and flags, found
  through the `custom_args` the sender put on every message (`digest_delivery_id`,
  `digest_issue_id`, `digest_newsletter`; SendGrid flattens them into each event); open and
  click also count in the issue's engagement per hour (and per link: the event's `url` in the
  issue's link table), as digest's own pixel and redirect do (`digest.storage.engagement`);
- bounce of type `bounce` (hard) and spamreport → the address is suppressed (its subscriptions
  become bounced / complained), as is a drop for "Bounced Address" or "Spam Reporting Address";
- unsubscribe → unsubscribed from everything; group_unsubscribe → from that newsletter.

SendGrid sends duplicates and retries: every event is recorded by `sg_event_id` in the same
transaction as its effect, and an id seen before is skipped. A status never moves backwards
(a late "deferred" does not undo "delivered", a bounce after "delivered" wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, select

from digest.storage import engagement
from digest.storage.engagement import EngagementKind
from digest.storage.models import Delivery, DeliveryStatus, Issue, WebhookEvent
from subscribers.bulk import insert_missing
from subscribers.membership import unsubscribe, unsubscribe_all
from subscribers.models import Subscriber, SuppressionReason
from subscribers.suppression import lookup_address, suppress

log = logging.getLogger(__name__)

PROVIDER = "sendgrid"
_RANK = {
    DeliveryStatus.DEFERRED: 1,
    DeliveryStatus.DELIVERED: 2,
    DeliveryStatus.DROPPED: 3,
    DeliveryStatus.BOUNCED: 3,
}
_DROP_SUPPRESSES = {
    "bounced address": SuppressionReason.HARD_BOUNCE,
    "spam reporting address": SuppressionReason.COMPLAINT,
}


@dataclass
class EventsResult:
    received: int = 0
    applied: int = 0
    duplicates: int = 0
    ignored: int = 0  # malformed, of a kind we do not track, or about nothing we know

    def as_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Context:
    """What one event is about: its address, delivery, issue and newsletter, when known."""

    kind: str
    email: str | None
    delivery: Delivery | None
    issue_id: int | None
    newsletter: str | None
    at: datetime
    detail: str | None  # SendGrid's status, reason and type, for the record
    reason: str  # SendGrid's reason, lower-cased ("bounced address", "550 5.1.1 …")
    bounce_type: str  # "bounce" (hard) or "blocked"
    url: str | None = None  # a click's link


def apply_sendgrid_events(session: Session, events: list[Any], *, now: datetime) -> EventsResult:
    """Apply a verified webhook batch; the caller commits (all of it, or none on error)."""
    result = EventsResult(received=len(events))
    for raw in events:
        if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
            result.ignored += 1
            continue
        if not _first_time(session, raw, now):
            result.duplicates += 1
            continue
        if _apply(session, _context(session, raw, now)):
            result.applied += 1
        else:
            result.ignored += 1
    return result


def _first_time(session: Session, raw: dict[str, Any], now: datetime) -> bool:
    event_id = raw.get("sg_event_id")
    if not isinstance(event_id, str) or not event_id:
        canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        event_id = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    row = {
        "provider": PROVIDER,
        "event_id": event_id[:200],
        "event": str(raw["event"])[:32],
        "delivery_id": _int(raw.get("digest_delivery_id")),
        "received_at": now,
    }
    return insert_missing(session, WebhookEvent, [row], conflict=["provider", "event_id"]) == 1


def _context(session: Session, raw: dict[str, Any], now: datetime) -> _Context:
    email = _address(raw.get("email"))
    delivery = None
    delivery_id = _int(raw.get("digest_delivery_id"))
    if delivery_id is not None:
        delivery = session.get(Delivery, delivery_id)
        if delivery is not None and email and lookup_address(delivery.email) != email:
            log.warning("event for delivery %s names another address; ignored", delivery_id)
            delivery = None
    issue_id = _int(raw.get("digest_issue_id")) or (delivery.issue_id if delivery else None)
    newsletter = raw.get("digest_newsletter")
    if not isinstance(newsletter, str) or not newsletter:
        issue = session.get(Issue, issue_id) if issue_id else None
        newsletter = issue.newsletter if issue else None
    reason = " ".join(str(raw[k]) for k in ("status", "reason", "type") if raw.get(k))
    return _Context(
        kind=str(raw["event"]),
        # Addresses compare lower-cased (one mailbox, one subscriber), whoever spelled them.
        email=email or (lookup_address(delivery.email) if delivery else None),
        delivery=delivery,
        issue_id=issue_id,
        newsletter=newsletter,
        at=_event_time(raw.get("timestamp"), now),
        detail=reason[:500] or None,
        reason=str(raw.get("reason") or "").lower(),
        bounce_type=str(raw.get("type") or "bounce").lower(),
        url=raw["url"] if isinstance(raw.get("url"), str) else None,
    )


def _apply(session: Session, event: _Context) -> bool:
    kind = event.kind
    if kind in ("delivered", "deferred", "dropped", "bounce"):
        status = {
            "delivered": DeliveryStatus.DELIVERED,
            "deferred": DeliveryStatus.DEFERRED,
            "dropped": DeliveryStatus.DROPPED,
            "bounce": DeliveryStatus.BOUNCED,
        }[kind]
        changed = _record_status(session, event, status)
        reason = _suppression_for(event)
        if reason is not None and event.email:
            _suppress(session, event, reason)
            changed = True
        return changed
    if kind in ("open", "click"):
        _count_engagement(session, event)
        return _record_engagement(session, event, clicked=kind == "click")
    if kind == "spamreport" and event.email:
        _suppress(session, event, SuppressionReason.COMPLAINT)
        return True
    if kind == "unsubscribe" and event.email:
        return _unsubscribe(session, event, everything=True)
    if kind == "group_unsubscribe" and event.email and event.newsletter:
        return _unsubscribe(session, event, everything=False)
    return False  # processed, group_resubscribe, account events…: nothing to do


def _suppression_for(event: _Context) -> SuppressionReason | None:
    if event.kind == "bounce":
        # type=bounce is a hard bounce; type=blocked is the receiver refusing for now.
        return SuppressionReason.HARD_BOUNCE if event.bounce_type == "bounce" else None
    if event.kind == "dropped":
        return _DROP_SUPPRESSES.get(event.reason)
    return None


def _record_status(session: Session, event: _Context, status: DeliveryStatus) -> bool:
    delivery = event.delivery
    if delivery is None:
        return False
    if _RANK[status] > _RANK.get(DeliveryStatus(delivery.status), 0):
        delivery.status = status
        if status in (DeliveryStatus.BOUNCED, DeliveryStatus.DROPPED):
            delivery.error = event.detail
        delivery.updated_at = event.at
        session.add(delivery)
    return True


def _record_engagement(session: Session, event: _Context, *, clicked: bool) -> bool:
    delivery = event.delivery
    if delivery is None:
        return False
    delivery.opened = True  # a click means it was opened, even with images off
    delivery.clicked = delivery.clicked or clicked
    if _RANK[DeliveryStatus.DELIVERED] > _RANK.get(DeliveryStatus(delivery.status), 0):
        delivery.status = DeliveryStatus.DELIVERED
    delivery.updated_at = event.at
    session.add(delivery)
    return True


def _count_engagement(session: Session, event: _Context) -> None:
    if event.delivery is None:  # not a message of ours, or about another address
        return
    issue_id = event.delivery.issue_id
    if event.kind == "click":
        link = engagement.link_position(session, issue_id, event.url or "")
        engagement.record(session, issue_id, EngagementKind.CLICK, event.at, link)
    else:
        engagement.record(session, issue_id, EngagementKind.OPEN, event.at)


def _suppress(session: Session, event: _Context, reason: SuppressionReason) -> None:
    assert event.email is not None
    session.flush()  # the delivery's new status before the suppression's bulk statements
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
