"""Articles and topic matches written straight into the database, for assembly and studio tests.

Ingestion has its own tests; these fixtures only need rows with known dates, sources and the
topic rules that matched, so they do not depend on parsing feeds.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from digest.app import App
from digest.issues.periods import current_period
from digest.storage.models import Article, ArticleTopic

TURKEY_REASONS = ["tag: Turkey"]


def add_article(
    app: App,
    title: str,
    published_at: datetime,
    *,
    source: str = "world",
    topics: dict[str, list[str]] | None = None,
    tags: list[str] | None = None,
    image_url: str | None = None,
) -> int:
    """Store one article (and its topic matches: newsletter slug → reasons); return its id."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:80]
    with app.session() as session:
        article = Article(
            source=source,
            guid=f"{source}-{slug}",
            url=f"https://news.example.com/{source}/{slug}",
            title=title,
            title_key=slug.replace("-", " "),
            summary_text=f"What happened: {title}. The details, in two sentences of summary.",
            summary_html=f"<p>What happened: {title}.</p>",
            author="Deniz Karaca",
            image_url=image_url,
            tags=tags or ["Turkey"],
            published_at=published_at,
            first_seen_at=published_at,
            updated_at=published_at,
        )
        session.add(article)
        session.flush()
        assert article.id is not None
        for newsletter, reasons in (topics or {"turkey-unpacked": TURKEY_REASONS}).items():
            session.add(
                ArticleTopic(
                    article_id=article.id,
                    newsletter=newsletter,
                    reasons=reasons,
                    matched_at=published_at,
                )
            )
        return article.id


def add_turkey_week(app: App, count: int = 5, *, before: datetime | None = None) -> list[int]:
    """`count` Turkey articles, one every 6 hours before `before` (default: the start of the
    current period); ids are returned newest first, the order assembly ranks them in."""
    newsletter = app.settings.newsletter("turkey-unpacked")
    moment = before or current_period(app.settings, newsletter, app.now())
    ids = []
    for index in range(count):
        ids.append(
            add_article(
                app,
                f"Turkey story {index + 1}: Ankara and Istanbul weigh the week",
                moment - timedelta(hours=6 * (index + 1)),
                source="world" if index % 2 == 0 else "business",
                topics={"turkey-unpacked": ["tag: Turkey", "keyword: Ankara"][: 1 + index % 2]},
            )
        )
    return ids
