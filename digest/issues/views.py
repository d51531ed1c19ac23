"""A stored article as the renderer gets it (`ArticleView`), for topic and personal issues."""

from __future__ import annotations

from digest.rendering.contents import ArticleView
from digest.storage.models import Article

PINNED = "pinned by editor"


def article_view(
    article: Article, reasons: list[str], source_title: str, *, pinned: bool = False
) -> ArticleView:
    """`article` with the topic rules that matched it (an editor's pin among them) and the
    source's reader-facing title: the internal source name stays in the studio."""
    assert article.id is not None
    if pinned and PINNED not in reasons:
        reasons = [*reasons, PINNED]
    return ArticleView(
        id=article.id,
        title=article.title,
        url=article.url,
        summary_text=article.summary_text,
        summary_html=article.summary_html,
        image_url=article.image_url,
        author=article.author,
        source=source_title,
        published_at=article.published_at,
        tags=list(article.tags or []),
        reasons=reasons,
        pinned=pinned,
    )
