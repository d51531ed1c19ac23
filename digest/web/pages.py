"""Server-rendered web pages: one Jinja environment over `templates/web/`, autoescape on.

Pages are plain HTML (no front-end build). The environment re-reads edited templates
(`auto_reload`), so the studio's live reload also covers its own pages.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from digest import paths

WEB_DIR = "web"


@cache
def environment(templates_dir: Path | None = None) -> Environment:
    """The Jinja environment for pages under `<templates>/web/` (cached per directory)."""
    root = (templates_dir or paths.templates_dir()) / WEB_DIR
    return Environment(
        loader=FileSystemLoader(str(root)),
        autoescape=True,
        undefined=StrictUndefined,
        auto_reload=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(
    name: str,
    context: Mapping[str, Any],
    *,
    status_code: int = 200,
    headers: Mapping[str, str] | None = None,
    templates_dir: Path | None = None,
) -> HTMLResponse:
    """Render `templates/web/<name>` into an HTML response."""
    html = environment(templates_dir).get_template(name).render(context)
    return HTMLResponse(html, status_code=status_code, headers=dict(headers or {}))
