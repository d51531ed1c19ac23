"""Signing in to the studio and out again: `/studio/login`, `/studio/login/link…`, `/studio/logout`.

- A password sign-in answers the same for an unknown address, a wrong password and an editor
  without a password (and takes as long: argon2 runs either way).
- "Email me a link" always answers the same; an editor gets a one-time link (single use,
  `studio.sign_in_link_ttl`), mailed through the configured transport. Opening it shows a
  button: link scanners follow links, and must not use up (or use) a sign-in.
- Attempts are limited per client address and per account (`forms.*`), in the database.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import update
from sqlmodel import Session, select

from digest.app import App
from digest.config import StudioAuth, parse_duration
from digest.ops.editors import check_password, find_editor
from digest.storage.access import Editor, SignInLink
from digest.web import limits
from digest.web.access import (
    SESSION_COOKIE,
    AnyEditor,
    check_csrf,
    cookie_settings,
    end_session,
    start_session,
)
from digest.web.deps import app_of
from digest.web.pages import render_page

router = APIRouter(prefix="/studio")

HOUR = timedelta(hours=1)
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # a sign-in link must not leak through Referer
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
WRONG = "That email and password don't match an editor. Try again, or ask for a link."
TOO_MANY = "Too many sign-in attempts. Wait a while, then try again."
LINK_SENT = "If that address belongs to an editor, a sign-in link is on its way."
LINK_BAD = "This sign-in link doesn't work any more: it was used, or it is too old."


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/studio") -> HTMLResponse:
    return _page(request, next=next)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/studio",
) -> Response:
    app = app_of(request)
    if app.settings.studio.auth != StudioAuth.LOGIN:
        return _page(request, "This studio signs in through the newsroom's proxy.", "error", 404)
    if not _attempt_allowed(app, request, email):
        return _page(request, TOO_MANY, "error", 429, next=next, email=email)
    with app.session() as session:
        editor = find_editor(session, email)
        if not check_password(editor, password):
            return _page(request, WRONG, "error", 401, next=next, email=email)
        assert editor is not None
        secret = start_session(app, session, editor, request)
    return _signed_in(app, secret, next)


@router.post("/login/link", response_class=HTMLResponse)
def request_link(request: Request, email: Annotated[str, Form(max_length=320)] = "") -> Response:
    app = app_of(request)
    if app.settings.studio.auth != StudioAuth.LOGIN:
        return _page(request, "This studio signs in through the newsroom's proxy.", "error", 404)
    if not _attempt_allowed(app, request, email):
        return _page(request, TOO_MANY, "error", 429)
    mail_sign_in_link(app, email)
    return _page(request, LINK_SENT, "ok")


@router.get("/login/link/{token}", response_class=HTMLResponse)
def link_page(request: Request, token: str) -> HTMLResponse:
    return _page(request, link_token=token if len(token) <= 100 else "")


@router.post("/login/link/{token}", response_class=HTMLResponse)
def use_link(request: Request, token: str) -> Response:
    app = app_of(request)
    now = app.now()
    with app.session() as session:
        link_id = _digest(token[:100])
        used = session.execute(  # compare-and-set: one use, even from two tabs at once
            update(SignInLink)
            .where(
                SignInLink.id == link_id,  # type: ignore[arg-type]
                SignInLink.used_at.is_(None),  # type: ignore[union-attr]
                SignInLink.expires_at > now,  # type: ignore[arg-type]
            )
            .values(used_at=now)
        )
        if used.rowcount != 1:  # type: ignore[attr-defined]
            return _page(request, LINK_BAD, "error", 400)
        link = session.get(SignInLink, link_id)
        editor = session.get(Editor, link.editor_id) if link is not None else None
        if editor is None:
            return _page(request, LINK_BAD, "error", 400)
        secret = start_session(app, session, editor, request)
    return _signed_in(app, secret, "/studio")


@router.post("/logout")
def logout(
    request: Request, who: AnyEditor, csrf: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    app = app_of(request)
    if not check_csrf(who, csrf):
        return _page(request, "Reload the studio and sign out again.", "error", 403)
    end_session(app, who)
    response = RedirectResponse("/studio/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/studio")
    return response


# -- helpers -----------------------------------------------------------------------------------


def _page(
    request: Request,
    message: str = "",
    kind: str = "ok",
    status_code: int = 200,
    *,
    next: str = "/studio",
    email: str = "",
    link_token: str = "",
) -> HTMLResponse:
    app = app_of(request)
    context = {
        "message": message,
        "message_kind": kind,
        "next": _safe_next(next),
        "email": email,
        "link_token": link_token,
        "no_editors": app.settings.on_loopback() and _no_editors(app),
    }
    return render_page("studio/login.html", context, status_code=status_code, headers=_HEADERS)


def _no_editors(app: App) -> bool:
    with app.session() as session:
        return session.exec(select(Editor.id).limit(1)).first() is None


def _attempt_allowed(app: App, request: Request, email: str) -> bool:
    forms, now = app.settings.forms, app.now()
    client = request.client.host if request.client else "unknown"
    per_client = limits.allow(
        app.engine, f"signin:client:{client}", limit=forms.sign_in_per_hour, window=HOUR, now=now
    )
    account = email.strip().lower()[:320]
    per_account = limits.allow(
        app.engine,
        f"signin:account:{account}",
        limit=forms.sign_in_per_account_per_hour,
        window=HOUR,
        now=now,
    )
    return per_client and per_account


def _signed_in(app: App, secret: str, next: str) -> Response:
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(SESSION_COOKIE, secret, **cookie_settings(app.settings))  # type: ignore[arg-type]
    return response


def _safe_next(target: str) -> str:
    """Only a path inside the studio: never another site (no open redirect)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/studio") or "\\" in target:
        return "/studio"
    if target.startswith("/studio/login"):
        return "/studio"
    return target


def _new_link(app: App, session: Session, editor: Editor) -> str:
    secret = secrets.token_urlsafe(32)
    now = app.now()
    ttl = parse_duration(app.settings.studio.sign_in_link_ttl)
    session.add(
        SignInLink(
            id=_digest(secret), editor_id=editor.id or 0, created_at=now, expires_at=now + ttl
        )
    )
    return secret


def mail_sign_in_link(app: App, email: str) -> None:
    """Mail a one-time sign-in link if `email` is an editor's; nothing otherwise."""
    from digest.web.confirmation import send_sign_in_link

    with app.session() as session:
        editor = find_editor(session, email)
        if editor is None:
            return
        secret, address = _new_link(app, session, editor), editor.email
    send_sign_in_link(app, address, app.links().absolute(f"/studio/login/link/{secret}"))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
