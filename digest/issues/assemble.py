"""Issue assembly: which articles go into a newsletter's issue for a period, in what order.

An issue is identified by (newsletter, period), where the period is the scheduled moment it
belongs to. Building again for the same period returns the same row: a draft is refreshed
(new articles, the editor's pins and exclusions kept), anything approved or later is frozen.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlmodel import Session, col, select

from digest.app import App
from digest.config import NewsletterConfig, Settings, TransportName
from digest.issues import personal
from digest.issues.periods import current_period, period_key
from digest.issues.sources import reader_title, reader_titles
from digest.issues.views import article_view
from digest.rendering import engagement, personalize
from digest.rendering.contents import ArticleView, IssueContents, IssueLinks, SectionView
from digest.storage import engagement as engagement_store
from digest.storage.models import Article, ArticleTopic, Issue, IssueArticle, IssueStatus

# Issues in these states own their articles: later issues never repeat them.
COMMITTED = (IssueStatus.SENDING, IssueStatus.SENT)
# Issues in these states are rebuilt when built again; the others are frozen.
REBUILDABLE = (IssueStatus.DRAFT, IssueStatus.SKIPPED)


class AssemblyError(Exception):
    """An editor action that cannot apply (unknown article, frozen issue…)."""


def get_issue(session: Session, newsletter: str, period: datetime) -> Issue | None:
    statement = select(Issue).where(
        Issue.newsletter == newsletter, Issue.period == period_key(period)
    )
    return session.exec(statement).first()


def issues_of(session: Session, newsletter: str) -> list[Issue]:
    """Every issue of a newsletter, oldest period first."""
    statement = select(Issue).where(Issue.newsletter == newsletter).order_by(col(Issue.period))
    return list(session.exec(statement).all())


def latest_issue(session: Session, newsletter: str) -> Issue | None:
    statement = (
        select(Issue).where(Issue.newsletter == newsletter).order_by(col(Issue.period).desc())
    )
    return session.exec(statement).first()


@dataclass(frozen=True)
class _Choice:
    article: Article
    reasons: list[str]
    pinned: bool


def build_issue(app: App, slug: str, period: datetime | None = None) -> Issue:
    """Get or build the issue of `slug` for `period` (default: the current period)."""
    settings = app.settings
    newsletter = settings.newsletter(slug)
    now = app.now()
    period = period or current_period(settings, newsletter, now)
    with app.session() as session:
        issue = lock_issue(session, _get_or_create(session, slug, period, now).id)
        assert issue is not None
        if issue.status not in REBUILDABLE:
            return issue
        _refresh(app, session, issue, newsletter, period, now)
        session.add(issue)
    return issue


def lock_issue(session: Session, issue_id: int | None) -> Issue | None:
    """The issue row, locked until the transaction ends (PostgreSQL; SQLite serialises writers).

    Rebuilding replaces the issue's article rows: two builders (the scheduler and an editor, two
    editors) doing it at once would insert the same rows twice, so the second one waits, then
    reads the row afresh (its status may have changed) and rebuilds on top of the first.
    """
    statement = (
        select(Issue)
        .where(Issue.id == issue_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.exec(statement).first()


def _get_or_create(session: Session, slug: str, period: datetime, now: datetime) -> Issue:
    issue = get_issue(session, slug, period)
    if issue is not None:
        return issue
    # Two builders racing on one period: the unique constraint makes one of them lose; it then
    # reads the winner's row instead of creating a second issue.
    issue = Issue(newsletter=slug, period=period_key(period), created_at=now, updated_at=now)
    try:
        with session.begin_nested():
            session.add(issue)
            session.flush()
    except Exception:
        existing = get_issue(session, slug, period)
        if existing is None:
            raise
        return existing
    return issue


def _refresh(
    app: App,
    session: Session,
    issue: Issue,
    newsletter: NewsletterConfig,
    period: datetime,
    now: datetime,
) -> None:
    assert issue.id is not None
    decisions = _editor_decisions(session, issue.id)
    if newsletter.personal:
        excluded = {a for a, d in decisions.items() if d.excluded}
        pinned = {a for a, d in decisions.items() if d.pinned and not d.excluded}
        personal.rebuild(app, session, issue, newsletter, period, now, excluded, pinned)
        return
    choices = _select(session, issue, newsletter, period, now, decisions)
    _store_selection(session, issue.id, choices, decisions, newsletter)
    issue.updated_at = now
    if len(choices) < newsletter.min_articles:
        issue.status = IssueStatus.SKIPPED
        issue.skip_reason = (
            f"only {len(choices)} article(s) in the window; the minimum is "
            f"{newsletter.min_articles}"
        )
    else:
        issue.status = IssueStatus.DRAFT
        issue.skip_reason = None
    render_into(app, session, issue)


def render_into(app: App, session: Session, issue: Issue) -> None:
    """Render the issue's current selection and store the result on the row."""
    newsletter = app.settings.newsletter(issue.newsletter)
    if newsletter.personal:
        personal.render_own(app, session, issue)
        return
    links = app.links().issue_links(issue.newsletter, issue.id, archive=newsletter.archive)
    contents = contents_of(session, app.settings, issue, links=links)
    rendered = app.renderer.render(contents)
    html = _track(app, session, issue, newsletter, rendered.html)
    # The public page is rendered from the same contents now, so it shows the issue as sent.
    issue.web_html = app.renderer.render_web(contents) if newsletter.archive else None
    issue.subject = rendered.subject
    issue.preheader = rendered.preheader
    issue.html = html
    issue.text = rendered.text
    issue.template_version = rendered.template_version
    issue.html_bytes = len(html.encode())
    issue.lint = [{"level": f.level, "code": f.code, "message": f.message} for f in rendered.lint]


