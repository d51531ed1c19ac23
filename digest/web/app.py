"""Builds the FastAPI application around an App; each area contributes a router."""

from __future__ import annotations

from fastapi import FastAPI, Request

from digest.app import App


def create_app(digest_app: App) -> FastAPI:
    web = FastAPI(title="digest", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    web.state.digest = digest_app
    for router in _routers():
        web.include_router(router)
    return web


def _routers() -> list:  # type: ignore[type-arg]
    from digest.web import health

    routers = [health.router]
    # Areas are optional until their module exists; see each module's docstring.
    for name in ("unsubscribe", "webhooks", "studio", "api", "metrics"):
        try:
            module = __import__(f"digest.web.{name}", fromlist=["router"])
        except ModuleNotFoundError as exc:
            if exc.name != f"digest.web.{name}":
                raise
            continue
        routers.append(module.router)
    return routers


def app_of(request: Request) -> App:
    """The App behind a request (set by create_app)."""
    return request.app.state.digest  # type: ignore[no-any-return]
