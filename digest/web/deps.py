"""What a route handler asks of its request: the App that `create_app` put behind it.

Routers import from here, never from `digest.web.server` (which imports every router).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from digest.app import App


def app_of(request: Request) -> App:
    """The App behind a request (set by `digest.web.server.create_app`)."""
    return request.app.state.digest  # type: ignore[no-any-return]


MAX_JSON_DEPTH = 32  # arrays and objects inside one another; real bodies need 3 or 4


class JsonBodyError(ValueError):
    """A request body that is not JSON digest accepts; the message names the problem."""


def parse_json(text: str | bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads`, refusing documents nested deeper than `max_depth` with a JsonBodyError.

    A 100k-deep `[[[[…` would make the decoder raise RecursionError (a 500) and anything that
    walks the result later recurse as deep: refused here, for every depth, in one linear pass.
    """
    try:
        document = json.loads(text)
    except RecursionError:
        raise JsonBodyError(f"the JSON is nested too deeply (at most {max_depth} levels)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise JsonBodyError(f"the body is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(document, (dict, list)):
        return document
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > max_depth:
            raise JsonBodyError(f"the JSON is nested too deeply (at most {max_depth} levels)")
        pending.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return document