def _track(
    app: App, session: Session, issue: Issue, newsletter: NewsletterConfig, html: str
) -> str:
    """The issue's HTML with opt-in engagement (once per issue, never per reader), and its
    link table stored. With the sendgrid transport SendGrid rewrites and adds the pixel itself
    (`tracking_settings`): the table is still stored, so its click events find their link."""
    if not (newsletter.track_clicks or newsletter.track_opens) or issue.id is None:
        return html
    ours = app.settings.delivery.transport != TransportName.SENDGRID
    links, issue_id = app.links(), issue.id
    tracked = engagement.rewrite(
        html,
        (lambda index: links.click(issue_id, index)) if ours and newsletter.track_clicks else None,
        links.open_pixel(issue_id) if ours and newsletter.track_opens else None,
        own=(links.archive(issue.newsletter), links.subscribe(issue.newsletter)),
    )
    if newsletter.track_clicks:
        engagement_store.store_links(session, issue_id, tracked.urls)
    return tracked.html


@dataclass(frozen=True)
class _Decision:
    pinned: bool
    excluded: bool
    position: int


def _editor_decisions(session: Session, issue_id: int) -> dict[int, _Decision]:
    rows = session.exec(select(IssueArticle).where(IssueArticle.issue_id == issue_id)).all()
    return {
        row.article_id: _Decision(row.pinned, row.excluded, row.position)
        for row in rows
        if row.pinned or row.excluded
    }


def _select(
    session: Session,
    issue: Issue,
    newsletter: NewsletterConfig,
    period: datetime,
    now: datetime,
    decisions: dict[int, _Decision],
) -> list[_Choice]:
    cutoff = min(period, now)
    since = period - newsletter.window_delta
    already_sent = _sent_article_ids(session, newsletter.slug, exclude_issue=issue.id)
    statement = (
        select(Article, ArticleTopic.reasons)
        .join(ArticleTopic, col(ArticleTopic.article_id) == col(Article.id))
        .where(
            ArticleTopic.newsletter == newsletter.slug,
            col(Article.published_at) > since,
            col(Article.published_at) <= cutoff,
        )
    )
    candidates = {a.id: _Choice(a, list(r or []), False) for a, r in session.exec(statement)}
    pinned_ids = [aid for aid, d in decisions.items() if d.pinned and not d.excluded]
    for article_id in pinned_ids:
        if article_id not in candidates:
            article = session.get(Article, article_id)
            if article is not None:
                candidates[article_id] = _Choice(article, ["pinned by editor"], True)
    eligible = [
        choice
        for aid, choice in candidates.items()
        if aid not in already_sent and not (aid in decisions and decisions[aid].excluded)
    ]
    pinned = sorted(
        (_Choice(c.article, c.reasons, True) for c in eligible if c.article.id in pinned_ids),
        key=lambda c: (decisions[c.article.id or 0].position, c.article.id or 0),
    )
    rest = sorted(
        (c for c in eligible if c.article.id not in pinned_ids),
        key=lambda c: (c.article.published_at, c.article.id or 0),
        reverse=True,
    )
    return (pinned + rest)[: max(newsletter.max_articles, len(pinned))]


