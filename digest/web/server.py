"""Builds the FastAPI application around an App: every area's router, listed here, behind a
Host check, with the studio's sign-in answers."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.middleware.trustedhost import TrustedHostMiddleware

from digest.app import App
from digest.config import Settings
from digest.web import (
    api,
    archive,
    health,
    login,
    media,
    metrics,
    redirect,
    studio,
    studio_editors,
    studio_stats,
    subscribe,
    unfollow,
    unsubscribe,
    webhooks,
)
from digest.web.access import NotAllowed, SignInRequired, sign_in_url, wants_html
from digest.web.pages import render_page

ROUTERS = (
    health.router,  # /healthz
    unsubscribe.router,  # /u/…, /preferences/…
    unfollow.router,  # /preferences/…/unfollow/… (a personal email's footer)
    subscribe.router,  # /subscribe/…, /confirm/…
    webhooks.router,  # /webhooks/sendgrid
    login.router,  # /studio/login…, /studio/logout (before the studio's /studio/{slug})
    studio_editors.router,  # /studio/editors (admins)
    studio_stats.router,  # /studio/{slug}/issue/{id}/stats (before the studio's /studio/{slug})
    studio.router,  # /studio
    api.router,  # /api/articles
    metrics.router,  # /metrics
    archive.router,  # /, /archive/… (the public archive and its feeds)
    media.router,  # /media/… (the demo's bundled pictures)
    redirect.router,  # /r/… and /o/… (opt-in click redirect and open pixel)
)


def create_app(digest_app: App) -> FastAPI:
    web = FastAPI(title="digest", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    web.state.digest = digest_app
    for router in ROUTERS:
        web.include_router(router)
    # A request naming another host is refused: a page elsewhere cannot drive this server
    # through a name it controls (DNS rebinding), and links are only ever built for base_url.
    web.add_middleware(
        TrustedHostMiddleware, allowed_hosts=allowed_hosts(digest_app.settings), www_redirect=False
    )
    web.add_exception_handler(SignInRequired, _sign_in_required)
    web.add_exception_handler(NotAllowed, _not_allowed)
    return web


def allowed_hosts(settings: Settings) -> list[str]:
    """base_url's host, `site.allowed_hosts`, and on loopback this machine's own names."""
    hosts = [urlsplit(settings.site.base_url).hostname or "localhost", *settings.site.allowed_hosts]
    if settings.on_loopback():
        hosts += ["localhost", "127.0.0.1", "::1"]
    return sorted(set(hosts))


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    if wants_html(request):
        return RedirectResponse(sign_in_url(request), status_code=303)
    return JSONResponse(
        {"detail": "sign in to the studio first"},
        status_code=401,
        headers={"WWW-Authenticate": 'Cookie realm="digest studio"', "Cache-Control": "no-store"},
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    message = f"{exc}. Ask an admin of the studio if you need it."
    if not wants_html(request):
        return JSONResponse({"detail": message}, status_code=403)
    return render_page(
        "studio/denied.html", {"message": message}, status_code=403,
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )  # fmt: skip
