"""A hand-built issue for rendering tests and the render benchmark: fixed dates, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from digest.config import Settings, settings_from_mapping
from digest.mail.links import Links
from digest.rendering.contents import ArticleView, IssueContents, SectionView
from digest.rendering.personalize import LEGACY, Tokens

PERIOD = datetime(2026, 11, 23, 5, 0, tzinfo=UTC)  # Monday 08:00 in Istanbul

SECTIONS = ("Politics", "Economy", "Culture")

_SUMMARY = (
    "Negotiators worked through the night on a draft that would reshape how the region shares "
    "water from the two rivers, with officials on both sides describing the talks as difficult "
    "but constructive. A final text is expected before the end of the month."
)


def sample_settings(language: str = "en", **newsletter: Any) -> Settings:
    return settings_from_mapping(
        {
            "site": {"name": "The Meridian Post", "timezone": "Europe/Istanbul"},
            "sender": {
                "from_email": "newsletters@meridian.example",
                "from_name": "The Meridian Post",
                "postal_address": "The Meridian Post, 12 Harbour Lane, Port Meridian 10101",
            },
            "newsletters": [
                {
                    "slug": "turkey-unpacked",
                    "title": "Turkey Unpacked",
                    "description": "What we published about Turkey this week.",
                    "timezone": "Europe/Istanbul",
                    "language": language,
                    **newsletter,
                }
            ],
        }
    )


def sample_article(index: int, **overrides: Any) -> ArticleView:
    values: dict[str, Any] = {
        "id": index,
        "title": f"Story {index}: ministers meet in Ankara as the lira steadies",
        "url": f"https://meridian.example/news/2026/11/story-{index}?utm_source=feed&ref=a",
        "summary_text": _SUMMARY,
        "summary_html": f"<p>{_SUMMARY}</p>",
        "image_url": f"https://cdn.meridian.example/img/story-{index}.jpg"
        if index % 3 == 1
        else None,
        "author": "Ayşe Demir" if index % 2 else None,
        "source": "The Meridian Post — World",  # the reader-facing title, as assembly passes
        "published_at": PERIOD - timedelta(hours=3 * index),
        "tags": ["Turkey"],
    }
    values.update(overrides)
    return ArticleView(**values)


def sample_contents(
    articles: int = 5,
    *,
    settings: Settings | None = None,
    intro: str = "Good morning. This week: water talks, a steadier lira and a new museum.\n\n"
    "As ever, reply to this email to tell us what you think.",
    subject: str | None = None,
    first: dict[str, Any] | None = None,
    tokens: Tokens = LEGACY,
    archive: bool = True,
) -> IssueContents:
    """`articles` articles spread over three sections; `first` overrides the lead's fields.

    Rendered with the legacy token names by default, which the golden files show and which
    `digest.mail.message.tokens_of` reads back from an issue stored by `make_issue` (whose
    derived names it could not know): pass `tokens` for an issue's own names.
    """
    settings = settings or sample_settings()
    newsletter = settings.newsletters[0]
    links = Links.of(settings, PERIOD).issue_links(newsletter.slug, 7, archive=archive)
    views = [sample_article(i + 1, **(first or {}) if i == 0 else {}) for i in range(articles)]
    sections = [
        SectionView(title, [v for n, v in enumerate(views) if n % len(SECTIONS) == s])
        for s, title in enumerate(SECTIONS)
    ]
    return IssueContents(
        settings=settings,
        newsletter=newsletter,
        issue_id=7,
        period=PERIOD,
        sections=[section for section in sections if section.articles],
        subject=subject,
        intro=intro,
        tokens=tokens,
        links=links,
    )
