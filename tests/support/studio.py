"""A studio client signed in as an editor of a given role, through the real session code."""

from __future__ import annotations

from fastapi import Request
from fastapi.testclient import TestClient

from digest.app import App
from digest.ops.editors import add_editor
from digest.storage.access import EditorRole
from digest.web.access import SESSION_COOKIE, start_session


def sign_in(
    client: TestClient, app: App, email: str = "editor@example.com", role: str = "publisher"
) -> str:
    """Make `email` an editor with `role` and give `client` a session cookie for them, as a
    sign-in does (`digest.web.access.start_session`); returns the cookie's secret."""
    request = Request({"type": "http", "headers": [], "client": ("127.0.0.1", 1)})
    with app.session() as session:
        editor = add_editor(session, email, EditorRole(role), password=None, now=app.now())
        secret = start_session(app, session, editor, request)
    client.cookies.set(SESSION_COOKIE, secret)
    return secret
