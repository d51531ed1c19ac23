"""A personal email's footer links: "unfollow" one of its topics.

`GET /preferences/{token}/unfollow/{topic}` says what will happen and offers a button (a GET
never changes anything: link scanners follow every link); `POST` to the same address unfollows,
as the topic's own unsubscribe page would (a consent event, credited to the personal issue).

The token is the reader's preferences link, which can already change every subscription, so
a topic in the path grants nothing more; it is why each reader's links cost two signatures
however many topics they follow (`Tokens.unfollow_link`). Emails sent before this link existed
carry the topic's own unsubscribe link (`/u/{token}`), which keeps working.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from digest.app import App
from digest.mail.links import UNFOLLOW_ROUTE
from digest.web.deps import app_of
from digest.web.signed import client_of, form_fields, invalid_link, link_owner
from digest.web.unsubscribe import leave, leave_page
from subscribers.tokens import Purpose

router = APIRouter()


def _is_topic(app: App, topic: str) -> bool:
    return any(n.slug == topic and not n.personal for n in app.settings.newsletters)


@router.get(UNFOLLOW_ROUTE, response_class=HTMLResponse)
def unfollow_page(request: Request, token: str, topic: str) -> HTMLResponse:
    app = app_of(request)
    with app.session() as session:
        owner = link_owner(app, session, token, Purpose.PREFERENCES)
        if owner is None or not _is_topic(app, topic):
            return invalid_link(app)
        claims, subscriber = owner
        return leave_page(
            app, session, subscriber, topic, request.url.path,
            app.links().preferences(claims.subscriber_id, claims.newsletter),
        )  # fmt: skip


@router.post(UNFOLLOW_ROUTE, response_class=HTMLResponse)
async def unfollow(request: Request, token: str, topic: str) -> HTMLResponse:
    await form_fields(request)  # read within the form limits, whatever it holds
    ip, user_agent = client_of(request)
    return await run_in_threadpool(_unfollow, app_of(request), token, topic, ip, user_agent)


def _unfollow(
    app: App, token: str, topic: str, ip: str | None, user_agent: str | None
) -> HTMLResponse:
    with app.session() as session:
        owner = link_owner(app, session, token, Purpose.PREFERENCES)
        if owner is None or not _is_topic(app, topic):
            return invalid_link(app)
        claims, subscriber = owner
        return leave(
            app, session, subscriber, topic, credit=claims.newsletter,
            preferences_url=app.links().preferences(claims.subscriber_id, claims.newsletter),
            method="link", ip=ip, user_agent=user_agent,
        )  # fmt: skip
