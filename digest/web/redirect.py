"""Opt-in engagement: the click redirect and the open pixel (paths in `digest.mail.links`).

- `GET /r/{issue_id}/{index}.{sig}`: a 302 to the `index`-th URL stored for that issue at render
  time (`digest.storage.engagement.IssueLink`). A signature that does not verify, an index the
  issue does not have, an unknown issue: 404, never a redirect elsewhere (no open redirect).
- `GET /o/{issue_id}.{sig}.gif`: a transparent 1×1 GIF; 404 when the signature does not verify.

Counted only for issues that went out (sending, sent): a click in a studio preview or a test
send of a draft still redirects but counts nothing. Nothing about the reader is recorded (no
address, IP or user agent): a count per issue, link and hour (`tracking.per_reader = false`).
"""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

from digest.mail.links import CLICK_ROUTE, OPEN_ROUTE
from digest.storage import engagement
from digest.storage.engagement import EngagementKind
from digest.storage.models import Issue, IssueStatus
from digest.web.deps import app_of

router = APIRouter()

COUNTED = (IssueStatus.SENDING, IssueStatus.SENT)
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_HEADERS = {
    "Cache-Control": "no-store, private",  # every open and click reaches us, none is shared
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}


def _not_found() -> Response:
    return PlainTextResponse("Not found", status_code=404, headers=_HEADERS)


@router.get(CLICK_ROUTE, include_in_schema=False)
def click(request: Request, issue_id: int, link: str) -> Response:
    app = app_of(request)
    index = app.links().verify_click(issue_id, link)
    if index is None:
        return _not_found()
    with app.session() as session:
        url = engagement.link_url(session, issue_id, index)
        if url is None:
            return _not_found()
        issue = session.get(Issue, issue_id)
        if issue is not None and issue.status in COUNTED:
            engagement.record(session, issue_id, EngagementKind.CLICK, app.now(), index)
    return RedirectResponse(url, status_code=302, headers=_HEADERS)


@router.get(OPEN_ROUTE, include_in_schema=False)
def open_pixel(request: Request, pixel: str) -> Response:
    app = app_of(request)
    issue_id = app.links().verify_open(pixel)
    if issue_id is None:
        return _not_found()
    with app.session() as session:
        issue = session.get(Issue, issue_id)
        if issue is None:
            return _not_found()
        if issue.status in COUNTED:
            engagement.record(session, issue_id, EngagementKind.OPEN, app.now())
    return Response(GIF, media_type="image/gif", headers=_HEADERS)
