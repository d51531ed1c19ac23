"""Coming in and coming back by the person's own hand: the subscribe form, its confirmation
link, and the preferences page.

Anyone can type anyone's address into a form, so the form alone never revives a subscription
someone left: it sends a confirmation link, and only that link (proof of the mailbox) does.
Preferences links came in the person's own mail, so they may rejoin from there too. Bounces
and complaints are never undone here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session, select

from subscribers import consent
from subscribers.addresses import normalize_email
from subscribers.bulk import insert_missing
from subscribers.membership import (
    SUBSCRIPTION_KEY,
    ensure_subscriber,
    subscription_row,
    unsubscribe,
)
from subscribers.models import (
    ConsentAction,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Suppression,
    SuppressionReason,
)
from subscribers.profile import clean_name
from subscribers.suppression import (
    MAILABLE,
    is_forgotten,
    lift_unsubscribed_all,
    suppression_reason,
)

# Left by their own choice: their own confirmed click may bring them back.
_REVERSIBLE = (SubscriptionStatus.UNSUBSCRIBED,)


@dataclass(frozen=True)
class SubscribeRequest:
    """What the form should do next. Say the same thing to the visitor whatever it is, so the
    form does not reveal who is subscribed."""

    subscriber_id: int | None
    send_confirmation: bool  # mail a confirmation link
    subscribed: bool  # active right now (single opt-in, first time)


def request_subscription(
    session: Session,
    email: str,
    newsletter: str,
    *,
    now: datetime,
    double_opt_in: bool,
    name: str | None = None,
    ip: str | None = None,
    user_agent: str | None = None,
    forget_keys: Sequence[bytes] | None = None,
) -> SubscribeRequest:
    """Handle a subscribe form post (raises InvalidAddress or InvalidField for bad input).

    A forgotten address (recognised by its hash under `forget_keys`, else the session's keys)
    is refused like a bounced one: nothing stored, nothing mailed.
    """
    address = normalize_email(email)
    suppressed = suppression_reason(session, address)
    if suppressed is None and is_forgotten(session, address, forget_keys):
        suppressed = SuppressionReason.FORGOTTEN
    if suppressed not in (None, SuppressionReason.UNSUBSCRIBED_ALL):
        return SubscribeRequest(None, send_confirmation=False, subscribed=False)
    subscriber_id = ensure_subscriber(session, address, now=now, name=clean_name(name))
    current = _subscription(session, subscriber_id, newsletter)
    if current is not None and current.status == SubscriptionStatus.ACTIVE:
        return SubscribeRequest(subscriber_id, send_confirmation=False, subscribed=False)
    if current is not None and current.status not in (*MAILABLE, *_REVERSIBLE):
        return SubscribeRequest(subscriber_id, send_confirmation=False, subscribed=False)
    if current is not None or suppressed is not None:
        # Pending (send the link again) or coming back after leaving (the link decides).
        return SubscribeRequest(subscriber_id, send_confirmation=True, subscribed=False)
    status = SubscriptionStatus.PENDING if double_opt_in else SubscriptionStatus.ACTIVE
    row = subscription_row(subscriber_id, newsletter, status, source="form", now=now)
    if not insert_missing(session, Subscription, [row], conflict=SUBSCRIPTION_KEY):
        return SubscribeRequest(subscriber_id, send_confirmation=False, subscribed=False)
    consent.record(
        session,
        email=address,
        subscriber_id=subscriber_id,
        newsletter=newsletter,
        action=ConsentAction.SUBSCRIBE,
        method="form",
        ip=ip,
        user_agent=user_agent,
        detail="awaiting confirmation" if double_opt_in else None,
        at=now,
    )
    return SubscribeRequest(
        subscriber_id, send_confirmation=double_opt_in, subscribed=not double_opt_in
    )


class ConfirmOutcome(StrEnum):
    CONFIRMED = "confirmed"  # pending → active
    RESUBSCRIBED = "resubscribed"  # unsubscribed → active
    ALREADY_ACTIVE = "already_active"
    REFUSED = "refused"  # bounced, complained, blocked, or left after the link was sent
    NOT_FOUND = "not_found"


def confirm_subscription(
    session: Session,
    subscriber_id: int,
    newsletter: str,
    *,
    now: datetime,
    requested_at: datetime,
    ip: str | None = None,
    user_agent: str | None = None,
) -> ConfirmOutcome:
    """The confirmation link was followed (and its button pressed).

    `requested_at` is when the link was issued: a link sent before the person unsubscribed does
    not undo that unsubscribe.
    """
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return ConfirmOutcome.NOT_FOUND
    current = _subscription(session, subscriber_id, newsletter)
    if current is not None and current.status == SubscriptionStatus.ACTIVE:
        return ConfirmOutcome.ALREADY_ACTIVE
    if current is not None and current.unsubscribed_at and current.unsubscribed_at > requested_at:
        return ConfirmOutcome.REFUSED
    return _join(
        session,
        subscriber,
        current,
        newsletter,
        now=now,
        method="confirm-link",
        ip=ip,
        user_agent=user_agent,
        since=requested_at,
    )


@dataclass
class PreferencesChange:
    joined: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # bounced, complained or blocked

    @property
    def changed(self) -> bool:
        return bool(self.joined or self.left)


def set_preferences(
    session: Session,
    subscriber_id: int,
    wanted: Collection[str],
    offered: Sequence[str],
    *,
    now: datetime,
    ip: str | None = None,
    user_agent: str | None = None,
) -> PreferencesChange:
    """Make the subscriber's newsletters among `offered` exactly those in `wanted`."""
    change = PreferencesChange()
    subscriber = session.get(Subscriber, subscriber_id)
    if subscriber is None:
        return change
    for newsletter in offered:
        current = _subscription(session, subscriber_id, newsletter)
        is_active = current is not None and current.status == SubscriptionStatus.ACTIVE
        if newsletter in wanted and not is_active:
            outcome = _join(
                session,
                subscriber,
                current,
                newsletter,
                now=now,
                method="preferences",
                ip=ip,
                user_agent=user_agent,
                since=None,
            )
            refused = outcome is ConfirmOutcome.REFUSED
            (change.refused if refused else change.joined).append(newsletter)
        elif newsletter not in wanted and current is not None and current.status in MAILABLE:
            unsubscribe(
                session,
                subscriber_id,
                newsletter,
                now=now,
                method="preferences",
                ip=ip,
                user_agent=user_agent,
            )
            change.left.append(newsletter)
    return change


def _join(
    session: Session,
    subscriber: Subscriber,
    current: Subscription | None,
    newsletter: str,
    *,
    now: datetime,
    method: str,
    ip: str | None,
    user_agent: str | None,
    since: datetime | None,
) -> ConfirmOutcome:
    """Activate a subscription on the person's own, mailbox-proven request."""
    assert subscriber.id is not None
    suppressed = suppression_reason(session, subscriber.email)
    if suppressed == SuppressionReason.UNSUBSCRIBED_ALL:
        if since is not None and _suppressed_after(session, subscriber.email, since):
            return ConfirmOutcome.REFUSED
        lift_unsubscribed_all(session, subscriber.email)
    elif suppressed is not None:
        return ConfirmOutcome.REFUSED
    if current is None:
        row = subscription_row(
            subscriber.id, newsletter, SubscriptionStatus.ACTIVE, source=method, now=now
        )
        insert_missing(session, Subscription, [row], conflict=SUBSCRIPTION_KEY)
        action, outcome = ConsentAction.SUBSCRIBE, ConfirmOutcome.CONFIRMED
    elif current.status == SubscriptionStatus.PENDING:
        action, outcome = ConsentAction.CONFIRM, ConfirmOutcome.CONFIRMED
    elif current.status in _REVERSIBLE:
        action, outcome = ConsentAction.RESUBSCRIBE, ConfirmOutcome.RESUBSCRIBED
    else:
        return ConfirmOutcome.REFUSED
    if current is not None:
        current.status = SubscriptionStatus.ACTIVE
        current.confirmed_at = now
        current.unsubscribed_at = None
        session.add(current)
        session.flush()
    consent.record(
        session,
        email=subscriber.email,
        subscriber_id=subscriber.id,
        newsletter=newsletter,
        action=action,
        method=method,
        ip=ip,
        user_agent=user_agent,
        at=now,
    )
    return outcome


def _subscription(session: Session, subscriber_id: int, newsletter: str) -> Subscription | None:
    return session.exec(
        select(Subscription).where(
            Subscription.subscriber_id == subscriber_id, Subscription.newsletter == newsletter
        )
    ).first()


def _suppressed_after(session: Session, address: str, moment: datetime) -> bool:
    created = session.exec(
        select(Suppression.created_at).where(Suppression.email == address)
    ).first()
    return created is not None and created > moment
