"""The push API: `POST /api/articles` lets a CMS send articles as they are published.

Authenticated with `Authorization: Bearer $DIGEST_API_TOKEN` (compared in constant time).
The body is one article or a list of them (see `digest.ingest.records.ArticleIn`); the whole
request is rejected, naming each bad item's index and field, if any item is invalid.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from digest.ingest.records import to_article, validate_items
from digest.ingest.run import ingest_items
from digest.web.deps import JsonBodyError, app_of, parse_json

router = APIRouter()

MAX_BODY = 5_000_000  # bytes
MAX_ITEMS = 1000
DEFAULT_SOURCE = "api"
_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="digest"'} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _authorize(request: Request) -> JSONResponse | None:
    settings = app_of(request).settings
    if settings.api_token is None or not settings.api_token.get_secret_value():
        return _error(503, "the push API has no token configured (set DIGEST_API_TOKEN)")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return _error(401, "send the API token as 'Authorization: Bearer <token>'")
    expected = settings.api_token.get_secret_value().encode()
    if not hmac.compare_digest(given.strip().encode(), expected):
        return _error(403, "the API token is not valid")
    return None


async def _body(request: Request) -> bytes | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)


@router.post("/api/articles")
async def push_articles(request: Request, source: str = DEFAULT_SOURCE) -> JSONResponse:
    """Store the articles in the body under `source` (default 'api'); returns the counts."""
    app = app_of(request)
    if not app.settings.api.enabled:
        return _error(404, "the push API is disabled (api.enabled = false)")
    denied = _authorize(request)
    if denied is not None:
        return denied
    if not _SOURCE_NAME.match(source):
        return _error(422, "source: use letters, digits, '.', '_' or '-' (at most 100)")
    body = await _body(request)
    if body is None:
        return _error(413, f"the body is larger than {MAX_BODY} bytes")
    try:
        document = parse_json(body.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        return _error(400, f"the body is not valid UTF-8 JSON: {exc}")
    except JsonBodyError as exc:
        return _error(400, str(exc))
    if isinstance(document, dict) and isinstance(document.get("articles"), list):
        document = document["articles"]
    items = document if isinstance(document, list) else [document]
    if len(items) > MAX_ITEMS:
        return _error(413, f"at most {MAX_ITEMS} articles per request (got {len(items)})")
    good, bad = validate_items((str(i), item) for i, item in enumerate(items))
    if bad:
        errors = [{"index": int(e.where), "field": e.field, "message": e.message} for e in bad]
        return _error(422, f"{len(errors)} problem(s); nothing was stored", errors=errors)
    articles = [to_article(item) for _, item in good]
    try:
        report = await run_in_threadpool(ingest_items, app, source, articles)
    except IntegrityError:
        return _error(409, "a concurrent request stored the same article; send it again")
    return JSONResponse(
        {
            "source": source,
            "received": len(articles),
            "new": report.new,
            "updated": report.updated,
            "unchanged": report.unchanged,
        }
    )
