"""`GET /media/{name}`: the demo's bundled pictures (`config/sample/media/`), so previews, test
sends and the archive of the sample newsletters show images without anything downloaded.

Only plain file names with a picture's extension are served (no paths, nothing else from the
directory); the files never change, so they may be cached for a day.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from digest import paths
from digest.mail.links import MEDIA_ROUTE

router = APIRouter()

MEDIA_DIR = ("sample", "media")  # under the bundled config/ directory
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,100}\.(png|jpg|jpeg|svg)$")
_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml"}


@router.get(MEDIA_ROUTE)
def media(name: str) -> Response:
    match = _NAME.match(name)
    path = paths.config_dir().joinpath(*MEDIA_DIR, name)
    if match is None or not path.is_file():
        return JSONResponse({"detail": "Not Found"}, status_code=404)
    headers = {
        "Cache-Control": "public, max-age=86400",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    }
    return FileResponse(path, media_type=_TYPES[match.group(1)], headers=headers)
