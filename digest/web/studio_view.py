"""What the studio shows about an issue: its articles with the rules that matched, candidates
left out, size against the budgets, and the message a sample subscriber would receive.

Pure reads over the stored issue; the routes in `digest.web.studio` decide what to build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from sqlmodel import Session, col, select

from digest.app import App
from digest.config import NewsletterConfig
from digest.issues import assemble
from digest.rendering import lint
from digest.storage.models import Article, ArticleTopic, Issue, IssueArticle, IssueStatus

CANDIDATE_LIMIT = 25


@dataclass(frozen=True)
class ArticleRow:
    """One article as the editor sees it in the issue (or next to it)."""

    id: int
    title: str
    url: str
    source: str
    section: str
    published_at: datetime
    reasons: list[str]
    pinned: bool = False
    excluded: bool = False


@dataclass(frozen=True)
class Budget:
    """The HTML size against Gmail's clipping budget."""

    stored_bytes: int  # the rendered HTML with tokens, as lint measured it
    sample_bytes: int  # after a sample subscriber's links were filled in
    warn_bytes: int = lint.WARN_BYTES
    max_bytes: int = lint.MAX_BYTES

    @property
    def level(self) -> str:
        size = max(self.stored_bytes, self.sample_bytes)
        if size > self.max_bytes:
            return "over"
        return "warn" if size > self.warn_bytes else "ok"

    @property
    def percent(self) -> float:
        """Share of the hard limit used (the bar in the page), capped at 100."""
        return min(100.0, 100.0 * max(self.stored_bytes, self.sample_bytes) / self.max_bytes)

    @property
    def warn_percent(self) -> float:
        return 100.0 * self.warn_bytes / self.max_bytes


@dataclass(frozen=True)
class IssuePage:
    issue: Issue
    newsletter: NewsletterConfig
    period_local: datetime
    timezone: tzinfo
    included: list[ArticleRow]
    excluded: list[ArticleRow]
    candidates: list[ArticleRow]
    budget: Budget
    text: str
    lint: list[dict[str, Any]] = field(default_factory=list)

    @property
    def editable(self) -> bool:
        return self.issue.status in assemble.REBUILDABLE

    @property
    def approvable(self) -> bool:
        return self.issue.status == IssueStatus.DRAFT


def issue_page(app: App, issue: Issue) -> IssuePage:
    """Everything the issue page needs, read in one session."""
    from digest.mail.preview import sample_message

    settings = app.settings
    newsletter = settings.newsletter(issue.newsletter)
    assert issue.id is not None
    with app.session() as session:
        rows = article_rows(session, issue.id, newsletter)
        linked = {row.id for row in rows}
        candidates = candidate_rows(app, session, issue, newsletter, linked)
    _, html, text = sample_message(app, issue)
    period = datetime.fromisoformat(issue.period)
    tz = settings.newsletter_timezone(newsletter)
    return IssuePage(
        issue=issue,
        newsletter=newsletter,
        period_local=period.astimezone(tz),
        timezone=tz,
        included=[row for row in rows if not row.excluded],
        excluded=[row for row in rows if row.excluded],
        candidates=candidates,
        budget=Budget(issue.html_bytes, len(html.encode("utf-8"))),
        text=text,
        lint=list(issue.lint or []),
    )


def article_rows(session: Session, issue_id: int, newsletter: NewsletterConfig) -> list[ArticleRow]:
    """The issue's articles in order (excluded last) with the topic rules that matched them."""
    rows = []
    for link, article, reasons in assemble.issue_rows(
        session, issue_id, newsletter.slug, with_excluded=True
    ):
        rows.append(
            _row(article, reasons, link.section, pinned=link.pinned, excluded=link.excluded)
        )
    return rows


def candidate_rows(
    app: App,
    session: Session,
    issue: Issue,
    newsletter: NewsletterConfig,
    linked: set[int],
) -> list[ArticleRow]:
    """Articles that matched the topic in the issue's window but did not make it in
    (over `max_articles`), newest first: the editor can pin one in. Articles already sent in
    an earlier issue are left out, as assembly would drop them anyway."""
    period = datetime.fromisoformat(issue.period)
    cutoff = min(period, app.now())
    statement = (
        select(Article, ArticleTopic.reasons)
        .join(ArticleTopic, col(ArticleTopic.article_id) == col(Article.id))
        .where(
            ArticleTopic.newsletter == newsletter.slug,
            col(Article.published_at) > period - newsletter.window_delta,
            col(Article.published_at) <= cutoff,
        )
        .order_by(col(Article.published_at).desc(), col(Article.id).desc())
    )
    sent = _sent_elsewhere(session, newsletter.slug, issue.id)
    rows = []
    for article, reasons in session.exec(statement).all():
        if article.id in linked or article.id in sent:
            continue
        rows.append(_row(article, reasons, assemble.section_title(article, newsletter)))
        if len(rows) >= CANDIDATE_LIMIT:
            break
    return rows


def _sent_elsewhere(session: Session, slug: str, issue_id: int | None) -> set[int]:
    statement = (
        select(IssueArticle.article_id)
        .join(Issue, col(Issue.id) == col(IssueArticle.issue_id))
        .where(
            Issue.newsletter == slug,
            col(Issue.status).in_(assemble.COMMITTED),
            col(IssueArticle.excluded).is_(False),
            Issue.id != issue_id,
        )
    )
    return set(session.exec(statement).all())


def _row(
    article: Article,
    reasons: Sequence[str] | None,
    section: str,
    *,
    pinned: bool = False,
    excluded: bool = False,
) -> ArticleRow:
    assert article.id is not None
    matched = list(reasons or [])
    if not matched and pinned:
        matched = ["pinned by editor"]
    return ArticleRow(
        id=article.id,
        title=article.title,
        url=article.url,
        source=article.source,
        section=section,
        published_at=article.published_at,
        reasons=matched,
        pinned=pinned,
        excluded=excluded,
    )


def article_count(app: App, issue_id: int) -> int:
    with app.session() as session:
        rows = assemble.issue_articles(session, issue_id)
        return sum(1 for link, _ in rows if not link.excluded)
