"""What a route handler asks of its request: the App that `create_app` put behind it.

Routers import from here, never from `digest.web.server` (which imports every router).
"""

from __future__ import annotations

from fastapi import Request

from digest.app import App


def app_of(request: Request) -> App:
    """The App behind a request (set by `digest.web.server.create_app`)."""
    return request.app.state.digest  # type: ignore[no-any-return]
