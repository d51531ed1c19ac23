"""The public subscribe form and its double opt-in confirmation.

- `GET|POST /subscribe/{slug}`: the form. The answer is the same whoever the address belongs to,
  so the form does not reveal who is subscribed. A hidden field catches naive bots.
- `GET /confirm/{token}` shows a button; `POST /confirm/{token}` confirms. Pressing is required
  because mail scanners open links: a GET alone never subscribes anyone.

Confirmation emails go through `send_confirmation` (`digest.web.confirmation`); tests replace it
with `app.dependency_overrides[confirmation_sender]`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from digest.app import App
from digest.config import NewsletterConfig, parse_duration
from digest.mail.links import CONFIRM_ROUTE, SUBSCRIBE_ROUTE
from digest.web import limits
from digest.web.confirmation import ConfirmationNotSent, send_confirmation
from digest.web.deps import app_of
from digest.web.signed import (
    client_of,
    first,
    form_fields,
    invalid_link,
    link_owner,
    message_page,
    newsletter_title,
    page,
    verified,
)
from subscribers.addresses import InvalidAddress, mask_email, normalize_email
from subscribers.optin import ConfirmOutcome, confirm_subscription, request_subscription
from subscribers.profile import InvalidField
from subscribers.tokens import Purpose

log = logging.getLogger(__name__)
router = APIRouter()
ConfirmationSender = Callable[..., None]


def confirmation_sender() -> ConfirmationSender:
    """The function that mails confirmation links (a dependency, so tests can replace it)."""
    return send_confirmation


@router.get(SUBSCRIBE_ROUTE, response_class=HTMLResponse)
def subscribe_form(request: Request, slug: str) -> HTMLResponse:
    app = app_of(request)
    newsletter = _newsletter(app, slug)
    if newsletter is None:
        return _no_such_newsletter(app)
    return _form(app, newsletter, request.url.path)


@router.post(SUBSCRIBE_ROUTE, response_class=HTMLResponse)
async def subscribe(
    request: Request, slug: str, sender: ConfirmationSender = Depends(confirmation_sender)
) -> HTMLResponse:
    fields = await form_fields(request)
    ip, user_agent = client_of(request)
    return await run_in_threadpool(
        _subscribe, app_of(request), slug, fields, request.url.path, sender, ip, user_agent
    )


def _subscribe(
    app: App,
    slug: str,
    fields: dict[str, list[str]],
    path: str,
    sender: ConfirmationSender,
    ip: str | None,
    user_agent: str | None,
) -> HTMLResponse:
    newsletter = _newsletter(app, slug)
    if newsletter is None:
        return _no_such_newsletter(app)
    email, name = first(fields, "email"), first(fields, "name")
    if first(fields, "website"):  # the hidden field: only bots fill it in
        log.info("subscribe form: ignored a post that filled the hidden field")
        return _check_inbox(app, newsletter)
    now = app.now()
    if not _client_allowed(app, ip, now):
        return message_page(
            app,
            "Too many attempts",
            "We've had a lot of sign-ups from your network in the last hour. "
            "Please try again later.",
            status_code=429,
        )
    try:
        with app.session() as session:
            request = request_subscription(
                session,
                email,
                slug,
                now=now,
                double_opt_in=newsletter.double_opt_in,
                name=name or None,
                ip=ip,
                user_agent=user_agent,
            )
        address = normalize_email(email)  # as stored (it validated just now)
    except (InvalidAddress, InvalidField) as exc:
        return _form(
            app, newsletter, path, error=_form_error(exc), email=email, name=name, status_code=400
        )
    if (
        request.send_confirmation
        and request.subscriber_id is not None
        and _confirmation_due(app, address, now)
    ):
        try:
            sender(
                app,
                address,
                app.links().confirm(request.subscriber_id, slug),
                newsletter.title,
                newsletter=newsletter,
                subscriber_id=request.subscriber_id,
            )
        except ConfirmationNotSent as exc:
            log.error("confirmation email for %s not sent: %s", slug, exc)
            return message_page(
                app,
                "We couldn't send the email",
                "Something went wrong on our side. Please try again in a few minutes.",
                status_code=503,
            )
    if request.subscribed:
        return message_page(
            app,
            "You're subscribed",
            f"Welcome to {newsletter.title}. Every email has a link to unsubscribe.",
        )
    return _check_inbox(app, newsletter)


def _client_allowed(app: App, ip: str | None, now: datetime) -> bool:
    """At most `forms.subscribe_per_hour` posts per client address (shared by every process)."""
    limit = app.settings.forms.subscribe_per_hour
    key = f"subscribe:client:{ip or 'unknown'}"
    return limits.allow(app.engine, key, limit=limit, window=timedelta(hours=1), now=now)


def _confirmation_due(app: App, address: str, now: datetime) -> bool:
    """One confirmation email per address per `forms.confirmation_cooldown`: a form posted fifty
    times mails once, and the page answers the same either way."""
    period = parse_duration(app.settings.forms.confirmation_cooldown)
    key = f"confirm:address:{address.lower()}"
    if limits.cooldown(app.engine, key, period=period, now=now):
        return True
    log.info("subscribe form: a confirmation went to this address recently; not sent again")
    return False


@router.get(CONFIRM_ROUTE, response_class=HTMLResponse)
def confirm_page(request: Request, token: str) -> HTMLResponse:
    app = app_of(request)
    with app.session() as session:
        owner = link_owner(app, session, token, Purpose.CONFIRM)
        if owner is None:
            return invalid_link(app)
        claims, subscriber = owner
        email = subscriber.email
    title = newsletter_title(app, claims.newsletter)
    return page(
        app,
        "confirm.html",
        heading=f"Confirm your subscription to {title}",
        newsletter=title,
        email=mask_email(email),
        action_url=request.url.path,
    )


@router.post(CONFIRM_ROUTE, response_class=HTMLResponse)
async def confirm(request: Request, token: str) -> HTMLResponse:
    ip, user_agent = client_of(request)
    return await run_in_threadpool(_confirm, app_of(request), token, ip, user_agent)


def _confirm(app: App, token: str, ip: str | None, user_agent: str | None) -> HTMLResponse:
    claims = verified(app, token, Purpose.CONFIRM)
    if claims is None:
        return invalid_link(app)
    with app.session() as session:
        outcome = confirm_subscription(
            session,
            claims.subscriber_id,
            claims.newsletter,
            now=app.now(),
            requested_at=claims.issued_at,
            ip=ip,
            user_agent=user_agent,
        )
    title = newsletter_title(app, claims.newsletter)
    if outcome is ConfirmOutcome.NOT_FOUND:
        return invalid_link(app)
    if outcome is ConfirmOutcome.REFUSED:
        return message_page(
            app,
            "We can't subscribe this address",
            f"This address can't receive {title} at the moment. If you think that's wrong, "
            "contact us.",
        )
    return message_page(
        app,
        "You're subscribed",
        f"Thanks for confirming: {title} will arrive in your inbox. "
        "Every email has a link to unsubscribe.",
    )


def _newsletter(app: App, slug: str) -> NewsletterConfig | None:
    return next((n for n in app.settings.newsletters if n.slug == slug), None)


def _no_such_newsletter(app: App) -> HTMLResponse:
    return message_page(
        app, "No such newsletter", "Check the address of this page.", status_code=404
    )


def _check_inbox(app: App, newsletter: NewsletterConfig) -> HTMLResponse:
    return message_page(
        app,
        "Check your inbox",
        f"If this address can receive {newsletter.title}, we've sent it a link to confirm. "
        "Open it within 7 days.",
        "No email? Check your spam folder, or you may already be subscribed.",
    )


def _form(
    app: App,
    newsletter: NewsletterConfig,
    path: str,
    *,
    error: str = "",
    email: str = "",
    name: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    context: dict[str, Any] = {
        "description": newsletter.description,
        "double_opt_in": newsletter.double_opt_in,
        "action_url": path,
        "error": error,
        "email_value": email,
        "name_value": name,
    }
    return page(
        app,
        "subscribe.html",
        heading=f"Subscribe to {newsletter.title}",
        status_code=status_code,
        **context,
    )


def _form_error(exc: InvalidAddress | InvalidField) -> str:
    if isinstance(exc, InvalidField):
        return f"Please check the {exc.field}: {exc.reason}."
    return f"Please check your email address: {exc}"
