"""Render + inline a 20-article issue: median time and HTML size (target ≤ 150 ms, < 90 KB).

Run: `.venv/bin/python benchmarks/bench_render.py [runs]` (also run by `make bench`).
Measures `Renderer.render`, i.e. Jinja, premailer inlining once, the text part and lint; then
the same with opt-in engagement on (`track_clicks`, `track_opens`): the rewrite of every link to
the signed redirect and the pixel, done once per issue after rendering (`digest.issues.assemble`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from unittest.mock import patch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datetime import UTC, datetime

from digest.mail.links import Links
from digest.rendering import engagement, inline
from digest.rendering.contents import IssueContents
from digest.rendering.lint import WARN_BYTES
from digest.rendering.render import Renderer
from tests.support.sample_issue import sample_contents

TARGET_MS = 150.0
ARTICLES = 20


def main(runs: int = 21) -> int:
    renderer = Renderer()
    contents = sample_contents(ARTICLES)
    for _ in range(3):  # warm-up: template compilation, premailer's CSS parse cache
        rendered = renderer.render(contents)

    totals, inlining = [], []
    for _ in range(runs):
        start = time.perf_counter()
        rendered = renderer.render(contents)
        totals.append((time.perf_counter() - start) * 1000)
    raw_html = _raw_html(renderer, contents)
    for _ in range(runs):
        start = time.perf_counter()
        inline.inline_css(raw_html)
        inlining.append((time.perf_counter() - start) * 1000)

    tracked_totals, rewrites = [], []
    links = Links("https://news.example.com", b"bench-key", datetime.now(UTC))
    tracked = rendered
    for _ in range(runs):
        start = time.perf_counter()
        rendered = renderer.render(contents)
        middle = time.perf_counter()
        tracked = engagement.rewrite(
            rendered.html, lambda index: links.click(7, index), links.open_pixel(7)
        )
        end = time.perf_counter()
        tracked_totals.append((end - start) * 1000)
        rewrites.append((end - middle) * 1000)

    total = statistics.median(totals)
    print(f"render+inline, {ARTICLES} articles: median {total:.1f} ms over {runs} runs")
    print(f"  of which premailer inlining: median {statistics.median(inlining):.1f} ms")
    print(f"  HTML {rendered.html_bytes / 1024:.1f} KB inlined (budget {WARN_BYTES // 1024} KB)")
    print(f"  text {len(rendered.text.encode()) / 1024:.1f} KB, lint findings {len(rendered.lint)}")
    with_tracking = statistics.median(tracked_totals)
    print(
        f"with track_clicks + track_opens: median {with_tracking:.1f} ms "
        f"(the rewrite itself {statistics.median(rewrites):.2f} ms, {len(tracked.urls)} links, "
        f"HTML {len(tracked.html.encode()) / 1024:.1f} KB)"
    )
    ok = total <= TARGET_MS and with_tracking <= TARGET_MS and rendered.html_bytes < WARN_BYTES
    print(f"  target ≤ {TARGET_MS:.0f} ms: {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


def _raw_html(renderer: Renderer, contents: IssueContents) -> str:
    """The Jinja output before inlining, to time premailer on its own."""
    with patch.object(inline, "inline_css", wraps=inline.inline_css) as spy:
        renderer.render(contents)
    return str(spy.call_args.args[0])


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 21))
