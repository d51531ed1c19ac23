"""Builds the FastAPI application around an App; each area contributes a router."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request

from digest.app import App


def create_app(digest_app: App) -> FastAPI:
    web = FastAPI(title="digest", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    web.state.digest = digest_app
    for router in _routers():
        web.include_router(router)
    return web


def _routers() -> list[APIRouter]:
    # Imported here: the area modules import `app_of` from this module.
    from digest.web import api, health, metrics, studio, unsubscribe, webhooks

    return [
        health.router,
        unsubscribe.router,
        webhooks.router,
        studio.router,
        api.router,
        metrics.router,
    ]


def app_of(request: Request) -> App:
    """The App behind a request (set by create_app)."""
    return request.app.state.digest  # type: ignore[no-any-return]
