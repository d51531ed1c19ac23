"""Builds the FastAPI application around an App: every area's router, listed here."""

from __future__ import annotations

from fastapi import FastAPI

from digest.app import App
from digest.web import api, health, metrics, studio, subscribe, unsubscribe, webhooks

ROUTERS = (
    health.router,  # /healthz
    unsubscribe.router,  # /u/…, /preferences/…
    subscribe.router,  # /subscribe/…, /confirm/…
    webhooks.router,  # /webhooks/sendgrid
    studio.router,  # /studio
    api.router,  # /api/articles
    metrics.router,  # /metrics
)


def create_app(digest_app: App) -> FastAPI:
    web = FastAPI(title="digest", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    web.state.digest = digest_app
    for router in ROUTERS:
        web.include_router(router)
    return web
