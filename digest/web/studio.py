"""The preview studio: editors see the next issue exactly as subscribers will, and adjust it.

Server-rendered pages under `/studio` (templates in `templates/web/studio/`). Every change is a
POST form handled by `digest.issues.editorial`, answered with a 303 back to the issue page, so
reloading never repeats an action. Every page needs a signed-in editor (`digest.web.access`),
approving needs a publisher, and each POST must carry the session's CSRF token and, when the
browser sends one, a same-origin `Origin`/`Referer`. Editor mistakes (`AssemblyError`), template
errors and unknown names become a message on the page, never a 500.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from digest.app import App
from digest.config import ConfigError
from digest.issues import editorial, timeline
from digest.issues.assemble import AssemblyError
from digest.rendering.render import RenderError
from digest.storage.access import EditorRole
from digest.storage.models import Issue
from digest.web import live_reload, studio_view
from digest.web.access import AnyEditor, Identity, Publisher
from digest.web.pages import environment, render_page
from digest.web.studio_forms import (
    FLASH_COOKIE,
    Refused,
    check_post,
    set_flash,
    take_flash,
    test_address_allowed,
)

router = APIRouter(prefix="/studio")

PAGE_CSP = (
    "default-src 'self'; img-src 'self' https: data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; frame-src 'self'; frame-ancestors 'self'; form-action 'self'; "
    "base-uri 'none'; object-src 'none'"
)
# The email itself: no script, no form, no fetch; only its inline styles and remote images.
EMAIL_CSP = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; form-action 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass
class _Studio:
    """Per-web-app studio state: the live reloader."""

    reloader: live_reload.Reloader


_state_lock = threading.Lock()


def _studio(request: Request) -> _Studio:
    state = request.app.state
    with _state_lock:
        studio = getattr(state, "studio", None)
        if studio is None:
            app: App = state.digest
            studio = _Studio(reloader=live_reload.Reloader(live_reload.Watch.for_app(app)))
            state.studio = studio
    return studio  # type: ignore[no-any-return]


def _app(request: Request) -> App:
    """The current App, rebuilt first when a template or the config changed."""
    return _studio(request).reloader.current(request.app.state)


# -- pages -------------------------------------------------------------------------------------


def _page(
    request: Request, who: Identity, name: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    studio = _studio(request)
    flash = take_flash(request)
    response = render_page(
        f"studio/{name}",
        {
            "csrf": who.csrf,
            "who": who,
            "can_publish": who.may(EditorRole.PUBLISHER),
            "live_version": studio.reloader.version,
            "reload_error": studio.reloader.error,
            "flash": flash,
            **context,
        },
        status_code=status_code,
        headers=_HEADERS,
    )
    if flash is not None:
        response.delete_cookie(FLASH_COOKIE, path="/studio")
    return response


def _problem(
    request: Request, who: Identity, title: str, message: str, status_code: int
) -> HTMLResponse:
    return _page(request, who, "problem.html", status_code, title=title, message=message)


@router.get("", response_class=HTMLResponse)
def index(request: Request, who: AnyEditor) -> HTMLResponse:
    """Every newsletter with its next issue: status, subject, article count and size."""
    app = _app(request)
    rows = []
    for newsletter in app.settings.newsletters:
        row: dict[str, Any] = {"newsletter": newsletter, "issue": None, "error": None}
        try:
            issue = timeline.next_issue(app, newsletter.slug)
        except (RenderError, AssemblyError) as exc:
            row["error"] = str(exc)
        else:
            row["issue"] = issue
            row["period_local"] = datetime.fromisoformat(issue.period).astimezone(
                app.settings.newsletter_timezone(newsletter)
            )
            row["count"] = studio_view.article_count(app, issue.id or 0)
            row["lint_errors"] = sum(1 for f in issue.lint if f.get("level") == "error")
        rows.append(row)
    return _page(request, who, "index.html", rows=rows)


@router.get("/live-reload.js", include_in_schema=False)
def live_reload_script() -> Response:
    """The studio's one script (kept as a file next to its templates)."""
    env = environment()
    assert env.loader is not None
    source, _, _ = env.loader.get_source(env, "studio/live-reload.js")
    return Response(
        source,
        media_type="text/javascript",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/events", include_in_schema=False)
async def events(request: Request, who: AnyEditor, v: str = "") -> StreamingResponse:
    """Server-sent events: `reload` once a template or the config file changes."""
    watch = _studio(request).reloader.watch
    return StreamingResponse(
        live_reload.changes(watch, v, gone=request.is_disconnected),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/{slug}", response_class=HTMLResponse)
def issue_page(request: Request, slug: str, who: AnyEditor) -> HTMLResponse:
    """The next issue of a newsletter: the email at two widths, text, budgets, lint, articles."""
    app = _app(request)
    try:
        app.settings.newsletter(slug)
    except ConfigError:
        return _problem(
            request, who, "Unknown newsletter", f"There is no newsletter {slug!r}.", 404
        )
    try:
        issue = timeline.next_issue(app, slug)
        view = studio_view.issue_page(app, issue)
    except (RenderError, AssemblyError) as exc:
        return _page(
            request,
            who,
            "issue.html",
            newsletter=app.settings.newsletter(slug),
            view=None,
            error=str(exc),
        )
    return _page(request, who, "issue.html", newsletter=view.newsletter, view=view, error=None)


def _issue_of(app: App, slug: str, issue_id: int) -> Issue | None:
    with app.session() as session:
        issue = session.get(Issue, issue_id)
    return issue if issue is not None and issue.newsletter == slug else None


@router.get("/{slug}/issue/{issue_id}/email.html", response_class=HTMLResponse)
def email_html(request: Request, slug: str, issue_id: int, who: AnyEditor) -> Response:
    """The stored issue's HTML personalised for a sample subscriber (shown in the iframes)."""
    from digest.mail.preview import sample_message

    app = _app(request)
    issue = _issue_of(app, slug, issue_id)
    if issue is None:
        return PlainTextResponse(f"no issue {issue_id} for {slug}", status_code=404)
    _, html, _ = sample_message(app, issue)
    return HTMLResponse(
        html,
        headers={
            "Content-Security-Policy": EMAIL_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


@router.get("/{slug}/issue/{issue_id}/message.eml")
def email_message(request: Request, slug: str, issue_id: int, who: AnyEditor) -> Response:
    """The complete message for a sample subscriber, to open in a mail client."""
    from digest.mail.preview import sample_message

    app = _app(request)
    issue = _issue_of(app, slug, issue_id)
    if issue is None:
        return PlainTextResponse(f"no issue {issue_id} for {slug}", status_code=404)
    message, _, _ = sample_message(app, issue)
    return Response(
        message.as_bytes(),
        media_type="message/rfc822",
        headers={
            "Content-Disposition": f'attachment; filename="{slug}-{issue_id}.eml"',
            "Cache-Control": "no-store",
        },
    )


# -- actions -----------------------------------------------------------------------------------

Csrf = Annotated[str, Form()]


def _act(
    request: Request, slug: str, issue_id: int, csrf: str, action: Any, who: Identity
) -> Response:
    """Run an editorial action (once the POST carries the session's token and no foreign
    origin) and go back to the issue page with what happened."""
    try:
        check_post(request, csrf, who.csrf)
    except Refused as exc:
        message = f"{exc}; reload the studio and try again."
        return _problem(request, who, "Not allowed", message, 403)
    app = _app(request)
    back = RedirectResponse(f"/studio/{slug}", status_code=303)
    if _issue_of(app, slug, issue_id) is None:
        set_flash(back, app, "error", f"There is no issue {issue_id} of {slug}.")
        return back
    try:
        message = action(app)
    except (AssemblyError, RenderError) as exc:
        set_flash(back, app, "error", str(exc))
    else:
        set_flash(back, app, "ok", message)
    return back


@router.post("/{slug}/issue/{issue_id}/articles/{article_id}/pin")
def pin(
    request: Request,
    slug: str,
    issue_id: int,
    article_id: int,
    csrf: Csrf,
    who: AnyEditor,
    pinned: bool = Form(),
) -> Response:
    def action(app: App) -> str:
        editorial.pin(app, issue_id, article_id, pinned=pinned)
        return f"Article {article_id} {'pinned' if pinned else 'unpinned'}."

    return _act(request, slug, issue_id, csrf, action, who)


@router.post("/{slug}/issue/{issue_id}/articles/{article_id}/exclude")
def exclude(
    request: Request,
    slug: str,
    issue_id: int,
    article_id: int,
    csrf: Csrf,
    who: AnyEditor,
    excluded: bool = Form(),
) -> Response:
    def action(app: App) -> str:
        editorial.exclude(app, issue_id, article_id, excluded=excluded)
        return f"Article {article_id} {'excluded' if excluded else 'restored'}."

    return _act(request, slug, issue_id, csrf, action, who)


@router.post("/{slug}/issue/{issue_id}/articles/{article_id}/move")
def move(
    request: Request,
    slug: str,
    issue_id: int,
    article_id: int,
    csrf: Csrf,
    who: AnyEditor,
    direction: str = Form(pattern="^(up|down)$"),
) -> Response:
    """Swap an article with its neighbour; it and those above it become pinned in order."""

    def action(app: App) -> str:
        moved = editorial.move(app, issue_id, article_id, up=direction == "up")
        return f"Article {article_id} moved {direction}." if moved else "Nothing to move."

    return _act(request, slug, issue_id, csrf, action, who)


@router.post("/{slug}/issue/{issue_id}/subject")
def subject(
    request: Request, slug: str, issue_id: int, csrf: Csrf, who: AnyEditor, subject: str = Form("")
) -> Response:
    def action(app: App) -> str:
        issue = editorial.set_subject(app, issue_id, subject)
        return (
            "Subject back to the template." if not subject.strip() else f"Subject: {issue.subject}"
        )

    return _act(request, slug, issue_id, csrf, action, who)


@router.post("/{slug}/issue/{issue_id}/intro")
def intro(
    request: Request, slug: str, issue_id: int, csrf: Csrf, who: AnyEditor, intro: str = Form("")
) -> Response:
    def action(app: App) -> str:
        editorial.set_intro(app, issue_id, intro)
        return "Introduction saved."

    return _act(request, slug, issue_id, csrf, action, who)


@router.post("/{slug}/issue/{issue_id}/approve")
def approve(request: Request, slug: str, issue_id: int, csrf: Csrf, who: Publisher) -> Response:
    def action(app: App) -> str:
        editorial.approve(app, issue_id, by=who.email)
        return f"Issue {issue_id} approved: its content is now frozen."

    return _act(request, slug, issue_id, csrf, action, who)


@router.post("/{slug}/issue/{issue_id}/unapprove")
def unapprove(request: Request, slug: str, issue_id: int, csrf: Csrf, who: Publisher) -> Response:
    def action(app: App) -> str:
        editorial.unapprove(app, issue_id, by=who.email)
        return f"Issue {issue_id} is a draft again: fix it, then approve it."

    return _act(request, slug, issue_id, csrf, action, who)


@router.get("/{slug}/history", response_class=HTMLResponse)
def history(request: Request, slug: str, who: AnyEditor) -> HTMLResponse:
    """Past issues with what became of each (sent, skipped, missed and why) and their counts."""
    from digest.ops.history import issue_history

    app = _app(request)
    try:
        newsletter = app.settings.newsletter(slug)
    except ConfigError:
        return _problem(
            request, who, "Unknown newsletter", f"There is no newsletter {slug!r}.", 404
        )
    with app.session() as session:
        rows = issue_history(session, app.settings, newsletter, app.now())
    return _page(request, who, "history.html", newsletter=newsletter, rows=rows)


@router.post("/{slug}/issue/{issue_id}/test")
def send_test(
    request: Request, slug: str, issue_id: int, csrf: Csrf, who: AnyEditor, to: str = Form("")
) -> Response:
    """Send the issue to one address through the configured transport, subject "[TEST] …":
    the editor's own, or one in `studio.test_domains` (never anyone else's inbox)."""

    def action(app: App) -> str:
        from digest.sending.send import SendRefused
        from digest.sending.send import send_test as send
        from digest.transports import TransportError

        address = to.strip() or who.email
        if not test_address_allowed(app, who, address):
            domains = ", ".join(app.settings.studio.test_domains) or "none configured"
            raise AssemblyError(
                f"tests go to your own address ({who.email}) or to studio.test_domains "
                f"({domains}), not to {address}"
            )
        try:
            result = send(app, issue_id, address)
        except (SendRefused, TransportError) as exc:
            raise AssemblyError(f"test not sent to {address}: {exc}") from exc
        if not result.accepted:
            reason = result.error or str(result.outcome)
            raise AssemblyError(f"test to {address} was not accepted: {reason}")
        transport = app.settings.delivery.transport
        via = f"{transport}, message id {result.message_id}" if result.message_id else transport
        return f"Test sent to {result.email} via {via}."

    return _act(request, slug, issue_id, csrf, action, who)
