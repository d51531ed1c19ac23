"""The public side of the site: the home page, each newsletter's archive of sent issues and its
Atom feed.

- `GET /`: the site's newsletters, each with its subscribe and archive links.
- `GET /archive/{slug}`: the sent issues, newest first, `?page=N` (`PAGE_SIZE` a page).
- `GET /archive/{slug}/{issue_id}`: one issue as sent, nothing personal in it: the page
  rendered with the email from the same contents (`Issue.web_html`, `Renderer.render_web`):
  no name, no per-reader link, a subscribe call-to-action instead of the unsubscribe footer.
- `GET /archive/{slug}/feed.xml`: an Atom feed (RFC 4287) of the sent issues.

Only issues that went out (sending or sent) are public: a draft, an approved issue not yet sent
or a skipped one answers 404, as does a newsletter with `archive = false`. Pages are the same
for everyone, so they are cacheable (`Cache-Control: public`, an ETag, Last-Modified) and a
matching `If-None-Match` gets 304.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func
from sqlmodel import Session, col, select

from digest.app import App
from digest.config import ConfigError, NewsletterConfig
from digest.issues import assemble
from digest.mail.links import (
    ARCHIVE_FEED_ROUTE,
    ARCHIVE_ISSUE_ROUTE,
    ARCHIVE_ROUTE,
    HOME_ROUTE,
    Links,
)
from digest.storage.models import Issue, IssueStatus
from digest.web.deps import app_of
from digest.web.pages import environment

router = APIRouter()

PAGE_SIZE = 20
FEED_ENTRIES = 50
PUBLIC = (IssueStatus.SENDING, IssueStatus.SENT)  # issues that went out: the only public ones
# Shared caches may keep a page 5 minutes; browsers revalidate with the ETag after that.
CACHE_CONTROL = "public, max-age=300"


def _page(name: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    html = environment().get_template(name).render(context)
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-cache"})


def _not_found(app: App, what: str) -> HTMLResponse:
    context = _site(app) | {"heading": "Not found", "message": what}
    return _page("public/not-found.html", context, status_code=404)


def _site(app: App) -> dict[str, Any]:
    settings = app.settings
    return {
        "site_name": settings.site.name,
        "lang": settings.site.locale,
        "postal_address": settings.sender.postal_address,
        "home_url": app.links().absolute(HOME_ROUTE),
    }


def _archived(app: App, slug: str) -> NewsletterConfig | None:
    try:
        newsletter = app.settings.newsletter(slug)
    except ConfigError:
        return None
    return newsletter if newsletter.archive else None


def _cached(request: Request, body: bytes, media_type: str, modified: datetime | None) -> Response:
    """`body` with cache headers; 304 when the client already holds this version."""
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": CACHE_CONTROL, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if modified is not None:
        headers["Last-Modified"] = format_datetime(_utc(modified), usegmt=True)
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _sent_at(issue: Issue) -> datetime:
    return _utc(issue.sent_at or issue.sending_at or issue.updated_at)


def _public_issues(session: Session, slug: str, *, offset: int, limit: int) -> list[Issue]:
    statement = (
        select(Issue)
        .where(Issue.newsletter == slug, col(Issue.status).in_(PUBLIC))
        .order_by(col(Issue.period).desc(), col(Issue.id).desc())
        .offset(offset)
        .limit(limit)
    )
    return list(session.exec(statement).all())


def _count(session: Session, slug: str) -> int:
    statement = select(func.count()).where(Issue.newsletter == slug, col(Issue.status).in_(PUBLIC))
    return int(session.exec(statement).one())


# -- the home page ------------------------------------------------------------------------------


@router.get(HOME_ROUTE, response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    app = app_of(request)
    links = app.links()
    newsletters = [
        {
            "title": n.title,
            "description": n.description,
            "subscribe_url": links.subscribe(n.slug),
            "archive_url": links.archive(n.slug) if n.archive else None,
        }
        for n in app.settings.newsletters
    ]
    context = _site(app) | {"heading": app.settings.site.name, "newsletters": newsletters}
    return _page("public/home.html", context)


# -- the archive -------------------------------------------------------------------------------


@router.get(ARCHIVE_ROUTE, response_class=HTMLResponse)
def archive(request: Request, slug: str, page: int = 1) -> Response:
    app = app_of(request)
    newsletter = _archived(app, slug)
    if newsletter is None:
        return _not_found(app, "There is no such newsletter archive.")
    page = max(page, 1)
    links = app.links()
    with app.session() as session:
        total = _count(session, slug)
        issues = _public_issues(session, slug, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    if page > pages:
        return _not_found(app, f"{newsletter.title} has no page {page} of past issues.")
    base = links.archive(slug)
    context = _site(app) | {
        "heading": newsletter.title,
        "newsletter": newsletter,
        "issues": [_issue_item(links, issue) for issue in issues],
        "page": page,
        "pages": pages,
        "newer_url": (base if page == 2 else f"{base}?page={page - 1}") if page > 1 else None,
        "older_url": f"{base}?page={page + 1}" if page < pages else None,
        "subscribe_url": links.subscribe(slug),
        "feed_url": links.archive_feed(slug),
        "canonical_url": base if page == 1 else f"{base}?page={page}",
    }
    html = environment().get_template("public/archive.html").render(context)
    modified = _sent_at(issues[0]) if issues else None
    return _cached(request, html.encode(), "text/html; charset=utf-8", modified)


def _issue_item(links: Links, issue: Issue) -> dict[str, Any]:
    assert issue.id is not None
    sent = _sent_at(issue)
    return {
        "subject": issue.subject,
        "preheader": issue.preheader,
        "url": links.archive_issue(issue.newsletter, issue.id),
        "date": sent.strftime("%-d %B %Y"),
        "iso": sent.isoformat(),
    }


@router.get(ARCHIVE_FEED_ROUTE)
def feed(request: Request, slug: str) -> Response:
    app = app_of(request)
    newsletter = _archived(app, slug)
    if newsletter is None:
        return _not_found(app, "There is no such newsletter archive.")
    with app.session() as session:
        issues = _public_issues(session, slug, offset=0, limit=FEED_ENTRIES)
    body = atom_feed(app, newsletter, issues)
    modified = _sent_at(issues[0]) if issues else None
    return _cached(request, body.encode(), "application/atom+xml; charset=utf-8", modified)


def atom_feed(app: App, newsletter: NewsletterConfig, issues: list[Issue]) -> str:
    """The Atom document of `issues` (newest first): one entry per issue, linking its page."""
    links = app.links()
    settings = app.settings
    slug = newsletter.slug
    updated = _sent_at(issues[0]) if issues else datetime(2000, 1, 1, tzinfo=UTC)
    feed_url = quoteattr(links.archive_feed(slug))
    host = links.base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        f'<feed xmlns="http://www.w3.org/2005/Atom" xml:lang={quoteattr(newsletter.language)}>',
        f"<id>{escape(links.archive(slug))}</id>",
        f"<title>{escape(newsletter.title)}</title>",
        f"<subtitle>{escape(newsletter.description or settings.site.name)}</subtitle>",
        f"<updated>{updated.isoformat()}</updated>",
        f"<author><name>{escape(settings.site.name)}</name></author>",
        f'<link rel="self" type="application/atom+xml" href={feed_url}/>',
        f'<link rel="alternate" type="text/html" href={quoteattr(links.archive(slug))}/>',
        "<generator>digest</generator>",
    ]
    for issue in issues:
        assert issue.id is not None
        url = links.archive_issue(slug, issue.id)
        sent = _sent_at(issue)
        lines += [
            "<entry>",
            f"<id>tag:{escape(host)},{sent:%Y-%m-%d}:{escape(slug)}/{issue.id}</id>",
            f"<title>{escape(issue.subject or newsletter.title)}</title>",
            f'<link rel="alternate" type="text/html" href={quoteattr(url)}/>',
            f"<published>{sent.isoformat()}</published>",
            f"<updated>{sent.isoformat()}</updated>",
            f"<summary>{escape(issue.preheader or issue.subject)}</summary>",
            "</entry>",
        ]
    lines.append("</feed>")
    return "\n".join(lines) + "\n"


@router.get(ARCHIVE_ISSUE_ROUTE, response_class=HTMLResponse)
def issue_page(request: Request, slug: str, issue_id: str) -> Response:
    app = app_of(request)
    newsletter = _archived(app, slug)
    if newsletter is None or not issue_id.isdigit():
        return _not_found(app, "There is no such issue.")
    with app.session() as session:
        issue = session.get(Issue, int(issue_id))
        if issue is None or issue.newsletter != slug or issue.status not in PUBLIC:
            return _not_found(app, "There is no such issue.")
        html = issue.web_html or _render_web(app, session, issue, newsletter)
        modified = _sent_at(issue)
    return _cached(request, html.encode(), "text/html; charset=utf-8", modified)


def _render_web(app: App, session: Session, issue: Issue, newsletter: NewsletterConfig) -> str:
    """The page of an issue sent before pages were stored with issues: rendered now from its
    stored selection (the articles as they are now), without anything personal."""
    links = app.links().issue_links(newsletter.slug, issue.id, archive=True)
    contents = assemble.contents_of(session, app.settings, issue, links=links)
    return app.renderer.render_web(contents)
