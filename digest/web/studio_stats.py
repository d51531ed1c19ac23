"""The studio's page of a sent issue: `GET /studio/{slug}/issue/{issue_id}/stats`.

Delivered, bounced, complained, unsubscribed (the figures of `digest stats`, from
`digest.ops.stats`, whose delivery counts read `digest.sending.counts`), opens and clicks, the
most clicked links and a chart of opens and clicks per hour over the first 48 hours: an SVG
drawn here, server-side, with no script. Mounted before the studio's router, whose
`/studio/{slug}` would otherwise catch these paths.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup, escape

from digest.config import ConfigError, TransportName
from digest.ops.stats import OPENS_NOTE, TIMELINE_HOURS, issue_stats
from digest.web.access import AnyEditor
from digest.web.deps import app_of
from digest.web.pages import render_page

router = APIRouter(prefix="/studio")

STATS_ROUTE = "/{slug}/issue/{issue_id}/stats"
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 28, 30
SERIES = (("opens", "#1f5fbf"), ("clicks", "#b3261e"))


def stats_path(slug: str, issue_id: int) -> str:
    return "/studio" + STATS_ROUTE.format(slug=slug, issue_id=issue_id)


@router.get(STATS_ROUTE, response_class=HTMLResponse)
def issue_stats_page(request: Request, slug: str, issue_id: int, who: AnyEditor) -> HTMLResponse:
    app = app_of(request)
    context = {
        "who": who,
        "csrf": who.csrf,
        "can_publish": False,
        "flash": None,
        "live_version": "",
        "reload_error": None,
    }
    try:
        newsletter = app.settings.newsletter(slug)
    except ConfigError:
        newsletter = None
    with app.session() as session:
        stats = issue_stats(session, slug, issue_id) if newsletter is not None else None
    if newsletter is None or stats is None:
        message = f"There is no issue {issue_id} of {slug!r}."
        context |= {"title": "Unknown issue", "message": message}
        return render_page("studio/problem.html", context, status_code=404, headers=_HEADERS)
    by = "SendGrid" if app.settings.delivery.transport == TransportName.SENDGRID else "digest"
    context |= {
        "newsletter": newsletter,
        "stats": stats,
        "tracked_by": by,
        "opens_note": OPENS_NOTE,
        "chart": chart_svg(stats.timeline),
        "hours": TIMELINE_HOURS,
    }
    return render_page("studio/stats.html", context, headers=_HEADERS)


def chart_svg(timeline: Sequence[dict[str, int]]) -> Markup:
    """Opens and clicks per hour as an inline SVG: one polyline and one dot per hour each."""
    hours = max(len(timeline), 1)
    peak = max([1, *(max(p["opens"], p["clicks"]) for p in timeline)])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(hour: int) -> float:
        return LEFT + plot_w * hour / max(hours - 1, 1)

    def y(value: int) -> float:
        return TOP + plot_h * (1 - value / peak)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="engagement-chart" role="img" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'data-hours="{len(timeline)}" data-peak="{peak}">',
        "<title>Opens and clicks per hour, first 48 hours after the send started</title>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fff" '
        'stroke="#dde2e8"/>',
    ]
    for value in sorted({0, peak // 2, peak}):  # y axis: 0, half, peak
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="#eef1f4"/><text x="{LEFT - 6}" y="{y(value) + 4:.1f}" font-size="11" '
            f'text-anchor="end" fill="#5b6675">{value}</text>'
        )
    for hour in range(0, hours, 6):  # x axis: every 6 hours
        parts.append(
            f'<text x="{x(hour):.1f}" y="{HEIGHT - 10}" font-size="11" text-anchor="middle" '
            f'fill="#5b6675">{hour}h</text>'
        )
    for name, colour in SERIES:
        points = " ".join(f"{x(p['hour']):.1f},{y(p[name]):.1f}" for p in timeline)
        parts.append(
            f'<polyline class="series {name}" fill="none" stroke="{colour}" stroke-width="2" '
            f'points="{points}"/>'
        )
        for p in timeline:
            if p[name]:
                parts.append(
                    f'<circle class="point {name}" data-hour="{p["hour"]}" '
                    f'data-value="{p[name]}" cx="{x(p["hour"]):.1f}" cy="{y(p[name]):.1f}" '
                    f'r="3" fill="{colour}"><title>{escape(name)} in hour {p["hour"]}: '
                    f"{p[name]}</title></circle>"
                )
    legend_x = WIDTH - RIGHT - 150  # above the plot, right-aligned: never over a point
    for offset, (name, colour) in enumerate(SERIES):
        parts.append(
            f'<rect x="{legend_x + offset * 80}" y="6" width="10" height="10" '
            f'fill="{colour}"/><text x="{legend_x + offset * 80 + 14}" y="15" '
            f'font-size="12" fill="#1d232b">{name}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - numbers and fixed names only, escaped
