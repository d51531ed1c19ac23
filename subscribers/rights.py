"""Readers' data rights over subscribers' own tables: what is held about an address (GDPR
article 15) and erasing it (article 17).

`held_about` reads the subscriber row, the ids merged into it (one mailbox, one subscriber),
subscriptions, consent events and suppressions. `forget` deletes the subscriber, its aliases
and subscriptions, takes the address, IP and user agent out of its consent events (their
action, newsletter and date stay: the record of consent), and replaces any suppression by one
holding only the address's keyed hash, so the address is never mailed or added again; the
`forget` consent event names that hash, not the address. Tables outside this package
(deliveries, webhook events, …) are the caller's to erase (`digest.ops.data_rights`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_
from sqlmodel import Session, col, select

from subscribers import consent
from subscribers.bulk import insert_missing
from subscribers.models import (
    ConsentAction,
    ConsentEvent,
    Subscriber,
    SubscriberAlias,
    Subscription,
    Suppression,
    SuppressionReason,
)
from subscribers.suppression import address_hash, forgotten_among, lookup_address

ERASED = "[forgotten]"  # what an address becomes inside free text (errors, details)


def scrub(text: str | None, address: str) -> str | None:
    """`text` with every spelling of `address` (any case) replaced by ERASED."""
    if text is None or not address:
        return text
    return re.sub(re.escape(address), ERASED, text, flags=re.IGNORECASE)


def subscriber_ids(session: Session, address: str) -> tuple[Subscriber | None, list[int]]:
    """The subscriber stored under this normalised address and every id that stood for them
    (theirs and the ids merged into it)."""
    subscriber = session.exec(select(Subscriber).where(Subscriber.email == address)).first()
    if subscriber is None or subscriber.id is None:
        return None, []
    merged = session.exec(
        select(SubscriberAlias.old_id).where(SubscriberAlias.subscriber_id == subscriber.id)
    ).all()
    return subscriber, [subscriber.id, *merged]


def _events_of(address: str, ids: Sequence[int]) -> Any:
    mine = func.lower(col(ConsentEvent.email)) == address
    return or_(mine, col(ConsentEvent.subscriber_id).in_(ids)) if ids else mine


def held_about(session: Session, email: str, keys: Sequence[bytes] | None = None) -> dict[str, Any]:
    """Everything this package holds about an address, as plain JSON-ready values."""
    address = lookup_address(email)
    subscriber, ids = subscriber_ids(session, address)
    held: dict[str, Any] = {"address": address, "subscriber": None, "aliases": []}
    if subscriber is not None:
        held["subscriber"] = {
            "id": subscriber.id,
            "email": subscriber.email,
            "name": subscriber.name,
            "locale": subscriber.locale,
            "timezone": subscriber.timezone,
            "created_at": subscriber.created_at,
        }
        aliases = session.exec(
            select(SubscriberAlias).where(SubscriberAlias.subscriber_id == subscriber.id)
        )
        held["aliases"] = [{"old_id": a.old_id, "merged_at": a.merged_at} for a in aliases]
    subscriptions = (
        session.exec(
            select(Subscription)
            .where(col(Subscription.subscriber_id).in_(ids))
            .order_by(col(Subscription.newsletter))
        ).all()
        if ids
        else []
    )
    held["subscriptions"] = [
        {
            "newsletter": s.newsletter,
            "status": s.status,
            "source": s.source,
            "created_at": s.created_at,
            "confirmed_at": s.confirmed_at,
            "unsubscribed_at": s.unsubscribed_at,
        }
        for s in subscriptions
    ]
    events = session.exec(
        select(ConsentEvent)
        .where(_events_of(address, ids))
        .order_by(col(ConsentEvent.at), col(ConsentEvent.id))
    )
    held["consent_events"] = [
        {
            "at": e.at,
            "action": e.action,
            "newsletter": e.newsletter,
            "method": e.method,
            "email": e.email,
            "ip": e.ip,
            "user_agent": e.user_agent,
            "detail": e.detail,
            "issue_id": e.issue_id,
        }
        for e in events
    ]
    suppressions = session.exec(
        select(Suppression).where(func.lower(col(Suppression.email)) == address)
    ).all()
    held["suppressions"] = [
        {
            "email": s.email,
            "reason": s.reason,
            "source": s.source,
            "detail": s.detail,
            "created_at": s.created_at,
        }
        for s in suppressions
    ]
    if forgotten_among(session, [address], keys):
        held["suppressions"].append(
            {"email": None, "reason": SuppressionReason.FORGOTTEN.value, "source": "forget"}
        )
    return held


@dataclass(frozen=True)
class Forgotten:
    address_hash: str  # under the current key: what the suppression list keeps
    subscriber_id: int | None  # the id the address had, if it was a subscriber
    subscriber_ids: tuple[int, ...]  # every id that stood for it (merged ones too)
    consent_events: int  # consent events whose address, IP and user agent were taken out
    suppressions: int  # clear-text suppression rows replaced by the hashed one


def forget(
    session: Session,
    email: str,
    *,
    keys: Sequence[bytes],
    now: datetime,
    method: str = "cli",
) -> Forgotten:
    """Erase an address from subscribers' tables, leaving its keyed hash in the suppression
    list (see the module docstring). `keys[0]` hashes it; idempotent."""
    if not keys:
        raise ValueError("forgetting an address needs a key to hash it with")
    address = lookup_address(email)
    digest = address_hash(keys[0], address)
    subscriber, ids = subscriber_ids(session, address)
    events = session.exec(select(ConsentEvent).where(_events_of(address, ids))).all()
    for event in events:
        event.email, event.ip, event.user_agent = None, None, None
        event.detail = scrub(event.detail, address)
        session.add(event)
    session.flush()
    if ids:
        session.exec(delete(Subscription).where(col(Subscription.subscriber_id).in_(ids)))
        session.exec(delete(SubscriberAlias).where(col(SubscriberAlias.old_id).in_(ids)))
        session.exec(delete(SubscriberAlias).where(col(SubscriberAlias.subscriber_id).in_(ids)))
        session.exec(delete(Subscriber).where(col(Subscriber.id).in_(ids)))
    removed = session.exec(
        delete(Suppression).where(func.lower(col(Suppression.email)) == address)
    ).rowcount
    # Free text elsewhere in the suppression list (a bounce's detail naming the address).
    mentions = session.exec(
        select(Suppression).where(
            func.lower(col(Suppression.detail)).contains(address, autoescape=True)
        )
    )
    for row in mentions:
        row.detail = scrub(row.detail, address)
        session.add(row)
    session.flush()
    insert_missing(
        session,
        Suppression,
        [
            {
                "email": None,
                "email_hash": digest,
                "reason": SuppressionReason.FORGOTTEN.value,
                "source": method[:32],
                "detail": None,
                "created_at": now,
            }
        ],
        conflict=["email_hash"],
    )
    subscriber_id = subscriber.id if subscriber is not None else None
    consent.record(
        session,
        email=None,
        subscriber_id=subscriber_id,
        action=ConsentAction.FORGET,
        method=method,
        detail=f"hmac-sha256:{digest}",
        at=now,
    )
    return Forgotten(digest, subscriber_id, tuple(ids), len(events), max(removed, 0))


def record_export(session: Session, email: str, *, now: datetime, method: str = "cli") -> None:
    """Log that everything held about the address was handed out (a `data_export` event)."""
    address = lookup_address(email)
    subscriber, _ = subscriber_ids(session, address)
    consent.record(
        session,
        email=address,
        subscriber_id=subscriber.id if subscriber is not None else None,
        action=ConsentAction.DATA_EXPORT,
        method=method,
        at=now,
    )
