"""What the studio trusts in a POST, and the one message it carries across the redirect.

The CSRF token every form carries (the session's, see `digest.web.access`) is checked with a
same-origin `Origin`/`Referer`; the flash cookie is signed with a key of its own, derived from
the secret. Tests go only to the editor's own address or to `studio.test_domains`. Kept out of
`studio` so its routes read as pages and actions, and the checks can be reviewed in one place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from digest.app import App
from digest.web.access import Identity
from subscribers.addresses import InvalidAddress, normalize_email
from subscribers.tokens import derive_key

FLASH_COOKIE = "digest_studio_flash"


def mac(app: App, message: bytes) -> str:
    key = derive_key(app.signing_key(), "studio:flash")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def test_address_allowed(app: App, who: Identity, address: str) -> bool:
    """The editor's own address, or one at a domain the newsroom lists as its test domains."""
    try:
        wanted = normalize_email(address).lower()
    except InvalidAddress:
        return False
    if wanted == who.email.lower():
        return True
    domain = wanted.rpartition("@")[2]
    return domain in {d.lower().lstrip("@") for d in app.settings.studio.test_domains}


# -- the POST guard ----------------------------------------------------------------------------


class Refused(Exception):
    """A POST that did not come from a studio page."""


def check_post(request: Request, csrf: str, token: str) -> None:
    """Raise Refused unless the POST carries the studio's token and no foreign origin."""
    if not hmac.compare_digest(csrf.encode(), token.encode()):
        raise Refused("the form's security token is missing or stale")
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed and not _same_origin(claimed, str(request.base_url)):
        raise Refused("the form was posted from another site")


def _same_origin(claimed: str, base: str) -> bool:
    a, b = urlsplit(claimed), urlsplit(base)
    return (a.scheme, a.netloc.lower()) == (b.scheme, b.netloc.lower())


# -- flash messages ----------------------------------------------------------------------------


def set_flash(response: Response, app: App, kind: str, text: str) -> None:
    """Carry one message across the redirect in a signed, short-lived cookie."""
    payload = base64.urlsafe_b64encode(json.dumps({"kind": kind, "text": text}).encode()).decode()
    response.set_cookie(
        FLASH_COOKIE,
        f"{payload}.{mac(app, payload.encode())}",
        max_age=60,
        path="/studio",
        httponly=True,
        samesite="strict",
    )


def take_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw or "." not in raw:
        return None
    payload, _, signature = raw.rpartition(".")
    app: App = request.app.state.digest
    if not hmac.compare_digest(signature, mac(app, payload.encode())):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(payload.encode()))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    return {"kind": str(data.get("kind", "ok")), "text": str(data.get("text", ""))}
