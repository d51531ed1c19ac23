"""What every page behind a signed link shares: checking the token, rendering the page with
safe headers, and who is asking (for the consent log).

A bad, tampered or expired token gets the same 400 page, which names no address and changes
nothing. The token sits in the URL, so pages send `Referrer-Policy: no-referrer` (the token
never leaks to another site) and `Cache-Control: no-store`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from digest.app import App
from digest.ops.logs import redact
from digest.web.pages import render_page
from subscribers.membership import current_subscriber_id
from subscribers.models import Subscriber
from subscribers.tokens import TokenClaims, TokenError

log = logging.getLogger(__name__)

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


def page(
    app: App, template: str, *, heading: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """Render `templates/web/<template>` inside the shared layout (`page.html`)."""
    values = {
        "lang": app.settings.site.locale,
        "site_name": app.settings.site.name,
        "postal_address": app.settings.sender.postal_address,
        "heading": heading,
        **context,
    }
    return render_page(template, values, status_code=status_code, headers=PAGE_HEADERS)


def message_page(app: App, heading: str, *paragraphs: str, status_code: int = 200) -> HTMLResponse:
    return page(
        app, "message.html", heading=heading, paragraphs=paragraphs, status_code=status_code
    )


def invalid_link(app: App) -> HTMLResponse:
    return message_page(
        app,
        "This link doesn't work",
        "It may be incomplete, or too old. Nothing has been changed.",
        "Use the link in a recent email from us, or contact us and we'll sort it out.",
        status_code=400,
    )


def verified(app: App, token: str, purpose: str) -> TokenClaims | None:
    """The token's claims if it is ours, for `purpose`, and fresh; None otherwise. A link that
    names a subscriber since merged into another (one mailbox, one subscriber) speaks for the
    one they were merged into: old emails' unsubscribe links keep working."""
    try:
        claims = app.links().verify(token, purpose)
    except TokenError as exc:
        log.info("refused a %s link: %s", purpose, exc)  # never log the token itself
        return None
    with app.session() as session:
        current = current_subscriber_id(session, claims.subscriber_id)
    if current is None:
        return None
    return claims if current == claims.subscriber_id else replace(claims, subscriber_id=current)


def client_of(request: Request) -> tuple[str | None, str | None]:
    """(ip, user agent) of the visitor, for the consent log."""
    ip = request.client.host if request.client else None
    return ip, request.headers.get("user-agent")


async def form_fields(request: Request) -> dict[str, list[str]]:
    """The posted form (urlencoded or multipart) as name → values; empty if unreadable.

    One-click unsubscribe must work whatever a mail provider's POST looks like, so a body that
    is not a form is treated as an empty form rather than an error.
    """
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart, wrong encoding…
        # The path holds a signed token: never logged as is.
        log.info("unreadable form body on %s: %s", redact(request.url.path), type(exc).__name__)
        return {}
    fields: dict[str, list[str]] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(name, []).append(value)
    return fields


def first(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name)
    return values[0] if values else ""


def newsletter_title(app: App, slug: str) -> str:
    for newsletter in app.settings.newsletters:
        if newsletter.slug == slug:
            return newsletter.title
    return slug  # a retired newsletter: its slug still names it


def link_owner(
    app: App, session: Session, token: str, purpose: str
) -> tuple[TokenClaims, Subscriber] | None:
    """The claims of a valid link and the subscriber it names; None for any bad link."""
    claims = verified(app, token, purpose)
    if claims is None:
        return None
    subscriber = session.get(Subscriber, claims.subscriber_id)
    return None if subscriber is None else (claims, subscriber)
