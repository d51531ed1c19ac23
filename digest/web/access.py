"""Who is using the studio, and what they may do there.

Three modes (`studio.auth`):
- `login`: a session cookie (HttpOnly, SameSite=Lax, Secure on https, path /studio) holding a
  random secret; the server keeps only its SHA-256, with an idle and an absolute expiry, so a
  session ends for good when it is signed out, expires, or its editor is removed.
- `proxy`: an authenticating proxy (SSO) names the editor in `studio.proxy_header`; the header
  is believed only from `studio.trusted_proxies`, and the editor must exist (for their role).
- `none`: no sign-in, everyone is an admin; `digest serve` refuses it unless `site.base_url` is
  a loopback address.

Route handlers ask through the dependencies `AnyEditor`, `Publisher` and `Admin`. A request
without a valid identity gets the sign-in page (browsers) or a 401 (other clients); one without
the role gets a 403. Every POST must also carry the session's CSRF token (`check_csrf`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from sqlmodel import Session

from digest.app import App
from digest.config import Settings, StudioAuth, parse_duration
from digest.ops.editors import find_editor, may
from digest.storage.access import Editor, EditorRole, EditorSession
from digest.web.deps import app_of
from subscribers.tokens import derive_key

SESSION_COOKIE = "digest_session"
COOKIE_PATH = "/studio"
_TOUCH_EVERY = timedelta(minutes=1)  # last_seen_at is written at most this often


@dataclass(frozen=True)
class Identity:
    """The editor behind a studio request."""

    email: str
    role: str
    csrf: str  # the token every POST of this session must carry
    session_id: str | None = None  # login mode: the session row (sha256 of the cookie)

    def may(self, needed: EditorRole) -> bool:
        return may(self.role, needed)


class SignInRequired(Exception):
    """No valid identity: sign in first."""


class NotAllowed(Exception):
    """Signed in, but the role does not include this."""

    def __init__(self, needed: EditorRole) -> None:
        super().__init__(f"this needs the {needed} role")
        self.needed = needed


def identify(request: Request, app: App) -> Identity | None:
    """The identity behind the request in the configured mode, or None."""
    studio = app.settings.studio
    if studio.auth == StudioAuth.NONE:
        if not app.settings.on_loopback():
            return None  # `digest serve` refuses this configuration; never trust it anyway
        return Identity("studio@localhost", EditorRole.ADMIN, _derived_csrf(app, "none"))
    if studio.auth == StudioAuth.PROXY:
        return _from_proxy(request, app)
    return _from_session(request, app)


def _from_proxy(request: Request, app: App) -> Identity | None:
    studio = app.settings.studio
    client = request.client.host if request.client else ""
    if not _trusted(client, studio.trusted_proxies):
        return None
    claimed = request.headers.get(studio.proxy_header, "")
    with app.session() as session:
        editor = find_editor(session, claimed) if claimed else None
        if editor is None:
            return None
        return Identity(editor.email, editor.role, _derived_csrf(app, editor.email))


def _from_session(request: Request, app: App) -> Identity | None:
    secret = request.cookies.get(SESSION_COOKIE, "")
    if not secret or len(secret) > 200:
        return None
    now = app.now()
    with app.session() as session:
        row = session.get(EditorSession, _digest(secret))
        if row is None:
            return None
        idle = parse_duration(app.settings.studio.session_idle)
        if row.expires_at <= now or row.last_seen_at + idle <= now:
            session.delete(row)
            return None
        editor = session.get(Editor, row.editor_id)
        if editor is None:
            return None
        if now - row.last_seen_at >= _TOUCH_EVERY:
            row.last_seen_at = now
            session.add(row)
        return Identity(editor.email, editor.role, row.csrf, row.id)


def start_session(app: App, session: Session, editor: Editor, request: Request) -> str:
    """A new session for `editor`; returns the cookie's secret (never stored as is)."""
    secret = secrets.token_urlsafe(32)
    now = app.now()
    studio = app.settings.studio
    session.add(
        EditorSession(
            id=_digest(secret),
            editor_id=editor.id or 0,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            last_seen_at=now,
            expires_at=now + parse_duration(studio.session_max),
            ip=request.client.host[:64] if request.client else None,
            user_agent=(request.headers.get("user-agent") or "")[:300] or None,
        )
    )
    return secret


def end_session(app: App, identity: Identity) -> None:
    if identity.session_id is None:
        return
    with app.session() as session:
        row = session.get(EditorSession, identity.session_id)
        if row is not None:
            session.delete(row)


def cookie_settings(settings: Settings) -> dict[str, object]:
    """How the session cookie is set: never readable by scripts, Secure on https."""
    return {
        "httponly": True,
        "samesite": "lax",
        "secure": settings.site.base_url.startswith("https://"),
        "path": COOKIE_PATH,
        "max_age": int(parse_duration(settings.studio.session_max).total_seconds()),
    }


def check_csrf(identity: Identity, token: str) -> bool:
    return bool(token) and hmac.compare_digest(identity.csrf.encode(), token.encode())


def sign_in_url(request: Request) -> str:
    """The sign-in page, coming back to this page afterwards."""
    back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"{COOKIE_PATH}/login?next={quote(back, safe='')}"


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _needs(role: EditorRole):  # type: ignore[no-untyped-def]
    def dependency(request: Request) -> Identity:
        identity = identify(request, app_of(request))
        if identity is None:
            raise SignInRequired
        if not identity.may(role):
            raise NotAllowed(role)
        return identity

    return dependency


AnyEditor = Annotated[Identity, Depends(_needs(EditorRole.EDITOR))]
Publisher = Annotated[Identity, Depends(_needs(EditorRole.PUBLISHER))]
Admin = Annotated[Identity, Depends(_needs(EditorRole.ADMIN))]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _derived_csrf(app: App, who: str) -> str:
    """Proxy and none modes keep no session row: the token is a MAC of who is asking."""
    key = derive_key(app.signing_key(), "studio:csrf")
    return hmac.new(key, who.encode(), hashlib.sha256).hexdigest()[:32]


def _trusted(client: str, proxies: list[str]) -> bool:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    for entry in proxies:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