def _sent_article_ids(session: Session, slug: str, exclude_issue: int | None) -> set[int]:
    statement = (
        select(IssueArticle.article_id)
        .join(Issue, col(Issue.id) == col(IssueArticle.issue_id))
        .where(
            Issue.newsletter == slug,
            col(Issue.status).in_(COMMITTED),
            col(IssueArticle.excluded).is_(False),
        )
    )
    if exclude_issue is not None:
        statement = statement.where(Issue.id != exclude_issue)
    return set(session.exec(statement).all())


def _store_selection(
    session: Session,
    issue_id: int,
    choices: Sequence[_Choice],
    decisions: dict[int, _Decision],
    newsletter: NewsletterConfig,
) -> None:
    """Replace the issue's rows with the new selection, keeping the editor's exclusions."""
    session.exec(delete(IssueArticle).where(col(IssueArticle.issue_id) == issue_id))  # type: ignore[call-overload]
    for position, choice in enumerate(choices):
        assert choice.article.id is not None
        session.add(
            IssueArticle(
                issue_id=issue_id,
                article_id=choice.article.id,
                position=position,
                section=section_title(choice.article, newsletter),
                pinned=choice.pinned,
            )
        )
    for article_id, decision in decisions.items():
        if decision.excluded:
            session.add(
                IssueArticle(
                    issue_id=issue_id,
                    article_id=article_id,
                    position=decision.position,
                    excluded=True,
                    pinned=False,
                )
            )
    session.flush()


def section_title(article: Article, newsletter: NewsletterConfig) -> str:
    """The section an article goes in: its source, or its first tag outside the topic tags.

    A source section stores the source's name; readers see its title (`contents_of`).
    """
    if newsletter.section_by == "source":
        return article.source
    if newsletter.section_by == "tag":
        topic_tags = {t.casefold() for t in newsletter.topic.tags}
        for tag in article.tags:
            if tag.casefold() not in topic_tags:
                return tag
        return "More"
    return ""


def issue_rows(
    session: Session, issue_id: int, newsletter: str, *, with_excluded: bool = False
) -> list[tuple[IssueArticle, Article, list[str]]]:
    """The issue's articles in order, each with the topic rules that matched it.

    With `with_excluded`, the editor's exclusions come too, after the others.
    """
    statement = (
        select(IssueArticle, Article, ArticleTopic.reasons)
        .join(Article, col(Article.id) == col(IssueArticle.article_id))
        .join(
            ArticleTopic,
            (col(ArticleTopic.article_id) == col(Article.id))
            & (ArticleTopic.newsletter == newsletter),
            isouter=True,
        )
        .where(IssueArticle.issue_id == issue_id)
        .order_by(col(IssueArticle.excluded), col(IssueArticle.position), col(Article.id))
    )
    if not with_excluded:
        statement = statement.where(col(IssueArticle.excluded).is_(False))
    return [
        (link, article, list(reasons or [])) for link, article, reasons in session.exec(statement)
    ]


def contents_of(
    session: Session, settings: Settings, issue: Issue, *, links: IssueLinks | None = None
) -> IssueContents:
    """The issue's selection as the renderer's input, grouped into sections.

    Sources appear by their reader-facing title (`digest.issues.sources`), never their name.
    """
    newsletter = settings.newsletter(issue.newsletter)
    rows = issue_rows(session, issue.id or 0, issue.newsletter)
    titles = reader_titles(session, settings)
    sections: dict[str, list[ArticleView]] = {}
    for link, article, reasons in rows:
        view = article_view(
            article, reasons, reader_title(titles, article.source, settings), pinned=link.pinned
        )
        sections.setdefault(link.section, []).append(view)
    by_source = newsletter.section_by == "source"
    return IssueContents(
        settings=settings,
        newsletter=newsletter,
        issue_id=issue.id,
        period=datetime.fromisoformat(issue.period),
        sections=[
            SectionView(reader_title(titles, title, settings) if by_source else title, items)
            for title, items in sections.items()
        ],
        subject=issue.subject_override,
        intro=issue.intro,
        tokens=personalize.for_issue(
            settings.secret_key.get_secret_value().encode(),
            newsletter=issue.newsletter,
            period=issue.period,
            issue_id=issue.id,
        ),
        links=links,
    )


def issue_articles(session: Session, issue_id: int) -> Iterable[tuple[IssueArticle, Article]]:
    statement = (
        select(IssueArticle, Article)
        .join(Article, col(Article.id) == col(IssueArticle.article_id))
        .where(IssueArticle.issue_id == issue_id)
        .order_by(col(IssueArticle.excluded), col(IssueArticle.position))
    )
    return session.exec(statement).all()
