"""Address-level suppression: an address here is never mailed again, whatever list it is on.

Reasons have a strength: a complaint outranks a hard bounce, which outranks a manual block,
which outranks "unsubscribed from everything". A stronger reason replaces a weaker one, never
the reverse, and only "unsubscribed from everything" can be lifted, by the person themselves
(a confirmed subscription or their preferences page).

A forgotten address (`subscribers.rights.forget`) is suppressed by its keyed hash alone:
`address_hash(key, address)`, HMAC-SHA256 under `forget_keys(secrets)`, one key per configured
secret (the current one first, then retired ones, so a rotation does not let a forgotten
address back in). This package never sees the secret: callers hand in the derived keys, as
`forget_keys=` or once per session in `session.info[FORGET_KEYS]`. Every path that adds an
address asks `forgotten_among` / `is_forgotten` first.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, update
from sqlmodel import Session, col, select

from subscribers import consent
from subscribers.addresses import InvalidAddress, normalize_email
from subscribers.bulk import among, insert_missing
from subscribers.models import (
    ConsentAction,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from subscribers.tokens import derive_key

REASON_RANK = {
    SuppressionReason.UNSUBSCRIBED_ALL: 0,
    SuppressionReason.MANUAL: 1,
    SuppressionReason.HARD_BOUNCE: 2,
    SuppressionReason.COMPLAINT: 3,
    SuppressionReason.FORGOTTEN: 4,
}
# What a suppression does to the address's subscriptions, and how the consent log names it.
_SUBSCRIPTION_STATUS = {
    SuppressionReason.HARD_BOUNCE: SubscriptionStatus.BOUNCED,
    SuppressionReason.COMPLAINT: SubscriptionStatus.COMPLAINED,
    SuppressionReason.UNSUBSCRIBED_ALL: SubscriptionStatus.UNSUBSCRIBED,
}
_ACTION = {
    SuppressionReason.HARD_BOUNCE: ConsentAction.BOUNCE,
    SuppressionReason.COMPLAINT: ConsentAction.COMPLAINT,
    SuppressionReason.MANUAL: ConsentAction.SUPPRESS,
    SuppressionReason.UNSUBSCRIBED_ALL: ConsentAction.UNSUBSCRIBE_ALL,
}
MAILABLE = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)
# session.info key of the forget keys, for callers that set them once per session.
FORGET_KEYS = "subscribers.forget_keys"


def forget_keys(secrets: Sequence[bytes]) -> tuple[bytes, ...]:
    """The keys forgotten addresses are hashed with, one per secret (current first)."""
    return tuple(derive_key(secret, "forget") for secret in secrets)


def address_hash(key: bytes, address: str) -> str:
    """The keyed hash a forgotten (normalised) address is kept as: HMAC-SHA256, hex."""
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


def _keys(session: Session, keys: Sequence[bytes] | None) -> Sequence[bytes]:
    if keys is not None:
        return keys
    found: Sequence[bytes] = session.info.get(FORGET_KEYS, ())
    return found


def forgotten_among(
    session: Session, addresses: Sequence[str], keys: Sequence[bytes] | None = None
) -> set[str]:
    """Those of these normalised addresses that were forgotten (hashed with any of `keys`,
    else the session's; with no keys at all, none can be recognised)."""
    keys = _keys(session, keys)
    if not keys or not addresses:
        return set()
    by_hash = {address_hash(key, address): address for address in addresses for key in keys}
    connection = session.connection()
    found = connection.execute(
        select(Suppression.email_hash).where(
            among(col(Suppression.email_hash), list(by_hash), connection.dialect)
        )
    ).scalars()
    return {by_hash[digest] for digest in found if digest is not None}


def is_forgotten(session: Session, address: str, keys: Sequence[bytes] | None = None) -> bool:
    return bool(forgotten_among(session, [address], keys))


def lookup_address(email: str) -> str:
    """The stored form of an address we are told about (a provider event, a CLI argument).

    Lower-cased like every stored address; an address we would refuse as input (not valid, or
    non-ASCII before the @-sign) is still looked up, so it can be found and suppressed.
    """
    try:
        return normalize_email(email, smtputf8=True)
    except InvalidAddress:
        return email.strip().lower()


def suppress(
    session: Session,
    email: str,
    reason: str,
    *,
    now: datetime,
    source: str,
    detail: str | None = None,
    newsletter: str | None = None,
    issue_id: int | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
) -> bool:
    """Never mail `email` again; returns True if this changed anything.

    The address's live subscriptions end too: bounced, complained, or unsubscribed (for
    "unsubscribed from everything", logged once per newsletter left; a manual block leaves them
    as they are, so lifting it restores them). `newsletter` and `issue_id` name the mailing that
    prompted it, when known (for stats).
    """
    address = lookup_address(email)
    why = SuppressionReason(reason)
    if why is SuppressionReason.FORGOTTEN:
        raise ValueError("an address is forgotten by subscribers.rights.forget, not suppressed")
    if is_forgotten(session, address):
        return False  # already suppressed for good; do not write the address down again
    subscriber_id = session.exec(select(Subscriber.id).where(Subscriber.email == address)).first()
    stored = store_suppression(session, address, why, now=now, source=source, detail=detail)
    status = _SUBSCRIPTION_STATUS.get(why)
    ended: list[str] = []
    if status is not None and subscriber_id is not None:
        ended = end_subscriptions(session, subscriber_id, status, now=now)
    if not stored and not ended:
        return False
    event: dict[str, Any] = {
        "email": address,
        "subscriber_id": subscriber_id,
        "action": _ACTION[why],
        "method": source,
        "detail": detail,
        "issue_id": issue_id,
        "ip": ip,
        "user_agent": user_agent,
        "at": now,
    }
    targets = ended if why is SuppressionReason.UNSUBSCRIBED_ALL and ended else [newsletter]
    consent.record_many(session, [consent.consent_row(**event, newsletter=n) for n in targets])
    return True


def store_suppression(
    session: Session,
    address: str,
    reason: SuppressionReason,
    *,
    now: datetime,
    source: str,
    detail: str | None = None,
) -> bool:
    """Insert or strengthen the suppression row only (no consent event); True if it changed."""
    row: dict[str, Any] = {
        "email": address,
        "reason": str(reason),
        "source": source[:32],
        "detail": detail[:500] if detail else None,
        "created_at": now,
    }
    if insert_missing(session, Suppression, [row], conflict=["email"]):
        return True
    current = session.exec(select(Suppression).where(Suppression.email == address)).one()
    if REASON_RANK[reason] <= REASON_RANK.get(SuppressionReason(current.reason), 0):
        return False
    current.reason, current.source, current.detail = row["reason"], row["source"], row["detail"]
    session.add(current)
    session.flush()
    return True


def lift_unsubscribed_all(session: Session, address: str) -> bool:
    """Remove an "unsubscribed from everything" suppression (the person asked to come back)."""
    result = session.exec(
        delete(Suppression).where(
            col(Suppression.email) == address,
            col(Suppression.reason) == SuppressionReason.UNSUBSCRIBED_ALL,
        )
    )
    return result.rowcount > 0


def suppression_of(session: Session, email: str) -> Suppression | None:
    address = lookup_address(email)
    return session.exec(select(Suppression).where(Suppression.email == address)).first()


def suppression_reason(session: Session, address: str) -> str | None:
    """The reason a normalised address is suppressed, or None."""
    return session.exec(select(Suppression.reason).where(Suppression.email == address)).first()


def is_suppressed(session: Session, email: str) -> bool:
    return suppression_of(session, email) is not None


def end_subscriptions(
    session: Session,
    subscriber_id: int,
    status: SubscriptionStatus,
    *,
    now: datetime,
    newsletter: str | None = None,
) -> list[str]:
    """Move live (active or pending) subscriptions to `status`; the newsletters it changed.

    A single conditional UPDATE, so two simultaneous requests cannot both count as the change.
    """
    statement = update(Subscription).where(
        col(Subscription.subscriber_id) == subscriber_id,
        col(Subscription.status).in_(MAILABLE),
    )
    if newsletter is not None:
        statement = statement.where(col(Subscription.newsletter) == newsletter)
    result = session.exec(
        statement.values(status=status, unsubscribed_at=now).returning(col(Subscription.newsletter))
    )
    return sorted(result.scalars())
