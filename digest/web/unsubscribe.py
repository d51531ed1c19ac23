"""Unsubscribe and preferences pages behind signed links.

- `GET /u/{token}` says what will happen and offers a button; a GET never changes anything
  (link scanners follow every link in an email).
- `POST /u/{token}` is RFC 8058 one-click: the body `List-Unsubscribe=One-Click`, urlencoded or
  multipart, no cookies, no auth. It answers 200 (never a redirect), is idempotent, and is also
  what the page's own button posts.
- `GET|POST /preferences/{token}`: every newsletter with a checkbox, and "unsubscribe from all";
  with a personal newsletter, "one email or each on its own" and the topics followed
  (`digest.web.preferences_personal`, which also has what a personal unsubscribe leaves).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from digest.app import App
from digest.config import NewsletterConfig
from digest.mail.links import PREFERENCES_ROUTE, UNSUBSCRIBE_ROUTE
from digest.sending.counts import issue_to_credit
from digest.web import preferences_personal as personal
from digest.web.deps import app_of
from digest.web.signed import (
    client_of,
    first,
    form_fields,
    invalid_link,
    link_owner,
    newsletter_title,
    page,
    verified,
)
from subscribers.addresses import mask_email
from subscribers.membership import subscriptions_of, unsubscribe, unsubscribe_all
from subscribers.models import Subscriber, Subscription, SubscriptionStatus, SuppressionReason
from subscribers.optin import set_preferences
from subscribers.suppression import MAILABLE, suppression_reason
from subscribers.tokens import Purpose, TokenClaims

router = APIRouter()


@router.get(UNSUBSCRIBE_ROUTE, response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    app = app_of(request)
    with app.session() as session:
        owner = link_owner(app, session, token, Purpose.UNSUBSCRIBE)
        if owner is None:
            return invalid_link(app)
        claims, subscriber = owner
        return leave_page(
            app, session, subscriber, claims.newsletter, request.url.path,
            _preferences_url(app, claims),
        )  # fmt: skip


def leave_page(
    app: App,
    session: Session,
    subscriber: Subscriber,
    slug: str,
    action_url: str,
    preferences_url: str,
) -> HTMLResponse:
    """What leaving `slug` will do, with the button that does it (posting to `action_url`)."""
    subscriptions = subscriptions_of(session, subscriber.id or 0)
    suppressed = suppression_reason(session, subscriber.email)
    current = subscriptions.get(slug)
    already = suppressed is not None or current is None or current.status not in MAILABLE
    title = newsletter_title(app, slug)
    unfollows = [t.title for t in personal.topics_to_leave(app.settings, subscriptions, slug)]
    merged_into = personal.merged_into(app.settings, subscriptions, slug)
    if merged_into:  # a topic's "unfollow" link in a personal email's footer
        heading = f"You no longer follow {title}" if already else f"Stop following {title}?"
    else:
        heading = "You're unsubscribed" if already else f"Unsubscribe from {title}?"
    return page(
        app,
        "unsubscribe.html",
        heading=heading,
        already=already,
        newsletter=title,
        unfollows=unfollows,
        merged_into=merged_into,
        email=mask_email(subscriber.email),
        action_url=action_url,
        preferences_url=preferences_url,
    )


@router.post(UNSUBSCRIBE_ROUTE, response_class=HTMLResponse)
async def one_click_unsubscribe(request: Request, token: str) -> HTMLResponse:
    fields = await form_fields(request)
    method = "link" if first(fields, "source") == "page" else "one-click"
    ip, user_agent = client_of(request)
    return await run_in_threadpool(
        _unsubscribe, app_of(request), token, method=method, ip=ip, user_agent=user_agent
    )


def _unsubscribe(
    app: App, token: str, *, method: str, ip: str | None, user_agent: str | None
) -> HTMLResponse:
    with app.session() as session:
        owner = link_owner(app, session, token, Purpose.UNSUBSCRIBE)
        if owner is None:
            return invalid_link(app)
        claims, subscriber = owner
        return leave(
            app, session, subscriber, claims.newsletter, credit=claims.newsletter,
            preferences_url=_preferences_url(app, claims), method=method, ip=ip,
            user_agent=user_agent,
        )  # fmt: skip


def leave(
    app: App,
    session: Session,
    subscriber: Subscriber,
    slug: str,
    *,
    credit: str,
    preferences_url: str,
    method: str,
    ip: str | None,
    user_agent: str | None,
) -> HTMLResponse:
    """Unsubscribe from `slug` (credited to the newsletter `credit`'s latest issue to them) and
    say what changed."""
    subscriber_id = subscriber.id or 0
    subscriptions = subscriptions_of(session, subscriber_id)
    topics = personal.topics_to_leave(app.settings, subscriptions, slug)
    merged_into = personal.merged_into(app.settings, subscriptions, slug)
    issue_id = issue_to_credit(session, subscriber_id, credit)
    left = unsubscribe(
        session,
        subscriber_id,
        slug,
        now=app.now(),
        method=method,
        ip=ip,
        user_agent=user_agent,
        issue_id=issue_id,
    )
    # Unsubscribing from a personal email also unfollows the topics it carried in place of
    # their own emails: a reader pressing "unsubscribe" (in Gmail, say) expects less mail,
    # not the topics' separate emails from the next morning on. Only when this request
    # ended the subscription (`left`): a repeated click never unfollows topics followed
    # again since.
    unfollowed = (
        personal.leave_topics(
            session,
            subscriber_id,
            topics,
            now=app.now(),
            method=method,
            ip=ip,
            user_agent=user_agent,
            issue_id=issue_id,
        )
        if left
        else []
    )
    return page(
        app,
        "unsubscribed.html",
        heading="Topic unfollowed" if merged_into else "You're unsubscribed",
        newsletter=newsletter_title(app, slug),
        unfollowed=unfollowed,
        merged_into=merged_into,
        email=mask_email(subscriber.email),
        preferences_url=preferences_url,
    )


@router.get(PREFERENCES_ROUTE, response_class=HTMLResponse)
def preferences_page(request: Request, token: str) -> HTMLResponse:
    app = app_of(request)
    claims = verified(app, token, Purpose.PREFERENCES)
    if claims is None:
        return invalid_link(app)
    with app.session() as session:
        return _preferences(app, session, claims, request.url.path)


@router.post(PREFERENCES_ROUTE, response_class=HTMLResponse)
async def save_preferences(request: Request, token: str) -> HTMLResponse:
    fields = await form_fields(request)
    ip, user_agent = client_of(request)
    return await run_in_threadpool(
        _save_preferences, app_of(request), token, fields, request.url.path, ip, user_agent
    )


def _save_preferences(
    app: App,
    token: str,
    fields: dict[str, list[str]],
    path: str,
    ip: str | None,
    user_agent: str | None,
) -> HTMLResponse:
    claims = verified(app, token, Purpose.PREFERENCES)
    if claims is None:
        return invalid_link(app)
    with app.session() as session:
        if session.get(Subscriber, claims.subscriber_id) is None:
            return invalid_link(app)
        now = app.now()
        if first(fields, "action") == "unsubscribe_all":
            unsubscribe_all(
                session,
                claims.subscriber_id,
                now=now,
                method="preferences",
                ip=ip,
                user_agent=user_agent,
            )
            message = "Done: you won't receive any of our newsletters."
        else:
            current = subscriptions_of(session, claims.subscriber_id)
            choice = personal.delivery_choice(
                app.settings, current, first(fields, "personal"), claims.newsletter
            )
            offered, wanted = personal.apply_delivery(
                choice,
                first(fields, "delivery"),
                [n.slug for n in app.settings.newsletters],
                set(fields.get("newsletter", [])),
            )
            change = set_preferences(
                session,
                claims.subscriber_id,
                wanted,
                offered,
                now=now,
                ip=ip,
                user_agent=user_agent,
            )
            message = "Saved." if change.changed else "Nothing to change."
            if change.refused:
                message += " Some newsletters can't be sent to this address; please contact us."
            after = subscriptions_of(session, claims.subscriber_id)
            if choice is not None and personal.follows_nothing(app.settings, choice, after):
                message += f" You follow no topic yet: tick one or more for {choice.title}."
            return _preferences(app, session, claims, path, message=message, shown=choice)
        return _preferences(app, session, claims, path, message=message)


def _preferences(
    app: App,
    session: Session,
    claims: TokenClaims,
    path: str,
    *,
    message: str = "",
    shown: NewsletterConfig | None = None,
) -> HTMLResponse:
    subscriber = session.get(Subscriber, claims.subscriber_id)
    if subscriber is None:
        return invalid_link(app)
    current = subscriptions_of(session, claims.subscriber_id)
    suppressed = suppression_reason(session, subscriber.email)
    blocked_address = suppressed not in (None, SuppressionReason.UNSUBSCRIBED_ALL)
    items = {
        n.slug: _item(n, current.get(n.slug), suppressed, blocked_address)
        for n in app.settings.newsletters
    }
    # After a save, the personal newsletter the form showed stays the one shown.
    choice = shown or personal.delivery_choice(app.settings, current, claims.newsletter)
    return page(
        app,
        "preferences.html",
        heading="Your newsletters",
        email=mask_email(subscriber.email),
        action_url=path,
        message=message,
        message_class="ok",
        **personal.layout(app.settings, choice, items),
    )


def _item(
    newsletter: NewsletterConfig,
    subscription: Subscription | None,
    suppressed: str | None,
    blocked_address: bool,
) -> dict[str, Any]:
    """One newsletter's checkbox (or, for the personal one, radio button) on the page."""
    status = subscription.status if subscription else None
    return {
        "slug": newsletter.slug,
        "title": newsletter.title,
        "description": newsletter.description,
        "checked": status in MAILABLE and suppressed is None,
        "blocked": blocked_address
        or status in (SubscriptionStatus.BOUNCED, SubscriptionStatus.COMPLAINED),
    }


def _preferences_url(app: App, claims: TokenClaims) -> str:
    return app.links().preferences(claims.subscriber_id, claims.newsletter)
